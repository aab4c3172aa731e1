"""The dynia_service role reads compose's structured output, v1 (through `docker inspect`) and
v2 (`docker compose ps --format json`) alike: the containers it still waits for
(library/dynia_compose_up)."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
from role_code import load_role_code


def _compose_up() -> ModuleType:
    return load_role_code("dynia_service", "library/dynia_compose_up.py")


def _v2_line(name: str, state: str, health: str) -> str:
    """One line of `docker compose ps --all --format json` (compose 2.26, fields trimmed)."""
    return json.dumps({"ID": "0f3e", "Name": name, "Project": "dynia-web", "Service": "web",
                       "State": state, "Health": health, "Status": "Up 2 seconds",
                       "Publishers": [{"URL": "127.0.0.1", "PublishedPort": 20001}]})  # fmt: skip


def _v1_inspect(name: str, status: str, health: str | None) -> dict[str, object]:
    """An entry of `docker inspect` for a compose v1 container (fields trimmed)."""
    state: dict[str, object] = {"Status": status, "Running": status == "running"}
    if health is not None:
        state["Health"] = {"Status": health, "FailingStreak": 0}
    return {"Id": "0f3e", "Name": f"/{name}", "State": state}


@pytest.mark.parametrize(
    ("output", "waiting_for"),
    [
        ("", ["no containers"]),
        (_v2_line("dynia-web-web-1", "running", "healthy"), []),
        (_v2_line("dynia-web-web-1", "running", ""), []),
        (_v2_line("dynia-web-web-1", "running", "starting"), ["dynia-web-web-1 running starting"]),
        (
            _v2_line("dynia-web-web-1", "running", "healthy")
            + "\n"
            + _v2_line("dynia-web-cache-1", "exited", ""),
            ["dynia-web-cache-1 exited"],
        ),
        # compose 2.0-2.20 printed one JSON list instead of a line per container
        (
            f"[{_v2_line('dynia-web-web-1', 'running', 'unhealthy')}]",
            ["dynia-web-web-1 running unhealthy"],
        ),
        (json.dumps([_v1_inspect("dynia-web_web_1", "running", "healthy")]), []),
        (json.dumps([_v1_inspect("dynia-web_web_1", "running", None)]), []),
        (
            json.dumps([_v1_inspect("dynia-web_web_1", "restarting", "unhealthy")]),
            ["dynia-web_web_1 restarting unhealthy"],
        ),
    ],
)
def test_containers_not_ready_read_the_same_from_v1_and_v2(
    output: str, waiting_for: list[str]
) -> None:
    module = _compose_up()
    assert module.not_ready(module.containers(output)) == waiting_for


def test_the_status_is_read_as_json_from_v2_and_through_docker_inspect_from_v1() -> None:
    module = _compose_up()
    v2 = ["docker", "compose", "-p", "dynia-web", "-f", "/opt/dynia/services/web/compose.yml"]
    v1 = ["docker-compose", "-p", "dynia-web", "-f", "/opt/dynia/services/my web/compose.yml"]
    assert module.status_script(v2) == (
        "docker compose -p dynia-web -f /opt/dynia/services/web/compose.yml ps --all --format json"
    )
    v1_script = module.status_script(v1)
    assert "'/opt/dynia/services/my web/compose.yml' ps -q" in v1_script  # quoted for the shell
    assert v1_script.endswith("docker inspect $ids")
