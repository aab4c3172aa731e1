"""Bad input to `dynia deploy` and `dynia route bind` is refused before it changes anything.

A domain another cluster routes, integers too long to read, a port 0, an image name docker would
misread, a compose file whose main service would be guessed: each is refused with a message that
names what is wrong and what to do, the state file and the certificate as they were, no roll
started. And a failure of any kind after a roll began puts the nodes back on the version state
and deploy-config hold.

The operation tests use the orchestration rig (recording doubles of the runner, probe, image
transfer and node provider); the CLI tests run `dynia` in-process as an operator would.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import sys
from pathlib import Path

import pytest
import test_orchestration as orchestration
from cli_invoke import Outcome, run_dynia
from sample_state import WEB_COMPOSE, sample_cluster, save_sample

from dynia.errors import RunnerError, StateError, UsageError
from dynia.operations import certificates
from dynia.operations.deploy import DeployRequest, bind_route, deploy_service, unbind_route
from dynia.operations.images import resolve_images
from dynia.operations.rollout import BatchSize, parse_batch
from dynia.paths import HomeLayout
from dynia.providers.local.dns import LocalDnsProvider
from dynia.render.compose import inspect_compose, parse_compose
from dynia.state import StateStore
from dynia.state.models import Route

# The orchestration rig and its fixtures (pytest finds them here by these names).
Rig, Run, COMPOSE_FILE = orchestration.Rig, orchestration.Run, orchestration.COMPOSE_FILE
no_validators, rig, dns = orchestration.no_validators, orchestration.rig, orchestration.dns
served, write_compose = orchestration.served, orchestration.write_compose

HUGE = "9" * 5000  # past the 4,300 digits Python turns into an int


def refused(outcome: Outcome, *words: str) -> None:
    """A clean refusal: non-zero exit, an `Error:` line naming ``words``, no traceback."""
    assert outcome.exit_code != 0, outcome.stdout
    assert "Error:" in outcome.stderr, outcome.stderr
    assert "Traceback" not in outcome.stderr
    for word in words:
        assert word in outcome.stderr, outcome.stderr


def files_of(home: Path) -> dict[str, bytes]:
    """Every file of the home but the lock record, with its bytes."""
    return {
        str(p.relative_to(home)): p.read_bytes()
        for p in sorted(home.rglob("*"))
        if p.is_file() and p.name != "state.json.lock"
    }


# --- a domain another cluster routes -----------------------------------------------------------


def add_prod_routing(rig: Rig, domain: str) -> None:
    """A second cluster, `prod`, that routes ``domain`` to its service web."""
    with rig.ctx.store.transaction("setup") as txn:
        prod = copy.deepcopy(txn.state.clusters["demo"])
        prod.name = "prod"
        prod.routes = {domain: Route(domain, "web")}
        prod.nodes, prod.reserved_ip, prod.network = {}, None, None
        txn.state.clusters["prod"] = prod


def certificate(rig: Rig) -> bytes:
    return (rig.layout.tls_dir("demo") / "cluster.pem").read_bytes()


def test_route_bind_of_a_domain_another_cluster_routes_changes_nothing_even_when_retried(
    rig: Rig, dns: LocalDnsProvider
) -> None:
    add_prod_routing(rig, "shop.demo.test")
    before, cert = rig.ctx.store.path.read_bytes(), certificate(rig)

    for _attempt in range(2):  # the retry once went through the certificate check to the nodes
        with pytest.raises(UsageError) as refusal:
            bind_route(rig.ctx, "shop.demo.test", "web")
        assert refusal.value.exit_code == 2
        assert "already routed by cluster 'prod'" in refusal.value.message
        assert "`dynia --cluster prod route unbind --domain shop.demo.test`" in (
            refusal.value.hint or ""
        )
        assert rig.runner.calls() == []  # no roll
        assert rig.ctx.store.path.read_bytes() == before
        assert certificate(rig) == cert  # not reissued to cover the other cluster's domain
    assert "shop.demo.test" not in rig.deployed("caddy/misty-owl.Caddyfile")
    assert served(dns, "shop.demo.test") == []


def test_deploy_with_a_domain_another_cluster_routes_changes_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    add_prod_routing(rig, "shop.demo.test")
    before, cert = rig.ctx.store.path.read_bytes(), certificate(rig)
    compose = write_compose(tmp_path, "dynia-sample-web:2")

    with pytest.raises(UsageError, match="already routed by cluster 'prod'") as refusal:
        deploy_service(rig.ctx, DeployRequest("web", compose, domain="shop.demo.test"))

    assert "dynia --cluster prod route unbind --domain shop.demo.test" in (refusal.value.hint or "")
    assert rig.journal == []  # no image copied, no roll
    assert rig.ctx.store.path.read_bytes() == before
    assert certificate(rig) == cert


def two_cluster_home(home: Path) -> Path:
    """`demo` routes web.demo.test; `prod` serves a service web of its own and routes nothing."""
    layout = HomeLayout(home)
    for name in ("demo", "prod"):
        cluster = sample_cluster(name)
        if name == "prod":
            cluster.routes = {}
            for node in cluster.nodes.values():
                node.provider_id = f"p-{node.provider_id}"
        cluster.tls_fingerprint = certificates.issue_certificate(layout, cluster).fingerprint_sha256
        save_sample(home, cluster)
    return home


@pytest.mark.parametrize(
    "command",
    [
        ["route", "bind", "--domain", "web.demo.test", "--service", "web"],
        ["deploy", "--name", "web", "--compose", "{compose}", "--domain", "web.demo.test"],
    ],
    ids=["route-bind", "deploy"],
)
def test_the_cli_names_the_cluster_that_routes_the_domain(
    tmp_path: Path, command: list[str]
) -> None:
    home = two_cluster_home(tmp_path / "home")
    compose = tmp_path / "web.yml"
    compose.write_text(WEB_COMPOSE)
    before = files_of(home)

    args = [word.replace("{compose}", str(compose)) for word in command]
    done = run_dynia(home, "--cluster", "prod", *args)

    refused(done, "already routed by cluster 'demo'", "dynia --cluster demo route unbind")
    assert done.exit_code == 2  # not the state validator's exit 3
    assert "invalid state" not in done.stderr
    assert files_of(home) == before  # state, certificates and deploy-config alike


# --- a failure after the roll puts the nodes back ----------------------------------------------


def full_disk_once_after_the_first_sync(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up as the first sync.yml ends: the state save after it fails, once."""
    real_write = os.write

    def no_space(*_args: object) -> int:
        monkeypatch.setattr(os, "write", real_write)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def after(run: Run) -> None:
        if len(rig.runner.runs) == 1:
            monkeypatch.setattr(os, "write", no_space)

    rig.runner.after["sync.yml"] = after


