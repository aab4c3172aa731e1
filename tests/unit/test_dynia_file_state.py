"""The sync's plan (roles/dynia_sync/library/dynia_file_state.py), computed in Python, no Docker.

The module's pure functions decide what a sync does on a node from the manifest and the
comparison: which files it copies, which components it holds, reloads or restarts, in which
order, and what a rollback stops or brings back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from role_code import load_role_code

file_state = load_role_code("dynia_sync", "library/dynia_file_state.py")

COMPONENTS: dict[str, dict[str, Any]] = {
    "firewall": {"action": "reload", "unit": "dynia-firewall", "order": 0},
    "caddy": {"action": "reload", "unit": "caddy", "order": 1},
    "haproxy": {"action": "reload", "unit": "haproxy", "order": 2},
    "keepalived": {"action": "reload", "force_action": "restart", "unit": "keepalived", "order": 3},
    "service:web": {"action": "compose-up", "project": "dynia-web", "directory": "/opt/web"},
}


def entry(target: str, component: str, nodes: tuple[str, ...] = ("a", "b")) -> dict[str, Any]:
    return {
        "source": target.lstrip("/"),
        "target": target,
        "sha256": "0" * 64,
        "mode": "0644",
        "owner": "root",
        "group": None,
        "component": component,
        "nodes": list(nodes),
        "validate": None,
    }


FILES = [
    entry("/etc/haproxy/haproxy.cfg", "haproxy"),
    entry("/etc/caddy/Caddyfile", "caddy", ("a",)),
    entry("/etc/keepalived/keepalived.conf", "keepalived", ("a",)),
    entry("/etc/nftables.d/dynia-firewall.nft", "firewall"),
    entry("/opt/web/docker-compose.yml", "service:web"),
]


def plan(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "files": file_state.files_for_node(FILES, "a"),
        "changed_paths": [],
        "missing_paths": [],
        "pending_components": [],
        "components": COMPONENTS,
    }
    arguments.update(overrides)
    return file_state.plan_sync(**arguments)


def test_only_the_nodes_own_entries_are_compared() -> None:
    targets = [e["target"] for e in file_state.files_for_node(FILES, "b")]
    assert "/etc/caddy/Caddyfile" not in targets and "/etc/haproxy/haproxy.cfg" in targets


def test_nothing_changed_means_nothing_to_apply() -> None:
    result = plan()
    assert result["apply"] is False
    assert result["changed"] == [] and result["triggered"] == [] and result["reload"] == []


def test_changed_files_reload_their_components_in_manifest_order() -> None:
    result = plan(
        changed_paths=[
            "/etc/keepalived/keepalived.conf",
            "/etc/nftables.d/dynia-firewall.nft",
            "/etc/caddy/Caddyfile",
        ]
    )
    assert result["apply"] is True
    assert [r["component"] for r in result["reload"]] == ["firewall", "caddy", "keepalived"]
    assert {r["state"] for r in result["reload"]} == {"reloaded"}
    assert result["reload"][0]["unit"] == "dynia-firewall"


def test_null_optional_keys_are_dropped_so_ansible_omits_them() -> None:
    (changed,) = plan(changed_paths=["/etc/caddy/Caddyfile"])["changed"]
    assert "validate" not in changed and "group" not in changed and changed["owner"] == "root"


def test_a_forced_sync_triggers_every_component_and_uses_the_force_action() -> None:
    result = plan(force=True)
    assert result["apply"] is True
    assert set(result["triggered"]) == {"haproxy", "caddy", "keepalived", "firewall", "service:web"}
    states = {r["component"]: r["state"] for r in result["reload"]}
    assert states == {
        "firewall": "reloaded",
        "caddy": "reloaded",
        "haproxy": "reloaded",
        "keepalived": "restarted",
    }
    assert result["services"] == ["service:web"]


def test_a_new_component_on_the_node_is_held_for_a_later_play() -> None:
    result = plan(
        changed_paths=["/etc/keepalived/keepalived.conf", "/etc/haproxy/haproxy.cfg"],
        missing_paths=["/etc/keepalived/keepalived.conf"],
        hold_new_components=["keepalived"],
    )
    assert result["held_new"] == ["keepalived"]
    assert [e["target"] for e in result["changed"]] == ["/etc/haproxy/haproxy.cfg"]
    assert "keepalived" not in [e["component"] for e in result["files"]]


def test_a_component_already_on_the_node_is_not_held_as_new() -> None:
    result = plan(
        changed_paths=["/etc/keepalived/keepalived.conf"], hold_new_components=["keepalived"]
    )
    assert result["held_new"] == []
    assert [r["component"] for r in result["reload"]] == ["keepalived"]


def test_held_components_are_left_alone_even_when_pending() -> None:
    result = plan(
        changed_paths=["/etc/haproxy/haproxy.cfg"],
        pending_components=["haproxy", "caddy"],
        hold_components=["haproxy"],
        pending=True,
    )
    assert result["changed"] == []
    assert result["pending_components"] == ["caddy"]
    assert result["triggered"] == ["caddy"] and result["apply"] is True


def test_a_pending_marker_alone_applies_again() -> None:
    result = plan(pending_components=["service:web"], pending=True)
    assert result["apply"] is True and result["services"] == ["service:web"]


def test_a_rollback_stops_new_services_and_restores_the_others() -> None:
    result = plan(
        files=[
            *file_state.files_for_node(FILES, "a"),
            entry("/opt/api/docker-compose.yml", "service:api"),
        ],
        components={**COMPONENTS, "service:api": {"action": "compose-up"}},
        changed_paths=["/opt/web/docker-compose.yml", "/opt/api/docker-compose.yml"],
        missing_paths=["/opt/api/docker-compose.yml"],
    )
    assert result["new_paths"] == ["/opt/api/docker-compose.yml"]
    assert result["new_services"] == ["service:api"]
    assert result["restored_services"] == ["service:web"]


@pytest.mark.parametrize(
    ("components", "expected"),
    [
        ({"b": {"unit": "b", "order": 1}, "a": {"unit": "a", "order": 2}}, ["b", "a"]),
        ({"z": {"unit": "z"}, "y": {"unit": "y"}, "x": {"unit": "x", "order": 5}}, ["x", "y", "z"]),
    ],
)
def test_components_without_an_order_reload_last_by_name(
    components: dict[str, Any], expected: list[str]
) -> None:
    assert [
        r["component"] for r in file_state.reload_plan(list(components), components, False)
    ] == (expected)


def test_the_node_records_the_revision_it_runs_once_and_leaves_its_hold(tmp_path: Path) -> None:
    revision_file = tmp_path / "var/lib/dynia/revision"
    hold = tmp_path / "hold"
    hold.write_text("")
    assert file_state.record_revision(str(revision_file), "r2", str(hold)) == [
        "recorded",
        "released",
    ]
    assert revision_file.read_text() == "r2\n"
    assert not hold.exists()
    # Running it again changes nothing: a no-op sync reports no change on the node.
    assert file_state.record_revision(str(revision_file), "r2", str(hold)) == []
    assert file_state.record_revision(str(revision_file), "r3", None) == ["recorded"]
    assert revision_file.read_text() == "r3\n"
