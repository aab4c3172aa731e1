"""A sample cluster in state, built the way the services would leave it, for render tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dynia.operations.deploy_config import render_inputs
from dynia.paths import HomeLayout
from dynia.render.renderer import Renderer, RenderResult
from dynia.state import StateStore
from dynia.state.models import (
    STATUS_SERVING,
    Cluster,
    Network,
    Node,
    ReservedIp,
    Route,
    Service,
)

WEB_COMPOSE = """\
services:
  web:
    image: dynia-sample-web:1
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    expose: ["8080"]
  cache:
    image: dynia-sample-cache:1
"""


def sample_cluster(name: str = "demo", node_provider: str = "local") -> Cluster:
    nodes = {
        "misty-owl": Node("misty-owl", "c1", "172.30.9.10", "172.30.9.10", 150, "ready"),
        "quiet-fox": Node("quiet-fox", "c2", "172.30.9.11", "172.30.9.11", 99, "ready"),
        "amber-elk": Node("amber-elk", "c3", "172.30.9.12", "172.30.9.12", 100, "ready"),
    }
    return Cluster(
        name=name,
        node_provider=node_provider,
        dns_provider="local",
        region="local",
        size="small",
        planned_nodes=3,
        status=STATUS_SERVING,
        image="debian-12" if node_provider == "local" else "debian-13-x64",
        nodes=nodes,
        reserved_ip=ReservedIp("172.30.9.250", "172.30.9.250", "misty-owl"),
        network=Network("dynia-demo", "172.30.9.0/24", "eth0", "172.30.9.1"),
        services={
            "web": Service(
                name="web",
                compose=WEB_COMPOSE,
                compose_hash=hashlib.sha256(WEB_COMPOSE.encode()).hexdigest(),
                internal_port=20000,
                container_port=8080,
                main_service="web",
                health_path="/healthz",
            )
        },
        routes={"web.demo.test": Route("web.demo.test", "web")},
    )


def save_sample(home: Path, cluster: Cluster | None = None) -> Cluster:
    cluster = cluster or sample_cluster()
    with StateStore(home).transaction("test setup") as txn:
        txn.state.clusters[cluster.name] = cluster
        txn.state.current_cluster = cluster.name
    return cluster


def render_sample(
    layout: HomeLayout, cluster: Cluster, directory: Path | None = None
) -> RenderResult:
    """Render ``cluster`` with the inputs the render operation chooses, without validating."""
    inputs = render_inputs(layout, cluster)
    return Renderer(layout).render(cluster, directory, inputs=inputs)
