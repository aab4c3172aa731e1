"""Where Dynia's files live: the dynia home, and the playbooks, roles and templates it ships.

In a checkout the shipped folders sit beside the package; in a wheel they are carried inside it
under ``dynia/_data/``. Both are found the same way, so the code never cares how it was installed.
"""

from __future__ import annotations

import os
from pathlib import Path

from dynia.errors import UsageError

_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_HOME = Path("~/.dynia")
# The inventory config in deploy-config/<cluster>/; the dynia inventory plugin reads only files
# named dynia.yml or *.dynia.yml, so the name is part of the contract.
INVENTORY_FILE = "inventory.dynia.yml"
HOME_ENV = "DYNIA_HOME"
# The home's paths reach ssh (the cluster key, known_hosts) through Ansible, which passes the key
# as IdentityFile="<path>" with nothing escaped, and through ansible.cfg. No quoting carries these
# through every one of those readers, so a home holding them is refused before anything uses it.
_UNCARRIED_IN_HOME = (
    ('"', "Ansible hands the SSH key path to ssh in double quotes it does not escape"),
    ("\\", "Ansible hands the SSH key path to ssh in double quotes it does not escape"),
    ("%", "ssh reads it as a %-token in key and known_hosts paths, ansible.cfg as interpolation"),
    ("${", "ssh expands ${...} in key and known_hosts paths"),
    ("{{", "Ansible would template it as Jinja"),
    ("{%", "Ansible would template it as Jinja"),
    ("{#", "Ansible would template it as Jinja"),
)


def shipped_dir(name: str) -> Path:
    """The shipped folder ``name`` (playbooks, roles, templates, inventory_plugins)."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dynia installation is incomplete: no {name}/ folder found")


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The dynia home: ``--home``, else ``$DYNIA_HOME``, else ``~/.dynia``.

    A blank ``--home`` or ``$DYNIA_HOME`` is refused rather than skipped: falling through to
    ``~/.dynia`` (or making a folder named by spaces) would act on a home the operator never meant.
    """
    if explicit is not None:
        raw = _not_blank(os.fspath(explicit), "--home")
    elif HOME_ENV in os.environ:
        raw = _not_blank(os.environ[HOME_ENV], HOME_ENV)
    else:
        raw = str(DEFAULT_HOME)
    home = Path(raw).expanduser().resolve()
    check_home_path(home)
    return home


def _not_blank(value: str, source: str) -> str:
    if not value.strip():
        raise UsageError(
            f"{source} is {'empty' if not value else 'only whitespace'} ({value!r})",
            hint=f"give the dynia home's path, or unset {HOME_ENV} and leave out --home to use "
            f"{DEFAULT_HOME}",
        )
    return value


def check_home_path(home: Path) -> None:
    """UsageError when ``home`` holds something its paths cannot carry to ssh and Ansible."""
    text = str(home)
    for char in text:
        if ord(char) < 32 or ord(char) == 127:
            raise _unusable_home(home, repr(char), "a path must be one line of printable text")
    for sequence, reason in _UNCARRIED_IN_HOME:
        if sequence in text:
            raise _unusable_home(home, repr(sequence), reason)


def _unusable_home(home: Path, what: str, reason: str) -> UsageError:
    return UsageError(
        f"the dynia home {str(home)!r} cannot be used: it contains {what}, and {reason}",
        hint="choose a home path without control characters, quotes, backslashes, '%', '${' or "
        "'{{' (--home or DYNIA_HOME); spaces are fine",
    )


class HomeLayout:
    """Every path under one dynia home, named once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def local_dns_dir(self) -> Path:
        return self.root / "local-dns"

    def deploy_config_dir(self, cluster: str) -> Path:
        return self.root / "deploy-config" / cluster

    def cluster_dir(self, cluster: str) -> Path:
        return self.root / "clusters" / cluster

    def ssh_private_key(self, cluster: str) -> Path:
        return self.cluster_dir(cluster) / "ssh" / "id_ed25519"

    def known_hosts(self, cluster: str) -> Path:
        return self.cluster_dir(cluster) / "ssh" / "known_hosts"

    def tls_dir(self, cluster: str) -> Path:
        return self.cluster_dir(cluster) / "tls"
