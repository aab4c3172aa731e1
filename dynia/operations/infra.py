"""The infra layer shared by create, node add/remove/activate and repair.

Every step checks ``completed_steps`` (or the record it would create) first and saves after
itself, so running it again is always safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dynia import naming, ssh
from dynia.errors import ProviderError, UsageError
from dynia.operations import certificates, host_keys, rollout
from dynia.operations.run_context import RunContext
from dynia.paths import HomeLayout
from dynia.providers import node_provider_traits
from dynia.providers.base import NodeProvider, NodeSpec, ReservedIpGoneError, ReservedIpInfo
from dynia.runner import PlaybookResult
from dynia.state import Transaction
from dynia.state.models import (
    BACKUP_PRIORITY,
    MASTER_PRIORITY,
    NODE_PROVISIONING,
    NODE_READY,
    STATUS_PLANNED,
    Cluster,
    Network,
    Node,
    ReservedIp,
)
from dynia.waiting import WaitTimeout, wait_until

STEP_KEYS = "ssh-keys"
STEP_NETWORK = "network"
STEP_NODES = "nodes"
STEP_RESERVED_IP = "reserved-ip"
STEP_TLS = "tls"
STEP_BOOTSTRAP = "bootstrap"
STEP_SYNC = "sync"
STEP_ATTACH = "reserved-ip-attached"
STEP_ROLLOUT_STARTED = "rollout-started"
# "reserved-ip-replaced:<old address>" from the moment a new Reserved IP replaces one the account
# lost until the routes' DNS records point at the new one: a repair cut short finishes the job.
STEP_RESERVED_IP_REPLACED = "reserved-ip-replaced"

# keepalived's lowest priority a node may run (0 means "leaving" in VRRP).
LOWEST_PRIORITY = 1
# The bound the design really has is keepalived's priority range: the MASTER runs MASTER_PRIORITY
# and every backup a priority of its own, from BACKUP_PRIORITY down to LOWEST_PRIORITY, which is
# the order backups take over in. Nothing else binds earlier: keepalived's unicast peers and
# HAProxy's servers have no count limit, a local cluster's /24 leaves 125 node addresses, and
# DigitalOcean's droplet limit is the account's own (NodeProvider.check_room checks it).
MAX_NODES = 1 + (BACKUP_PRIORITY - LOWEST_PRIORITY + 1)  # the MASTER + one backup per priority


def ensure_keys(layout: HomeLayout, txn: Transaction, cluster: Cluster) -> str:
    """The cluster's SSH key pair (made once); returns the public key line."""
    public = ssh.generate_key_pair(layout.ssh_private_key(cluster.name), f"dynia-{cluster.name}")
    if not cluster.step_done(STEP_KEYS):
        cluster.mark_step(STEP_KEYS)
        txn.save()
    return public


def write_known_hosts(layout: HomeLayout, cluster: Cluster) -> None:
    """Pin every node's host keys; nothing else is trusted when Ansible connects."""
    ssh.write_known_hosts(
        layout.known_hosts(cluster.name),
        {n.public_ip: n.host_keys for n in cluster.nodes.values() if n.host_keys},
    )


def check_node_count(count: int) -> None:
    """Refuse a cluster size the design cannot bear, saying which bound and what to do."""
    if count < 1:
        raise UsageError(
            f"--nodes must be at least 1, got {count}",
            hint="use 2 or more nodes for failover; 3 is the usual choice",
        )
    if count > MAX_NODES:
        raise UsageError(
            f"a cluster holds at most {MAX_NODES} nodes, not {count}: keepalived gives every "
            f"node a VRRP priority of its own (the MASTER {MASTER_PRIORITY}, the backups "
            f"{BACKUP_PRIORITY} down to {LOWEST_PRIORITY}), which leaves room for "
            f"{MAX_NODES - 1} backups",
            hint=f"keep this cluster at {MAX_NODES} nodes or fewer; for more servers, create a "
            "second cluster (it has its own Reserved IP and can serve the same services)",
        )


