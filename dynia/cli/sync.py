"""`dynia sync`."""

from __future__ import annotations

import click

from dynia.cli.context_obj import AppContext
from dynia.operations import operate


@click.command("sync")
@click.pass_obj
def sync_command(app: AppContext) -> None:
    """Roll deploy-config/ out to the nodes, one at a time, health-gated.

    Applies deploy-config/ as `dynia render` left it. Per node: compare remote hashes with
    metadata.json, drain it, copy only changed files, reload or restart only the affected
    components, health-check, put it back. A failed check restores that node and stops the
    roll. Nodes still differing afterwards are marked out-of-sync.

    Example: dynia sync
    """
    operate.sync(app.run_context)
    click.echo("All nodes match deploy-config.")
