"""No value reaches a config file or a script on the nodes unless it matches a strict pattern.

Each field of state that the renderer writes somewhere (keepalived.conf, haproxy.cfg, the
Caddyfile, the notify-master script, known_hosts, compose files) gets a newline, a quote, a ';',
a '$(...)' and a backtick: loading the state refuses it naming the field, rendering a cluster
that holds it refuses it naming the field and leaves deploy-config as it was. The same for the
environment's API URLs and the command-line flags.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from cli_invoke import run_dynia
from sample_state import WEB_COMPOSE, render_sample, sample_cluster, save_sample

from dynia.endpoints import LOOPBACK, PRIVATE, check_endpoint
from dynia.errors import DyniaError, RenderError, StateError, UsageError
from dynia.paths import HomeLayout
from dynia.providers.cloudflare import CloudflareDnsProvider
from dynia.render.compose import loopback_port, node_compose, parse_compose
from dynia.render.renderer import shell_quote
from dynia.state import SCHEMA_VERSION, StateStore
from dynia.state.models import Cluster
from dynia.state.validation import parse_state

PAYLOADS = {
    "newline": "\n notify_master \"/bin/sh -c 'touch /tmp/p'\"",
    "quote": '"',
    "semicolon": "; touch /tmp/p",
    "command": "$(touch /tmp/p)",
    "backtick": "`touch /tmp/p`",
}

Mutation = Callable[[dict[str, Any], str], None]


def _set(*keys: str) -> Mutation:
    """Append the payload to the value at ``keys`` in a cluster's dict."""

    def mutate(cluster: dict[str, Any], payload: str) -> None:
        *parents, last = keys
        target = cluster
        for key in parents:
            target = target[key]
        target[last] = f"{target[last]}{payload}"

    return mutate


