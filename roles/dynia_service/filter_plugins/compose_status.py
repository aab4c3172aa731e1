"""Read the state of a compose project's containers from structured output, v1 or v2 alike.

Compose v2 (``docker compose ps --all --format json``) prints one JSON object per container and
line (2.21 and later) or one JSON list (earlier 2.x); its objects carry ``Name``, ``State`` and
``Health``. Compose v1 has no JSON output: its container ids go through ``docker inspect``, whose
JSON list carries ``Name``, ``State.Status`` and ``State.Health.Status``. Both become the same
``{name, state, health}`` records, so the role waits for containers the same way on either.
"""

from __future__ import annotations

import json
from typing import Any


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


def not_ready(output: str) -> list[str]:
    """Why the project is not up yet: each container not running, or with a health check that
    does not say healthy; "no containers" when there are none. Empty when all is well."""
    found = containers(output)
    if not found:
        return ["no containers"]
    return [
        f"{c['name']} {c['state']}{' ' + c['health'] if c['health'] else ''}"
        for c in found
        if c["state"] != "running" or c["health"] not in ("", "healthy")
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dynia_service_containers": containers, "dynia_service_not_ready": not_ready}
