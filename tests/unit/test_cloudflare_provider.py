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


# -- cloud faults ------------------------------------------------------------------------------


def test_a_global_api_key_in_the_environment_is_never_sent(
    fake: FakeCloudflare, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK would send these instead of the token; the fake refuses them with 401.
    monkeypatch.setenv("CLOUDFLARE_API_KEY", "0123456789abcdef0123456789abcdef01234")
    monkeypatch.setenv("CLOUDFLARE_EMAIL", "operator@example.com")
    monkeypatch.setenv("CLOUDFLARE_API_USER_SERVICE_KEY", "v1.0-user-service-key")
    dns = CloudflareDnsProvider(fake.token, base_url=fake.base_url, max_retries=0)
    dns.upsert_a_record("app.example.com", "203.0.113.10")
    assert 401 not in fake.statuses()
    assert dns._client.with_options(timeout=5).zones.list().result  # copies stay token-only


def test_a_record_create_answered_with_5xx_after_acceptance_is_not_sent_again(
    fake: FakeCloudflare,
) -> None:
    lines: list[str] = []
    dns = CloudflareDnsProvider(
        fake.token, base_url=fake.base_url, sleep=lambda _: None, progress=lines.append
    )
    fake.server_errors(1, method="POST", after_serving=True)
    record = dns.upsert_a_record("app.example.com", "203.0.113.10")

    [made] = fake.records_named("app.example.com")
    assert made["id"] == record.id
    assert fake.statuses(method="POST") == [500]  # looked up, not re-sent
    assert any("accepted the earlier try of creating A record" in line for line in lines)


def test_deleting_a_record_that_is_already_gone_is_success(fake: FakeCloudflare) -> None:
    dns = CloudflareDnsProvider(fake.token, base_url=fake.base_url, sleep=lambda _: None)
    dns.upsert_a_record("app.example.com", "203.0.113.10")
    # The delete takes effect but its answer is lost; the re-sent delete finds nothing: 404.
    fake.server_errors(1, method="DELETE", after_serving=True)
    dns.delete_a_record("app.example.com")
    assert fake.statuses(method="DELETE") == [500, 404]
    assert fake.records_named("app.example.com") == []


def test_a_long_retry_after_is_honoured_and_said(fake: FakeCloudflare) -> None:
    waits: list[float] = []
    lines: list[str] = []
    dns = CloudflareDnsProvider(
        fake.token, base_url=fake.base_url, sleep=waits.append, progress=lines.append
    )
    fake.rate_limit(1, reset_in=120)  # above the SDK's own 60 s cap
    assert dns.find_zone("example.com").name == "example.com"
    assert waits == [120.0]
    assert any("waiting 120s" in line and "looking up zone" in line for line in lines)

    fake.rate_limit(1, reset_in=3600)  # beyond MAX_RETRY_AFTER: the operator decides
    with pytest.raises(ProviderError) as caught:
        dns.find_zone("example.com")
    assert "3600s" in caught.value.message and "looking up zone" in caught.value.message
    assert "wait until" in (caught.value.hint or "")


def test_an_unreadable_answer_is_retried_then_reported_naming_what_to_do(
    fake: FakeCloudflare,
) -> None:
    lines: list[str] = []
    dns = CloudflareDnsProvider(
        fake.token, base_url=fake.base_url, sleep=lambda _: None, progress=lines.append
    )
    fake.malformed_answers("<html><body>502 Bad Gateway</body></html>", method="GET")
    assert dns.find_zone("www.example.com").name == "example.com"  # a proxy's page, once
    assert any("not valid JSON while looking up zone" in line for line in lines)

    fake.malformed_answers('{"result": [', content_type="application/json", count=20)
    with pytest.raises(ProviderError) as caught:
        dns.find_zone("www.example.com")
    assert "Cloudflare" in caught.value.message and "looking up zone" in caught.value.message
    assert "invalid JSON" in caught.value.message
    assert "re-run the same command" in (caught.value.hint or "")
    assert "CLOUDFLARE_BASE_URL" in (caught.value.hint or "")
    assert fake.statuses(method="GET")[-5:] == [200] * 5  # 1 try + max_retries=4


def test_a_create_answered_with_json_cut_short_is_looked_up_not_sent_again(
    fake: FakeCloudflare,
) -> None:
    dns = CloudflareDnsProvider(fake.token, base_url=fake.base_url, sleep=lambda _: None)
    fake.malformed_answers(
        '{"result": {"id": "', content_type="application/json", method="POST", after_serving=True
    )
    record = dns.upsert_a_record("app.example.com", "203.0.113.10")

    [made] = fake.records_named("app.example.com")
    assert made["id"] == record.id
    assert len(fake.statuses(method="POST")) == 1


def test_a_delete_answered_with_html_after_it_took_effect_is_done(fake: FakeCloudflare) -> None:
    dns = CloudflareDnsProvider(fake.token, base_url=fake.base_url, sleep=lambda _: None)
    dns.upsert_a_record("app.example.com", "203.0.113.10")
    fake.malformed_answers("<html>oops</html>", method="DELETE", after_serving=True)
    dns.delete_a_record("app.example.com")
    assert fake.statuses(method="DELETE") == [200, 404]
    assert fake.records_named("app.example.com") == []


def test_deleting_a_record_whose_zone_is_out_of_sight_is_refused(fake: FakeCloudflare) -> None:
    dns = CloudflareDnsProvider(fake.token, base_url=fake.base_url)
    dns.upsert_a_record("app.example.com", "203.0.113.10")
    with fake.lock:  # deleted in the dashboard, or the token lost access to it
        fake.zones.clear()

    with pytest.raises(ProviderError, match=r"no Cloudflare zone holds app\.example\.com"):
        dns.delete_a_record("app.example.com")


def test_deleting_while_the_zone_disappears_is_success(fake: FakeCloudflare) -> None:
    dns = CloudflareDnsProvider(fake.token, base_url=fake.base_url, sleep=lambda _: None)
    dns.upsert_a_record("app.example.com", "203.0.113.10")
    zone = dns.find_zone("example.com")
    # Looked up, then gone before its records are listed: the listing answers 404.
    fake.inject(404, path_prefix=f"/client/v4/zones/{zone.id}/dns_records", method="GET")
    dns.delete_a_record("app.example.com")
    assert fake.statuses(method="DELETE") == []
