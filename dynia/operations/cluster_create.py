"""`dynia cluster create`: planned -> infra-ready, resumable at every step.

Each step is recorded in the cluster's ``completed_steps`` and saved before the next begins, so a
command interrupted anywhere (Ctrl-C, crash, a failing node) re-runs from where it stopped and
never creates a second node or Reserved IP: node names are chosen and saved before the provider
is asked, and providers find existing resources by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dynia.endpoints import PRIVATE, check_endpoint
from dynia.errors import RenderError, UsageError
from dynia.operations import Progress, infra
from dynia.operations.certificates import check_certificate_options
from dynia.operations.config import check_image, check_slug
from dynia.operations.deploy_config import (
    DIGITALOCEAN_API_URL_ENV,
    DIGITALOCEAN_METADATA_URL_ENV,
    check_node_token,
)
from dynia.operations.run_context import RunContext
from dynia.providers import check_dns_provider, check_node_provider, node_provider_traits
from dynia.providers.base import NodeProvider
from dynia.render import variables
from dynia.state import Transaction
from dynia.state.models import (
    CERT_ISSUER_LOCAL,
    STATUS_INFRA_READY,
    STATUS_PLANNED,
    Cluster,
    ClusterSettings,
    validate_name,
)


@dataclass(frozen=True)
class CreateRequest:
    name: str
    nodes: int
    region: str
    size: str
    node_provider: str
    dns_provider: str
    plan_only: bool = False
    cert_issuer: str = CERT_ISSUER_LOCAL
    dns_proxied: bool = False
    allow_main_token_on_nodes: bool = False  # recorded when given; create never withdraws it
    image: str | None = None  # node image; None: the node provider's default


def resolve_image(node_provider: str, image: str | None) -> str:
    """The node image a cluster of ``node_provider`` boots: ``image``, checked, or the default."""
    if image is None:
        return node_provider_traits(node_provider).default_image
    return check_image(node_provider, image)


def untested_image_warning(node_provider: str, image: str) -> str | None:
    """A warning when no test covers ``image`` on ``node_provider``, else None."""
    traits = node_provider_traits(node_provider)
    if image in traits.tested_images:
        return None
    return (
        f"warning: no test covers {node_provider} nodes booting {image!r}; the tested "
        f"image{'s are' if len(traits.tested_images) > 1 else ' is'} "
        f"{', '.join(traits.tested_images)}"
    )


def _validate(request: CreateRequest) -> None:
    try:
        validate_name("cluster", request.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    infra.check_node_count(request.nodes)
    check_slug("--region", request.region)
    check_slug("--size", request.size)
    check_node_provider(request.node_provider)
    resolve_image(request.node_provider, request.image)
    check_dns_provider(request.dns_provider)
    check_certificate_options(request.dns_provider, request.cert_issuer, request.dns_proxied)


def _plan(txn: Transaction, request: CreateRequest) -> Cluster:
    """Record the planned cluster, or pick up the one a previous run left unfinished."""
    existing = txn.state.clusters.get(request.name)
    if existing is not None:
        mismatched = [
            flag
            for flag, mine, theirs in (
                ("--node-provider", request.node_provider, existing.node_provider),
                ("--dns-provider", request.dns_provider, existing.dns_provider),
                ("--region", request.region, existing.region),
                ("--size", request.size, existing.size),
                ("--nodes", request.nodes, existing.planned_nodes),
                (
                    "--cert-issuer",
                    request.cert_issuer,
                    existing.settings.certificate_issuer,
                ),
                ("--proxied", request.dns_proxied, existing.settings.dns_proxied),
                # A plan recorded before images were chosen takes the image of this run.
                ("--image", resolve_image(request.node_provider, request.image), existing.image),
            )
            if mine != theirs and not (flag == "--image" and theirs is None)
        ]
        if mismatched:
            raise UsageError(
                f"cluster {request.name!r} already exists with different {', '.join(mismatched)}",
                hint="re-run with the settings it was created with to resume it, choose another "
                "--name, or change nodes with `dynia cluster node add|remove`",
            )
        if request.allow_main_token_on_nodes:  # consent given again or now; never withdrawn here
            existing.settings.allow_main_credential_on_nodes = True
        if existing.image is None:
            existing.image = resolve_image(request.node_provider, request.image)
        return existing
    traits = node_provider_traits(request.node_provider)
    cluster = Cluster(
        name=request.name,
        node_provider=request.node_provider,
        dns_provider=request.dns_provider,
        region=request.region,
        size=request.size,
        planned_nodes=request.nodes,
        status=STATUS_PLANNED,
        image=resolve_image(request.node_provider, request.image),
        settings=ClusterSettings(
            vrrp_advert_int=traits.default_vrrp_advert_int,
            vrrp_down_timer_adverts=traits.default_vrrp_down_timer_adverts,
            certificate_issuer=request.cert_issuer,
            dns_proxied=request.dns_proxied,
            allow_main_credential_on_nodes=request.allow_main_token_on_nodes,
        ),
    )
    txn.state.clusters[cluster.name] = cluster
    txn.save()
    return cluster


def _check_node_token(request: CreateRequest, existing: Cluster | None) -> None:
    """Refuse before anything is recorded or created what the first render would refuse: a
    cluster whose nodes move the Reserved IP by API with no token the operator allows there."""
    if request.plan_only or node_provider_traits(request.node_provider).reserved_ip_mode != "api":
        return
    allowed = request.allow_main_token_on_nodes or (
        existing is not None and existing.settings.allow_main_credential_on_nodes
    )
    try:
        check_node_token(request.name, allowed)
    except RenderError as exc:
        message = exc.message.replace("refusing to render", "refusing to create")
        raise UsageError(message, exc.hint) from exc


def _ready_provider(ctx: RunContext, request: CreateRequest) -> NodeProvider | None:
    """The node provider that will build the cluster, or None for ``--plan-only``.

    Made before anything is recorded: making it resolves its credentials and checks its API
    address, so a missing token or a garbage URL refuses the command instead of leaving behind a
    planned cluster that a corrected re-run calls a conflict.
    """
    if request.plan_only:
        return None
    provider = ctx.node_providers(request.node_provider, ctx.layout)
    if node_provider_traits(request.node_provider).reserved_ip_mode == "api":
        # The first render writes these into the nodes' failover script; refuse them now too.
        for name, default in (
            (DIGITALOCEAN_API_URL_ENV, variables.DEFAULT_DIGITALOCEAN_API_URL),
            (DIGITALOCEAN_METADATA_URL_ENV, variables.DEFAULT_DIGITALOCEAN_METADATA_URL),
        ):
            check_endpoint(name, os.environ.get(name) or default, PRIVATE)
    return provider


def _prepare_image(provider: NodeProvider, cluster: Cluster, progress: Progress) -> None:
    """Let a provider that builds its node images (local) build this one now, with progress
    lines, rather than silently inside the first node's creation."""
    prepare = getattr(provider, "prepare_image", None)
    if prepare is not None and cluster.image:
        prepare(cluster.image, progress)


