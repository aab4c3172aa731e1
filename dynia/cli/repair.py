"""`dynia repair --check-only | --force`."""

from __future__ import annotations

import click

from dynia.cli.batch import batch_option
from dynia.cli.context_obj import AppContext
from dynia.cli.output import JSON_OPTION_HELP, emit_json
from dynia.operations import operate
from dynia.operations.rollout import parse_batch


@click.command("repair")
@click.option("--check-only", is_flag=True, help="Report what would change; change nothing.")
@click.option(
    "--force",
    is_flag=True,
    help="Re-render, resync, restart, re-attach the Reserved IP (or replace one that no longer "
    "exists on the account: the address then changes).",
)
@click.option("--json", "as_json", is_flag=True, help=JSON_OPTION_HELP + " (with --check-only)")
@batch_option
@click.pass_obj
def repair_command(
    app: AppContext, check_only: bool, force: bool, as_json: bool, batch_text: str
) -> None:
    """Report or fix drift and broken HA.

    \b
    Example:
      dynia repair --check-only
      dynia repair --force
      dynia repair --force --batch 2
    """
    if check_only == force:
        raise click.UsageError(
            "give exactly one of --check-only (report what would change) or --force (re-render, "
            "resync, restart, re-attach the Reserved IP, or replace it when it no longer exists)"
        )
    batch = parse_batch(batch_text)
    if check_only:
        plan = operate.plan_repair(app.run_context.without_live_progress())
        if as_json:
            emit_json({"actions": plan.actions, "drift": plan.drift.to_dict()})
        else:
            for action in plan.actions or ["nothing to repair"]:
                click.echo(f"- {action}")
        return
    report = operate.repair(app.run_context, batch)
    if report.reserved_ip_change is not None:
        for line in report.reserved_ip_change.summary():
            click.echo(line)
    click.echo("Repaired." if report.clean else "Repaired, but drift remains; see drift-check.")
