"""Where Dynia's files live: the dynia home, and the playbooks, roles and templates it ships.

In a checkout the shipped folders sit beside the package; in a wheel they are carried inside it
under ``dynia/_data/``. Both are found the same way, so the code never cares how it was installed.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_HOME = Path("~/.dynia")
# The inventory config in deploy-config/<cluster>/; the dynia inventory plugin reads only files
# named dynia.yml or *.dynia.yml, so the name is part of the contract.
INVENTORY_FILE = "inventory.dynia.yml"


def shipped_dir(name: str) -> Path:
    """The shipped folder ``name`` (playbooks, roles, templates, inventory_plugins)."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dynia installation is incomplete: no {name}/ folder found")


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The dynia home: ``--home``, else ``$DYNIA_HOME``, else ``~/.dynia``."""
    raw = explicit or os.environ.get("DYNIA_HOME") or DEFAULT_HOME
    return Path(raw).expanduser().resolve()


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
