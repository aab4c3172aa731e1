"""The operations' waits (dynia.waiting.wait_until): what they poll, and what they raise when
the time is up - the same error class, message and hint as the operator has always seen.

Timeouts of 0 check once and never pause; the few tests that let a wait go round once pause
for its real interval (0.5 s or 1 s).
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sample_state import sample_cluster

from dynia.errors import ProviderError, VerifyError
from dynia.operations import certificates, cluster_nodes, host_keys, infra
from dynia.operations.probe import LiveProbe
from dynia.operations.run_context import RunContext
from dynia.operations.verify import verify_route
from dynia.paths import HomeLayout
from dynia.ssh import HostKeyMismatchError, SshError
from dynia.state import StateStore
from dynia.state.models import MASTER_PRIORITY, Cluster, Node


class HolderProbe:
    """Answers "does this node hold the MASTER's address" from a script of holders."""

    def __init__(self, holders: list[str | None]) -> None:
        self.holders = holders
        self.asked: list[str] = []

    def holds_master_address(self, layout: HomeLayout, cluster: Cluster, node: Node) -> bool:
        self.asked.append(node.name)
        holder = self.holders[0] if len(self.holders) == 1 else self.holders.pop(0)
        return node.name == holder


def context(tmp_path: Path, probe: Any) -> RunContext:
    return RunContext(
        layout=HomeLayout(tmp_path), store=StateStore(tmp_path), runner=None, probe=probe
    )  # type: ignore[arg-type]  # no playbook runs here


# --- node activate: the target must end up holding the Reserved IP ---------------------------


def test_waiting_for_the_new_master_gives_up_with_the_keepalived_hint(tmp_path: Path) -> None:
    cluster = sample_cluster()
    probe = HolderProbe(["misty-owl"])
    ctx = context(tmp_path, probe)

    with pytest.raises(VerifyError) as raised:
        cluster_nodes._wait_until_holder(ctx, cluster, cluster.nodes["quiet-fox"], timeout=0)

    assert raised.value.message == (
        "quiet-fox has the highest priority but keepalived did not give it the Reserved IP "
        "172.30.9.250 within 0s"
    )
    assert raised.value.hint == (
        "check keepalived on the nodes (`journalctl -u keepalived`), then `dynia repair --force`"
    )
    assert probe.asked == ["quiet-fox"]  # asked once, no pause


def test_waiting_for_the_new_master_returns_once_it_holds_the_address(tmp_path: Path) -> None:
    cluster = sample_cluster()
    probe = HolderProbe(["misty-owl", "quiet-fox"])  # keepalived moves it after one look
    cluster_nodes._wait_until_holder(
        context(tmp_path, probe), cluster, cluster.nodes["quiet-fox"], timeout=5
    )
    assert probe.asked == ["quiet-fox", "quiet-fox"]


# --- adopt_live_master: record the node keepalived elected --------------------------------------


def test_adopting_with_no_holder_and_no_time_to_wait_changes_nothing(tmp_path: Path) -> None:
    cluster = sample_cluster()
    before = {name: node.priority for name, node in cluster.nodes.items()}
    probe = HolderProbe([None])

    assert infra.adopt_live_master(context(tmp_path, probe), cluster, wait=0) is False

    assert probe.asked == ["misty-owl", "amber-elk", "quiet-fox"]  # every node, once
    assert {name: node.priority for name, node in cluster.nodes.items()} == before


def test_adopting_waits_for_keepalived_to_elect_and_records_the_holder(tmp_path: Path) -> None:
    cluster = sample_cluster()
    # No node holds the address on the first look (three questions); quiet-fox on the next.
    probe = HolderProbe([None, None, None, "quiet-fox"])

    assert infra.adopt_live_master(context(tmp_path, probe), cluster, wait=5) is True

    assert cluster.nodes["quiet-fox"].priority == MASTER_PRIORITY


def test_adopting_the_master_state_already_has_changes_nothing(tmp_path: Path) -> None:
    cluster = sample_cluster()
    assert infra.adopt_live_master(context(tmp_path, HolderProbe(["misty-owl"])), cluster) is False
    assert cluster.nodes["misty-owl"].priority == MASTER_PRIORITY


# --- the Reserved IP answers over HTTP ---------------------------------------------------------


@pytest.fixture
def http_answers() -> Iterator[tuple[int, list[int]]]:
    """A local HTTP server answering each GET with the next scripted status (the last repeats)."""
    statuses: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = statuses[0] if len(statuses) == 1 else statuses.pop(0)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None: ...

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], statuses
    server.shutdown()
    server.server_close()


def local_reserved_ip(port: int) -> Cluster:
    cluster = sample_cluster()
    assert cluster.reserved_ip is not None
    cluster.reserved_ip.address = "127.0.0.1"
    cluster.settings.http_port = port
    return cluster


def test_the_reserved_ip_answered_by_a_node(http_answers: tuple[int, list[int]]) -> None:
    port, statuses = http_answers
    statuses[:] = [503, 404]  # HAProxy before a node passes its check, then Caddy's "no route"
    assert LiveProbe().wait_for_reserved_ip(local_reserved_ip(port), timeout=5) == "HTTP 404"


def test_the_reserved_ip_answered_only_by_haproxy_times_out_with_its_last_answer(
    http_answers: tuple[int, list[int]],
) -> None:
    port, statuses = http_answers
    statuses[:] = [503]

    with pytest.raises(VerifyError) as raised:
        LiveProbe().wait_for_reserved_ip(local_reserved_ip(port), timeout=0)

    assert raised.value.message == (
        f"the Reserved IP 127.0.0.1 did not answer http://127.0.0.1:{port}/ within 0s (HTTP 503)"
    )
    assert raised.value.hint == (
        "check keepalived on the nodes (`dynia drift-check`), then `dynia repair --force`"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_silent_reserved_ip_times_out_naming_the_connection_error() -> None:
    with pytest.raises(VerifyError, match=r"within 0s \(.*refused"):
        LiveProbe().wait_for_reserved_ip(local_reserved_ip(free_port()), timeout=0)


# --- verify_route: DNS, then TLS and the health path --------------------------------------------


class ProxiedRecords:
    """A DNS provider double whose API holds one A record (proxied records are read, not
    resolved)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def find_zone(self, domain: str) -> str:
        return "demo.test"

    def list_records(self, zone: str) -> list[Any]:
        return [SimpleNamespace(type="A", name="web.demo.test", content=self.address)]


