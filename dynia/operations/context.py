"""`dynia context`: which cluster commands act on when --cluster is not given."""

from __future__ import annotations

from dynia.operations.clusters import get_cluster
from dynia.state import StateStore


def current_context(store: StateStore) -> str | None:
    return store.load().current_cluster


def use_context(store: StateStore, name: str) -> None:
    with store.transaction("dynia context use") as txn:
        get_cluster(txn.state, name)
        txn.state.current_cluster = name


def clear_context(store: StateStore) -> str | None:
    """Clear the current cluster; returns the one that was current."""
    with store.transaction("dynia context clear") as txn:
        previous = txn.state.current_cluster
        txn.state.current_cluster = None
        return previous
