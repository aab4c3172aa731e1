"""`dynia cluster delete`: DNS records, services, the Reserved IP, nodes, then the state."""

from __future__ import annotations

import shutil

from dynia.operations import certificates, rollout
from dynia.operations.clusters import get_cluster
from dynia.operations.run_context import RunContext
from dynia.paths import HomeLayout
from dynia.providers import dns_provider_for
from dynia.providers.base import ReservedIpInfo


def delete_cluster(ctx: RunContext, name: str, purge_volumes: bool) -> None:
    """Unbind routes (DNS), stop services, release the Reserved IP, delete nodes, forget it.

    ``name`` is the cluster to delete, as the operator confirmed it.
    """
    layout, progress = ctx.layout, ctx.progress
    with ctx.store.transaction("dynia cluster delete") as txn:
        cluster = get_cluster(txn.state, name)
        if cluster.routes:
            dns = dns_provider_for(cluster, layout)
            for domain in sorted(cluster.routes):
                progress(f"Deleting DNS record {domain}")
                dns.delete_a_record(domain)
                cluster.routes[domain].dns_record_id = None
            txn.save()
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


def _remove_local_files(layout: HomeLayout, name: str) -> None:
    shutil.rmtree(layout.deploy_config_dir(name), ignore_errors=True)
    shutil.rmtree(layout.cluster_dir(name), ignore_errors=True)
