"""Action plugin: read the files to copy on the controller and write them all on the node in
one call of the module of the same name (library/dynia_file_copy.py)."""

from __future__ import annotations

import base64
import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# The manifest keys the module takes besides the content; others (sha256, component...) stay.
_PASSED_KEYS = ("target", "mode", "owner", "group", "validate")


def module_entry(entry: dict[str, Any], source_dir: str) -> dict[str, Any]:
    """The module's entry for one manifest file: its keys and the source's content, base64."""
    source = os.path.join(source_dir, entry["source"])
    try:
        with open(source, "rb") as handle:
            content = base64.b64encode(handle.read()).decode("ascii")
    except OSError as error:
        raise AnsibleActionFail(f"cannot read {source} on the controller: {error}") from error
    passed = {key: entry[key] for key in _PASSED_KEYS if entry.get(key) is not None}
    return {**passed, "content": content}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("files", "source_dir", "backup"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self._task.args
        files = [module_entry(entry, args["source_dir"]) for entry in args.get("files") or []]
        if not files:
            return {**result, "changed": False, "results": []}
        module_args = {"files": files, "backup": args.get("backup", True)}
        result.update(
            self._execute_module(
                module_name="dynia_file_copy", module_args=module_args, task_vars=task_vars
            )
        )
        return result
