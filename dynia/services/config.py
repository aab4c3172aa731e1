"""Home-wide defaults (config.json): which providers a new cluster uses when flags are absent."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from dynia.errors import StateError, UsageError
from dynia.files import atomic_write
from dynia.paths import HomeLayout
from dynia.providers import check_dns_provider, check_node_provider
from dynia.services.certificates import check_certificate_options
from dynia.state import StateStore
from dynia.state.models import validate_domain


@dataclass(frozen=True)
class Defaults:
    node_provider: str = "local"
    dns_provider: str = "local"
    region: str = "local"
    size: str = "small"
    cert_issuer: str = "local"  # "local" or "cloudflare-origin"
    dns_proxied: bool = False


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


def save_defaults(
    layout: HomeLayout, store: StateStore, updates: dict[str, Any], zones: list[str]
) -> Defaults:
    """Record new defaults (and local DNS zones) in config.json; create the state if absent.

    Keys this function does not manage are kept, so hand-added settings survive.
    """
    if "node_provider" in updates:
        check_node_provider(updates["node_provider"])
    if "dns_provider" in updates:
        check_dns_provider(updates["dns_provider"])
    if {"dns_provider", "cert_issuer", "dns_proxied"} & set(updates):
        merged = replace(load_defaults(layout), **updates)
        check_certificate_options(merged.dns_provider, merged.cert_issuer, merged.dns_proxied)
    for zone in zones:
        try:
            validate_domain(zone)
        except ValueError as exc:
            raise UsageError(str(exc).replace("domain", "zone", 1)) from exc
    current: dict[str, Any] = {}
    if layout.config_file.exists():
        load_defaults(layout)  # refuses a broken file before anything is written
        current = json.loads(layout.config_file.read_text())
    current.update(updates)
    if zones:
        current["local_dns_zones"] = sorted({*current.get("local_dns_zones", []), *zones})
    with store.transaction("dynia init"):  # creates the home and an empty state if needed
        text = json.dumps(current, indent=2, sort_keys=True) + "\n"
        atomic_write(layout.config_file, text.encode(), 0o600)
    return load_defaults(layout)
