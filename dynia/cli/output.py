"""Small helpers every command uses to print: JSON for scripts, lines for people."""

from __future__ import annotations

import json
from typing import Any

import click

from dynia.cli.context_obj import AppContext
from dynia.state import LockHolder, StateStore

JSON_OPTION_HELP = "Print one JSON document (stable keys) instead of text."


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def store_of(app: AppContext) -> StateStore:
    """The state store of the command's RunContext."""
    return app.run_context.store


def waiting_for_lock(holder: LockHolder | None) -> None:
    """While another command holds the state lock, say who is being waited for."""
    who = holder.describe() if holder else "another dynia command"
    progress_line(f"Waiting for the state lock held by {who} ...")


def progress_line(message: str) -> None:
    """Progress for long work goes to stderr, so stdout stays clean for --json."""
    click.echo(message, err=True)


def warn(message: str) -> None:
    click.secho(f"Warning: {message}", fg="yellow", err=True)


def event_sink() -> object | None:
    """A live per-node progress printer for playbook runs."""
    from dynia.cli.progress import ProgressPrinter

    ctx = click.get_current_context()
    printer = ProgressPrinter(color=ctx.color)
    # Closed when the command ends, also on error: the error message gets a line of its own.
    ctx.call_on_close(printer.close)
    return printer