def proxied_cluster(tmp_path: Path, https_port: int) -> Cluster:
    cluster = local_reserved_ip(80)
    cluster.settings.dns_proxied = True
    cluster.settings.https_port = https_port
    certificates.issue_certificate(HomeLayout(tmp_path), cluster)
    return cluster


def test_verify_route_times_out_with_the_last_problem_it_found(tmp_path: Path) -> None:
    cluster = proxied_cluster(tmp_path, free_port())
    dns = ProxiedRecords("10.9.9.9")

    with pytest.raises(VerifyError) as raised:
        verify_route(HomeLayout(tmp_path), cluster, "web.demo.test", dns, timeout=0)  # type: ignore[arg-type]

    assert raised.value.message == (
        "web.demo.test its proxied A record holds 10.9.9.9, not the Reserved IP 127.0.0.1"
    )
    assert raised.value.hint == "fix the A record in the zone"


def test_verify_route_reports_a_failed_connection_as_a_verify_error(tmp_path: Path) -> None:
    cluster = proxied_cluster(tmp_path, free_port())
    dns = ProxiedRecords("127.0.0.1")

    with pytest.raises(VerifyError, match=r"^https://web.demo.test/healthz failed: .*refused"):
        verify_route(HomeLayout(tmp_path), cluster, "web.demo.test", dns, timeout=0)  # type: ignore[arg-type]


# --- host key rotation: ssh is retried while sshd reloads, a failing script is not --------------


@pytest.fixture
def ssh_answers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Scripted outcomes of ssh.run_ssh: an exception to raise or an exit code."""
    script: list[Any] = []

    def run_ssh(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        outcome = script.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return subprocess.CompletedProcess(args, outcome, b"ssh-ed25519 AAAA\n", b"no keygen")

    monkeypatch.setattr(host_keys.ssh, "run_ssh", run_ssh)
    return script


def run_script(tmp_path: Path, timeout: float) -> subprocess.CompletedProcess[bytes]:
    cluster = sample_cluster()
    node = cluster.nodes["quiet-fox"]
    return host_keys._run(HomeLayout(tmp_path), cluster, node, "true", timeout)


def test_ssh_is_retried_while_sshd_reloads(tmp_path: Path, ssh_answers: list[Any]) -> None:
    ssh_answers[:] = [HostKeyMismatchError("the key it is dropping"), 0]
    assert run_script(tmp_path, timeout=5).returncode == 0
    assert ssh_answers == []


def test_ssh_that_never_connects_raises_its_last_error(
    tmp_path: Path, ssh_answers: list[Any]
) -> None:
    ssh_answers[:] = [SshError("connection refused"), 0]
    with pytest.raises(SshError, match="connection refused"):
        run_script(tmp_path, timeout=0)
    assert ssh_answers == [0]  # no second try after the time is up


def test_a_failing_script_is_not_retried(tmp_path: Path, ssh_answers: list[Any]) -> None:
    ssh_answers[:] = [1, 0]
    with pytest.raises(ProviderError) as raised:
        run_script(tmp_path, timeout=5)
    assert raised.value.message == (
        "replacing the bootstrap SSH host key of node quiet-fox failed (exit 1): no keygen"
    )
    assert not isinstance(raised.value, SshError)
    assert ssh_answers == [0]