def test_deploy_whose_state_save_fails_after_the_roll_rolls_the_nodes_back(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = rig.ctx.store.path.read_bytes()
    compose = write_compose(tmp_path, "dynia-sample-web:2")
    full_disk_once_after_the_first_sync(rig, monkeypatch)
    rig.runner.watch = [COMPOSE_FILE]

    with pytest.raises(StateError, match="cannot write the state file"):
        deploy_service(rig.ctx, DeployRequest("web", compose))

    every = "amber-elk,misty-owl,quiet-fox"
    assert rig.runner.calls() == [("sync.yml", None), ("sync.yml", every)]
    assert "dynia-sample-web:1" in rig.runner.seen[COMPOSE_FILE]  # what the second sync shipped
    assert "dynia-sample-web:1" in rig.deployed(COMPOSE_FILE)
    assert rig.ctx.store.path.read_bytes() == before
    assert "Rollout stopped; the previous version is serving on every node." in rig.progress


def test_route_bind_whose_check_after_the_roll_cannot_run_takes_the_route_off_the_nodes(
    rig: Rig, dns: LocalDnsProvider
) -> None:
    # The sync leaves a node uncompared, so drift-check runs after it - and cannot start.
    rig.runner.uncompared = {"quiet-fox"}

    def broken_setup(run: Run) -> None:
        raise RunnerError("could not run drift-check.yml: ansible-playbook not found")

    rig.runner.after["drift-check.yml"] = broken_setup
    rig.runner.watch = ["caddy/misty-owl.Caddyfile"]

    with pytest.raises(RunnerError, match="could not run drift-check"):
        bind_route(rig.ctx, "api.demo.test", "web")

    every = "amber-elk,misty-owl,quiet-fox"
    assert rig.runner.calls() == [
        ("sync.yml", None),
        ("drift-check.yml", None),
        ("sync.yml", every),  # once said "the previous version is serving" without this
    ]
    assert "api.demo.test" not in rig.runner.seen["caddy/misty-owl.Caddyfile"]
    assert "api.demo.test" not in rig.deployed("caddy/misty-owl.Caddyfile")
    assert "api.demo.test" not in rig.cluster().routes
    assert served(dns, "api.demo.test") == []


def test_route_unbind_whose_check_after_the_roll_cannot_run_puts_the_route_back_on_the_nodes(
    rig: Rig, dns: LocalDnsProvider
) -> None:
    # The sync leaves a node uncompared, so drift-check runs after it - and cannot start.
    rig.runner.uncompared = {"quiet-fox"}

    def broken_setup(run: Run) -> None:
        raise RunnerError("could not run drift-check.yml: ansible-playbook not found")

    rig.runner.after["drift-check.yml"] = broken_setup
    rig.runner.watch = ["caddy/misty-owl.Caddyfile"]

    with pytest.raises(RunnerError, match="could not run drift-check"):
        unbind_route(rig.ctx, "web.demo.test")

    every = "amber-elk,misty-owl,quiet-fox"
    assert rig.runner.calls() == [
        ("sync.yml", None),
        ("drift-check.yml", None),
        ("sync.yml", every),  # without it the nodes went on without the route state keeps
    ]
    assert "web.demo.test" in rig.runner.seen["caddy/misty-owl.Caddyfile"]  # the restore shipped
    assert "web.demo.test" in rig.deployed("caddy/misty-owl.Caddyfile")
    assert "web.demo.test" in rig.cluster().routes
    assert "Rollout stopped; the previous version is serving on every node." in rig.progress


# --- integers too long to read -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (HUGE, "more nodes than any cluster has"),
        (HUGE + "%", "between 1% and 99%"),
        ("-" + HUGE, "at least 1"),
    ],
)
def test_a_batch_of_thousands_of_digits_is_refused_clearly(text: str, words: str) -> None:
    with pytest.raises(UsageError) as refusal:
        parse_batch(text)
    assert words in refusal.value.message
    assert len(refusal.value.message) < 200  # the digits are not echoed back