def _set_host_key(cluster: dict[str, Any], payload: str) -> None:
    cluster["nodes"]["misty-owl"]["host_keys"] = [f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5{payload}"]


# A number with the payload appended becomes a string: a hand-edited state.
_set_number = _set


# field path under clusters.demo -> how to put a payload into it
FIELDS: dict[str, Mutation] = {
    "network.interface": _set("network", "interface"),
    "network.subnet": _set("network", "subnet"),
    "network.name": _set("network", "name"),
    "network.gateway": _set("network", "gateway"),
    "reserved_ip.address": _set("reserved_ip", "address"),
    "nodes.misty-owl.public_ip": _set("nodes", "misty-owl", "public_ip"),
    "nodes.misty-owl.private_ip": _set("nodes", "misty-owl", "private_ip"),
    "nodes.misty-owl.host_keys[0]": _set_host_key,
    "nodes.misty-owl": _set("nodes", "misty-owl", "name"),
    "nodes.misty-owl.priority": _set_number("nodes", "misty-owl", "priority"),
    "services.web": _set("services", "web", "name"),
    "services.web.health_path": _set("services", "web", "health_path"),
    "services.web.main_service": _set("services", "web", "main_service"),
    "services.web.internal_port": _set_number("services", "web", "internal_port"),
    "services.web.container_port": _set_number("services", "web", "container_port"),
    "routes.web.demo.test": _set("routes", "web.demo.test", "domain"),
    "settings.health_path": _set("settings", "health_path"),
    "settings.caddy_port": _set_number("settings", "caddy_port"),
    "settings.http_port": _set_number("settings", "http_port"),
    "settings.https_port": _set_number("settings", "https_port"),
    "settings.vrrp_router_id": _set_number("settings", "vrrp_router_id"),
    "settings.vrrp_advert_int": _set_number("settings", "vrrp_advert_int"),
    "region": _set("region"),
    "size": _set("size"),
    "node_provider": _set("node_provider"),
    "dns_provider": _set("dns_provider"),
}
# Numbers: a string there is refused by the shape check when state is loaded.
NUMBERS = {name for name in FIELDS if name.endswith(("_port", "priority", "_id", "_int"))}
CASES = [pytest.param(f, p, id=f"{f}-{n}") for f in FIELDS for n, p in PAYLOADS.items()]


def _state_dict(mutate: Mutation, payload: str) -> dict[str, Any]:
    cluster = sample_cluster().to_dict()
    mutate(cluster, payload)
    return {
        "schema_version": SCHEMA_VERSION,
        "current_cluster": "demo",
        "clusters": {"demo": cluster},
    }


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[HomeLayout, dict[str, bytes]]:
    layout = HomeLayout(tmp_path_factory.mktemp("injection") / "home")
    render_sample(layout, sample_cluster())
    return layout, tree(layout.deploy_config_dir("demo"))


# --- state: refused when loaded ------------------------------------------------------------------


@pytest.mark.parametrize(("field", "payload"), CASES)
def test_state_with_a_payload_in_a_field_is_refused_naming_the_field(
    tmp_path: Path, field: str, payload: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "state.json").write_text(json.dumps(_state_dict(FIELDS[field], payload)))
    with pytest.raises(StateError) as caught:
        StateStore(home).load()
    assert f"clusters.demo.{field}" in caught.value.message
    assert caught.value.hint


# --- render: refused again, nothing written ------------------------------------------------------


@pytest.mark.parametrize(("field", "payload"), [c for c in CASES if c.values[0] not in NUMBERS])
def test_render_refuses_a_payload_naming_the_field_and_writes_nothing(
    rendered: tuple[HomeLayout, dict[str, bytes]], field: str, payload: str
) -> None:
    layout, before = rendered
    # Built without validation, as a cluster changed in memory would be.
    cluster = Cluster.from_dict(_state_dict(FIELDS[field], payload)["clusters"]["demo"])
    with pytest.raises(RenderError) as caught:
        render_sample(layout, cluster)
    assert f"clusters.demo.{field}" in caught.value.message
    assert tree(layout.deploy_config_dir("demo")) == before


def test_interface_with_a_newline_never_reaches_keepalived_conf(
    rendered: tuple[HomeLayout, dict[str, bytes]],
) -> None:
    layout, before = rendered
    cluster = sample_cluster()
    assert cluster.network is not None
    cluster.network.interface = "eth0\n    notify_master \"/bin/sh -c 'touch /tmp/p'\""
    with pytest.raises(RenderError, match=r"clusters\.demo\.network\.interface"):
        render_sample(layout, cluster)
    assert tree(layout.deploy_config_dir("demo")) == before
    assert not any(b"/bin/sh" in content for content in before.values())


@pytest.mark.parametrize(
    "address", ["fe80::1%eth0", "fe80::1%$(touch /tmp/p)", "fe80::1%a;b", " 10.0.0.1"]
)
def test_an_ipv6_scope_id_or_space_is_not_an_address(address: str) -> None:
    # Python's ipaddress accepts a scope id of any text; state must not.
    state = _state_dict(lambda c, _: c["nodes"]["misty-owl"].update(private_ip=address), "")
    with pytest.raises(ValueError, match=r"nodes\.misty-owl\.private_ip"):
        parse_state(state)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0, 1000.0])
def test_advert_interval_must_be_a_finite_sensible_number(value: float) -> None:
    state = _state_dict(lambda c, _: c["settings"].update(vrrp_advert_int=value), "")
    with pytest.raises(ValueError, match=r"settings\.vrrp_advert_int"):
        parse_state(state)


def test_a_trailing_newline_in_a_name_is_refused() -> None:
    # re.match with "$" lets "name\n" through; the checks use fullmatch.
    state = _state_dict(lambda c, _: c["services"]["web"].update(name="web\n"), "")
    state["clusters"]["demo"]["services"] = {"web\n": state["clusters"]["demo"]["services"]["web"]}
    with pytest.raises(ValueError, match="invalid service name"):
        parse_state(state)


def test_a_home_path_with_a_newline_is_refused_before_writing(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path / "home\n[defaults]")
    with pytest.raises(RenderError, match="control character"):
        render_sample(layout, sample_cluster())
    assert not layout.deploy_config_dir("demo").exists()


