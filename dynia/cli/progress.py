"""Live per-node progress of a playbook run: "node 2/3 misty-owl: <task> ... changed".

On a terminal the current task rewrites one status line and only changes and failures stay on
screen, their status coloured unless NO_COLOR is set; elsewhere (CI logs, pipes) only changes and
failures are printed, one plain line each, with no escape codes at all.
"""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

import click

from dynia.runner import ProgressEvent

_KEPT_STATUSES = ("changed", "failed", "unreachable")
_COLORS = {"changed": "yellow", "failed": "red", "unreachable": "red", "ok": "green"}
# Carriage return + erase line: how the status line is rewritten; written only in live mode.
_CLEAR_LINE = "\r\033[K"


def format_event(event: ProgressEvent, color: bool = False) -> str:
    status = event.status
    if color and status in _COLORS:
        status = click.style(status, fg=_COLORS[status])
    return f"node {event.index}/{event.total} {event.host}: {event.task} ... {status}"


class ProgressPrinter:
    """Callable given to ``run_playbook(on_event=...)``; writes to stderr by default.

    ``live`` defaults to whether the stream is a terminal. ``color`` is click's choice: ``False``
    never colours (NO_COLOR), ``None`` colours the live status line only.
    """

    def __init__(
        self, stream: TextIO | None = None, live: bool | None = None, color: bool | None = None
    ) -> None:
        self._stream = stream or sys.stderr
        self._live = self._stream.isatty() if live is None else live
        self._color = self._live if color is None else color
        self._pending = False  # a status line waiting to be overwritten

    def __call__(self, event: ProgressEvent) -> None:
        if self._live:
            self._show_live(event)
        elif event.status in _KEPT_STATUSES:
            self._stream.write(format_event(event, color=self._color) + "\n")
            self._stream.flush()

    def _show_live(self, event: ProgressEvent) -> None:
        if event.status in _KEPT_STATUSES:
            self._stream.write(_CLEAR_LINE + format_event(event, color=self._color) + "\n")
            self._pending = False
        else:
            # Cut to the terminal's width: a wrapped line could not be rewritten in place.
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self._stream.write(_CLEAR_LINE + format_event(event)[:width])
            self._pending = True
        self._stream.flush()

    def close(self) -> None:
        """End a pending status line so the next output starts on its own line."""
        if self._pending:
            self._stream.write(_CLEAR_LINE)
            self._stream.flush()
            self._pending = False
