"""Colour only where it helps: on a terminal, and never when NO_COLOR is set (no-color.org)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dynia.cli.color import color_choice
from dynia.cli.main import cli, main
from dynia.cli.output import event_sink
from dynia.cli.progress import ProgressPrinter
from dynia.runner import ProgressEvent

SGR = re.compile(r"\x1b\[[0-9;]*m")  # a colour or style escape sequence
CHANGED = ProgressEvent(host="misty-owl", index=2, total=3, task="Copy files", status="changed")
FAILED = ProgressEvent(host="quiet-fox", index=3, total=3, task="Health", status="failed")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr is in an operator's shell."""

    def isatty(self) -> bool:
        return True


def _error_on_a_terminal(home: Path, no_color: str | None) -> str:
    """stderr of a failing command, run as if on a colour terminal (CliRunner color=True)."""
    env = {"DYNIA_HOME": str(home), "NO_COLOR": no_color}
    with CliRunner().isolation(env=env, color=True) as (_, err, _):
        with pytest.raises(SystemExit):
            main(["cluster", "show"])
        return err.getvalue().decode()


def test_errors_are_red_on_a_terminal(tmp_path: Path) -> None:
    stderr = _error_on_a_terminal(tmp_path, None)
    assert "\x1b[31mError: no cluster selected" in stderr


@pytest.mark.parametrize("value", ["1", "true", "0"])
def test_no_color_set_to_anything_drops_every_escape_code(tmp_path: Path, value: str) -> None:
    stderr = _error_on_a_terminal(tmp_path, value)
    assert "Error: no cluster selected" in stderr
    assert "\x1b" not in stderr


def test_an_empty_no_color_keeps_colour(tmp_path: Path) -> None:
    assert SGR.search(_error_on_a_terminal(tmp_path, ""))


def test_piped_output_has_no_escape_codes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"DYNIA_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "dynia.cli", "cluster", "show"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert "Error: no cluster selected" in done.stderr
    assert "\x1b" not in done.stderr + done.stdout


def test_progress_on_a_terminal_colours_changes_and_failures() -> None:
    terminal = Terminal()
    printer = ProgressPrinter(terminal)
    printer(CHANGED)
    printer(FAILED)
    assert click.style("changed", fg="yellow") in terminal.getvalue()
    assert click.style("failed", fg="red") in terminal.getvalue()


def test_progress_under_no_color_rewrites_its_line_without_colour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with click.Context(cli, color=color_choice()):  # as `dynia sync` runs it
        printer = event_sink()
        printer(CHANGED)
    lines = terminal.getvalue()
    assert "node 2/3 misty-owl: Copy files ... changed" in lines
    assert not SGR.search(lines)  # the line is still rewritten in place (erase-line only)
    assert "\r\x1b[K" in lines
