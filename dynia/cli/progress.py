"""Live per-node progress of a playbook run: "node 2/3 misty-owl: <task> ... changed".

On a terminal the current task rewrites one status line and only changes and failures stay on
screen; elsewhere (CI logs, pipes) only changes and failures are printed, one plain line each.
"""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

from dynia.runner import ProgressEvent

_KEPT_STATUSES = ("changed", "failed", "unreachable")
_COLORS = {"changed": "\033[33m", "failed": "\033[31m", "unreachable": "\033[31m", "ok": "\033[32m"}
_RESET = "\033[0m"


def format_event(event: ProgressEvent, color: bool = False) -> str:
    status = event.status
    if color and status in _COLORS:
        status = f"{_COLORS[status]}{status}{_RESET}"
    return f"node {event.index}/{event.total} {event.host}: {event.task} ... {status}"


class ProgressPrinter:
    """Callable given to ``run_playbook(on_event=...)``; writes to stderr by default."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self._live = self._stream.isatty() if live is None else live
        self._pending = False  # a status line waiting to be overwritten

    def __call__(self, event: ProgressEvent) -> None:
        if self._live:
            self._show_live(event)
        elif event.status in _KEPT_STATUSES:
            self._stream.write(format_event(event) + "\n")
            self._stream.flush()

    def _show_live(self, event: ProgressEvent) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = format_event(event)
        if event.status in _KEPT_STATUSES:
            self._stream.write("\r\033[K" + format_event(event, color=True) + "\n")
            self._pending = False
        else:
            self._stream.write("\r\033[K" + line[:width])
            self._pending = True
        self._stream.flush()

    def close(self) -> None:
        """End a pending status line so the next output starts on its own line."""
        if self._pending:
            self._stream.write("\r\033[K")
            self._stream.flush()
            self._pending = False
