"""Home-wide defaults (config.json): which providers a new cluster uses when flags are absent."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from itertools import combinations
from pathlib import Path
from typing import Any

from dynia.errors import StateError, UsageError
from dynia.files import atomic_write
from dynia.operations.certificates import check_certificate_options
from dynia.paths import HomeLayout
from dynia.providers import check_dns_provider, check_node_provider, node_provider_traits
from dynia.state import StateStore
from dynia.state.models import validate_domain

ZONES_KEY = "local_dns_zones"
# A region or size slug goes into provider API calls and rendered files; a newline or a space in
# it would only fail later, far from the flag that carried it.
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
# config.json holds a handful of keys; anything near this size is not a config file.
CONFIG_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Defaults:
    node_provider: str = "local"
    dns_provider: str = "local"
    region: str = "local"
    size: str = "small"
    cert_issuer: str = "local"  # "local" or "cloudflare-origin"
    dns_proxied: bool = False
    # Node image of new clusters on the default node provider ("": that provider's default).
    image: str = ""

    def image_for(self, node_provider: str) -> str | None:
        """The default image of a cluster on ``node_provider``; None: the provider's own."""
        return self.image if self.image and node_provider == self.node_provider else None


def check_slug(option: str, value: str) -> str:
    """A region or size: lower-case letters, digits and '-', as the providers name them."""
    if not _SLUG_RE.fullmatch(value):
        raise UsageError(
            f"invalid {option} {value!r}: use 1-64 of a-z, 0-9 and '-', starting with a "
            "letter or digit",
            hint=f"e.g. {option} fra1 (region) or s-1vcpu-2gb (size); no spaces or newlines",
        )
    return value


def check_image(node_provider: str, image: str) -> str:
    """``image`` if ``node_provider`` can boot it: one of its own images, else a slug."""
    only = node_provider_traits(node_provider).only_images
    if only is not None and image not in only:
        raise UsageError(
            f"unknown {node_provider} node image {image!r}",
            hint=f"choose one of: {', '.join(only)}",
        )
    return check_slug("--image", image)


def load_defaults(layout: HomeLayout) -> Defaults:
    """The defaults config.json records; StateError naming the problem if it is unusable."""
    data = _read_config(layout.config_file)
    return _defaults_from(data, layout.config_file)


