"""A sync verifies itself: its own comparisons decide which nodes still differ (no Docker).

The events are shaped as ansible-runner emits them for the `dynia_file_state` comparisons of
`sync.yml`; they go through the real event collector and the real rollout code.
"""

from __future__ import annotations

from typing import Any

from sample_state import sample_cluster

from dynia.operations.rollout import compared_by_sync
from dynia.runner.events import EventCollector, PlaybookResult

DRIFTED = {"node": "", "path": "/etc/haproxy/haproxy.cfg", "expected": "a", "actual": "b"}


def comparison(host: str, drift: list[dict[str, Any]], *, changed: bool = False) -> dict[str, Any]:
    """A comparison's event; it is `changed` when it wrote or cleared the pending marker."""
    entries = [{**entry, "node": host} for entry in drift]
    return {
        "event": "runner_on_ok",
        "event_data": {
            "host": host,
            "task": "Compare this node's files with the manifest in one pass",
            "res": {"changed": changed, "dynia_drift": entries},
        },
    }


def stats(hosts: list[str]) -> dict[str, Any]:
    return {"event": "playbook_on_stats", "event_data": {"ok": dict.fromkeys(hosts, 5)}}


def sync_result(events: list[dict[str, Any]]) -> PlaybookResult:
    collector = EventCollector()
    for event in events:
        collector(event)
    return collector.result(0)


def test_a_sync_that_changed_nothing_is_its_own_verification() -> None:
    cluster = sample_cluster()
    nodes = sorted(cluster.nodes)
    result = sync_result([*(comparison(node, []) for node in nodes), stats(nodes)])
    report = compared_by_sync(cluster, result)
    assert report is not None and report.clean
    assert report.nodes == nodes


def test_the_comparison_after_the_change_replaces_the_one_before() -> None:
    cluster = sample_cluster()
    nodes = sorted(cluster.nodes)
    changed = nodes[0]
    events = [comparison(node, [DRIFTED] if node == changed else []) for node in nodes]
    events += [comparison(changed, []), stats(nodes)]
    report = compared_by_sync(cluster, sync_result(events))
    assert report is not None and report.clean


def test_a_sync_that_changed_every_node_needs_no_drift_check() -> None:
    cluster = sample_cluster()
    nodes = sorted(cluster.nodes)
    # Both comparisons of a changed node report `changed`: the first writes the pending
    # marker, the one after the change clears it and removes the backups.
    events = [comparison(node, [DRIFTED], changed=True) for node in nodes]
    events += [comparison(node, [], changed=True) for node in nodes]
    report = compared_by_sync(cluster, sync_result([*events, stats(nodes)]))
    assert report is not None and report.clean
    assert report.nodes == nodes


def test_a_file_still_differing_after_the_change_is_reported() -> None:
    cluster = sample_cluster()
    nodes = sorted(cluster.nodes)
    events = [comparison(node, []) for node in nodes]
    events += [comparison(nodes[-1], [DRIFTED]), stats(nodes)]
    report = compared_by_sync(cluster, sync_result(events))
    assert report is not None
    assert [(e.node, e.path) for e in report.entries] == [(nodes[-1], DRIFTED["path"])]


def test_a_node_the_sync_did_not_compare_leaves_the_check_to_drift_check() -> None:
    cluster = sample_cluster()
    nodes = sorted(cluster.nodes)
    result = sync_result([comparison(nodes[0], []), stats(nodes)])
    assert compared_by_sync(cluster, result) is None
