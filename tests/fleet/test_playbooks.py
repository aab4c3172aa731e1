"""The playbooks on three real local nodes, through the runner and through ansible-playbook."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ansible_fixtures import AnsibleCluster

from dynia.errors import RunnerError
from dynia.runner import run_playbook

pytestmark = pytest.mark.fleet

CADDYFILE = "/etc/caddy/Caddyfile"
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def _expected_sha(cluster: AnsibleCluster, target: str, node: str) -> str:
    files = cluster.manifest()["files"]
    return next(f["sha256"] for f in files if f["target"] == target and node in f["nodes"])


def _recap(output: str) -> dict[str, tuple[int, int, int]]:
    return {m[1]: (int(m[3]), int(m[4]), int(m[5])) for m in RECAP.finditer(output)}


def test_noop_sync_changes_nothing(bootstrapped_cluster: AnsibleCluster) -> None:
    started = time.monotonic()
    result = run_playbook(bootstrapped_cluster.project, "sync.yml")
    elapsed = time.monotonic() - started
    print(f"no-op sync of 3 nodes: {elapsed:.1f} s")
    assert result.ok
    assert sorted(result.hosts) == bootstrapped_cluster.node_names
    assert {name: host.changed for name, host in result.hosts.items()} == dict.fromkeys(
        bootstrapped_cluster.node_names, 0
    )
    assert result.changed_files == {}
    # A wide bound: another worker's cluster may share the cores; the figure is printed above.
    assert elapsed < 30


def test_drift_check_reports_the_hand_edit_and_sync_fixes_only_it(
    bootstrapped_cluster: AnsibleCluster,
) -> None:
    cluster = bootstrapped_cluster
    victim = cluster.node_names[1]
    cluster.ssh(victim, f"echo '# edited by hand' >> {CADDYFILE}")
    edited_sha = cluster.remote_sha256(victim, CADDYFILE)

    started = time.monotonic()
    drift = run_playbook(cluster.project, "drift-check.yml")
    elapsed = time.monotonic() - started
    print(f"drift-check of 3 nodes: {elapsed:.1f} s")
    assert drift.ok and elapsed < 20  # wide: the cores may be shared; printed above
    assert {node: entries for node, entries in drift.reports.items() if entries} == {
        victim: [
            {
                "node": victim,
                "path": CADDYFILE,
                "reasons": ["content"],
                "expected": _expected_sha(cluster, CADDYFILE, victim),
                "actual": edited_sha,
                "mode_expected": "0644",
                "mode_actual": "0644",
                "owner_expected": "root",
                "owner_actual": "root",
                "group_expected": "root",
                "group_actual": "root",
            }
        ]
    }
    # Read-only even without --check: the edit is still there.
    assert cluster.remote_sha256(victim, CADDYFILE) == edited_sha

    synced = run_playbook(cluster.project, "sync.yml")
    assert synced.changed_files == {victim: [CADDYFILE]}
    assert cluster.remote_sha256(victim, CADDYFILE) == _expected_sha(cluster, CADDYFILE, victim)
    others = [name for name in cluster.node_names if name != victim]
    assert all(synced.hosts[name].changed == 0 for name in others)
    assert not any(run_playbook(cluster.project, "drift-check.yml").reports.values())


def test_ansible_playbook_by_hand_matches_the_runner(bootstrapped_cluster: AnsibleCluster) -> None:
    cluster = bootstrapped_cluster
    victim = cluster.node_names[2]
    graph = cluster.ansible("ansible-inventory", "--graph")
    assert graph.returncode == 0, graph.stderr
    assert f"@dynia_{cluster.cluster.name}" in graph.stdout and victim in graph.stdout

    recaps = []
    for run in ("by hand", "runner"):
        cluster.ssh(victim, f"echo '# drift' >> {CADDYFILE}; chmod 0600 {CADDYFILE}")
        if run == "by hand":
            proc = cluster.ansible("ansible-playbook", "sync.yml")
            assert proc.returncode == 0, proc.stdout[-3000:]
            recaps.append(_recap(proc.stdout))
        else:
            result = run_playbook(cluster.project, "sync.yml")
            recaps.append(
                {n: (h.changed, int(h.unreachable), h.failed) for n, h in result.hosts.items()}
            )
            assert result.changed_files == {victim: [CADDYFILE]}
        assert cluster.ssh(victim, f"stat -c %a {CADDYFILE}").strip() == "644"
        assert cluster.remote_sha256(victim, CADDYFILE) == _expected_sha(cluster, CADDYFILE, victim)
    assert recaps[0] == recaps[1]
    assert recaps[0][victim][0] > 0


def test_failed_health_check_restores_the_node_and_stops_the_roll(
    bootstrapped_cluster: AnsibleCluster,
) -> None:
    cluster = bootstrapped_cluster
    original_sha = {node: _expected_sha(cluster, CADDYFILE, node) for node in cluster.node_names}
    # A valid Caddyfile whose health endpoint answers 503: validation passes, health fails.
    _replace_caddyfiles(
        cluster,
        lambda good: good.replace(b'respond "ok', b'respond "broken').replace(b'" 200', b'" 503'),
    )
    try:
        with pytest.raises(RunnerError) as caught:
            run_playbook(cluster.project, "sync.yml")
    finally:
        cluster.render()
    error = caught.value
    result = error.result  # type: ignore[attr-defined]
    failed = result.failed_hosts
    assert len(failed) == 1
    first = failed[0]
    assert first in str(error) and "health" in str(error)
    # The failing node has its previous Caddyfile back; the roll stopped before the others.
    assert cluster.remote_sha256(first, CADDYFILE) == original_sha[first]
    assert len(result.hosts) == 1
    assert cluster.ssh(first, "curl -s http://127.0.0.1:8080/dynia-health").startswith("ok ")
    assert run_playbook(cluster.project, "sync.yml").changed == 0


def _replace_caddyfiles(cluster: AnsibleCluster, change: Callable[[bytes], bytes]) -> None:
    """Change every node's Caddyfile in deploy-config (each binds its own node's address)."""
    for node in cluster.node_names:
        source = f"caddy/{node}.Caddyfile"
        good = (cluster.project / source).read_bytes()
        changed = change(good)
        assert changed != good
        _replace_in_deploy_config(cluster, source, changed)


def _replace_in_deploy_config(cluster: AnsibleCluster, source: str, content: bytes) -> None:
    import hashlib

    (cluster.project / source).write_bytes(content)
    manifest = cluster.manifest()
    for entry in manifest["files"]:
        if entry["source"] == source:
            entry["sha256"] = hashlib.sha256(content).hexdigest()
    (cluster.project / "metadata.json").write_text(json.dumps(manifest, indent=2))


def test_no_token_lands_on_disk(
    bootstrapped_cluster: AnsibleCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "dop_v1_" + os.urandom(16).hex()
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", token)
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.iterdir())
    cluster = bootstrapped_cluster
    cluster.ssh(cluster.node_names[0], f"echo '# drift' >> {CADDYFILE}")
    run_playbook(cluster.project, "drift-check.yml")
    run_playbook(cluster.project, "sync.yml")
    new_in_tmp = set(tmp.iterdir()) - before
    # Run folders are named after the process that runs the playbooks; other test workers may
    # have theirs open right now.
    assert not [p for p in new_in_tmp if p.name.startswith(f"dynia-run-{os.getpid()}-")]
    folders = [cluster.layout.root, cluster.fleet.directory, Path.home() / ".ansible", *new_in_tmp]
    found = subprocess.run(
        ["grep", "-rlsF", token, *map(str, folders)], capture_output=True, text=True, check=False
    )
    assert found.stdout == "", f"token found in {found.stdout}"


KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"


def test_a_keepalived_file_that_fails_its_config_test_never_lands(
    bootstrapped_cluster: AnsibleCluster,
) -> None:
    cluster = bootstrapped_cluster
    victim = cluster.node_names[1]
    source = f"keepalived/{victim}.conf"
    good = (cluster.project / source).read_bytes()
    before = cluster.remote_sha256(victim, KEEPALIVED_CONF)
    _replace_in_deploy_config(cluster, source, good.replace(b"priority", b"priorty"))
    try:
        with pytest.raises(RunnerError) as caught:
            run_playbook(cluster.project, "sync.yml")
    finally:
        cluster.render()
    assert victim in str(caught.value) and KEEPALIVED_CONF in str(caught.value)
    assert cluster.remote_sha256(victim, KEEPALIVED_CONF) == before
    assert cluster.ssh(victim, "systemctl is-active keepalived").strip() == "active"
    assert run_playbook(cluster.project, "sync.yml").changed == 0


def test_a_joining_node_starts_vrrp_only_once_the_master_advertises_to_it(
    bootstrapped_cluster: AnsibleCluster,
) -> None:
    cluster = bootstrapped_cluster
    master = cluster.cluster.master
    assert master is not None
    joining = cluster.node_names[-1]
    assert joining != master.name
    # The joining node has no VRRP yet, and the MASTER does not list it as a peer: the state of
    # a cluster right after a node was added and bootstrapped.
    cluster.ssh(joining, f"systemctl stop keepalived && rm {KEEPALIVED_CONF}")
    joining_ip = cluster.cluster.nodes[joining].private_ip
    forget_peer = f"sed -i '/^ *{joining_ip}$/d' {KEEPALIVED_CONF}"
    cluster.ssh(master.name, f"{forget_peer} && systemctl reload keepalived")
    since = cluster.ssh(joining, "date +%s").strip()

    proc = cluster.ansible("ansible-playbook", "sync.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    time.sleep(2)  # longer than VRRP's master-down interval (3 adverts of 0.5 s)

    journal = cluster.ssh(joining, f"journalctl -q --no-pager -u keepalived --since @{since}")
    assert "Entering BACKUP STATE" in journal
    assert "Entering MASTER STATE" not in journal, journal
    assert cluster.ssh(joining, "systemctl is-active keepalived").strip() == "active"
    # Its keepalived was changed in the last play, after the MASTER's peer list was fixed.
    last_play = proc.stdout.rsplit("PLAY [", 1)[1]
    assert last_play.startswith("Start VRRP on the nodes that join the cluster")
    assert _recap(proc.stdout)[joining][0] > 0
    assert f"changed: [{joining}]" in last_play
    assert f"[{master.name}]" not in last_play
    assert not any(run_playbook(cluster.project, "drift-check.yml").reports.values())


def test_handover_by_hand_moves_the_reserved_ip_to_the_first_backup(
    bootstrapped_cluster: AnsibleCluster,
) -> None:
    cluster = bootstrapped_cluster
    address = cluster.cluster.reserved_ip.address  # type: ignore[union-attr]

    def holders() -> list[str]:
        return [n for n in cluster.node_names if f" {address}/" in cluster.ssh(n, "ip -4 -o a")]

    # The node that holds the address hands it over. That is the MASTER of state, unless an
    # election on these shared, busy cores moved it earlier (keepalived does not preempt back).
    (holder,) = holders()
    master = cluster.cluster.nodes[holder]
    if master is not cluster.cluster.master:
        print(f"\n{holder} holds the Reserved IP, not the MASTER of state: it hands over")
    first_backup = max(
        (n for n in cluster.cluster.nodes.values() if n is not master),
        key=lambda n: (n.priority, n.name),
    )
    try:
        proc = cluster.ansible("ansible-playbook", "handover.yml", "--limit", master.name)
        assert proc.returncode == 0, proc.stdout[-3000:]
        time.sleep(1)
        assert holders() == [first_backup.name]
        assert cluster.ssh(master.name, "systemctl is-active keepalived || true").strip() in (
            "inactive",
            "failed",
        )
        assert "dynia handover" not in cluster.ssh(master.name, "iptables -S INPUT")
    finally:
        cluster.ssh(master.name, "systemctl start keepalived")
    # keepalived runs without preemption: the old MASTER comes back as a BACKUP and the address
    # does not move a second time.
    time.sleep(3)
    assert holders() == [first_backup.name]


def test_a_sync_killed_half_way_is_reported_and_the_next_sync_finishes_it(
    bootstrapped_cluster: AnsibleCluster,
) -> None:
    cluster = bootstrapped_cluster
    _replace_caddyfiles(cluster, lambda good: good.replace(b'respond "ok', b'respond "fine'))
    try:
        # Killed right after the first node got its new file: its Caddy was not reloaded and
        # checked yet, and the files alone would say it is in sync.
        sync = subprocess.Popen(
            [str(Path(sys.executable).parent / "ansible-playbook"), "sync.yml"],
            cwd=cluster.project,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        assert sync.stdout is not None
        task = ""
        for line in sync.stdout:
            task = line if line.startswith("TASK [") else task
            copied = re.match(r"changed: \[(\S+)\]", line) if "Copy the changed" in task else None
            if copied:  # the node's only changed file is its Caddyfile
                os.killpg(sync.pid, signal.SIGKILL)
                break
        sync.wait(timeout=30)
        assert copied, "the sync never copied the Caddyfile"
        first = copied[1]
        assert cluster.remote_sha256(first, CADDYFILE) == _expected_sha(cluster, CADDYFILE, first)

        drift = run_playbook(cluster.project, "drift-check.yml")
        assert [(e["path"], e["reasons"]) for e in drift.reports[first]] == [
            (
                "/var/lib/dynia-sync-pending.json",
                ["a sync stopped before caddy were reloaded and checked"],
            )
        ]

        assert run_playbook(cluster.project, "sync.yml").ok
        for node in cluster.node_names:
            health = cluster.ssh(node, "curl -s http://127.0.0.1:8080/dynia-health")
            assert health.startswith("fine "), (node, health)
        assert not any(run_playbook(cluster.project, "drift-check.yml").reports.values())
        # Back in rotation on every HAProxy, the node the killed run had drained included.
        assert {node: _servers_out_of_rotation(cluster, node) for node in cluster.node_names} == {
            node: [] for node in cluster.node_names
        }
    finally:
        cluster.render()
        run_playbook(cluster.project, "sync.yml")


def _servers_out_of_rotation(cluster: AnsibleCluster, node: str) -> list[str]:
    """Servers that this node's HAProxy has drained or in maintenance."""
    stats = cluster.ssh(
        node, "echo 'show stat' | socat -t 2 stdio unix-connect:/run/haproxy/admin.sock"
    )
    rows = [line.split(",") for line in stats.splitlines() if line and not line.startswith("#")]
    return [row[1] for row in rows if len(row) > 17 and row[17] in ("DRAIN", "MAINT")]
