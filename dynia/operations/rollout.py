"""Render, then roll deploy-config out through the playbooks: the loop every change goes through."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from dynia.errors import DriftError, LeftBehindError, RunnerError, UsageError
from dynia.operations.deploy_config import render_cluster
from dynia.operations.run_context import RunContext
from dynia.runner import PlaybookResult
from dynia.state.models import NODE_OUT_OF_SYNC, NODE_READY, Cluster, Service


@dataclass(frozen=True)
class BatchSize:
    """How many nodes a roll changes at once: a count, or a percentage of the nodes.

    The text ``--batch`` takes: ``N`` or ``P%``; see :func:`parse_batch`. One node at a time
    (the default) is what the specification requires.
    """

    count: int = 1
    percent: int | None = None

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)

    def nodes(self, node_count: int) -> int:
        """The nodes of one batch on a cluster of ``node_count`` (a percentage rounds down)."""
        if self.percent is None:
            return self.count
        return max(1, math.floor(node_count * self.percent / 100))


ONE_AT_A_TIME = BatchSize()
_BATCH_RE = re.compile(r"(?P<number>[+-]?[0-9]+)\s*(?P<percent>%?)")
_BATCH_HINT = (
    "give a number of nodes (--batch 2) or a percentage of them (--batch 25%); "
    "the default, 1, rolls one node at a time"
)


def parse_batch(text: str) -> BatchSize:
    """``--batch`` as typed: ``N`` (N >= 1) or ``P%`` (1 <= P <= 99); anything else is refused."""
    shown = _shown_batch(text)
    match = _BATCH_RE.fullmatch(text.strip())
    if not match:
        raise UsageError(
            f"--batch must be a number of nodes or a percentage, got {shown}", _BATCH_HINT
        )
    digits = match["number"].lstrip("+-").lstrip("0") or "0"
    # int() refuses more than 4,300 digits; no cluster has a billion nodes, so a number that
    # long is out of range whatever it is, and is judged as such without being converted.
    number = int(digits) if len(digits) <= _BATCH_DIGITS else None
    if number is not None and match["number"].startswith("-"):
        number = -number
    if match["percent"]:
        if number is None or not 1 <= number <= 99:
            raise UsageError(
                f"--batch percentage must be between 1% and 99%, got {shown}", _BATCH_HINT
            )
        return BatchSize(percent=number)
    if match["number"].startswith("-") or number == 0:
        raise UsageError(f"--batch must be at least 1, got {shown}", _BATCH_HINT)
    if number is None:
        raise UsageError(
            f"--batch {shown} is more nodes than any cluster has",
            hint="give a batch smaller than the cluster's node count, or a percentage of "
            "its nodes (--batch 25%)",
        )
    return BatchSize(count=number)


# Digits of the largest --batch read as a number; a longer one is refused as too large.
_BATCH_DIGITS = 9


def _shown_batch(text: str) -> str:
    """``text`` for a message, cut short: a pasted wall of digits does not fill the terminal."""
    return repr(text) if len(text) <= 24 else f"{text[:12]!r}... ({len(text)} characters)"


def batch_plan(batch: BatchSize, node_count: int) -> list[int]:
    """Ansible's ``serial`` list for a roll of ``node_count`` nodes, ``batch`` at a time.

    The first batch is one node, a canary: a change that breaks it stops the roll with a single
    node touched. The nodes not in a batch keep serving, so at least ``node_count - batch``
    nodes, and never none, serve during the roll: a batch as large as the cluster is refused
    (one node at a time stays allowed on a one-node cluster, which cannot do better).
    """
    size = batch.nodes(node_count)
    if size == 1:
        return [1]
    if size >= node_count:
        raise UsageError(
            f"--batch {batch} is {size} of the cluster's {node_count} node(s): no node would be "
            "left serving while a batch changes",
            hint=f"use a batch of at most {node_count - 1} node(s), or a smaller percentage",
        )
    return [1, size]


def pace(plan: list[int]) -> str:
    """How a roll of this ``serial`` plan proceeds, for progress lines."""
    if plan == [1]:
        return "one node at a time"
    return f"a canary node first, then {plan[-1]} nodes at a time"


def batch_vars(batch: BatchSize, node_count: int) -> dict[str, Any]:
    """Extra vars of sync.yml for a roll in batches (none for one node at a time)."""
    plan = batch_plan(batch, node_count)
    return {} if plan == [1] else {"dynia_sync_serial": plan}


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


def render_and_sync(
    ctx: RunContext,
    cluster: Cluster,
    limit: str | None = None,
    batch: BatchSize = ONE_AT_A_TIME,
    states: dict[str, Any] | None = None,
) -> PlaybookResult:
    """Render (validated) and run the rolling, health-gated sync (``states``: server_states)."""
    render_cluster(ctx.layout, cluster)
    extra_vars = batch_vars(batch, len(cluster.nodes)) | (states or {})
    return run(ctx, cluster, "sync.yml", extra_vars=extra_vars, limit=limit)


def server_states(
    cluster: Cluster, targets: list[str], unanswered: dict[str, str]
) -> dict[str, Any]:
    """sync.yml's ``dynia_sync_server_states``: HAProxy states the roll sets at its end.

    A node left out goes to maint on every HAProxy of the roll: one that comes back without a
    restart (frozen, cut off) would otherwise pass its health check and serve its stale files.
    A node marked out-of-sync that this roll reaches goes back to ready once it is synced.
    """
    behind = [n for n in targets if cluster.nodes[n].status == NODE_OUT_OF_SYNC]
    states = dict.fromkeys(sorted(unanswered), "maint") | dict.fromkeys(behind, "ready")
    return {"dynia_sync_server_states": states} if states else {}


def render_and_sync_answering(
    ctx: RunContext, cluster: Cluster, names: Iterable[str] | None = None
) -> dict[str, str]:
    """render_and_sync on those of ``names`` (every node by default) that answer over SSH.

    Returns the nodes left out, with why, now marked out-of-sync; the caller ends with
    :func:`left_behind` once the rest of its work is done.
    """
    wanted = sorted(cluster.nodes if names is None else names)
    answering, unanswered = answering_nodes(ctx, cluster, wanted)
    everyone = names is None and not unanswered
    states = server_states(cluster, answering, unanswered)
    render_and_sync(ctx, cluster, limit=None if everyone else ",".join(answering), states=states)
    for name in unanswered:
        cluster.nodes[name].status = NODE_OUT_OF_SYNC
    return unanswered


def compare_nodes(
    ctx: RunContext, cluster: Cluster, unanswered: dict[str, str] | None = None
) -> DriftReport:
    """Read-only comparison of every node with deploy-config; the ``unanswered`` nodes, known
    not to answer, are reported without being waited on again."""
    limit = (
        ",".join(n for n in sorted(cluster.nodes) if n not in unanswered) if unanswered else None
    )
    result = run(ctx, cluster, "drift-check.yml", raise_on_failure=False, limit=limit)
    return drift_report(cluster, result, unanswered)


def compared_by_sync(
    cluster: Cluster, result: Any, unanswered: dict[str, str] | None = None
) -> DriftReport | None:
    """The sync's own comparisons, when it compared every node it ran on; None means
    drift-check must.

    Each node's last comparison counts: the one before the change when nothing changed, or the
    one the sync made of the changed files once they were in place. The ``unanswered`` nodes,
    left out of the run, are reported as unreachable.
    """
    every_node_compared = all(
        name in result.reports and name in result.hosts and result.hosts[name].ok
        for name in cluster.nodes
        if name not in (unanswered or {})
    )
    return drift_report(cluster, result, unanswered) if every_node_compared else None


def drift_report(
    cluster: Cluster, result: Any, unanswered: dict[str, str] | None = None
) -> DriftReport:
    """The drift a playbook's comparisons found, and every node it did not fully read.

    ``unanswered`` are the nodes left out of the run because they did not answer over SSH.
    """
    unanswered = unanswered or {}
    report = DriftReport(nodes=sorted(cluster.nodes))
    for node in report.nodes:
        # A node the playbook did not fully read is not known to match: report it, never pass it.
        host = result.hosts.get(node)
        if node in unanswered:
            detail = f"unreachable, left as it was: {unanswered[node]}"
            report.entries.append(DriftEntry(node, "*", None, None, detail))
        elif host is None or host.unreachable or not host.ok:
            problem = "unreachable" if host and host.unreachable else "not checked"
            if host and host.failures:  # why: ssh's "No route to host", a timeout, a task's error
                problem += f": {host.failures[-1]}"
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


def _sync_past_lost_nodes(
    ctx: RunContext,
    cluster: Cluster,
    targets: list[str],
    unanswered: dict[str, str],
    batch: BatchSize,
) -> PlaybookResult:
    """sync.yml on ``targets``; a node that dies before the roll changed anything on it is left
    out like one that did not answer at the start (added to ``unanswered``).

    The serial roll stops at such a node, so the roll is run again without it: the nodes it
    already synced are no-ops now, the ones after it get their turn. A node that stops
    answering once its change began fails the roll as any failure does.
    """
    while True:
        limit = ",".join(targets) if unanswered else None
        extra_vars = batch_vars(batch, len(targets)) | server_states(cluster, targets, unanswered)
        try:
            return run(ctx, cluster, "sync.yml", extra_vars=extra_vars, limit=limit)
        except RunnerError as error:
            lost = _lost_before_any_change(getattr(error, "result", None))
            if not lost or not set(targets) - set(lost):
                raise
        for name in lost:
            unanswered[name] = "it stopped answering before the roll reached it"
            ctx.progress(
                f"{name} stopped answering before the roll reached it: going on without it"
            )
        targets = [name for name in targets if name not in lost]


def _lost_before_any_change(result: PlaybookResult | None) -> list[str]:
    """The failed nodes of a run when every one was unreachable and none was changed; else []."""
    if result is None or not result.failed_hosts:
        return []
    failed = [result.hosts[name] for name in result.failed_hosts]
    if all(host.unreachable and not host.changed for host in failed):
        return result.failed_hosts
    return []


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
    batch: BatchSize = ONE_AT_A_TIME,
    ship: Sequence[Service] = (),
) -> DriftReport:
    """Sync and verify: a node whose hashes still differ is marked out-of-sync.

    The sync's own comparisons are the verification; drift-check runs only when the sync did
    not compare every node. ``batch`` nodes change at once (a one-node canary first). A node
    that does not answer over SSH is left out of the roll and marked out-of-sync: the others
    are synced, then DriftError says which nodes were left behind. The images of ``ship`` are
    copied first to the nodes that answered (see :func:`ship_images`).
    """
    targets, unanswered = answering_nodes(ctx, cluster, cluster.nodes)
    ship_images(ctx, cluster, targets, ship)
    if render:
        render_cluster(ctx.layout, cluster)
    result = _sync_past_lost_nodes(ctx, cluster, targets, unanswered, batch)
    report = compared_by_sync(cluster, result, unanswered) or compare_nodes(ctx, cluster)
    drifted = mark_sync_outcome(cluster, report)
    if persist:
        persist()
    if unanswered:
        raise left_behind(unanswered, also_drifted=[n for n in drifted if n not in unanswered])
    if drifted:
        raise DriftError(
            f"nodes still differ from deploy-config after sync: {', '.join(drifted)} "
            "(marked out-of-sync)",
            hint="run `dynia repair --force` to re-render and resync them",
        )
    return report


# Nodes asked at the same time whether they answer: a cluster's worth at once on any real size.
_MAX_PARALLEL_ASKS = 16


def answering_nodes(
    ctx: RunContext, cluster: Cluster, names: Iterable[str]
) -> tuple[list[str], dict[str, str]]:
    """Of ``names``, the nodes that run a command over SSH, and why each other one does not.

    A roll goes on without a node that is down, frozen or cut off: waiting for it would hold
    every deploy hostage to one dead machine, and the roll stops at the first node it cannot
    reach. Raises RunnerError when no node answers: there is nothing to roll out to.
    """
    nodes = [cluster.nodes[name] for name in sorted(names)]
    if not nodes:
        return [], {}
    with ThreadPoolExecutor(max_workers=min(len(nodes), _MAX_PARALLEL_ASKS)) as pool:
        problems = list(
            pool.map(lambda node: ctx.probe.ssh_problem(ctx.layout, cluster, node), nodes)
        )
    unanswered = {n.name: p for n, p in zip(nodes, problems, strict=True) if p is not None}
    answering = [n.name for n in nodes if n.name not in unanswered]
    for name, problem in unanswered.items():
        ctx.progress(f"{name} does not answer over SSH ({problem}): going on without it")
    if not answering:
        raise RunnerError(
            f"no node of {cluster.name} answers over SSH: "
            + "; ".join(f"{name}: {problem}" for name, problem in unanswered.items()),
            hint="check that the nodes are running (`dynia cluster show --health`) and that "
            "this machine reaches them, then run the command again",
        )
    return answering, unanswered


def left_behind(
    unanswered: dict[str, str], also_drifted: list[str] | None = None, done: str = ""
) -> LeftBehindError:
    """The error a roll ends with when nodes did not answer: the others run the change.

    ``done`` says what the command achieved all the same ("web2 joined").
    """
    names = ", ".join(sorted(unanswered))
    one = len(unanswered) == 1
    message = (
        f"{done + ', but ' if done else ''}{names} did not answer over SSH and kept "
        f"{'its' if one else 'their'} previous files (marked out-of-sync); every other node "
        "was rolled out"
    )
    if also_drifted:
        message += f", but {', '.join(also_drifted)} still differ from deploy-config"
    return LeftBehindError(
        message,
        hint=f"once {'it answers' if one else 'they answer'} again, run `dynia sync` (a node that "
        "restarts stays out of rotation until then); remove a node gone for good with "
        "`dynia cluster node remove NAME`",
    )


def ship_images(
    ctx: RunContext, cluster: Cluster, answering: list[str], services: Sequence[Service] = ()
) -> None:
    """Copy the images a roll needs onto the nodes it reaches (``answering``), before it starts.

    The images of ``services`` go to each of them. Every service's images also go to a node
    marked out-of-sync: it may have missed a deploy, and nodes have no registry to pull from.
    A sync of a cluster in sync looks at no node.
    """
    reached = {name: cluster.nodes[name] for name in answering}
    if services:
        names = ", ".join(service.name for service in services)
        ctx.progress(f"Copying images of {names} to nodes that lack them")
        ctx.images.ship(ctx.layout, replace(cluster, nodes=reached), list(services), ctx.progress)
    behind = {name: node for name, node in reached.items() if node.status == NODE_OUT_OF_SYNC}
    if behind and cluster.services:
        ctx.progress(f"Copying service images to {', '.join(sorted(behind))} if they lack them")
        every = list(cluster.services.values())
        ctx.images.ship(ctx.layout, replace(cluster, nodes=behind), every, ctx.progress)