def next_priority(cluster: Cluster) -> int:
    if not cluster.nodes:
        return MASTER_PRIORITY
    backups = [n.priority for n in cluster.nodes.values() if n.priority < MASTER_PRIORITY]
    return min(backups, default=BACKUP_PRIORITY + 1) - 1


def plan_nodes(txn: Transaction, cluster: Cluster, count: int) -> list[Node]:
    """Choose and save names for nodes not yet created, so a re-run asks for the same ones.

    Removed nodes leave gaps in the backups' priorities: when the next one would fall below
    LOWEST_PRIORITY, the backups are numbered down from BACKUP_PRIORITY again first (the roll
    that follows carries the new priorities to every node).
    """
    check_node_count(count)
    new = count - len(cluster.nodes)
    master = cluster.master
    if master is not None and new > 0 and next_priority(cluster) - (new - 1) < LOWEST_PRIORITY:
        set_priorities(cluster, master.name)
    while len(cluster.nodes) < count:
        name = naming.new_node_name(set(cluster.nodes))
        cluster.nodes[name] = Node(
            name=name,
            provider_id="",
            public_ip="",
            private_ip="",
            priority=next_priority(cluster),
            status=NODE_PROVISIONING,
        )
    txn.save()
    return [n for n in cluster.nodes.values() if n.status == NODE_PROVISIONING]


def create_planned_nodes(
    ctx: RunContext,
    txn: Transaction,
    cluster: Cluster,
    provider: NodeProvider,
    public_key: str,
    created_status: str = NODE_READY,
) -> None:
    layout, progress = ctx.layout, ctx.progress
    pending = sorted(
        (n for n in cluster.nodes.values() if n.status == NODE_PROVISIONING), key=lambda n: n.name
    )
    if pending:  # the account's limits are checked before the first node is made
        provider.check_room(cluster.name, [n.name for n in pending])
    for index, node in enumerate(pending, start=1):
        progress(f"  node {index}/{len(pending)} {node.name}: creating")
        started = time.monotonic()
        made = provider.create_node(
            NodeSpec(
                cluster.name,
                node.name,
                cluster.region,
                cluster.size,
                public_key,
                image=cluster.image or "",
            )
        )
        node.provider_id = made.provider_id
        node.public_ip = made.public_ip
        node.private_ip = made.private_ip
        if node_provider_traits(cluster.node_provider).bootstrap_host_key:
            # A rotation cut short pinned the fresh key too: keep it, the node may present it.
            node.host_keys = list(dict.fromkeys([*made.host_keys, *node.host_keys]))
            write_known_hosts(layout, cluster)
            txn.save()
            host_keys.rotate_host_keys(layout, txn, cluster, node, progress)
        else:
            node.host_keys = list(made.host_keys)
        node.status = created_status
        write_known_hosts(layout, cluster)
        txn.save()
        progress(
            f"  node {index}/{len(pending)} {node.name}: ready at {node.public_ip} "
            f"({time.monotonic() - started:.1f}s)"
        )


def provision(
    ctx: RunContext, txn: Transaction, cluster: Cluster, provider: NodeProvider, count: int
) -> None:
    """Keys, network, nodes, Reserved IP and certificate: everything that exists before config."""
    progress = ctx.progress
    public_key = ensure_keys(ctx.layout, txn, cluster)
    if cluster.network is None:
        progress("Creating the cluster network")
        info = provider.ensure_network(cluster.name)
        cluster.network = Network(info.name, info.subnet, info.interface, info.gateway)
        cluster.mark_step(STEP_NETWORK)
        txn.save()
    progress(f"Provisioning {count} node(s) with the {provider.name} provider")
    plan_nodes(txn, cluster, count)
    create_planned_nodes(ctx, txn, cluster, provider, public_key)
    cluster.mark_step(STEP_NODES)
    forget_lost_reserved_ip(ctx, cluster, provider)
    if cluster.reserved_ip is None:
        # The provider returns a new address as soon as its create answered, without waiting
        # for its first assignment (attach_reserved_ip finishes that), and it is saved before
        # anything else runs: no later failure or Ctrl-C leaves an address state lacks.
        info = provider.allocate_reserved_ip(cluster.name, cluster.region)
        cluster.reserved_ip = ReservedIp(info.address, info.provider_id)
        cluster.mark_step(STEP_RESERVED_IP)
        txn.save()
        progress(f"Reserved IP {info.address} allocated")
    ensure_certificate(ctx.layout, txn, cluster)


