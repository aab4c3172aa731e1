"""`dynia drift-check`."""

from __future__ import annotations

import click

from dynia.cli.context_obj import AppContext
from dynia.cli.output import JSON_OPTION_HELP, emit_json
from dynia.operations import operate


@click.command("drift-check")
@click.option("--json", "as_json", is_flag=True, help=JSON_OPTION_HELP)
@click.pass_obj
def drift_check_command(app: AppContext, as_json: bool) -> None:
    """Compare every node's files with deploy-config/; change nothing. Exit 8 on drift.

    \b
    JSON: {"clean": bool, "nodes": [{"node", "in_sync", "drift": [{"path", "expected",
    "actual", "detail"}]}]}

    Example: dynia drift-check --json
    """
    report = operate.drift_check(app.run_context.without_live_progress())
    if as_json:
        emit_json(report.to_dict())
    else:
        for node in report.to_dict()["nodes"]:
            if node["in_sync"]:
                click.echo(f"✅ {node['node']}: matches deploy-config")
            for entry in node["drift"]:
                click.echo(
                    f"⚠️  {node['node']}: {entry['path']} expected {entry['expected']} "
                    f"actual {entry['actual']} {entry['detail']}".rstrip()
                )
    if not report.clean:
        if not as_json:
            click.echo("Drift detected: run `dynia sync` (or `dynia repair --force`).", err=True)
        raise SystemExit(8)
