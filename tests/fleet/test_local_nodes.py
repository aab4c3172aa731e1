"""Local nodes: real systemd containers reached over SSH with pinned host keys."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
import testnodes
import yaml
from fleet_fixtures import local_fleet, unique_prefix
from testnodes import Fleet

from dynia.errors import ProviderError
from dynia.operations.local_setup import EngineLayout, setup
from dynia.providers.base import NodeProvider, NodeSpec
from dynia.providers.local.engine import Docker, EngineUnavailableError
from dynia.providers.local.image import remove_build_tree
from dynia.providers.local.nodes import LocalNodeProvider, network_name
from dynia.ssh import (
    HostKeyMismatchError,
    generate_key_pair,
    read_known_hosts,
    run_ssh,
)


def leftovers(cluster: str) -> dict[str, list[str]]:
    """Every Docker resource labelled for ``cluster``."""
    docker = Docker()
    label = f"label=dynia.cluster={cluster}"
    return {
        "containers": docker.text(["ps", "-a", "-q", "--filter", label]).split(),
        "networks": docker.text(["network", "ls", "-q", "--filter", label]).split(),
        "volumes": docker.text(["volume", "ls", "-q", "--filter", label]).split(),
    }


NOTHING = {"containers": [], "networks": [], "volumes": []}


@pytest.mark.fleet
def test_three_nodes_answer_over_pinned_ssh_and_leave_nothing(node_image: str) -> None:
    started = time.monotonic()
    with local_fleet(3, image=node_image) as fleet:
        ready = time.monotonic() - started
        print(f"\n3 nodes created and SSH-ready in {ready:.1f}s")
        assert len(fleet.nodes) == 3 and leftovers(fleet.cluster)["volumes"]
        pinned = read_known_hosts(fleet.known_hosts)
        for node in fleet.nodes:
            assert pinned[node.private_ip] == node.host_keys
            out = fleet.ssh(node, "hostname; cat /etc/machine-id; systemctl is-system-running")
            hostname, machine_id, system_state = out.split()
            assert hostname == node.name
            assert len(machine_id) == 32
            assert system_state in {"running", "degraded"}, out
        # Every node made its own identity at first boot.
        assert len({tuple(node.host_keys) for node in fleet.nodes}) == 3
        directory, cluster = fleet.directory, fleet.cluster
        assert_inventory(fleet.inventory, fleet)
    assert leftovers(cluster) == NOTHING
    assert not (directory / "id_ed25519").exists() and not directory.exists()


def assert_inventory(path: Path, fleet: Fleet) -> None:
    data = yaml.safe_load(path.read_text())
    group = data["all"]["children"]["nodes"]
    assert group["vars"]["reserved_ip"].endswith(".250")
    for name, host in group["hosts"].items():
        assert host["ansible_user"] == "root"
        assert "StrictHostKeyChecking=yes" in host["ansible_ssh_common_args"]
        assert host["private_ip"] == host["ansible_host"]
        assert host["node_interface"] == "eth0"
        assert name in {node.name for node in fleet.nodes}


@pytest.mark.fleet
def test_node_services_are_ready_and_vm_like(local_nodes) -> None:
    fleet = local_nodes(1)
    node = fleet.nodes[0]
    # The inner Docker engine, compose v1, and the packaged services installed but not clashing.
    out = fleet.ssh(
        node,
        "timeout 60 sh -c 'until docker info >/dev/null 2>&1; do sleep 0.5; done';"
        " docker info --format '{{.Driver}}'; docker-compose version --short;"
        " ss -Hltn 'sport = :80' | wc -l; systemctl is-active caddy;"
        " stat -c %Y /var/lib/apt/lists",
    )
    driver, compose, listeners_on_80, caddy, lists_mtime = out.split()
    assert driver == "overlay2"
    assert compose.startswith("1.")
    assert listeners_on_80 == "0"
    assert caddy == "active"
    assert lists_mtime == "0"


@pytest.mark.fleet
def test_changed_host_key_is_refused(local_nodes) -> None:
    fleet = local_nodes(1)
    node = fleet.nodes[0]
    # The node gets a new identity (as if replaced by someone else at the same address).
    fleet.ssh(node, "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A && systemctl restart ssh")
    with pytest.raises(HostKeyMismatchError) as caught:
        run_ssh(node.private_ip, fleet.private_key, fleet.known_hosts, "true")
    assert node.private_ip in caught.value.message
    # The pinned file was not changed by the refused connection.
    assert read_known_hosts(fleet.known_hosts)[node.private_ip] == node.host_keys


@pytest.mark.fleet
def test_create_is_idempotent_by_name(local_nodes) -> None:
    fleet = local_nodes(1)
    provider = LocalNodeProvider(private_key_for=lambda _c: fleet.private_key)
    assert isinstance(provider, NodeProvider)
    node = fleet.nodes[0]
    public_key = fleet.private_key.with_name("id_ed25519.pub").read_text()
    again = provider.create_node(NodeSpec(fleet.cluster, node.name, "local", "c", public_key))
    assert again == node
    assert [n.name for n in provider.list_nodes(fleet.cluster)] == [node.name]
    first = provider.allocate_reserved_ip(fleet.cluster, "local")
    assert provider.allocate_reserved_ip(fleet.cluster, "local") == first == fleet.reserved_ip


@pytest.mark.fleet
def test_node_that_never_gets_ready_is_removed(node_image: str, tmp_path: Path) -> None:
    cluster = unique_prefix("slow")
    key = tmp_path / "id_ed25519"
    generate_key_pair(key, "test")
    # The node authorizes another key than the private one Dynia logs in with (its .pub names
    # the other): every login is refused, so it never becomes SSH-ready however fast it boots.
    other_public_key = generate_key_pair(tmp_path / "other_ed25519", "other")
    key.with_name(key.name + ".pub").write_text(other_public_key)
    provider = LocalNodeProvider(image=node_image, private_key_for=lambda _c: key, ready_timeout=2)
    try:
        with pytest.raises(ProviderError) as caught:
            provider.create_node(NodeSpec(cluster, "lazy-sloth", "local", "c", other_public_key))
        assert "'lazy-sloth'" in caught.value.message
        assert "did not become SSH-ready within 2s" in caught.value.message
        assert leftovers(cluster)["containers"] == [] and leftovers(cluster)["volumes"] == []
    finally:
        provider.delete_network(cluster)
    assert leftovers(cluster) == NOTHING


@pytest.mark.fleet
def test_testnodes_command_up_and_down(node_image: str, tmp_path: Path) -> None:
    prefix, directory = unique_prefix("mol"), tmp_path / "fleet"
    try:
        assert (
            testnodes.main(["up", "--name", prefix, "--count", "2", "--dir", str(directory)]) == 0
        )
        described = json.loads((directory / "nodes.json").read_text())
        assert described["network"]["name"] == network_name(prefix)
        assert len(described["nodes"]) == 2
        assert (directory / "id_ed25519").stat().st_mode & 0o777 == 0o600
    finally:
        assert testnodes.main(["down", "--name", prefix, "--dir", str(directory)]) == 0
    assert leftovers(prefix) == NOTHING
    assert not directory.exists()


@pytest.mark.fleet
def test_setup_starts_an_engine_when_none_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path CI takes on a fresh machine, on a private socket so the machine's engine and
    the other tests' nodes are untouched."""
    root = Path(tempfile.mkdtemp(prefix="dyd-"))  # short: unix socket paths are limited
    engine = EngineLayout.private(root)
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    lines: list[str] = []
    result = None
    try:
        with pytest.raises(EngineUnavailableError):
            Docker().ping(timeout=3)
        result = setup(progress=lines.append, build_image=False, engine=engine)
        assert result.started_engine_pid is not None
        assert any(line.startswith("starting dockerd") for line in lines)
        assert Docker().ping()
        again = setup(progress=lines.append, build_image=False, engine=engine)
        assert again.started_engine_pid is None  # idempotent: the running engine is kept
    finally:
        if result and result.started_engine_pid:
            stop_process(result.started_engine_pid)
        remove_build_tree(root)


def stop_process(pid: int, timeout: float = 30.0) -> None:
    """Stop the dockerd this test started and reap it (it is this process's child)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
