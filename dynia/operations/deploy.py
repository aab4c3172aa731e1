"""`dynia deploy` and `dynia route bind|unbind`: services and their public names.

Order matters for safety: everything that can be checked without touching nodes (compose, images,
names, the DNS zone) is checked first, so bad input changes nothing. A rollout that fails its
health gate puts the previous service definition back in state and deploy-config, so the nodes,
the artifact and state agree on the version that is still serving. A rollout that passes its
health gates but leaves nodes differing from deploy-config keeps the new definition: the nodes
run it, and the ones that differ are marked out-of-sync for `dynia repair --force`.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dynia.errors import (
    DriftError,
    LeftBehindError,
    NotFoundError,
    RunnerError,
    UsageError,
    VerifyError,
)
from dynia.operations import certificates, infra, rollout
from dynia.operations.clusters import get_cluster, require_provisioned, resolve_cluster_name
from dynia.operations.deploy_config import render_cluster
from dynia.operations.images import ImageTransfer
from dynia.operations.rollout import ONE_AT_A_TIME, BatchSize
from dynia.operations.run_context import RunContext
from dynia.render.compose import inspect_compose, parse_compose
from dynia.runner import PlaybookResult
from dynia.state import Transaction
from dynia.state.models import (
    NODE_OUT_OF_SYNC,
    STATUS_SERVING,
    Cluster,
    Route,
    Service,
    State,
    validate_domain,
    validate_http_path,
    validate_name,
)

FIRST_INTERNAL_PORT = 20000
# The compose text is kept in state; a file anywhere near this size is not a compose file.
COMPOSE_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class DeployRequest:
    name: str
    compose_path: Path
    domain: str | None = None
    health_path: str = "/"
    container_port: int | None = None
    batch: BatchSize = ONE_AT_A_TIME


@dataclass
class DeployOutcome:
    service: str
    changed: bool
    warnings: list[str] = field(default_factory=list)


def _checked_name(kind: str, value: str) -> str:
    try:
        return validate_name(kind, value)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _checked_domain(value: str) -> str:
    try:
        return validate_domain(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _check_health_path(value: str) -> None:
    # HAProxy, Caddy and the nodes' health checks get the path pasted into their configs.
    try:
        validate_http_path("--health-path", value)
    except ValueError as exc:
        raise UsageError(
            f"--health-path must start with '/' and be a plain path, got {value!r}",
            hint=str(exc),
        ) from exc


def _ready_cluster(txn: Transaction, option: str | None) -> Cluster:
    cluster = get_cluster(txn.state, resolve_cluster_name(txn.state, option))
    require_provisioned(cluster)
    return cluster


def _assign_port(cluster: Cluster, name: str) -> int:
    if name in cluster.services:
        return cluster.services[name].internal_port
    taken = {s.internal_port for s in cluster.services.values()}
    port = FIRST_INTERNAL_PORT
    while port in taken:
        port += 1
    return port


def read_compose(path: Path) -> str:
    """The compose file's text, read with a bound: ``/dev/zero`` or a log file is refused."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(COMPOSE_MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(
            f"cannot read compose file {path}: {exc.strerror or exc}",
            hint="check the path and that the file is readable",
        ) from exc
    if len(raw) > COMPOSE_MAX_BYTES:
        raise UsageError(
            f"compose file {path} is larger than {COMPOSE_MAX_BYTES // 1024} KiB",
            hint="a compose file is a few KiB of YAML; check that --compose names the right file",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"compose file {path} is not UTF-8 text (byte {exc.start})",
            hint="check that --compose names the compose file, and save it as UTF-8",
        ) from exc
    # Universal newlines, as a text-mode read gives: the same file hashes the same everywhere.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _build_service(cluster: Cluster, request: DeployRequest, images: ImageTransfer) -> Service:
    text = read_compose(request.compose_path)
    document = parse_compose(text, str(request.compose_path))
    facts = inspect_compose(document, request.name, request.container_port)
    _check_health_path(request.health_path)
    return Service(
        name=request.name,
        compose=text,
        compose_hash=hashlib.sha256(text.encode()).hexdigest(),
        internal_port=_assign_port(cluster, request.name),
        container_port=facts.container_port,
        main_service=facts.main_service,
        health_path=request.health_path,
        image_ids=images.resolve(facts.images),
    )


