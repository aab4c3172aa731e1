"""`dynia render`: state -> deploy-config/<cluster>/, validated by the real programs.

The renderer is pure; this operation decides what it needs beyond state (``RenderInputs``): the
provider's Reserved IP mode, the nodes' failover token, the DigitalOcean API addresses a test may
point elsewhere, and the cluster's certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from dynia.endpoints import PRIVATE, check_endpoint
from dynia.errors import ProviderError, RenderError, UsageError
from dynia.paths import HomeLayout
from dynia.providers import node_provider_traits
from dynia.providers.credentials import Secret, lookup_token
from dynia.render import variables
from dynia.render.renderer import (
    MANIFEST_SCHEMA,
    RENDER_MARKER,
    Renderer,
    RenderInputs,
    RenderResult,
    check_render_inputs,
)
from dynia.render.validate import ValidationOutcome, validate_deploy_config
from dynia.state.models import Cluster

FAILOVER_TOKEN_ENV = "DIGITALOCEAN_FAILOVER_TOKEN"
TOKEN_ENV = "DIGITALOCEAN_TOKEN"
ALLOW_MAIN_TOKEN_FLAG = "--allow-main-token-on-nodes"
FAILOVER_TOKEN_HOW = (
    "create a DigitalOcean token with custom scopes reserved_ip:read, reserved_ip:update, "
    "droplet:read and actions:read only (https://cloud.digitalocean.com/account/api/tokens) "
    f"and set {FAILOVER_TOKEN_ENV} to it (environment or credentials file)"
)
FAILOVER_TOKEN_SCOPES = f"the nodes' failover token: {FAILOVER_TOKEN_HOW}"
# Where the notify-master script talks to DigitalOcean; both overridable for a test API.
DIGITALOCEAN_API_URL_ENV = "DIGITALOCEAN_API_URL"
DIGITALOCEAN_METADATA_URL_ENV = "DIGITALOCEAN_METADATA_URL"


@dataclass
class RenderReport:
    result: RenderResult
    validations: list[ValidationOutcome]


def render_cluster(
    layout: HomeLayout, cluster: Cluster, output: Path | None = None, validate: bool = True
) -> RenderReport:
    """Render and validate; a failed validation leaves the previous artifact in place.

    ``output`` (``render --output``) must be a folder a render may replace: see
    ``check_output_folder``. The default, deploy-config/<cluster>, always is.
    """
    target = (
        check_output_folder(layout, output) if output else layout.deploy_config_dir(cluster.name)
    )
    try:
        return _render_and_validate(layout, cluster, target, validate)
    except OSError as exc:  # a full disk, a read-only or pseudo file system (/proc)
        raise RenderError(
            f"cannot write the rendered files into {target}: {exc.strerror or exc}",
            hint=f"check free space and permissions in {target.parent}, or choose another "
            "folder with --output; the previous folder is unchanged",
        ) from exc


def _render_and_validate(
    layout: HomeLayout, cluster: Cluster, target: Path, validate: bool
) -> RenderReport:
    renderer = Renderer(layout)
    inputs = render_inputs(layout, cluster)
    validations: list[ValidationOutcome] = []
    if validate:
        # Validate a scratch render first so a config the programs refuse never replaces
        # the artifact that sync, drift-check and operators read.
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.validate-", dir=target.parent))
        try:
            validations = validate_deploy_config(
                renderer.render(cluster, scratch, inputs=inputs).directory
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return RenderReport(renderer.render(cluster, target, inputs=inputs), validations)


def rendered_manifest_schema(layout: HomeLayout, cluster: Cluster) -> int | None:
    """The manifest schema of the cluster's deploy-config; None when there is none to read."""
    try:
        manifest = json.loads(
            (layout.deploy_config_dir(cluster.name) / "metadata.json").read_text()
        )
    except (OSError, ValueError):
        return None
    schema = manifest.get("schema") if isinstance(manifest, dict) else None
    return schema if isinstance(schema, int) else None


def is_current(layout: HomeLayout, cluster: Cluster) -> bool:
    """Whether deploy-config exists and was rendered with this version's manifest schema.

    The roles read each file's check and each component's reload order from the manifest; a
    folder an older Dynia rendered has neither, so it is rendered again before it is used.
    """
    return rendered_manifest_schema(layout, cluster) == MANIFEST_SCHEMA


