"""Render, then roll deploy-config out through the playbooks: the loop every change goes through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dynia.errors import DriftError
from dynia.operations.deploy_config import render_cluster
from dynia.operations.run_context import RunContext
from dynia.runner import PlaybookResult
from dynia.state.models import NODE_OUT_OF_SYNC, NODE_READY, Cluster


@dataclass
class DriftEntry:
    node: str
    path: str
    expected: str | None
    actual: str | None
    detail: str = ""


@dataclass
class DriftReport:
    nodes: list[str]
    entries: list[DriftEntry] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.entries

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "nodes": [
                {
                    "node": node,
                    "in_sync": not any(e.node == node for e in self.entries),
                    "drift": [
                        {
                            "path": e.path,
                            "expected": e.expected,
                            "actual": e.actual,
                            "detail": e.detail,
                        }
                        for e in self.entries
                        if e.node == node
                    ],
                }
                for node in self.nodes
            ],
        }


def run(
    ctx: RunContext,
    cluster: Cluster,
    playbook: str,
    *,
    extra_vars: dict[str, Any] | None = None,
    limit: str | None = None,
    raise_on_failure: bool = True,
) -> PlaybookResult:
    """Run one of the generated project's playbooks; RunnerError names failed nodes."""
    return ctx.runner(
        ctx.layout.deploy_config_dir(cluster.name),
        playbook,
        extra_vars=extra_vars,
        limit=limit,
        on_event=ctx.on_event,
        raise_on_failure=raise_on_failure,
    )


def render_and_sync(ctx: RunContext, cluster: Cluster, limit: str | None = None) -> PlaybookResult:
    """Render (validated) and run the rolling, health-gated sync."""
    render_cluster(ctx.layout, cluster)
    return run(ctx, cluster, "sync.yml", limit=limit)


def compare_nodes(ctx: RunContext, cluster: Cluster) -> DriftReport:
    """Read-only comparison of every node with deploy-config."""
    result = run(ctx, cluster, "drift-check.yml", raise_on_failure=False)
    return drift_report(cluster, result)


def compared_by_sync(cluster: Cluster, result: Any) -> DriftReport | None:
    """The sync's own comparisons, when it compared every node; None means drift-check must.

    Each node's last comparison counts: the one before the change when nothing changed, or the
    one the sync made of the changed files once they were in place.
    """
    every_node_compared = all(
        name in result.reports and name in result.hosts and result.hosts[name].ok
        for name in cluster.nodes
    )
    return drift_report(cluster, result) if every_node_compared else None


def drift_report(cluster: Cluster, result: Any) -> DriftReport:
    """The drift a playbook's comparisons found, and every node it did not fully read."""
    report = DriftReport(nodes=sorted(cluster.nodes))
    for node in report.nodes:
        # A node the playbook did not fully read is not known to match: report it, never pass it.
        host = result.hosts.get(node)
        if host is None or host.unreachable or not host.ok:
            problem = "unreachable" if host and host.unreachable else "not checked"
            report.entries.append(DriftEntry(node, "*", None, None, problem))
    for node, entries in sorted(result.reports.items()):
        for entry in entries:
            report.entries.append(
                DriftEntry(
                    node=entry.get("node", node),
                    path=entry["path"],
                    expected=entry.get("expected"),
                    actual=entry.get("actual"),
                    detail=", ".join(entry.get("reasons", [])),
                )
            )
    return report


def mark_sync_outcome(cluster: Cluster, report: DriftReport) -> list[str]:
    """Record which nodes still differ after a sync; returns their names."""
    drifted = sorted({e.node for e in report.entries})
    for name, node in cluster.nodes.items():
        node.status = NODE_OUT_OF_SYNC if name in drifted else NODE_READY
    return drifted


def sync_and_verify(
    ctx: RunContext,
    cluster: Cluster,
    persist: Callable[[], None] | None = None,
    render: bool = True,
) -> DriftReport:
    """Sync and verify: a node whose hashes still differ is marked out-of-sync.

    The sync's own comparisons are the verification; drift-check runs only when the sync did
    not compare every node.
    """
    result = render_and_sync(ctx, cluster) if render else run(ctx, cluster, "sync.yml")
    report = compared_by_sync(cluster, result) or compare_nodes(ctx, cluster)
    drifted = mark_sync_outcome(cluster, report)
    if persist:
        persist()
    if drifted:
        raise DriftError(
            f"nodes still differ from deploy-config after sync: {', '.join(drifted)} "
            "(marked out-of-sync)",
            hint="run `dynia repair --force` to re-render and resync them",
        )
    return report
