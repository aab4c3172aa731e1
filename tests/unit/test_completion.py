"""Tab completion of cluster, node, service and domain names from the state, as a shell asks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.shell_completion import BashComplete
from sample_state import sample_cluster, save_sample

from dynia.cli.main import cli


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with clusters 'edge' (no services) and 'demo' (current; 3 nodes, service web)."""
    root = tmp_path / "home"
    edge = sample_cluster("edge")
    edge.services, edge.routes = {}, {}
    save_sample(root, edge)
    save_sample(root)
    monkeypatch.setenv("DYNIA_HOME", str(root))
    return root


def complete(line: str) -> list[str]:
    """What Tab offers after ``dynia <line>``; the last word is the one being completed."""
    args = line.split(" ")
    incomplete = args.pop()
    completer = BashComplete(cli, {}, "dynia", "_DYNIA_COMPLETE")
    return [item.value for item in completer.get_completions(args, incomplete)]


@pytest.mark.usefixtures("home")
@pytest.mark.parametrize(
    ("line", "offered"),
    [
        ("--cluster ", ["demo", "edge"]),
        ("--cluster e", ["edge"]),
        ("context use ", ["demo", "edge"]),
        ("cluster delete --name d", ["demo"]),
        ("cluster node remove ", ["amber-elk", "misty-owl", "quiet-fox"]),
        ("cluster node activate m", ["misty-owl"]),
        ("deploy --name ", ["web"]),
        ("route bind --domain x.demo.test --service ", ["web"]),
        ("route unbind --domain ", ["web.demo.test"]),
    ],
)
def test_names_come_from_the_state(line: str, offered: list[str]) -> None:
    assert complete(line) == offered


@pytest.mark.usefixtures("home")
def test_cluster_option_picks_whose_names_are_offered() -> None:
    assert complete("--cluster edge deploy --name ") == []
    assert complete("--cluster demo deploy --name ") == ["web"]
    assert complete("--cluster gone cluster node remove ") == []


def test_home_option_is_honoured(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNIA_HOME", str(home.parent / "elsewhere"))
    assert complete("context use ") == []
    assert complete(f"--home {home} context use ") == ["demo", "edge"]


@pytest.mark.parametrize("state", [None, "", "{not json", '{"schema_version": 999}'])
def test_no_readable_state_offers_nothing_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str | None
) -> None:
    root = tmp_path / "home"
    if state is not None:
        root.mkdir()
        (root / "state.json").write_text(state)
    monkeypatch.setenv("DYNIA_HOME", str(root))
    before = sorted(tmp_path.rglob("*"))
    assert complete("--cluster ") == []
    assert complete("cluster node remove ") == []
    assert sorted(tmp_path.rglob("*")) == before  # no home, lock or backup created


def _shell_asks(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynia.cli"],
        env={**os.environ, "DYNIA_HOME": str(home), **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_bash_gets_node_names_through_the_completion_protocol(home: Path) -> None:
    done = _shell_asks(
        home,
        _DYNIA_COMPLETE="bash_complete",
        COMP_WORDS="dynia cluster node remove q",
        COMP_CWORD="4",
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "plain,quiet-fox\n", "")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_readme_completion_scripts_are_printed(tmp_path: Path, shell: str) -> None:
    done = _shell_asks(tmp_path, _DYNIA_COMPLETE=f"{shell}_source")
    assert done.returncode == 0, done.stderr
    assert "_DYNIA_COMPLETE" in done.stdout
