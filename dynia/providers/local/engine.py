"""The Docker engine the local provider runs on: a thin wrapper over the ``docker`` CLI.

The CLI (not an SDK) is used on purpose: it honours ``DOCKER_HOST`` and contexts exactly as the
operator's own shell does, and its error text is what the operator would see by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynia.errors import ProviderError
from dynia.waiting import wait_until

SETUP_HINT = "run `sudo dynia local setup`, or start a Docker engine and check `docker info`"


class EngineUnavailableError(ProviderError):
    """The Docker engine does not answer (not installed, not running, wrong DOCKER_HOST)."""


class DockerCommandError(ProviderError):
    """A docker command answered with an error."""


def engine_location() -> str:
    """Where the docker CLI will look for the engine, for messages."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Docker:
    """Runs docker CLI commands; every failure becomes a ProviderError naming the command."""

    binary: str = "docker"
    timeout: float = 600.0

    def run(
        self,
        args: Sequence[str],
        *,
        input_data: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [self.binary, *args]
        try:
            result = subprocess.run(
                argv,
                input=input_data,
                capture_output=True,
                timeout=timeout or self.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise EngineUnavailableError(
                "the docker command is not installed", hint=SETUP_HINT
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise DockerCommandError(
                f"`docker {' '.join(args[:3])}` did not finish within {exc.timeout:.0f}s",
                hint="check that the Docker engine is healthy (`docker info`)",
            ) from exc
        if check and result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise self._error(args, stderr or f"exit code {result.returncode}, no error output")
        return result

    def text(self, args: Sequence[str], **kwargs: Any) -> str:
        return self.run(args, **kwargs).stdout.decode(errors="replace").strip()

    def inspect(self, kind: str, names: Sequence[str]) -> list[dict[str, Any]]:
        """``docker <kind> inspect``; names that do not exist are left out, not an error."""
        if not names:
            return []
        result = self.run([kind, "inspect", *names], check=False)
        if result.returncode != 0 and not result.stdout.strip():
            stderr = result.stderr.decode(errors="replace")
            if "No such" in stderr or "not found" in stderr:
                return []
            raise self._error([kind, "inspect", *names], stderr.strip())
        return json.loads(result.stdout or b"[]")

    def exists(self, kind: str, name: str) -> bool:
        return bool(self.inspect(kind, [name]))

    def ping(self, timeout: float = 10.0) -> str:
        """The engine's server version; EngineUnavailableError when it does not answer."""
        try:
            result = self.run(
                ["version", "--format", "{{.Server.Version}}"], check=False, timeout=timeout
            )
        except DockerCommandError as exc:
            raise EngineUnavailableError(
                f"the Docker engine at {engine_location()} does not answer", hint=SETUP_HINT
            ) from exc
        version = result.stdout.decode(errors="replace").strip()
        if result.returncode != 0 or not version:
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            raise EngineUnavailableError(
                f"the Docker engine at {engine_location()} does not answer"
                + (f": {detail[-1]}" if detail else ""),
                hint=SETUP_HINT,
            )
        return version

    def _error(self, args: Sequence[str], stderr: str) -> ProviderError:
        if "Cannot connect to the Docker daemon" in stderr or "connect: " in stderr:
            return EngineUnavailableError(
                f"the Docker engine at {engine_location()} does not answer", hint=SETUP_HINT
            )
        shown = " ".join(args[:4])
        return DockerCommandError(
            f"`docker {shown}` failed: {stderr or 'no error output'}",
            hint="see the message above; `docker info` shows the engine's health",
        )


def wait_for_engine(docker: Docker, timeout: float, interval: float = 0.5) -> str:
    """Poll until the engine answers; returns its version or raises EngineUnavailableError."""
    return wait_until(
        lambda: docker.ping(timeout=5),
        timeout=timeout,
        interval=interval,
        what="the Docker engine",
        retry_on=(EngineUnavailableError,),
    )


def start_dockerd(log_file: Path, extra_flags: Sequence[str] = ()) -> int:
    """Start dockerd detached from this process (own session), logging to ``log_file``.

    ``--iptables=false --bridge=none`` are the flags known to work in containers and CI machines
    where the engine may not touch the host firewall; nodes use their own user-defined networks.
    """
    binary = shutil.which("dockerd")
    if binary is None:
        raise EngineUnavailableError(
            "dockerd is not installed", hint="install it: `apt-get install docker.io`"
        )
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [binary, "--iptables=false", "--bridge=none", *extra_flags],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    return process.pid


# Local nodes stand in for VMs, whose vCPUs the host's other processes do not take. Docker puts
# every container in one cgroup, "docker", and in cgroup v1 that group weighs as much as one
# busy process of the host: two busy loops left all the nodes a third of two cores, and a
# MASTER's keepalived advertised late enough for a backup to claim the Reserved IP. Ten times
# the default weight lets the nodes win the cores back when they need them.
_NODE_CGROUPS = (
    (Path("/sys/fs/cgroup/cpu/docker"), "cpu.shares", "10240"),  # cgroup v1, cgroupfs driver
    (Path("/sys/fs/cgroup/docker"), "cpu.weight", "1000"),  # cgroup v2, cgroupfs driver
)


def favour_node_cgroup() -> str:
    """Raise the CPU weight of the engine's container cgroup; what was done, for progress.

    Only for an engine Dynia started itself (cgroupfs driver): a system engine's cgroups are
    its owner's. Best effort: a machine that does not allow it keeps the default weight.
    """
    for group, setting, value in _NODE_CGROUPS:
        if not group.parent.is_dir():
            continue
        try:
            group.mkdir(exist_ok=True)  # dockerd makes it on the first container otherwise
            (group / setting).write_text(value)
        except OSError as exc:
            return f"node CPU weight left at the default ({group / setting}: {exc.strerror})"
        return f"node CPU weight raised ({group / setting} = {value})"
    return "node CPU weight left at the default (no cgroupfs hierarchy of the engine found)"