def test_leading_zeros_do_not_make_a_batch_too_long() -> None:
    assert parse_batch("0" * 5000 + "2") == BatchSize(count=2)


@pytest.fixture
def sample_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    save_sample(home)
    return home


@pytest.mark.parametrize("batch", [HUGE, HUGE + "%"])
def test_deploy_with_a_batch_of_thousands_of_digits_is_refused(
    sample_home: Path, tmp_path: Path, batch: str
) -> None:
    compose = tmp_path / "web.yml"
    compose.write_text(WEB_COMPOSE)
    before = files_of(sample_home)
    done = run_dynia(
        sample_home, "deploy", "--name", "web", "--compose", str(compose), "--batch", batch
    )
    refused(done, "--batch")
    assert done.exit_code == 2
    assert files_of(sample_home) == before


@pytest.mark.parametrize(
    ("expose", "words"),
    [
        (f'["{HUGE}"]', ["out of range 1-65535", "(5000 digits)"]),
        (f"[{HUGE}]", ["an integer of more than 4,300 digits", "quote the value"]),
        (f"[0b{'1' * 15000}]", ["services.web.expose[0]", "too large"]),
    ],
    ids=["quoted", "unquoted", "binary"],
)
def test_deploy_with_a_port_of_thousands_of_digits_is_refused(
    sample_home: Path, tmp_path: Path, expose: str, words: list[str]
) -> None:
    compose = tmp_path / "web.yml"
    compose.write_text(f"services:\n  web:\n    image: dynia-sample-web:1\n    expose: {expose}\n")
    before = files_of(sample_home)
    done = run_dynia(sample_home, "deploy", "--name", "web", "--compose", str(compose))
    refused(done, *words)
    assert done.exit_code == 2
    assert len(done.stderr) < 1000  # the digits are not echoed back
    assert files_of(sample_home) == before


