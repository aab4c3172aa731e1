"""`dynia render`."""

from __future__ import annotations

from pathlib import Path

import click

from dynia.cli.context_obj import AppContext
from dynia.cli.output import JSON_OPTION_HELP, emit_json, store_of
from dynia.operations.clusters import selected_cluster
from dynia.operations.deploy_config import render_cluster


@click.command("render")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to render into (default <home>/deploy-config/<cluster>).",
)
@click.option("--no-validate", is_flag=True, help="Skip validation by haproxy/caddy/keepalived.")
@click.option(
    "--allow-main-token-on-nodes/--no-allow-main-token-on-nodes",
    default=None,
    help="DigitalOcean: accept (or no longer accept) the main DIGITALOCEAN_TOKEN on the nodes "
    "when DIGITALOCEAN_FAILOVER_TOKEN is not set; remembered for the cluster.",
)
@click.option("--json", "as_json", is_flag=True, help=JSON_OPTION_HELP)
@click.pass_obj
def render_command(
    app: AppContext,
    output: Path | None,
    no_validate: bool,
    allow_main_token_on_nodes: bool | None,
    as_json: bool,
) -> None:
    """Render deploy-config/ from state and templates.

    Writes cluster-metadata.json, haproxy/, caddy/, keepalived/ (one file per node),
    services/<name>/docker-compose.yml and metadata.json (target path, mode, owner, SHA-256,
    component and nodes of every file), plus a ready-to-run Ansible project. Each config is
    checked by its own program when installed. Safe to run any time: the same state gives
    the same bytes, and a failed render leaves the previous folder.

    \b
    Example:
      dynia render
      dynia --cluster prod render --output /tmp/prod-config
    """
    # Under the state lock: a render never swaps deploy-config under a running sync.
    with store_of(app).transaction("dynia render") as txn:
        cluster = selected_cluster(txn.state, app.cluster_option)
        if allow_main_token_on_nodes is not None:
            # Saved with the transaction, so only when the render succeeds.
            cluster.settings.allow_main_credential_on_nodes = allow_main_token_on_nodes
        report = render_cluster(app.layout, cluster, output, validate=not no_validate)
    if as_json:
        emit_json(
            {
                "cluster": cluster.name,
                "directory": str(report.result.directory),
                "files": [f.manifest_entry() for f in report.result.files],
                "validated": [
                    {"source": v.source, "program": v.program, "skipped": v.skipped}
                    for v in report.validations
                ],
            }
        )
        return
    for entry in report.result.files:
        click.echo(f"  {entry.source} -> {entry.target}")
    checked = sorted({v.program for v in report.validations if not v.skipped})
    skipped = sorted({v.program for v in report.validations if v.skipped and v.program != "-"})
    click.echo(f"Rendered {len(report.result.files)} files into {report.result.directory}")
    if checked:
        click.echo(f"Validated with: {', '.join(checked)}")
    if skipped:
        click.echo(f"Not installed here, not validated: {', '.join(skipped)}", err=True)
