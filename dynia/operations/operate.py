"""`dynia sync`, `dynia drift-check`, `dynia repair` and `dynia cert rotate`."""

from __future__ import annotations

from dataclasses import dataclass

from dynia.errors import UsageError
from dynia.operations import certificates, deploy_config, infra, rollout
from dynia.operations.clusters import (
    cluster_transaction,
    get_cluster,
    require_provisioned,
    resolve_cluster_name,
)
from dynia.operations.deploy_config import render_cluster
from dynia.operations.rollout import ONE_AT_A_TIME, BatchSize, DriftReport
from dynia.operations.run_context import RunContext
from dynia.state.models import Cluster


def sync(ctx: RunContext, batch: BatchSize = ONE_AT_A_TIME) -> DriftReport:
    """Roll deploy-config out as rendered, ``batch`` nodes at a time; confirm no drift remains."""
    with cluster_transaction(ctx.store, ctx.cluster_option, "dynia sync") as (txn, cluster):
        require_provisioned(cluster)
        plan = rollout.batch_plan(batch, len(cluster.nodes))
        _require_current_deploy_config(ctx, cluster)
        ctx.progress(f"Syncing {cluster.name}: {len(cluster.nodes)} node(s), {rollout.pace(plan)}")
        return rollout.sync_and_verify(ctx, cluster, persist=txn.save, render=False, batch=batch)


def drift_check(ctx: RunContext) -> DriftReport:
    """Compare every node with deploy-config; changes nothing, not even state."""
    state = ctx.store.load()
    cluster = get_cluster(state, resolve_cluster_name(state, ctx.cluster_option))
    require_provisioned(cluster)
    if not deploy_config.is_current(ctx.layout, cluster):
        render_cluster(ctx.layout, cluster)
    return rollout.compare_nodes(ctx, cluster)


def _require_current_deploy_config(ctx: RunContext, cluster: Cluster) -> None:
    """`dynia sync` rolls out deploy-config as it is; it must be there and readable by the roles."""
    schema = deploy_config.rendered_manifest_schema(ctx.layout, cluster)
    if schema is None:
        raise UsageError(
            f"no deploy-config for cluster {cluster.name!r} yet",
            hint="run `dynia render` first",
        )
    if schema != deploy_config.MANIFEST_SCHEMA:
        raise UsageError(
            f"deploy-config of cluster {cluster.name!r} was rendered by another Dynia version "
            f"(manifest schema {schema}, this version writes {deploy_config.MANIFEST_SCHEMA})",
            hint="run `dynia render` (or `dynia repair --force`), then `dynia sync`",
        )


@dataclass
class RepairPlan:
    drift: DriftReport
    reserved_ip_answers: bool
    actions: list[str]


def plan_repair(ctx: RunContext) -> RepairPlan:
    """What `repair --force` would do, found without changing anything."""
    state = ctx.store.load()
    cluster = get_cluster(state, resolve_cluster_name(state, ctx.cluster_option))
    require_provisioned(cluster)
    report = rollout.compare_nodes(ctx, cluster)
    actions = [f"re-sync {e.node}: {e.path}" for e in report.entries]
    try:
        ctx.probe.wait_for_reserved_ip(cluster, timeout=3)
        answers = True
    except Exception:  # any failure to answer means the IP needs re-attaching
        answers = False
        actions.append("re-attach the Reserved IP to a healthy MASTER")
    return RepairPlan(report, answers, actions)


def repair(ctx: RunContext, batch: BatchSize = ONE_AT_A_TIME) -> DriftReport:
    """Re-render, re-run bootstrap and sync with restarts (``batch`` nodes at a time),
    re-attach the Reserved IP."""
    with cluster_transaction(ctx.store, ctx.cluster_option, "dynia repair") as (txn, cluster):
        require_provisioned(cluster)
        plan = rollout.batch_plan(batch, len(cluster.nodes))
        provider = ctx.node_provider(cluster)
        ctx.progress("Re-rendering deploy-config")
        render_cluster(ctx.layout, cluster)
        ctx.progress(
            f"Re-applying the node base, configs and services (repair.yml), {rollout.pace(plan)}"
        )
        answering, unanswered = rollout.answering_nodes(ctx, cluster, cluster.nodes)
        extra_vars = rollout.batch_vars(batch, len(answering))
        extra_vars |= rollout.server_states(cluster, answering, unanswered)
        rollout.ship_images(ctx, cluster, answering)
        limit = ",".join(answering) if unanswered else None
        rollout.run(ctx, cluster, "repair.yml", extra_vars=extra_vars, limit=limit)
        report = rollout.compare_nodes(ctx, cluster, unanswered)  # left out: reported as drift
        rollout.mark_sync_outcome(cluster, report)
        txn.save()
        # Restarting keepalived everywhere may have moved the MASTER role.
        infra.record_elected_master(ctx, txn, cluster)
        infra.attach_reserved_ip(ctx, txn, cluster, provider)
        return report


def rotate_certificate(ctx: RunContext) -> str:
    """Issue a new cluster certificate and roll it out node by node; returns its fingerprint."""
    command = "dynia cert rotate"
    with cluster_transaction(ctx.store, ctx.cluster_option, command) as (txn, cluster):
        bundle = certificates.issue_certificate(ctx.layout, cluster)
        cluster.tls_fingerprint = bundle.fingerprint_sha256
        txn.save()
        ctx.progress(
            f"Issued a new certificate ({bundle.fingerprint_sha256[:16]}…, {bundle.issuer} CA); "
            "rolling it out"
        )
        rollout.sync_and_verify(ctx, cluster, persist=txn.save)
        # Only now: a replaced Origin CA certificate is revoked once no node serves it.
        for message in certificates.revoke_superseded(ctx.layout, cluster):
            ctx.progress(message)
        return bundle.fingerprint_sha256
