"""Bad input at the edges of the CLI: the dynia home's path, credentials, the state file's link,
typos. Each test checks what an operator notices: the exit code, a message naming the problem and
what to do, and a home (or state file) left exactly as it was.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from cli_invoke import Outcome, run_dynia
from click.testing import CliRunner

from dynia.cli.main import main
from dynia.files import atomic_write, write_temp
from dynia.paths import HomeLayout, shipped_dir
from dynia.ssh import ssh_common_args, ssh_options
from dynia.state import StateStore
from dynia.state.models import STATUS_INFRA_READY, Cluster, Node

SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None, reason="needs the OpenSSH client (ssh -G)")
ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"
DO_CREATE = (
    "cluster",
    "create",
    "--name",
    "p1",
    "--node-provider",
    "digitalocean",
    "--region",
    "fra1",
    "--size",
    "s-1vcpu-1gb",
)
FAILOVER = "dop_v1_" + "b" * 64


def refused(outcome: Outcome, exit_code: int, *words: str) -> None:
    """A clean refusal: this exit code, the words in the error, no traceback."""
    assert outcome.exit_code == exit_code, (outcome.stdout, outcome.stderr)
    assert "Traceback" not in outcome.stderr
    for word in words:
        assert word in outcome.stderr, outcome.stderr


def dynia_with_env(env: dict[str, str | None], *args: str) -> Outcome:
    """``dynia <args>`` with exactly these changes to the environment (None unsets)."""
    runner = CliRunner()
    with runner.isolation(env=env) as (out, err, _):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return Outcome(code, out.getvalue().decode(), err.getvalue().decode())


def tree(folder: Path) -> dict[str, bytes | None]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


# --- a dynia home with spaces (and the characters no quoting carries) ------------------------


def ssh_reads_known_hosts(options: list[str]) -> str:
    """The UserKnownHostsFile value ssh itself parses from ``options`` (``ssh -G`` prints it;
    several files would be printed joined by single spaces)."""
    assert SSH is not None
    result = subprocess.run(
        [SSH, "-G", "-F", "none", *options, "node.invalid"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("userknownhostsfile ")]
    assert len(lines) == 1, result.stdout
    return lines[0].removeprefix("userknownhostsfile ")


# Two spaces in a row: ssh splitting the value would print them as one.
AWKWARD_PATHS = [
    "/srv/sp  home/clusters/demo/ssh/known_hosts",
    "/srv/tab\there/known_hosts",
    "/srv/it's #1/known_hosts",
    '/srv/quo"te/known_hosts',
    "/srv/back\\slash/known_hosts",
    "/srv/100%/known_hosts",
]


@needs_ssh
@pytest.mark.parametrize("path", AWKWARD_PATHS)
def test_dynias_own_ssh_passes_the_known_hosts_path_as_one_file(path: str) -> None:
    options = ssh_options(Path(path))
    assert ssh_reads_known_hosts(options) == path
    # Ansible splits ansible_ssh_common_args with shlex: the same argv comes out.
    assert shlex.split(ssh_common_args(Path(path))) == options


def _plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dynia_inventory_plugin", shipped_dir("inventory_plugins") / "dynia.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_ssh
@pytest.mark.parametrize("path", AWKWARD_PATHS)
def test_the_inventory_plugins_ssh_args_round_trip_through_shlex_and_ssh(path: str) -> None:
    argv = shlex.split(_plugin().ssh_common_args(path))  # as Ansible splits them
    assert ssh_reads_known_hosts(argv) == path
    assert "StrictHostKeyChecking=yes" in argv


@needs_ssh
def test_ansible_reaches_the_nodes_of_a_home_with_spaces_with_its_pinned_hosts(
    tmp_path: Path,
) -> None:
    layout = HomeLayout(tmp_path / "sp  home")
    cluster = Cluster("demo", "local", "local", "local", "small", 1)
    cluster.nodes["misty-owl"] = Node("misty-owl", "c1", "172.30.9.10", "172.30.9.10", 150)
    with StateStore(layout.root).transaction("test") as txn:
        txn.state.clusters["demo"] = cluster
    config = tmp_path / "inventory.dynia.yml"
    config.write_text(
        yaml.safe_dump({"plugin": "dynia", "home": str(layout.root), "cluster": "demo"})
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ANSIBLE_INVENTORY_PLUGINS": str(shipped_dir("inventory_plugins")),
        "ANSIBLE_INVENTORY_ENABLED": "dynia",
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
    }
    listed = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(config), "--list"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    host = json.loads(listed.stdout)["_meta"]["hostvars"]["misty-owl"]
    common = host["ansible_ssh_common_args"]
    common = common.get("__ansible_unsafe", common) if isinstance(common, dict) else common
    known_hosts = str(layout.known_hosts("demo"))
    assert ssh_reads_known_hosts(shlex.split(common)) == known_hosts


@pytest.mark.parametrize(
    ("home", "words"),
    [
        ("/tmp/x%y", ["'%'", "%-token"]),
        ("/tmp/a${HOME}b", ["'${'", "expands"]),
        ('/tmp/quo"te', ["'\"'", "double quotes"]),
        ("/tmp/back\\slash", ["backslash"]),
        ("/tmp/{{ lookup('env') }}", ["'{{'", "Jinja"]),
        ("/tmp/new\nline", ["'\\n'", "one line"]),
    ],
)
def test_a_home_no_quoting_carries_to_ssh_is_refused_before_anything_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: str, words: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / home.lstrip("/")
    done = dynia_with_env({"DYNIA_HOME": str(target)}, "init")
    refused(done, 2, "cannot be used", "--home or DYNIA_HOME", *words)
    assert list(tmp_path.iterdir()) == []


def test_a_home_with_spaces_is_accepted(tmp_path: Path) -> None:
    home = tmp_path / "sp home"
    done = run_dynia(home, "init")
    assert done.exit_code == 0, done.stderr
    assert (home / "state.json").is_file()


@pytest.mark.parametrize(
    ("env", "args", "words"),
    [
        ({"DYNIA_HOME": ""}, [], ["DYNIA_HOME is empty"]),
        ({"DYNIA_HOME": "   "}, [], ["DYNIA_HOME is only whitespace"]),
        ({"DYNIA_HOME": None}, ["--home", ""], ["--home is empty"]),
        ({"DYNIA_HOME": None}, ["--home", " \t"], ["--home is only whitespace"]),
    ],
)
def test_a_blank_home_is_refused_not_replaced_by_the_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str | None],
    args: list[str],
    words: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # ~/.dynia must stay unmade
    done = dynia_with_env(env, *args, "init")
    refused(done, 2, *words, "unset DYNIA_HOME")
    assert list(tmp_path.iterdir()) == []


# --- cluster create refuses before recording; a mere plan is deleted without credentials ------


@pytest.fixture
def no_do_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_API_URL", "DIGITALOCEAN_METADATA_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIGITALOCEAN_FAILOVER_TOKEN", FAILOVER)
    monkeypatch.setenv("DYNIA_CREDENTIALS_FILE", str(tmp_path / "no-credentials.json"))


@pytest.mark.usefixtures("no_do_credentials")
@pytest.mark.parametrize(
    ("env", "exit_code", "words"),
    [
        ({}, 5, ["no DIGITALOCEAN_TOKEN found", "export DIGITALOCEAN_TOKEN"]),
        (
            {"DIGITALOCEAN_TOKEN": "t0ken", "DIGITALOCEAN_API_URL": "ftp://x"},
            5,
            ["DIGITALOCEAN_API_URL='ftp://x'", "unset DIGITALOCEAN_API_URL"],
        ),
        (
            {
                "DIGITALOCEAN_TOKEN": "t0ken",
                "DIGITALOCEAN_METADATA_URL": "http://8.8.8.8/v1",
                # A regression would provision: let it fail here, not at the real API.
                "DIGITALOCEAN_API_URL": "http://127.0.0.1:9",
            },
            2,
            ["DIGITALOCEAN_METADATA_URL", "use https"],
        ),
    ],
)
def test_create_without_credentials_or_with_a_bad_endpoint_records_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    exit_code: int,
    words: list[str],
) -> None:
    home = tmp_path / "home"
    assert run_dynia(home, "init").exit_code == 0
    before = tree(home)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    refused(run_dynia(home, *DO_CREATE), exit_code, *words)
    assert tree(home) == before
    # Nothing was recorded, so the corrected command is no conflict with a leftover plan.
    assert "p1" not in run_dynia(home, "cluster", "list").stdout


@pytest.mark.usefixtures("no_do_credentials")
def test_create_without_credentials_makes_no_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    refused(run_dynia(home, *DO_CREATE), 5, "DIGITALOCEAN_TOKEN")
    assert not home.exists()


@pytest.mark.usefixtures("no_do_credentials")
def test_a_plan_that_never_reached_the_provider_is_deleted_without_credentials(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    planned = run_dynia(home, *DO_CREATE, "--plan-only")
    assert planned.exit_code == 0, planned.stderr
    done = run_dynia(home, "cluster", "delete", "--name", "p1", "--yes")
    assert done.exit_code == 0, done.stderr
    assert "only planned" in done.stderr
    assert json.loads((home / "state.json").read_text())["clusters"] == {}


@pytest.mark.usefixtures("no_do_credentials")
def test_a_plan_a_create_took_to_the_provider_still_needs_credentials_to_delete(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    assert run_dynia(home, *DO_CREATE, "--plan-only").exit_code == 0
    with StateStore(home).transaction("test") as txn:
        # The key step is saved just before the network is asked for: a VPC may exist.
        txn.state.clusters["p1"].completed_steps.append("ssh-keys")
    before = (home / "state.json").read_bytes()
    refused(run_dynia(home, "cluster", "delete", "--name", "p1", "--yes"), 5, "DIGITALOCEAN_TOKEN")
    assert (home / "state.json").read_bytes() == before


# --- the state file --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("cluster", "list"), ("init",), ("context", "clear")])
def test_a_dangling_state_link_is_an_error_not_an_empty_state(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    unmounted = tmp_path / "synced" / "dynia"
    (home / "state.json").symlink_to(unmounted / "state.json")
    done = run_dynia(home, *command)
    refused(done, 3, "symbolic link", str(unmounted / "state.json"), "does not exist")
    refused(done, 3, "mount or restore", f"rm {home / 'state.json'}")
    assert not (tmp_path / "synced").exists()  # no folder made where the real state belongs
    assert (home / "state.json").is_symlink()
    assert "No clusters" not in done.stdout


def test_write_temp_makes_no_folder_but_atomic_write_does(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_temp(tmp_path / "gone" / "state.json", b"{}", 0o600)
    assert not (tmp_path / "gone").exists()
    atomic_write(tmp_path / "pki" / "ca.pem", b"pem", 0o644)  # keys and zones make their folder
    assert (tmp_path / "pki" / "ca.pem").read_bytes() == b"pem"


def test_a_number_too_long_to_read_is_a_corrupt_state_with_the_restore_hint(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    assert run_dynia(home, "init").exit_code == 0
    with StateStore(home).transaction("test") as txn:  # a backup to restore
        txn.state.current_cluster = None
        txn.state.clusters["demo"] = Cluster("demo", "local", "local", "local", "small", 1)
    text = (home / "state.json").read_text()
    damaged = text.replace('"planned_nodes": 1', '"planned_nodes": 9' + "9" * 5000)
    assert damaged != text
    (home / "state.json").write_text(damaged)
    done = run_dynia(home, "cluster", "list")
    refused(done, 3, "is invalid", "5001 digits", "restore the previous version: cp")
    assert "set_int_max_str_digits" not in done.stderr
    assert (home / "state.json").read_text() == damaged


# --- typos and misplaced options -------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "meant"), [("deplyo", "deploy"), ("clustr", "cluster"), ("rendr", "render")]
)
def test_a_mistyped_top_level_command_gets_a_suggestion(
    tmp_path: Path, typed: str, meant: str
) -> None:
    done = run_dynia(tmp_path / "home", typed)
    refused(done, 2, f"No such command '{typed}'.", f"Did you mean '{meant}'?")
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize(
    ("args", "example"),
    [
        (["cluster", "show", "--cluster", "prod"], "`dynia --cluster prod cluster show ...`"),
        (["deploy", "--cluster=prod", "--name", "web"], "`dynia --cluster prod deploy ...`"),
        (["cluster", "list", "--home", "/srv/my home"], "`dynia --home '/srv/my home' cluster"),
    ],
)
def test_a_global_option_after_the_command_says_where_it_goes(
    tmp_path: Path, args: list[str], example: str
) -> None:
    done = run_dynia(tmp_path / "home", *args)
    refused(done, 2, "No such option", "is a global option: give it before the command", example)
    assert "Did you mean '--help'" not in done.stderr


# --- init ------------------------------------------------------------------------------------


def test_init_blames_the_saved_default_that_conflicts_and_says_how_to_clear_it(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    edge = ("init", "--dns-provider", "cloudflare", "--proxied", "--cert-issuer")
    assert run_dynia(home, *edge, "cloudflare-origin").exit_code == 0
    before = tree(home)
    done = run_dynia(home, "init", "--dns-provider", "local")
    refused(
        done,
        2,
        "--dns-provider local conflicts with the defaults saved in",
        "config.json: --cert-issuer cloudflare-origin --proxied",
        "dynia init --dns-provider local --cert-issuer local --no-proxied",
    )
    assert "leave the option out" not in done.stderr
    assert tree(home) == before
    hinted = ["init", "--dns-provider", "local", "--cert-issuer", "local", "--no-proxied"]
    assert run_dynia(home, *hinted).exit_code == 0


def test_init_still_blames_options_given_together(tmp_path: Path) -> None:
    done = run_dynia(tmp_path / "home", "init", "--dns-provider", "local", "--proxied")
    refused(done, 2, "--proxied needs the cloudflare DNS provider")
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--image", "debian-11"],
        ["--node-provider", "digitalocean", "--image", "Bad Image"],
        ["--cert-issuer", "cloudflare-origin"],
    ],
)
def test_a_refused_init_creates_no_home(tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "home"
    refused(run_dynia(home, "init", *args), 2, "hint:")
    assert not home.exists()


def test_a_refused_init_leaves_an_existing_home_as_it_was(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_dynia(home, "init").exit_code == 0
    before = tree(home)
    refused(run_dynia(home, "init", "--image", "debian-11"), 2, "debian-11", "debian-12")
    assert tree(home) == before


@pytest.mark.usefixtures("no_do_credentials")
def test_a_create_re_run_on_a_cluster_past_its_plan_needs_no_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_dynia(home, *DO_CREATE, "--plan-only").exit_code == 0
    with StateStore(home).transaction("test") as txn:
        txn.state.clusters["p1"].status = STATUS_INFRA_READY
    before = (home / "state.json").read_bytes()
    again = run_dynia(home, *DO_CREATE)
    assert again.exit_code == 0, again.stderr
    assert "already infra-ready; nothing to do" in again.stdout + again.stderr
    assert (home / "state.json").read_bytes() == before
