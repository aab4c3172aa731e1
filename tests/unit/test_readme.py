"""The README's "Running the playbooks by hand" commands, run as written after the quickstart.

The shell is the one the README describes: the virtualenv's bin first on PATH (what
`. .venv/bin/activate` does), HOME holding the default dynia home with the quickstart's cluster
`demo`. Each ansible-playbook command gets --list-hosts: it reads the inventory, parses the
playbook with its imported playbooks and roles, and contacts no node.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from sample_state import render_sample, save_sample

from dynia.paths import HomeLayout

README = Path(__file__).resolve().parents[2] / "README.md"
VENV_BIN = Path(sys.executable).parent


def hand_run_block() -> list[list[str]]:
    """The commands of the section's shell block, comments dropped."""
    section = README.read_text().split("## Running the playbooks by hand", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = (shlex.split(line, comments=True) for line in block.splitlines())
    return [command for command in commands if command]


def test_hand_run_commands_work_as_written(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path / ".dynia")
    cluster = save_sample(layout.root)
    render_sample(layout, cluster)
    env = {"PATH": f"{VENV_BIN}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path)}
    cwd, ran = tmp_path, []
    for command in hand_run_block():
        if command[0] == "cd":
            cwd = Path(command[1].replace("~", str(tmp_path), 1))
            continue
        argv = [sorted(cluster.nodes)[0] if word == "NODE" else word for word in command]
        if argv[0] == "ansible-playbook":
            argv.append("--list-hosts")
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}\n{done.stderr}"
        assert all(node in done.stdout for node in cluster.nodes) or "--limit" in argv
        ran.append(argv[1] if argv[0] == "ansible-playbook" else argv[0])
    assert cwd == layout.deploy_config_dir("demo")
    assert set(ran) >= {"ansible-inventory", "drift-check.yml", "sync.yml", "handover.yml"}
