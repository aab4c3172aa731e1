"""The sync writes every changed file of a node in one call (roles/dynia_sync/library/
dynia_file_copy.py): validated, backed up and swapped in, stopping at the first failure. Run
here on temporary files, no Docker."""

from __future__ import annotations

import base64
import grp
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from role_code import load_role_code

file_copy = load_role_code("dynia_sync", "library/dynia_file_copy.py")
copy_action = load_role_code("dynia_sync", "action_plugins/dynia_file_copy.py")


def entry(target: Path, text: str, mode: str = "0644", **extra: str) -> dict[str, Any]:
    return {
        "target": str(target),
        "content": base64.b64encode(text.encode()).decode(),
        "mode": mode,
        **extra,
    }


def test_changed_files_are_written_with_their_mode_and_the_old_ones_kept(tmp_path: Path) -> None:
    old = tmp_path / "etc/haproxy.cfg"
    old.parent.mkdir()
    old.write_text("old\n")
    new = tmp_path / "opt/services/web/docker-compose.yml"  # its folders do not exist yet
    results, failure = file_copy.copy_files(
        [entry(old, "new\n"), entry(new, "services: {}\n", "0600")], backup=True, check=False
    )
    assert failure == ""
    assert old.read_text() == "new\n" and new.read_text() == "services: {}\n"
    assert oct(new.stat().st_mode & 0o777) == "0o600"
    backup = Path(results[0]["backup_file"])
    assert backup.read_text() == "old\n" and backup.name.endswith("~")
    assert "backup_file" not in results[1]  # nothing was there to keep
    assert [r["changed"] for r in results] == [True, True]
    assert "content" not in results[0]["item"]  # the result never carries the content
    assert sorted(os.listdir(new.parent)) == ["docker-compose.yml"]  # no temporary left


def test_a_file_that_fails_validation_is_not_written_and_stops_the_copy(tmp_path: Path) -> None:
    first, second, third = (tmp_path / name for name in ("a.cfg", "b.cfg", "c.cfg"))
    second.write_text("good\n")
    results, failure = file_copy.copy_files(
        [
            entry(first, "one\n"),
            entry(second, "broken\n", validate="grep -qv broken %s"),
            entry(third, "three\n"),
        ],
        backup=True,
        check=False,
    )
    assert failure.startswith(f"{second}: failed to validate")
    assert second.read_text() == "good\n"  # the node keeps its working file
    assert not third.exists()  # nothing after the failure is touched
    assert results[0]["changed"] and results[1]["failed"]
    assert results[1]["item"]["target"] == str(second)  # what the sync's error names
    assert sorted(os.listdir(tmp_path)) == ["a.cfg", "b.cfg"]


def test_an_unchanged_file_is_left_alone_and_a_mode_change_needs_no_backup(
    tmp_path: Path,
) -> None:
    target = tmp_path / "Caddyfile"
    target.write_text("same\n")
    target.chmod(0o644)
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    unchanged = entry(target, "same\n", owner=user, group=group)
    assert file_copy.copy_files([unchanged], True, False)[0][0]["changed"] is False
    results, _ = file_copy.copy_files([entry(target, "same\n", "0640")], True, False)
    assert results[0]["changed"] and "backup_file" not in results[0]
    assert oct(target.stat().st_mode & 0o777) == "0o640"


def test_check_mode_reports_the_change_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "keepalived.conf"
    results, failure = file_copy.copy_files([entry(target, "vrrp\n")], True, check=True)
    assert failure == "" and results[0]["changed"] and not target.exists()


def test_an_unknown_owner_is_named(tmp_path: Path) -> None:
    target = tmp_path / "x"
    _, failure = file_copy.copy_files([entry(target, "x", owner="no-such-user-here")], True, False)
    assert "no such user or group on the node" in failure and not target.exists()


def test_the_controller_side_hands_in_the_source_content_and_only_the_copy_keys(
    tmp_path: Path,
) -> None:
    (tmp_path / "haproxy").mkdir()
    (tmp_path / "haproxy/haproxy.cfg").write_bytes(b"global\n\x00binary-safe")
    manifest_entry = {
        "source": "haproxy/haproxy.cfg",
        "target": "/etc/haproxy/haproxy.cfg",
        "mode": "0644",
        "sha256": "ab",
        "component": "haproxy",
        "validate": "haproxy -c -f %s",
        "owner": None,
    }
    module_entry = copy_action.module_entry(manifest_entry, str(tmp_path))
    assert base64.b64decode(module_entry.pop("content")) == b"global\n\x00binary-safe"
    assert module_entry == {
        "target": "/etc/haproxy/haproxy.cfg",
        "mode": "0644",
        "validate": "haproxy -c -f %s",
    }


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    from ansible.errors import AnsibleActionFail

    with pytest.raises(AnsibleActionFail, match=r"cannot read .*missing\.cfg on the controller"):
        copy_action.module_entry({"source": "missing.cfg", "target": "/x"}, str(tmp_path))
