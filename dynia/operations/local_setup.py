"""Check and prepare this machine for the local provider: Docker engine, node image, DNS server.

``doctor`` only looks. ``setup`` fixes what it can: as root on Debian/Ubuntu it installs the
missing packages, starts a Docker engine when none answers, and builds the node image. Where it
cannot fix something it raises an error that says exactly what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dynia.errors import ProviderError
from dynia.operations import Progress
from dynia.providers.local.engine import (
    Docker,
    EngineUnavailableError,
    engine_location,
    favour_node_cgroup,
    start_dockerd,
    wait_for_engine,
)
from dynia.providers.local.image import (
    BASE_IMAGE,
    DEFAULT_LOCAL_IMAGE,
    check_local_image,
    ensure_node_image,
    node_image_tag,
)
from dynia.providers.local.nodes import COMMON_RUN_FLAGS, UNPRIVILEGED_FLAGS
from dynia.providers.local.nsd import DNS_SERVER_APT_PACKAGE, DNS_SERVER_BINARY

BASE_PACKAGES = ("docker.io", "debootstrap", "busybox-static")
DOCKERD_LOG = Path("/var/log/dynia-dockerd.log")
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
ENGINE_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class EngineLayout:
    """Where an engine that setup starts listens and keeps its files.

    The default is the machine's own engine; ``private(root)`` is a separate engine under one
    folder (used to prove the start path without touching the machine's engine)."""

    host: str = DEFAULT_SOCKET
    flags: tuple[str, ...] = ()
    log_file: Path = DOCKERD_LOG

    @classmethod
    def private(cls, root: Path) -> EngineLayout:
        host = f"unix://{root}/docker.sock"
        flags = (
            f"--host={host}",
            f"--data-root={root}/data",
            f"--exec-root={root}/exec",
            f"--pidfile={root}/docker.pid",
        )
        return cls(host=host, flags=flags, log_file=root / "dockerd.log")


@dataclass(frozen=True)
class SetupResult:
    started_engine_pid: int | None  # the dockerd this run started, if any
    image_tag: str | None


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None


def wanted_packages() -> list[str]:
    """The Debian packages the local provider needs: Docker, the image tools, the DNS server."""
    return [*BASE_PACKAGES, DNS_SERVER_APT_PACKAGE]


def doctor(docker: Docker | None = None, images: Sequence[str] = ()) -> list[Check]:
    """Every check, in the order an operator would fix them; ``images`` default to debian-12."""
    docker = docker or Docker()
    releases = [check_local_image(image) for image in images or [DEFAULT_LOCAL_IMAGE]]
    checks = [_check_engine(docker)]
    engine_ok = checks[0].ok
    image_checks = [
        _check_image(docker, release) if engine_ok else _skipped(f"node image {release}")
        for release in releases
    ]
    checks.extend(image_checks)
    built = [release for release, check in zip(releases, image_checks, strict=True) if check.ok]
    checks.append(_check_node_container(docker, built[0]) if built else _skipped("node container"))
    checks.append(_check_debootstrap())
    checks.append(_check_dns_server())
    return checks


def _skipped(name: str) -> Check:
    return Check(name, False, "not checked: the checks above must pass first")


def _check_engine(docker: Docker) -> Check:
    try:
        version = docker.ping()
    except EngineUnavailableError as exc:
        return Check("docker engine", False, exc.message, fix=_engine_fix())
    return Check("docker engine", True, f"Docker {version} answers at {engine_location()}")


def _engine_fix() -> str:
    if os.environ.get("DOCKER_HOST", DEFAULT_SOCKET) != DEFAULT_SOCKET:
        return f"start the engine behind DOCKER_HOST={os.environ['DOCKER_HOST']}, or unset it"
    return "run `sudo dynia local setup` (Debian/Ubuntu), or install Docker and start dockerd"


def _check_image(docker: Docker, release: str) -> Check:
    tag = node_image_tag(release)
    name = f"node image {release}"
    if docker.exists("image", tag):
        return Check(name, True, f"{tag} is built")
    fix = f"run `sudo dynia local setup --image {release}`"
    return Check(name, False, f"{tag} is not built", fix=fix)


def _check_node_container(docker: Docker, release: str) -> Check:
    """Can this engine run a container with the flags a node needs?"""
    tag = node_image_tag(release)
    attempts = {"--privileged": ("--privileged",), "capability set": UNPRIVILEGED_FLAGS}
    errors = []
    for label, flags in attempts.items():
        argv = ["run", "--rm", "--network=none", *COMMON_RUN_FLAGS, *flags]
        result = docker.run([*argv, "--entrypoint=/bin/true", tag], check=False, timeout=60)
        if result.returncode == 0:
            return Check("node container", True, f"nodes can run ({label})")
        errors.append(f"{label}: {result.stderr.decode(errors='replace').strip()}")
    return Check(
        "node container",
        False,
        "the engine refuses node containers: " + "; ".join(errors),
        fix="the engine must allow --privileged or --cap-add ALL with unconfined security "
        "options; check the engine's own confinement (rootless engines cannot run nodes)",
    )


def _check_debootstrap() -> Check:
    if shutil.which("debootstrap"):
        return Check("debootstrap", True, "installed (builds the node image without a registry)")
    return Check(
        "debootstrap",
        False,
        f"not installed; needed to build the node image when {BASE_IMAGE} cannot be pulled",
        fix="sudo apt-get install debootstrap",
    )


def _check_dns_server() -> Check:
    if Path(DNS_SERVER_BINARY).exists():
        return Check("dns server", True, f"{DNS_SERVER_BINARY} is installed")
    fix = f"sudo apt-get install {DNS_SERVER_APT_PACKAGE}"
    return Check("dns server", False, f"{DNS_SERVER_BINARY} is not installed", fix)


def setup(
    progress: Progress,
    docker: Docker | None = None,
    build_image: bool = True,
    engine: EngineLayout | None = None,
    images: Sequence[str] = (),
) -> SetupResult:
    """Make this machine ready for the local provider; safe to run again.

    ``images``: the node images to build (default: the default one)."""
    images = [check_local_image(image) for image in images or [DEFAULT_LOCAL_IMAGE]]
    docker = docker or Docker()
    can_fix = _can_fix_machine()
    if can_fix:
        _install_missing_packages(progress)
    pid = _ensure_engine(docker, can_fix, engine or EngineLayout(), progress)
    tag = None
    for image in images if build_image else []:
        result = ensure_node_image(docker=docker, progress=progress, image=image)
        tag = tag or result.tag
        if result.method == "existing":
            progress(f"node image {result.tag} ({image}) already built")
    progress("local provider ready")
    return SetupResult(started_engine_pid=pid, image_tag=tag)


def _can_fix_machine() -> bool:
    return os.geteuid() == 0 and _is_debian_like() and shutil.which("apt-get") is not None


def _is_debian_like() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    family = f"{fields.get('ID', '')} {fields.get('ID_LIKE', '')}".replace('"', "")
    return "debian" in family.split() or "ubuntu" in family.split()


def _install_missing_packages(progress: Progress) -> None:
    missing = [name for name in wanted_packages() if not _package_installed(name)]
    if not missing:
        progress("packages present: " + ", ".join(wanted_packages()))
        return
    progress("installing " + ", ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise ProviderError(
                f"`{' '.join(argv)}` failed: {result.stderr.strip()[-800:]}",
                hint=f"install them by hand: sudo apt-get install {' '.join(missing)}",
            )


def _package_installed(name: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and "install ok installed" in result.stdout


def _ensure_engine(
    docker: Docker, can_fix: bool, engine: EngineLayout, progress: Progress
) -> int | None:
    """Start an engine when none answers and this machine can be fixed; the started pid."""
    try:
        progress(f"Docker engine {docker.ping()} answers at {engine_location()}")
        return None
    except EngineUnavailableError as exc:
        # Only start the engine the client will talk to; DOCKER_HOST elsewhere is not ours.
        if not can_fix or engine_location() != engine.host:
            raise EngineUnavailableError(exc.message, hint=_manual_engine_steps()) from exc
    progress(f"starting dockerd (log: {engine.log_file})")
    pid = start_dockerd(engine.log_file, engine.flags)
    try:
        version = wait_for_engine(docker, ENGINE_START_TIMEOUT)
    except EngineUnavailableError as exc:
        raise EngineUnavailableError(
            f"dockerd (pid {pid}) did not answer within {ENGINE_START_TIMEOUT:.0f}s",
            hint=f"read {engine.log_file} for the reason",
        ) from exc
    progress(f"Docker engine {version} started (pid {pid})")
    progress(favour_node_cgroup())
    return pid


def _manual_engine_steps() -> str:
    if os.environ.get("DOCKER_HOST", DEFAULT_SOCKET) != DEFAULT_SOCKET:
        return (
            f"DOCKER_HOST={os.environ['DOCKER_HOST']} is set: start the engine it points at, "
            "or unset DOCKER_HOST to use this machine's own engine"
        )
    if os.geteuid() != 0:
        return "rerun as root: `sudo dynia local setup` installs and starts an engine"
    return (
        "this is not Debian/Ubuntu: install Docker Engine (https://docs.docker.com/engine/"
        "install/), start it (`sudo systemctl start docker`), check `docker info`, "
        "then rerun `dynia local setup`"
    )