def test_a_date_yaml_cannot_build_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"month must be in 1\.\.12"):
        parse_compose("services:\n  web: {image: x, labels: {built: 2024-13-45}}\n")


# --- --port 0 ----------------------------------------------------------------------------------


def test_port_zero_is_refused_not_replaced_by_the_compose_files_port() -> None:
    document = parse_compose(WEB_COMPOSE)  # web exposes 8080
    with pytest.raises(UsageError, match="port 0 is out of range"):
        inspect_compose(document, "web", 0)


@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_deploy_port_flag_takes_only_tcp_ports(
    sample_home: Path, tmp_path: Path, port: str
) -> None:
    compose = tmp_path / "web.yml"
    compose.write_text("services:\n  web: {image: dynia-sample-web:1}\n")  # no port in the file
    before = files_of(sample_home)
    done = run_dynia(
        sample_home, "deploy", "--name", "web", "--compose", str(compose), "--port", port
    )
    assert done.exit_code == 2
    assert "--port" in done.stderr and "1<=x<=65535" in done.stderr, done.stderr
    assert "pass --port" not in done.stderr  # it was passed
    assert files_of(sample_home) == before


# --- image names -------------------------------------------------------------------------------

FAKE_DOCKER = """#!{python}
# docker's CLI as far as Dynia uses it here: every call is logged; an option --help before `--`
# prints the help with exit 0; only {known} exists locally; a pull fails as a registry does.
import json, sys
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
if "--help" in (args[: args.index("--")] if "--" in args else args):
    print("Usage:  docker image inspect [OPTIONS] IMAGE [IMAGE...]")
    sys.exit(0)
if args[:2] == ["image", "inspect"]:
    if args[-1] == {known!r}:
        print("sha256:" + "a" * 64)
        sys.exit(0)
    print("Error: No such image: " + args[-1], file=sys.stderr)
    sys.exit(1)
if args[0] == "pull":
    print("Using default tag: latest", file=sys.stderr)
    print("Error response from daemon: pull access denied for " + args[-1] + ", repository "
          "does not exist or may require 'docker login'", file=sys.stderr)
    sys.exit(1)
sys.exit(2)
"""