def create_cluster(ctx: RunContext, request: CreateRequest) -> Cluster:
    """Provision nodes, Reserved IP and the infra layer; set the context. No DNS yet."""
    _validate(request)
    existing = ctx.store.load().clusters.get(request.name)
    # A cluster already past its plan needs no provider: a re-run only says so.
    past_plan = existing is not None and existing.status != STATUS_PLANNED
    # Before the lock: a refusal creates nothing.
    provider = None if past_plan else _ready_provider(ctx, request)
    progress = ctx.progress
    with ctx.store.transaction("dynia cluster create") as txn:
        _check_node_token(request, txn.state.clusters.get(request.name))
        cluster = _plan(txn, request)
        warning = untested_image_warning(cluster.node_provider, cluster.image or "")
        if warning:
            progress(warning)
        if cluster.status != STATUS_PLANNED:
            progress(f"Cluster {cluster.name} is already {cluster.status}; nothing to do.")
            return cluster
        if request.plan_only:
            progress(f"Planned cluster {cluster.name} ({request.nodes} nodes); not provisioned.")
            return cluster
        provider = provider or _ready_provider(ctx, request)  # another run planned it meanwhile
        _prepare_image(provider, cluster, progress)
        infra.provision(ctx, txn, cluster, provider, request.nodes)
        infra.roll_out_infra(ctx, txn, cluster, provider)
        cluster.status = STATUS_INFRA_READY
        txn.state.current_cluster = cluster.name
        txn.save()
        progress(f"Cluster {cluster.name} is infra-ready; current cluster set.")
        return cluster
