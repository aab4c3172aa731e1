#!/usr/bin/python
"""Hash, stat and compare many files on a node in one module call, and work out what a sync of
the node does: which files it copies, which components it reloads and how.

Read-only unless asked: a sync also has it write its pending marker when the node is about to
change, and, once the node is back, remove the backups and the marker before comparing again,
and record the revision the node runs, so that each of those steps costs no round trip of its
own.

The planning is pure Python (``plan_sync``) so it is computed once, here, and unit-tested
(tests/unit/test_dynia_file_state.py), instead of in chains of Jinja filters.
"""

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
  - Changes nothing unless I(mark_pending), I(remove_paths) or I(clear_pending_marker) ask it
    to; in check mode it never changes anything.
options:
  node:
    description: Name of the node, copied into each drift entry.
    type: str
    required: true
  files:
    description:
      - Expected state, one entry per path: the manifest's file entries. An entry with a
        C(nodes) list is this node's only when the list names I(node).
    type: list
    elements: dict
    required: true
    suboptions:
      target: {description: Absolute path on the node., type: str, required: true}
      sha256: {description: Expected SHA-256 of the content., type: str, required: true}
      mode: {description: Expected mode, octal string such as C(0644)., type: str}
      owner: {description: Expected owner name., type: str}
      group: {description: Expected group name., type: str}
      component: {description: Component the file belongs to., type: str}
      nodes: {description: Nodes that get the file., type: list, elements: str}
      validate:
        description: Command that checks the new file (C(%s)) before it replaces the old one.
        type: str
  components:
    description:
      - The manifest's components (C(unit), C(action), C(force_action), C(order) of each). Given,
        the result carries C(plan); without it only the comparison is made.
    type: dict
  hold_components:
    description: Components whose files the sync leaves untouched.
    type: list
    elements: str
    default: []
  hold_new_components:
    description: Components left untouched where none of their files exist yet.
    type: list
    elements: str
    default: []
  force:
    description: Trigger every component of the node even when no file differs (repair).
    type: bool
    default: false
  pending_marker:
    description:
      - Path of the file a sync writes before it changes the node and removes once the node is
        healthy again. When it exists, a sync stopped half-way (files copied, components not
        reloaded, node maybe still drained): it is reported as drift, with the components it
        names.
    type: str
  mark_pending:
    description:
      - With I(components), write I(pending_marker) (naming the triggered components) when the
        plan applies anything: the sync is about to change the node.
    type: bool
    default: false
  remove_paths:
    description: Files to delete before comparing (the backups of a sync that succeeded).
    type: list
    elements: str
    default: []
  clear_pending_marker:
    description: Delete I(pending_marker) before comparing (the node is healthy and back).
    type: bool
    default: false
  revision:
    description:
      - The revision the sync rolls out. Given with I(revision_file), the node records it there
        (and I(hold_file) is deleted) once it runs it, that is when the plan applies nothing or,
        without I(components), after the change.
    type: str
  revision_file: {description: Where the node records the revision it runs., type: str}
  hold_file:
    description: File that holds a node out of rotation after boot; deleted with the record.
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
plan:
  description:
    - What a sync of the node does. C(files), the node's files it manages (held components
      left out); C(held_new), the components held because they are new here; C(changed), the
      files to copy; C(new_paths), those of them not on the node yet; C(pending_components),
      the components an interrupted sync left; C(triggered), every component to act on;
      C(reload), C({component, unit, state}) per system unit to reload or restart, in order;
      C(services), the triggered components that are compose services; C(new_services) and
      C(restored_services), those a rollback stops (new here) and brings back up; C(apply),
      whether anything is to be done at all.
  type: dict
  returned: when I(components) is given
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


def files_for_node(files: list, node: str) -> list:
    """The manifest's entries for ``node``: those whose ``nodes`` list names it (or lists none)."""
    return [entry for entry in files if "nodes" not in entry or node in entry["nodes"]]


def _without_nulls(entry: dict) -> dict:
    # A null optional key (validate, owner) means "none": Ansible's default(omit) needs it absent.
    return {key: value for key, value in entry.items() if value is not None}


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def held_new_components(
    files: list, missing_paths: list, hold_components: list, hold_new_components: list
) -> list:
    """Components to hold back because none of their files is on the node yet."""
    present = {entry.get("component") for entry in files if entry["target"] not in missing_paths}
    listed = {entry.get("component") for entry in files}
    return [
        component
        for component in _unique(hold_new_components)
        if component not in hold_components and component in listed and component not in present
    ]


def reload_plan(triggered: list, components: dict, force: bool) -> list:
    """The system units to reload or restart for ``triggered``, in the components' order."""
    units = [name for name in triggered if components.get(name, {}).get("unit")]
    # Components without an order (a manifest written by hand) reload last, by name.
    ordered = sorted(units, key=lambda name: (_order(components[name]), name))
    return [
        {
            "component": name,
            "unit": components[name]["unit"],
            "state": _unit_state(components[name], force),
        }
        for name in ordered
    ]


def _order(component: dict) -> tuple:
    order = component.get("order")
    return (order is None, order or 0)


