"""A DropletBackend for the fake DigitalOcean whose droplets are real local-fleet nodes.

Each droplet is a node container (``LocalNodeProvider``) named ``dynia-<cluster>-<node>`` with two
interfaces, as on DigitalOcean: ``eth0`` on the backend's "public" network (the cluster's local
network, which plays the internet: the host, the fake API and the Reserved IPs live there) and
``eth1`` on a per-VPC network whose subnet is the VPC's ``ip_range``.

What cloud-init would do on a droplet is emulated from the request's user data: the pinned SSH
host key (``ssh_keys``, ``ssh_deletekeys``), root's authorized keys from the request's SSH keys,
and a check that python3 is there (the node image ships it instead of installing it). A droplet
boots the local release its image slug names (``debian-13-x64`` a Debian 13 node); a slug with no
local release is refused, as DigitalOcean refuses an unknown image.

A Reserved IP is an address of the public network. Assigning it really moves it: it leaves the
previous holder's ``eth0``, is added to the new holder's, which announces it with gratuitous ARP,
and the host's neighbour entry is dropped, so traffic through the Reserved IP follows at once.

Use::

    backend = FleetDropletBackend("c1a2b3")
    with FakeDigitalOcean(backend=backend, host=backend.gateway) as fake:
        ...  # droplets of cluster c1a2b3 become nodes; fake.stop() removes them all
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading

import yaml
from fakes import DropletAddresses, DropletRequest

from dynia.providers.base import NodeSpec
from dynia.providers.local.engine import Docker
from dynia.providers.local.nodes import (
    LABEL_CLUSTER,
    LABEL_KIND,
    LABEL_MANAGED,
    LocalNodeProvider,
    container_name,
    network_name,
)

PUBLIC_INTERFACE = "eth0"
# DigitalOcean image slug -> the local node release that plays it.
LOCAL_RELEASES = {"debian-12-x64": "debian-12", "debian-13-x64": "debian-13"}
RESERVED_HOSTS = range(200, 250)  # outside the lower half Docker hands to containers

# Sends gratuitous ARP (a request and a reply) for an address from an interface, like arping -U.
_GARP = r"""
import socket, struct, sys
interface, address = sys.argv[1], socket.inet_aton(sys.argv[2])
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
raw.bind((interface, 0))
mac = raw.getsockname()[4]
for op, target in ((1, b"\0" * 6), (2, b"\xff" * 6)):
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, address, target, address)
    for _ in range(2):
        raw.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
