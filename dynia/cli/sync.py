"""`dynia sync`."""

from __future__ import annotations

import click

from dynia.cli.batch import batch_option
from dynia.cli.context_obj import AppContext
from dynia.operations import operate
from dynia.operations.rollout import parse_batch


@click.command("sync")
@batch_option
@click.pass_obj
def sync_command(app: AppContext, batch_text: str) -> None:
    """Roll deploy-config/ out to the nodes, one at a time, health-gated.

    Applies deploy-config/ as `dynia render` left it. Per node: compare remote hashes with
    metadata.json, drain it, copy only changed files, reload or restart only the affected
    components, health-check, put it back. A failed check restores that node and stops the
    roll. Nodes still differing afterwards are marked out-of-sync. --batch changes several nodes
    at once after a one-node canary.

    \b
    Example:
      dynia sync
      dynia sync --batch 2
    """
    operate.sync(app.run_context, parse_batch(batch_text))
    click.echo("All nodes match deploy-config.")