def test_the_sample_cluster_still_passes_every_check() -> None:
    parse_state(_state_dict(lambda c, _: None, ""))


# --- the environment's API URLs ------------------------------------------------------------------

URL_PAYLOADS = [
    'http://x"; touch /tmp/p; echo "',
    "https://api.example.com/v2\n",
    "https://api.example.com/;touch",
    "https://api.example.com/$(touch /tmp/p)",
    "https://api.example.com/`touch /tmp/p`",
    "https://api.example.com/'",
    "https://user@api.example.com",
    "ftp://api.example.com",
]
DO_URL_ENVS = ("DIGITALOCEAN_API_URL", "DIGITALOCEAN_METADATA_URL")


@pytest.mark.parametrize("env", DO_URL_ENVS)
@pytest.mark.parametrize("url", [*URL_PAYLOADS, "http://8.8.8.8/v1", "http://api.example.com"])
def test_digitalocean_urls_are_checked_before_the_notify_script_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, url: str
) -> None:
    monkeypatch.delenv("DIGITALOCEAN_TOKEN", raising=False)
    monkeypatch.setenv("DIGITALOCEAN_FAILOVER_TOKEN", "dop_v1_failover")
    layout = HomeLayout(tmp_path / "home")
    cluster = sample_cluster(node_provider="digitalocean")
    render_sample(layout, cluster)
    before = tree(layout.deploy_config_dir("demo"))
    monkeypatch.setenv(env, url)
    with pytest.raises(UsageError) as caught:
        render_sample(layout, cluster)
    assert env in caught.value.message and caught.value.hint
    assert tree(layout.deploy_config_dir("demo")) == before


