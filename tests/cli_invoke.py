"""Run `dynia` in-process as the console script does, with a private DYNIA_HOME.

``dynia.cli.main.main`` (not the click group) is called, so DyniaError is mapped to its message
and exit code exactly as an operator sees it; anything else escaping is a traceback, re-raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from dynia.cli.main import main


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str


def run_dynia(home: Path, *args: str) -> Outcome:
    """``dynia <args>`` with DYNIA_HOME=home; exceptions other than SystemExit propagate."""
    runner = CliRunner()
    with runner.isolation(env={"DYNIA_HOME": str(home)}) as (out, err, _):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return Outcome(code, out.getvalue().decode(), err.getvalue().decode())
