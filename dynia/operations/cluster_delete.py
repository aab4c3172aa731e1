"""`dynia cluster delete`: DNS records, services, the Reserved IP, nodes, then the state."""

from __future__ import annotations

import shutil

from dynia.errors import DyniaError, ProviderError
from dynia.operations import certificates, rollout
from dynia.operations.clusters import get_cluster
from dynia.operations.run_context import RunContext
from dynia.paths import HomeLayout
from dynia.providers.base import ReservedIpInfo
from dynia.state import Transaction
from dynia.state.models import Cluster


def delete_cluster(
    ctx: RunContext, name: str, purge_volumes: bool, keep_dns: bool = False
) -> list[str]:
    """Unbind routes (DNS), stop services, release the Reserved IP, delete nodes, forget it.

    ``name`` is the cluster to delete, as the operator confirmed it. ``keep_dns`` leaves the
    DNS records alone (a zone or token that is gone must not keep the nodes running); the
    returned warnings name each record left behind, for the operator to delete by hand.
    """
    layout, progress = ctx.layout, ctx.progress
    kept: list[str] = []
    with ctx.store.transaction("dynia cluster delete") as txn:
        cluster = get_cluster(txn.state, name)
        if _never_reached_a_provider(cluster):  # nothing to delete there: no credentials needed
            _forget_plan(ctx, txn, name)
            return []
        if keep_dns:
            kept = _records_left_behind(cluster)
            for line in kept:
                progress(f"Keeping DNS record: {line}")
        else:
            _delete_dns_records(ctx, txn, cluster)
        provider = ctx.node_provider(cluster)
        ready = [n for n in cluster.nodes.values() if n.public_ip]
        if (
            ready
            and cluster.services
            and (layout.deploy_config_dir(name) / "metadata.json").exists()
        ):
            progress("Stopping services")
            # Best effort: a dead or unreachable node is deleted all the same.
            result = rollout.run(
                ctx,
                cluster,
                "teardown.yml",
                extra_vars={"dynia_teardown_purge_volumes": purge_volumes},
                raise_on_failure=False,
            )
            for node_name in result.failed_hosts:
                progress(f"  could not stop services on {node_name}; deleting it anyway")
        if cluster.reserved_ip:
            info = ReservedIpInfo(cluster.reserved_ip.address, cluster.reserved_ip.provider_id)
            if provider.reserved_ip_mode == "api":
                provider.detach_reserved_ip(info)
            provider.release_reserved_ip(cluster.name, info)
            cluster.reserved_ip = None
            txn.save()
        for node in sorted(cluster.nodes.values(), key=lambda n: n.name):
            progress(f"Deleting node {node.name}")
            if node.provider_id:
                provider.delete_node(cluster.name, node.provider_id)
            del cluster.nodes[node.name]
            txn.save()
        # A node a crashed create made before state learned its id is still the cluster's.
        for leftover in provider.list_nodes(cluster.name):
            progress(f"Deleting node {leftover.name} (not recorded in state)")
            provider.delete_node(cluster.name, leftover.provider_id)
        provider.delete_network(cluster.name)
        for line in certificates.revoke_all(layout, cluster):
            progress(line)
        del txn.state.clusters[name]
        if txn.state.current_cluster == name:
            txn.state.current_cluster = None
        _remove_local_files(layout, name)
    return kept


def _delete_dns_records(ctx: RunContext, txn: Transaction, cluster: Cluster) -> None:
    """Delete every route's record; a failure leaves the cluster whole and names --keep-dns."""
    if not cluster.routes:
        return
    domain = ""
    try:
        dns = ctx.dns_provider(cluster)
        for domain in sorted(cluster.routes):
            ctx.progress(f"Deleting DNS record {domain}")
            dns.delete_a_record(domain)
            cluster.routes[domain].dns_record_id = None
            txn.save()  # a record deleted stays deleted in state if a later one fails
    except DyniaError as exc:
        record = f"DNS record {domain}" if domain else "the DNS records"
        retry = f"{exc.hint}, then re-run the same command" if exc.hint else "re-run the command"
        raise ProviderError(
            f"{record} of cluster {cluster.name} could not be deleted, so its nodes and "
            f"Reserved IP were left as they are: {exc.message}",
            hint=f"{retry}; or run `dynia cluster delete --name {cluster.name} --keep-dns` to "
            "delete the cluster now and its DNS records later by hand (their ids are printed)",
        ) from exc


def _records_left_behind(cluster: Cluster) -> list[str]:
    """One line per DNS record ``--keep-dns`` leaves: where it is, its id, why it must go."""
    address = cluster.reserved_ip.address if cluster.reserved_ip else None
    # The released address may go to someone else: a record left pointing at it must go soon.
    why = f"it points at {address}, which this delete releases; " if address else ""
    lines = []
    for domain in sorted(cluster.routes):
        record_id = cluster.routes[domain].dns_record_id
        known = f"record id {record_id}" if record_id else "record id not recorded"
        lines.append(f"{domain} ({cluster.dns_provider}, {known}): {why}delete it by hand")
    return lines


def _never_reached_a_provider(cluster: Cluster) -> bool:
    """A plan no create ever took to a provider: no step done, nothing recorded from one.

    `cluster create` saves the SSH key step before it first asks the provider and every node's
    name before it creates the node, so a plan without either has nothing at a provider (or a
    DNS provider) to clean up, and its delete must not need a token it never used.
    """
    return not (
        cluster.completed_steps
        or cluster.nodes
        or cluster.reserved_ip
        or cluster.network
        or cluster.routes
    )


def _forget_plan(ctx: RunContext, txn: Transaction, name: str) -> None:
    ctx.progress(f"Cluster {name} was only planned: nothing to delete at its provider")
    del txn.state.clusters[name]
    if txn.state.current_cluster == name:
        txn.state.current_cluster = None
    _remove_local_files(ctx.layout, name)


def _remove_local_files(layout: HomeLayout, name: str) -> None:
    shutil.rmtree(layout.deploy_config_dir(name), ignore_errors=True)
    shutil.rmtree(layout.cluster_dir(name), ignore_errors=True)
