"""The nodes of a DigitalOcean cluster get a narrowly scoped failover token, never the main one.

keepalived's notify-master on every node moves the Reserved IP through the API, so the nodes hold
a token (``/etc/dynia/digitalocean-token``). ``DIGITALOCEAN_FAILOVER_TOKEN`` is that token. Without
it a render (and so create, deploy, repair...) is refused, saying how to make one, unless the
operator accepted the main token on the nodes with ``--allow-main-token-on-nodes``, which state
remembers for the cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_invoke import run_dynia
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import FakeDigitalOcean, InMemoryDropletBackend
from sample_state import render_sample, sample_cluster, save_sample

from dynia.errors import ProviderError, RenderError
from dynia.paths import HomeLayout
from dynia.providers.base import NodeSpec
from dynia.providers.digitalocean.api import RetryPolicy
from dynia.providers.digitalocean.provider import DigitalOceanNodeProvider, Timeouts

MAIN = "dop_v1_" + "a" * 64
FAILOVER = "dop_v1_" + "b" * 64
SECRET = "secrets/digitalocean-token"
SCOPES = ("reserved_ip:read", "reserved_ip:update", "droplet:read", "actions:read")


@pytest.fixture(autouse=True)
def no_tokens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DYNIA_CREDENTIALS_FILE", str(tmp_path / "no-credentials.json"))
    for name in ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_FAILOVER_TOKEN", "DIGITALOCEAN_API_URL"):
        monkeypatch.delenv(name, raising=False)


def tree(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def holding(folder: Path, token: str) -> list[str]:
    return sorted(name for name, data in tree(folder).items() if token.encode() in data)


def test_a_digitalocean_render_without_failover_token_is_refused_saying_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", MAIN)
    layout = HomeLayout(tmp_path / "home")
    with pytest.raises(RenderError) as caught:
        render_sample(layout, sample_cluster(node_provider="digitalocean"))
    error = caught.value
    assert "DIGITALOCEAN_FAILOVER_TOKEN" in error.message
    assert error.hint and all(scope in error.hint for scope in SCOPES)
    assert "DIGITALOCEAN_FAILOVER_TOKEN" in error.hint
    assert "--allow-main-token-on-nodes" in error.hint
    assert tree(layout.deploy_config_dir("demo")) == {}


def test_the_failover_token_goes_to_the_nodes_and_the_main_token_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", MAIN)
    monkeypatch.setenv("DIGITALOCEAN_FAILOVER_TOKEN", FAILOVER)
    layout = HomeLayout(tmp_path / "home")
    folder = render_sample(layout, sample_cluster(node_provider="digitalocean")).directory
    assert (folder / SECRET).read_text() == FAILOVER + "\n"
    assert holding(folder, FAILOVER) == [SECRET]
    assert holding(folder, MAIN) == []


def test_a_failover_token_that_is_the_main_token_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", MAIN)
    monkeypatch.setenv("DIGITALOCEAN_FAILOVER_TOKEN", MAIN)
    with pytest.raises(RenderError, match="holds the main DIGITALOCEAN_TOKEN"):
        render_sample(HomeLayout(tmp_path / "home"), sample_cluster(node_provider="digitalocean"))


def test_an_accepted_main_token_goes_to_the_nodes_and_offline_renders_leave_it_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = HomeLayout(tmp_path / "home")
    cluster = sample_cluster(node_provider="digitalocean")
    cluster.settings.allow_main_credential_on_nodes = True
    offline = render_sample(layout, cluster)
    assert SECRET not in tree(offline.directory)
    assert {f.source for f in offline.files} >= {"keepalived/notify-master.sh"}
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", MAIN)
    folder = render_sample(layout, cluster).directory
    assert (folder / SECRET).read_text() == MAIN + "\n"


def test_local_clusters_need_no_token(tmp_path: Path) -> None:
    folder = render_sample(HomeLayout(tmp_path / "home"), sample_cluster()).directory
    assert SECRET not in tree(folder)


def test_render_flag_is_remembered_in_state_and_can_be_withdrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", MAIN)
    home = tmp_path / "home"
    save_sample(home, sample_cluster(node_provider="digitalocean"))
    state_before = (home / "state.json").read_bytes()

    refused = run_dynia(home, "render", "--no-validate")
    assert refused.exit_code != 0
    assert (
        "DIGITALOCEAN_FAILOVER_TOKEN" in refused.stderr and "reserved_ip:update" in refused.stderr
    )
    assert (home / "state.json").read_bytes() == state_before
    assert not (home / "deploy-config" / "demo").exists()

    accepted = run_dynia(home, "render", "--no-validate", "--allow-main-token-on-nodes")
    assert accepted.exit_code == 0, accepted.stderr
    assert run_dynia(home, "render", "--no-validate").exit_code == 0  # remembered
    settings = json.loads((home / "state.json").read_text())["clusters"]["demo"]["settings"]
    assert settings["allow_main_credential_on_nodes"] is True

    withdrawn = run_dynia(home, "render", "--no-validate", "--no-allow-main-token-on-nodes")
    assert withdrawn.exit_code != 0 and "DIGITALOCEAN_FAILOVER_TOKEN" in withdrawn.stderr
    # The refused render saved nothing: the consent stays until a render succeeds without it.
    settings = json.loads((home / "state.json").read_text())["clusters"]["demo"]["settings"]
    assert settings["allow_main_credential_on_nodes"] is True
    monkeypatch.setenv("DIGITALOCEAN_FAILOVER_TOKEN", FAILOVER)
    args = ("render", "--no-validate", "--no-allow-main-token-on-nodes")
    assert run_dynia(home, *args).exit_code == 0
    settings = json.loads((home / "state.json").read_text())["clusters"]["demo"]["settings"]
    assert settings["allow_main_credential_on_nodes"] is False


def test_create_without_failover_token_is_refused_before_anything_is_recorded_or_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    with FakeDigitalOcean(MAIN) as fake:
        monkeypatch.setenv("DIGITALOCEAN_TOKEN", MAIN)
        monkeypatch.setenv("DIGITALOCEAN_API_URL", fake.api_url)
        args = ("cluster", "create", "--name", "prod", "--node-provider", "digitalocean")
        refused = run_dynia(home, *args, "--region", "fra1", "--size", "s-1vcpu-1gb")
        assert refused.exit_code == 2
        assert "refusing to create cluster 'prod'" in refused.stderr
        assert (
            "reserved_ip:read" in refused.stderr and "--allow-main-token-on-nodes" in refused.stderr
        )
        assert fake.exchanges == []
    state = home / "state.json"
    assert not state.exists() or "prod" not in json.loads(state.read_text())["clusters"]


def test_a_token_with_only_the_failover_scopes_moves_the_reserved_ip_and_nothing_else() -> None:
    options: dict[str, Any] = {
        "region": "fra1",
        "timeouts": Timeouts(active=10, ssh=10, action=1.5, poll_interval=0.05),
        "retry": RetryPolicy(attempts=2, base_delay=0.05),
        "progress": lambda _line: None,
    }
    with FakeDigitalOcean(MAIN) as fake:
        fake.add_scoped_token(FAILOVER, set(SCOPES))
        backend = fake.backend
        assert isinstance(backend, InMemoryDropletBackend)
        options.update(api_url=fake.api_url, ssh_port=backend.ssh_port)
        main = DigitalOceanNodeProvider(MAIN, **options)
        nodes = [
            main.create_node(NodeSpec("prod", name, "fra1", "s-1vcpu-1gb", _public_key()))
            for name in ("ash-elk", "bold-fox")
        ]
        rip = main.allocate_reserved_ip("prod", "fra1")
        main.attach_reserved_ip(rip, nodes[0].provider_id)  # allocate does not wait for it
        target = nodes[1]

        narrow = DigitalOceanNodeProvider(FAILOVER, **options)
        narrow.attach_reserved_ip(rip, target.provider_id)
        assert backend.assignments[rip.address] == int(target.provider_id)
        with pytest.raises(ProviderError, match="403"):
            narrow.delete_node("prod", nodes[0].provider_id)  # reads, then may not delete
        with pytest.raises(ProviderError, match="403"):
            narrow.ensure_network("prod")
        assert len(fake.droplets) == 2


def _public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
