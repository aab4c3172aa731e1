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
from dynia.providers.base import NodeProvider, ReservedIpGoneError
from dynia.state import Transaction
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


class ReservedIpLostError(ReservedIpGoneError):
    """`repair --check-only`'s answer when the account lost the Reserved IP: a non-zero exit
    that names it first; ``plan`` holds every planned action."""

    def __init__(self, address: str, lost: str, plan: RepairPlan) -> None:
        others = [action for action in plan.actions if action != lost]
        also = f"`dynia repair --force` would also: {'; '.join(others)}" if others else None
        super().__init__(address, lost, hint=also)
        self.plan = plan


def plan_repair(ctx: RunContext) -> RepairPlan:
    """What `repair --force` would do, found without changing anything.

    A Reserved IP the account no longer has raises ReservedIpLostError (with the plan): the
    check must not pass while the cluster's address is gone.
    """
    state = ctx.store.load()
    cluster = get_cluster(state, resolve_cluster_name(state, ctx.cluster_option))
    require_provisioned(cluster)
    report = rollout.compare_nodes(ctx, cluster)
    actions = [f"re-sync {e.node}: {e.path}" for e in report.entries]
    provider = ctx.node_provider(cluster)
    lost = infra.lost_reserved_ip(cluster, provider)
    lost_action = _lost_reserved_ip_action(lost, provider) if lost is not None else ""
    answers = False
    if lost is not None:  # nothing can answer on it: no probe
        actions.append(lost_action)
    else:
        try:
            ctx.probe.wait_for_reserved_ip(cluster, timeout=3)
            answers = True
        except Exception:  # any failure to answer means the IP needs re-attaching
            actions.append("re-attach the Reserved IP to a healthy MASTER")
    replaced = infra.replaced_from(cluster)
    if replaced is not None and cluster.reserved_ip is not None:
        actions.append(
            f"point the routes' DNS records at {cluster.reserved_ip.address}, the Reserved IP "
            f"that replaced {replaced} (an earlier repair stopped before it)"
        )
    plan = RepairPlan(report, answers, actions)
    if lost is not None:
        raise ReservedIpLostError(lost, lost_action, plan)
    return plan


def _lost_reserved_ip_action(address: str, provider: NodeProvider) -> str:
    """What a repair does about a Reserved IP the account lost."""
    if provider.reserved_ip_mode == "api":
        return (
            f"reserved IP {address} no longer exists on the account: `dynia repair --force` "
            "allocates a new one (the address changes)"
        )
    # A VRRP address is the cluster network's: it went with that network, and with the nodes'
    # addresses on it, so a new one would reach no node.
    return (
        f"reserved IP {address} no longer exists: the cluster network that carried it is gone, "
        "and the nodes' addresses with it; delete the cluster and create it again"
    )


@dataclass
class RepairReport(DriftReport):
    """The drift a repair left, and the Reserved IP it had to replace (None: it kept it)."""

    reserved_ip_change: infra.ReservedIpChange | None = None


def repair(ctx: RunContext, batch: BatchSize = ONE_AT_A_TIME) -> RepairReport:
    """Re-render, re-run bootstrap and sync with restarts (``batch`` nodes at a time),
    re-attach the Reserved IP, or replace it when the account no longer has it."""
    with cluster_transaction(ctx.store, ctx.cluster_option, "dynia repair") as (txn, cluster):
        require_provisioned(cluster)
        plan = rollout.batch_plan(batch, len(cluster.nodes))
        provider = ctx.node_provider(cluster)
        _replace_lost_reserved_ip(ctx, txn, cluster, provider)  # before the render and the roll
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
        # Released between the check above and now: replaced with a second roll.
        rolled_again = _attach_or_replace_reserved_ip(
            ctx, txn, cluster, provider, answering, unanswered
        )
        if rolled_again is not None:  # the replacement's roll compared the nodes once more
            report = rolled_again
        # Also finishes a replacement an earlier repair made but was cut short before DNS.
        change = infra.point_dns_at_replaced_reserved_ip(ctx, txn, cluster)
        return RepairReport(report.nodes, report.entries, reserved_ip_change=change)


def _replace_lost_reserved_ip(
    ctx: RunContext, txn: Transaction, cluster: Cluster, provider: NodeProvider
) -> None:
    """Allocate a Reserved IP in place of one the account lost, before the render: the one
    roll of the repair then carries the new address to the nodes."""
    lost = infra.lost_reserved_ip(cluster, provider)
    if lost is None:
        return
    if provider.reserved_ip_mode != "api":
        raise ReservedIpGoneError(lost, _lost_reserved_ip_action(lost, provider))
    ctx.progress(
        f"Reserved IP {lost} no longer exists on the {provider.name} account: allocating a new "
        "one; the address will change"
    )
    infra.allocate_replacement_reserved_ip(ctx, txn, cluster, provider)


def _attach_or_replace_reserved_ip(
    ctx: RunContext,
    txn: Transaction,
    cluster: Cluster,
    provider: NodeProvider,
    answering: list[str],
    unanswered: dict[str, str],
) -> DriftReport | None:
    """Put the Reserved IP on the MASTER. One the account no longer has is replaced by a new
    address, rolled out to the nodes that answer, then attached; returns that roll's drift."""
    try:
        infra.attach_reserved_ip(ctx, txn, cluster, provider)
        return None
    except ReservedIpGoneError as gone:
        ctx.progress(f"{gone.message}: allocating a new one; the address will change")
    result = infra.replace_reserved_ip(ctx, txn, cluster, provider, answering, unanswered)
    report = rollout.compared_by_sync(cluster, result, unanswered) or rollout.compare_nodes(
        ctx, cluster, unanswered
    )
    rollout.mark_sync_outcome(cluster, report)
    txn.save()
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
