"""What every operation works with, built once per command by the CLI.

Operations take one ``RunContext`` instead of the home layout, the state store, the cluster the
operator chose, the progress sink and the Ansible event sink one by one. It also carries the
boundaries where an operation leaves this process: the playbook runner, the probes that ask
nodes over SSH/HTTP, the image transfer and the node provider factory. The real ones are the
defaults (the runner is given by the caller); tests put doubles of these Dynia interfaces there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dynia.operations import Progress
from dynia.operations.images import ControllerImages, ImageTransfer
from dynia.operations.probe import LiveProbe, NodeProbe
from dynia.paths import HomeLayout
from dynia.providers import dns_provider_for, get_node_provider
from dynia.providers.base import DnsProvider, NodeProvider
from dynia.runner.protocol import PlaybookRunner
from dynia.state import StateStore
from dynia.state.models import Cluster

# Receives the runner's per-node ProgressEvents; None shows no live progress.
EventSink = Callable[[Any], None] | None


def _silent(message: str) -> None:
    """Progress nobody reads."""


@dataclass(frozen=True)
class RunContext:
    layout: HomeLayout
    store: StateStore
    runner: PlaybookRunner  # dynia.runner.run_playbook, outside tests
    cluster_option: str | None = None  # --cluster, if given
    progress: Progress = _silent
    on_event: EventSink = None
    probe: NodeProbe = field(default_factory=LiveProbe)
    images: ImageTransfer = field(default_factory=ControllerImages)
    node_providers: Callable[[str, HomeLayout], NodeProvider] = get_node_provider

    def node_provider(self, cluster: Cluster) -> NodeProvider:
        return self.node_providers(cluster.node_provider, self.layout)

    def dns_provider(self, cluster: Cluster) -> DnsProvider:
        """The cluster's DNS provider, its notices (retries, a zone gone) on this run's progress."""
        return dns_provider_for(cluster, self.layout, self.progress)

    def without_live_progress(self) -> RunContext:
        """The same context with no per-node event display (read-only checks stay quiet)."""
        return replace(self, on_event=None)