@pytest.fixture
def docker_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake docker client first on PATH; returns the log of its calls (one JSON argv a line)."""
    tools = tmp_path / "fake-docker"
    tools.mkdir()
    log = tmp_path / "docker-calls.jsonl"
    log.touch()
    script = tools / "docker"
    script.write_text(
        FAKE_DOCKER.format(python=sys.executable, log=str(log), known="dynia-sample-web:1")
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    return log


def docker_calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ("--help", ["'--help'", "starts with '-'"]),
        ("Dynia-Bench-Web:1", ["'Dynia-Bench-Web:1'", "lower case", "'dynia-bench-web:1'"]),
        ("web:.1", ["'web:.1'", "not a valid image name"]),
    ],
)
def test_an_invalid_image_name_is_refused_before_docker_sees_it(
    docker_log: Path, image: str, words: list[str]
) -> None:
    with pytest.raises(UsageError) as refusal:
        resolve_images(["dynia-sample-web:1", image])
    for word in words:
        assert word in refusal.value.message
    assert "docker build -t" not in (refusal.value.hint or "")  # no command that cannot work
    assert "[registry[:port]/]name[:tag]" in (refusal.value.hint or "")
    assert docker_calls(docker_log) == []


def test_the_image_is_given_to_docker_after_double_dash(docker_log: Path) -> None:
    assert resolve_images(["dynia-sample-web:1"]) == {"dynia-sample-web:1": "sha256:" + "a" * 64}
    assert docker_calls(docker_log) == [
        ["image", "inspect", "--format", "{{.Id}}", "--", "dynia-sample-web:1"]
    ]


def test_an_image_that_cannot_be_pulled_says_why_docker_refused(docker_log: Path) -> None:
    with pytest.raises(UsageError) as refusal:
        resolve_images(["registry.example.test:5000/team/web:2"])
    assert "could not be pulled: Error response from daemon: pull access denied" in (
        refusal.value.message
    )
    assert ["pull", "--", "registry.example.test:5000/team/web:2"] in docker_calls(docker_log)


@pytest.mark.parametrize("image", ["--help", "Dynia-Bench-Web:1"])
def test_deploy_with_an_invalid_image_name_changes_nothing(
    sample_home: Path, tmp_path: Path, docker_log: Path, image: str
) -> None:
    compose = tmp_path / "web.yml"
    compose.write_text(f'services:\n  web:\n    image: "{image}"\n    expose: ["80"]\n')
    before = files_of(sample_home)
    done = run_dynia(sample_home, "deploy", "--name", "web", "--compose", str(compose))
    refused(done, repr(image), "not a valid image name")
    assert done.exit_code == 2
    assert files_of(sample_home) == before
    assert docker_calls(docker_log) == []


# --- which compose service receives the traffic ------------------------------------------------

DB_THEN_WEB = """\
services:
  db:
    image: postgres:16
    ports: ["5432:5432"]
  web:
    image: dynia-sample-web:1
    expose: ["80"]
"""


def test_a_main_service_is_not_guessed_among_several_with_ports() -> None:
    document = parse_compose(DB_THEN_WEB)
    with pytest.raises(UsageError) as refusal:
        inspect_compose(document, "api", None)
    message, hint = refusal.value.message, refusal.value.hint or ""
    assert "no service 'api'" in message
    assert "'db' (port 5432), 'web' (port 80)" in message
    assert "--name" in hint and "rename that service to 'api'" in hint


def test_a_main_service_is_not_guessed_among_several_without_ports() -> None:
    document = parse_compose("services:\n  a: {image: x}\n  b: {image: y}\n")
    with pytest.raises(UsageError, match="'a', 'b'"):
        inspect_compose(document, "api", 8080)


@pytest.mark.parametrize(
    ("text", "name", "given", "main", "port"),
    [
        (DB_THEN_WEB, "web", None, "web", 80),  # named like --name: the others do not matter
        ("services:\n  app: {image: x, expose: ['3000']}\n", "api", None, "app", 3000),
        (WEB_COMPOSE, "api", None, "web", 8080),  # the only one with a port (cache has none)
        ("services:\n  app: {image: x}\n", "api", 9000, "app", 9000),  # --port given
    ],
)
def test_an_unambiguous_main_service_is_found_as_before(
    text: str, name: str, given: int | None, main: str, port: int
) -> None:
    facts = inspect_compose(parse_compose(text), name, given)
    assert (facts.main_service, facts.container_port) == (main, port)


def test_deploy_that_would_route_to_the_database_is_refused(
    sample_home: Path, tmp_path: Path
) -> None:
    compose = tmp_path / "api.yml"
    compose.write_text(DB_THEN_WEB)
    before = files_of(sample_home)
    done = run_dynia(sample_home, "deploy", "--name", "api", "--compose", str(compose))
    refused(done, "'db' (port 5432)", "'web' (port 80)", "--name")
    assert done.exit_code == 2
    assert files_of(sample_home) == before
    assert "api" not in StateStore(sample_home).load().clusters["demo"].services
