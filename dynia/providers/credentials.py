"""Provider API tokens: where they come from, and how they stay out of output.

Lookup order for a token (``DIGITALOCEAN_TOKEN``, ``CLOUDFLARE_API_TOKEN``):

1. the environment variable of that name;
2. the credentials file: ``$DYNIA_CREDENTIALS_FILE`` if set, else
   ``~/.config/dynia/credentials.json`` (``$XDG_CONFIG_HOME`` is honoured). It is a JSON object
   keyed by the same names, e.g. ``{"DIGITALOCEAN_TOKEN": "dop_v1_...",
   "CLOUDFLARE_API_TOKEN": "..."}``. It must be a regular file readable by its owner only
   (mode 0600 or 0400); a file others can read is refused rather than used.

The credentials file lives outside the dynia home on purpose: the home holds state, backups and
deploy-config, which are copied and shared; tokens must never travel with them.

A token is handed around as a :class:`Secret`, whose ``repr``/``str`` never show the value, so
it cannot leak through an error message, a log line or a dataclass repr by accident.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from dynia.errors import ProviderError

CREDENTIALS_ENV = "DYNIA_CREDENTIALS_FILE"


class Secret:
    """A token whose value only ``reveal()`` returns."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def credentials_file() -> Path:
    """Where the credentials file is looked for (it need not exist)."""
    explicit = os.environ.get(CREDENTIALS_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(config_home).expanduser() / "dynia" / "credentials.json"


def _read_credentials(path: Path) -> dict[str, str]:
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    if not stat.S_ISREG(info.st_mode):
        raise ProviderError(
            f"credentials file {path} is not a regular file",
            hint="replace it with a JSON file of tokens, mode 0600",
        )
    if info.st_mode & 0o077:
        raise ProviderError(
            f"credentials file {path} is readable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o})",
            hint=f"run: chmod 600 {path}",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProviderError(
            f"credentials file {path} is not valid JSON ({type(exc).__name__})",
            hint='write it as {"DIGITALOCEAN_TOKEN": "...", "CLOUDFLARE_API_TOKEN": "..."}',
        ) from None
    if not isinstance(data, dict):
        raise ProviderError(
            f"credentials file {path} must hold a JSON object",
            hint='write it as {"DIGITALOCEAN_TOKEN": "...", "CLOUDFLARE_API_TOKEN": "..."}',
        )
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def lookup_token(name: str, *, scopes_hint: str) -> Secret:
    """The token called ``name`` from the environment or the credentials file.

    ``scopes_hint`` tells the operator what the token must be allowed to do; it goes into the
    error raised when no token is found.
    """
    value = os.environ.get(name, "")
    where = f"export {name}=<token> again"
    if not value:
        value = _read_credentials(credentials_file()).get(name, "")
        where = f"write it again in {credentials_file()}"
    if not value:
        raise ProviderError(
            f"no {name} found in the environment or in {credentials_file()}",
            hint=f"export {name}=<token> or add it to that file (mode 0600); {scopes_hint}",
        )
    _refuse_stray_characters(name, value, where)
    return Secret(value)


# The names of the characters a copy and paste leaves in a token most often.
_CHARACTER_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space"}


def _refuse_stray_characters(name: str, value: str, where: str) -> None:
    """Refuse a token holding whitespace or a control character, at once and by name.

    No token has one; sent on, it makes the HTTP client fail every retry with what reads as a
    network error. Nothing is stripped: a token changed behind the operator's back is no fix.
    The token itself is never shown, only the kind of character and its position.
    """
    for position, char in enumerate(value, start=1):
        if char.isspace() or not char.isprintable():
            other = "a whitespace character" if char.isspace() else "a control character"
            kind = _CHARACTER_NAMES.get(char, f"{other} (U+{ord(char):04X})")
            raise ProviderError(
                f"{name} holds {kind} at character {position} (a copy-paste artifact?)",
                hint=f"set it again without it: {where}",
            )
