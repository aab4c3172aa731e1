"""The Cloudflare DNS provider, through the cloudflare SDK against the loopback fake."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeCloudflare

from dynia.errors import ProviderError
from dynia.providers.base import DnsProvider
from dynia.providers.cloudflare import MANAGED_COMMENT, CloudflareDnsProvider


@pytest.fixture
def fake() -> Iterator[FakeCloudflare]:
    with FakeCloudflare() as server:
        server.add_zone("example.com")
        server.add_zone("eu.example.com")
        yield server


@pytest.fixture
def dns(fake: FakeCloudflare) -> CloudflareDnsProvider:
    return CloudflareDnsProvider(fake.token, base_url=fake.base_url, max_retries=3)


def test_provider_satisfies_the_protocol(dns: CloudflareDnsProvider) -> None:
    assert isinstance(dns, DnsProvider)
    assert dns.resolver_address() is None


def test_zone_is_the_longest_matching_suffix(
    fake: FakeCloudflare, dns: CloudflareDnsProvider
) -> None:
    assert dns.find_zone("app.eu.example.com").name == "eu.example.com"
    assert dns.find_zone("www.example.com").name == "example.com"
    assert dns.find_zone("Example.COM.").name == "example.com"
    with pytest.raises(ProviderError) as caught:
        dns.find_zone("app.example.org")
    assert "no Cloudflare zone holds app.example.org" in caught.value.message
    assert "Zone:Read" in (caught.value.hint or "")


def test_upsert_creates_updates_and_is_idempotent(
    fake: FakeCloudflare, dns: CloudflareDnsProvider
) -> None:
    created = dns.upsert_a_record("app.eu.example.com", "203.0.113.10", ttl=120)
    assert (created.name, created.type, created.content, created.ttl) == (
        "app.eu.example.com",
        "A",
        "203.0.113.10",
        120,
    )
    writes = len([s for s in fake.exchanges if s.method in ("POST", "PUT")])
    assert dns.upsert_a_record("app.eu.example.com", "203.0.113.10", ttl=120) == created
    assert len([s for s in fake.exchanges if s.method in ("POST", "PUT")]) == writes

    moved = dns.upsert_a_record("app.eu.example.com", "203.0.113.11", ttl=120)
    assert moved.id == created.id and moved.content == "203.0.113.11"
    [record] = fake.records_named("app.eu.example.com")
    assert record["comment"] == MANAGED_COMMENT and record["proxied"] is False


def test_upsert_collapses_duplicate_a_records_to_one(
    fake: FakeCloudflare, dns: CloudflareDnsProvider
) -> None:
    zone = dns.find_zone("www.example.com")
    for address in ("198.51.100.1", "198.51.100.2"):
        fake.records[address.replace(".", "")] = {
            "id": address.replace(".", ""),
            "zone_id": zone.id,
            "name": "www.example.com",
            "type": "A",
            "content": address,
            "ttl": 300,
            "proxied": False,
            "comment": None,
            "tags": [],
            "proxiable": True,
            "settings": {},
            "meta": {},
            "created_on": "2024-01-01T00:00:00Z",
            "modified_on": "2024-01-01T00:00:00Z",
        }
    dns.upsert_a_record("www.example.com", "203.0.113.10")
    assert [r["content"] for r in fake.records_named("www.example.com")] == ["203.0.113.10"]


def test_proxied_records_use_automatic_ttl(fake: FakeCloudflare) -> None:
    proxied = CloudflareDnsProvider(fake.token, base_url=fake.base_url, proxied=True)
    record = proxied.upsert_a_record("shop.example.com", "203.0.113.10", ttl=300)
    assert record.ttl == 1
    assert fake.records_named("shop.example.com")[0]["proxied"] is True


def test_delete_removes_only_dynia_records(
    fake: FakeCloudflare, dns: CloudflareDnsProvider
) -> None:
    dns.upsert_a_record("app.example.com", "203.0.113.10")
    zone = dns.find_zone("example.com")
    fake.records["hand"] = {
        **fake.records_named("app.example.com")[0],
        "id": "hand",
        "name": "legacy.example.com",
        "comment": "made by hand",
        "zone_id": zone.id,
    }
    dns.delete_a_record("app.example.com")
    dns.delete_a_record("app.example.com")  # nothing left: not an error
    dns.delete_a_record("legacy.example.com")
    assert fake.records_named("app.example.com") == []
    assert len(fake.records_named("legacy.example.com")) == 1


def test_list_records_follows_pagination(fake: FakeCloudflare, dns: CloudflareDnsProvider) -> None:
    for i in range(45):
        dns.upsert_a_record(f"s{i}.example.com", "203.0.113.10")
    records = dns.list_records(dns.find_zone("example.com"))
    assert len(records) == 45
    pages = {e.query.get("page", "1") for e in fake.exchanges if e.path.endswith("/dns_records")}
    assert {"1", "2", "3", "4"} <= pages  # 20 per page, then the empty page that ends iteration


def test_conflicting_cname_is_a_clear_error(
    fake: FakeCloudflare, dns: CloudflareDnsProvider
) -> None:
    zone = dns.find_zone("example.com")
    fake.records["cname"] = {
        "id": "cname",
        "zone_id": zone.id,
        "name": "blog.example.com",
        "type": "CNAME",
        "content": "elsewhere.example.net",
        "ttl": 1,
        "proxied": False,
        "comment": None,
        "tags": [],
        "proxiable": True,
        "settings": {},
        "meta": {},
        "created_on": "2024-01-01T00:00:00Z",
        "modified_on": "2024-01-01T00:00:00Z",
    }
    with pytest.raises(ProviderError) as caught:
        dns.upsert_a_record("blog.example.com", "203.0.113.10")
    assert "81053" in caught.value.message and "CNAME" in (caught.value.hint or "")


def test_rate_limit_is_retried_then_succeeds(
    fake: FakeCloudflare, dns: CloudflareDnsProvider
) -> None:
    fake.rate_limit(2, reset_in=1)
    started = time.monotonic()
    record = dns.upsert_a_record("app.example.com", "203.0.113.10")
    assert record.content == "203.0.113.10"
    assert fake.statuses()[:3] == [429, 429, 200]
    assert time.monotonic() - started >= 1.5  # honoured Retry-After: 1 twice


def test_server_error_bursts_are_retried_and_outages_reported(
    fake: FakeCloudflare, dns: CloudflareDnsProvider
) -> None:
    fake.server_errors(2)
    assert dns.find_zone("example.com").name == "example.com"

    fake.server_errors(20)
    with pytest.raises(ProviderError) as caught:
        dns.find_zone("example.com")
    assert "kept failing" in caught.value.message and "500" in caught.value.message
    assert fake.statuses().count(500) == 2 + 4  # 1 try + max_retries=3


def test_rejected_token_is_actionable_and_never_echoed(
    fake: FakeCloudflare,
    dns: CloudflareDnsProvider,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    fake.reject_token()
    with pytest.raises(ProviderError) as caught:
        dns.upsert_a_record("app.example.com", "203.0.113.10")
    assert "401" in caught.value.message
    assert "CLOUDFLARE_API_TOKEN" in (caught.value.hint or "")
    assert fake.statuses() == [401]
    texts = [str(caught.value), repr(caught.value), repr(dns)]
    assert not [t for t in texts if fake.token in t]

    monkeypatch.delenv("CLOUDFLARE_API_TOKEN", raising=False)
    monkeypatch.setenv("DYNIA_CREDENTIALS_FILE", str(tmp_path / "absent.json"))
    with pytest.raises(ProviderError, match="CLOUDFLARE_API_TOKEN"):
        CloudflareDnsProvider(base_url=fake.base_url)


def test_token_and_base_url_from_the_environment(
    fake: FakeCloudflare, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", fake.token)
    monkeypatch.setenv("CLOUDFLARE_BASE_URL", fake.base_url)
    assert CloudflareDnsProvider().find_zone("a.example.com").name == "example.com"
