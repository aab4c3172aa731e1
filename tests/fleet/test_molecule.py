"""Every role's Molecule scenario, run as an operator runs it: `molecule test -s <role>`.

Each scenario creates its platforms as real local-fleet nodes, converges the role, checks
idempotence and verifies behaviour: HAProxy balances, Caddy routes by Host, keepalived moves the
virtual address; containers and compose projects run with the exported compose command; a compose
project answers on its port, keeps its volume across down/up and loses it on purge; a sync copies
only the changed file, reloads only its component, and a failed health check puts the previous
file back. The scenario's destroy removes the nodes, also when a step fails.

Scenarios run DYNIA_MOLECULE_WORKERS at a time (each has its own nodes, network and ephemeral
directory); every scenario is still its own test, with its own result and time.

haproxy, keepalived and dynia_service run on Debian 13 nodes (HAProxy 3.0, keepalived 2.3,
Compose v2), the others on Debian 12 (HAProxy 2.6, keepalived 2.2, Compose v1): each release
and each compose version is covered without running every scenario twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SCENARIO_TIMEOUT = 900
STEPS = ("create", "converge", "idempotence", "verify", "destroy")
SCENARIOS = [
    "haproxy",
    "caddy",
    "keepalived",
    "dynia_node",
    "dynia_service",
    "dynia_sync",
    "dynia_firewall",
]

# How many scenarios run at once (each has its own nodes, network and ephemeral directory). One
# scenario leaves 2 cores partly idle: six scenarios took 331 s three at a time against 600 s one
# after another. Beside another pytest-xdist worker's cluster, three at a time drove the load of
# 2 cores to 7.5, so there two run at once. DYNIA_MOLECULE_WORKERS=1 runs them one after another.
WORKERS = int(
    os.environ.get("DYNIA_MOLECULE_WORKERS", "2" if os.environ.get("PYTEST_XDIST_WORKER") else "3")
)

pytestmark = pytest.mark.molecule


def _docker_names(prefix: str) -> set[str]:
    """Containers, networks and volumes whose name starts with ``prefix``."""
    names: set[str] = set()
    for argv in (
        ["docker", "ps", "-a", "--format", "{{.Names}}"],
        ["docker", "network", "ls", "--format", "{{.Name}}"],
        ["docker", "volume", "ls", "--format", "{{.Name}}"],
    ):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        names.update(name for name in out.split() if name.startswith(prefix))
    return names


def _succeeded(output: str, scenario: str, step: str) -> int:
    """How many times Molecule's recap reports ``step`` of ``scenario`` as successful."""
    # The recap reads "caddy ➜ verify: ..." on a terminal and "caddy > verify: ..." otherwise.
    pattern = rf"^{scenario} (?:➜|>) {step}: Executed: Successful"
    return len(re.findall(pattern, output, flags=re.MULTILINE))


def _molecule(args: list[str], ephemeral: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The venv's ansible-playbook must be the one Molecule finds; a private ephemeral directory
    # keeps two runs of the same scenario from sharing inventory or fleet.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MOLECULE_EPHEMERAL_DIRECTORY"] = str(ephemeral)
    env["NO_COLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    return subprocess.run(
        [str(VENV_BIN / "molecule"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class ScenarioRun:
    result: subprocess.CompletedProcess
    seconds: float
    left_behind: set[str]


def _run_scenario(scenario: str, workdir: Path) -> ScenarioRun:
    prefix = f"dynia-mol-{scenario}-"
    before = _docker_names(prefix)
    ephemeral = workdir / "molecule"
    started = time.monotonic()
    result = None
    try:
        result = _molecule(["test", "-s", scenario], ephemeral, SCENARIO_TIMEOUT)
    finally:
        # A passed run ended with its own successful destroy step; a failed one may not have
        # reached it, and a run killed by the timeout certainly did not.
        if result is None or result.returncode != 0:
            _molecule(["destroy", "-s", scenario], ephemeral, 300)
    seconds = time.monotonic() - started
    return ScenarioRun(result, seconds, _docker_names(prefix) - before)


def _selected(session: pytest.Session) -> list[str]:
    wanted = {
        item.callspec.params["scenario"]
        for item in session.items
        if getattr(item, "originalname", None) == "test_molecule_scenario"
    }
    return [scenario for scenario in SCENARIOS if scenario in wanted]


@pytest.fixture(scope="module")
def scenario_runs(
    request: pytest.FixtureRequest,
    node_image: str,
    debian13_node_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[ScenarioRun]]]:
    """The selected scenarios, started in order on WORKERS threads; each test waits for its own.

    Both node images are built first, so no scenario's create step waits for a build."""
    pool = ThreadPoolExecutor(max_workers=max(1, WORKERS), thread_name_prefix="molecule")
    try:
        yield {
            scenario: pool.submit(_run_scenario, scenario, tmp_path_factory.mktemp(scenario))
            for scenario in _selected(request.session)
        }
    finally:
        # Scenarios not started yet are dropped; running ones finish, their destroy included.
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, scenario_runs: dict[str, Future[ScenarioRun]]) -> None:
    run = scenario_runs[scenario].result()
    print(f"molecule test -s {scenario}: {run.seconds:.1f} s")
    output = run.result.stdout + run.result.stderr
    assert run.result.returncode == 0, output[-6000:]
    steps = [*STEPS, "side_effect"] if scenario == "keepalived" else list(STEPS)
    for step in steps:
        assert _succeeded(output, scenario, step) >= 1, f"{step} did not run: {output[-6000:]}"
    if scenario == "keepalived":
        # verify runs before and after the failover side effect.
        assert _succeeded(output, scenario, "verify") >= 2
    left = sorted(run.left_behind)
    assert not left, f"scenario left Docker resources behind: {left}"
