#!/usr/bin/python
"""Hash, stat and compare many files on a node in one module call (read-only)."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dynia_file_state
short_description: Compare files on a node with their expected SHA-256, mode and owner
description:
  - Reads every given path in one pass and reports, per path, whether it exists and its
    SHA-256, mode, owner and group, and which paths differ from what is expected.
  - Never changes anything; safe in check mode.
options:
  node:
    description: Name of the node, copied into each drift entry.
    type: str
    required: true
  files:
    description: Expected state, one entry per path.
    type: list
    elements: dict
    required: true
    suboptions:
      target: {description: Absolute path on the node., type: str, required: true}
      sha256: {description: Expected SHA-256 of the content., type: str, required: true}
      mode: {description: Expected mode, octal string such as C(0644)., type: str}
      owner: {description: Expected owner name., type: str}
      group: {description: Expected group name., type: str}
  pending_marker:
    description:
      - Path of the file a sync writes before it changes the node and removes once the node is
        healthy again. When it exists, a sync stopped half-way (files copied, components not
        reloaded, node maybe still drained): it is reported as drift, with the components it
        names.
    type: str
"""

RETURN = r"""
files:
  description: Actual state per path (exists, sha256, mode, owner, group).
  type: dict
  returned: always
changed_paths:
  description: Paths whose content, mode, owner or group differ, or that are missing.
  type: list
  returned: always
missing_paths:
  description: Paths that do not exist on the node.
  type: list
  returned: always
dynia_drift:
  description: One entry per differing path with expected and actual values.
  type: list
  returned: always
pending_components:
  description: Components the interrupted sync named in I(pending_marker); empty when none.
  type: list
  returned: always
pending:
  description: Whether I(pending_marker) exists.
  type: bool
  returned: always
"""

_CHUNK = 1 << 20


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _name(lookup, ident: int) -> str:
    try:
        return lookup(ident)[0]
    except KeyError:
        return str(ident)


def actual_state(path: str) -> dict:
    """What is on disk at ``path`` now."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return {"exists": False, "sha256": None, "mode": None, "owner": None, "group": None}
    return {
        "exists": True,
        "sha256": _sha256(path) if os.path.isfile(path) else None,
        "mode": f"{info.st_mode & 0o7777:04o}",
        "owner": _name(pwd.getpwuid, info.st_uid),
        "group": _name(grp.getgrgid, info.st_gid),
    }


def _normal_mode(mode):
    return None if mode is None else f"{int(str(mode), 8):04o}"


def drift_entry(node: str, expected: dict, actual: dict) -> dict | None:
    """The drift of one file, or None when it matches."""
    mode_expected = _normal_mode(expected.get("mode"))
    reasons = []
    if not actual["exists"]:
        reasons.append("missing")
    else:
        if actual["sha256"] != expected["sha256"]:
            reasons.append("content")
        if mode_expected is not None and actual["mode"] != mode_expected:
            reasons.append("mode")
        for key in ("owner", "group"):
            if expected.get(key) is not None and actual[key] != expected[key]:
                reasons.append(key)
    if not reasons:
        return None
    return {
        "node": node,
        "path": expected["target"],
        "reasons": reasons,
        "expected": expected["sha256"],
        "actual": actual["sha256"],
        "mode_expected": mode_expected,
        "mode_actual": actual["mode"],
        "owner_expected": expected.get("owner"),
        "owner_actual": actual["owner"],
        "group_expected": expected.get("group"),
        "group_actual": actual["group"],
    }


def read_pending(path: str | None) -> tuple[bool, list[str]]:
    """Whether an interrupted sync left its marker, and the components it names."""
    if not path or not os.path.exists(path):
        return False, []
    try:
        with open(path, encoding="utf-8") as handle:
            components = json.load(handle).get("components", [])
    except (OSError, ValueError, AttributeError):
        return True, []
    return True, [str(c) for c in components] if isinstance(components, list) else []


def pending_entry(node: str, path: str, components: list[str]) -> dict:
    what = ", ".join(components) or "its components"
    return {
        "node": node,
        "path": path,
        "reasons": [f"a sync stopped before {what} were reloaded and checked"],
        "expected": None,
        "actual": None,
        "mode_expected": None,
        "mode_actual": None,
        "owner_expected": None,
        "owner_actual": None,
        "group_expected": None,
        "group_actual": None,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "node": {"type": "str", "required": True},
            "files": {"type": "list", "elements": "dict", "required": True},
            "pending_marker": {"type": "str"},
        },
        supports_check_mode=True,
    )
    node = module.params["node"]
    states, drift = {}, []
    for expected in module.params["files"]:
        if "target" not in expected or "sha256" not in expected:
            module.fail_json(msg=f"each entry of 'files' needs 'target' and 'sha256': {expected!r}")
        actual = actual_state(expected["target"])
        states[expected["target"]] = actual
        entry = drift_entry(node, expected, actual)
        if entry is not None:
            drift.append(entry)
    changed_paths = [entry["path"] for entry in drift]
    pending, pending_components = read_pending(module.params["pending_marker"])
    if pending:
        drift.append(pending_entry(node, module.params["pending_marker"], pending_components))
    module.exit_json(
        changed=False,
        files=states,
        changed_paths=changed_paths,
        missing_paths=[path for path, state in states.items() if not state["exists"]],
        dynia_drift=drift,
        pending=pending,
        pending_components=pending_components,
    )


if __name__ == "__main__":
    main()
