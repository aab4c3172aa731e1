"""Validate rendered configs with the real programs, where they are installed.

The configs name node paths (/etc/haproxy/certs/...) and a node interface that the controller may
not have, so each is checked in a scratch copy with those references pointed at local equivalents.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynia.errors import RenderError

# Checked on the node only: `nft -c` talks netlink to the kernel and needs CAP_NET_ADMIN, which an
# operator's controller, run as a user, does not have.
NODE_ONLY_PROGRAMS = frozenset({"nft"})


@dataclass(frozen=True)
class ValidationOutcome:
    source: str
    program: str
    ok: bool
    skipped: bool = False
    output: str = ""


# Interfaces that come and go with containers: one may vanish between listing and `keepalived -t`.
TRANSIENT_INTERFACE_PREFIXES = ("br-", "veth", "docker")


def _controller_interface() -> str | None:
    try:
        routes = Path("/proc/net/route").read_text()
    except OSError:
        routes = ""
    return pick_stable_interface(routes, [p.name for p in Path("/sys/class/net").iterdir()])


def pick_stable_interface(route_table: str, names: list[str]) -> str | None:
    """The default route's interface, else the first that containers do not come and go with."""
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 1 and fields[1] == "00000000":
            return fields[0]
    candidates = sorted(name for name in names if name != "lo")
    stable = [name for name in candidates if not name.startswith(TRANSIENT_INTERFACE_PREFIXES)]
    return (stable or candidates or [None])[0]


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _command_for(entry: dict[str, Any], path: Path) -> tuple[str, list[str]] | None:
    """The program and command that check ``path``: the node's own check from the manifest.

    Compose files have none on the node (it may run either Compose); here they are checked with
    whichever Compose the controller has.
    """
    if entry.get("validate"):
        argv = [str(path) if word == "%s" else word for word in shlex.split(entry["validate"])]
        return None if argv[0] in NODE_ONLY_PROGRAMS else (argv[0], argv)
    if entry["component"].startswith("service:"):
        compose = _compose_command()
        if compose is None:
            return "docker-compose", []
        return "docker-compose", [*compose, "-f", str(path), "config", "-q"]
    return None


def _localize(text: str, replacements: dict[str, str]) -> str:
    for old, new in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(old, new)
    return text


def validate_deploy_config(directory: Path) -> list[ValidationOutcome]:
    """Check each rendered file with its own program; RenderError on the first failure."""
    manifest = json.loads((directory / "metadata.json").read_text())
    outcomes: list[ValidationOutcome] = []
    with tempfile.TemporaryDirectory(prefix="dynia-validate-") as scratch_dir:
        scratch = Path(scratch_dir)
        replacements = {}
        for entry in manifest["files"]:
            local = scratch / entry["source"]
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(directory / entry["source"], local)
            replacements[entry["target"]] = str(local)
        interface = _controller_interface()
        for entry in manifest["files"]:
            outcomes.append(_validate_one(entry, scratch, replacements, interface))
    failed = [o for o in outcomes if not o.ok]
    if failed:
        first = failed[0]
        raise RenderError(
            f"rendered {first.source} failed `{first.program}` validation:\n{first.output.strip()}",
            hint="nothing was synced; fix the state or template that produced it and render again",
        )
    return outcomes


def _validate_one(
    entry: dict[str, Any], scratch: Path, replacements: dict[str, str], interface: str | None
) -> ValidationOutcome:
    local = scratch / entry["source"]
    text = _localize(local.read_text(), replacements)
    if entry["component"] == "keepalived" and interface:
        text = "\n".join(
            f"    interface {interface}" if line.strip().startswith("interface ") else line
            for line in text.splitlines()
        )
    local.write_text(text)
    found = _command_for(entry, local)
    if found is None:
        return ValidationOutcome(entry["source"], "-", ok=True, skipped=True)
    program, argv = found
    if not argv or shutil.which(argv[0]) is None:
        return ValidationOutcome(entry["source"], program, ok=True, skipped=True)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=local.parent)
    return ValidationOutcome(
        entry["source"], program, ok=done.returncode == 0, output=done.stdout + done.stderr
    )
