"""Role variables computed from state: the same names the roles document and reuse elsewhere."""

from __future__ import annotations

import ipaddress
from typing import Any

from dynia.state.models import Cluster, Node

HAPROXY_ADMIN_SOCKET = "/run/haproxy/admin.sock"
HAPROXY_BACKEND = "dynia_nodes"
HAPROXY_CERT_TARGET = "/etc/haproxy/certs/cluster.pem"
HSTS_MAX_AGE = 63072000
# Where Caddy serves the revision a node runs (the rejoin check compares peers' revisions).
REVISION_PATH = "/dynia-revision"
NOTIFY_MASTER_TARGET = "/etc/keepalived/dynia-notify-master.sh"
DIGITALOCEAN_TOKEN_TARGET = "/etc/dynia/digitalocean-token"
# Where the notify-master script talks to DigitalOcean; the render operation may point both at a
# test API (operations/deploy_config.py).
DEFAULT_DIGITALOCEAN_API_URL = "https://api.digitalocean.com"
DEFAULT_DIGITALOCEAN_METADATA_URL = "http://169.254.169.254/metadata/v1"
# The node's hold file (health answers 503 while it exists) and the revision of deploy-config the
# node runs; the roles dynia_node and dynia_sync use the same paths.
NODE_HOLD_FILE = "/run/dynia/hold"
NODE_REVISION_FILE = "/var/lib/dynia/revision"
# How a node checks each new config before it replaces the old one (`%s`: the new file), as the
# manifest carries it to the sync; the controller runs the same commands on a scratch copy.
HAPROXY_VALIDATE = "haproxy -c -q -f %s"
CADDY_VALIDATE = "caddy validate --adapter caddyfile --config %s"
KEEPALIVED_VALIDATE = "keepalived -t -f %s"
FIREWALL_VALIDATE = "nft -c -f %s"
NOTIFY_MASTER_VALIDATE = "bash -n %s"
# The node firewall (role dynia_firewall): one rules file for every node, reloaded by its unit.
FIREWALL_SOURCE = "firewall/dynia-firewall.nft"
FIREWALL_TARGET = "/etc/nftables.d/dynia-firewall.nft"
FIREWALL_COMPONENT = "firewall"
FIREWALL_UNIT = "dynia-firewall"
# Where the provider moves the Reserved IP by API, keepalived carries no real address, but
# keepalived 2.x drops (VRRPv3) or rejects in `keepalived -t` (VRRPv2) an instance without one.
# The MASTER therefore holds a host-local marker address on lo: it satisfies keepalived, shows
# which node believes it is MASTER (`ip addr show lo`), and is never announced on a network.
MASTER_MARKER_PREFIX = "169.254.0."


def haproxy_vars(cluster: Cluster, with_tls: bool) -> dict[str, Any]:
    servers = [
        {"name": node.name, "address": node.private_ip, "port": cluster.settings.caddy_port}
        for node in sorted(cluster.nodes.values(), key=lambda n: n.name)
    ]
    return {
        "haproxy_maxconn": 4096,
        "haproxy_chroot": "/var/lib/haproxy",
        "haproxy_user": "haproxy",
        "haproxy_group": "haproxy",
        "haproxy_admin_socket": HAPROXY_ADMIN_SOCKET,
        "haproxy_retries": 3,
        "haproxy_check_interval_ms": 500,
        # A private network accepts in well under a millisecond, and the kernel answers a SYN even
        # when the node's CPUs are busy: a connection not accepted in 250 ms goes to a dead node.
        "haproxy_connect_timeout_ms": 250,
        "haproxy_check_timeout_ms": 1000,
        "haproxy_check_fall": 2,
        "haproxy_check_rise": 2,
        "haproxy_hard_stop_after_s": 30,
        "haproxy_frontend_name": "dynia_public",
        "haproxy_http_port": cluster.settings.http_port,
        "haproxy_https_port": cluster.settings.https_port,
        "haproxy_tls_certificate_path": HAPROXY_CERT_TARGET if with_tls else "",
        "haproxy_backend_name": HAPROXY_BACKEND,
        "haproxy_health_path": cluster.settings.health_path,
        "haproxy_backend_servers": servers,
        # Health and revision answers are for the nodes; clients on the internet get 404.
        "haproxy_internal_paths": [cluster.settings.health_path, REVISION_PATH],
        "haproxy_internal_sources": node_sources(cluster),
        "haproxy_https_only_hosts": sorted(
            domain for domain, route in cluster.routes.items() if cluster.https_only(route)
        ),
        # Two years, as Mozilla recommends; no includeSubDomains or preload: Dynia does not know
        # the zone's other hosts, and the preload list is hard to leave.
        "haproxy_hsts_max_age": HSTS_MAX_AGE,
    }


def node_sources(cluster: Cluster) -> list[str]:
    """Every address a node's request can come from: private, public, and the Reserved IP."""
    addresses = {n.private_ip for n in cluster.nodes.values()}
    addresses |= {n.public_ip for n in cluster.nodes.values()}
    if cluster.reserved_ip:
        addresses.add(cluster.reserved_ip.address)
    return sorted((a for a in addresses if a), key=ipaddress.ip_address)


def caddy_sites(cluster: Cluster) -> list[dict[str, Any]]:
    sites = []
    for name, service in sorted(cluster.services.items()):
        hosts = sorted(r.domain for r in cluster.routes.values() if r.service == name)
        if hosts:
            sites.append(
                {
                    "name": name.replace("-", "_"),
                    "hosts": hosts,
                    "upstream": f"127.0.0.1:{service.internal_port}",
                }
            )
    return sites


