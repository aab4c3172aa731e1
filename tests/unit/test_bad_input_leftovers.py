"""Bad input a reviewer found still answered badly: each is now refused or reported with a
message that says what to do, the exit code its case has, and the home left as it was.

drift-check and repair run against the orchestration rig (recording doubles of the runner and
probe); the rest run `dynia` in-process as an operator would.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import test_orchestration as orchestration
from cli_invoke import Outcome, run_dynia
from click.testing import CliRunner, Result
from sample_state import save_sample

from dynia.cli.context_obj import AppContext
from dynia.cli.drift_check import drift_check_command
from dynia.cli.main import main
from dynia.cli.repair import repair_command
from dynia.errors import ProviderError
from dynia.providers.credentials import lookup_token
from dynia.state import StateStore

Rig, DRIFTED = orchestration.Rig, orchestration.DRIFTED
no_validators, rig = orchestration.no_validators, orchestration.rig

TOKEN = "dop_v1_" + "a" * 64
FAILOVER = "dop_v1_" + "b" * 64


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders), the lock record aside."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.name != "state.json.lock"
    }


def invoke(rig: Rig, command: click.Command, *args: str) -> Result:
    """The command with the rig's doubles as its one RunContext."""
    app = AppContext.from_options(home=str(rig.home), cluster_name=None)
    app.__dict__["run_context"] = rig.ctx
    return CliRunner().invoke(command, list(args), obj=app, catch_exceptions=False)


# --- 1. drift-check: a node that does not answer is no drift sync can fix -------------------


def test_drift_check_names_an_unreachable_node_with_its_reason_not_none_none(rig: Rig) -> None:
    before = rig.ctx.store.path.read_bytes()
    rig.runner.lost = {"quiet-fox"}

    done = invoke(rig, drift_check_command)

    assert done.exit_code == 8  # not known to be in sync
    assert "None" not in done.output
    assert "quiet-fox: unreachable" in done.stdout and "No route to host" in done.stdout
    assert "Drift detected" not in done.stderr  # sync cannot reach it either
    assert "dynia cluster node remove quiet-fox" in done.stderr
    assert "`dynia sync` once it answers" in done.stderr
    assert rig.ctx.store.path.read_bytes() == before


def test_drift_check_with_drift_and_an_unreachable_node_advises_both(rig: Rig) -> None:
    rig.runner.lost = {"quiet-fox"}
    rig.runner.drift["drift-check.yml"] = {"misty-owl": [DRIFTED]}

    done = invoke(rig, drift_check_command)

    assert done.exit_code == 8
    assert f"misty-owl: {DRIFTED['path']} expected aa actual bb" in done.stdout
    assert "Drift detected: run `dynia sync`" in done.stderr
    assert "dynia cluster node remove quiet-fox" in done.stderr


# --- 2. cluster delete: "n" is an answer, Ctrl-C an interruption ----------------------------


def delete_answering(home: Path, answer: str) -> Outcome:
    runner = CliRunner()
    with runner.isolation(input=answer, env={"DYNIA_HOME": str(home)}) as (out, err, _):
        try:
            code = main(["cluster", "delete", "--name", "demo"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return Outcome(code, out.getvalue().decode(), err.getvalue().decode())


def test_declining_cluster_delete_deletes_nothing_and_exits_1(tmp_path: Path) -> None:
    save_sample(tmp_path)
    before = snapshot(tmp_path)

    done = delete_answering(tmp_path, "n\n")

    assert done.exit_code == 1, (done.stdout, done.stderr)
    assert "Nothing deleted." in done.stderr
    assert "Aborted" not in done.stderr
    assert snapshot(tmp_path) == before


def test_ctrl_c_at_the_cluster_delete_prompt_stays_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_sample(tmp_path)
    before = snapshot(tmp_path)

    def interrupted(*args: object, **kwargs: object) -> bool:
        raise click.Abort()  # what click.confirm raises on Ctrl-C (and on end of input)

    monkeypatch.setattr(click, "confirm", interrupted)
    done = delete_answering(tmp_path, "")

    assert done.exit_code == 130
    assert "Nothing deleted." not in done.stderr
    assert snapshot(tmp_path) == before


# --- 3. repair: a flag the chosen mode would ignore is refused ------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--check-only", "--batch", "2"], ["--batch", "--check-only", "changes no node"]),
        (["--check-only", "--batch", "1"], ["--batch", "--check-only"]),
        (["--force", "--json"], ["--json", "--force", "dynia repair --check-only --json"]),
    ],
)
def test_repair_refuses_a_flag_its_mode_would_ignore(
    rig: Rig, args: list[str], words: list[str]
) -> None:
    before = rig.ctx.store.path.read_bytes()

    done = invoke(rig, repair_command, *args)

    assert done.exit_code == 2, done.output
    for word in words:
        assert word in done.output
    assert rig.runner.calls() == []  # no check, no roll
    assert rig.ctx.store.path.read_bytes() == before


