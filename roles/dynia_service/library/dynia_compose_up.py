"""Ansible module: bring one Compose project up and wait until its containers serve.

One call does what would otherwise be several round trips to the node: find the compose command
(v2 ``docker compose`` or v1 ``docker-compose``), pull when asked, ``up -d --remove-orphans``,
then poll the containers' state every ``interval`` seconds until each runs (and is healthy when
it has a health check).

Compose v2 (``docker compose ps --all --format json``) prints one JSON object per container and
line (2.21 and later) or one JSON list (earlier 2.x); its objects carry ``Name``, ``State`` and
``Health``. Compose v1 has no JSON output: its container ids go through ``docker inspect``, whose
JSON list carries ``Name``, ``State.Status`` and ``State.Health.Status``. Both become the same
``{name, state, health}`` records, so the wait is the same on either.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from typing import Any

DOCUMENTATION = r"""
module: dynia_compose_up
short_description: Bring a Compose project up and wait until its containers run and are healthy
options:
  project: {type: str, required: true, description: Compose project name.}
  directory: {type: path, required: true, description: Folder holding the compose file.}
  compose_file: {type: str, default: docker-compose.yml, description: Compose file name.}
  compose_command:
    type: str
    default: ""
    description: C(docker compose) or C(docker-compose); found on the node when empty.
  pull: {type: bool, default: false, description: Pull the images before up.}
  recreate: {type: bool, default: false, description: Recreate containers even when unchanged.}
  wait: {type: bool, default: true, description: Wait until every container runs and is healthy.}
  timeout: {type: float, default: 30, description: Seconds the wait may take.}
  interval: {type: float, default: 0.25, description: Seconds between looks at the containers.}
"""

RETURN = r"""
compose_command: {description: The compose command used., type: str}
containers: {description: "Each container's name, state and health after the wait.", type: list}
"""

# v1 and v2 both name what they create, recreate or start; an unchanged project says neither.
_CHANGE_RE = re.compile(r"Creat|Recreat|Start")


def _documents(output: str) -> list[Any]:
    text = output.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _record(raw: dict[str, Any]) -> dict[str, str]:
    name = str(raw.get("Name", "")).lstrip("/")  # docker inspect names start with "/"
    state = raw.get("State")
    if isinstance(state, dict):  # docker inspect (the v1 path)
        health = (state.get("Health") or {}).get("Status") or ""
        return {"name": name, "state": str(state.get("Status", "")), "health": str(health)}
    return {"name": name, "state": str(state or ""), "health": str(raw.get("Health") or "")}


def containers(output: str) -> list[dict[str, str]]:
    """``{name, state, health}`` of each container in ``ps --format json`` or inspect output."""
    return [_record(raw) for raw in _documents(output) if isinstance(raw, dict)]


def not_ready(found: list[dict[str, str]]) -> list[str]:
    """Why the project is not up yet: each container not running, or with a health check that
    does not say healthy; "no containers" when there are none. Empty when all is well."""
    if not found:
        return ["no containers"]
    return [
        f"{c['name']} {c['state']}{' ' + c['health'] if c['health'] else ''}"
        for c in found
        if c["state"] != "running" or c["health"] not in ("", "healthy")
    ]


def is_v2(command: list[str]) -> bool:
    return command[:2] == ["docker", "compose"]


def status_script(command: list[str]) -> str:
    """The shell line that prints the project's containers as JSON, v1 or v2."""
    compose = shlex.join(command)
    if is_v2(command):
        return f"{compose} ps --all --format json"
    return f'ids=$({compose} ps -q) || exit 1; [ -z "$ids" ] || docker inspect $ids'


class ComposeError(Exception):
    """A compose step failed; the message says which and why."""


def _run(argv: list[str], directory: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=directory, capture_output=True, text=True, check=False)


def find_compose_command() -> str:
    if _run(["docker", "compose", "version"], "/").returncode == 0:
        return "docker compose"
    if _run(["sh", "-c", "command -v docker-compose"], "/").returncode == 0:
        return "docker-compose"
    raise ComposeError("neither 'docker compose' nor 'docker-compose' is installed")


def _step(argv: list[str], directory: str, what: str) -> subprocess.CompletedProcess[str]:
    done = _run(argv, directory)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise ComposeError(f"{what} failed (exit {done.returncode}): {output[-2000:]}")
    return done


def wait_until_ready(
    command: list[str], directory: str, timeout: float, interval: float
) -> list[dict[str, str]]:
    """The containers once all run and are healthy; ComposeError names those that never were."""
    deadline = time.monotonic() + timeout
    reasons: list[str] = []
    while True:
        done = _run(["bash", "-c", status_script(command)], directory)
        if done.returncode == 0:
            found = containers(done.stdout)
            reasons = not_ready(found)
            if not reasons:
                return found
        else:
            reasons = [(done.stderr or done.stdout).strip()[-500:] or "status unreadable"]
        if time.monotonic() >= deadline:
            raise ComposeError(f"not running and healthy after {timeout:g} s: {', '.join(reasons)}")
        time.sleep(interval)


def bring_up(params: dict[str, Any]) -> dict[str, Any]:
    """Up (after a pull when asked) and wait; the module's result."""
    found_command = params["compose_command"].strip() or find_compose_command()
    command = [
        *found_command.split(),
        "-p",
        params["project"],
        "-f",
        f"{params['directory']}/{params['compose_file']}",
    ]
    directory = params["directory"]
    if params["pull"]:
        _step([*command, "pull", "--quiet"], directory, "pull")
    up = [*command, "up", "-d", "--remove-orphans"] + (
        ["--force-recreate"] if params["recreate"] else []
    )
    done = _step(up, directory, "up")
    result: dict[str, Any] = {
        "changed": bool(_CHANGE_RE.search(done.stdout + done.stderr)),
        "compose_command": found_command,
        "stdout": done.stdout,
        "stderr": done.stderr,
        "containers": [],
    }
    if params["wait"]:
        result["containers"] = wait_until_ready(
            command, directory, params["timeout"], params["interval"]
        )
    return result


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "project": {"type": "str", "required": True},
            "directory": {"type": "path", "required": True},
            "compose_file": {"type": "str", "default": "docker-compose.yml"},
            "compose_command": {"type": "str", "default": ""},
            "pull": {"type": "bool", "default": False},
            "recreate": {"type": "bool", "default": False},
            "wait": {"type": "bool", "default": True},
            "timeout": {"type": "float", "default": 30.0},
            "interval": {"type": "float", "default": 0.25},
        },
    )
    try:
        module.exit_json(**bring_up(module.params))
    except ComposeError as error:
        module.fail_json(msg=f"{module.params['project']}: {error}")


if __name__ == "__main__":
    main()
