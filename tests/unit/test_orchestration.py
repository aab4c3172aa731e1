"""Orchestration: which playbooks an operation runs, on which nodes, in which order, and what
state and deploy-config say afterwards - including after a failure or an interrupted run.

The operations, the state store and the renderer are the real ones. What leaves this process is
replaced by doubles of Dynia's own boundaries, the ones a RunContext carries: the playbook runner
(it records each run and answers with a PlaybookResult built by the real EventCollector from
scripted events, ok or failed per node), the node probe (who holds the Reserved IP, does it
answer, does a route answer through it), the image transfer and the node provider. Nothing here
needs Docker or a node. The route tests use the real local DNS provider (an NSD process).
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import jinja2
import pytest
import yaml
from sample_state import WEB_COMPOSE, sample_cluster, save_sample

from dynia import pki
from dynia.cli.context_obj import AppContext
from dynia.errors import (
    DriftError,
    LeftBehindError,
    ProviderError,
    RunnerError,
    UsageError,
    VerifyError,
)
from dynia.operations import certificates, cluster_nodes, infra, operate
from dynia.operations.cluster_create import CreateRequest, create_cluster
from dynia.operations.cluster_delete import delete_cluster
from dynia.operations.deploy import DeployRequest, bind_route, deploy_service, unbind_route
from dynia.operations.deploy_config import render_cluster
from dynia.operations.rollout import BatchSize
from dynia.operations.run_context import RunContext
from dynia.operations.verify import resolve
from dynia.paths import INVENTORY_FILE, HomeLayout
from dynia.providers import dns_provider_for
from dynia.providers.base import (
    DnsProvider,
    NetworkInfo,
    NodeSpec,
    ProvisionedNode,
    ReservedIpInfo,
)
from dynia.providers.local.dns import LocalDnsProvider
from dynia.render.renderer import MANIFEST_SCHEMA
from dynia.runner import PlaybookResult, ProgressEvent, run_playbook
from dynia.runner.events import DRIFT_KEY, EventCollector
from dynia.state import StateStore
from dynia.state.models import (
    MASTER_PRIORITY,
    NODE_JOINING,
    NODE_OUT_OF_SYNC,
    NODE_READY,
    STATUS_INFRA_READY,
    Cluster,
    Node,
)

# Playbooks that compare every node's files with the manifest (their tasks return dynia_drift).
COMPARING = {"sync.yml", "drift-check.yml"}
# Playbooks that change nodes (a changed count per node).
CHANGING = {"bootstrap.yml", "sync.yml", "repair.yml", "handover.yml", "teardown.yml"}
# serial: 1 with max_fail_percentage: 0: a failed node stops the play; later nodes never run.
SERIAL = {"sync.yml"}
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDyniaOrchestrationTestHostKeyOnlyForTests"


# --- doubles of Dynia's boundaries ----------------------------------------------------------


@dataclass
class Run:
    playbook: str
    limit: str | None
    extra_vars: dict[str, Any]
    hosts: list[str] = field(default_factory=list)  # the nodes the run reached, in order


class RecordingRunner:
    """Stands where ``dynia.runner.run_playbook`` stands; records every run it is asked for.

    The nodes a run reaches are the ones the generated inventory would yield: the cluster's
    nodes in the state file on disk, narrowed by ``limit``; a sync goes backups first, the
    MASTER last. The test scripts which nodes fail, which drift and which a sync leaves
    uncompared.
    """

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.runs: list[Run] = []
        self.failing: dict[str, set[str]] = {}  # playbook -> nodes on which it fails
        self.drift: dict[str, dict[str, list[dict[str, Any]]]] = {}  # playbook -> node -> drift
        self.uncompared: set[str] = set()  # nodes a sync leaves without a comparison
        self.lost: set[str] = set()  # nodes that stop answering before a run reaches them
        self.interrupt: str | None = None  # playbook during which the operator presses Ctrl-C
        self.after: dict[str, Callable[[Run], None]] = {}  # what a run does to the world
        self.seen: dict[str, str] = {}  # deploy-config file -> its text when sync.yml started
        self.watch: list[str] = []  # deploy-config files to read when sync.yml starts

    def __call__(
        self,
        project_dir: Path,
        playbook: str,
        *,
        extra_vars: dict[str, Any] | None = None,
        limit: str | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        check: bool = False,
        raise_on_failure: bool = True,
        hosts: Sequence[str] | None = None,
    ) -> PlaybookResult:
        run = Run(playbook, limit, dict(extra_vars or {}))
        self.runs.append(run)
        self.journal.append(f"{playbook} {limit or 'all'}")
        if playbook == "sync.yml":
            self.seen = {name: (Path(project_dir) / name).read_text() for name in self.watch}
        if self.interrupt == playbook:
            self.interrupt = None
            raise KeyboardInterrupt  # what run_playbook raises when the run was cancelled
        targets = inventory_nodes(Path(project_dir), playbook, limit, run.extra_vars)
        collector = EventCollector(targets, on_event)
        failed = self._play(run, targets, collector)
        collector(stats_event(run.hosts, failed, playbook in CHANGING, self.lost))
        result = collector.result(2 if failed else 0)
        if playbook in self.after:
            self.after[playbook](run)
        if raise_on_failure and not result.ok:
            error = RunnerError(f"{playbook} failed (failed: {', '.join(failed)})")
            error.result = result  # type: ignore[attr-defined]  # as run_playbook attaches it
            raise error
        return result

    def _play(self, run: Run, targets: list[str], collector: EventCollector) -> list[str]:
        failed: list[str] = []
        for node in targets:
            run.hosts.append(node)
            if node in self.lost:
                res = {"msg": "ssh: connect to host: No route to host", "unreachable": True}
                collector(task_event("runner_on_unreachable", node, res))
                failed.append(node)
                if run.playbook in SERIAL:
                    break
                continue
            if node in self.failing.get(run.playbook, set()):
                collector(task_event("runner_on_failed", node, {"msg": "health check failed"}))
                failed.append(node)
                if run.playbook in SERIAL:
                    break
                continue
            if run.playbook in COMPARING and not (
                run.playbook == "sync.yml" and node in self.uncompared
            ):
                drift = self.drift.get(run.playbook, {}).get(node, [])
                entries = [{**entry, "node": node} for entry in drift]
                collector(task_event("runner_on_ok", node, {"changed": False, DRIFT_KEY: entries}))
            if run.playbook in CHANGING:
                collector(task_event("runner_on_ok", node, {"changed": True}))
        return failed

    def calls(self) -> list[tuple[str, str | None]]:
        return [(run.playbook, run.limit) for run in self.runs]


def inventory_nodes(
    project_dir: Path, playbook: str, limit: str | None, extra_vars: dict[str, Any]
) -> list[str]:
    """The nodes the project's inventory yields now, as the dynia inventory plugin reads them.

    sync.yml's ``dynia_sync_hosts`` pattern is followed as Ansible does: a union keeps the order
    of its terms, each host once.
    """
    config = yaml.safe_load((project_dir / INVENTORY_FILE).read_text())
    state = StateStore(Path(config["home"])).load()
    nodes = state.clusters[config["cluster"]].nodes
    names = sorted(nodes)
    if limit:
        names = [name for name in names if name in limit.split(",")]
    if playbook != "sync.yml":
        return names
    groups = {
        "backup": [name for name in names if nodes[name].priority < MASTER_PRIORITY],
        "master": [name for name in names if nodes[name].priority >= MASTER_PRIORITY],
    }
    ordered: list[str] = []  # hosts: dynia_sync_hosts (default backup:master), serial 1
    for term in extra_vars.get("dynia_sync_hosts", "backup:master").split(":"):
        ordered += [n for n in groups.get(term, [term]) if n in names and n not in ordered]
    return ordered


def task_event(kind: str, host: str, res: dict[str, Any]) -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task": "a task", "res": res}}


def stats_event(
    hosts: list[str], failed: list[str], changed: bool, lost: set[str] = frozenset()
) -> dict[str, Any]:
    ok = [host for host in hosts if host not in failed]
    return {
        "event": "playbook_on_stats",
        "event_data": {
            "ok": dict.fromkeys(ok, 3),
            "changed": dict.fromkeys(ok, 1) if changed else {},
            "failures": {host: 1 for host in failed if host not in lost},
            "dark": {host: 1 for host in failed if host in lost},
            "skipped": {},
        },
    }


class KeepalivedProbe:
    """Stands for the SSH/HTTP probes: the node keepalived elected holds the address.

    ``holder`` None means keepalived agrees with state: the MASTER state ranks first holds it.
    """

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.holder: str | None = None
        self.answers = True
        self.route_answers = True
        self.silent: set[str] = set()  # nodes that do not answer over SSH

    def ssh_problem(self, layout: HomeLayout, cluster: Cluster, node: Node) -> str | None:
        return "No route to host" if node.name in self.silent else None

    def holds_master_address(self, layout: HomeLayout, cluster: Cluster, node: Node) -> bool:
        master = cluster.master
        return node.name == (self.holder or (master.name if master else None))

    def wait_for_reserved_ip(self, cluster: Cluster, timeout: float = 30.0) -> str:
        assert cluster.master is not None
        self.journal.append(f"reserved IP checked, MASTER {cluster.master.name}")
        if not self.answers:
            raise VerifyError("the Reserved IP did not answer")
        return "HTTP 404"

    def verify_route(
        self, layout: HomeLayout, cluster: Cluster, domain: str, dns: DnsProvider
    ) -> str:
        """Asks the DNS provider's server for real; the HTTPS request through the IP is left out."""
        addresses = resolve(dns, domain)
        self.journal.append(f"route {domain} checked: it resolves to {', '.join(addresses)}")
        path = cluster.services[cluster.routes[domain].service].health_path
        if not self.route_answers:
            raise VerifyError(f"https://{domain}{path} failed: refused", hint="check the route")
        return f"https://{domain}{path} -> 200"


