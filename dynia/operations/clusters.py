"""Finding the cluster a command acts on, and reading clusters for list/show."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dynia.errors import NotFoundError, UsageError
from dynia.state import StateStore, Transaction
from dynia.state.models import STATUS_PLANNED, Cluster, State

if TYPE_CHECKING:
    from dynia.operations.run_context import RunContext


def resolve_cluster_name(state: State, option: str | None) -> str:
    """--cluster wins over the current context; with neither, say both ways to give one."""
    name = option or state.current_cluster
    if not name:
        raise UsageError(
            "no cluster selected",
            hint="pass --cluster NAME, or set a current cluster with `dynia context use NAME`",
        )
    return name


def get_cluster(state: State, name: str) -> Cluster:
    cluster = state.clusters.get(name)
    if cluster is None:
        known = ", ".join(sorted(state.clusters)) or "none yet"
        raise NotFoundError(
            f"unknown cluster {name!r}",
            hint=f"clusters in state: {known}; create one with `dynia cluster create`",
        )
    return cluster


def selected_cluster(state: State, option: str | None) -> Cluster:
    return get_cluster(state, resolve_cluster_name(state, option))


def require_provisioned(cluster: Cluster) -> None:
    """Commands that act on nodes need a cluster whose create has finished."""
    if not cluster.nodes or cluster.status == STATUS_PLANNED:
        raise UsageError(
            f"cluster {cluster.name!r} has no provisioned nodes yet",
            hint=f"finish it with `dynia cluster create --name {cluster.name}`",
        )


@contextmanager
def cluster_transaction(
    store: StateStore, cluster_option: str | None, command: str
) -> Iterator[tuple[Transaction, Cluster]]:
    """Lock state for a mutating command and hand it the cluster it acts on."""
    with store.transaction(command) as txn:
        yield txn, selected_cluster(txn.state, cluster_option)


def cluster_summary(cluster: Cluster, current: str | None) -> dict[str, Any]:
    """The stable shape `cluster list --json` prints, one per cluster."""
    return {
        "name": cluster.name,
        "current": cluster.name == current,
        "status": cluster.status,
        "node_provider": cluster.node_provider,
        "dns_provider": cluster.dns_provider,
        "region": cluster.region,
        "image": cluster.image,
        "nodes": len(cluster.nodes),
        "services": len(cluster.services),
        "reserved_ip": cluster.reserved_ip.address if cluster.reserved_ip else None,
    }


def cluster_details(cluster: Cluster, current: str | None) -> dict[str, Any]:
    """The stable shape `cluster show --json` prints."""
    summary = cluster_summary(cluster, current)
    summary.update(
        {
            "size": cluster.size,
            "completed_steps": list(cluster.completed_steps),
            "nodes": [
                {
                    "name": n.name,
                    "role": cluster.role_of(n.name),
                    "priority": n.priority,
                    "status": n.status,
                    "public_ip": n.public_ip,
                    "private_ip": n.private_ip,
                    "provider_id": n.provider_id,
                }
                for n in sorted(cluster.nodes.values(), key=lambda n: n.name)
            ],
            "services": [
                {
                    "name": s.name,
                    "internal_port": s.internal_port,
                    "health_path": s.health_path,
                    "images": sorted(s.image_ids),
                }
                for s in sorted(cluster.services.values(), key=lambda s: s.name)
            ],
            "routes": [
                {
                    "domain": r.domain,
                    "service": r.service,
                    "dns": r.dns_record_id is not None,
                    "https_only": cluster.https_only(r),
                }
                for r in sorted(cluster.routes.values(), key=lambda r: r.domain)
            ],
        }
    )
    return summary


def node_health(ctx: RunContext, cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Live health of every node over SSH (health.yml): proxies running, health paths answering,
    and which node holds the Reserved IP now (after a failover, not the MASTER state names).

    Read-only; a node that cannot be reached or fails a check is reported, not raised.
    """
    from dynia.operations import rollout
    from dynia.operations.deploy_config import render_cluster

    if not (ctx.layout.deploy_config_dir(cluster.name) / "metadata.json").exists():
        render_cluster(ctx.layout, cluster)
    result = rollout.run(ctx, cluster, "health.yml", raise_on_failure=False)
    health = {}
    for name in sorted(cluster.nodes):
        host = result.hosts.get(name)
        if host is None:
            health[name] = {"healthy": False, "problem": "not checked"}
        elif host.unreachable:
            health[name] = {"healthy": False, "problem": "unreachable over SSH"}
        else:
            problem = host.failures[-1] if host.failures else None
            health[name] = {"healthy": host.ok, "problem": problem}
        reached = host is not None and not host.unreachable
        node = cluster.nodes[name]
        holds = reached and ctx.probe.holds_master_address(ctx.layout, cluster, node)
        health[name]["holds_reserved_ip"] = holds
    return health
