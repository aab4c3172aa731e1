"""Dynia's state: typed models, the locked and atomic store, and schema migrations."""

from dynia.state.lock import LockHolder
from dynia.state.migrations import migrate
from dynia.state.models import SCHEMA_VERSION, State
from dynia.state.store import BACKUPS_KEPT, StateStore, Transaction, serialize

__all__ = [
    "BACKUPS_KEPT",
    "SCHEMA_VERSION",
    "LockHolder",
    "State",
    "StateStore",
    "Transaction",
    "migrate",
    "serialize",
]
