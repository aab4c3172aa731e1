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
@click.pass_context
def repair_command(
    ctx: click.Context, check_only: bool, force: bool, as_json: bool, batch_text: str
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
    _refuse_ignored_flags(ctx, check_only, as_json)
    app: AppContext = ctx.obj
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


def _refuse_ignored_flags(ctx: click.Context, check_only: bool, as_json: bool) -> None:
    """A flag the chosen mode would not use is refused: ignoring it would let the operator
    believe it took effect."""
    batch_given = ctx.get_parameter_source("batch_text") is not click.core.ParameterSource.DEFAULT
    if check_only and batch_given:
        raise click.UsageError(
            "--batch does not go with --check-only: --check-only only reports what would change "
            "and changes no node, --batch sets how many nodes --force changes at once; drop "
            "--batch, or use `dynia repair --force --batch N`"
        )
    if not check_only and as_json:
        raise click.UsageError(
            "--json does not go with --force: --json prints the --check-only report as one JSON "
            "document, --force repairs and prints progress lines; use "
            "`dynia repair --check-only --json` to see the plan as JSON"
        )
