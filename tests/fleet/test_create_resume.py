"""`dynia cluster create` interrupted by the operator, then re-run: it resumes, never duplicates.

Ctrl-C or kill -9 reaches the run at four moments: after the first node is ready, while the second
node's container starts, while the bootstrap playbook runs, and right after a node got its HAProxy
config. The re-run finishes the same nodes; no ansible-playbook outlives the interrupted run.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from create_runs import (
    READY_LINE,
    Cluster,
    alive,
    descendants,
    report_time,
)

pytestmark = pytest.mark.fleet


def test_ctrl_c_after_the_first_node_then_rerun_resumes(cluster: Cluster) -> None:
    first = cluster.start(*cluster.create_args())
    interrupted_node = first.wait_for(READY_LINE).group(1)
    first.signal_group(signal.SIGINT)
    rc, stderr = first.finish(timeout=120)
    first_seconds = first.elapsed
    assert rc == 130, stderr
    assert "re-run" in stderr and "resume" in stderr, stderr

    state = cluster.state()  # parses: the file is valid JSON with the cluster in it
    assert state["status"] == "planned"
    assert state["nodes"][interrupted_node]["status"] == "ready"
    kept = state["nodes"][interrupted_node]["provider_id"]
    assert kept == f"dynia-{cluster.name}-{interrupted_node}"
    containers = cluster.containers()
    assert interrupted_node in containers
    assert set(containers) <= set(state["nodes"]), "every container is a node state knows"
    kept_id = containers[interrupted_node]["Id"]

    started = time.monotonic()
    rerun = cluster.run(*cluster.create_args())
    assert rerun.returncode == 0, rerun.stderr
    report_time("Ctrl-C after node 1, then re-run", first_seconds, time.monotonic() - started)
    cluster.assert_complete()
    assert cluster.containers()[interrupted_node]["Id"] == kept_id, "the first node was reused"


def test_kill_9_during_bootstrap_then_rerun_resumes(cluster: Cluster) -> None:
    first = cluster.start(*cluster.create_args())
    first.wait_for("Preparing nodes")
    time.sleep(2)  # let the bootstrap playbook get going on the nodes
    cluster.leftover_pids |= descendants(first.process.pid)
    first.signal_group(signal.SIGKILL)
    rc, _ = first.finish(timeout=30)
    first_seconds = first.elapsed
    assert rc == -signal.SIGKILL

    state = cluster.state()
    assert state["status"] == "planned"
    assert [n["status"] for n in state["nodes"].values()] == ["ready", "ready"]
    assert "bootstrap" not in state["completed_steps"]
    ids = {node: c["Id"] for node, c in cluster.containers().items()}
    assert sorted(ids) == sorted(state["nodes"])

    # What the killed run started outside its group (ansible-playbook has its own pty session)
    # must end on its own, or it would keep changing the nodes while the re-run does.
    deadline = time.monotonic() + 15
    while alive(cluster.leftover_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = alive(cluster.leftover_pids)
    assert not survivors, [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in survivors]

    started = time.monotonic()
    rerun = cluster.run(*cluster.create_args())
    assert rerun.returncode == 0, rerun.stderr
    report_time("kill -9 in bootstrap, then re-run", first_seconds, time.monotonic() - started)
    state = cluster.assert_complete()
    assert {node: c["Id"] for node, c in cluster.containers().items()} == ids


def test_kill_9_while_the_second_node_starts_then_rerun_resumes(cluster: Cluster) -> None:
    first = cluster.start(*cluster.create_args())
    second = first.wait_for(r"node 2/2 (\S+): creating").group(1)
    container = f"dynia-{cluster.name}-{second}"
    # Kill as soon as the container runs: before the run copied its SSH key into it.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", container],
            capture_output=True,
            text=True,
            check=False,
        )
        if running.stdout.strip() == "true":
            break
    first.signal_group(signal.SIGKILL)
    first.finish(timeout=30)
    first_seconds = first.elapsed
    state = cluster.state()
    assert state["nodes"][second]["status"] == "provisioning"
    ids = {node: c["Id"] for node, c in cluster.containers().items()}
    assert sorted(ids) == sorted(state["nodes"])

    started = time.monotonic()
    rerun = cluster.run(*cluster.create_args())
    assert rerun.returncode == 0, rerun.stderr
    report_time("kill -9 as node 2 starts, then re-run", first_seconds, time.monotonic() - started)
    cluster.assert_complete()
    assert {node: c["Id"] for node, c in cluster.containers().items()} == ids


def test_ctrl_c_during_bootstrap_stops_ansible_then_rerun_resumes(cluster: Cluster) -> None:
    first = cluster.start(*cluster.create_args())
    # Right after a node got its HAProxy config, before the play's handlers reload HAProxy.
    first.wait_for(r"Copy the already rendered HAProxy configuration \.\.\. changed")
    cluster.leftover_pids |= descendants(first.process.pid)
    first.signal_group(signal.SIGINT)
    rc, stderr = first.finish(timeout=120)
    first_seconds = first.elapsed
    assert rc != 0, stderr
    assert cluster.state()["status"] == "planned"
    assert not alive(cluster.leftover_pids), "no ansible-playbook outlives the interrupted run"

    started = time.monotonic()
    rerun = cluster.run(*cluster.create_args())
    assert rerun.returncode == 0, rerun.stderr
    report_time("Ctrl-C in bootstrap, then re-run", first_seconds, time.monotonic() - started)
    cluster.assert_complete()
