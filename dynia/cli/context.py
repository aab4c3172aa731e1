"""`dynia context current | use | clear`."""

from __future__ import annotations

import click

from dynia.cli.complete import cluster_names
from dynia.cli.context_obj import AppContext
from dynia.cli.output import JSON_OPTION_HELP, emit_json, store_of
from dynia.operations import context as context_service


@click.group("context")
def context_group() -> None:
    """Show, set or clear the current cluster.

    Commands that act on a cluster use --cluster NAME when given, else the current cluster.

    \b
    Example:
      dynia context use prod
      dynia context current
      dynia context clear
    """


@context_group.command("current")
@click.option("--json", "as_json", is_flag=True, help=JSON_OPTION_HELP)
@click.pass_obj
def current_command(app: AppContext, as_json: bool) -> None:
    """Print the current cluster (exit 1 when none is set).

    JSON: {"current_cluster": "<name>" | null}
    """
    current = context_service.current_context(store_of(app))
    if as_json:
        emit_json({"current_cluster": current})
    elif current:
        click.echo(current)
    else:
        click.echo("No current cluster. Set one with `dynia context use NAME`.", err=True)
    if current is None:
        raise SystemExit(1)


@context_group.command("use")
@click.argument("name", shell_complete=cluster_names)
@click.pass_obj
def use_command(app: AppContext, name: str) -> None:
    """Make NAME the current cluster.

    Example: dynia context use prod
    """
    context_service.use_context(store_of(app), name)
    click.echo(f"Current cluster: {name}")


@context_group.command("clear")
@click.pass_obj
def clear_command(app: AppContext) -> None:
    """Forget the current cluster; commands then need --cluster."""
    previous = context_service.clear_context(store_of(app))
    click.echo(f"Cleared current cluster ({previous})." if previous else "No current cluster.")