def _unit_state(component: dict, force: bool) -> str:
    action = component.get("force_action") if force else None
    return "restarted" if (action or component.get("action")) == "restart" else "reloaded"


def plan_sync(
    files: list,
    changed_paths: list,
    missing_paths: list,
    pending_components: list,
    components: dict,
    hold_components: list = (),
    hold_new_components: list = (),
    force: bool = False,
    pending: bool = False,
) -> dict:
    """What a sync does on a node whose ``files`` compared as ``changed_paths``/``missing_paths``.

    An interrupted sync's components (``pending_components``) are acted on again even though
    their files now match; ``force`` acts on every component of the node.
    """
    held_new = held_new_components(files, missing_paths, hold_components, hold_new_components)
    held = set(hold_components) | set(held_new)
    kept = [_without_nulls(entry) for entry in files if entry.get("component") not in held]
    kept_components = _unique(entry.get("component") for entry in kept)
    changed = [entry for entry in kept if entry["target"] in changed_paths]
    pending_kept = [name for name in pending_components if name in kept_components]
    acted_on = kept if force else changed
    triggered = _unique([entry.get("component") for entry in acted_on] + pending_kept)
    new_paths = [entry["target"] for entry in changed if entry["target"] in missing_paths]
    services = [name for name in triggered if name.startswith("service:") and name in components]
    # A rollback stops the services this change introduced and brings the others back up.
    new_services = _unique(
        entry.get("component") for entry in changed if entry["target"] in new_paths
    )
    return {
        "files": kept,
        "held_new": held_new,
        "changed": changed,
        "new_paths": new_paths,
        "pending_components": pending_kept,
        "triggered": triggered,
        "reload": reload_plan(triggered, components, force),
        "services": services,
        "new_services": [name for name in new_services if name.startswith("service:")],
        "restored_services": [name for name in services if name not in new_services],
        "apply": bool(changed) or force or pending,
    }


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0644) through a temporary file: a reader sees the old
    content or the new, never half of it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def write_pending(path: str, components: list[str]) -> None:
    """Write the pending marker (a half-written marker would name no component)."""
    write_atomically(path, json.dumps({"components": components}) + "\n")


def remove_files(paths: list[str]) -> list[str]:
    """Delete each path that exists; the ones deleted."""
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def record_revision(path: str, revision: str, hold_file: str | None) -> list[str]:
    """Record ``revision`` in ``path`` (atomically, when it differs) and delete ``hold_file``:
    the node runs the revision. What was done: "recorded", "released"."""
    done = []
    try:
        with open(path, encoding="utf-8") as handle:
            recorded = handle.read().strip()
    except FileNotFoundError:
        recorded = None
    if recorded != revision:
        write_atomically(path, revision + "\n")
        done.append("recorded")
    if hold_file and remove_files([hold_file]):
        done.append("released")
    return done


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "node": {"type": "str", "required": True},
            "files": {"type": "list", "elements": "dict", "required": True},
            "pending_marker": {"type": "str"},
            "components": {"type": "dict"},
            "hold_components": {"type": "list", "elements": "str", "default": []},
            "hold_new_components": {"type": "list", "elements": "str", "default": []},
            "force": {"type": "bool", "default": False},
            "mark_pending": {"type": "bool", "default": False},
            "remove_paths": {"type": "list", "elements": "str", "default": []},
            "clear_pending_marker": {"type": "bool", "default": False},
            "revision": {"type": "str"},
            "revision_file": {"type": "str"},
            "hold_file": {"type": "str"},
        },
        supports_check_mode=True,
    )
    node = module.params["node"]
    marker = module.params["pending_marker"]
    removed = []
    if not module.check_mode:
        cleared = [marker] if module.params["clear_pending_marker"] and marker else []
        removed = remove_files(module.params["remove_paths"] + cleared)
    files = files_for_node(module.params["files"], node)
    states, drift = {}, []
    for expected in files:
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
    missing_paths = [path for path, state in states.items() if not state["exists"]]
    result = {
        "changed": bool(removed),
        "removed": removed,
        "files": states,
        "changed_paths": changed_paths,
        "missing_paths": missing_paths,
        "dynia_drift": drift,
        "pending": pending,
        "pending_components": pending_components,
    }
    if module.params["components"] is not None:
        result["plan"] = plan_sync(
            files,
            changed_paths,
            missing_paths,
            pending_components,
            module.params["components"],
            module.params["hold_components"],
            module.params["hold_new_components"],
            module.params["force"],
            pending,
        )
        if module.params["mark_pending"] and marker and result["plan"]["apply"]:
            if not module.check_mode:
                write_pending(marker, result["plan"]["triggered"])
            result["changed"] = True
    params = module.params
    runs_revision = "plan" not in result or not result["plan"]["apply"]
    if params["revision"] and params["revision_file"] and runs_revision and not module.check_mode:
        result["recorded"] = record_revision(
            params["revision_file"], params["revision"], params["hold_file"]
        )
        result["changed"] = result["changed"] or bool(result["recorded"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
