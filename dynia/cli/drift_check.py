"""`dynia drift-check`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from dynia.cli.context_obj import AppContext
from dynia.cli.output import JSON_OPTION_HELP, emit_json
from dynia.operations import operate

if TYPE_CHECKING:
    from dynia.operations.rollout import DriftReport

# The path of a report entry that stands for a whole node the playbook could not read.
WHOLE_NODE = "*"


@click.command("drift-check")
@click.option("--json", "as_json", is_flag=True, help=JSON_OPTION_HELP)
@click.pass_obj
def drift_check_command(app: AppContext, as_json: bool) -> None:
    """Compare every node's files with deploy-config/; change nothing. Exit 8 on drift.

    A node that does not answer is reported as unreachable, with the reason, and also ends
    with exit 8: it is not known to be in sync.

    \b
    JSON: {"clean": bool, "nodes": [{"node", "in_sync", "drift": [{"path", "expected",
    "actual", "detail"}]}]}

    Example: dynia drift-check --json
    """
    report = operate.drift_check(app.run_context.without_live_progress())
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_report(report)
    if not report.clean:
        if not as_json:
            _print_advice(report)
        raise SystemExit(8)


def _print_report(report: DriftReport) -> None:
    for node in report.to_dict()["nodes"]:
        if node["in_sync"]:
            click.echo(f"✅ {node['node']}: matches deploy-config")
        for entry in node["drift"]:
            click.echo(_drift_line(node["node"], entry))


def _drift_line(node: str, entry: dict[str, Any]) -> str:
    if entry["path"] != WHOLE_NODE:
        return (
            f"⚠️  {node}: {entry['path']} expected {entry['expected']} "
            f"actual {entry['actual']} {entry['detail']}".rstrip()
        )
    # No file of the node was read: there is no expected/actual to show, only why.
    what = "unreachable" if _unreachable(entry["detail"]) else "could not be checked"
    _, _, because = entry["detail"].partition(": ")
    why = f" ({because})" if because else ""
    return f"❌ {node}: {what}{why}; its files were not compared"


def _unreachable(detail: str) -> bool:
    return detail.startswith("unreachable")


def _print_advice(report: DriftReport) -> None:
    """Advice that fits what was found: sync fixes drift, not a node that does not answer."""
    unread = [e for e in report.entries if e.path == WHOLE_NODE]
    unreachable = sorted(e.node for e in unread if _unreachable(e.detail))
    unchecked = sorted(e.node for e in unread if not _unreachable(e.detail))
    if any(e.path != WHOLE_NODE for e in report.entries):
        click.echo("Drift detected: run `dynia sync` (or `dynia repair --force`).", err=True)
    if unreachable:
        one = len(unreachable) == 1
        it, name = ("it", unreachable[0]) if one else ("each", "NAME")
        click.echo(
            f"Not checked, unreachable: {', '.join(unreachable)}. Bring {it} back (power, "
            f"network, SSH) or remove {it} (`dynia cluster node remove {name}`); run "
            f"`dynia sync` once {'it answers' if one else 'they answer'}.",
            err=True,
        )
    if unchecked:
        click.echo(
            f"Not checked: {', '.join(unchecked)}. Fix the cause shown above, then run "
            "`dynia drift-check` again.",
            err=True,
        )