"""


class DropletBackendError(RuntimeError):
    """A droplet could not be made real; the fake turns it into an errored action."""


class FleetDropletBackend:
    """``DropletBackend`` on local nodes, for the droplets of one cluster."""

    def __init__(
        self,
        cluster: str,
        *,
        docker: Docker | None = None,
        ready_timeout: float = 90.0,
    ) -> None:
        self.cluster = cluster
        self.docker = docker or Docker()
        # Readiness here is sshd answering; the login is Dynia's to check, with its own key.
        self.nodes = LocalNodeProvider(
            docker=self.docker,
            private_key_for=lambda _cluster: None,
            ready_timeout=ready_timeout,
        )
        self.public = self.nodes.ensure_network(cluster)
        self.subnet = ipaddress.ip_network(self.public.subnet)
        self.droplets: dict[int, str] = {}  # droplet id -> node name
        self.holders: dict[str, int | None] = {}  # reserved address -> droplet id
        self.vpc_networks: dict[str, str] = {}  # VPC ip_range -> docker network name
        self.moves: list[tuple[str, int | None]] = []  # every assignment, in order
        self._lock = threading.Lock()

    @property
    def gateway(self) -> str:
        """The host's address on the public network: where the fake API must listen."""
        assert self.public.gateway, "the public network has a gateway"
        return self.public.gateway

    # -- droplets ----------------------------------------------------------------------------

    def create(self, request: DropletRequest) -> DropletAddresses:
        node = self._node_of(request)
        if not request.ssh_public_keys:
            raise DropletBackendError(f"droplet {request.name} names no SSH key")
        release = LOCAL_RELEASES.get(request.image)
        if release is None:
            raise DropletBackendError(
                f"droplet {request.name}: no local node release plays image {request.image!r}"
            )
        spec = NodeSpec(
            self.cluster, node, request.region, request.size, request.ssh_public_keys[0], release
        )
        made = self.nodes.create_node(spec)
        with self._lock:
            self.droplets[request.droplet_id] = node
        container = container_name(self.cluster, node)
        vpc = self._vpc_network(request.vpc_ip_range)
        self.docker.run(["network", "connect", vpc, container])
        self._cloud_init(container, request)
        return DropletAddresses(made.public_ip, self._address_on(container, vpc))

    def delete(self, droplet_id: int) -> None:
        with self._lock:
            node = self.droplets.pop(droplet_id, None)
        if node is not None:
            self.nodes.delete_node(self.cluster, container_name(self.cluster, node))

    def _node_of(self, request: DropletRequest) -> str:
        tags = dict(t.split("-", 2)[1:] for t in request.tags if t.count("-") >= 2)
        if tags.get("cluster") != self.cluster or "node" not in tags:
            raise DropletBackendError(
                f"droplet {request.name} is not tagged as a node of cluster {self.cluster}"
            )
        return tags["node"]

    def _vpc_network(self, ip_range: str) -> str:
        with self._lock:
            if ip_range in self.vpc_networks:
                return self.vpc_networks[ip_range]
            name = (
                f"{network_name(self.cluster)}-vpc-{ip_range.replace('.', '-').replace('/', '-')}"
            )
            if not self.docker.exists("network", name):
                self.docker.run(
                    [
                        "network",
                        "create",
                        "--driver=bridge",
                        f"--subnet={ip_range}",
                        f"--label={LABEL_MANAGED}=true",
                        f"--label={LABEL_CLUSTER}={self.cluster}",
                        f"--label={LABEL_KIND}=vpc",
                        name,
                    ]
                )
            self.vpc_networks[ip_range] = name
            return name

    def release_vpc(self, ip_range: str) -> None:
        """The VPC was deleted on the API: its network goes too."""
        with self._lock:
            name = self.vpc_networks.pop(ip_range, None)
        if name is not None:
            self.docker.run(["network", "rm", name], check=False)

    def _address_on(self, container: str, network: str) -> str:
        found = self.docker.inspect("container", [container])
        address = found[0]["NetworkSettings"]["Networks"][network]["IPAddress"]
        if not address:
            raise DropletBackendError(f"{container} got no address on {network}")
        return str(address)

    # -- cloud-init ----------------------------------------------------------------------------

    def _cloud_init(self, container: str, request: DropletRequest) -> None:
        """Apply the parts of the user data the provider relies on, as cloud-init would."""
        config = _cloud_config(request.user_data)
        keys = config.get("ssh_keys") or {}
        if config.get("ssh_deletekeys"):
            self._exec(container, "rm -f /etc/ssh/ssh_host_*")
        for kind in ("ed25519", "ecdsa", "rsa"):
            private, public = keys.get(f"{kind}_private"), keys.get(f"{kind}_public")
            if private and public:
                path = f"/etc/ssh/ssh_host_{kind}_key"
                self._write(container, path, private.strip() + "\n", "600")
                self._write(container, path + ".pub", public.strip() + "\n", "644")
        authorized = "".join(k.strip() + "\n" for k in request.ssh_public_keys)
        self._exec(container, "install -d -m 700 /root/.ssh")
        self._write(container, "/root/.ssh/authorized_keys", authorized, "600")
        if "python3" in (config.get("packages") or []):
            self._exec(container, "command -v python3 >/dev/null")
        self._exec(container, "systemctl restart ssh")

    def _write(self, container: str, path: str, content: str, mode: str) -> None:
        # Content goes through stdin, so a private key never shows on a command line.
        script = f"umask 077 && cat > {path} && chmod {mode} {path}"
        self.docker.run(["exec", "-i", container, "sh", "-c", script], input_data=content.encode())

    def _exec(self, container: str, script: str, *, check: bool = True) -> bool:
        done = self.docker.run(["exec", container, "sh", "-c", script], check=check)
        return done.returncode == 0

    # -- reserved IPs --------------------------------------------------------------------------

    def reserve_address(self, region: str) -> str:
        with self._lock:
            for host in RESERVED_HOSTS:
                address = str(self.subnet.network_address + host)
                if address not in self.holders:
                    self.holders[address] = None
                    return address
        raise DropletBackendError(f"no free reserved address left in {self.subnet}")

    def release_address(self, address: str) -> None:
        self._unplug(address)
        with self._lock:
            self.holders.pop(address, None)

    def assign_reserved_ip(self, address: str, droplet_id: int | None) -> None:
        with self._lock:
            previous = self.holders.get(address)
            node = self.droplets.get(droplet_id) if droplet_id is not None else None
        if droplet_id is not None and node is None:
            raise DropletBackendError(f"droplet {droplet_id} has no node")
        if previous is not None and previous != droplet_id:
            self._unplug(address)
        if node is not None:
            self._plug(address, container_name(self.cluster, node))
        with self._lock:
            self.holders[address] = droplet_id
            self.moves.append((address, droplet_id))

    def holder_of(self, address: str) -> int | None:
        with self._lock:
            return self.holders.get(address)

    def _plug(self, address: str, container: str) -> None:
        cidr = f"{address}/{self.subnet.prefixlen}"
        self._exec(container, f"ip addr replace {cidr} dev {PUBLIC_INTERFACE}")
        self.docker.run(
            ["exec", container, "python3", "-c", _GARP, PUBLIC_INTERFACE, address], check=False
        )
        # The host is the "internet" side: forget the old holder's MAC even if an ARP was lost.
        subprocess.run(["ip", "neigh", "flush", "to", address], capture_output=True, check=False)

    def _unplug(self, address: str) -> None:
        """Remove ``address`` from the node holding it (a dead node: nothing to remove)."""
        with self._lock:
            holder = self.holders.get(address)
            node = self.droplets.get(holder) if holder is not None else None
        if node is not None:
            cidr = f"{address}/{self.subnet.prefixlen}"
            self.docker.run(
                [
                    "exec",
                    container_name(self.cluster, node),
                    "sh",
                    "-c",
                    f"ip addr del {cidr} dev {PUBLIC_INTERFACE}",
                ],
                check=False,
            )

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every node, VPC network and the public network of this backend."""
        self.nodes.delete_network(self.cluster)
        with self._lock:
            names = list(self.vpc_networks.values())
            self.vpc_networks.clear()
        for name in names:
            self.docker.run(["network", "rm", name], check=False)


def _cloud_config(user_data: str | None) -> dict:
    if not user_data or not user_data.startswith("#cloud-config"):
        raise DropletBackendError("the droplet's user data is not a #cloud-config document")
    config = yaml.safe_load(user_data)
    if not isinstance(config, dict):
        raise DropletBackendError("the droplet's cloud-config is not a mapping")
    return config
