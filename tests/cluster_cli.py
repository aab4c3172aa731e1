"""What the end-to-end tests share: running `dynia` as an operator would, and finding leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_dynia(
    home: Path,
    *args: str,
    extra_env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess against ``home``; with ``check`` a failure shows its output."""
    environment = {**os.environ, "DYNIA_HOME": str(home), **(extra_env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "dynia.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"dynia {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def docker_names(kind: str, prefix: str) -> list[str]:
    """Containers, networks or volumes (``kind``) whose name starts with ``prefix``."""
    listing = {
        "container": ["docker", "ps", "-a", "--format", "{{.Names}}"],
        "network": ["docker", "network", "ls", "--format", "{{.Name}}"],
        "volume": ["docker", "volume", "ls", "--format", "{{.Name}}"],
    }[kind]
    names = subprocess.run(listing, capture_output=True, text=True, check=True).stdout.split()
    return [n for n in names if n.startswith(prefix)]


def sweep_docker(prefix: str) -> None:
    """Remove every container, volume and network named ``prefix...`` (test teardown)."""
    for kind, remove in (
        ("container", ["docker", "rm", "-f"]),
        ("volume", ["docker", "volume", "rm", "-f"]),
        ("network", ["docker", "network", "rm"]),
    ):
        for leftover in docker_names(kind, prefix):
            subprocess.run([*remove, leftover], capture_output=True, check=False)