@pytest.mark.parametrize(
    "url",
    [
        "https://api.digitalocean.com",
        "http://127.0.0.1:45123",  # the fake API in the fast tests
        "http://172.17.0.1:45123/metadata/v1",  # the fake on a bridge the nodes reach (e2e)
        "http://169.254.169.254/metadata/v1",  # the droplet metadata service
    ],
)
def test_digitalocean_urls_of_the_real_api_and_the_test_fakes_render(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DIGITALOCEAN_API_URL", url)
    monkeypatch.setenv("DIGITALOCEAN_METADATA_URL", url)
    monkeypatch.setenv("DIGITALOCEAN_FAILOVER_TOKEN", "dop_v1_failover")
    layout = HomeLayout(tmp_path / "home")
    result = render_sample(layout, sample_cluster(node_provider="digitalocean"))
    script = (result.directory / "keepalived/notify-master.sh").read_text()
    assert f"API_URL={url}\n" in script and f"METADATA_URL={url}\n" in script
    assert "RESERVED_IP=172.30.9.250\n" in script


@pytest.mark.parametrize("url", [*URL_PAYLOADS, "http://10.0.0.5:8080", "http://api.example.com"])
def test_cloudflare_base_url_is_https_or_loopback_http(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("CLOUDFLARE_BASE_URL", url)
    with pytest.raises(DyniaError) as caught:
        CloudflareDnsProvider("t" * 40)
    assert "CLOUDFLARE_BASE_URL" in caught.value.message
    with pytest.raises(DyniaError, match="CLOUDFLARE_BASE_URL"):
        CloudflareDnsProvider("t" * 40, base_url=url)


@pytest.mark.parametrize(
    "url",
    ["https://api.cloudflare.com/client/v4", "http://127.0.0.1:40001", "http://localhost:1"],
)
def test_cloudflare_base_url_of_the_real_api_and_the_fake_are_accepted(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("CLOUDFLARE_BASE_URL", url)
    assert CloudflareDnsProvider("t" * 40).base_url == url


def test_endpoint_scopes() -> None:
    assert check_endpoint("X", "http://10.1.2.3:80/", PRIVATE) == "http://10.1.2.3:80"
    assert check_endpoint("X", "http://[::1]:80", LOOPBACK) == "http://[::1]:80"
    for url, scope in [("http://10.1.2.3", LOOPBACK), ("http://1.1.1.1", PRIVATE)]:
        with pytest.raises(UsageError, match="plain http"):
            check_endpoint("X", url, scope)
    with pytest.raises(UsageError, match="port"):
        check_endpoint("X", "https://example.com:99999")


# --- shell quoting -------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [*PAYLOADS.values(), "a'b", "", "x\\y"])
def test_a_quoted_value_stays_one_inert_word_in_bash(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "p"
    value = payload.replace("/tmp/p", str(marker))
    script = f'X={shell_quote(value)}\nprintf %s "$X"\n'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout == value
    assert not marker.exists()


# --- command-line flags --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
@pytest.mark.parametrize(
    ("flag", "good", "named"),
    [
        ("--health-path", "/healthz", "--health-path"),
        ("--name", "web", "service name"),
        ("--domain", "a.b.test", "domain"),
    ],
)
def test_deploy_flags_with_a_payload_are_refused_naming_the_flag(
    tmp_path: Path, flag: str, good: str, named: str, payload: str
) -> None:
    home = tmp_path / "home"
    save_sample(home)
    compose = tmp_path / "web.yml"
    compose.write_text(WEB_COMPOSE)
    before = StateStore(home).path.read_bytes()
    args = {"--name": "web", "--health-path": "/healthz"}
    args[flag] = good + payload
    words = [word for pair in args.items() for word in pair]
    # The flags are refused before the images are looked at (which would ask Docker).
    reached = AssertionError("the deploy reached the image check")
    with mock.patch("dynia.operations.images.resolve_images", side_effect=reached):
        outcome = run_dynia(home, "deploy", "--compose", str(compose), *words)
    assert outcome.exit_code == 2, outcome.stderr
    assert named in outcome.stderr
    assert StateStore(home).path.read_bytes() == before


# --- files on the nodes --------------------------------------------------------------------------


def test_compose_files_go_to_nodes_root_only(tmp_path: Path) -> None:
    result = render_sample(HomeLayout(tmp_path / "home"), sample_cluster())
    manifest = json.loads(result.manifest_path.read_text())
    compose = [f for f in manifest["files"] if f["component"].startswith("service:")]
    assert compose and all(f["mode"] == "0600" and f["owner"] == "root" for f in compose)
    local = result.directory / "services/web/docker-compose.yml"
    assert local.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("5432:5432", "127.0.0.1:5432:5432"),
        ("5432", "127.0.0.1::5432"),
        (5432, "127.0.0.1::5432"),
        ("53:53/udp", "127.0.0.1:53:53/udp"),
        ("8000-8001:80-81", "127.0.0.1:8000-8001:80-81"),
        ("0.0.0.0:5432:5432", "0.0.0.0:5432:5432"),
        ("10.0.0.5:5432:5432", "10.0.0.5:5432:5432"),
        ("[::]:5432:5432", "[::]:5432:5432"),
        (
            {"target": 80, "published": 8080},
            {"target": 80, "published": 8080, "host_ip": "127.0.0.1"},
        ),
        ({"target": 80, "host_ip": "0.0.0.0"}, {"target": 80, "host_ip": "0.0.0.0"}),
    ],
)
def test_published_ports_bind_loopback_unless_an_address_is_named(
    entry: Any, expected: Any
) -> None:
    assert loopback_port(entry) == expected


def test_only_other_services_ports_change_and_the_main_one_is_dynias() -> None:
    text = """\
services:
  web:
    image: web:1
    ports: ["0.0.0.0:80:8080"]
  db:
    image: db:1
    ports: ["5432:5432", "0.0.0.0:9187:9187", {target: 6379}]
"""
    original = parse_compose(text)
    snapshot = copy.deepcopy(original)
    services = yaml.safe_load(node_compose(original, "web", 20000, 8080))["services"]
    assert services["web"]["ports"] == ["127.0.0.1:20000:8080"]
    assert services["db"]["ports"] == [
        "127.0.0.1:5432:5432",
        "0.0.0.0:9187:9187",
        {"target": 6379, "host_ip": "127.0.0.1"},
    ]
    assert original == snapshot  # the operator's document is not changed in place
