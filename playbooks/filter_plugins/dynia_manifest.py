"""Filters that read Dynia's manifest (metadata.json) for the shipped playbooks."""

from __future__ import annotations

import posixpath
from typing import Any


def role_vars(files: list[dict[str, Any]], node: str, source_dir: str) -> dict[str, str]:
    """The component roles' variables for ``node``'s files, as the manifest names them.

    Each file entry may name the role variable that takes its source in deploy-config
    (``role_source_var``, e.g. ``haproxy_config_source``) and the one that takes its target on
    the node (``role_target_var``): bootstrap configures each role from them, so no path is
    written twice.
    """
    found: dict[str, str] = {}
    for entry in files:
        if node not in entry.get("nodes", [node]):
            continue
        if entry.get("role_source_var"):
            found[entry["role_source_var"]] = posixpath.join(source_dir, entry["source"])
        if entry.get("role_target_var"):
            found[entry["role_target_var"]] = entry["target"]
    return found


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dynia_role_vars": role_vars}
