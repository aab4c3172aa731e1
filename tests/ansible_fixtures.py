"""A dynia home, state and rendered deploy-config over real local nodes, for the Ansible tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fleet_fixtures import local_fleet, unique_prefix
from sample_state import render_sample
from testnodes import Fleet

from dynia.paths import HomeLayout
from dynia.state.models import (
    BACKUP_PRIORITY,
    MASTER_PRIORITY,
    NODE_READY,
    STATUS_INFRA_READY,
    Cluster,
    Network,
    Node,
    ReservedIp,
)
from dynia.state.store import StateStore

ANSIBLE_BIN = Path(sys.executable).parent


@dataclass
class AnsibleCluster:
    fleet: Fleet
    layout: HomeLayout
    cluster: Cluster

    @property
    def project(self) -> Path:
        return self.layout.deploy_config_dir(self.cluster.name)

    @property
    def node_names(self) -> list[str]:
        return sorted(self.cluster.nodes)

    def ssh(self, node: str, command: str) -> str:
        return self.fleet.ssh(self.fleet.node(node), command)

    def remote_sha256(self, node: str, path: str) -> str:
        return self.ssh(node, f"sha256sum {path}").split()[0]

    def manifest(self) -> dict:
        return json.loads((self.project / "metadata.json").read_text())

    def render(self) -> None:
        render_sample(self.layout, self.cluster)

    def ansible(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run an ansible CLI in the generated project, as an operator would."""
        return subprocess.run(
            [str(ANSIBLE_BIN / tool), *args],
            cwd=self.project,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def cluster_from_fleet(fleet: Fleet) -> Cluster:
    nodes = {}
    for index, node in enumerate(sorted(fleet.nodes, key=lambda n: n.name)):
        nodes[node.name] = Node(
            name=node.name,
            provider_id=node.provider_id,
            public_ip=node.private_ip,
            private_ip=node.private_ip,
            priority=MASTER_PRIORITY if index == 0 else BACKUP_PRIORITY - index,
            status=NODE_READY,
            host_keys=list(node.host_keys),
        )
    network = fleet.network
    return Cluster(
        name=fleet.cluster,
        node_provider="local",
        dns_provider="local",
        region="local",
        size="container",
        planned_nodes=len(nodes),
        status=STATUS_INFRA_READY,
        nodes=nodes,
        reserved_ip=ReservedIp(fleet.reserved_ip.address, fleet.reserved_ip.provider_id),
        network=Network(network.name, network.subnet, network.interface, network.gateway),
    )


def write_home(layout: HomeLayout, fleet: Fleet, cluster: Cluster) -> None:
    """State, SSH key and pinned known_hosts where the inventory plugin looks for them."""
    with StateStore(layout.root).transaction("test setup") as txn:
        txn.state.clusters[cluster.name] = cluster
        txn.state.current_cluster = cluster.name
    ssh_dir = layout.ssh_private_key(cluster.name).parent
    ssh_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(fleet.private_key, layout.ssh_private_key(cluster.name))
    shutil.copy2(fleet.known_hosts, layout.known_hosts(cluster.name))


@contextlib.contextmanager
def ansible_cluster(count: int, image: str) -> Iterator[AnsibleCluster]:
    """``count`` nodes, a dynia home describing them and a rendered deploy-config; all removed."""
    home = Path(tempfile.mkdtemp(prefix="dynia-home-"))
    try:
        with local_fleet(count, image=image, prefix=unique_prefix("a")) as fleet:
            cluster = cluster_from_fleet(fleet)
            layout = HomeLayout(home)
            write_home(layout, fleet, cluster)
            handle = AnsibleCluster(fleet, layout, cluster)
            handle.render()
            yield handle
    finally:
        shutil.rmtree(home, ignore_errors=True)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def bootstrapped_cluster(node_image: str) -> Iterator[AnsibleCluster]:
    """Three nodes after bootstrap.yml and a first sync.yml through the runner."""
    from dynia.runner import run_playbook

    with ansible_cluster(3, node_image) as handle:
        run_playbook(handle.project, "bootstrap.yml")
        run_playbook(handle.project, "sync.yml")
        yield handle
