#!/usr/bin/python
"""Write many files on a node in one module call, each validated, backed up and swapped in
atomically, as ``ansible.builtin.copy`` does for one file in several round trips.

The role's action plugin of the same name (action_plugins/dynia_file_copy.py) reads each
file's content on the controller and hands it in, so the whole copy costs one round trip.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import os
import pwd
import shlex
import subprocess
import tempfile
import time
from typing import Any

DOCUMENTATION = r"""
module: dynia_file_copy
short_description: Write files on a node, validated, with backups, in one call
description:
  - For each file whose content, mode, owner or group differ from what is given, writes the
    content next to the target, sets mode and ownership, runs I(validate) on it when given,
    keeps a backup of the old file, then renames it over the target. Missing folders are
    created (mode 0755).
  - Stops at the first file that fails; its result and those of the files written before it
    are returned, so a caller can put their backups back.
  - Use it through the action plugin of the same name, which reads the sources on the
    controller.
options:
  files:
    description: The files to write.
    type: list
    elements: dict
    required: true
    suboptions:
      target: {description: Absolute path on the node., type: str, required: true}
      content: {description: The content, base64-encoded., type: str, required: true}
      mode: {description: Mode, octal string such as C(0644)., type: str, required: true}
      owner: {description: Owner name., type: str}
      group: {description: Group name., type: str}
      validate: {description: Command that checks the new file, C(%s) standing for it., type: str}
  backup: {description: Keep the file replaced as TARGET.PID.DATE@TIME~., type: bool, default: true}
"""

RETURN = r"""
results:
  description:
    - Per file, in order: C(item) (the entry, without its content), C(dest), C(changed),
      C(backup_file) when an old file was kept, C(failed) and C(msg) for the file that failed.
  type: list
  returned: always
"""


class CopyError(Exception):
    """Writing one file failed; the message says why."""


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        return None


def _ids(entry: dict[str, Any]) -> tuple[int, int]:
    """uid and gid for the entry's owner and group; -1 leaves one as it is."""
    try:
        uid = pwd.getpwnam(entry["owner"]).pw_uid if entry.get("owner") else -1
        gid = grp.getgrnam(entry["group"]).gr_gid if entry.get("group") else -1
    except KeyError as missing:
        raise CopyError(f"no such user or group on the node: {missing}") from None
    return uid, gid


def _attributes_differ(path: str, mode: int, uid: int, gid: int) -> bool:
    info = os.stat(path)
    return (
        (info.st_mode & 0o7777) != mode
        or (uid != -1 and info.st_uid != uid)
        or (gid != -1 and info.st_gid != gid)
    )


def backup_name(target: str) -> str:
    """Where the old file is kept, named as ansible.builtin.copy names its backups."""
    return f"{target}.{os.getpid()}.{time.strftime('%Y-%m-%d@%H:%M:%S~')}"


def _validate(command: str, path: str) -> None:
    if "%s" not in command:
        raise CopyError(f"validate command must contain %s: {command}")
    done = subprocess.run(
        command.replace("%s", shlex.quote(path)),
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        raise CopyError(f"failed to validate: {output or f'exit {done.returncode}'}")


def write_file(entry: dict[str, Any], content: bytes, backup: bool, check: bool) -> dict[str, Any]:
    """Write one file as the entry says; its result (without ``item``)."""
    target = entry["target"]
    mode = int(str(entry["mode"]), 8)
    uid, gid = _ids(entry)
    same_content = _sha256(target) == hashlib.sha256(content).hexdigest()
    if same_content and not _attributes_differ(target, mode, uid, gid):
        return {"dest": target, "changed": False}
    if check:
        return {"dest": target, "changed": True}
    if same_content:  # only mode or ownership differ: no new content to validate or back up
        os.chown(target, uid, gid)
        os.chmod(target, mode)
        return {"dest": target, "changed": True}
    folder = os.path.dirname(target)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.chown(temporary, uid, gid)
        os.chmod(temporary, mode)
        if entry.get("validate"):
            _validate(entry["validate"], temporary)
        result: dict[str, Any] = {"dest": target, "changed": True}
        if backup and os.path.exists(target):
            result["backup_file"] = backup_name(target)
            os.link(target, result["backup_file"])  # the old inode stays as the backup
        os.replace(temporary, target)
        return result
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def copy_files(files: list[dict[str, Any]], backup: bool, check: bool) -> tuple[list, str]:
    """Results of the files written, in order, and the failure ("" when none) that stopped it."""
    results = []
    for entry in files:
        item = {key: value for key, value in entry.items() if key != "content"}
        try:
            content = base64.b64decode(entry["content"])
            result = write_file(entry, content, backup, check)
        except (CopyError, OSError, ValueError) as error:
            message = str(error)
            results.append(
                {"item": item, "dest": entry.get("target"), "failed": True, "msg": message}
            )
            return results, f"{entry.get('target')}: {message}"
        results.append({"item": item, **result})
    return results, ""


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "files": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "target": {"type": "str", "required": True},
                    # Keys and certificates travel here: never echoed in the task's result.
                    "content": {"type": "str", "required": True, "no_log": True},
                    "mode": {"type": "str", "required": True},
                    "owner": {"type": "str"},
                    "group": {"type": "str"},
                    "validate": {"type": "str"},
                },
            },
            "backup": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    results, failure = copy_files(
        module.params["files"], module.params["backup"], module.check_mode
    )
    changed = any(result.get("changed") for result in results)
    if failure:
        module.fail_json(msg=failure, results=results, changed=changed)
    module.exit_json(results=results, changed=changed)


if __name__ == "__main__":
    main()
