"""The runner on real ansible-runner runs against the local machine (no nodes needed)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dynia.cli.progress import ProgressPrinter
from dynia.errors import RunnerError
from dynia.runner import ProgressEvent, run_playbook

PLAYBOOK = """
- name: Work on the local machine
  hosts: all
  gather_facts: false
  tasks:
    - name: Write a marker
      ansible.builtin.copy:
        content: "marker\\n"
        dest: "{{ marker_dir }}/{{ inventory_hostname }}"
        mode: "0644"
    - name: Fail on request
      ansible.builtin.fail:
        msg: "requested failure on {{ inventory_hostname }}"
      when: fail_now | default(false) | bool
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "ansible.cfg").write_text(
        "[defaults]\ninventory = hosts.ini\nretry_files_enabled = False\n"
    )
    (folder / "hosts.ini").write_text(
        f"alpha ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        f"beta ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    (folder / "play.yml").write_text(PLAYBOOK)
    return folder


def test_success_counts_changes_and_streams_progress(project: Path, tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    result = run_playbook(
        project,
        "play.yml",
        extra_vars={"marker_dir": str(tmp_path)},
        limit="alpha",
        on_event=events.append,
        hosts=["alpha"],
    )
    assert result.ok and result.rc == 0
    assert list(result.hosts) == ["alpha"]
    assert result.hosts["alpha"].changed == 1 and result.hosts["alpha"].failures == []
    assert (tmp_path / "alpha").read_text() == "marker\n"
    assert [(e.host, e.index, e.total, e.task, e.status) for e in events] == [
        ("alpha", 1, 1, "Write a marker", "changed"),
        ("alpha", 1, 1, "Fail on request", "skipped"),
    ]
    again = run_playbook(project, "play.yml", extra_vars={"marker_dir": str(tmp_path)})
    assert {name: host.changed for name, host in again.hosts.items()} == {"alpha": 0, "beta": 1}


def test_check_mode_changes_nothing(project: Path, tmp_path: Path) -> None:
    result = run_playbook(project, "play.yml", extra_vars={"marker_dir": str(tmp_path)}, check=True)
    assert result.ok and not (tmp_path / "alpha").exists()


def test_failure_names_the_nodes_and_the_message(project: Path, tmp_path: Path) -> None:
    extra = {"marker_dir": str(tmp_path), "fail_now": True}
    with pytest.raises(RunnerError) as caught:
        run_playbook(project, "play.yml", extra_vars=extra)
    message = str(caught.value)
    assert "failed: alpha, beta" in message
    assert "requested failure on alpha" in message
    result = run_playbook(project, "play.yml", extra_vars=extra, raise_on_failure=False)
    assert not result.ok and result.failed_hosts == ["alpha", "beta"]
    assert result.hosts["beta"].failures == ["Fail on request: requested failure on beta"]


def test_unreachable_node_is_reported(project: Path, tmp_path: Path) -> None:
    (project / "hosts.ini").write_text(
        "gone ansible_host=127.0.0.1 ansible_port=9 ansible_connection=ssh "
        "ansible_ssh_common_args='-o ConnectTimeout=2'\n"
    )
    with pytest.raises(RunnerError) as caught:
        run_playbook(project, "play.yml", extra_vars={"marker_dir": str(tmp_path)})
    assert "unreachable: gone" in str(caught.value)
    assert caught.value.result.hosts["gone"].unreachable  # type: ignore[attr-defined]


def test_missing_project_points_at_render(tmp_path: Path) -> None:
    with pytest.raises(RunnerError) as caught:
        run_playbook(tmp_path, "sync.yml")
    assert caught.value.hint == "run `dynia render` for this cluster first"


def test_no_token_or_artifacts_left_behind(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "dop_v1_" + os.urandom(16).hex()
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", token)
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.iterdir())
    run_playbook(project, "play.yml", extra_vars={"marker_dir": str(tmp_path)})
    new = set(tmp.iterdir()) - before
    # Only this process's runs count: other dynia processes may be running on the machine.
    assert not [p for p in new if p.name.startswith(f"dynia-run-{os.getpid()}-")]
    found = subprocess.run(
        ["grep", "-rlsF", token, str(tmp_path), *map(str, new)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.stdout == ""


def test_progress_printer_plain_lines() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, live=False)
    printer(ProgressEvent("misty-owl", 2, 3, "Copy the changed files", "changed"))
    printer(ProgressEvent("misty-owl", 2, 3, "Skipped step", "skipped"))
    printer(ProgressEvent("misty-owl", 2, 3, "Check health", "ok"))
    printer(ProgressEvent("quiet-fox", 3, 3, "Check health", "failed"))
    assert stream.getvalue().splitlines() == [
        "node 2/3 misty-owl: Copy the changed files ... changed",
        "node 3/3 quiet-fox: Check health ... failed",
    ]


def test_progress_printer_live_keeps_changes_only() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, live=True)
    printer(ProgressEvent("quiet-fox", 1, 3, "Compare", "ok"))
    printer(ProgressEvent("quiet-fox", 1, 3, "Copy", "changed"))
    printer.close()
    kept = [line for line in stream.getvalue().split("\n") if "changed" in line]
    assert len(kept) == 1 and "node 1/3 quiet-fox: Copy ... " in kept[0]


def test_the_data_dir_never_holds_a_secret_even_while_the_run_lasts(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed before its clean-up leaves its data dir: nothing in it may be a secret.

    ansible-runner records the run's environment in artifacts/<id>/command; the data dir is
    scanned just before it is removed, with every file ansible-runner wrote still in place.
    """
    import dynia.runner.run as run_module

    secrets = {
        "DIGITALOCEAN_TOKEN": "dop_v1_" + os.urandom(32).hex(),
        "DIGITALOCEAN_FAILOVER_TOKEN": "dop_v1_" + os.urandom(32).hex(),
        "CLOUDFLARE_API_TOKEN": os.urandom(20).hex(),
        "AWS_SECRET_ACCESS_KEY": os.urandom(20).hex(),
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    scanned: list[Path] = []
    real_rmtree = run_module.shutil.rmtree

    def scan_then_remove(path: str | Path, *args: object, **kwargs: object) -> None:
        folder = Path(path)
        if folder.name.startswith("dynia-run-"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            files = [p for p in folder.rglob("*") if p.is_file()]
            assert any(p.name == "command" for p in files)  # the file that held the env
            for file in files:
                text = file.read_bytes()
                for name, value in secrets.items():
                    assert value.encode() not in text, f"{name} written to {file}"
            scanned.append(folder)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(run_module.shutil, "rmtree", scan_then_remove)
    result = run_playbook(project, "play.yml", extra_vars={"marker_dir": str(tmp_path)})
    assert result.ok and len(scanned) == 1 and not scanned[0].exists()
