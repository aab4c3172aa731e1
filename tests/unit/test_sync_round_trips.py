"""The pieces that keep a rolling step to few round trips, tested without nodes.

Draining a node reaches every HAProxy at once from the controller over Ansible's own SSH
connections (action_plugins/dynia_haproxy_state); the node polls its health URLs itself
(library/dynia_node_health); the comparison writes and clears the pending marker and removes
the backups (library/dynia_file_state); one call reloads the changed units in order
(library/dynia_units); the role's filters feed them.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from role_code import load_role_code

haproxy_state = load_role_code("dynia_sync", "action_plugins/dynia_haproxy_state.py")
node_health = load_role_code("dynia_sync", "library/dynia_node_health.py")
file_state = load_role_code("dynia_sync", "library/dynia_file_state.py")
units = load_role_code("dynia_sync", "library/dynia_units.py")
filters = load_role_code("dynia_sync", "filter_plugins/dynia_sync.py")


# --- reaching every HAProxy at once ---------------------------------------------------------


def test_each_haproxy_is_reached_as_ansible_reaches_it_over_its_open_connection() -> None:
    host = {
        "name": "b",
        "address": "10.0.0.3",
        "user": "root",
        "port": 2222,
        "key": "/home/k/my keys/id_ed25519",
        "common_args": "-o UserKnownHostsFile='/home/k/known hosts' -o StrictHostKeyChecking=yes",
    }
    path = haproxy_state.control_path("%(directory)s/%%C", "/root/.ansible/cp")
    command = haproxy_state.ssh_command(
        host, "-o ControlMaster=auto -o ControlPersist=60s", path, ["/run/h.sock", "be/a", "drain"]
    )
    assert path == "/root/.ansible/cp/%C"  # the same socket Ansible opened: no new handshake
    assert command[:3] == ["ssh", "-o", "ControlMaster=auto"]
    assert "ControlPath=/root/.ansible/cp/%C" in command
    assert "UserKnownHostsFile=/home/k/known hosts" in command  # shell quoting kept
    for option in ('IdentityFile="/home/k/my keys/id_ed25519"', "User=root", "Port=2222"):
        assert option in command
    assert "BatchMode=yes" in command
    # ssh reads the key's path as one file, spaces and all.
    options = command[1 : command.index("--")]
    parsed = subprocess.run(["ssh", "-G", *options, "10.0.0.3"], capture_output=True, text=True)
    assert "identityfile /home/k/my keys/id_ed25519\n" in parsed.stdout, parsed.stderr
    assert command[-2] == "10.0.0.3"
    remote = command[-1]
    assert remote.startswith("bash -c ") and remote.endswith(
        " dynia-haproxy-state /run/h.sock be/a drain"
    )


def test_a_host_without_optional_connection_variables_gets_no_empty_options() -> None:
    command = haproxy_state.ssh_command(
        {"name": "a", "address": "a"}, "", "", ["s", "b/a", "ready"]
    )
    assert not any(
        part.startswith(("ControlPath=", "User=", "Port=", "IdentityFile=")) for part in command
    )


@pytest.mark.parametrize(
    ("rc", "stdout", "stderr", "expected"),
    [
        (0, "drain\n", "", (True, "drain")),
        (0, "skipped: no haproxy admin socket\n", "", (True, "skipped: no haproxy admin socket")),
        (2, "", "socat is not installed\n", (False, "socat is not installed")),
        (
            255,
            "",
            "ssh: connect to host b port 22: No route to host\n",
            (False, "ssh: connect to host b port 22: No route to host"),
        ),
        (1, "", "", (False, "exit 1")),
    ],
)
def test_what_each_host_answered(
    rc: int, stdout: str, stderr: str, expected: tuple[bool, str]
) -> None:
    assert haproxy_state.outcome(rc, stdout, stderr) == expected


def test_a_host_that_fails_fails_the_task_and_is_named_with_its_answer() -> None:
    params = {"server": "b", "state": "drain"}
    ok = haproxy_state.task_result(params, {"a": (True, "drain"), "c": (True, "skipped: x")})
    assert ok == {"changed": True, "hosts": {"a": "drain", "c": "skipped: x"}}
    failed = haproxy_state.task_result(
        params, {"a": (True, "drain"), "c": (False, "Connection refused")}
    )
    assert failed["failed"] is True
    assert failed["msg"] == "could not set b to drain on the HAProxy of c: c: Connection refused"


def test_ssh_targets_carry_each_hosts_connection_variables() -> None:
    hostvars = {
        "a": {
            "ansible_host": "10.0.0.2",
            "ansible_user": "root",
            "ansible_ssh_private_key_file": "/k",
        },
        "b": {"ansible_ssh_common_args": "-o X=1", "ansible_port": 2222, "ansible_user": ""},
    }
    assert filters.ssh_targets(["a", "b"], hostvars) == [
        {"name": "a", "address": "10.0.0.2", "user": "root", "key": "/k"},
        {"name": "b", "address": "b", "port": 2222, "common_args": "-o X=1"},
    ]


# --- the node's health, polled on the node --------------------------------------------------


def test_health_checks_are_the_node_then_each_changed_service_with_a_url() -> None:
    components = {
        "service:web": {"health_url": "http://127.0.0.1:20000/healthz"},
        "service:job": {},
    }
    checks = filters.health_checks(
        "http://127.0.0.1:8080/dynia-health", ["service:web", "service:job"], components
    )
    assert checks == [
        {"url": "http://127.0.0.1:8080/dynia-health", "statuses": [200]},
        {"url": "http://127.0.0.1:20000/healthz", "statuses": list(range(200, 300))},
    ]
    assert filters.health_checks("", [], components) == []


class Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` requests, then 200."""

    failures = 0
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        self.send_response(503 if type(self).seen <= type(self).failures else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Flaky.failures, Flaky.seen = 0, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/health"
    httpd.shutdown()


def test_health_is_polled_until_it_answers(server: str) -> None:
    Flaky.failures = 3
    assert (
        node_health.wait_healthy([{"url": server}], timeout=10, interval=0.01, request_timeout=2)
        is None
    )
    assert Flaky.seen == 4


def test_a_url_that_never_answers_healthy_is_named_with_its_last_answer(server: str) -> None:
    Flaky.failures = 10**6
    failure = node_health.wait_healthy(
        [{"url": server}], timeout=0.2, interval=0.01, request_timeout=2
    )
    assert failure == (server, "HTTP 503")


def test_a_url_nobody_listens_on_fails_with_the_reason() -> None:
    failure = node_health.wait_healthy(
        [{"url": "http://127.0.0.1:9/none"}], timeout=0, interval=0.01, request_timeout=1
    )
    assert failure is not None and failure[0] == "http://127.0.0.1:9/none"
    assert "refused" in failure[1].lower()


# --- the pending marker and the backups -----------------------------------------------------


def test_pending_marker_is_written_whole_and_read_back(tmp_path: Path) -> None:
    marker = tmp_path / "pending.json"
    file_state.write_pending(str(marker), ["service:web", "haproxy"])
    assert json.loads(marker.read_text()) == {"components": ["service:web", "haproxy"]}
    assert file_state.read_pending(str(marker)) == (True, ["service:web", "haproxy"])
    assert not (tmp_path / "pending.json.tmp").exists()


def test_removing_files_skips_the_ones_already_gone(tmp_path: Path) -> None:
    backup = tmp_path / "haproxy.cfg.1234.2026@10:00~"
    backup.write_text("old\n")
    assert file_state.remove_files([str(backup), str(tmp_path / "gone")]) == [str(backup)]
    assert not backup.exists()


# --- reloading the changed units in one call ------------------------------------------------


@pytest.mark.parametrize(
    ("state", "active", "verb"),
    [
        ("reloaded", True, "reload"),
        ("reloaded", False, "start"),  # as systemd_service: a stopped unit is started
        ("restarted", True, "restart"),
        ("restarted", False, "restart"),
    ],
)
def test_each_unit_gets_what_systemd_service_would_do(state: str, active: bool, verb: str) -> None:
    assert units.verb_for(state, active) == verb
