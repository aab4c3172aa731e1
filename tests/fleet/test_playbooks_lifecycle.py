"""repair.yml and teardown.yml on two real local nodes running a compose service.

The service keeps a page in a named volume, written once when the volume is new: the same page
after a teardown proves the volume survived, and no volume after a purge proves it was removed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest
from ansible_fixtures import AnsibleCluster, ansible_cluster

from dynia.operations.images import resolve_images, ship_service_images
from dynia.runner import run_playbook
from dynia.runner.events import PlaybookResult
from dynia.state.models import Route, Service
from dynia.state.store import StateStore

pytestmark = pytest.mark.fleet

CADDYFILE = "/etc/caddy/Caddyfile"
SERVICE_PORT = 20011
PROJECT = "dynia-web"
UNITS = ("keepalived", "haproxy", "caddy")
COMPOSE = """\
services:
  web:
    image: {image}
    command:
      - sh
      - -c
      - >-
        [ -f /data/index.html ] || echo "page $$(cat /proc/sys/kernel/random/uuid)"
        > /data/index.html; exec httpd -f -p 8080 -h /data
    init: true  # a PID-1 httpd ignores SIGTERM: every recreate would wait 10 s for its kill
    volumes: ["data:/data"]
volumes:
  data: {{}}
"""


def _add_service(cluster: AnsibleCluster, image: str) -> None:
    compose = COMPOSE.format(image=image)
    service = Service(
        name="web",
        compose=compose,
        compose_hash=hashlib.sha256(compose.encode()).hexdigest(),
        internal_port=SERVICE_PORT,
        container_port=8080,
        main_service="web",
        health_path="/",
        image_ids=resolve_images([image]),
    )
    domain = f"web.{cluster.cluster.name}.test"
    cluster.cluster.services["web"] = service
    cluster.cluster.routes[domain] = Route(domain, "web")
    with StateStore(cluster.layout.root).transaction("test setup") as txn:
        txn.state.clusters[cluster.cluster.name] = cluster.cluster
    cluster.render()
    ship_service_images(cluster.layout, cluster.cluster, [service], lambda _line: None)


@pytest.fixture(scope="module")
def service_cluster(node_image: str, busybox_image: str) -> Iterator[AnsibleCluster]:
    """Two nodes after bootstrap and a first sync, serving the volume-backed service."""
    with ansible_cluster(2, node_image) as cluster:
        _add_service(cluster, busybox_image)
        run_playbook(cluster.project, "bootstrap.yml")
        run_playbook(cluster.project, "sync.yml")
        yield cluster


def _page(cluster: AnsibleCluster, node: str) -> str:
    # Nothing listening is an answer too: an empty page.
    url = f"http://127.0.0.1:{SERVICE_PORT}/"
    return cluster.ssh(node, f"curl -s --max-time 3 {url} || true").strip()


def _unit_states(cluster: AnsibleCluster, node: str) -> dict[str, str]:
    # is-active exits non-zero for inactive units; the states are what matters.
    out = cluster.ssh(node, f"systemctl is-active {' '.join(UNITS)} || true")
    return dict(zip(UNITS, out.split(), strict=True))


def _project_objects(cluster: AnsibleCluster, node: str, kind: str) -> list[str]:
    listing = "docker ps -a" if kind == "container" else "docker volume ls"
    label = f"label=com.docker.compose.project={PROJECT}"
    return cluster.ssh(node, f"{listing} -q --filter {label}").split()


def _timed_run(cluster: AnsibleCluster, playbook: str) -> PlaybookResult:
    started = time.monotonic()
    result = run_playbook(cluster.project, playbook)
    print(f"{playbook} on 2 nodes: {time.monotonic() - started:.1f} s")
    return result


def test_repair_brings_back_a_stopped_caddy_an_edited_file_and_a_removed_container(
    service_cluster: AnsibleCluster,
) -> None:
    cluster = service_cluster
    first, second = cluster.node_names
    pages = {node: _page(cluster, node) for node in cluster.node_names}
    assert all(page.startswith("page ") for page in pages.values()), pages
    expected = next(f["sha256"] for f in cluster.manifest()["files"] if f["target"] == CADDYFILE)

    cluster.ssh(first, f"systemctl stop caddy; echo '# edited by hand' >> {CADDYFILE}")
    cluster.ssh(
        second, f"docker rm -f $(docker ps -q --filter label=com.docker.compose.project={PROJECT})"
    )
    assert _unit_states(cluster, first)["caddy"] == "inactive"
    assert _page(cluster, second) == ""

    result = _timed_run(cluster, "repair.yml")
    assert result.ok and sorted(result.hosts) == cluster.node_names

    assert cluster.remote_sha256(first, CADDYFILE) == expected
    for node in cluster.node_names:
        assert _unit_states(cluster, node) == dict.fromkeys(UNITS, "active")
        assert cluster.ssh(node, "curl -s http://127.0.0.1:8080/dynia-health").startswith("ok")
        # The container came back on the volume it had: same page as before.
        assert _page(cluster, node) == pages[node]
    assert not any(run_playbook(cluster.project, "drift-check.yml").reports.values())


def test_teardown_stops_everything_and_purges_volumes_only_when_asked(
    service_cluster: AnsibleCluster,
) -> None:
    cluster = service_cluster
    result = _timed_run(cluster, "teardown.yml")
    assert result.ok
    for node in cluster.node_names:
        assert _unit_states(cluster, node) == dict.fromkeys(UNITS, "inactive")
        assert _project_objects(cluster, node, "container") == []
        assert len(_project_objects(cluster, node, "volume")) == 1
        assert _page(cluster, node) == ""

    # Again: nothing left to stop, nothing changes.
    assert _timed_run(cluster, "teardown.yml").changed == 0

    # By hand, as an operator runs it from deploy-config.
    started = time.monotonic()
    purged = cluster.ansible(
        "ansible-playbook", "teardown.yml", "-e", '{"dynia_teardown_purge_volumes": true}'
    )
    print(f"teardown.yml (purge, by hand) on 2 nodes: {time.monotonic() - started:.1f} s")
    assert purged.returncode == 0, purged.stdout[-3000:]
    for node in cluster.node_names:
        assert _project_objects(cluster, node, "volume") == []
        assert _project_objects(cluster, node, "container") == []
