"""Shell completion of cluster, node, service and domain names, read from the state.

Completion runs on every Tab press, before any command: it reads ``state.json`` without the lock
(never writing, never creating the home) and offers nothing, silently, when there is no home, no
state or a state it cannot read. State modules load only when a name is completed, so
``dynia --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import click

from dynia.paths import resolve_home

if TYPE_CHECKING:
    from dynia.state.models import Cluster, State

Completer = Callable[[click.Context, click.Parameter, str], list[str]]


def _state(ctx: click.Context) -> State | None:
    """The state of the home the command line names (--home, DYNIA_HOME, ~/.dynia), if readable."""
    from dynia.state import StateStore

    try:
        return StateStore(resolve_home(ctx.find_root().params.get("home"))).load()
    except Exception:  # a Tab press must never print a traceback into the shell
        return None


def _cluster(ctx: click.Context) -> Cluster | None:
    """The cluster the command would act on: --cluster, else the current cluster."""
    state = _state(ctx)
    if state is None:
        return None
    name = ctx.find_root().params.get("cluster_name") or state.current_cluster
    return state.clusters.get(name) if name else None


def _matching(names: Iterable[str], incomplete: str) -> list[str]:
    return sorted(name for name in names if name.startswith(incomplete))


def cluster_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    state = _state(ctx)
    return _matching(state.clusters if state else (), incomplete)


def _in_cluster(names_of: Callable[[Cluster], Iterable[str]]) -> Completer:
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
        cluster = _cluster(ctx)
        return _matching(names_of(cluster) if cluster else (), incomplete)

    return complete


node_names = _in_cluster(lambda cluster: cluster.nodes)
service_names = _in_cluster(lambda cluster: cluster.services)
domain_names = _in_cluster(lambda cluster: cluster.routes)
