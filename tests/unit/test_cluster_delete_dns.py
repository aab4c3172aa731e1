"""`dynia cluster delete` and `dynia route unbind` when the Cloudflare side cannot do its part.

The CLI runs in-process against both loopback fakes: the cluster's droplets, VPC and Reserved IP
live in the fake DigitalOcean account, its A records in the fake Cloudflare account. A zone or
record already gone counts as deleted; a DNS failure leaves the cluster whole and names
`--keep-dns`, which deletes everything else and names each record left behind with its id.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_invoke import Outcome, run_dynia
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import FakeCloudflare, FakeDigitalOcean
from sample_state import sample_cluster, save_sample
from test_orchestration import Rig, make_rig

from dynia.errors import ProviderError
from dynia.operations import certificates
from dynia.operations.deploy import unbind_route
from dynia.operations.deploy_config import render_cluster
from dynia.providers.base import NodeSpec
from dynia.providers.cloudflare import CloudflareDnsProvider
from dynia.providers.digitalocean.provider import DigitalOceanNodeProvider, Timeouts
from dynia.state.models import ReservedIp, Route

DOMAINS = ("web.example.com", "www.example.com")  # deleted in this order
# Only for building the cluster quickly; the CLI's own provider keeps its defaults.
SETUP_TIMEOUTS = Timeouts(active=10, ssh=10, action=1.5, vpc_release=1.0, poll_interval=0.05)


@dataclass
class World:
    home: Path
    do: FakeDigitalOcean
    cf: FakeCloudflare
    address: str  # the cluster's Reserved IP
    record_ids: dict[str, str]  # domain -> Cloudflare record id

    def delete(self, *flags: str) -> Outcome:
        return run_dynia(self.home, "cluster", "delete", "--name", "demo", "--yes", *flags)

    def cluster_in_state(self) -> dict[str, Any] | None:
        state = json.loads((self.home / "state.json").read_text())
        return state["clusters"].get("demo")

    def cloud(self) -> tuple[int, list[str], list[str]]:
        """Droplets, Reserved IPs and Dynia VPCs left in the DigitalOcean account."""
        with self.do.lock:
            vpcs = [v["name"] for v in self.do.vpcs.values() if v["name"].startswith("dynia-")]
            return len(self.do.droplets), sorted(self.do.reserved_ips), vpcs


def _public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _cloud_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cf: FakeCloudflare) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", cf.token)
    monkeypatch.setenv("CLOUDFLARE_BASE_URL", cf.base_url)
    monkeypatch.setenv("DYNIA_CREDENTIALS_FILE", str(tmp_path / "absent.json"))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Cluster demo: three droplets, a VPC and a Reserved IP, two routes with their records."""
    with FakeDigitalOcean() as do, FakeCloudflare() as cf:
        cf.add_zone("example.com")
        monkeypatch.setenv("DIGITALOCEAN_TOKEN", do.token)
        monkeypatch.setenv("DIGITALOCEAN_API_URL", do.api_url)
        monkeypatch.delenv("DIGITALOCEAN_FAILOVER_TOKEN", raising=False)
        _cloud_env(monkeypatch, tmp_path, cf)
        provider = DigitalOceanNodeProvider(
            do.token,
            api_url=do.api_url,
            region="fra1",
            ssh_port=do.backend.ssh_port,
            timeouts=SETUP_TIMEOUTS,
            progress=lambda _line: None,
        )
        cluster = sample_cluster("demo", node_provider="digitalocean")
        cluster.dns_provider, cluster.region = "cloudflare", "fra1"
        key = _public_key()
        for node in cluster.nodes.values():
            spec = NodeSpec("demo", node.name, "fra1", "s-1vcpu-1gb", key)
            node.provider_id = provider.create_node(spec).provider_id
        provider.ensure_network("demo", "fra1")
        rip = provider.allocate_reserved_ip("demo", "fra1")
        cluster.reserved_ip = ReservedIp(rip.address, rip.provider_id, cluster.master.name)
        dns = CloudflareDnsProvider(cf.token, base_url=cf.base_url)
        ids = {d: dns.upsert_a_record(d, rip.address).id for d in DOMAINS}
        cluster.routes = {d: Route(d, "web", dns_record_id=ids[d]) for d in DOMAINS}
        save_sample(tmp_path / "home", cluster)
        yield World(tmp_path / "home", do, cf, rip.address, ids)


def test_a_zone_out_of_sight_stops_the_delete_and_keep_dns_gets_past_it(world: World) -> None:
    # Deleted in the dashboard, or the token lost access to it while its records still point at
    # the Reserved IP the delete would release: Dynia cannot tell, so it does not guess.
    with world.cf.lock:
        world.cf.zones.clear()

    refused = world.delete()

    assert refused.exit_code == 5
    assert "no Cloudflare zone holds" in refused.stderr
    assert "dynia cluster delete --name demo --keep-dns" in refused.stderr
    assert world.cloud() == (3, [world.address], ["dynia-demo"])

    done = world.delete("--keep-dns")

    assert done.exit_code == 0, done.stderr
    assert world.cloud() == (0, [], [])
    assert world.cluster_in_state() is None