class RecordingImages:
    """Stands for the controller's docker and the SSH image stream."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal

    def resolve(self, images: list[str]) -> dict[str, str]:
        return {image: "sha256:" + hashlib.sha256(image.encode()).hexdigest() for image in images}

    def ship(self, layout: HomeLayout, cluster: Cluster, services: list[Any], progress: Any) -> int:
        names = ",".join(sorted(service.name for service in services))
        self.journal.append(f"images of {names} to {','.join(sorted(cluster.nodes))}")
        return len(cluster.nodes)


class InMemoryNodeProvider:
    """A double of the NodeProvider protocol (dynia/providers/base.py), posing as `local`:
    found by cluster and name like the real ones, so asking twice makes nothing twice."""

    name = "local"
    reserved_ip_mode = "vrrp"

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.nodes: dict[str, ProvisionedNode] = {}  # provider id -> node
        self.created: list[str] = []
        self.images: dict[str, str] = {}  # node name -> the image it was created with
        self.fail_delete = False

    def seed(self, cluster: Cluster) -> None:
        for node in cluster.nodes.values():
            self.nodes[node.provider_id] = ProvisionedNode(
                node.name, node.provider_id, node.public_ip, node.private_ip, [HOST_KEY]
            )

    def ensure_network(self, cluster: str) -> NetworkInfo:
        return NetworkInfo(f"dynia-{cluster}", "172.30.9.0/24", "eth0", "172.30.9.1")

    def delete_network(self, cluster: str) -> None:
        self.journal.append("network deleted")

    def check_room(self, cluster: str, nodes: list[str]) -> None:
        self.journal.append(f"room checked for {','.join(nodes)}")

    def create_node(self, spec: NodeSpec) -> ProvisionedNode:
        for node in self.nodes.values():
            if node.name == spec.name:
                return node
        address = f"172.30.9.{20 + len(self.nodes)}"
        made = ProvisionedNode(spec.name, f"m-{spec.name}", address, address, [HOST_KEY])
        self.nodes[made.provider_id] = made
        self.created.append(spec.name)
        self.images[spec.name] = spec.image
        self.journal.append(f"created {spec.name}")
        return made

    def list_nodes(self, cluster: str) -> list[ProvisionedNode]:
        return list(self.nodes.values())

    def delete_node(self, cluster: str, provider_id: str) -> None:
        self.journal.append(f"deleted {provider_id}")
        if self.fail_delete:
            raise ProviderError("the provider refused the delete")
        self.nodes.pop(provider_id, None)

    def allocate_reserved_ip(self, cluster: str, region: str) -> ReservedIpInfo:
        return ReservedIpInfo("172.30.9.250", "172.30.9.250")

    def attach_reserved_ip(self, ip: ReservedIpInfo, node_provider_id: str) -> None:
        self.journal.append(f"attached to {node_provider_id}")

    def reserved_ip_exists(self, ip: ReservedIpInfo) -> bool:
        return True  # a VRRP address lives as long as the cluster network

    def detach_reserved_ip(self, ip: ReservedIpInfo) -> None: ...

    def release_reserved_ip(self, cluster: str, ip: ReservedIpInfo) -> None: ...


# --- the rig: a home with the sample cluster, rendered, and a RunContext of doubles ----------


@dataclass
class Rig:
    home: Path
    journal: list[str]
    runner: RecordingRunner
    probe: KeepalivedProbe
    images: RecordingImages
    provider: InMemoryNodeProvider
    progress: list[str]
    events: list[ProgressEvent]
    ctx: RunContext

    @property
    def layout(self) -> HomeLayout:
        return self.ctx.layout

    def cluster(self, name: str = "demo") -> Cluster:
        """The cluster as the state file on disk holds it (checked by loading it)."""
        return self.ctx.store.load().clusters[name]

    def deployed(self, relative: str) -> str:
        return (self.layout.deploy_config_dir("demo") / relative).read_text()


@pytest.fixture
def no_validators(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """haproxy, caddy, keepalived and docker compose are left off PATH, so a render skips
    checking its files with them (test_render covers that; here it would cost a second per
    render). ssh-keygen stays: a node add makes the cluster's key pair."""
    tools = tmp_path / "tools"
    tools.mkdir()
    keygen = shutil.which("ssh-keygen")
    if keygen:
        (tools / "ssh-keygen").symlink_to(keygen)
    monkeypatch.setenv("PATH", str(tools))


def make_rig(home: Path) -> Rig:
    journal: list[str] = []
    runner = RecordingRunner(journal)
    probe = KeepalivedProbe(journal)
    images = RecordingImages(journal)
    provider = InMemoryNodeProvider(journal)
    progress: list[str] = []
    events: list[ProgressEvent] = []
    ctx = RunContext(
        layout=HomeLayout(home),
        store=StateStore(home),
        runner=runner,
        progress=progress.append,
        on_event=events.append,
        probe=probe,
        images=images,
        node_providers=lambda name, layout: provider,
    )
    return Rig(home, journal, runner, probe, images, provider, progress, events, ctx)


