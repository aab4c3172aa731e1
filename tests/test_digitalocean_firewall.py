"""The cluster's DigitalOcean Cloud Firewall, via pydo against the fake API.

Made with the cluster network (``ensure_network``), applied to the cluster tag, found again by
name and tag (never duplicated, also when a create's answer is lost), its rules put back when
they drifted, and deleted with the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FakeDigitalOcean

from dynia.providers.digitalocean import DigitalOceanNodeProvider, RetryPolicy, Timeouts

FAST = Timeouts(active=10, ssh=10, action=1.5, vpc_release=1.0, poll_interval=0.05)
TAG = "dynia-cluster-prod"


@pytest.fixture
def fake() -> Iterator[FakeDigitalOcean]:
    with FakeDigitalOcean() as server:
        yield server


@pytest.fixture
def provider(fake: FakeDigitalOcean) -> DigitalOceanNodeProvider:
    return DigitalOceanNodeProvider(
        fake.token,
        api_url=fake.api_url,
        region="fra1",
        timeouts=FAST,
        retry=RetryPolicy(attempts=4, base_delay=0.05, max_delay=5),
        progress=lambda _line: None,
    )


def ours(fake: FakeDigitalOcean) -> list[dict[str, Any]]:
    return [f for f in fake.firewalls.values() if f["name"] == "dynia-prod"]


def rule(firewall: dict[str, Any], protocol: str, ports: str) -> dict[str, Any]:
    return next(
        r for r in firewall["inbound_rules"] if (r["protocol"], r["ports"]) == (protocol, ports)
    )


def test_the_firewall_is_made_with_the_network_on_the_cluster_tag(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider
) -> None:
    network = provider.ensure_network("prod")
    [firewall] = ours(fake)
    assert firewall["tags"] == [TAG] and TAG in fake.tags
    anywhere = {"addresses": ["0.0.0.0/0", "::/0"]}
    assert rule(firewall, "tcp", "22")["sources"] == anywhere
    assert rule(firewall, "tcp", "80")["sources"] == anywhere
    assert rule(firewall, "tcp", "443")["sources"] == anywhere
    assert rule(firewall, "icmp", "0")["sources"] == anywhere
    peers = {"addresses": [network.subnet], "tags": [TAG]}
    assert rule(firewall, "tcp", "0")["sources"] == peers  # Caddy, checks, the nodes' SSH
    assert rule(firewall, "udp", "0")["sources"] == peers
    # Nothing else reaches a node from outside: no rule names another port.
    assert len(firewall["inbound_rules"]) == 6
    assert {(r["protocol"], r["ports"]) for r in firewall["outbound_rules"]} == {
        ("tcp", "0"),
        ("udp", "0"),
        ("icmp", "0"),
    }
    assert fake.request_violations == []


def test_ensuring_again_neither_duplicates_nor_rewrites_it(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider
) -> None:
    provider.ensure_network("prod")
    provider.ensure_network("prod")
    assert len(ours(fake)) == 1
    assert fake.statuses("/v2/firewalls", "POST") == [202]
    assert fake.statuses("/v2/firewalls/", "PUT") == []


def test_drifted_rules_are_put_back_and_an_allowlist_limits_ssh(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider
) -> None:
    network = provider.ensure_network("prod")
    [firewall] = ours(fake)
    with fake.lock:
        firewall["inbound_rules"].append(
            {"protocol": "tcp", "ports": "8080", "sources": {"addresses": ["0.0.0.0/0"]}}
        )
    provider.ensure_network("prod")
    [firewall] = ours(fake)
    assert len(firewall["inbound_rules"]) == 6
    assert fake.statuses("/v2/firewalls/", "PUT") == [200]

    provider.ensure_firewall("prod", network.subnet, ssh_sources=("198.51.100.7/32",))
    [firewall] = ours(fake)
    assert rule(firewall, "tcp", "22")["sources"] == {"addresses": ["198.51.100.7/32"]}


def test_a_create_answered_with_5xx_after_acceptance_makes_exactly_one_firewall(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider
) -> None:
    fake.server_errors(1, path_prefix="/v2/firewalls", method="POST", after_serving=True)
    provider.ensure_network("prod")
    assert len(ours(fake)) == 1
    assert fake.statuses("/v2/firewalls", "POST") == [500]  # looked up, not sent again


def test_5xx_bursts_on_list_and_delete_are_retried(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider
) -> None:
    fake.server_errors(2, path_prefix="/v2/firewalls", method="GET", status=503)
    provider.ensure_network("prod")
    assert len(ours(fake)) == 1
    fake.server_errors(1, path_prefix="/v2/firewalls/", method="DELETE", after_serving=True)
    provider.delete_network("prod")
    assert ours(fake) == []
    assert fake.statuses("/v2/firewalls/", "DELETE") == [500, 404]


def test_delete_removes_only_the_clusters_firewall_and_tolerates_its_absence(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider
) -> None:
    provider.ensure_network("prod")
    provider.ensure_network("staging")
    with fake.lock:  # same name, not carrying the cluster tag: not Dynia's
        fake.firewalls["foreign"] = {**ours(fake)[0], "id": "foreign", "tags": []}
    provider.delete_network("prod")
    assert [f["id"] for f in ours(fake)] == ["foreign"]
    assert [f["name"] for f in fake.firewalls.values() if f["tags"]] == ["dynia-staging"]
    provider.delete_network("prod")  # nothing left of it: not an error
    assert not [v for v in fake.vpcs.values() if v["name"] == "dynia-prod"]
