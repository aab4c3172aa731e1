"""A node failing during `cluster create`, a `node add` killed while joining, a refused re-create.

Each re-run finishes what the broken run started, on the same nodes and addresses; a create of an
existing name with other settings is refused and changes nothing.
"""

from __future__ import annotations

import signal
import time

import pytest
from create_runs import (
    Cluster,
    descendants,
    docker,
    report_time,
)

pytestmark = pytest.mark.fleet


def test_clean_create_then_same_name_with_another_dns_provider_is_refused(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    done = cluster.run(*cluster.create_args())
    assert done.returncode == 0, done.stderr
    report_time("clean", time.monotonic() - started)
    cluster.assert_complete()

    before = (cluster.home / "state.json").read_bytes()
    ids = {node: c["Id"] for node, c in cluster.containers().items()}
    refused = cluster.run(*cluster.create_args("--dns-provider", "cloudflare"))
    assert refused.returncode != 0
    assert "--dns-provider" in refused.stderr and cluster.name in refused.stderr
    assert "hint:" in refused.stderr
    assert (cluster.home / "state.json").read_bytes() == before
    assert {node: c["Id"] for node, c in cluster.containers().items()} == ids


def test_a_node_stopped_during_create_fails_it_then_rerun_completes(cluster: Cluster) -> None:
    first = cluster.start(*cluster.create_args())
    first.wait_for(r"node 1/2 \S+: creating")  # both names and priorities are in state now
    nodes = cluster.state()["nodes"].values()
    stopped = max(nodes, key=lambda n: (n["priority"], n["name"]))["name"]
    # The MASTER-to-be: on the re-run it joins last and must take the Reserved IP over.
    first.wait_for(rf"node \d/2 {stopped}: ready at")
    container = f"dynia-{cluster.name}-{stopped}"
    docker("stop", container)
    rc, stderr = first.finish(timeout=300)
    first_seconds = first.elapsed
    assert rc != 0, stderr
    assert stopped in stderr.split("Error:", 1)[-1], stderr
    assert "hint:" in stderr, stderr
    state = cluster.state()
    assert state["status"] == "planned"
    ids = {node: c["Id"] for node, c in cluster.containers().items()}
    assert sorted(ids) == sorted(state["nodes"])
    address = state["nodes"][stopped]["private_ip"]

    docker("start", container)
    started = time.monotonic()
    rerun = cluster.run(*cluster.create_args())
    assert rerun.returncode == 0, rerun.stderr
    report_time("node stopped, started, re-run", first_seconds, time.monotonic() - started)
    state = cluster.assert_complete()
    assert {node: c["Id"] for node, c in cluster.containers().items()} == ids
    assert state["nodes"][stopped]["private_ip"] == address, "the node kept its address"


def test_node_add_killed_while_joining_then_rerun_finishes_the_same_node(cluster: Cluster) -> None:
    created = cluster.run(*cluster.create_args())
    assert created.returncode == 0, created.stderr
    before = set(cluster.state()["nodes"])

    first = cluster.start("--cluster", cluster.name, "cluster", "node", "add")
    first.wait_for("Preparing the new node")
    cluster.leftover_pids |= descendants(first.process.pid)
    first.signal_group(signal.SIGKILL)
    first.finish(timeout=30)
    nodes = cluster.state()["nodes"]
    (added,) = set(nodes) - before
    assert nodes[added]["status"] == "joining"
    added_id = cluster.containers()[added]["Id"]

    rerun = cluster.run("--cluster", cluster.name, "cluster", "node", "add")
    assert rerun.returncode == 0, rerun.stderr
    assert f"Finishing node(s) an interrupted run started: {added}" in rerun.stderr
    nodes = cluster.state()["nodes"]
    assert set(nodes) == before | {added}
    assert {n["status"] for n in nodes.values()} == {"ready"}
    assert cluster.containers()[added]["Id"] == added_id, "the same node was finished"
    container = f"dynia-{cluster.name}-{added}"
    journal = docker("exec", container, "journalctl", "-q", "-u", "keepalived")
    assert "Entering MASTER STATE" not in journal
    master = max(nodes.values(), key=lambda n: (n["priority"], n["name"]))["name"]
    assert cluster.vip_holders(settle=5) == [master]
