"""Run `dynia` as a terminal would, break the run from outside, and look at what it left.

The create/resume tests drive the CLI as a subprocess in its own session, interrupt it (Ctrl-C to
the process group, kill -9, a node's container stopped), check the state file and Docker, and
re-run the same command. Each test has a 2-node cluster of its own; whatever it made
(containers, networks, volumes named ``dynia-<cluster>``) is removed after, passed or failed,
together with any process it started.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fleet_fixtures import unique_prefix

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


@contextmanager
def cluster_of_one_test(tmp_path: Path) -> Iterator[Cluster]:
    """A dynia home and cluster name; after the test, its processes and Docker resources go."""
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
