"""Cluster certificates from Cloudflare's Origin CA, against the loopback fake through the SDK.

What an operator would notice: the certificate HAProxy serves is signed by the Origin CA for
the routed domains, rotation revokes the replaced one only after the rollout, a token without
SSL and Certificates:Edit fails with a message saying so and leaves the served certificate as it
was, and end-to-end verify accepts the origin only when it serves exactly that certificate.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudflare.types.origin_ca_certificates import (
    OriginCACertificate,
    OriginCACertificateDeleteResponse,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fakes import FakeCloudflare
from sample_state import sample_cluster

from dynia import pki
from dynia.errors import ProviderError, UsageError, VerifyError
from dynia.operations import certificates, infra
from dynia.operations.deploy_config import render_cluster
from dynia.operations.verify import https_get, verify_route
from dynia.paths import HomeLayout
from dynia.providers import dns_provider_for, get_dns_provider
from dynia.providers.cloudflare import CloudflareDnsProvider, CloudflareOriginCa
from dynia.state import StateStore
from dynia.state.models import (
    CERT_ISSUER_CLOUDFLARE_ORIGIN,
    NODE_OUT_OF_SYNC,
    Cluster,
    ReservedIp,
    Route,
)

ZONE = "example.com"
WEB = f"web.{ZONE}"
API = f"api.{ZONE}"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloudflare]:
    with FakeCloudflare() as server:
        server.add_zone(ZONE)
        # The services build their own clients, as commands do: from the environment.
        monkeypatch.setenv("CLOUDFLARE_API_TOKEN", server.token)
        monkeypatch.setenv("CLOUDFLARE_BASE_URL", server.base_url)
        yield server


@pytest.fixture
def layout(tmp_path: Path) -> HomeLayout:
    return HomeLayout(tmp_path / "home")


def origin_cluster(*domains: str) -> Cluster:
    cluster = sample_cluster("edge")
    cluster.dns_provider = "cloudflare"
    cluster.settings.certificate_issuer = CERT_ISSUER_CLOUDFLARE_ORIGIN
    cluster.settings.dns_proxied = True
    cluster.routes = {d: Route(d, "web") for d in domains}
    return cluster


def served_certificate(layout: HomeLayout, cluster: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        pki.cluster_certificate_path(layout, cluster).read_bytes()
    )


def test_issue_installs_an_origin_certificate_in_haproxy_format(
    fake: FakeCloudflare, layout: HomeLayout
) -> None:
    cluster = origin_cluster(WEB, API)
    bundle = certificates.issue_certificate(layout, cluster)

    pem_path = pki.cluster_certificate_path(layout, "edge")
    assert stat.S_IMODE(pem_path.stat().st_mode) == 0o600
    text = pem_path.read_text()
    assert text.count("BEGIN CERTIFICATE") == 1 and text.count("BEGIN PRIVATE KEY") == 1
    leaf = served_certificate(layout, "edge")
    leaf.verify_directly_issued_by(fake.origin_root)  # signed by the (fake) Origin CA root
    key = serialization.load_pem_private_key(text.encode(), None)
    assert key.public_key() == leaf.public_key()
    assert bundle.issuer == "cloudflare-origin"
    assert set(bundle.domains) == {WEB, API}  # no dynia.internal name: the CA would refuse it
    (made,) = fake.origin_certificates.values()
    assert made["id"] == str(leaf.serial_number)
    assert (made["request_type"], made["requested_validity"]) == ("origin-ecc", 365)
    record = json.loads(pki.issued_record_path(layout, "edge").read_text())
    assert record["current"]["id"] == made["id"]
    assert record["current"]["fingerprint_sha256"] == bundle.fingerprint_sha256


def test_fake_origin_ca_answers_parse_as_the_sdk_models(fake: FakeCloudflare) -> None:
    ca = CloudflareOriginCa(fake.token, base_url=fake.base_url, max_retries=0)
    key = pki.new_private_key()
    made = ca.issue(pki.certificate_request(key, [WEB]), [WEB], 90)
    client = ca._client
    zone_id = next(iter(fake.zones))
    assert [c.id for c in client.origin_ca_certificates.list(zone_id=zone_id)] == [made.id]
    assert client.origin_ca_certificates.get(made.id).hostnames == [WEB]
    ca.revoke(made.id)
    ca.revoke(made.id)  # already revoked: not an error
    ca.revoke("1234567890")  # unknown to the API: counts as revoked
    assert list(client.origin_ca_certificates.list(zone_id=zone_id)) == []
    answers = [e for e in fake.exchanges if e.template.startswith("/client/v4/certificates")]
    assert {(e.method, e.status) for e in answers} == {
        ("POST", 200),
        ("GET", 200),
        ("DELETE", 200),
        ("DELETE", 404),
    }
    for exchange in answers:
        result = exchange.body["result"]
        if exchange.status != 200:
            assert exchange.body["success"] is False and exchange.body["errors"]
        elif exchange.method == "DELETE":
            OriginCACertificateDeleteResponse.model_validate(result)
        else:
            for item in result if isinstance(result, list) else [result]:
                OriginCACertificate.model_validate(item)


def test_issue_answered_with_5xx_after_acceptance_is_not_sent_again(
    fake: FakeCloudflare,
) -> None:
    lines: list[str] = []
    ca = CloudflareOriginCa(
        fake.token, base_url=fake.base_url, sleep=lambda _: None, progress=lines.append
    )
    # An older certificate for the same hostnames (another key) must not be taken for it.
    older = ca.issue(pki.certificate_request(pki.new_private_key(), [WEB]), [WEB], 90)
    fake.server_errors(1, path_prefix="/client/v4/certificates", method="POST", after_serving=True)
    key = pki.new_private_key()
    made = ca.issue(pki.certificate_request(key, [WEB]), [WEB], 90)

    assert made.id != older.id and len(fake.origin_certificates) == 2
    assert fake.statuses("/client/v4/certificates", "POST") == [200, 500]  # looked up, not re-sent
    leaf = x509.load_pem_x509_certificate(made.certificate_pem.encode())
    assert leaf.public_key() == key.public_key()
    assert any("accepted the earlier try of issuing" in line for line in lines)


def test_no_route_means_local_ca_and_the_first_domain_switches_to_origin(
    fake: FakeCloudflare, layout: HomeLayout, tmp_path: Path
) -> None:
    store = StateStore(layout.root)
    with store.transaction("test") as txn:
        cluster = origin_cluster()
        txn.state.clusters[cluster.name] = cluster
        infra.ensure_certificate(layout, txn, cluster)
        local = pki.current_certificate(layout, "edge")
        assert local is not None and local.issuer == "local"
        assert local.domains == ("edge.dynia.internal",)
        assert fake.origin_certificates == {}

        cluster.routes[WEB] = Route(WEB, "web")
        infra.ensure_certificate(layout, txn, cluster)
        origin = pki.current_certificate(layout, "edge")
        assert origin is not None and origin.issuer == "cloudflare-origin"
        assert origin.domains == (WEB,)
        infra.ensure_certificate(layout, txn, cluster)  # covered: nothing new is issued
        assert len(fake.origin_certificates) == 1
    saved = store.load().clusters["edge"]
    assert saved.tls_fingerprint == origin.fingerprint_sha256
    assert pki.pending_revocations(layout, "edge") == []  # the local one needs no revoking


def test_rotation_revokes_the_replaced_certificate_only_when_no_node_serves_it(
    fake: FakeCloudflare, layout: HomeLayout
) -> None:
    cluster = origin_cluster(WEB)
    first = certificates.issue_certificate(layout, cluster)
    second = certificates.issue_certificate(layout, cluster)
    assert first.fingerprint_sha256 != second.fingerprint_sha256
    first_id, second_id = list(fake.origin_certificates)
    assert [c.id for c in pki.pending_revocations(layout, "edge")] == [first_id]

    cluster.nodes["quiet-fox"].status = NODE_OUT_OF_SYNC
    (postponed,) = certificates.revoke_superseded(layout, cluster)
    assert "quiet-fox may still serve one" in postponed and "dynia sync" in postponed
    assert fake.origin_certificates[first_id]["revoked_at"] is None

    cluster.nodes["quiet-fox"].status = "ready"
    assert certificates.revoke_superseded(layout, cluster) == [
        f"Revoked the replaced Origin CA certificate {first_id}"
    ]
    assert fake.origin_certificates[first_id]["revoked_at"] is not None
    assert fake.origin_certificates[second_id]["revoked_at"] is None
    assert certificates.revoke_superseded(layout, cluster) == []


def test_failed_revocation_is_reported_and_tried_again_next_time(
    fake: FakeCloudflare, layout: HomeLayout
) -> None:
    cluster = origin_cluster(WEB)
    certificates.issue_certificate(layout, cluster)
    certificates.issue_certificate(layout, cluster)
    first_id = next(iter(fake.origin_certificates))
    fake.inject(403, path_prefix="/client/v4/certificates/", message="Authentication error")
    (failed,) = certificates.revoke_superseded(layout, cluster)
    assert f"could not revoke the replaced Origin CA certificate {first_id}" in failed
    assert "SSL and Certificates:Edit" in failed
    assert [c.id for c in pki.pending_revocations(layout, "edge")] == [first_id]
    assert certificates.revoke_superseded(layout, cluster) == [
        f"Revoked the replaced Origin CA certificate {first_id}"
    ]


def test_switching_back_to_the_local_ca_supersedes_the_origin_certificate(
    fake: FakeCloudflare, layout: HomeLayout
) -> None:
    cluster = origin_cluster(WEB)
    certificates.issue_certificate(layout, cluster)
    cluster.settings.certificate_issuer = "local"
    assert certificates.needs_new_certificate(layout, cluster)
    local = certificates.issue_certificate(layout, cluster)
    assert local.issuer == "local"
    assert [c.id for c in pki.pending_revocations(layout, "edge")] == list(fake.origin_certificates)


def test_token_without_ssl_permission_is_actionable_and_changes_no_file(
    fake: FakeCloudflare, layout: HomeLayout
) -> None:
    cluster = origin_cluster(WEB)
    pki.issue_cluster_certificate(layout, "edge", [])  # what a cluster has before its first route
    tls = layout.tls_dir("edge")
    before = {p.name: p.read_bytes() for p in tls.iterdir()}
    fake.deny_certificates()
    with pytest.raises(ProviderError) as caught:
        certificates.issue_certificate(layout, cluster)
    assert "403" in caught.value.message and "Origin CA certificate" in caught.value.message
    assert "CLOUDFLARE_API_TOKEN" in (caught.value.hint or "")
    assert "SSL and Certificates:Edit" in (caught.value.hint or "")
    assert {p.name: p.read_bytes() for p in tls.iterdir()} == before
    assert fake.token not in str(caught.value)


def test_hostname_outside_the_account_is_refused_with_a_hint(
    fake: FakeCloudflare, layout: HomeLayout
) -> None:
    cluster = origin_cluster(WEB, "shop.example.org")
    with pytest.raises(ProviderError) as caught:
        certificates.issue_certificate(layout, cluster)
    assert "shop.example.org" in caught.value.message and "400" in caught.value.message
    assert "zone of the account" in (caught.value.hint or "")
    assert not pki.cluster_certificate_path(layout, "edge").exists()


def test_a_crash_before_the_new_pem_never_revokes_the_served_certificate(
    fake: FakeCloudflare, layout: HomeLayout
) -> None:
    cluster = origin_cluster(WEB)
    certificates.issue_certificate(layout, cluster)
    served = pki.cluster_certificate_path(layout, "edge").read_bytes()
    certificates.issue_certificate(layout, cluster)
    # As if the command died after recording the new certificate but before writing its PEM.
    pki.cluster_certificate_path(layout, "edge").write_bytes(served)
    assert pki.pending_revocations(layout, "edge") == []
    assert certificates.revoke_superseded(layout, cluster) == []
    assert all(c["revoked_at"] is None for c in fake.origin_certificates.values())


def test_certificate_for_another_key_is_refused_and_nothing_written(
    fake: FakeCloudflare, layout: HomeLayout
) -> None:
    ca = CloudflareOriginCa(fake.token, base_url=fake.base_url)
    made = ca.issue(pki.certificate_request(pki.new_private_key(), [WEB]), [WEB], 30)
    with pytest.raises(UsageError, match="not for the key"):
        pki.store_external_certificate(
            layout,
            "edge",
            made.certificate_pem,
            pki.new_private_key(),
            issuer="cloudflare-origin",
            certificate_id=made.id,
        )
    assert not layout.tls_dir("edge").exists() or not any(layout.tls_dir("edge").iterdir())


def test_proxied_setting_reaches_the_cloudflare_records(
    fake: FakeCloudflare, layout: HomeLayout
) -> None:
    cluster = origin_cluster(WEB)
    dns = dns_provider_for(cluster, layout)
    assert isinstance(dns, CloudflareDnsProvider) and dns.proxied
    dns.upsert_a_record(WEB, "203.0.113.7")
    assert fake.records_named(WEB)[0]["proxied"] is True
    cluster.settings.dns_proxied = False
    assert dns_provider_for(cluster, layout).proxied is False  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="cannot proxy"):
        get_dns_provider("local", layout, proxied=True)


# -- HAProxy serves it; verify pins it ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def haproxy_serving(pem: Path, workdir: Path) -> Iterator[int]:
    """The host's HAProxy terminating TLS with ``pem`` and answering /healthz with 200."""
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(
        "global\n  log stdout format raw local0 emerg\n"
        "defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n"
        f"frontend tls\n  bind 127.0.0.1:{port} ssl crt {pem}\n"
        "  http-request return status 200 content-type text/plain string ok if "
        "{ path /healthz }\n"
        "  http-request return status 404 content-type text/plain string missing\n"
    )
    process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_rendered_config_with_the_origin_certificate_passes_haproxy_and_serves_it(
    fake: FakeCloudflare, layout: HomeLayout, tmp_path: Path
) -> None:
    cluster = origin_cluster(WEB)
    bundle = certificates.issue_certificate(layout, cluster)
    report = render_cluster(layout, cluster)
    assert any(v.program == "haproxy" and v.ok and not v.skipped for v in report.validations)
    shipped = layout.deploy_config_dir("edge") / "haproxy" / "certs" / "cluster.pem"
    assert shipped.read_bytes() == pki.cluster_certificate_path(layout, "edge").read_bytes()

    with haproxy_serving(shipped, tmp_path) as port:
        pinned = bundle.fingerprint_sha256
        assert https_get(layout, "127.0.0.1", port, WEB, "/healthz", pinned) == (200, "ok")
        with pytest.raises(VerifyError, match=re.escape(f"does not name {API}")):
            https_get(layout, "127.0.0.1", port, API, "/healthz", pinned)
        with pytest.raises(VerifyError, match="not the cluster certificate"):
            https_get(layout, "127.0.0.1", port, WEB, "/healthz", "00" * 32)


def test_verify_route_checks_the_proxied_record_and_pins_the_origin_certificate(
    fake: FakeCloudflare, layout: HomeLayout, tmp_path: Path
) -> None:
    cluster = origin_cluster(WEB)
    cluster.reserved_ip = ReservedIp("127.0.0.1", "rip-1")
    certificates.issue_certificate(layout, cluster)
    dns = dns_provider_for(cluster, layout)
    dns.upsert_a_record(WEB, "127.0.0.1")
    # Public DNS knows nothing of this zone: the record is read through the API.
    with haproxy_serving(pki.cluster_certificate_path(layout, "edge"), tmp_path) as port:
        cluster.settings.https_port = port
        assert verify_route(layout, cluster, WEB, dns, timeout=5) == f"https://{WEB}/healthz -> 200"

        certificates.issue_certificate(layout, cluster)  # HAProxy still serves the old one
        with pytest.raises(VerifyError, match="not the cluster certificate"):
            verify_route(layout, cluster, WEB, dns, timeout=2)

    dns.upsert_a_record(WEB, "203.0.113.9")
    with pytest.raises(VerifyError, match=re.escape("proxied A record holds 203.0.113.9")):
        verify_route(layout, cluster, WEB, dns, timeout=2)
