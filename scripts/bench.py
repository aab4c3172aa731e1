"""Time day-to-day commands on real local clusters; see ``scripts/bench --help``.

Each cluster lives in its own temporary Dynia home and is deleted at the end, also when a command
fails. Every figure is a whole-process wall time, as an operator waits for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
DYNIA = str(VENV_BIN / "dynia")
SERVICE_IMAGE = "dynia-bench-web:1"
COMPOSE = """services:
  web:
    image: {image}
    command: [sh, -c, "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www"]
    init: true
    environment:
      BENCH_REVISION: "{revision}"
    expose: ["8080"]
"""
SYNC = "`dynia sync`, nothing to change"
BY_HAND = "`ansible-playbook sync.yml` by hand, same no-op"


@dataclass
class Timings:
    """Wall times of one command, in seconds."""

    label: str
    seconds: list[float] = field(default_factory=list)

    def row(self) -> str:
        if not self.seconds:
            return f"| {self.label} | – | – | – | 0 |"
        median = statistics.median(self.seconds)
        return (
            f"| {self.label} | {median:.1f} | {min(self.seconds):.1f} | "
            f"{max(self.seconds):.1f} | {len(self.seconds)} |"
        )


class Bench:
    """One cluster of ``nodes`` nodes in a private home."""

    def __init__(self, nodes: int, runs: int) -> None:
        self.nodes = nodes
        self.runs = runs
        self.home = Path(tempfile.mkdtemp(prefix="dynia-bench-"))
        self.cluster = f"bench{nodes}"
        self.env = {**os.environ, "DYNIA_HOME": str(self.home), "NO_COLOR": "1"}
        self.env["PATH"] = f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.revision = 0
        self.table: dict[str, Timings] = {}

    def command(self, *args: str, cwd: Path | None = None) -> float:
        """Run one command to completion; its wall time. A failure stops the benchmark."""
        started = time.monotonic()
        result = subprocess.run(
            args, cwd=cwd, env=self.env, capture_output=True, text=True, check=False
        )
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            raise SystemExit(
                f"`{' '.join(args)}` failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
            )
        return elapsed

    def dynia(self, *args: str) -> float:
        return self.command(DYNIA, "--cluster", self.cluster, *args)

    def record(self, label: str, seconds: float) -> None:
        self.table.setdefault(label, Timings(label)).seconds.append(seconds)

    def deploy_new_revision(self) -> float:
        self.revision += 1
        compose = self.home / "web.yml"
        compose.write_text(COMPOSE.format(image=SERVICE_IMAGE, revision=self.revision))
        return self.dynia(
            "deploy", "--name", "web", "--compose", str(compose), "--health-path", "/healthz"
        )

    def run(self) -> None:
        deploy_config = self.home / "deploy-config" / self.cluster
        self.command(DYNIA, "local", "setup")  # this home's DNS server; the engine is shared
        create = ("cluster", "create", "--name", self.cluster, "--nodes", str(self.nodes))
        self.record("`cluster create`", self.command(DYNIA, *create))
        self.record("`deploy` of a new service", self.deploy_new_revision())
        by_hand = (str(VENV_BIN / "ansible-playbook"), "sync.yml")
        for _ in range(self.runs):
            self.record(SYNC, self.dynia("sync"))
            self.record(BY_HAND, self.command(*by_hand, cwd=deploy_config))
            self.record("`dynia drift-check`", self.dynia("drift-check"))
            self.record("`deploy` of a changed compose file", self.deploy_new_revision())
            self.record("`dynia --help`", self.command(DYNIA, "--help"))
        grow, shrink = f"({self.nodes}→{self.nodes + 1})", f"({self.nodes + 1}→{self.nodes})"
        for _ in range(max(1, self.runs // 2)):
            before = self.node_names()
            self.record(f"`cluster node add` {grow}", self.dynia("cluster", "node", "add"))
            (added,) = self.node_names() - before
            seconds = self.dynia("cluster", "node", "remove", added)
            self.record(f"`cluster node remove` {shrink}", seconds)

    def node_names(self) -> set[str]:
        state = json.loads((self.home / "state.json").read_text())
        return set(state["clusters"][self.cluster]["nodes"])

    def delete(self) -> None:
        subprocess.run(
            [DYNIA, "cluster", "delete", "--name", self.cluster, "--yes"],
            env=self.env, capture_output=True, check=False,
        )  # fmt: skip
        shutil.rmtree(self.home, ignore_errors=True)

    def report(self) -> str:
        lines = [
            f"### {self.nodes} nodes",
            "",
            "| command | median s | min s | max s | runs |",
            "|---|---|---|---|---|",
            *(timings.row() for timings in self.table.values()),
        ]
        sync, by_hand = self.table.get(SYNC), self.table.get(BY_HAND)
        if sync and by_hand and sync.seconds and by_hand.seconds:
            ratio = statistics.median(sync.seconds) / statistics.median(by_hand.seconds)
            lines += ["", f"No-op `dynia sync` / `ansible-playbook sync.yml` by hand: {ratio:.2f}×"]
        return "\n".join(lines)


def build_service_image() -> None:
    sys.path.insert(0, str(REPO))
    from dynia.providers.local.image import build_busybox_image

    build_busybox_image(SERVICE_IMAGE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Build local clusters of N nodes, time each day-to-day command several "
        "times and print median / min / max as Markdown tables. Not a test: it never fails "
        "on a slow machine, it only reports.",
    )
    parser.add_argument("--nodes", default="3,6", help="cluster sizes, comma-separated (3,6)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each command (3)")
    options = parser.parse_args(argv)
    sizes = [int(size) for size in options.nodes.split(",") if size.strip()]
    build_service_image()
    print(
        f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f} at start\n"
    )
    for size in sizes:
        bench = Bench(size, options.runs)
        try:
            bench.run()
        finally:
            bench.delete()
        print(bench.report(), end="\n\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
