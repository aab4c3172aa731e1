"""Node add / remove / activate: changing a running cluster's shape."""

from __future__ import annotations

from dynia.errors import NotFoundError, UsageError, VerifyError
from dynia.operations import infra, rollout
from dynia.operations.clusters import cluster_transaction, require_provisioned
from dynia.operations.deploy_config import render_cluster
from dynia.operations.run_context import RunContext
from dynia.state.models import (
    MASTER_PRIORITY,
    NODE_JOINING,
    NODE_OUT_OF_SYNC,
    NODE_PROVISIONING,
    NODE_READY,
    Cluster,
    Node,
)
from dynia.waiting import WaitTimeout, wait_until


def _node(cluster: Cluster, name: str) -> Node:
    node = cluster.nodes.get(name)
    if node is None:
        raise NotFoundError(
            f"cluster {cluster.name!r} has no node {name!r}",
            hint=f"its nodes: {', '.join(sorted(cluster.nodes)) or 'none'}",
        )
    return node


def add_node(ctx: RunContext) -> Node:
    """Create one node, then bootstrap it and roll out once so every peer list includes it.

    A node planned, created or half-joined by an interrupted run is finished instead of adding
    another.
    """
    command = "dynia cluster node add"
    with cluster_transaction(ctx.store, ctx.cluster_option, command) as (txn, cluster):
        require_provisioned(cluster)
        unfinished = sorted(
            n.name for n in cluster.nodes.values() if n.status in (NODE_PROVISIONING, NODE_JOINING)
        )
        if not unfinished:
            infra.check_node_count(len(cluster.nodes) + 1)
        provider = ctx.node_provider(cluster)
        public_key = infra.ensure_keys(ctx.layout, txn, cluster)
        if unfinished:
            ctx.progress(f"Finishing node(s) an interrupted run started: {', '.join(unfinished)}")
        else:
            unfinished = [n.name for n in infra.plan_nodes(txn, cluster, len(cluster.nodes) + 1)]
        infra.create_planned_nodes(
            ctx, txn, cluster, provider, public_key, created_status=NODE_JOINING
        )
        unanswered = _join(ctx, cluster, unfinished)
        for name in unfinished:
            cluster.nodes[name].status = NODE_READY
        for name in unanswered:
            cluster.nodes[name].status = NODE_OUT_OF_SYNC
        txn.save()
        if unanswered:
            raise rollout.left_behind(unanswered, done=f"{unfinished[0]} joined")
        return cluster.nodes[unfinished[0]]


# keepalived on a joining node starts last: started before the MASTER advertises to it, it would
# hear nobody, claim the Reserved IP and take it from the serving node.
_HOLD_VRRP = ["keepalived"]


def join_roll_drain(joining: list[str]) -> str:
    """sync.yml's ``dynia_sync_drain`` for a join, evaluated on each node against its plan.

    No HAProxy routes to a new node yet: draining it would do nothing. A peer learns the new node
    through its HAProxy, Caddy, keepalived and firewall files, which those programs reload
    without dropping a connection, so it stays in rotation too (a drain costs two SSH calls per
    node, for each node in the roll). A peer whose change recreates a service or restarts a
    program (an interrupted sync left it pending, or its files drifted) is drained as in any sync.
    """
    # The role validates its arguments before it has made the plan: then nothing is decided yet.
    return (
        f"{{{{ inventory_hostname not in {sorted(joining)!r} and"
        " (dynia_sync_services | default([]) | length > 0"
        " or dynia_sync_reload | default([]) | rejectattr('state', 'eq', 'reloaded')"
        " | list | length > 0) }}"
    )


def join_roll_hosts(joining: list[str]) -> str:
    """sync.yml's host pattern for a join: the new nodes first, then backups, the MASTER last.

    Ansible keeps a union pattern's order, so the new nodes run their services before any peer's
    HAProxy lists them. sync.yml holds keepalived on a node that has no VRRP file yet and starts
    it in its last play, once every peer, the MASTER last, advertises to the new node.
    """
    return ":".join([*joining, "backup", "master"])


def _join(ctx: RunContext, cluster: Cluster, joining: list[str]) -> dict[str, str]:
    """Bootstrap the new node, then one roll: it first, its peers next, its VRRP last.

    A peer that does not answer is left out; returns those, with why. It learns of the new node
    at the next sync.
    """
    ctx.progress("Preparing the new node (bootstrap; keepalived waits until its peers know it)")
    render_cluster(ctx.layout, cluster)
    hold = {"dynia_bootstrap_hold_components": _HOLD_VRRP}
    rollout.run(ctx, cluster, "bootstrap.yml", extra_vars=hold, limit=",".join(joining))
    peers = [name for name in cluster.nodes if name not in joining]
    answering, unanswered = rollout.answering_nodes(ctx, cluster, peers)
    rollout.ship_images(ctx, cluster, [*joining, *answering], list(cluster.services.values()))
    ctx.progress(
        "Rolling sync: the new node serves first, then its peers route to it one at a time, "
        "then its keepalived starts"
    )
    roll = {
        "dynia_sync_hosts": join_roll_hosts(joining),
        "dynia_sync_drain": join_roll_drain(joining),
    }
    limit = ",".join([*joining, *answering]) if unanswered else None
    roll |= rollout.server_states(cluster, answering, unanswered)
    # deploy-config is already rendered
    rollout.run(ctx, cluster, "sync.yml", extra_vars=roll, limit=limit)
    return unanswered