def caddy_vars(cluster: Cluster, node: Node) -> dict[str, Any]:
    """Caddy's variables for one node: only the addresses it listens on are the node's own."""
    return {
        "caddy_admin_port": 2019,
        "caddy_listen_port": cluster.settings.caddy_port,
        # HAProxy reaches Caddy on the private address; the node's own checks use loopback.
        "caddy_bind_addresses": [ip for ip in (node.private_ip, "127.0.0.1") if ip],
        "caddy_health_path": cluster.settings.health_path,
        "caddy_node_name": "{system.hostname}",
        "caddy_sites": caddy_sites(cluster),
        # The rejoin check at boot (role dynia_node) holds a node that missed a sync.
        "caddy_health_hold_file": NODE_HOLD_FILE,
        "caddy_revision_file": NODE_REVISION_FILE,
        "caddy_revision_path": REVISION_PATH,
        # HAProxy on any node connects from that node's private address.
        "caddy_trusted_peers": private_addresses(cluster),
    }


def private_addresses(cluster: Cluster) -> list[str]:
    """The private addresses of the cluster's nodes, in address order."""
    return sorted(
        (n.private_ip for n in cluster.nodes.values() if n.private_ip), key=ipaddress.ip_address
    )


def firewall_vars(cluster: Cluster) -> dict[str, Any]:
    """The firewall of every node: the same rules everywhere, the peers being all the nodes."""
    return {
        "dynia_firewall_table": "dynia_firewall",
        "dynia_firewall_ssh_port": 22,
        "dynia_firewall_ssh_sources": [],
        "dynia_firewall_public_tcp_ports": [
            cluster.settings.http_port,
            cluster.settings.https_port,
        ],
        "dynia_firewall_peers": private_addresses(cluster),
        "dynia_firewall_peer_tcp_ports": [cluster.settings.caddy_port],
        "dynia_firewall_vrrp": True,
        "dynia_firewall_container_interfaces": ["docker0", "br-*"],
        # The metadata service serves the node's user data to anything that asks.
        "dynia_firewall_container_blocked_destinations": ["169.254.169.254"],
        "dynia_firewall_block_published_ports": True,
    }


def keepalived_vars(cluster: Cluster, node: Node, reserved_ip_mode: str) -> dict[str, Any]:
    assert cluster.network is not None, "a cluster with nodes has a network"
    prefix = ipaddress.ip_network(cluster.network.subnet, strict=False).prefixlen
    peers = [address for address in private_addresses(cluster) if address != node.private_ip]
    vips: list[str] = []
    notify = ""
    if cluster.reserved_ip and reserved_ip_mode == "vrrp":
        vips = [f"{cluster.reserved_ip.address}/{prefix}"]
    elif cluster.reserved_ip and reserved_ip_mode == "api":
        vips = [f"{master_marker(cluster)}/32 dev lo"]
        # Through bash: keepalived checks a script once, when it loads its config, and never
        # runs one that was missing then; bootstrap starts keepalived before sync copies the
        # script, and a changed script needs no reload this way. /usr/bin/bash, not /bin/bash:
        # keepalived's script security refuses a path through a symlink ("Wrong file type"), and
        # /bin is one on merged-/usr systems (Debian 13), so notify-master would never run.
        notify = f"/usr/bin/bash {NOTIFY_MASTER_TARGET}"
    return {
        "keepalived_router_name": node.name,
        "keepalived_track_script_name": "dynia_haproxy_alive",
        "keepalived_track_script": "/usr/bin/pgrep -x haproxy",
        "keepalived_track_interval": 1,
        # One failed check gives the address up: pgrep does not flap, and every second without
        # HAProxy is a second of held connections.
        "keepalived_track_fall": 1,
        "keepalived_track_rise": 2,
        "keepalived_instance_name": "dynia",
        "keepalived_interface": cluster.network.interface,
        "keepalived_virtual_router_id": cluster.settings.vrrp_router_id,
        "keepalived_priority": node.priority,
        "keepalived_advert_int": cluster.settings.vrrp_advert_int,
        "keepalived_down_timer_adverts": cluster.settings.vrrp_down_timer_adverts,
        # Sub-second adverts must go out on time on busy cores, or a BACKUP holds an election.
        "keepalived_vrrp_nice": -20,
        "keepalived_vrrp_version": 3,
        "keepalived_unicast_src_ip": node.private_ip,
        "keepalived_unicast_peers": peers,
        "keepalived_check_unicast_src": True,
        "keepalived_virtual_ipaddresses": vips,
        "keepalived_notify_master_script": notify,
        # A node that comes back stays BACKUP: moving the address back would be a second outage.
        "keepalived_nopreempt": True,
        # Two MASTERs at once (a frozen MASTER thawed): the network learns at once which one
        # stays, instead of at the next periodic gratuitous ARP, 10 s later.
        "keepalived_higher_prio_send_advert": True,
        "keepalived_garp_lower_prio_repeat": 2,
    }


def master_marker(cluster: Cluster) -> str:
    """The host-local address keepalived puts on the MASTER's lo in API mode."""
    return f"{MASTER_MARKER_PREFIX}{cluster.settings.vrrp_router_id}"


def notify_master_vars(cluster: Cluster, api_url: str, metadata_url: str) -> dict[str, Any]:
    """Variables of the DigitalOcean notify-master script (the Reserved IP moved by API).

    ``api_url`` and ``metadata_url`` go into a script root runs: the caller has checked them.
    """
    assert cluster.reserved_ip is not None, "the notify script needs the Reserved IP"
    return {
        "dynia_do_reserved_ip": cluster.reserved_ip.address,
        "dynia_do_api_url": api_url,
        "dynia_do_metadata_url": metadata_url,
        "dynia_do_token_file": DIGITALOCEAN_TOKEN_TARGET,
        # The script moves the address only while keepalived holds this marker (MASTER).
        "dynia_do_master_marker": master_marker(cluster),
    }