@pytest.fixture
def rig(tmp_path: Path, no_validators: None) -> Iterator[Rig]:
    """The sample cluster in state, serving, with its certificate and a real deploy-config."""
    home = tmp_path / "home"
    layout = HomeLayout(home)
    cluster = sample_cluster()
    cluster.tls_fingerprint = certificates.issue_certificate(layout, cluster).fingerprint_sha256
    save_sample(home, cluster)
    render_cluster(layout, cluster, validate=False)  # as `dynia render` writes it
    made = make_rig(home)
    made.provider.seed(cluster)
    yield made


def write_compose(tmp_path: Path, image: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(WEB_COMPOSE.replace("dynia-sample-web:1", image))
    return path


COMPOSE_FILE = "services/web/docker-compose.yml"
DRIFTED = {"path": "/etc/haproxy/haproxy.cfg", "expected": "aa", "actual": "bb"}


# --- dynia sync ------------------------------------------------------------------------------


def test_sync_that_compared_every_node_is_its_own_verification(rig: Rig) -> None:
    report = operate.sync(rig.ctx)

    assert rig.runner.calls() == [("sync.yml", None)]  # no second, drift-check run
    assert rig.runner.runs[0].hosts == ["amber-elk", "quiet-fox", "misty-owl"]  # MASTER last
    assert report.clean
    assert {n.status for n in rig.cluster().nodes.values()} == {NODE_READY}
    assert {e.host for e in rig.events} == {"amber-elk", "quiet-fox", "misty-owl"}


def test_sync_one_node_at_a_time_passes_no_batch_plan(rig: Rig) -> None:
    operate.sync(rig.ctx)
    assert rig.runner.runs[0].extra_vars == {}  # sync.yml's own `serial: 1`


def test_sync_in_batches_passes_the_canary_first_plan(rig: Rig) -> None:
    operate.sync(rig.ctx, BatchSize(count=2))
    assert [(run.playbook, run.extra_vars) for run in rig.runner.runs] == [
        ("sync.yml", {"dynia_sync_serial": [1, 2]})
    ]
    assert any("a canary node first, then 2 nodes at a time" in line for line in rig.progress)


def test_sync_with_a_batch_as_large_as_the_cluster_runs_nothing(rig: Rig) -> None:
    before = rig.ctx.store.path.read_bytes()
    with pytest.raises(UsageError, match="no node would be left serving"):
        operate.sync(rig.ctx, BatchSize(count=3))
    assert rig.runner.runs == []
    assert rig.ctx.store.path.read_bytes() == before


def test_sync_that_left_a_node_uncompared_runs_drift_check(rig: Rig) -> None:
    rig.runner.uncompared = {"quiet-fox"}
    rig.runner.drift["drift-check.yml"] = {"quiet-fox": [DRIFTED]}

    with pytest.raises(DriftError, match="quiet-fox"):
        operate.sync(rig.ctx)

    assert rig.runner.calls() == [("sync.yml", None), ("drift-check.yml", None)]
    statuses = {name: node.status for name, node in rig.cluster().nodes.items()}
    assert statuses == {
        "amber-elk": NODE_READY,
        "misty-owl": NODE_READY,
        "quiet-fox": NODE_OUT_OF_SYNC,
    }


def test_sync_uncompared_but_clean_passes_after_drift_check(rig: Rig) -> None:
    rig.runner.uncompared = {"amber-elk"}
    assert operate.sync(rig.ctx).clean
    assert rig.runner.calls() == [("sync.yml", None), ("drift-check.yml", None)]


def test_sync_applies_deploy_config_as_rendered_and_never_renders(rig: Rig) -> None:
    rendered = rig.deployed("haproxy/haproxy.cfg")
    stale = rendered + "# edited by hand after the render\n"
    (rig.layout.deploy_config_dir("demo") / "haproxy/haproxy.cfg").write_text(stale)
    rig.runner.watch = ["haproxy/haproxy.cfg"]

    operate.sync(rig.ctx)

    assert rig.runner.seen["haproxy/haproxy.cfg"] == stale


def test_sync_without_deploy_config_runs_nothing(rig: Rig) -> None:
    shutil.rmtree(rig.layout.deploy_config_dir("demo"))
    with pytest.raises(UsageError, match="dynia render"):
        operate.sync(rig.ctx)
    assert rig.runner.runs == []


def rewrite_manifest_schema(rig: Rig, schema: int) -> None:
    manifest_path = rig.layout.deploy_config_dir("demo") / "metadata.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["schema"] = schema
    manifest_path.write_text(json.dumps(manifest))


def test_sync_of_a_deploy_config_an_older_version_rendered_runs_nothing(rig: Rig) -> None:
    rewrite_manifest_schema(rig, 1)
    with pytest.raises(UsageError, match="manifest schema 1") as caught:
        operate.sync(rig.ctx)
    assert "dynia render" in (caught.value.hint or "")
    assert rig.runner.runs == []


def test_sync_goes_on_without_a_node_that_does_not_answer_and_marks_it(rig: Rig) -> None:
    rig.probe.silent = {"quiet-fox"}

    with pytest.raises(LeftBehindError) as raised:
        operate.sync(rig.ctx)

    assert rig.runner.calls() == [("sync.yml", "amber-elk,misty-owl")]  # no drift-check either
    # It stays out of rotation on the HAProxy of the others, should it come back unrestarted.
    assert rig.runner.runs[0].extra_vars == {"dynia_sync_server_states": {"quiet-fox": "maint"}}
    assert "quiet-fox did not answer over SSH" in raised.value.message
    assert "dynia sync" in (raised.value.hint or "")
    assert raised.value.exit_code == DriftError.exit_code
    statuses = {name: node.status for name, node in rig.cluster().nodes.items()}
    assert statuses == {
        "amber-elk": NODE_READY,
        "misty-owl": NODE_READY,
        "quiet-fox": "out-of-sync",
    }
    assert any("quiet-fox does not answer over SSH" in line for line in rig.progress)


def test_sync_copies_the_images_a_node_missed_to_it_before_rolling(rig: Rig) -> None:
    cluster = rig.cluster()
    cluster.nodes["quiet-fox"].status = NODE_OUT_OF_SYNC
    save_sample(rig.home, cluster)

    operate.sync(rig.ctx)

    assert rig.journal == ["images of web to quiet-fox", "sync.yml all"]
    assert rig.cluster().nodes["quiet-fox"].status == NODE_READY
    # Synced, it goes back into rotation on every HAProxy.
    assert rig.runner.runs[0].extra_vars == {"dynia_sync_server_states": {"quiet-fox": "ready"}}


def test_sync_of_a_cluster_in_sync_looks_at_no_node_for_images(rig: Rig) -> None:
    operate.sync(rig.ctx)
    assert rig.journal == ["sync.yml all"]


def test_sync_goes_on_past_a_node_that_dies_before_the_roll_reaches_it(rig: Rig) -> None:
    rig.runner.lost = {"quiet-fox"}  # answered the first question, dead when its turn came

    with pytest.raises(LeftBehindError, match="quiet-fox did not answer over SSH"):
        operate.sync(rig.ctx)

    # The roll stopped at it; the rest of the roll went on without it.
    assert rig.runner.calls() == [("sync.yml", None), ("sync.yml", "amber-elk,misty-owl")]
    assert rig.runner.runs[1].hosts == ["amber-elk", "misty-owl"]
    assert rig.runner.runs[1].extra_vars == {"dynia_sync_server_states": {"quiet-fox": "maint"}}
    assert rig.cluster().nodes["quiet-fox"].status == NODE_OUT_OF_SYNC
    assert any("quiet-fox stopped answering" in line for line in rig.progress)


def test_sync_when_no_node_answers_runs_nothing(rig: Rig) -> None:
    rig.probe.silent = {"amber-elk", "quiet-fox", "misty-owl"}

    with pytest.raises(RunnerError, match="no node of demo answers over SSH"):
        operate.sync(rig.ctx)

    assert rig.runner.runs == []
    assert {n.status for n in rig.cluster().nodes.values()} == {NODE_READY}


def test_failed_sync_stops_the_roll_and_changes_no_node_status(rig: Rig) -> None:
    rig.runner.failing["sync.yml"] = {"amber-elk"}
    with pytest.raises(RunnerError, match="amber-elk"):
        operate.sync(rig.ctx)
    assert rig.runner.runs[0].hosts == ["amber-elk"]  # serial: nobody after it ran
    assert {n.status for n in rig.cluster().nodes.values()} == {NODE_READY}


# --- dynia drift-check -----------------------------------------------------------------------


def test_drift_check_reports_drift_and_unreachable_nodes_and_changes_nothing(rig: Rig) -> None:
    before = rig.ctx.store.path.read_bytes()
    rig.runner.drift["drift-check.yml"] = {"misty-owl": [DRIFTED]}
    rig.runner.failing["drift-check.yml"] = {"quiet-fox"}

    report = operate.drift_check(rig.ctx)

    assert rig.runner.calls() == [("drift-check.yml", None)]
    assert rig.runner.runs[0].hosts == ["amber-elk", "misty-owl", "quiet-fox"]  # not serial
    found = {(e.node, e.path, e.detail) for e in report.entries}
    assert found == {
        ("misty-owl", DRIFTED["path"], ""),
        ("quiet-fox", "*", "not checked: a task: health check failed"),
    }
    assert rig.ctx.store.path.read_bytes() == before


def test_drift_check_renders_a_missing_deploy_config_first(rig: Rig) -> None:
    shutil.rmtree(rig.layout.deploy_config_dir("demo"))
    assert operate.drift_check(rig.ctx).clean
    assert (rig.layout.deploy_config_dir("demo") / "metadata.json").is_file()
    assert rig.runner.calls() == [("drift-check.yml", None)]


def test_drift_check_renders_a_deploy_config_an_older_version_rendered(rig: Rig) -> None:
    rewrite_manifest_schema(rig, 1)
    assert operate.drift_check(rig.ctx).clean
    manifest = json.loads((rig.layout.deploy_config_dir("demo") / "metadata.json").read_text())
    assert manifest["schema"] == MANIFEST_SCHEMA


# --- dynia deploy ----------------------------------------------------------------------------


def test_deploy_renders_ships_images_then_syncs_and_the_sync_verifies(
    rig: Rig, tmp_path: Path
) -> None:
    rig.runner.watch = [COMPOSE_FILE]
    request = DeployRequest("web", write_compose(tmp_path, "dynia-sample-web:2"), None, "/healthz")

    outcome = deploy_service(rig.ctx, request)

    assert outcome.service == "web" and outcome.warnings == []
    assert rig.journal == [
        "images of web to amber-elk,misty-owl,quiet-fox",
        "sync.yml all",  # its comparisons of every node are the verification
    ]
    assert "dynia-sample-web:2" in rig.runner.seen[COMPOSE_FILE]  # rendered before the sync
    web = rig.cluster().services["web"]
    assert "dynia-sample-web:2" in web.compose and web.internal_port == 20000
    assert set(web.image_ids) == {"dynia-sample-web:2", "dynia-sample-cache:1"}


def test_deploy_with_a_dead_backup_rolls_out_on_the_others_and_keeps_the_new_version(
    rig: Rig, tmp_path: Path
) -> None:
    rig.probe.silent = {"amber-elk"}
    request = DeployRequest("web", write_compose(tmp_path, "dynia-sample-web:2"), None, "/healthz")

    with pytest.raises(LeftBehindError) as raised:
        deploy_service(rig.ctx, request)

    assert rig.runner.calls() == [("sync.yml", "misty-owl,quiet-fox")]  # no roll back
    assert raised.value.message.startswith("rolled out web, but amber-elk did not answer")
    cluster = rig.cluster()
    assert "dynia-sample-web:2" in cluster.services["web"].compose
    assert cluster.nodes["amber-elk"].status == NODE_OUT_OF_SYNC
    assert cluster.nodes["quiet-fox"].status == NODE_READY


def test_deploy_in_batches_rolls_out_with_the_plan_and_rolls_back_one_at_a_time(
    rig: Rig, tmp_path: Path
) -> None:
    compose = write_compose(tmp_path, "dynia-sample-web:2")
    deploy_service(rig.ctx, DeployRequest("web", compose, batch=BatchSize(percent=67)))
    assert [(run.playbook, run.extra_vars) for run in rig.runner.runs] == [
        ("sync.yml", {"dynia_sync_serial": [1, 2]})  # 67% of 3 nodes: 2
    ]

    rig.runner.runs.clear()
    rig.runner.failing["sync.yml"] = {"misty-owl"}
    broken = DeployRequest("web", write_compose(tmp_path, "web:broken"), batch=BatchSize(2))
    with pytest.raises(RunnerError, match="misty-owl"):
        deploy_service(rig.ctx, broken)
    assert [(run.playbook, run.limit, run.extra_vars) for run in rig.runner.runs] == [
        ("sync.yml", None, {"dynia_sync_serial": [1, 2]}),
        ("sync.yml", "amber-elk,quiet-fox", {}),  # the way back: one node at a time
    ]


def test_deploy_with_a_batch_as_large_as_the_cluster_ships_and_runs_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    before = rig.ctx.store.path.read_bytes()
    compose = write_compose(tmp_path, "dynia-sample-web:2")
    with pytest.raises(UsageError, match="no node would be left serving"):
        deploy_service(rig.ctx, DeployRequest("web", compose, batch=BatchSize(count=3)))
    assert rig.journal == []  # no image shipped, no playbook run
    assert rig.ctx.store.path.read_bytes() == before


def test_deploy_verifies_with_drift_check_when_the_sync_did_not_compare_every_node(
    rig: Rig, tmp_path: Path
) -> None:
    rig.runner.uncompared = {"misty-owl"}
    deploy_service(rig.ctx, DeployRequest("web", write_compose(tmp_path, "dynia-sample-web:2")))
    assert rig.runner.calls() == [("sync.yml", None), ("drift-check.yml", None)]


def test_deploy_whose_sync_fails_restores_the_previous_compose_and_resyncs(
    rig: Rig, tmp_path: Path
) -> None:
    previous_state = rig.cluster().services["web"].compose
    previous_file = rig.deployed(COMPOSE_FILE)
    rig.runner.failing["sync.yml"] = {"misty-owl"}  # the MASTER, last: both backups changed
    restored: dict[str, str] = {}
    rig.runner.after["sync.yml"] = lambda run: restored.setdefault(
        run.limit or "all", rig.deployed(COMPOSE_FILE)
    )

    with pytest.raises(RunnerError, match="misty-owl"):
        deploy_service(rig.ctx, DeployRequest("web", write_compose(tmp_path, "web:broken")))

    # The backups the roll updated go back to the previous version; the MASTER restored itself.
    assert rig.runner.calls() == [("sync.yml", None), ("sync.yml", "amber-elk,quiet-fox")]
    assert "web:broken" not in restored["amber-elk,quiet-fox"]
    assert rig.deployed(COMPOSE_FILE) == previous_file
    assert rig.cluster().services["web"].compose == previous_state  # the state file loads
    assert "Rollout stopped; the previous version is serving on every node." in rig.progress


def test_a_new_service_whose_rollout_fails_is_forgotten_again(rig: Rig, tmp_path: Path) -> None:
    compose = tmp_path / "api.yml"
    compose.write_text(WEB_COMPOSE.replace("web:", "api:", 1))
    rig.runner.failing["sync.yml"] = {"amber-elk"}  # the first node: nothing to roll back

    with pytest.raises(RunnerError):
        deploy_service(rig.ctx, DeployRequest("api", compose))

    assert rig.runner.calls() == [("sync.yml", None)]
    assert set(rig.cluster().services) == {"web"}
    assert not (rig.layout.deploy_config_dir("demo") / "services" / "api").exists()


def test_deploy_that_leaves_drift_keeps_the_new_version_and_marks_the_drifted_node(
    rig: Rig, tmp_path: Path
) -> None:
    # Every node passes its health gate and runs web:2; quiet-fox still differs afterwards.
    rig.runner.drift["sync.yml"] = {"quiet-fox": [DRIFTED]}

    with pytest.raises(DriftError, match="quiet-fox") as raised:
        deploy_service(rig.ctx, DeployRequest("web", write_compose(tmp_path, "web:2")))

    assert rig.runner.calls() == [("sync.yml", None)]  # no roll back over healthy nodes
    assert "state and deploy-config keep the new definition" in raised.value.message
    assert raised.value.hint is not None and "dynia repair --force" in raised.value.hint
    cluster = rig.cluster()  # state says what the nodes run
    assert "web:2" in cluster.services["web"].compose
    assert "web:2" in rig.deployed(COMPOSE_FILE)
    statuses = {name: node.status for name, node in cluster.nodes.items()}
    assert statuses == {
        "amber-elk": NODE_READY,
        "misty-owl": NODE_READY,
        "quiet-fox": NODE_OUT_OF_SYNC,
    }


def test_a_new_service_that_leaves_drift_stays_in_state_with_its_port(
    rig: Rig, tmp_path: Path
) -> None:
    compose = tmp_path / "api.yml"
    compose.write_text(WEB_COMPOSE.replace("web:", "api:", 1))
    rig.runner.uncompared = {"amber-elk"}  # the drift-check after the sync finds it
    rig.runner.drift["drift-check.yml"] = {"amber-elk": [DRIFTED]}

    with pytest.raises(DriftError, match="amber-elk"):
        deploy_service(rig.ctx, DeployRequest("api", compose))

    assert rig.runner.calls() == [("sync.yml", None), ("drift-check.yml", None)]
    cluster = rig.cluster()
    assert set(cluster.services) == {"api", "web"}
    assert cluster.services["api"].internal_port != cluster.services["web"].internal_port
    assert (rig.layout.deploy_config_dir("demo") / "services/api/docker-compose.yml").is_file()
    assert cluster.nodes["amber-elk"].status == NODE_OUT_OF_SYNC


# --- dynia route bind | unbind, dynia deploy --domain -----------------------------------------
# The cluster's DNS provider is the real local one: zone files served by an NSD process on a
# loopback port of the test's home (the "test" zone holds demo.test names).

RESERVED_IP = "172.30.9.250"


@pytest.fixture
def dns(rig: Rig) -> Iterator[LocalDnsProvider]:
    """The cluster's DNS provider as the operations build it; its server stops afterwards."""
    provider = dns_provider_for(rig.cluster(), rig.layout)
    assert isinstance(provider, LocalDnsProvider)
    yield provider
    provider.stop()


def served(dns: LocalDnsProvider, domain: str) -> list[str]:
    try:
        return resolve(dns, domain)
    except VerifyError:  # NXDOMAIN: no record
        return []


def test_route_bind_rolls_the_route_out_then_publishes_and_checks_it(
    rig: Rig, dns: LocalDnsProvider
) -> None:
    rig.runner.watch = ["caddy/misty-owl.Caddyfile"]

    warnings = bind_route(rig.ctx, "api.demo.test", "web")

    assert warnings == []
    assert rig.journal == [
        "sync.yml all",  # the nodes serve the name before DNS sends anyone to it
        f"route api.demo.test checked: it resolves to {RESERVED_IP}",
    ]
    assert "api.demo.test" in rig.runner.seen["caddy/misty-owl.Caddyfile"]
    route = rig.cluster().routes["api.demo.test"]
    assert route.service == "web" and route.dns_record_id == "api.demo.test/A"
    assert "Verified: https://api.demo.test/healthz -> 200" in rig.progress


def test_route_bind_whose_sync_fails_forgets_the_route_and_publishes_nothing(
    rig: Rig, dns: LocalDnsProvider
) -> None:
    rig.runner.failing["sync.yml"] = {"misty-owl"}  # the MASTER, last

    with pytest.raises(RunnerError):
        bind_route(rig.ctx, "api.demo.test", "web")

    assert rig.runner.calls() == [("sync.yml", None), ("sync.yml", "amber-elk,quiet-fox")]
    assert "api.demo.test" not in rig.cluster().routes
    assert "api.demo.test" not in rig.deployed("caddy/misty-owl.Caddyfile")
    assert served(dns, "api.demo.test") == []


def test_route_bind_that_leaves_drift_keeps_the_route_and_says_to_bind_again(
    rig: Rig, dns: LocalDnsProvider
) -> None:
    rig.runner.drift["sync.yml"] = {"amber-elk": [DRIFTED]}

    with pytest.raises(DriftError) as raised:
        bind_route(rig.ctx, "api.demo.test", "web")

    assert rig.runner.calls() == [("sync.yml", None)]
    route = rig.cluster().routes["api.demo.test"]  # the nodes that synced route it
    assert route.dns_record_id is None and served(dns, "api.demo.test") == []
    assert "dynia route bind --domain api.demo.test --service web` again" in (
        raised.value.hint or ""
    )
    assert rig.cluster().nodes["amber-elk"].status == NODE_OUT_OF_SYNC


def test_route_unbind_deletes_the_record_first_then_removes_the_route(
    rig: Rig, dns: LocalDnsProvider
) -> None:
    dns.upsert_a_record("web.demo.test", RESERVED_IP)
    assert served(dns, "web.demo.test") == [RESERVED_IP]
    rig.runner.after["sync.yml"] = lambda run: rig.journal.append(
        f"during the sync the name resolves to {served(dns, 'web.demo.test') or 'nothing'}"
    )

    unbind_route(rig.ctx, "web.demo.test")

    assert rig.journal == ["sync.yml all", "during the sync the name resolves to nothing"]
    assert rig.cluster().routes == {}
    assert "web.demo.test" not in rig.deployed("caddy/misty-owl.Caddyfile")


def test_deploy_with_a_domain_serves_first_then_publishes_and_checks(
    rig: Rig, dns: LocalDnsProvider, tmp_path: Path
) -> None:
    compose = tmp_path / "api.yml"
    compose.write_text(WEB_COMPOSE.replace("web:", "api:", 1))

    outcome = deploy_service(rig.ctx, DeployRequest("api", compose, "api.demo.test", "/up"))

    assert outcome.warnings == []
    assert rig.journal == [
        "images of api to amber-elk,misty-owl,quiet-fox",
        "sync.yml all",
        f"route api.demo.test checked: it resolves to {RESERVED_IP}",
    ]
    cluster = rig.cluster()
    assert cluster.routes["api.demo.test"].dns_record_id == "api.demo.test/A"
    bundle = pki.current_certificate(rig.layout, "demo")  # reissued for the new name
    assert bundle is not None and "api.demo.test" in bundle.domains


def test_deploy_with_a_domain_and_a_dead_node_still_publishes_then_names_the_node(
    rig: Rig, dns: LocalDnsProvider, tmp_path: Path
) -> None:
    compose = tmp_path / "api.yml"
    compose.write_text(WEB_COMPOSE.replace("web:", "api:", 1))
    rig.probe.silent = {"amber-elk"}

    with pytest.raises(LeftBehindError, match="rolled out api, but amber-elk did not answer"):
        deploy_service(rig.ctx, DeployRequest("api", compose, "api.demo.test", "/up"))

    assert rig.journal[-1] == f"route api.demo.test checked: it resolves to {RESERVED_IP}"
    cluster = rig.cluster()
    assert cluster.routes["api.demo.test"].dns_record_id == "api.demo.test/A"
    assert cluster.nodes["amber-elk"].status == NODE_OUT_OF_SYNC


def test_deploy_whose_route_does_not_answer_yet_warns_and_keeps_serving(
    rig: Rig, dns: LocalDnsProvider, tmp_path: Path
) -> None:
    rig.probe.route_answers = False
    request = DeployRequest("web", write_compose(tmp_path, "web:2"), "web.demo.test", "/healthz")

    outcome = deploy_service(rig.ctx, request)

    assert outcome.warnings == [
        "https://web.demo.test/healthz failed: refused (the service keeps running; check the route)"
    ]
    assert "web:2" in rig.cluster().services["web"].compose
    assert served(dns, "web.demo.test") == [RESERVED_IP]


# --- dynia repair ----------------------------------------------------------------------------


def test_repair_rerenders_reapplies_compares_and_checks_the_reserved_ip(rig: Rig) -> None:
    (rig.layout.deploy_config_dir("demo") / "haproxy/haproxy.cfg").write_text("stale\n")
    rig.runner.drift["drift-check.yml"] = {"amber-elk": [DRIFTED]}

    report = operate.repair(rig.ctx)

    assert rig.journal == [
        "repair.yml all",
        "drift-check.yml all",
        "reserved IP checked, MASTER misty-owl",
    ]
    assert rig.deployed("haproxy/haproxy.cfg") != "stale\n"  # re-rendered first
    assert [e.node for e in report.entries] == ["amber-elk"]
    cluster = rig.cluster()
    assert cluster.nodes["amber-elk"].status == NODE_OUT_OF_SYNC
    assert cluster.reserved_ip is not None and cluster.reserved_ip.attached_to == "misty-owl"


def test_repair_with_a_dead_node_repairs_the_others_and_reports_it(rig: Rig) -> None:
    rig.probe.silent = {"quiet-fox"}

    report = operate.repair(rig.ctx)

    # The comparison does not wait on the dead node a second time; it is reported all the same.
    assert rig.journal[:2] == [
        "repair.yml amber-elk,misty-owl",
        "drift-check.yml amber-elk,misty-owl",
    ]
    assert [e.node for e in report.entries] == ["quiet-fox"]
    assert rig.cluster().nodes["quiet-fox"].status == NODE_OUT_OF_SYNC


def test_repair_records_the_master_keepalived_elected_and_rolls_the_priorities_out(
    rig: Rig,
) -> None:
    rig.probe.holder = "quiet-fox"  # keepalived restarted everywhere; quiet-fox won
    operate.repair(rig.ctx)
    assert rig.runner.calls() == [
        ("repair.yml", None),
        ("drift-check.yml", None),
        ("sync.yml", None),
    ]
    cluster = rig.cluster()
    assert cluster.master is not None and cluster.master.name == "quiet-fox"
    assert "priority 150" in rig.deployed("keepalived/quiet-fox.conf")


def test_repair_in_batches_passes_the_plan_to_repair_yml(rig: Rig) -> None:
    operate.repair(rig.ctx, BatchSize(count=2))
    assert [(run.playbook, run.extra_vars) for run in rig.runner.runs] == [
        ("repair.yml", {"dynia_sync_serial": [1, 2]}),
        ("drift-check.yml", {}),
    ]


def test_repair_with_a_batch_as_large_as_the_cluster_runs_nothing(rig: Rig) -> None:
    with pytest.raises(UsageError, match="at most 2 node"):
        operate.repair(rig.ctx, BatchSize(count=5))
    assert rig.journal == []


def test_repair_check_only_plans_without_changing_anything(rig: Rig) -> None:
    before = rig.ctx.store.path.read_bytes()
    rig.runner.drift["drift-check.yml"] = {"quiet-fox": [DRIFTED]}
    rig.probe.answers = False

    plan = operate.plan_repair(rig.ctx)

    assert rig.runner.calls() == [("drift-check.yml", None)]
    assert plan.actions == [
        f"re-sync quiet-fox: {DRIFTED['path']}",
        "re-attach the Reserved IP to a healthy MASTER",
    ]
    assert rig.ctx.store.path.read_bytes() == before


# --- dynia cert rotate -------------------------------------------------------------------------


def test_cert_rotate_issues_first_then_rolls_the_new_certificate_out(rig: Rig) -> None:
    old = rig.cluster().tls_fingerprint
    shipped = "haproxy/certs/cluster.pem"
    rig.runner.watch = [shipped]

    fingerprint = operate.rotate_certificate(rig.ctx)

    assert fingerprint != old and rig.cluster().tls_fingerprint == fingerprint
    assert rig.runner.calls() == [("sync.yml", None)]
    served = pki.current_certificate(rig.layout, "demo")
    assert served is not None and rig.runner.seen[shipped] == served.pem_path.read_text()


# --- dynia cluster node remove | activate | add ----------------------------------------------


def test_removing_a_backup_hands_over_syncs_the_others_then_deletes_it(rig: Rig) -> None:
    cluster_nodes.remove_node(rig.ctx, "quiet-fox")

    assert rig.journal == [
        "handover.yml quiet-fox",
        "sync.yml amber-elk,misty-owl",
        "deleted c2",
    ]
    assert rig.runner.runs[0].extra_vars == {"dynia_handover_ports": [80, 443]}
    assert set(rig.cluster().nodes) == {"amber-elk", "misty-owl"}
    assert not (rig.layout.deploy_config_dir("demo") / "keepalived/quiet-fox.conf").exists()
    assert "172.30.9.11" not in rig.deployed("haproxy/haproxy.cfg")


def test_removing_a_node_while_another_is_dead_syncs_the_live_ones(rig: Rig) -> None:
    rig.probe.silent = {"amber-elk"}

    with pytest.raises(LeftBehindError, match="quiet-fox was removed, but amber-elk"):
        cluster_nodes.remove_node(rig.ctx, "quiet-fox")

    assert rig.journal == ["handover.yml quiet-fox", "sync.yml misty-owl", "deleted c2"]
    cluster = rig.cluster()
    assert set(cluster.nodes) == {"amber-elk", "misty-owl"}
    assert cluster.nodes["amber-elk"].status == NODE_OUT_OF_SYNC


def test_removing_the_master_moves_the_role_before_the_others_forget_it(rig: Rig) -> None:
    cluster_nodes.remove_node(rig.ctx, "misty-owl")

    assert rig.journal == [
        "handover.yml misty-owl",
        "reserved IP checked, MASTER amber-elk",  # the highest-priority backup took over
        "sync.yml amber-elk,quiet-fox",
        "deleted c1",
    ]
    cluster = rig.cluster()
    assert cluster.master is not None and cluster.master.name == "amber-elk"
    assert cluster.reserved_ip is not None and cluster.reserved_ip.attached_to == "amber-elk"


def test_removing_starts_from_the_master_keepalived_elected(rig: Rig) -> None:
    rig.probe.holder = "quiet-fox"  # it came back after a failover and kept the role
    cluster_nodes.remove_node(rig.ctx, "quiet-fox")
    assert rig.journal[:2] == ["handover.yml quiet-fox", "reserved IP checked, MASTER misty-owl"]
    assert "quiet-fox was MASTER: misty-owl took over the role" in rig.progress


def test_a_remove_whose_delete_failed_keeps_the_node_and_can_be_run_again(rig: Rig) -> None:
    rig.provider.fail_delete = True
    with pytest.raises(ProviderError):
        cluster_nodes.remove_node(rig.ctx, "quiet-fox")
    assert "quiet-fox" in rig.cluster().nodes  # state forgets it only after the delete

    rig.provider.fail_delete = False
    rig.runner.runs.clear()
    cluster_nodes.remove_node(rig.ctx, "quiet-fox")
    assert rig.runner.calls() == [
        ("handover.yml", "quiet-fox"),
        ("sync.yml", "amber-elk,misty-owl"),
    ]
    assert "quiet-fox" not in rig.cluster().nodes
    assert "c2" not in rig.provider.nodes


def test_activating_a_backup_raises_it_hands_over_then_rolls_out_the_priorities(rig: Rig) -> None:
    def keepalived_moves(run: Run) -> None:
        rig.probe.holder = "quiet-fox"  # the first backup takes over from the leaving MASTER

    rig.runner.after["handover.yml"] = keepalived_moves

    answer = cluster_nodes.activate_node(rig.ctx, "quiet-fox")

    assert answer == "HTTP 404"
    assert rig.journal == [
        "health.yml quiet-fox",
        "sync.yml quiet-fox",  # only its keepalived file changed: it becomes the first backup
        "handover.yml misty-owl",
        "sync.yml all",  # the final priorities
        "reserved IP checked, MASTER quiet-fox",
        "reserved IP checked, MASTER quiet-fox",
    ]
    priorities = {name: node.priority for name, node in rig.cluster().nodes.items()}
    assert priorities == {"quiet-fox": 150, "misty-owl": 100, "amber-elk": 99}


def test_activating_while_a_backup_is_dead_moves_the_role_and_names_the_dead_one(
    rig: Rig,
) -> None:
    def keepalived_moves(run: Run) -> None:
        rig.probe.holder = "quiet-fox"

    rig.runner.after["handover.yml"] = keepalived_moves
    rig.probe.silent = {"amber-elk"}

    with pytest.raises(LeftBehindError, match="quiet-fox is MASTER, but amber-elk did not answer"):
        cluster_nodes.activate_node(rig.ctx, "quiet-fox")

    assert [line for line in rig.journal if line.startswith(("sync", "handover"))] == [
        "sync.yml quiet-fox",
        "handover.yml misty-owl",
        "sync.yml misty-owl,quiet-fox",  # the final priorities, on the nodes that answer
    ]
    cluster = rig.cluster()
    assert cluster.master is not None and cluster.master.name == "quiet-fox"
    assert cluster.nodes["amber-elk"].status == NODE_OUT_OF_SYNC


def test_activating_a_node_that_fails_its_health_check_changes_nothing(rig: Rig) -> None:
    before = rig.ctx.store.path.read_bytes()
    rig.runner.failing["health.yml"] = {"quiet-fox"}
    with pytest.raises(RunnerError):
        cluster_nodes.activate_node(rig.ctx, "quiet-fox")
    assert rig.runner.calls() == [("health.yml", "quiet-fox")]
    assert rig.ctx.store.path.read_bytes() == before


def test_adding_a_node_is_one_roll_that_serves_on_it_before_its_peers_route_to_it(
    rig: Rig,
) -> None:
    node = cluster_nodes.add_node(rig.ctx)

    assert rig.provider.created == [node.name]
    new = node.name
    assert rig.journal == [
        f"room checked for {new}",
        f"created {new}",
        f"bootstrap.yml {new}",
        f"images of web to {','.join(sorted([new, 'amber-elk', 'misty-owl', 'quiet-fox']))}",
        "sync.yml all",
    ]
    bootstrap, roll = rig.runner.runs
    assert bootstrap.extra_vars == {"dynia_bootstrap_hold_components": ["keepalived"]}
    assert roll.extra_vars["dynia_sync_drain"] == cluster_nodes.join_roll_drain([new])
    # The new node first (its services answer before a peer routes to it), the MASTER last.
    assert roll.hosts == [new, "amber-elk", "quiet-fox", "misty-owl"]
    cluster = rig.cluster()
    assert cluster.nodes[new].status == NODE_READY and cluster.nodes[new].priority == 98


def test_a_node_joins_while_a_peer_is_dead_and_the_peer_is_marked_behind(rig: Rig) -> None:
    rig.probe.silent = {"quiet-fox"}

    with pytest.raises(LeftBehindError, match="joined, but quiet-fox did not answer"):
        cluster_nodes.add_node(rig.ctx)

    bootstrap, roll = rig.runner.runs
    new = bootstrap.limit
    assert roll.limit == f"{new},amber-elk,misty-owl"
    assert roll.hosts == [new, "amber-elk", "misty-owl"]
    cluster = rig.cluster()
    assert cluster.nodes[new].status == NODE_READY
    assert cluster.nodes["quiet-fox"].status == NODE_OUT_OF_SYNC


RELOADED = {"component": "haproxy", "unit": "haproxy", "state": "reloaded"}
RESTARTED = {"component": "keepalived", "unit": "keepalived", "state": "restarted"}


@pytest.mark.parametrize(
    ("node", "services", "reload", "drained"),
    [
        ("new-node", ["service:web"], [RELOADED], False),  # no HAProxy routes to it yet
        ("amber-elk", [], [RELOADED, {**RELOADED, "component": "caddy"}], False),
        ("amber-elk", [], [], False),  # nothing changed on it
        ("amber-elk", ["service:web"], [RELOADED], True),  # a service is recreated
        ("amber-elk", [], [RELOADED, RESTARTED], True),  # a program restarts
        ("amber-elk", None, None, False),  # the role checks its arguments before its plan
    ],
)
def test_a_join_drains_only_peers_whose_change_disrupts_requests(
    node: str, services: list[str] | None, reload: list[dict[str, str]] | None, drained: bool
) -> None:
    """The roll's drain decision, rendered per node as Ansible renders the extra var."""
    expression = cluster_nodes.join_roll_drain(["new-node"])
    planned = {"dynia_sync_services": services, "dynia_sync_reload": reload}
    facts = {"inventory_hostname": node} | {k: v for k, v in planned.items() if v is not None}
    ansible_like = jinja2.Environment(undefined=jinja2.StrictUndefined)  # undefined is an error
    assert ansible_like.from_string(expression).render(facts) == str(drained)


def test_an_interrupted_add_is_finished_by_the_next_one_not_repeated(rig: Rig) -> None:
    rig.runner.interrupt = "sync.yml"
    with pytest.raises(KeyboardInterrupt):
        cluster_nodes.add_node(rig.ctx)
    joining = [n for n in rig.cluster().nodes.values() if n.status == NODE_JOINING]
    assert len(joining) == 1

    rig.runner.runs.clear()
    node = cluster_nodes.add_node(rig.ctx)

    assert node.name == joining[0].name
    assert rig.provider.created == [node.name]  # created once
    assert [run.playbook for run in rig.runner.runs] == ["bootstrap.yml", "sync.yml"]
    assert rig.runner.runs[1].hosts[0] == node.name
    assert len(rig.cluster().nodes) == 4
    assert rig.cluster().nodes[node.name].status == NODE_READY


def test_adding_a_node_past_the_priority_range_is_refused_before_anything_is_made(
    rig: Rig,
) -> None:
    with rig.ctx.store.transaction("test: a cluster at the size limit") as txn:
        nodes = txn.state.clusters["demo"].nodes
        for index in range(infra.MAX_NODES - len(nodes)):
            name, address = f"extra-{index}", f"172.30.10.{index + 1}"
            nodes[name] = Node(name, f"x{index}", address, address, 98 - index, "ready")
    before = rig.ctx.store.path.read_bytes()

    with pytest.raises(UsageError) as refused:
        cluster_nodes.add_node(rig.ctx)

    assert f"at most {infra.MAX_NODES} nodes" in str(refused.value)
    assert "VRRP priority" in str(refused.value) and "second cluster" in (refused.value.hint or "")
    assert rig.provider.created == [] and rig.runner.runs == []
    assert rig.ctx.store.path.read_bytes() == before


def test_a_node_added_below_the_lowest_priority_renumbers_the_backups(rig: Rig) -> None:
    with rig.ctx.store.transaction("test: removals left the backups at the bottom") as txn:
        nodes = txn.state.clusters["demo"].nodes
        nodes["amber-elk"].priority, nodes["quiet-fox"].priority = 2, 1

    node = cluster_nodes.add_node(rig.ctx)

    priorities = {name: n.priority for name, n in rig.cluster().nodes.items()}
    assert priorities == {"misty-owl": 150, "amber-elk": 100, "quiet-fox": 99, node.name: 98}


# --- dynia cluster create --------------------------------------------------------------------


def test_an_interrupted_create_resumes_and_reloads_every_component(
    tmp_path: Path, no_validators: None
) -> None:
    home = tmp_path / "home"
    rig = make_rig(home)
    request = CreateRequest("edge", 2, "local", "small", "local", "local")
    rig.runner.interrupt = "sync.yml"
    with pytest.raises(KeyboardInterrupt):
        create_cluster(rig.ctx, request)
    assert rig.runner.calls() == [("bootstrap.yml", None), ("sync.yml", None)]

    create_cluster(rig.ctx, request)

    assert len(rig.provider.created) == 2  # no node made twice
    runs = rig.runner.runs[2:]
    assert [run.playbook for run in runs] == ["bootstrap.yml", "sync.yml"]
    assert runs[1].extra_vars == {"dynia_sync_force": True}  # a resumed roll reloads all
    cluster = rig.cluster("edge")
    assert cluster.status == STATUS_INFRA_READY
    assert rig.ctx.store.load().current_cluster == "edge"
    assert cluster.master is not None
    assert rig.journal[-1] == f"reserved IP checked, MASTER {cluster.master.name}"
    assert rig.layout.ssh_private_key("edge").is_file()


def test_the_chosen_image_is_recorded_and_nodes_added_later_boot_it(
    tmp_path: Path, no_validators: None
) -> None:
    rig = make_rig(tmp_path / "home")
    request = CreateRequest("trixie", 2, "local", "small", "local", "local", image="debian-13")
    create_cluster(rig.ctx, request)
    assert rig.cluster("trixie").image == "debian-13"

    added = cluster_nodes.add_node(rig.ctx)  # create made "trixie" the current cluster

    assert set(rig.provider.images) == {*rig.cluster("trixie").nodes}
    assert set(rig.provider.images.values()) == {"debian-13"}
    assert added.name in rig.provider.images


def test_an_unknown_local_image_is_refused_before_anything_is_recorded(
    tmp_path: Path, no_validators: None
) -> None:
    rig = make_rig(tmp_path / "home")
    request = CreateRequest("sid", 2, "local", "small", "local", "local", image="debian-14")
    with pytest.raises(UsageError, match="unknown local node image 'debian-14'") as raised:
        create_cluster(rig.ctx, request)
    assert "debian-12, debian-13" in (raised.value.hint or "")
    assert "sid" not in rig.ctx.store.load().clusters and rig.provider.created == []


# --- dynia cluster delete --------------------------------------------------------------------


def test_delete_stops_services_deletes_every_node_then_forgets_the_cluster(rig: Rig) -> None:
    with rig.ctx.store.transaction("test: no routes, so no DNS provider") as txn:
        txn.state.clusters["demo"].routes = {}
    rig.runner.failing["teardown.yml"] = {"quiet-fox"}  # a dead node is deleted all the same

    delete_cluster(rig.ctx, "demo", purge_volumes=True)

    assert rig.journal == [
        "teardown.yml all",
        "deleted c3",
        "deleted c1",
        "deleted c2",
        "network deleted",
    ]
    assert rig.runner.runs[0].extra_vars == {"dynia_teardown_purge_volumes": True}
    assert "  could not stop services on quiet-fox; deleting it anyway" in rig.progress
    state = rig.ctx.store.load()
    assert state.clusters == {} and state.current_cluster is None
    assert not rig.layout.deploy_config_dir("demo").exists()
    assert rig.provider.nodes == {}


# --- the boundary itself ---------------------------------------------------------------------


def test_only_the_context_runs_playbooks_in_the_operations_layer() -> None:
    """rollout.run calls the context's runner; no operation reaches for the real one."""
    operations = Path(operate.__file__).parent
    for module in sorted(operations.glob("*.py")):
        tree = ast.parse(module.read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        modules = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert "run_playbook" not in imported, module.name
        assert "dynia.runner.run" not in modules, module.name


def test_the_cli_builds_one_context_per_command_with_the_real_runner(tmp_path: Path) -> None:
    app = AppContext.from_options(home=str(tmp_path), cluster_name="prod")
    with click.Context(click.Command("sync")):
        ctx = app.run_context
        assert app.run_context is ctx  # built once, shared by the command's operations
        assert ctx.runner is run_playbook and ctx.cluster_option == "prod"
        assert ctx.layout.root == tmp_path and ctx.on_event is not None
        assert ctx.without_live_progress().on_event is None
