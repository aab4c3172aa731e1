"""Local nodes without an engine: clear errors, pinned host keys, private keys, names."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_invoke import run_dynia
from click.testing import CliRunner

from dynia.cli.main import cli
from dynia.errors import UsageError
from dynia.naming import new_node_name
from dynia.operations.local_setup import doctor
from dynia.providers.local.engine import EngineUnavailableError
from dynia.providers.local.nodes import LocalNodeProvider
from dynia.ssh import generate_key_pair, ssh_command


def test_engine_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dead = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", dead)
    with pytest.raises(EngineUnavailableError) as caught:
        LocalNodeProvider().ensure_network("anything")
    assert dead in caught.value.message and "dynia local setup" in (caught.value.hint or "")
    engine = doctor()[0]
    assert not engine.ok and dead in engine.detail and "DOCKER_HOST" in (engine.fix or "")
    result = CliRunner().invoke(cli, ["local", "doctor"])
    assert result.exit_code == 1
    assert "FAIL docker engine" in result.output
    assert "FAIL node image debian-12: not checked" in result.output


def test_doctor_checks_each_image_asked_for_and_refuses_an_unknown_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    home = tmp_path / "home"
    both = run_dynia(home, "local", "doctor", "--image", "debian-12", "--image", "debian-13")
    assert both.exit_code == 1
    assert "node image debian-12" in both.stdout and "node image debian-13" in both.stdout
    unknown = run_dynia(home, "local", "doctor", "--image", "debian-14")
    assert unknown.exit_code == 2
    assert "debian-14" in unknown.stderr and "debian-13" in unknown.stderr


def test_ssh_command_always_checks_the_pinned_host_key(tmp_path: Path) -> None:
    argv = ssh_command("10.0.0.5", tmp_path / "key", tmp_path / "known_hosts", "uptime")
    options = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]
    # Exactly one host-key policy, and no way around the pinned file.
    assert [o for o in options if o.startswith("StrictHostKeyChecking")] == [
        "StrictHostKeyChecking=yes"
    ]
    assert [o for o in options if o.startswith("UserKnownHostsFile")] == [
        f"UserKnownHostsFile={tmp_path / 'known_hosts'}"
    ]
    assert argv[-2:] == ["root@10.0.0.5", "uptime"]


def test_key_pair_is_private_and_kept(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    public = generate_key_pair(key, "c1")
    assert public.startswith("ssh-ed25519 ")
    assert key.stat().st_mode & 0o777 == 0o600
    assert generate_key_pair(key, "c1") == public


def test_node_names_are_two_words_and_unique() -> None:
    taken: set[str] = set()
    for _ in range(50):
        name = new_node_name(taken)
        assert name not in taken and name.count("-") >= 1
        taken.add(name)


def test_bad_cluster_name_is_refused_before_docker_is_touched() -> None:
    with pytest.raises(UsageError):
        LocalNodeProvider().ensure_network("Bad_Name")
