"""Filters of the dynia_sync role."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Ansible's connection variables -> the keys library/dynia_haproxy_state takes.
_SSH_VARS = {
    "ansible_user": "user",
    "ansible_port": "port",
    "ansible_ssh_private_key_file": "key",
    "ansible_ssh_common_args": "common_args",
}


def ssh_targets(names: Iterable[str], hostvars: Mapping[str, Any]) -> list[dict[str, Any]]:
    """How to reach each host over SSH as Ansible does: its address and connection variables."""
    targets = []
    for name in names:
        variables = hostvars[name]
        target = {"name": name, "address": str(variables.get("ansible_host") or name)}
        for variable, key in _SSH_VARS.items():
            value = variables.get(variable)
            if value not in (None, ""):
                target[key] = value
        targets.append(target)
    return targets


def health_checks(
    node_url: str, services: Iterable[str], components: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """What a changed node must answer: its own health URL (200), then each changed service's
    health URL (any 2xx), for library/dynia_node_health."""
    checks: list[dict[str, Any]] = [{"url": node_url, "statuses": [200]}] if node_url else []
    for service in services:
        url = components.get(service, {}).get("health_url") or ""
        if url:
            checks.append({"url": url, "statuses": list(range(200, 300))})
    return checks


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dynia_ssh_targets": ssh_targets, "dynia_health_checks": health_checks}
