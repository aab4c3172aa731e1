"""`--batch` of the rolling commands (deploy, sync, repair)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

BATCH_OPTION_HELP = (
    "Nodes changed at once: a number (2) or a percentage of the nodes (25%). The first batch is "
    "always one node (a canary), and a batch never takes every node out of rotation."
)


def batch_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds ``--batch`` (text, parsed and checked by the operation's rollout.parse_batch)."""
    return click.option(
        "--batch", "batch_text", default="1", show_default=True, help=BATCH_OPTION_HELP
    )(command)