def test_a_revoked_token_stops_the_delete_and_keep_dns_gets_past_it(world: World) -> None:
    world.cf.reject_token()

    refused = world.delete()

    assert refused.exit_code == 5
    assert "Cloudflare rejected the API token" in refused.stderr
    assert "nodes and Reserved IP were left as they are" in refused.stderr
    assert "dynia cluster delete --name demo --keep-dns" in refused.stderr
    assert world.cloud() == (3, [world.address], ["dynia-demo"])
    kept = world.cluster_in_state()
    assert kept is not None
    assert {d: r["dns_record_id"] for d, r in kept["routes"].items()} == world.record_ids

    asked_cloudflare = len(world.cf.exchanges)
    done = world.delete("--keep-dns")

    assert done.exit_code == 0, done.stderr
    assert "Deleted cluster demo." in done.stdout
    for domain, record_id in world.record_ids.items():
        left = f"DNS record left in place: {domain} (cloudflare, record id {record_id})"
        assert left in done.stderr
    assert f"it points at {world.address}, which this delete releases" in done.stderr
    assert world.cloud() == (0, [], [])
    assert len(world.cf.exchanges) == asked_cloudflare  # --keep-dns asks Cloudflare nothing
    assert len(world.cf.records) == 2  # left for the operator, as the warnings say
    assert world.cluster_in_state() is None


def test_an_unreadable_answer_to_a_record_delete_is_retried(world: World) -> None:
    # The delete takes effect; its answer is JSON cut short (a proxy between here and the API).
    world.cf.malformed_answers(
        '{"result": [', content_type="application/json", method="DELETE", after_serving=True
    )

    done = world.delete()

    assert done.exit_code == 0, done.stderr
    # Said on the command's progress output.
    assert "not valid JSON while deleting A record web.example.com" in done.stderr
    assert world.cf.records == {}
    assert world.cloud() == (0, [], [])
    assert world.cluster_in_state() is None


def test_records_deleted_before_a_dns_failure_are_forgotten_in_state(world: World) -> None:
    www = world.record_ids["www.example.com"]
    zone_id = next(iter(world.cf.zones))
    world.cf.inject(403, path_prefix=f"/client/v4/zones/{zone_id}/dns_records/{www}")

    refused = world.delete()

    assert refused.exit_code == 5
    assert "DNS record www.example.com of cluster demo could not be deleted" in refused.stderr
    assert "--keep-dns" in refused.stderr
    cluster = world.cluster_in_state()
    assert cluster is not None
    assert cluster["routes"]["web.example.com"]["dns_record_id"] is None  # deleted: forgotten
    assert cluster["routes"]["www.example.com"]["dns_record_id"] == www
    assert [r["name"] for r in world.cf.records.values()] == ["www.example.com"]
    assert world.cloud() == (3, [world.address], ["dynia-demo"])


# --- dynia route unbind ----------------------------------------------------------------------


@pytest.fixture
def cloudflare_rig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Rig, FakeCloudflare]]:
    """The sample cluster, serving, with Cloudflare DNS; the nodes are doubles (no SSH)."""
    tools = tmp_path / "tools"  # no haproxy, caddy, keepalived: renders skip their checks
    tools.mkdir()
    keygen = shutil.which("ssh-keygen")
    if keygen:
        (tools / "ssh-keygen").symlink_to(keygen)
    monkeypatch.setenv("PATH", str(tools))
    with FakeCloudflare() as cf:
        cf.add_zone("demo.test")
        _cloud_env(monkeypatch, tmp_path, cf)
        home = tmp_path / "home"
        rig = make_rig(home)
        cluster = sample_cluster()
        cluster.dns_provider = "cloudflare"
        made = certificates.issue_certificate(rig.layout, cluster)
        cluster.tls_fingerprint = made.fingerprint_sha256
        save_sample(home, cluster)
        render_cluster(rig.layout, cluster, validate=False)
        rig.provider.seed(cluster)
        yield rig, cf


def test_route_unbind_with_the_zone_out_of_sight_is_refused_and_changes_nothing(
    cloudflare_rig: tuple[Rig, FakeCloudflare],
) -> None:
    rig, cf = cloudflare_rig
    before = rig.cluster().routes
    with cf.lock:  # the zone was deleted, or the token lost access to it
        cf.zones.clear()

    with pytest.raises(ProviderError, match=r"no Cloudflare zone holds web\.demo\.test"):
        unbind_route(rig.ctx, "web.demo.test")

    assert rig.cluster().routes == before
    assert rig.journal == []
    assert "web.demo.test" in rig.deployed("caddy/misty-owl.Caddyfile")