def test_repair_check_only_json_and_force_batch_still_work(rig: Rig) -> None:
    assert invoke(rig, repair_command, "--check-only", "--json").exit_code == 0
    assert invoke(rig, repair_command, "--force", "--batch", "2").exit_code == 0


# --- 4. a token with a newline is refused at once, never sent, never shown ------------------


@pytest.fixture
def no_credentials_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "credentials.json"
    monkeypatch.setenv("DYNIA_CREDENTIALS_FILE", str(path))
    return path


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("DIGITALOCEAN_TOKEN", TOKEN[:20] + "\n" + TOKEN[20:], "a newline"),
        ("DIGITALOCEAN_TOKEN", TOKEN + "\n", "a newline"),  # stripped silently before
        ("DIGITALOCEAN_TOKEN", " " + TOKEN, "a space"),
        ("CLOUDFLARE_API_TOKEN", TOKEN + "\r", "a carriage return"),
        ("CLOUDFLARE_API_TOKEN", TOKEN[:5] + "\x1b" + TOKEN[5:], "a control character (U+001B)"),
    ],
)
@pytest.mark.usefixtures("no_credentials_file")
def test_a_token_with_whitespace_or_a_control_character_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, kind: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ProviderError) as caught:
        lookup_token(name, scopes_hint="scopes")

    assert f"{name} holds {kind}" in caught.value.message
    assert "copy-paste artifact" in caught.value.message
    assert "set it again without it" in (caught.value.hint or "")
    assert TOKEN[8:30] not in str(caught.value)


def test_a_token_file_entry_with_a_newline_names_the_file(
    monkeypatch: pytest.MonkeyPatch, no_credentials_file: Path
) -> None:
    monkeypatch.delenv("CLOUDFLARE_API_TOKEN", raising=False)
    no_credentials_file.write_text(f'{{"CLOUDFLARE_API_TOKEN": "{TOKEN}\\n"}}')
    no_credentials_file.chmod(0o600)

    with pytest.raises(ProviderError, match="CLOUDFLARE_API_TOKEN holds a newline") as caught:
        lookup_token("CLOUDFLARE_API_TOKEN", scopes_hint="scopes")

    assert str(no_credentials_file) in (caught.value.hint or "")


def test_create_with_a_newline_in_the_token_is_refused_at_once_and_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_credentials_file: Path
) -> None:
    home = tmp_path / "home"
    assert run_dynia(home, "init").exit_code == 0
    before = snapshot(home)
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", TOKEN[:30] + "\n" + TOKEN[30:])
    monkeypatch.setenv("DIGITALOCEAN_FAILOVER_TOKEN", FAILOVER)
    monkeypatch.setenv("DIGITALOCEAN_API_URL", "http://127.0.0.1:9")  # never the real API
    monkeypatch.delenv("DIGITALOCEAN_METADATA_URL", raising=False)

    done = run_dynia(
        home, "cluster", "create", "--name", "p1", "--node-provider", "digitalocean",
        "--region", "fra1", "--size", "s-1vcpu-1gb",
    )  # fmt: skip

    assert done.exit_code == 5, done.stderr
    assert "DIGITALOCEAN_TOKEN holds a newline" in done.stderr
    assert "connection" not in done.stderr and "network" not in done.stderr
    assert TOKEN[8:30] not in done.stderr + done.stdout
    assert snapshot(home) == before


# --- 5. the state file: wording that reads, a hint that fits ---------------------------------


def test_a_state_file_from_a_newer_dynia_reads_as_a_sentence(tmp_path: Path) -> None:
    save_sample(tmp_path)
    state = tmp_path / "state.json"
    state.write_text('{"schema_version": 99, "clusters": {}}')
    before = snapshot(tmp_path)

    done = run_dynia(tmp_path, "cluster", "list")

    assert done.exit_code == 3
    assert "has schema_version" not in done.stderr
    assert f"{state} cannot be read: its schema_version 99 is newer than" in done.stderr
    assert "upgrade dynia" in done.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("with_backup", [True, False])
def test_a_state_file_that_is_a_directory_gets_a_hint_that_fits(
    tmp_path: Path, with_backup: bool
) -> None:
    home = tmp_path / "home"
    save_sample(home)
    if with_backup:
        with StateStore(home).transaction("test") as txn:  # one save more: a backup exists
            txn.state.clusters["demo"].region = "lab"
    state = home / "state.json"
    state.unlink()
    state.mkdir()
    before = snapshot(home)

    done = run_dynia(home, "cluster", "list")

    assert done.exit_code == 3, done.stderr
    assert f"{state} is a directory" in done.stderr
    assert "chmod" not in done.stderr
    assert f"mv {state} {state}.dir" in done.stderr
    assert ("cp " in done.stderr) is with_backup
    assert snapshot(home) == before
