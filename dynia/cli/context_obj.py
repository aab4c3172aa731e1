"""What every command receives (click's obj): the dynia home, the cluster the operator asked
for, and the one RunContext the operations of the command share."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dynia.paths import HomeLayout, resolve_home

if TYPE_CHECKING:
    from dynia.operations.run_context import RunContext


@dataclass
class AppContext:
    home: Path
    cluster_option: str | None  # --cluster, if given

    @classmethod
    def from_options(cls, home: str | None, cluster_name: str | None) -> AppContext:
        return cls(home=resolve_home(home), cluster_option=cluster_name)

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(self.home)

    @cached_property
    def run_context(self) -> RunContext:
        """Built once, by the first use inside the command: its live progress display closes
        with that command, and `dynia --help` never loads the operations layer."""
        from dynia.cli.output import event_sink, progress_line, waiting_for_lock
        from dynia.operations.run_context import RunContext
        from dynia.runner import run_playbook
        from dynia.state import StateStore

        return RunContext(
            layout=self.layout,
            store=StateStore(self.home, on_wait=waiting_for_lock),
            runner=run_playbook,
            cluster_option=self.cluster_option,
            progress=progress_line,
            on_event=event_sink(),
        )