def forget_lost_reserved_ip(ctx: RunContext, cluster: Cluster, provider: NodeProvider) -> None:
    """While a cluster is still being created, forget a Reserved IP its account lost.

    A create cut short after the allocation leaves the address in state; released in the
    control panel before the re-run, it would fail the attach at the end. Nothing outside
    state names it yet (no route has a DNS record, the nodes get it from the render that
    follows), so a new one is allocated in its place; a cluster past its plan keeps it, for
    `dynia repair --force`, which also updates the routes' records.
    """
    if cluster.reserved_ip is None or not _still_planned(cluster):
        return
    lost = lost_reserved_ip(cluster, provider)
    if lost is None:
        return
    ctx.progress(
        f"Reserved IP {lost} no longer exists on the {provider.name} account (released "
        "outside Dynia); allocating a new one in its place"
    )
    cluster.reserved_ip = None


def _still_planned(cluster: Cluster) -> bool:
    """The cluster is being created and no DNS record names its Reserved IP yet."""
    published = any(route.dns_record_id for route in cluster.routes.values())
    return cluster.status == STATUS_PLANNED and not published


def ensure_certificate(layout: HomeLayout, txn: Transaction, cluster: Cluster) -> None:
    """Issue the cluster certificate if it is missing, lacks a routed domain or has the wrong CA.

    The CA is the cluster's ``certificate_issuer`` (see ``services/certificates.py``).
    """
    if not certificates.needs_new_certificate(layout, cluster):
        return
    bundle = certificates.issue_certificate(layout, cluster)
    cluster.tls_fingerprint = bundle.fingerprint_sha256
    cluster.mark_step(STEP_TLS)
    txn.save()


def roll_out_infra(
    ctx: RunContext, txn: Transaction, cluster: Cluster, provider: NodeProvider
) -> None:
    """Render, bootstrap the nodes, roll the configs out and put the Reserved IP on the MASTER."""
    from dynia.operations.deploy_config import render_cluster

    # A rollout cut short may have copied a config whose reload handler never ran: the file then
    # matches, so a plain re-run would leave the component on its old config. Resumed, every
    # component is reloaded from the files on the node.
    resumed = cluster.step_done(STEP_ROLLOUT_STARTED)
    cluster.mark_step(STEP_ROLLOUT_STARTED)
    txn.save()
    ctx.progress("Rendering deploy-config")
    render_cluster(ctx.layout, cluster)
    ctx.progress("Preparing nodes (bootstrap)")
    rollout.run(ctx, cluster, "bootstrap.yml")
    cluster.mark_step(STEP_BOOTSTRAP)
    txn.save()
    ctx.progress(
        "Rolling sync, one node at a time" + (", reloading every component" if resumed else "")
    )
    force = {"dynia_sync_force": True} if resumed else None
    rollout.run(ctx, cluster, "sync.yml", extra_vars=force)
    cluster.mark_step(STEP_SYNC)
    txn.save()
    record_elected_master(ctx, txn, cluster)
    attach_reserved_ip(ctx, txn, cluster, provider)


def record_elected_master(ctx: RunContext, txn: Transaction, cluster: Cluster) -> None:
    """After keepalived (re)started on every node, make state's MASTER the node it elected.

    Without preemption the first node to start wins, whatever its priority; the new
    priorities roll out so the files on the nodes match state again.
    """
    if adopt_live_master(ctx, cluster, wait=15):
        txn.save()
        rollout.render_and_sync(ctx, cluster)


