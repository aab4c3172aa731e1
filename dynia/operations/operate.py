"""`dynia sync`, `dynia drift-check`, `dynia repair` and `dynia cert rotate`."""

from __future__ import annotations

from dataclasses import dataclass

from dynia.errors import UsageError
from dynia.operations import Progress, certificates, infra, rollout
from dynia.operations.clusters import (
    cluster_transaction,
    get_cluster,
    require_provisioned,
    resolve_cluster_name,
)
from dynia.operations.deploy_config import render_cluster
from dynia.operations.rollout import DriftReport, EventSink
from dynia.paths import HomeLayout
from dynia.providers import get_node_provider
from dynia.state import StateStore


def sync(
    layout: HomeLayout,
    store: StateStore,
    cluster_option: str | None,
    progress: Progress,
    on_event: EventSink = None,
) -> DriftReport:
    """Roll deploy-config out as rendered, then confirm no drift remains."""
    with cluster_transaction(store, cluster_option, "dynia sync") as (txn, cluster):
        require_provisioned(cluster)
        if not (layout.deploy_config_dir(cluster.name) / "metadata.json").exists():
            raise UsageError(
                f"no deploy-config for cluster {cluster.name!r} yet",
                hint="run `dynia render` first",
            )
        progress(f"Syncing {cluster.name}: {len(cluster.nodes)} node(s), one at a time")
        return rollout.sync_and_verify(layout, cluster, on_event, persist=txn.save, render=False)


def drift_check(
    layout: HomeLayout, store: StateStore, cluster_option: str | None, on_event: EventSink = None
) -> DriftReport:
    """Compare every node with deploy-config; changes nothing, not even state."""
    state = store.load()
    cluster = get_cluster(state, resolve_cluster_name(state, cluster_option))
    require_provisioned(cluster)
    if not (layout.deploy_config_dir(cluster.name) / "metadata.json").exists():
        render_cluster(layout, cluster)
    return rollout.compare_nodes(layout, cluster, on_event)


@dataclass
class RepairPlan:
    drift: DriftReport
    reserved_ip_answers: bool
    actions: list[str]


def plan_repair(
    layout: HomeLayout, store: StateStore, cluster_option: str | None, on_event: EventSink = None
) -> RepairPlan:
    """What `repair --force` would do, found without changing anything."""
    state = store.load()
    cluster = get_cluster(state, resolve_cluster_name(state, cluster_option))
    require_provisioned(cluster)
    report = rollout.compare_nodes(layout, cluster, on_event)
    actions = [f"re-sync {e.node}: {e.path}" for e in report.entries]
    try:
        infra.wait_for_reserved_ip(cluster, timeout=3)
        answers = True
    except Exception:  # any failure to answer means the IP needs re-attaching
        answers = False
        actions.append("re-attach the Reserved IP to a healthy MASTER")
    return RepairPlan(report, answers, actions)


def repair(
    layout: HomeLayout,
    store: StateStore,
    cluster_option: str | None,
    progress: Progress,
    on_event: EventSink = None,
) -> DriftReport:
    """Re-render, re-run bootstrap and sync with restarts, re-attach the Reserved IP."""
    with cluster_transaction(store, cluster_option, "dynia repair") as (txn, cluster):
        require_provisioned(cluster)
        provider = get_node_provider(cluster.node_provider, layout)
        progress("Re-rendering deploy-config")
        render_cluster(layout, cluster)
        progress("Re-applying the node base, configs and services (repair.yml)")
        rollout.run(layout, cluster, "repair.yml", on_event)
        report = rollout.compare_nodes(layout, cluster, on_event)
        rollout.mark_sync_outcome(cluster, report)
        txn.save()
        # Restarting keepalived everywhere may have moved the MASTER role.
        infra.record_elected_master(layout, txn, cluster, progress, on_event)
        infra.attach_reserved_ip(txn, cluster, provider, progress)
        return report


def rotate_certificate(
    layout: HomeLayout,
    store: StateStore,
    cluster_option: str | None,
    progress: Progress,
    on_event: EventSink = None,
) -> str:
    """Issue a new cluster certificate and roll it out node by node; returns its fingerprint."""
    with cluster_transaction(store, cluster_option, "dynia cert rotate") as (txn, cluster):
        bundle = certificates.issue_certificate(layout, cluster)
        cluster.tls_fingerprint = bundle.fingerprint_sha256
        txn.save()
        progress(
            f"Issued a new certificate ({bundle.fingerprint_sha256[:16]}…, {bundle.issuer} CA); "
            "rolling it out"
        )
        rollout.sync_and_verify(layout, cluster, on_event, persist=txn.save)
        # Only now: a replaced Origin CA certificate is revoked once no node serves it.
        for message in certificates.revoke_superseded(layout, cluster):
            progress(message)
        return bundle.fingerprint_sha256