def remove_node(ctx: RunContext, node_name: str) -> None:
    """Stop the node's VRRP, stop routing to it, delete it.

    A MASTER hands the Reserved IP over to the backup with the highest priority, which keeps the
    role. Only the remaining nodes are synced, so a node that is already dead can be removed too.
    State forgets the node only once the provider deleted it: a failed delete can be re-run.
    """
    command = "dynia cluster node remove"
    progress = ctx.progress
    with cluster_transaction(ctx.store, ctx.cluster_option, command) as (txn, cluster):
        node = _node(cluster, node_name)
        if len(cluster.nodes) == 1:
            raise UsageError(
                f"{node_name} is the last node of {cluster.name}",
                hint="delete the whole cluster with `dynia cluster delete` instead",
            )
        provider = ctx.node_provider(cluster)
        infra.adopt_live_master(ctx, cluster)
        was_master = cluster.master is node
        progress(f"Stopping keepalived on {node_name}, so it never claims the Reserved IP again")
        _hand_over(ctx, cluster, node_name)
        if was_master:
            successor = max(
                (n for n in cluster.nodes.values() if n is not node),
                key=lambda n: (n.priority, n.name),
            )
            progress(f"{node_name} was MASTER: {successor.name} took over the role")
            node.priority = 1  # ranked last until it is gone, never taken for the MASTER again
            infra.set_priorities(cluster, successor.name)
            infra.attach_reserved_ip(ctx, txn, cluster, provider)
        progress(f"Taking {node_name} out of HAProxy and keepalived on the other nodes")
        remaining = sorted(n for n in cluster.nodes if n != node_name)
        del cluster.nodes[node_name]
        unanswered = rollout.render_and_sync_answering(ctx, cluster, remaining)
        progress(f"Deleting {node_name}")
        provider.delete_node(cluster.name, node.provider_id)
        infra.write_known_hosts(ctx.layout, cluster)
        txn.save()
        if unanswered:
            raise rollout.left_behind(unanswered, done=f"{node_name} was removed")


def _hand_over(ctx: RunContext, cluster: Cluster, node_name: str) -> None:
    """Stop keepalived on the node once its requests in flight are done (handover.yml).

    A node that cannot be reached holds nothing: keepalived on the others already moved on.
    """
    ports = [cluster.settings.http_port, cluster.settings.https_port]
    result = rollout.run(
        ctx,
        cluster,
        "handover.yml",
        extra_vars={"dynia_handover_ports": ports},
        limit=node_name,
        raise_on_failure=False,
    )
    if not result.ok:
        ctx.progress(
            f"  {node_name} could not hand over ({', '.join(result.failed_hosts)}); going on"
        )


def activate_node(ctx: RunContext, node_name: str) -> str:
    """Health-check the target, make it MASTER, check it holds the Reserved IP and answers.

    The target first becomes the first backup; the MASTER then hands the address over once its
    requests in flight are done, so no request is reset; last, the new priorities roll out.
    """
    command = "dynia cluster node activate"
    progress = ctx.progress
    with cluster_transaction(ctx.store, ctx.cluster_option, command) as (txn, cluster):
        require_provisioned(cluster)
        target = _node(cluster, node_name)
        provider = ctx.node_provider(cluster)
        progress(f"Health-checking {node_name}")
        rollout.run(ctx, cluster, "health.yml", limit=node_name)
        adopted = infra.adopt_live_master(ctx, cluster)
        current = cluster.master
        unanswered: dict[str, str] = {}
        if current is not None and current is not target:
            progress(f"{node_name} becomes the first backup")
            target.priority = MASTER_PRIORITY - 1
            txn.save()  # the inventory's master/backup groups follow the priorities
            # Only the target's keepalived file changes, unless the live MASTER was just adopted.
            names = None if adopted else [node_name]
            unanswered |= rollout.render_and_sync_answering(ctx, cluster, names)
            progress(f"{current.name} hands the Reserved IP over to {node_name}")
            _hand_over(ctx, cluster, current.name)
        infra.set_priorities(cluster, node_name)
        txn.save()
        progress("Rolling out the new priorities")
        unanswered |= rollout.render_and_sync_answering(ctx, cluster)
        infra.attach_reserved_ip(ctx, txn, cluster, provider)
        if provider.reserved_ip_mode == "vrrp":
            _wait_until_holder(ctx, cluster, target)
        txn.save()
        answer = ctx.probe.wait_for_reserved_ip(cluster)
        if unanswered:
            raise rollout.left_behind(unanswered, done=f"{node_name} is MASTER")
        return answer


def _wait_until_holder(
    ctx: RunContext, cluster: Cluster, node: Node, timeout: float = 15.0
) -> None:
    """Check on the node itself that keepalived gave it the Reserved IP."""
    assert cluster.reserved_ip is not None
    try:
        wait_until(
            lambda: ctx.probe.holds_master_address(ctx.layout, cluster, node),
            timeout=timeout,
            interval=0.5,
            what=f"{node.name} to hold the Reserved IP",
        )
    except WaitTimeout:
        raise VerifyError(
            f"{node.name} has the highest priority but keepalived did not give it the Reserved "
            f"IP {cluster.reserved_ip.address} within {timeout:.0f}s",
            hint="check keepalived on the nodes (`journalctl -u keepalived`), then "
            "`dynia repair --force`",
        ) from None