def attach_reserved_ip(
    ctx: RunContext, txn: Transaction, cluster: Cluster, provider: NodeProvider
) -> None:
    """Point the Reserved IP at the MASTER and check the cluster answers on it."""
    master = cluster.master
    assert master is not None and cluster.reserved_ip is not None
    if provider.reserved_ip_mode == "api":
        info = ReservedIpInfo(cluster.reserved_ip.address, cluster.reserved_ip.provider_id)
        try:
            provider.attach_reserved_ip(info, master.provider_id)
        except ReservedIpGoneError as error:
            # The provider says what it was doing; the operator needs the way out.
            raise _gone_while_attaching(cluster, info.address, provider.name) from error
    cluster.reserved_ip.attached_to = master.name
    ctx.probe.wait_for_reserved_ip(cluster)
    cluster.mark_step(STEP_ATTACH)
    txn.save()
    ctx.progress(f"Reserved IP {cluster.reserved_ip.address} answers; MASTER is {master.name}")


def _gone_while_attaching(cluster: Cluster, address: str, provider: str) -> ReservedIpGoneError:
    """repair refuses a cluster still being created; there, a re-run of its create replaces
    the address (``forget_lost_reserved_ip``)."""
    if not _still_planned(cluster):
        return reserved_ip_gone(address, provider)
    return ReservedIpGoneError(
        address,
        f"Reserved IP {address} no longer exists on the {provider} account (released outside "
        "Dynia)",
        hint="re-run the same `dynia cluster create` command: it allocates a new Reserved IP "
        "and finishes the cluster",
    )


def reserved_ip_gone(address: str, provider: str) -> ReservedIpGoneError:
    """The error a command that needs the Reserved IP stops with when the account lost it."""
    return ReservedIpGoneError(
        address,
        f"Reserved IP {address} no longer exists on the {provider} account (released "
        "outside Dynia)",
        hint="run `dynia repair --force`: it allocates a new Reserved IP, rolls it out to "
        "the nodes and points the routes' DNS records at it. The address changes: update "
        f"any DNS record or allow-list outside Dynia that names {address}",
    )


def lost_reserved_ip(cluster: Cluster, provider: NodeProvider) -> str | None:
    """The cluster's Reserved IP when the provider's account no longer has it, else None.

    Read-only: asks the provider, changes nothing.
    """
    rip = cluster.reserved_ip
    if rip is None or provider.reserved_ip_exists(ReservedIpInfo(rip.address, rip.provider_id)):
        return None
    return rip.address


@dataclass(frozen=True)
class ReservedIpChange:
    """A Reserved IP replaced by a new address; ``dns_records``: the domains now pointing at it."""

    old: str
    new: str
    dns_records: list[str]

    def summary(self) -> list[str]:
        """What the operator must know: the address changed, and what Dynia did not change."""
        lines = [
            f"Reserved IP changed: {self.old} → {self.new} (the old address no longer exists "
            "on the account)."
        ]
        if self.dns_records:
            lines.append(
                f"The DNS records of the routes now point at {self.new}: "
                f"{', '.join(self.dns_records)}."
            )
        # Dynia knows only its own routes' records; anything else naming the address is stale.
        lines.append(
            f"Point any other DNS record, allow-list or client that names {self.old} at {self.new}."
        )
        return lines


def replace_reserved_ip(
    ctx: RunContext,
    txn: Transaction,
    cluster: Cluster,
    provider: NodeProvider,
    answering: list[str],
    unanswered: dict[str, str],
) -> PlaybookResult:
    """Allocate a Reserved IP in place of one the account lost; roll it out to ``answering``.

    The nodes name the address in their files (HAProxy's internal sources, keepalived's VIP
    or the notify-master script), hence the re-render and the roll. Attaching it and the DNS
    records come after (``attach_reserved_ip``, ``point_dns_at_replaced_reserved_ip``).
    """
    allocate_replacement_reserved_ip(ctx, txn, cluster, provider)
    ctx.progress("Re-rendering deploy-config and rolling the new address out to the nodes")
    limit = ",".join(answering) if unanswered else None
    states = rollout.server_states(cluster, answering, unanswered)
    return rollout.render_and_sync(ctx, cluster, limit=limit, states=states)