class _RollWatch:
    """The context a change rolls out with: it notes every node a sync changed.

    A failure after sync.yml ran (saving state, comparing the nodes, anything) carries no
    playbook result, yet the nodes run the new definition; these are the ones to put back.
    """

    def __init__(self, ctx: RunContext) -> None:
        self._runner = ctx.runner
        self.changed: set[str] = set()
        self.ctx = replace(ctx, runner=self._run)

    def _run(self, project_dir: Path, playbook: str, **options: Any) -> PlaybookResult:
        try:
            result = self._runner(project_dir, playbook, **options)
        except RunnerError as error:
            self._note(playbook, getattr(error, "result", None))
            raise
        self._note(playbook, result)
        return result

    def _note(self, playbook: str, result: PlaybookResult | None) -> None:
        if playbook == "sync.yml" and result is not None:
            self.changed |= _changed_nodes(result)


def _changed_nodes(result: PlaybookResult | None) -> set[str]:
    hosts = result.hosts.items() if result else []
    return {name for name, host in hosts if host.ok and host.changed}


def _restore_previous(
    ctx: RunContext,
    txn: Transaction,
    previous: Cluster,
    failure: Exception,
    rolled: set[str] | None = None,
) -> None:
    """Put the previous definition back in state and deploy-config, and on any node it left.

    A health gate stops the roll on the failing node (which restores itself); nodes updated
    before it are synced back here, so every node serves the previous version again. So are
    the nodes ``rolled`` names: those a sync changed before a failure of another kind.
    """
    # The certificate file is not put back (a reissued one also covers the previous routes):
    # state goes on naming the one on disk, which the render below ships.
    previous.tls_fingerprint = txn.state.clusters[previous.name].tls_fingerprint
    txn.state.clusters[previous.name] = previous
    txn.save()
    render_cluster(ctx.layout, previous, validate=False)
    updated = sorted(_changed_nodes(getattr(failure, "result", None)) | (rolled or set()))
    if updated:
        ctx.progress(f"Rolling {', '.join(updated)} back to the previous version")
        rollout.run(ctx, previous, "sync.yml", limit=",".join(updated))
    if updated or isinstance(failure, RunnerError):
        ctx.progress("Rollout stopped; the previous version is serving on every node.")


def _apply_or_restore(
    ctx: RunContext,
    txn: Transaction,
    cluster: Cluster,
    previous: Cluster,
    change: Callable[[], None],
    *,
    what: str,
    then: str = "",
    watch: _RollWatch | None = None,
) -> LeftBehindError | None:
    """Run ``change`` (ship images, roll out); a failure restores ``previous`` everywhere.

    ``watch`` is the _RollWatch whose context ``change`` rolls out with: a failure of any kind
    after its sync then also puts the nodes that sync changed back, so that the nodes never
    run a definition state and deploy-config do not hold.

    Nodes that did not answer are no failure: the change is kept on the others, and the error
    that names those nodes is returned for the caller to raise once it has finished.

    Drift after a sync that passed every health gate is not such a failure: the nodes run the
    new definition, so state and deploy-config keep it, with the drifted nodes marked
    out-of-sync (the sync saved the marks). Rolling a healthy version back would be a second
    roll on a cluster already known to be off, and would leave the same drift behind.
    ``what`` names the change and ``then`` the step the operator still has to run, for the
    error that says so.
    """
    try:
        change()
    except LeftBehindError as left:
        # The nodes that answered run the change: it stands, and the caller finishes its work
        # (DNS) before it raises this.
        return LeftBehindError(f"rolled out {what}, but {left.message}", hint=left.hint)
    except DriftError as drift:
        raise _kept_despite_drift(ctx, cluster, what, then) from drift
    except Exception as failure:
        _restore_previous(ctx, txn, previous, failure, watch.changed if watch else None)
        raise
    return None


