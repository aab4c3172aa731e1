"""ansible-runner invocation: a private, temporary data dir that never outlives the run.

ansible-runner writes the whole environment of the run into ``artifacts/<id>/command`` (no
setting turns that off; ``suppress_env_files`` only covers ``env/``). The playbooks never need a
provider token on the controller, so tokens and other secrets are taken out of the environment
the run sees before that file is written. The data dir is also created 0700 and removed when the
run ends, and a later run removes those of runs that were killed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from dynia.errors import RunnerError
from dynia.paths import INVENTORY_FILE
from dynia.runner.events import EventCollector, PlaybookResult, ProgressEvent


def run_playbook(
    project_dir: Path,
    playbook: str,
    *,
    extra_vars: dict[str, Any] | None = None,
    limit: str | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None,
    check: bool = False,
    raise_on_failure: bool = True,
    hosts: Sequence[str] | None = None,
) -> PlaybookResult:
    """Run ``playbook`` of the generated project in ``project_dir`` (deploy-config/<cluster>).

    ``hosts`` only orders the progress display (default: the cluster's nodes from the state the
    inventory reads). Raises RunnerError naming the failed or unreachable nodes when the run
    fails, unless ``raise_on_failure`` is false.
    """
    from ansible_runner.interface import init_runner

    project_dir = Path(project_dir).resolve()
    _check_project(project_dir, playbook)
    collector = EventCollector(
        hosts if hosts is not None else _inventory_hosts(project_dir, limit), on_event
    )
    _remove_orphaned_data_dirs()
    # mkdtemp makes it 0700; the pid in its name lets a later run remove it if we are killed.
    data_dir = Path(tempfile.mkdtemp(prefix=f"{_DATA_DIR_PREFIX}{os.getpid()}-"))
    saved_handlers = _signal_handlers()
    try:
        runner = init_runner(
            private_data_dir=str(data_dir),
            project_dir=str(project_dir),
            playbook=playbook,
            extravars=extra_vars or {},
            limit=limit,
            cmdline="--check" if check else None,
            envvars={"ANSIBLE_CONFIG": str(project_dir / "ansible.cfg"), "PATH": _search_path()},
            event_handler=collector,
            quiet=True,
            suppress_env_files=True,
        )
        runner.config.env = without_secrets(runner.config.env)
        runner.run()
        rc = int(runner.rc if runner.rc is not None else 1)
        status = runner.status
    except Exception as exc:  # ansible-runner raises its own kinds for a broken setup
        raise RunnerError(
            f"could not run {playbook}: {exc}",
            hint="check the Ansible installation beside dynia (`ansible-playbook --version`)",
        ) from exc
    finally:
        _restore_signal_handlers(saved_handlers)
        shutil.rmtree(data_dir, ignore_errors=True)
    if status == "canceled":
        raise KeyboardInterrupt  # Ctrl-C during the run: the CLI reports how to resume
    result = collector.result(rc)
    if raise_on_failure and not result.ok:
        raise _failure(playbook, status, result)
    return result


_DATA_DIR_PREFIX = "dynia-run-"
# Names of variables that hold credentials (DIGITALOCEAN_TOKEN, DIGITALOCEAN_FAILOVER_TOKEN,
# CLOUDFLARE_API_TOKEN, AWS_SECRET_ACCESS_KEY, ...); no playbook run needs one.
_SECRET_NAME_RE = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE
)


def without_secrets(env: dict[str, str]) -> dict[str, str]:
    """``env`` without provider tokens and other credentials, as the run may see and record it."""
    return {name: value for name, value in env.items() if not _SECRET_NAME_RE.search(name)}


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _signal_handlers() -> dict[int, Any]:
    """ansible-runner installs its own SIGINT/SIGTERM handlers and never puts ours back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.getsignal(number) for number in _SIGNALS}


def _restore_signal_handlers(saved: dict[int, Any]) -> None:
    for number, handler in saved.items():
        signal.signal(number, handler)


def _remove_orphaned_data_dirs() -> None:
    """Data dirs of runs whose process was killed (they hold that run's environment)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_DATA_DIR_PREFIX}*-*"):
        pid = folder.name[len(_DATA_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _search_path() -> str:
    """PATH with this Python's bin/ first: its ansible-playbook is the one that matches us."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _check_project(project_dir: Path, playbook: str) -> None:
    for path in (project_dir / "ansible.cfg", project_dir / playbook):
        if not path.is_file():
            raise RunnerError(
                f"{path} does not exist: {project_dir} is not a rendered Ansible project",
                hint="run `dynia render` for this cluster first",
            )


def _inventory_hosts(project_dir: Path, limit: str | None) -> list[str]:
    """Node names of the project's dynia inventory, sorted; empty when it cannot tell."""
    try:
        config = yaml.safe_load((project_dir / INVENTORY_FILE).read_text())
        state = json.loads(Path(config["state_file"]).read_text())
        names = sorted(state["clusters"][config["cluster"]]["nodes"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return []
    if limit:
        wanted = {part.strip() for part in limit.split(",")}
        names = [name for name in names if name in wanted] or names
    return names


def _failure(playbook: str, status: str, result: PlaybookResult) -> RunnerError:
    unreachable = sorted(name for name, host in result.hosts.items() if host.unreachable)
    failed = [name for name in result.failed_hosts if name not in unreachable]
    parts = []
    if unreachable:
        parts.append(f"unreachable: {', '.join(unreachable)}")
    if failed:
        parts.append(f"failed: {', '.join(failed)}")
    first = next(
        (
            f"{name}: {result.hosts[name].failures[-1]}"
            for name in unreachable + failed
            if result.hosts[name].failures
        ),
        None,
    )
    summary = "; ".join(parts) or f"ansible exited with rc {result.rc} ({status})"
    message = f"{playbook} failed ({summary})" + (f"\n  {first}" if first else "")
    hint = (
        "check that the nodes are up and reachable over SSH (`dynia cluster show`)"
        if unreachable
        else "fix the cause above, then run the command again; other nodes were left as they were"
    )
    error = RunnerError(message, hint=hint)
    error.result = result  # type: ignore[attr-defined]
    return error
