"""`dynia cluster create` interrupted for real, then re-run: it resumes and never duplicates.

Each test drives the CLI as a subprocess in its own session (as a terminal would run it), breaks
the run from outside (Ctrl-C to the process group, kill -9, a node's container stopped), checks
the state file and Docker, and re-runs the same command. Every test uses a 2-node cluster of its
own; whatever it made (containers, networks, volumes named ``dynia-<cluster>``) is removed after,
passed or failed, together with any process it started.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fleet_fixtures import unique_prefix

pytestmark = pytest.mark.fleet

NODES = "2"
READY_LINE = re.compile(r"node 1/2 (\S+): ready at")
# Seconds of each create (the interrupted ones: both runs together), for the printed comparison.
TIMES: dict[str, float] = {}


def report_time(kind: str, first: float, rerun: float = 0.0) -> None:
    TIMES[kind] = first + rerun
    parts = f" ({first:.1f}s until broken + {rerun:.1f}s re-run)" if rerun else ""
    clean = f"; clean create: {TIMES['clean']:.1f}s" if "clean" in TIMES and rerun else ""
    print(f"\n{kind}: {first + rerun:.1f}s{parts}{clean}")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` right now (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids of ``pids`` that still run (zombies count as gone)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


@dataclass
class Running:
    """A `dynia` process in its own session, its stderr read line by line as it comes."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    stderr: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    reader: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 180) -> re.Match[str]:
        """The first stderr line matching ``pattern``; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None:
                pytest.fail(f"dynia ended before {pattern!r}:\n{''.join(self.stderr)}")
            found = re.search(pattern, line)
            if found:
                return found
            if time.monotonic() >= deadline:
                pytest.fail(f"no {pattern!r} within {timeout}s:\n{''.join(self.stderr)}")

    def signal_group(self, number: int) -> None:
        os.killpg(self.process.pid, number)

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        """Exit code and the whole stderr once the process has ended."""
        rc = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc, "".join(self.stderr)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class Cluster:
    """One test's dynia home and cluster name, with helpers to look at state and Docker."""

    home: Path
    name: str
    started: list[Running] = field(default_factory=list)
    leftover_pids: set[int] = field(default_factory=set)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DYNIA_HOME": str(self.home)}

    def create_args(self, *extra: str) -> list[str]:
        return ["cluster", "create", "--name", self.name, "--nodes", NODES, *extra]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dynia.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str) -> Running:
        process = subprocess.Popen(
            [sys.executable, "-m", "dynia.cli", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,  # a group of its own, like a command run from a shell
            # Ctrl-C reaches a command typed in a terminal even when this test runs where SIGINT
            # is ignored (a background job inherits SIG_IGN, and Python then keeps it).
            preexec_fn=_default_sigint,
        )
        running = Running(process)
        self.started.append(running)
        return running

    def state_file(self) -> dict:
        return json.loads((self.home / "state.json").read_text())

    def state(self) -> dict:
        return self.state_file()["clusters"][self.name]

    def containers(self) -> dict[str, dict]:
        """The cluster's node containers, running or not, by the node name in their label."""
        names = docker(
            "ps", "-a", "--filter", f"label=dynia.cluster={self.name}", "--format", "{{.Names}}"
        ).split()
        found = json.loads(docker("inspect", *names)) if names else []
        return {c["Config"]["Labels"]["dynia.node"]: c for c in found}

    def networks(self) -> list[str]:
        listing = docker("network", "ls", "--format", "{{.Name}}").split()
        return [n for n in listing if n.startswith(f"dynia-{self.name}")]

    def ipv4_of(self, node: str) -> str:
        return docker("exec", f"dynia-{self.name}-{node}", "ip", "-4", "-o", "addr", "show")

    def vip_holders(self, settle: float) -> list[str]:
        """Nodes whose interfaces carry the Reserved IP, once exactly one does (or time is up).

        A node that joins late becomes healthy after keepalived's tracked checks rise, and only
        then takes the address over from the node that held it meanwhile.
        """
        state = self.state()
        needle = f" {state['reserved_ip']['address']}/"
        started = time.monotonic()
        while True:
            holders = [n for n in sorted(state["nodes"]) if needle in self.ipv4_of(n)]
            master = max(state["nodes"].values(), key=lambda n: (n["priority"], n["name"]))
            if holders == [master["name"]] or time.monotonic() - started > settle:
                waited = time.monotonic() - started
                print(f"\nReserved IP held by {holders} after {waited:.1f}s more")
                return holders
            time.sleep(0.25)

    def assert_complete(self) -> dict:
        """infra-ready, exactly the planned nodes as containers, one network, one Reserved IP."""
        state = self.state()
        assert state["status"] == "infra-ready", state["status"]
        containers = self.containers()
        assert len(containers) == int(NODES), sorted(containers)
        assert sorted(containers) == sorted(state["nodes"])
        for node, record in state["nodes"].items():
            assert record["provider_id"] == containers[node]["Name"].lstrip("/")
            address = containers[node]["NetworkSettings"]["Networks"][f"dynia-{self.name}"]
            assert record["private_ip"] == address["IPAddress"], node
        assert self.networks() == [f"dynia-{self.name}"]
        master = max(state["nodes"].values(), key=lambda n: (n["priority"], n["name"]))["name"]
        assert self.vip_holders(settle=20) == [master]
        return state


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def remove_docker_resources(prefix: str) -> None:
    """Remove every container, volume and network whose name starts with ``prefix``."""
    for listing, remove in (
        (["ps", "-a", "--format", "{{.Names}}"], ["rm", "-f", "-v"]),
        (["volume", "ls", "--format", "{{.Name}}"], ["volume", "rm", "-f"]),
        (["network", "ls", "--format", "{{.Name}}"], ["network", "rm"]),
    ):
        names = [n for n in docker(*listing).split() if n.startswith(prefix)]
        if names:
            subprocess.run(["docker", *remove, *names], capture_output=True, check=False)


@pytest.fixture
def cluster(tmp_path: Path, node_image: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path / "home", unique_prefix("cr"))
    try:
        yield made
    finally:
        for running in made.started:
            if running.process.poll() is None:
                made.leftover_pids |= descendants(running.process.pid)
                os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait(timeout=30)
        for pid in alive(made.leftover_pids):
            os.kill(pid, signal.SIGKILL)
        remove_docker_resources(f"dynia-{made.name}")


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
