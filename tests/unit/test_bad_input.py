"""Bad input never hurts: every wrong flag, file or disk gives an error and changes nothing.

Each test feeds one kind of bad input to the CLI (in-process, no Docker) and checks the three
promises: a message that names the problem, a non-zero exit, and a home left exactly as it was.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_invoke import Outcome, run_dynia
from sample_state import WEB_COMPOSE, save_sample

from dynia.errors import RenderError, StateError, UsageError
from dynia.render.compose import inspect_compose, node_compose, parse_compose
from dynia.render.renderer import RENDER_MARKER
from dynia.state import BACKUPS_KEPT, StateStore
from dynia.state.models import Cluster


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders and symlinks' targets)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def refused(outcome: Outcome, *words: str) -> None:
    """A clean refusal: non-zero exit, an `Error:` line naming ``words``, no traceback."""
    assert outcome.exit_code != 0, outcome.stdout
    assert "Error:" in outcome.stderr or "Usage:" in outcome.stderr, outcome.stderr
    assert "Traceback" not in outcome.stderr
    for word in words:
        assert word in outcome.stderr, outcome.stderr


@pytest.fixture
def sample_home(home: Path) -> Path:
    """A home with a serving cluster, a CA key, backups and a rendered deploy-config."""
    save_sample(home)
    with StateStore(home).transaction("test") as txn:  # one save more: a backup exists
        txn.state.clusters["demo"].region = "lab"
    (home / "pki").mkdir()
    (home / "pki" / "ca.key").write_text("key\n")
    assert run_dynia(home, "render", "--no-validate").exit_code == 0
    return home


# --- render --output -------------------------------------------------------------------------


def test_render_into_the_home_is_refused_and_the_home_stays_whole(sample_home: Path) -> None:
    before = snapshot(sample_home)
    done = run_dynia(sample_home, "render", "--no-validate", "--output", str(sample_home))
    refused(done, str(sample_home), "dynia home", "--output")
    assert done.exit_code == 2
    assert snapshot(sample_home) == before


@pytest.mark.parametrize(
    "where",
    ["parent", "inside-home", "cwd", "cwd-parent", "foreign", "file"],
)
def test_render_output_never_replaces_a_folder_it_did_not_write(
    sample_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    (tmp_path / "a-file").write_text("x\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    target = {
        "parent": str(tmp_path),  # contains the home
        "inside-home": str(sample_home / "pki"),
        "cwd": ".",
        "cwd-parent": "..",
        "foreign": str(foreign),
        "file": str(tmp_path / "a-file"),
    }[where]
    before = snapshot(tmp_path)
    refused(run_dynia(sample_home, "render", "--no-validate", "--output", target))
    assert snapshot(tmp_path) == before


def test_render_output_takes_a_new_an_empty_or_a_rendered_folder(
    sample_home: Path, tmp_path: Path
) -> None:
    new = tmp_path / "out" / "demo"
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (new, empty, new):  # the second render into `new` replaces its own output
        done = run_dynia(sample_home, "render", "--no-validate", "--output", str(target))
        assert done.exit_code == 0, done.stderr
        assert (target / RENDER_MARKER).is_file() and (target / "metadata.json").is_file()
    # The home's own deploy-config is a render too, so it can be named explicitly.
    own = sample_home / "deploy-config" / "demo"
    assert run_dynia(sample_home, "render", "--no-validate", "--output", str(own)).exit_code == 0


def test_render_output_on_a_pseudo_file_system_is_an_error(sample_home: Path) -> None:
    before = snapshot(sample_home)
    done = run_dynia(sample_home, "render", "--no-validate", "--output", "/proc/self/x")
    refused(done, "cannot write the rendered files", "--output")
    assert snapshot(sample_home) == before


# --- config.json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "args", "words"),
    [
        ("[]", ["init"], ["expected a JSON object"]),
        ('{"local_dns_zones": 5}', ["init", "--local-dns-zone", "shop.test"], ["local_dns_zones"]),
        ('{"local_dns_zones": "abc"}', ["init", "--local-dns-zone", "a.test"], ["list of zone"]),
        ('{"local_dns_zones": "abc"}', ["init"], ["local_dns_zones"]),
        ('{"region": 7}', ["init"], ["'region' must be str"]),
        ('{"size": "big\\nsize"}', ["init"], ["size"]),
        ("[" * 100_000, ["init"], ["not JSON"]),
        (None, ["init"], ["config.json", "delete"]),  # config.json is a folder
    ],
)
def test_a_broken_config_file_is_named_and_left_alone(
    sample_home: Path, config: str | None, args: list[str], words: list[str]
) -> None:
    path = sample_home / "config.json"
    if config is None:
        path.mkdir()
    else:
        path.write_text(config)
    before = snapshot(sample_home)
    done = run_dynia(sample_home, *args)
    refused(done, str(path), *words)
    assert done.exit_code == 3
    assert snapshot(sample_home) == before


def test_zones_from_a_string_in_config_never_reach_the_dns_provider(home: Path) -> None:
    from dynia.paths import HomeLayout
    from dynia.providers import get_dns_provider

    home.mkdir()
    (home / "config.json").write_text('{"local_dns_zones": "abc"}')
    with pytest.raises(UsageError, match="list of zone names"):
        get_dns_provider("local", HomeLayout(home))


def test_parallel_inits_lose_no_zone(home: Path) -> None:
    zones = [f"zone{n}.test" for n in range(6)]
    env = {**os.environ, "DYNIA_HOME": str(home)}

    def init(zone: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "dynia.cli", "init", "--local-dns-zone", zone]
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)

    with ThreadPoolExecutor(len(zones)) as pool:
        results = list(pool.map(init, zones))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    config = json.loads((home / "config.json").read_text())
    assert set(zones) <= set(config["local_dns_zones"])


@pytest.mark.parametrize("flag", ["--region", "--size"])
@pytest.mark.parametrize("value", ["fra1\n", "fra1\nx", "Fra1", "a b", "-x", ""])
def test_region_and_size_take_only_slugs(home: Path, flag: str, value: str) -> None:
    home.mkdir()
    done = run_dynia(home, "init", flag, value)
    refused(done, flag)
    assert done.exit_code == 2
    assert not (home / "config.json").exists()
    plan = ["cluster", "create", "--name", "demo", "--plan-only", flag, value]
    refused(run_dynia(home, *plan), flag)
    assert StateStore(home).load().clusters == {}


# --- a full disk -----------------------------------------------------------------------------


def _no_space(*_args: object, **_kwargs: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    "args",
    [
        ["init", "--region", "fra1"],  # the lock record, then config.json
        ["render", "--no-validate"],
        ["context", "clear"],
    ],
)
def test_a_full_disk_is_an_error_and_changes_nothing(
    sample_home: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    before = snapshot(sample_home)
    monkeypatch.setattr(os, "write", _no_space)
    monkeypatch.setattr(os, "pwrite", _no_space)
    done = run_dynia(sample_home, *args)
    monkeypatch.undo()
    refused(done, os.strerror(errno.ENOSPC), "free space")
    assert snapshot(sample_home) == before


@pytest.mark.parametrize(
    "args", [["init", "--region", "fra1"], ["render", "--no-validate"], ["context", "clear"]]
)
def test_a_full_disk_after_the_lock_is_an_error_and_changes_nothing(
    sample_home: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    before = snapshot(sample_home)
    monkeypatch.setattr(os, "write", _no_space)  # the lock record (pwrite) still fits
    done = run_dynia(sample_home, *args)
    monkeypatch.undo()
    refused(done, os.strerror(errno.ENOSPC), "free space")
    after = snapshot(sample_home)
    assert after.pop("state.json.lock") is not None
    before.pop("state.json.lock")
    assert after == before


def test_failed_saves_on_a_full_disk_keep_every_backup(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(home)
    for n in range(BACKUPS_KEPT + 2):
        with store.transaction("test") as txn:
            txn.state.clusters[f"c{n}"] = Cluster(f"c{n}", "local", "local", "lab", "small", 1)
    before = snapshot(home)
    for n in range(5):
        monkeypatch.setattr(os, "write", _no_space)
        with pytest.raises(StateError, match="No space left"), store.transaction("test") as txn:
            txn.state.clusters[f"x{n}"] = Cluster(f"x{n}", "local", "local", "lab", "small", 1)
        monkeypatch.undo()
    after = snapshot(home)
    after.pop("state.json.lock"), before.pop("state.json.lock")
    assert after == before
    assert len(store.backups()) == BACKUPS_KEPT


# --- state.json ------------------------------------------------------------------------------


def test_a_symlinked_state_file_is_written_through(home: Path, tmp_path: Path) -> None:
    real = tmp_path / "synced" / "dynia-state.json"
    save_sample(tmp_path / "elsewhere")
    real.parent.mkdir()
    real.write_bytes((tmp_path / "elsewhere" / "state.json").read_bytes())
    home.mkdir()
    (home / "state.json").symlink_to(real)
    done = run_dynia(home, "context", "clear")
    assert done.exit_code == 0, done.stderr
    assert (home / "state.json").is_symlink()
    assert json.loads(real.read_text())["current_cluster"] is None
    assert [p.name for p in real.parent.iterdir()] == [real.name]  # no temp file left


def edit_state(home: Path, change: dict[str, object]) -> None:
    """Hand-edit the demo cluster in state.json as an operator might."""
    data = json.loads((home / "state.json").read_text())
    data["clusters"]["demo"].update(change)
    (home / "state.json").write_text(json.dumps(data))


def test_a_cluster_with_nodes_but_no_network_cannot_render(sample_home: Path) -> None:
    edit_state(sample_home, {"network": None})
    before = snapshot(sample_home)
    done = run_dynia(sample_home, "render", "--no-validate")
    refused(done, "no private network", "demo")
    assert done.exit_code == 6
    assert snapshot(sample_home) == before


def test_a_service_whose_main_compose_service_is_gone_cannot_render(sample_home: Path) -> None:
    data = json.loads((sample_home / "state.json").read_text())
    data["clusters"]["demo"]["services"]["web"]["main_service"] = "gone"
    (sample_home / "state.json").write_text(json.dumps(data))
    before = snapshot(sample_home)
    done = run_dynia(sample_home, "render", "--no-validate")
    refused(done, "'gone'", "dynia deploy")
    assert snapshot(sample_home) == before


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deeply_nested_state_is_reported_as_invalid(home: Path, depth: int) -> None:
    home.mkdir()
    (home / "state.json").write_text('{"a": ' * depth + "1" + "}" * depth)
    before = snapshot(home)
    done = run_dynia(home, "cluster", "list")
    refused(done, "nested too deeply")
    assert done.exit_code == 3
    assert snapshot(home) == before


# --- compose files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("services:\n  web: {image: x, expose: 80}\n", ["'expose'", "must be a list"]),
        ('services:\n  web: {image: x, ports: "8080"}\n', ["'ports'", "must be a list"]),
        ("services:\n  web: {image: x, expose: ['²']}\n", ["port number"]),
        ("services:\n  web: {image: x, ports: [true]}\n", ["port number"]),
        ("services:\n  1: {image: x, expose: ['80']}\n", ["key 1", "not a string"]),
        ("services:\n  web: {image: x, expose: ['80'], environment: {1: a, b: c}}\n", ["key 1"]),
        ("[" * 600 + "]" * 600, ["nests too deeply"]),
    ],
)
def test_bad_compose_files_are_refused_clearly(text: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as caught:
        document = parse_compose(text, "web.yml")
        inspect_compose(document, "web", None)
    for word in words:
        assert word in str(caught.value)


def test_a_missing_main_service_is_a_render_error() -> None:
    document = parse_compose(WEB_COMPOSE)
    with pytest.raises(RenderError, match="no service 'api'"):
        node_compose(document, "api", 20000, 8080, "compose of service 'web'")


@pytest.mark.parametrize(
    ("compose", "words"),
    [
        ('services:\n  web: {image: x, ports: "8080"}\n', ["'ports'", "must be a list"]),
        ("services:\n  web: {image: x, expose: 80}\n", ["'expose'"]),
        ("\xff\xfe not text", ["not UTF-8"]),
    ],
)
def test_deploy_refuses_a_bad_compose_file_and_changes_nothing(
    sample_home: Path, tmp_path: Path, compose: str, words: list[str]
) -> None:
    path = tmp_path / "web.yml"
    path.write_bytes(compose.encode("latin-1") if compose.startswith("\xff") else compose.encode())
    before = snapshot(sample_home)
    done = run_dynia(sample_home, "deploy", "--name", "web", "--compose", str(path))
    refused(done, str(path), *words)
    assert done.exit_code == 2
    assert snapshot(sample_home) == before


def test_deploy_reads_a_bounded_amount_of_a_compose_file(sample_home: Path) -> None:
    before = snapshot(sample_home)
    done = run_dynia(sample_home, "deploy", "--name", "web", "--compose", "/dev/zero")
    refused(done, "/dev/zero", "larger than 1024 KiB")
    assert snapshot(sample_home) == before
