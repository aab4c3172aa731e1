"""Render: golden files per template, determinism, hashes, validation by the real programs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sample_state import render_sample, sample_cluster

from dynia.errors import RenderError
from dynia.operations.deploy_config import render_cluster, render_inputs
from dynia.paths import HomeLayout
from dynia.providers import node_provider_traits
from dynia.render.renderer import Renderer, RenderInputs
from dynia.render.validate import pick_stable_interface

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_FILES = [
    "haproxy/haproxy.cfg",
    "caddy/misty-owl.Caddyfile",
    "caddy/quiet-fox.Caddyfile",
    "firewall/dynia-firewall.nft",
    "keepalived/misty-owl.conf",
    "keepalived/quiet-fox.conf",
    "services/web/docker-compose.yml",
    "cluster-metadata.json",
    # The manifest: every file's target, mode, validate command and role variable, every
    # component's unit, action and order, written once.
    "metadata.json",
]


@pytest.fixture
def layout(tmp_path: Path) -> HomeLayout:
    return HomeLayout(tmp_path / "home")


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("relative", GOLDEN_FILES)
def test_rendered_file_matches_golden(layout: HomeLayout, relative: str) -> None:
    result = render_sample(layout, sample_cluster())
    rendered = (result.directory / relative).read_text()
    golden = GOLDEN / relative
    if os.environ.get("DYNIA_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_same_state_renders_byte_identical_folder(layout: HomeLayout, tmp_path: Path) -> None:
    first = tree_bytes(render_sample(layout, sample_cluster()).directory)
    copy = tmp_path / "first"
    shutil.copytree(layout.deploy_config_dir("demo"), copy)
    second = tree_bytes(render_sample(layout, sample_cluster()).directory)
    assert first == second
    assert tree_bytes(copy) == second


def test_manifest_hashes_are_the_files_real_sha256(layout: HomeLayout) -> None:
    result = render_sample(layout, sample_cluster())
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["files"], "the manifest lists the node files"
    for entry in manifest["files"]:
        content = (result.directory / entry["source"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()


def test_manifest_names_targets_components_and_nodes(layout: HomeLayout) -> None:
    manifest = json.loads(render_sample(layout, sample_cluster()).manifest_path.read_text())
    by_source = {e["source"]: e for e in manifest["files"]}
    assert by_source["haproxy/haproxy.cfg"]["target"] == "/etc/haproxy/haproxy.cfg"
    assert by_source["haproxy/haproxy.cfg"]["nodes"] == ["amber-elk", "misty-owl", "quiet-fox"]
    assert by_source["keepalived/quiet-fox.conf"]["nodes"] == ["quiet-fox"]
    assert by_source["services/web/docker-compose.yml"]["component"] == "service:web"
    assert manifest["components"]["service:web"]["health_url"] == ("http://127.0.0.1:20000/healthz")
    targets = [(e["target"], e["source"]) for e in manifest["files"]]
    assert targets == sorted(targets)


def test_keepalived_peers_priority_and_virtual_address_per_node(layout: HomeLayout) -> None:
    result = render_sample(layout, sample_cluster())
    master = (result.directory / "keepalived/misty-owl.conf").read_text()
    backup = (result.directory / "keepalived/quiet-fox.conf").read_text()
    assert "priority 150" in master and "priority 99" in backup
    assert "unicast_src_ip 172.30.9.11" in backup
    assert "172.30.9.10\n" in backup and "172.30.9.12\n" in backup
    assert "172.30.9.250/24" in master


def test_a_local_cluster_lets_a_lossy_link_drop_five_adverts_before_a_backup_claims(
    layout: HomeLayout,
) -> None:
    traits = node_provider_traits("local")
    cluster = sample_cluster()
    cluster.settings.vrrp_advert_int = traits.default_vrrp_advert_int
    cluster.settings.vrrp_down_timer_adverts = traits.default_vrrp_down_timer_adverts
    report = render_cluster(layout, cluster)
    assert "keepalived" in {v.program for v in report.validations if not v.skipped}
    text = (report.result.directory / "keepalived/quiet-fox.conf").read_text()
    assert "advert_int 0.1\n" in text and "down_timer_adverts 6\n" in text
    # A MASTER counted dead after 0.6 s, as with 0.15 s adverts and the RFCs' 3 plus skew.
    assert 0.5 <= traits.default_vrrp_advert_int * traits.default_vrrp_down_timer_adverts <= 0.7
    assert "vrrp_higher_prio_send_advert true" in text


def test_api_mode_provider_gets_notify_script_and_no_virtual_address(
    layout: HomeLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITALOCEAN_FAILOVER_TOKEN", "dop_v1_failover")
    cluster = sample_cluster(node_provider="digitalocean")
    text = (render_sample(layout, cluster).directory / "keepalived/misty-owl.conf").read_text()
    # The Reserved IP is moved by the API, never carried by VRRP; keepalived 2.x still needs one
    # address per instance, so the MASTER holds only a host-local marker on lo.
    assert cluster.reserved_ip is not None and cluster.reserved_ip.address not in text
    assert "169.254.0.51/32 dev lo" in text
    assert "notify_master" in text


def test_rendered_configs_pass_their_programs_validation(layout: HomeLayout) -> None:
    for program in ("haproxy", "caddy", "keepalived", "docker-compose"):
        assert shutil.which(program), f"{program} must be installed for this test"
    report = render_cluster(layout, sample_cluster())
    checked = {v.program for v in report.validations if not v.skipped}
    assert {"haproxy", "caddy", "keepalived", "docker-compose"} <= checked


def test_invalid_config_fails_validation_and_keeps_previous_folder(
    layout: HomeLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = sample_cluster()
    render_cluster(layout, cluster)
    before = tree_bytes(layout.deploy_config_dir("demo"))
    cluster.settings.caddy_port = 70000  # no program accepts this port
    # The render's own input check refuses it first (tests/unit/test_injection.py); without that
    # check the programs' validation must still catch it.
    for where in ("dynia.render.renderer", "dynia.operations.deploy_config"):
        monkeypatch.setattr(f"{where}.check_render_inputs", lambda *_: None)
    with pytest.raises(RenderError, match="validation"):
        render_cluster(layout, cluster)
    assert tree_bytes(layout.deploy_config_dir("demo")) == before


def test_missing_template_variable_is_a_clear_error(layout: HomeLayout, tmp_path: Path) -> None:
    renderer = Renderer(layout)
    broken = tmp_path / "templates"
    (broken / "haproxy" / "templates").mkdir(parents=True)
    (broken / "haproxy" / "templates" / "haproxy.cfg.j2").write_text("{{ haproxy_no_such }}\n")
    import jinja2

    renderer.env.loader = jinja2.FileSystemLoader([str(broken), str(renderer.roles_dir)])
    cluster = sample_cluster()
    with pytest.raises(RenderError, match="haproxy_no_such"):
        renderer.render(cluster, inputs=render_inputs(layout, cluster))
    assert not layout.deploy_config_dir("demo").exists()


def test_a_single_node_cluster_renders_a_valid_keepalived_config(layout: HomeLayout) -> None:
    cluster = sample_cluster()
    for name in ("quiet-fox", "amber-elk"):
        del cluster.nodes[name]
    report = render_cluster(layout, cluster)
    assert "keepalived" in {v.program for v in report.validations if not v.skipped}
    text = (report.result.directory / "keepalived/misty-owl.conf").read_text()
    assert "unicast_peer" not in text and "172.30.9.250/24" in text


def test_the_renderer_imports_no_provider_and_reads_no_environment() -> None:
    # Rendering is state plus RenderInputs in, files out: the render operation decides the rest.
    probe = (
        "import sys, dynia.render.renderer, dynia.render.validate; "
        "print([m for m in sys.modules if m.startswith('dynia.providers')])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
    for source in Path("dynia/render").glob("*.py"):
        text = source.read_text()
        assert "os.environ" not in text and "getenv" not in text, source


def test_explicit_inputs_decide_the_api_mode_files_whatever_the_environment(
    layout: HomeLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_FAILOVER_TOKEN", "DIGITALOCEAN_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DYNIA_CREDENTIALS_FILE", str(layout.root / "no-credentials.json"))
    inputs = RenderInputs(
        reserved_ip_mode="api",
        failover_token_file=b"given\n",
        digitalocean_api_url="http://127.0.0.1:9",
    )
    assert "given" not in repr(inputs)
    folder = Renderer(layout).render(sample_cluster(), inputs=inputs).directory
    assert (folder / "secrets/digitalocean-token").read_bytes() == b"given\n"
    assert "http://127.0.0.1:9" in (folder / "keepalived/notify-master.sh").read_text()
    assert "169.254.0.51/32 dev lo" in (folder / "keepalived/misty-owl.conf").read_text()


def test_bootstrap_reads_each_roles_files_from_the_manifest(layout: HomeLayout) -> None:
    spec = importlib.util.spec_from_file_location(
        "dynia_manifest", Path(__file__).parents[2] / "playbooks/filter_plugins/dynia_manifest.py"
    )
    assert spec is not None and spec.loader is not None
    filters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(filters)
    cert = layout.tls_dir("demo") / "cluster.pem"
    inputs = RenderInputs(tls_certificate=b"pem\n")
    result = Renderer(layout).render(sample_cluster(), inputs=inputs)
    manifest = json.loads(result.manifest_path.read_text())
    found = filters.role_vars(manifest["files"], "quiet-fox", "/dc")
    assert found == {
        "haproxy_config_source": "/dc/haproxy/haproxy.cfg",
        "haproxy_tls_certificate_source": "/dc/haproxy/certs/cluster.pem",
        "haproxy_tls_certificate_path": "/etc/haproxy/certs/cluster.pem",
        "caddy_config_source": "/dc/caddy/quiet-fox.Caddyfile",
        "dynia_firewall_config_source": "/dc/firewall/dynia-firewall.nft",
        "keepalived_config_source": "/dc/keepalived/quiet-fox.conf",
    }
    assert not cert.exists(), "the certificate came from the inputs, not the home"


def test_every_config_in_the_manifest_carries_its_node_check(layout: HomeLayout) -> None:
    manifest = json.loads(render_sample(layout, sample_cluster()).manifest_path.read_text())
    checks = {e["source"]: e["validate"] for e in manifest["files"]}
    assert checks["haproxy/haproxy.cfg"] == "haproxy -c -q -f %s"
    assert checks["firewall/dynia-firewall.nft"] == "nft -c -f %s"
    assert checks["keepalived/misty-owl.conf"] == "keepalived -t -f %s"
    assert checks["caddy/misty-owl.Caddyfile"].startswith("caddy validate")
    order = sorted((c["order"], name) for name, c in manifest["components"].items() if "order" in c)
    assert [name for _, name in order] == ["firewall", "caddy", "haproxy", "keepalived"]


ROUTES_WITH_DEFAULT = (
    "Iface\tDestination\tGateway\tFlags\n"
    "br-14364cf53e96\t000012AC\t00000000\t0001\n"
    "ens3\t00000000\t010200C0\t0003\n"
)


def test_keepalived_is_checked_against_the_default_route_interface() -> None:
    # A container bridge sorts first but may be gone by the time `keepalived -t` runs.
    names = ["br-14364cf53e96", "docker0", "ens3", "lo", "veth12ab"]
    assert pick_stable_interface(ROUTES_WITH_DEFAULT, names) == "ens3"


def test_without_a_default_route_a_container_interface_is_the_last_choice() -> None:
    assert pick_stable_interface("", ["br-1", "docker0", "eth1", "lo"]) == "eth1"
    assert pick_stable_interface("", ["br-1", "lo"]) == "br-1"
    assert pick_stable_interface("", ["lo"]) is None
