"""Home-wide defaults (config.json): which providers a new cluster uses when flags are absent."""

from __future__ import annotations

import json
from dataclasses import dataclass

from dynia.errors import StateError
from dynia.paths import HomeLayout


@dataclass(frozen=True)
class Defaults:
    node_provider: str = "local"
    dns_provider: str = "local"
    region: str = "local"
    size: str = "small"


def load_defaults(layout: HomeLayout) -> Defaults:
    path = layout.config_file
    if not path.exists():
        return Defaults()
    try:
        data = json.loads(path.read_text())
        return Defaults(**{k: v for k, v in data.items() if k in Defaults.__dataclass_fields__})
    except (ValueError, TypeError) as exc:
        raise StateError(
            f"{path} is not valid: {exc}", hint="fix or delete the file (it only holds defaults)"
        ) from exc