def _read_config(path: Path) -> dict[str, Any]:
    """config.json as an object ({} if absent), or StateError saying what is wrong with it."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(CONFIG_MAX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):  # no config yet, or no home folder to hold one
        return {}
    except OSError as exc:  # a folder, no permission, ...
        raise _bad_config(path, exc.strerror or str(exc)) from exc
    if len(raw) > CONFIG_MAX_BYTES:
        raise _bad_config(path, f"it is larger than {CONFIG_MAX_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _bad_config(path, f"it is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _bad_config(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def _defaults_from(data: dict[str, Any], path: Path) -> Defaults:
    values: dict[str, Any] = {}
    for spec in fields(Defaults):
        if spec.name not in data:
            continue
        value = data[spec.name]
        wanted = bool if spec.name == "dns_proxied" else str
        if not isinstance(value, wanted):
            raise _bad_config(path, f"{spec.name!r} must be {wanted.__name__}, found {value!r}")
        values[spec.name] = value
    for key in ("region", "size"):
        if key in values:
            try:
                check_slug(f"--{key}", values[key])
            except UsageError as exc:
                raise _bad_config(path, f"{key!r}: {exc.message}") from exc
    _zones_of(data, path)
    return Defaults(**values)


def _zones_of(data: dict[str, Any], path: Path) -> list[str]:
    zones = data.get(ZONES_KEY, [])
    # A string is iterable too: "abc" would silently become the zones a, b and c.
    if not isinstance(zones, list) or not all(isinstance(z, str) for z in zones):
        raise _bad_config(path, f"{ZONES_KEY!r} must be a list of zone names, found {zones!r}")
    return zones


def _bad_config(path: Path, problem: str) -> StateError:
    return StateError(
        f"{path} is not valid: {problem}",
        hint='fix it (e.g. {"node_provider": "local", "local_dns_zones": ["test"]}) or delete '
        "it: it only holds defaults, and `dynia init` writes a new one",
    )


def save_defaults(
    layout: HomeLayout, store: StateStore, updates: dict[str, Any], zones: list[str]
) -> Defaults:
    """Record new defaults (and local DNS zones) in config.json; create the state if absent.

    Keys this function does not manage are kept, so hand-added settings survive.
    """
    _check_updates(updates)
    checked = [_check_zone(zone) for zone in zones]
    # Checked once before the lock as well, so a refused `init` creates no home, lock or state.
    _merged_config(layout, updates, checked)
    # Read, merge and write under the state lock: two `init` runs at once must not each write
    # their own change over the other's.
    with store.transaction("dynia init"):  # creates the home and an empty state if needed
        current, merged = _merged_config(layout, updates, checked)
        text = json.dumps(current, indent=2, sort_keys=True) + "\n"
        try:
            atomic_write(layout.config_file, text.encode(), 0o600)
        except OSError as exc:
            raise StateError(
                f"cannot write {layout.config_file}: {exc.strerror or exc}",
                hint=f"check free space and permissions in {layout.root}; "
                "the previous file is unchanged",
            ) from exc
    return merged


def _merged_config(
    layout: HomeLayout, updates: dict[str, Any], zones: list[str]
) -> tuple[dict[str, Any], Defaults]:
    """config.json's content with ``updates`` and ``zones`` merged in, and the defaults it
    holds then; UsageError when they would not fit together."""
    current = _read_config(layout.config_file)
    previous = _defaults_from(current, layout.config_file)
    if updates.get("node_provider", previous.node_provider) != previous.node_provider:
        # An image names a system of one provider: it does not follow a change of provider.
        updates = {"image": "", **updates}
    merged = replace(previous, **updates)
    if merged.image:
        check_image(merged.node_provider, merged.image)
    if set(_CERTIFICATE_FLAGS) & set(updates):
        _check_certificate_defaults(merged, updates, layout.config_file)
    current.update(updates)
    if zones:
        known = _zones_of(current, layout.config_file)
        current[ZONES_KEY] = sorted({*known, *zones})
    return current, merged


# The defaults that must fit together, and the `init` flag that sets each.
_CERTIFICATE_FLAGS = ("dns_provider", "cert_issuer", "dns_proxied")


def _flag(key: str, value: Any) -> str:
    if key == "dns_proxied":
        return "--proxied" if value else "--no-proxied"
    return f"--{key.replace('_', '-')} {value}"


def _check_certificate_defaults(merged: Defaults, updates: dict[str, Any], path: Path) -> None:
    """Refuse certificate defaults that do not fit together, blaming the saved ones if the
    options given would fit without them (the operator may not remember setting those)."""
    try:
        check_certificate_options(merged.dns_provider, merged.cert_issuer, merged.dns_proxied)
    except UsageError as exc:
        saved = _conflicting_saved_defaults(merged, updates)
        if not saved:
            raise
        given = " ".join(_flag(k, updates[k]) for k in _CERTIFICATE_FLAGS if k in updates)
        kept = " ".join(_flag(k, getattr(merged, k)) for k in saved)
        cleared = " ".join(_flag(k, getattr(Defaults(), k)) for k in saved)
        raise UsageError(
            f"{given} conflicts with the default{'s' if len(saved) > 1 else ''} saved in "
            f"{path}: {kept} ({exc.message})",
            hint=f"clear {'them' if len(saved) > 1 else 'it'} in the same command: "
            f"dynia init {given} {cleared}",
        ) from exc


def _conflicting_saved_defaults(merged: Defaults, updates: dict[str, Any]) -> list[str]:
    """The fewest saved (not given) certificate defaults whose reset makes ``merged`` valid;
    [] when the options given do not fit even without them."""
    blank = Defaults()
    saved = [
        key
        for key in _CERTIFICATE_FLAGS
        if key not in updates and getattr(merged, key) != getattr(blank, key)
    ]
    for size in range(1, len(saved) + 1):
        for keys in combinations(saved, size):
            reset = replace(merged, **{k: getattr(blank, k) for k in keys})
            try:
                check_certificate_options(reset.dns_provider, reset.cert_issuer, reset.dns_proxied)
            except UsageError:
                continue
            return list(keys)
    return []


def _check_updates(updates: dict[str, Any]) -> None:
    if "node_provider" in updates:
        check_node_provider(updates["node_provider"])
    if "dns_provider" in updates:
        check_dns_provider(updates["dns_provider"])
    for key in ("region", "size"):
        if key in updates:
            check_slug(f"--{key}", updates[key])


def _check_zone(zone: str) -> str:
    try:
        validate_domain(zone)
    except ValueError as exc:
        raise UsageError(str(exc).replace("domain", "zone", 1)) from exc
    return zone