def _finish_left_behind(ctx: RunContext, left: LeftBehindError, warnings: list[str]) -> None:
    """Raise ``left`` once the command's work is done; its warnings are shown first."""
    for warning in warnings:
        ctx.progress(f"Warning: {warning}")
    raise left


def _kept_despite_drift(ctx: RunContext, cluster: Cluster, what: str, then: str) -> DriftError:
    # The sync saved the new definition with the marks; nothing here changes state.
    behind = sorted(n.name for n in cluster.nodes.values() if n.status == NODE_OUT_OF_SYNC)
    _revoke_replaced_certificates(ctx, cluster)  # revokes none while a node is behind; says so
    hint = "run `dynia repair --force` to re-render and resync them"
    return DriftError(
        f"rolled out {what} and every node passed its health checks, but nodes still differ "
        f"from deploy-config: {', '.join(behind)} (marked out-of-sync); state and deploy-config "
        "keep the new definition",
        hint=f"{hint}, then {then}" if then else hint,
    )


def deploy_service(ctx: RunContext, request: DeployRequest) -> DeployOutcome:
    _checked_name("service", request.name)
    domain = _checked_domain(request.domain) if request.domain else None
    layout, progress = ctx.layout, ctx.progress
    with ctx.store.transaction("dynia deploy") as txn:
        cluster = _ready_cluster(txn, ctx.cluster_option)
        plan = rollout.batch_plan(request.batch, len(cluster.nodes))
        if domain:
            # Before the certificate and the nodes: a refusal here leaves both as they are.
            _check_route_free(txn.state, cluster, domain, request.name)
        dns = ctx.dns_provider(cluster) if domain else None
        if domain and dns:
            dns.find_zone(domain)
        service = _build_service(cluster, request, ctx.images)
        previous = copy.deepcopy(cluster)
        cluster.services[service.name] = service
        cluster.status = STATUS_SERVING  # `previous` comes back if the rollout fails
        if domain:
            cluster.routes.setdefault(domain, Route(domain=domain, service=service.name))
        watch = _RollWatch(ctx)

        def change() -> None:
            if domain:
                infra.ensure_certificate(layout, txn, cluster)
            progress(f"Rolling out {service.name}, {rollout.pace(plan)}")
            rollout.sync_and_verify(
                watch.ctx, cluster, persist=txn.save, batch=request.batch, ship=[service]
            )

        publish = (
            f"`dynia route bind --domain {domain} --service {service.name}` to create its "
            "DNS record"
            if domain
            else ""
        )
        left = _apply_or_restore(
            ctx, txn, cluster, previous, change, what=service.name, then=publish, watch=watch
        )
        _revoke_replaced_certificates(ctx, cluster)  # revokes none while a node is behind
        txn.save()
        outcome = DeployOutcome(service=service.name, changed=True)
        if domain and dns:
            outcome.warnings += _bind_dns(ctx, txn, cluster, domain, dns)
        if left:
            _finish_left_behind(ctx, left, outcome.warnings)
        return outcome


def _revoke_replaced_certificates(ctx: RunContext, cluster: Cluster) -> None:
    """Revoke certificates a rollout replaced (Cloudflare Origin CA) that no node serves now."""
    for line in certificates.revoke_superseded(ctx.layout, cluster):
        ctx.progress(line)


def _check_route_free(state: State, cluster: Cluster, domain: str, service: str) -> None:
    """Refuse a domain another service or another cluster routes, before anything changes.

    State refuses a domain routed by two clusters only when it is saved, after the certificate
    was reissued to cover it and the nodes were given the route.
    """
    for name, other in sorted(state.clusters.items()):
        if name != cluster.name and domain in other.routes:
            raise UsageError(
                f"{domain} is already routed by cluster {name!r} (to its service "
                f"{other.routes[domain].service!r}); a domain is routed by one cluster only",
                hint=f"unbind it there first: `dynia --cluster {name} route unbind --domain "
                f"{domain}`, then bind it to cluster {cluster.name!r}",
            )
    route = cluster.routes.get(domain)
    if route and route.service != service:
        raise UsageError(
            f"{domain} is already bound to service {route.service!r}",
            hint=f"unbind it first: `dynia --cluster {cluster.name} route unbind --domain "
            f"{domain}`",
        )


