"""What every command receives: the dynia home and the cluster the operator asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dynia.paths import HomeLayout, resolve_home


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
