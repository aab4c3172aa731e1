"""The local NodeProvider: each node a systemd container on a per-cluster Docker network.

Nodes boot the node image (``image.py``), get their own SSH host keys at first boot, and are
reachable from the host at their address on the cluster network. Everything the provider makes
carries ``dynia.*`` labels and a ``dynia-<cluster>`` name prefix, so it can be found and removed.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from dynia.errors import ProviderError, UsageError
from dynia.paths import HomeLayout, resolve_home
from dynia.providers.base import (
    NetworkInfo,
    NodeSpec,
    ProvisionedNode,
    ReservedIpGoneError,
    ReservedIpInfo,
)
from dynia.providers.local.engine import Docker, DockerCommandError, engine_location
from dynia.providers.local.image import DEFAULT_LOCAL_IMAGE, check_local_image, ensure_node_image
from dynia.ssh import SshError, key_body, run_ssh, write_known_hosts
from dynia.waiting import WaitTimeout, wait_until

LABEL_MANAGED = "dynia.managed"
LABEL_CLUSTER = "dynia.cluster"
LABEL_NODE = "dynia.node"
LABEL_KIND = "dynia.kind"
NODE_INTERFACE = "eth0"
RESERVED_IP_HOST = 250  # host part of the Reserved IP, outside the range containers get
# How long a freshly started node may refuse the SSH key copy before that counts as a failure.
AUTHORIZE_WINDOW_SECONDS = 20.0
SUBNET_POOLS = ("10.213.0.0/16", "172.29.0.0/16", "192.168.224.0/19")
_NAMES = {
    # Node names become hostnames; cluster names only Docker object names (which allow "_").
    "node": re.compile(r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$"),
    "cluster": re.compile(r"^[a-z0-9]([a-z0-9_-]{0,46}[a-z0-9])?$"),
}

# What boots systemd in a container where --privileged is refused (the engine itself lacks
# CAP_SYS_RESOURCE): every capability but that one, no confinement, all devices.
UNPRIVILEGED_FLAGS = (
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--security-opt=systempaths=unconfined",
    "--device-cgroup-rule=a *:* rwm",
)
COMMON_RUN_FLAGS = (
    "--cgroupns=private",
    "--tmpfs=/run",
    "--tmpfs=/run/lock",
    "--stop-signal=SIGRTMIN+3",
    # Never "unless-stopped"/"always": a restarted engine must not resurrect leftover nodes.
    "--restart=no",
)


def network_name(cluster: str) -> str:
    return f"dynia-{cluster}"


def container_name(cluster: str, node: str) -> str:
    return f"dynia-{cluster}-{node}"


def volume_name(cluster: str, node: str) -> str:
    return f"dynia-{cluster}-{node}-docker"


def check_name(kind: str, value: str) -> str:
    if not _NAMES[kind].match(value):
        allowed = "dashes" if kind == "node" else "dashes or underscores"
        raise UsageError(
            f"invalid {kind} name {value!r}",
            hint=f"use lowercase letters, digits and {allowed} (at most 48 characters)",
        )
    return value


class LocalNodeProvider:
    """NodeProvider on the local Docker engine.

    The Reserved IP is an address of the cluster network (host part .250, outside the range
    Docker hands to containers) that keepalived on the MASTER node carries as a VRRP
    ``virtual_ipaddress``. Moving it is VRRP's job, so attach and detach need no API call: the
    address follows whichever node keepalived elects, and the host reaches it over the bridge.
    """

    name = "local"
    reserved_ip_mode: Literal["vrrp", "api"] = "vrrp"
    _run_mode_cache: ClassVar[dict[str, tuple[str, ...]]] = {}
    _address_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        docker: Docker | None = None,
        image: str | None = None,
        home: Path | None = None,
        private_key_for: Callable[[str], Path | None] | None = None,
        ready_timeout: float = 90.0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """``private_key_for(cluster)`` names the private key matching the public key in the
        node spec; with it, readiness means a real key-based login. It defaults to the cluster
        key under the dynia home."""
        self.docker = docker or Docker()
        self._image = image
        self._home = home
        self._private_key_for = private_key_for or self._home_key
        self.ready_timeout = ready_timeout
        self._progress = progress or (lambda _message: None)

    # -- network ---------------------------------------------------------------------------

    def ensure_network(self, cluster: str) -> NetworkInfo:
        check_name("cluster", cluster)
        name = network_name(cluster)
        found = self.docker.inspect("network", [name])
        if found:
            return _network_info(found[0])
        for subnet in self._free_subnets():
            try:
                self._create_network(cluster, subnet)
            except DockerCommandError as exc:
                if "overlap" in exc.message:  # another cluster took it meanwhile: next one
                    continue
                if "already exists" not in exc.message:
                    raise
            return _network_info(self.docker.inspect("network", [name])[0])
        raise ProviderError(
            f"no free /24 left for the network of cluster {cluster!r}",
            hint="delete unused Docker networks (`docker network ls`) and retry",
        )

    def delete_network(self, cluster: str) -> None:
        """Remove the cluster's network, and first any of its nodes still on it."""
        for node in self.list_nodes(cluster):
            self.delete_node(cluster, node.provider_id)
        name = network_name(check_name("cluster", cluster))
        if self.docker.exists("network", name):
            self.docker.run(["network", "rm", name])

    def _create_network(self, cluster: str, subnet: ipaddress.IPv4Network) -> None:
        containers = next(iter(subnet.subnets(new_prefix=subnet.prefixlen + 1)))
        self.docker.run(
            [
                "network",
                "create",
                "--driver=bridge",
                f"--subnet={subnet}",
                f"--gateway={subnet.network_address + 1}",
                f"--ip-range={containers}",
                *self._labels(cluster, "network"),
                network_name(cluster),
            ]
        )

    def _free_subnets(self) -> list[ipaddress.IPv4Network]:
        taken = self._docker_subnets() + _host_networks()
        free = []
        for pool in SUBNET_POOLS:
            for candidate in ipaddress.ip_network(pool).subnets(new_prefix=24):
                if not any(candidate.overlaps(used) for used in taken):
                    free.append(candidate)
                if len(free) >= 8:
                    return free
        return free

    def _docker_subnets(self) -> list[ipaddress.IPv4Network]:
        ids = self.docker.text(["network", "ls", "-q"]).split()
        subnets = []
        for network in self.docker.inspect("network", ids):
            for config in (network.get("IPAM") or {}).get("Config") or []:
                if config.get("Subnet") and ":" not in config["Subnet"]:
                    subnets.append(ipaddress.ip_network(config["Subnet"], strict=False))
        return subnets

    # -- nodes -----------------------------------------------------------------------------

    def prepare_image(self, image: str, progress: Callable[[str], None]) -> None:
        """Build the node image of release ``image`` now if it is missing (minutes, once)."""
        if self._image is None:
            ensure_node_image(docker=self.docker, progress=progress, image=check_local_image(image))

    def create_node(self, spec: NodeSpec) -> ProvisionedNode:
        check_name("node", spec.name)
        release = check_local_image(spec.image or DEFAULT_LOCAL_IMAGE)
        network = self.ensure_network(spec.cluster)
        name = container_name(spec.cluster, spec.name)
        existing = self.docker.inspect("container", [name])
        if existing:
            if not existing[0]["State"]["Running"]:
                self.docker.run(["start", name])
            # A run killed between `docker run` and the key copy left a node nobody can log in to.
            self._authorize(name, spec.ssh_public_key)
            return self._wait_ready(spec, name, network, created=False)
        # Built on first use of a release (minutes, with progress lines), then reused by tag.
        image = (
            self._image
            or ensure_node_image(docker=self.docker, progress=self._progress, image=release).tag
        )
        try:
            self._run_container(spec, name, network, image)
            self._authorize(name, spec.ssh_public_key)
            return self._wait_ready(spec, name, network, created=True)
        except BaseException:
            # Nothing half-made survives: a rerun must find a clean slate, not a broken node.
            self._remove_node_resources(spec.cluster, spec.name)
            raise

    def check_room(self, cluster: str, nodes: list[str]) -> None:
        """Always room: a cluster's /24 leaves 125 node addresses, more than a cluster holds."""

    def list_nodes(self, cluster: str) -> list[ProvisionedNode]:
        names = self.docker.text(
            [
                "ps",
                "-a",
                "--filter",
                f"label={LABEL_CLUSTER}={cluster}",
                "--filter",
                f"label={LABEL_KIND}=node",
                "--format",
                "{{.Names}}",
            ]
        ).split()
        containers = self.docker.inspect("container", sorted(names))
        return [self._provisioned(c, network_name(cluster)) for c in containers]

    def delete_node(self, cluster: str, provider_id: str) -> None:
        found = self.docker.inspect("container", [provider_id])
        if not found:
            return
        labels = found[0]["Config"].get("Labels") or {}
        if labels.get(LABEL_CLUSTER) != cluster or labels.get(LABEL_KIND) != "node":
            raise ProviderError(
                f"{provider_id} is not a node of cluster {cluster!r}; refusing to delete it",
                hint="check the node id in `dynia cluster show`",
            )
        self._remove_node_resources(cluster, labels[LABEL_NODE])

    def _remove_node_resources(self, cluster: str, node: str) -> None:
        self.docker.run(["rm", "-f", "-v", container_name(cluster, node)], check=False)
        self.docker.run(["volume", "rm", "-f", volume_name(cluster, node)], check=False)

    def _run_container(self, spec: NodeSpec, name: str, network: NetworkInfo, image: str) -> None:
        volume = volume_name(spec.cluster, spec.name)
        self.docker.run(["volume", "create", *self._labels(spec.cluster, "volume"), volume])
        run_mode = self._run_mode(image)
        # Nodes created in parallel threads must not pick the same free address.
        with self._address_lock:
            self.docker.run(
                [
                    "run",
                    "--detach",
                    f"--name={name}",
                    f"--hostname={spec.name}",
                    f"--network={network.name}",
                    f"--ip={self._free_address(network.name)}",
                    f"--volume={volume}:/var/lib/docker",
                    *self._labels(spec.cluster, "node"),
                    f"--label={LABEL_NODE}={spec.name}",
                    *COMMON_RUN_FLAGS,
                    *run_mode,
                    image,
                ]
            )

    def _free_address(self, network: str) -> str:
        """The lowest address of the network's container range no node holds or was given.

        Nodes get fixed addresses, like a droplet keeps its IP across a power cycle: Docker hands
        a stopped container's address to the next container it starts and gives the stopped one
        a new address when it runs again, while state, known_hosts and the HA configs name every
        node by its address.
        """
        found = self.docker.inspect("network", [network])
        config = ((found[0].get("IPAM") or {}).get("Config") or [{}])[0] if found else {}
        pool = ipaddress.ip_network(config.get("IPRange") or config["Subnet"])
        names = self.docker.text(
            ["ps", "-a", "--filter", f"network={network}", "--format", "{{.Names}}"]
        ).split()
        taken = {config.get("Gateway")}
        for container in self.docker.inspect("container", sorted(names)):
            settings = (container["NetworkSettings"].get("Networks") or {}).get(network) or {}
            taken.add(settings.get("IPAddress"))
            taken.add((settings.get("IPAMConfig") or {}).get("IPv4Address"))
        for host in pool.hosts():
            if str(host) not in taken:
                return str(host)
        raise ProviderError(
            f"no free address left on the network {network} ({pool})",
            hint="remove nodes the cluster no longer needs (`dynia cluster node remove`)",
        )

    def _run_mode(self, image: str) -> tuple[str, ...]:
        """``--privileged`` where the engine allows it, else the capability set that works."""
        key = engine_location()
        if key not in self._run_mode_cache:
            probe = self.docker.run(
                ["run", "--rm", "--privileged", "--network=none", "--entrypoint=/bin/true", image],
                check=False,
                timeout=60,
            )
            privileged = ("--privileged",)
            self._run_mode_cache[key] = privileged if probe.returncode == 0 else UNPRIVILEGED_FLAGS
        return self._run_mode_cache[key]

    def _authorize(self, name: str, public_key: str) -> None:
        script = "umask 077 && mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys"
        line = public_key.strip().encode() + b"\n"

        def copy_key() -> bool:
            self.docker.run(["exec", "-i", name, "sh", "-c", script], input_data=line)
            return True

        # Right after `docker run`, systemd in the node is still setting the container up, and on
        # a busy host an exec can fail then without a word; it succeeds a moment later. A node
        # that keeps refusing past the window raises the last failure.
        wait_until(
            copy_key,
            timeout=AUTHORIZE_WINDOW_SECONDS,
            interval=0.5,
            what=f"the SSH key copy into {name}",
            retry_on=(DockerCommandError,),
        )

    def _wait_ready(
        self, spec: NodeSpec, name: str, network: NetworkInfo, created: bool
    ) -> ProvisionedNode:
        problem = "the container did not start"

        def not_ready() -> ProviderError:
            return ProviderError(
                f"node {spec.name!r} of cluster {spec.cluster!r} did not become SSH-ready "
                f"within {self.ready_timeout:g}s: {problem}",
                hint=(
                    "the new node was removed; rerun, or allow more time on a slow machine"
                    if created
                    else f"the node exists but does not answer: see `docker logs {name}`"
                ),
            )

        def ready() -> ProvisionedNode | None:
            nonlocal problem
            found = self.docker.inspect("container", [name])
            if not found or not found[0]["State"]["Running"]:
                problem = "the container stopped"
                raise not_ready()
            node = self._provisioned(found[0], network.name)
            problem = self._login_problem(spec, node)
            return node if problem is None else None

        try:
            return wait_until(
                ready, timeout=self.ready_timeout, interval=0.25, what=f"node {spec.name}"
            )
        except WaitTimeout:
            raise not_ready() from None

    def _login_problem(self, spec: NodeSpec, node: ProvisionedNode) -> str | None:
        """None when a key-based login works, else what is still missing."""
        if not node.private_ip:
            return "no address on the cluster network yet"
        if not node.host_keys:
            return "the node has not generated its SSH host keys yet"
        key = self._matching_private_key(spec)
        if key is None:
            return None if _ssh_banner(node.private_ip) else "sshd does not answer on port 22"
        with tempfile.TemporaryDirectory(prefix="dynia-ready-") as tmp:
            known_hosts = Path(tmp) / "known_hosts"
            write_known_hosts(known_hosts, {node.private_ip: node.host_keys})
            try:
                run_ssh(node.private_ip, key, known_hosts, "true", timeout=10)
            except SshError as exc:
                return exc.message
        return None

    def _matching_private_key(self, spec: NodeSpec) -> Path | None:
        key = self._private_key_for(spec.cluster)
        if key is None or not key.exists():
            return None
        public = key.with_name(key.name + ".pub")
        if public.exists() and key_body(public.read_text()) == key_body(spec.ssh_public_key):
            return key
        return None

    def _home_key(self, cluster: str) -> Path:
        return HomeLayout(resolve_home(self._home)).ssh_private_key(cluster)

    def _provisioned(self, container: dict[str, Any], network: str) -> ProvisionedNode:
        labels = container["Config"].get("Labels") or {}
        networks = container["NetworkSettings"].get("Networks") or {}
        address = (networks.get(network) or {}).get("IPAddress") or ""
        running = container["State"]["Running"]
        return ProvisionedNode(
            name=labels.get(LABEL_NODE, container["Name"].lstrip("/")),
            provider_id=container["Name"].lstrip("/"),
            public_ip=address,
            private_ip=address,
            host_keys=self.read_host_keys(container["Name"].lstrip("/")) if running else [],
        )

    def read_host_keys(self, name: str) -> list[str]:
        """The node's SSH host public keys, read out-of-band through the engine."""
        result = self.docker.run(
            ["exec", name, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null"], check=False
        )
        if result.returncode != 0:
            # Not readable yet (the node is still booting, or the engine refused the exec, which
            # it reports on stdout): the caller asks again until its deadline.
            return []
        lines = result.stdout.decode(errors="replace").splitlines()
        return sorted(key_body(line) for line in lines if line.strip())

    # -- Reserved IP -----------------------------------------------------------------------

    def allocate_reserved_ip(self, cluster: str, region: str) -> ReservedIpInfo:
        """The cluster's Reserved IP: always the .250 of its network, so asking twice is safe."""
        network = self.ensure_network(cluster)
        subnet = ipaddress.ip_network(network.subnet)
        address = str(subnet.network_address + RESERVED_IP_HOST)
        return ReservedIpInfo(address=address, provider_id=f"vrrp:{network.name}:{address}")

    def reserved_ip_exists(self, ip: ReservedIpInfo) -> bool:
        """The address is the .250 of the cluster network: it exists while that network does
        and still holds it (a network removed and made again has another subnet)."""
        name = _reserved_ip_network(ip)
        found = self.docker.inspect("network", [name]) if name else []
        if not found:
            return False
        try:
            subnet = ipaddress.ip_network(_network_info(found[0]).subnet)
            return ipaddress.ip_address(ip.address) in subnet
        except ValueError:
            return False

    def attach_reserved_ip(self, ip: ReservedIpInfo, node_provider_id: str) -> None:
        """keepalived's election decides which node carries the address; only its network
        must still be there."""
        if not self.reserved_ip_exists(ip):
            network = _reserved_ip_network(ip) or "of the cluster"
            raise ReservedIpGoneError(
                ip.address,
                f"Reserved IP {ip.address} no longer exists: the Docker network {network} "
                "that carried it is gone (removed outside Dynia), and the nodes' addresses "
                "with it",
                # Docker removes a network only once no container is on it: no node keeps it.
                hint="a new address would reach no node: delete the cluster (`dynia cluster "
                "delete`) and create it again",
            )

    def detach_reserved_ip(self, ip: ReservedIpInfo) -> None:
        """Nothing to do: the address leaves a node when keepalived there stops being MASTER."""

    def release_reserved_ip(self, cluster: str, ip: ReservedIpInfo) -> None:
        """Nothing is held outside the network: the address is forgotten with it."""

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _labels(cluster: str, kind: str) -> list[str]:
        return [
            f"--label={LABEL_MANAGED}=true",
            f"--label={LABEL_CLUSTER}={cluster}",
            f"--label={LABEL_KIND}={kind}",
        ]


def _reserved_ip_network(ip: ReservedIpInfo) -> str:
    """The network named in the provider id ``vrrp:<network>:<address>``; "" if none."""
    parts = ip.provider_id.split(":")
    return parts[1] if len(parts) == 3 and parts[0] == "vrrp" else ""


def _network_info(network: dict[str, Any]) -> NetworkInfo:
    config = ((network.get("IPAM") or {}).get("Config") or [{}])[0]
    return NetworkInfo(
        name=network["Name"],
        subnet=config.get("Subnet", ""),
        interface=NODE_INTERFACE,
        gateway=config.get("Gateway"),
    )


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Networks the host already routes or sits on: a cluster network must not shadow them."""
    networks = []
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-4", "addr"]):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        try:
            entries = json.loads(result.stdout or "[]")
        except json.JSONDecodeError:
            continue
        for entry in entries:
            networks.extend(_entry_networks(entry))
    return networks


def _entry_networks(entry: dict[str, Any]) -> list[ipaddress.IPv4Network]:
    raw = [entry.get("dst")]
    raw += [f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", []) if "local" in a]
    found = []
    for value in raw:
        if not value or value == "default" or ":" in value:
            continue
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            continue
        if network.prefixlen > 0 and not network.is_loopback:
            found.append(network)
    return found


def _ssh_banner(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=2) as connection:
            return connection.recv(16).startswith(b"SSH-")
    except OSError:
        return False