def allocate_replacement_reserved_ip(
    ctx: RunContext, txn: Transaction, cluster: Cluster, provider: NodeProvider
) -> None:
    """Allocate a Reserved IP in place of one the account lost, and record it in state.

    Recorded the moment it exists, so a run cut short finds it in state instead of leaking
    it; the roll that carries it to the nodes is the caller's.
    """
    assert cluster.reserved_ip is not None
    old = cluster.reserved_ip.address
    info = provider.allocate_reserved_ip(cluster.name, cluster.region)
    if replaced_from(cluster) is None:  # an earlier, unfinished replacement keeps its old address
        cluster.mark_step(f"{STEP_RESERVED_IP_REPLACED}:{old}")
    cluster.reserved_ip = ReservedIp(info.address, info.provider_id)
    txn.save()
    ctx.progress(f"Reserved IP {info.address} allocated in {cluster.region} in place of {old}")


def replaced_from(cluster: Cluster) -> str | None:
    """The address a replacement whose DNS records have not followed yet replaced, or None."""
    prefix = f"{STEP_RESERVED_IP_REPLACED}:"
    steps = [step for step in cluster.completed_steps if step.startswith(prefix)]
    return steps[0].removeprefix(prefix) if steps else None


def point_dns_at_replaced_reserved_ip(
    ctx: RunContext, txn: Transaction, cluster: Cluster
) -> ReservedIpChange | None:
    """After a replacement, point the A record of every published route at the new address.

    None when no replacement awaits its DNS records. Routes without a published record stay
    unpublished (`dynia route bind` publishes them). A DNS failure leaves the replacement
    pending: `dynia repair --force` again updates the records still left.
    """
    old = replaced_from(cluster)
    if old is None:
        return None
    assert cluster.reserved_ip is not None
    new = cluster.reserved_ip.address
    published = sorted(d for d, route in cluster.routes.items() if route.dns_record_id)
    if published:
        dns = ctx.dns_provider(cluster)
        for domain in published:
            ctx.progress(f"DNS: {domain} -> {new} (was {old})")
            try:
                record = dns.upsert_a_record(domain, new)
            except ProviderError as error:
                raise ProviderError(
                    f"{error.message}; the DNS record of {domain} may still point at {old}",
                    hint=f"{error.hint + '; then ' if error.hint else ''}run `dynia repair "
                    f"--force` again: it points the routes' records at {new}",
                ) from error
            cluster.routes[domain].dns_record_id = record.id
            txn.save()
    cluster.completed_steps.remove(f"{STEP_RESERVED_IP_REPLACED}:{old}")
    txn.save()
    return ReservedIpChange(old, new, published)


def adopt_live_master(ctx: RunContext, cluster: Cluster, wait: float = 0.0) -> bool:
    """Make the node keepalived elected the MASTER in state too.

    keepalived runs without preemption: a node that failed and came back stays BACKUP, so the
    node holding the address can differ from the one state ranks first. Handover, activation
    and the Reserved IP's attachment must start from the real holder. Returns whether the
    priorities changed (their keepalived files then need a sync). ``wait``: seconds to give
    keepalived to elect a MASTER when no node holds the address yet (keepalived just started).
    """
    try:
        holder = wait_until(
            lambda: live_master(ctx, cluster),
            timeout=wait,
            interval=0.5,
            what="keepalived to elect a MASTER",
        )
    except WaitTimeout:
        return False  # no node holds the address: nothing to record
    if holder is cluster.master:
        return False
    ctx.progress(f"{holder.name} holds the MASTER role (keepalived elected it); recording it")
    set_priorities(cluster, holder.name)
    return True


def live_master(ctx: RunContext, cluster: Cluster) -> Node | None:
    """The node that holds the MASTER's address now, asked over SSH; None when none answers."""
    for node in sorted(cluster.nodes.values(), key=lambda n: (-n.priority, n.name)):
        if ctx.probe.holds_master_address(ctx.layout, cluster, node):
            return node
    return None


def set_priorities(cluster: Cluster, master: str) -> None:
    """``master`` gets the MASTER priority; the others keep their order below it."""
    others = sorted(
        (n for n in cluster.nodes.values() if n.name != master),
        key=lambda n: (-n.priority, n.name),
    )
    cluster.nodes[master].priority = MASTER_PRIORITY
    for index, node in enumerate(others):
        node.priority = BACKUP_PRIORITY - index
