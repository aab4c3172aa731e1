"""Real failover on local nodes: keepalived moves the Reserved IP when the MASTER is killed."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

import jinja2
import pytest
import yaml
from testnodes import Fleet

from dynia.paths import shipped_dir
from dynia.providers import NodeProviderTraits, node_provider_traits
from dynia.providers.base import ProvisionedNode
from dynia.providers.local.engine import Docker
from dynia.ssh import run_ssh

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def render(template: str, **variables: object) -> str:
    """A role's template with the role's defaults, overridden by ``variables``."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(shipped_dir("roles")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    role = template.split("/", 1)[0]
    defaults = yaml.safe_load((shipped_dir("roles") / role / "defaults" / "main.yml").read_text())
    return environment.get_template(template).render(**{**defaults, **variables})


def put(fleet: Fleet, node: ProvisionedNode, path: str, text: str) -> None:
    command = f"cat > {path}"
    run_ssh(
        node.private_ip, fleet.private_key, fleet.known_hosts, command, input_data=text.encode()
    )


def http_body(url: str, timeout: float = 0.5) -> str | None:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.read().decode().strip()
    except (urllib.error.URLError, OSError):
        return None


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``check()`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


def start_web(fleet: Fleet, node: ProvisionedNode, image: str, saved: bytes) -> None:
    """busybox httpd in the node's own Docker engine, answering with the node's name."""
    key, known_hosts = fleet.private_key, fleet.known_hosts
    wait_engine = "timeout 60 sh -c 'until docker info >/dev/null 2>&1; do sleep 0.5; done'"
    fleet.ssh(node, wait_engine)
    run_ssh(node.private_ip, key, known_hosts, "docker load -q", input_data=saved)
    fleet.ssh(
        node,
        f"mkdir -p /srv/www && echo {node.name} > /srv/www/index.html"
        f" && echo ok > /srv/www/dynia-health && docker run -d --name web --network host"
        f" -v /srv/www:/www {image} httpd -f -p 8080 -h /www",
    )


def configure_haproxy(fleet: Fleet, node: ProvisionedNode) -> None:
    config = render(
        "haproxy/templates/haproxy.cfg.j2",
        haproxy_maxconn=2000,
        haproxy_admin_socket="/run/haproxy/admin.sock",
        haproxy_retries=2,
        haproxy_check_interval_ms=500,
        haproxy_frontend_name="dynia_http",
        haproxy_http_port=80,
        haproxy_https_port=443,
        haproxy_tls_certificate_path="",
        haproxy_backend_name="dynia_nodes",
        haproxy_health_path="/dynia-health",
        haproxy_backend_servers=[{"name": node.name, "address": "127.0.0.1", "port": 8080}],
    )
    put(fleet, node, "/etc/haproxy/haproxy.cfg", config)
    fleet.ssh(node, "haproxy -c -q -f /etc/haproxy/haproxy.cfg && systemctl restart haproxy")


def configure_keepalived(
    fleet: Fleet, node: ProvisionedNode, priority: int, traits: NodeProviderTraits
) -> None:
    peers = [other.private_ip for other in fleet.nodes if other.name != node.name]
    config = render(
        "keepalived/templates/keepalived.conf.j2",
        keepalived_router_name=node.name,
        keepalived_track_script_name="chk_haproxy",
        keepalived_track_script="/usr/bin/systemctl is-active --quiet haproxy",
        keepalived_track_interval=1,
        keepalived_instance_name="dynia_vip",
        keepalived_interface=fleet.network.interface,
        keepalived_virtual_router_id=51,
        keepalived_priority=priority,
        keepalived_advert_int=traits.default_vrrp_advert_int,
        keepalived_down_timer_adverts=traits.default_vrrp_down_timer_adverts,
        keepalived_vrrp_version=3,
        keepalived_unicast_src_ip=node.private_ip,
        keepalived_unicast_peers=peers,
        keepalived_virtual_ipaddresses=[f"{fleet.reserved_ip.address}/24"],
        keepalived_notify_master_script="",
        keepalived_vrrp_nice=-20,
    )
    put(fleet, node, "/etc/keepalived/keepalived.conf", config)
    fleet.ssh(
        node, "keepalived -t -f /etc/keepalived/keepalived.conf && systemctl restart keepalived"
    )


@pytest.mark.fleet
def test_killing_the_master_moves_the_reserved_ip(local_nodes, busybox_image: str) -> None:
    fleet = local_nodes(2)
    master, backup = fleet.nodes
    saved = Docker().run(["save", busybox_image]).stdout
    traits = node_provider_traits("local")
    for node, priority in ((master, 150), (backup, 100)):
        start_web(fleet, node, busybox_image, saved)
        configure_haproxy(fleet, node)
        configure_keepalived(fleet, node, priority, traits)
    url = f"http://{fleet.reserved_ip.address}/"
    wait_for(lambda: http_body(url) == master.name, timeout=30)
    assert fleet.reserved_ip.address not in fleet.ssh(backup, "ip -4 -o addr show eth0")

    killed_at = time.monotonic()
    Docker().run(["kill", master.provider_id])
    wait_for(lambda: http_body(url, timeout=0.2) == backup.name, timeout=30, interval=0.02)
    gap = time.monotonic() - killed_at
    print(f"\nfailover gap (docker kill of MASTER -> HTTP via Reserved IP answered): {gap:.2f}s")
    assert fleet.reserved_ip.address in fleet.ssh(backup, "ip -4 -o addr show eth0")
    assert gap < 10
