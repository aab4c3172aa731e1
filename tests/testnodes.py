"""Throwaway fleets of local nodes for tests and Molecule scenarios.

    python tests/testnodes.py up --name PREFIX --count N --dir DIR [--image debian-13]
    python tests/testnodes.py down --name PREFIX --dir DIR

The tests import it (``tests`` is on pytest's pythonpath); the Molecule scenarios run it as a
script with the repository root on ``PYTHONPATH`` (``molecule/shared/create.yml``), so it uses
the checkout's ``dynia``.

``up`` starts N nodes on the network ``dynia-PREFIX`` with a fresh key pair in DIR, pins their
host keys in DIR/known_hosts and writes DIR/inventory.yml (group ``nodes``) and DIR/nodes.json.
``down`` removes the nodes, their volumes, the network and those files. Both are safe to rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from dynia.errors import DyniaError
from dynia.naming import new_node_name
from dynia.providers.base import NetworkInfo, NodeSpec, ProvisionedNode, ReservedIpInfo
from dynia.providers.local.nodes import NODE_INTERFACE, LocalNodeProvider
from dynia.ssh import (
    generate_key_pair,
    remove_key_pair,
    run_ssh,
    ssh_common_args,
    write_known_hosts,
)

KEY_NAME = "id_ed25519"
WRITTEN_FILES = ("known_hosts", "inventory.yml", "nodes.json")


@dataclass(frozen=True)
class Fleet:
    cluster: str
    directory: Path
    network: NetworkInfo
    reserved_ip: ReservedIpInfo
    nodes: list[ProvisionedNode]

    @property
    def private_key(self) -> Path:
        return self.directory / KEY_NAME

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.directory / "inventory.yml"

    def node(self, name: str) -> ProvisionedNode:
        return next(node for node in self.nodes if node.name == name)

    def ssh(self, node: ProvisionedNode, command: str, timeout: float = 60.0) -> str:
        """Run ``command`` on ``node`` as root over pinned-key SSH; returns its stdout."""
        key, known_hosts = self.private_key, self.known_hosts
        result = run_ssh(node.private_ip, key, known_hosts, command, timeout=timeout)
        return result.stdout.decode(errors="replace")


def provider_for(directory: Path, ready_timeout: float = 90.0) -> LocalNodeProvider:
    """A provider whose readiness check logs in with the fleet's own key."""
    return LocalNodeProvider(
        private_key_for=lambda _cluster: directory / KEY_NAME, ready_timeout=ready_timeout
    )


def fleet_up(
    prefix: str,
    count: int,
    directory: Path,
    *,
    names: Sequence[str] | None = None,
    provider: LocalNodeProvider | None = None,
    image: str = "",
) -> Fleet:
    """Start ``count`` nodes in cluster ``prefix`` (existing ones are kept and counted), booting
    the local node image ``image`` (debian-12, debian-13; "" for the default).

    If any node fails, everything of ``prefix`` is removed before the error is raised."""
    directory.mkdir(parents=True, exist_ok=True)
    provider = provider or provider_for(directory)
    try:
        return _fleet_up(prefix, count, directory, names, provider, image)
    except BaseException:
        fleet_down(prefix, directory, provider)
        raise


def _fleet_up(
    prefix: str,
    count: int,
    directory: Path,
    names: Sequence[str] | None,
    provider: LocalNodeProvider,
    image: str = "",
) -> Fleet:
    public_key = generate_key_pair(directory / KEY_NAME, f"dynia-testnodes-{prefix}")
    network = provider.ensure_network(prefix)
    reserved_ip = provider.allocate_reserved_ip(prefix, "local")
    wanted = _node_names(provider, prefix, count, names)
    specs = [NodeSpec(prefix, name, "local", "container", public_key, image) for name in wanted]
    if image:
        provider.prepare_image(image, print)  # builds it once, before nodes wait on it in parallel
    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        nodes = sorted(pool.map(provider.create_node, specs), key=lambda node: node.name)
    fleet = Fleet(prefix, directory, network, reserved_ip, nodes)
    write_known_hosts(fleet.known_hosts, {node.private_ip: node.host_keys for node in nodes})
    fleet.inventory.write_text(yaml.safe_dump(inventory(fleet), sort_keys=True))
    (directory / "nodes.json").write_text(json.dumps(describe(fleet), indent=2, sort_keys=True))
    return fleet


def fleet_down(prefix: str, directory: Path, provider: LocalNodeProvider | None = None) -> None:
    """Remove the nodes, volumes and network of ``prefix`` and the files ``up`` wrote."""
    (provider or provider_for(directory)).delete_network(prefix)
    remove_key_pair(directory / KEY_NAME)
    for name in WRITTEN_FILES:
        (directory / name).unlink(missing_ok=True)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def _node_names(
    provider: LocalNodeProvider, prefix: str, count: int, names: Sequence[str] | None
) -> list[str]:
    if names:
        return list(names)
    chosen = [node.name for node in provider.list_nodes(prefix)][:count]
    while len(chosen) < count:
        chosen.append(new_node_name(set(chosen)))
    return chosen


def inventory(fleet: Fleet) -> dict[str, object]:
    common_args = ssh_common_args(fleet.known_hosts)
    hosts = {
        node.name: {
            "ansible_host": node.private_ip,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(fleet.private_key),
            "ansible_ssh_common_args": common_args,
            "ansible_python_interpreter": "/usr/bin/python3",
            "private_ip": node.private_ip,
            "node_interface": NODE_INTERFACE,
        }
        for node in fleet.nodes
    }
    group_vars = {
        "reserved_ip": fleet.reserved_ip.address,
        "cluster_subnet": fleet.network.subnet,
    }
    return {"all": {"children": {"nodes": {"hosts": hosts, "vars": group_vars}}}}


def describe(fleet: Fleet) -> dict[str, object]:
    return {
        "cluster": fleet.cluster,
        "network": asdict(fleet.network),
        "reserved_ip": fleet.reserved_ip.address,
        "private_key": str(fleet.private_key),
        "known_hosts": str(fleet.known_hosts),
        "inventory": str(fleet.inventory),
        "nodes": [asdict(node) for node in fleet.nodes],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/testnodes.py")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start nodes and write the inventory")
    up.add_argument("--name", required=True, help="cluster prefix (network dynia-NAME)")
    up.add_argument("--count", type=int, default=1)
    up.add_argument("--dir", required=True, type=Path)
    up.add_argument("--names", help="comma-separated node names instead of generated ones")
    up.add_argument("--ready-timeout", type=float, default=90.0)
    up.add_argument("--image", default="", help="local node image: debian-12 or debian-13")
    down = commands.add_parser("down", help="remove the nodes, network and files")
    down.add_argument("--name", required=True)
    down.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    try:
        if args.command == "up":
            provider = provider_for(directory, ready_timeout=args.ready_timeout)
            names = args.names.split(",") if args.names else None
            fleet = fleet_up(
                args.name, args.count, directory, names=names, provider=provider, image=args.image
            )
            for node in fleet.nodes:
                print(f"{node.name} {node.private_ip}")
            print(f"inventory: {fleet.inventory}")
        else:
            fleet_down(args.name, directory)
            print(f"removed cluster {args.name}")
    except DyniaError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