def _bind_dns(
    ctx: RunContext, txn: Transaction, cluster: Cluster, domain: str, dns: object
) -> list[str]:
    """Create the A record to the Reserved IP, then verify DNS -> TLS -> health path."""
    assert cluster.reserved_ip is not None
    ctx.progress(f"DNS: {domain} -> {cluster.reserved_ip.address}")
    record = dns.upsert_a_record(domain, cluster.reserved_ip.address)  # type: ignore[attr-defined]
    cluster.routes[domain].dns_record_id = record.id
    txn.save()
    try:
        answer = ctx.probe.verify_route(ctx.layout, cluster, domain, dns)  # type: ignore[arg-type]
        ctx.progress(f"Verified: {answer}")
        return []
    except VerifyError as exc:
        return [f"{exc.message} (the service keeps running; {exc.hint or 'check DNS'})"]


def bind_route(
    ctx: RunContext, domain_value: str, service_name: str, https_only: bool | None = None
) -> list[str]:
    """Route the domain to the service; ``https_only`` None keeps the route's setting."""
    domain = _checked_domain(domain_value)
    with ctx.store.transaction("dynia route bind") as txn:
        cluster = _ready_cluster(txn, ctx.cluster_option)
        if service_name not in cluster.services:
            raise NotFoundError(
                f"cluster {cluster.name!r} has no service {service_name!r}",
                hint="deploy it first with `dynia deploy --name ... --compose ...`",
            )
        # Before the certificate and the nodes: a refusal here leaves both as they are.
        _check_route_free(txn.state, cluster, domain, service_name)
        dns = ctx.dns_provider(cluster)
        dns.find_zone(domain)
        previous = copy.deepcopy(cluster)
        route = cluster.routes.setdefault(domain, Route(domain=domain, service=service_name))
        if https_only is not None:
            route.https_only = https_only
        watch = _RollWatch(ctx)

        def change() -> None:
            infra.ensure_certificate(ctx.layout, txn, cluster)
            rollout.sync_and_verify(watch.ctx, cluster, persist=txn.save)

        again = f"`dynia route bind --domain {domain} --service {service_name}` again"
        left = _apply_or_restore(
            ctx, txn, cluster, previous, change, what=f"route {domain}", then=again, watch=watch
        )
        _revoke_replaced_certificates(ctx, cluster)
        warnings = _bind_dns(ctx, txn, cluster, domain, dns)
        if left:
            _finish_left_behind(ctx, left, warnings)
        return warnings


def unbind_route(ctx: RunContext, domain_value: str) -> None:
    domain = _checked_domain(domain_value)
    with ctx.store.transaction("dynia route unbind") as txn:
        cluster = _ready_cluster(txn, ctx.cluster_option)
        if domain not in cluster.routes:
            raise NotFoundError(
                f"{domain} is not bound in cluster {cluster.name!r}",
                hint=f"bound domains: {', '.join(sorted(cluster.routes)) or 'none'}",
            )
        dns = ctx.dns_provider(cluster)
        ctx.progress(f"Deleting DNS record {domain}")
        dns.delete_a_record(domain)
        cluster.routes[domain].dns_record_id = None
        txn.save()
        previous = copy.deepcopy(cluster)
        del cluster.routes[domain]
        watch = _RollWatch(ctx)

        def change() -> None:
            rollout.sync_and_verify(watch.ctx, cluster, persist=txn.save)

        what = f"the removal of route {domain}"
        left = _apply_or_restore(ctx, txn, cluster, previous, change, what=what, watch=watch)
        if left:
            raise left