def render_inputs(layout: HomeLayout, cluster: Cluster) -> RenderInputs:
    """What the render of ``cluster`` needs besides state; RenderError before anything is written.

    The cluster's own values are checked first, so a bad value is reported as such even where a
    token is missing too.
    """
    check_render_inputs(cluster, layout)
    mode = node_provider_traits(cluster.node_provider).reserved_ip_mode
    cert = layout.tls_dir(cluster.name) / "cluster.pem"
    inputs = RenderInputs(
        reserved_ip_mode=mode, tls_certificate=cert.read_bytes() if cert.is_file() else None
    )
    # Only a cluster whose nodes move the Reserved IP by API ships the script and its token.
    if mode != "api" or cluster.reserved_ip is None or not cluster.nodes:
        return inputs
    token = node_token(cluster)
    return replace(
        inputs,
        failover_token_file=None if token is None else token.reveal().encode() + b"\n",
        digitalocean_api_url=_endpoint(
            DIGITALOCEAN_API_URL_ENV, variables.DEFAULT_DIGITALOCEAN_API_URL
        ),
        digitalocean_metadata_url=_endpoint(
            DIGITALOCEAN_METADATA_URL_ENV, variables.DEFAULT_DIGITALOCEAN_METADATA_URL
        ),
    )


def _endpoint(name: str, default: str) -> str:
    """The URL in environment variable ``name``, or ``default``; it goes into a script root runs:
    a plain URL only, https unless the host is local."""
    return check_endpoint(name, os.environ.get(name) or default, PRIVATE)


def _optional_token(name: str) -> Secret | None:
    """The token, or None when it is set nowhere (a broken credentials file still raises)."""
    try:
        return lookup_token(name, scopes_hint=FAILOVER_TOKEN_SCOPES)
    except ProviderError as exc:
        if exc.message.startswith(f"no {name} found"):
            return None
        raise


def node_token(cluster: Cluster) -> Secret | None:
    """The token the nodes of an API-mode cluster use to move the Reserved IP.

    The narrow failover token when one is set. The main token (which can delete every droplet
    of the account) only when the operator accepted it for this cluster
    (``settings.allow_main_credential_on_nodes``); then None when no token is at hand at all (an
    offline render: the file stays out of the manifest and the nodes keep theirs). Otherwise
    RenderError, before anything is written.
    """
    return check_node_token(cluster.name, cluster.settings.allow_main_credential_on_nodes)


def check_node_token(cluster_name: str, allow_main_token: bool) -> Secret | None:
    """``node_token`` for a cluster that may not be in state yet (create checks it first)."""
    failover = _optional_token(FAILOVER_TOKEN_ENV)
    main = _optional_token(TOKEN_ENV)
    if failover is not None and (failover != main or allow_main_token):
        return failover
    if allow_main_token:
        return main
    problem = (
        f"{FAILOVER_TOKEN_ENV} holds the main {TOKEN_ENV}"
        if failover is not None
        else f"no {FAILOVER_TOKEN_ENV} is set"
    )
    raise RenderError(
        f"refusing to render cluster {cluster_name!r}: {problem}. keepalived on the nodes "
        "needs a token to move the Reserved IP, and Dynia does not put the main token, which "
        "can delete every droplet of the account, on the nodes unless told to",
        hint=f"{FAILOVER_TOKEN_HOW}; or accept the main token on this cluster's nodes with "
        f"{ALLOW_MAIN_TOKEN_FLAG} on `dynia cluster create` or `dynia render` (remembered in "
        "state; `dynia render --no-allow-main-token-on-nodes` withdraws it)",
    )


def check_output_folder(layout: HomeLayout, output: Path) -> Path:
    """The absolute folder ``render --output`` may replace, or UsageError saying why not.

    A render swaps the whole folder, so whatever else it held is gone: only a new or empty
    folder, or one an earlier render wrote (it holds the marker file), is safe to give it.
    """
    try:
        target = output.expanduser().resolve()
        home = layout.root.expanduser().resolve()
        cwd = Path.cwd().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a vanished working folder
        raise _refuse(output, f"the path cannot be resolved ({exc})") from exc
    if target == home or home.is_relative_to(target):
        raise _refuse(target, f"it is or contains the dynia home {home} (state, keys, backups)")
    if target.is_relative_to(home) and not target.is_relative_to(home / "deploy-config"):
        raise _refuse(target, f"it is inside the dynia home {home}, outside deploy-config/")
    if cwd.is_relative_to(target):
        raise _refuse(target, "it is or contains the current folder")
    _check_replaceable(target)
    return target


def _check_replaceable(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise _refuse(target, "it is not a folder")
    try:
        empty = next(target.iterdir(), None) is None
    except OSError as exc:
        raise _refuse(target, f"it cannot be listed ({exc.strerror or exc})") from exc
    if not empty and not (target / RENDER_MARKER).is_file():
        raise _refuse(target, f"it holds files that no render wrote (no {RENDER_MARKER} in it)")


def _refuse(target: Path, reason: str) -> UsageError:
    return UsageError(
        f"refusing to render into {target}: {reason}; a render replaces the whole folder",
        hint="give --output a new or empty folder, or one an earlier `dynia render --output` "
        "wrote, e.g. --output /tmp/<cluster>-config",
    )
