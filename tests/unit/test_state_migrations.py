"""Schema migrations: a Dynia v1 (TypeScript) state file becomes a current state on load, and is
rewritten in the new schema on the next save with the v1 file kept as a backup; schema-1 routes
gain ``https_only``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dynia.errors import StateError
from dynia.state import SCHEMA_VERSION, StateStore, migrate
from dynia.state.migrations import MIGRATIONS, SchemaTooNewError, detect_version
from dynia.state.validation import parse_state

# A state file as Dynia v1 wrote it after `cluster create-ha` and `cluster node add`.
V1_STATE: dict[str, Any] = {
    "nodes": [],
    "deployments": [],
    "currentCluster": "myapp",
    "clusters": [
        {
            "name": "myapp",
            "baseDomain": "example.com",
            "reservedIp": "203.0.113.100",
            "reservedIpId": "203.0.113.100",
            "region": "sgp1",
            "vpcId": "5a4981aa-9653-4bd1-bef5-d6bff52042e4",
            "size": "s-1vcpu-1gb",
            "activeNodeId": "misty-owl",
            "createdAt": "2025-08-01T10:00:00.000Z",
        },
        {
            "name": "spare",
            "baseDomain": "example.org",
            "region": "fra1",
            "size": "s-1vcpu-1gb",
            "createdAt": "2025-08-02T10:00:00.000Z",
        },
    ],
    "clusterNodes": [
        {
            "twoWordId": "misty-owl",
            "clusterId": "myapp",
            "dropletId": "512345678",
            "hostname": "myapp-misty-owl",
            "publicIp": "198.51.100.10",
            "privateIp": "10.104.0.2",
            "role": "active",
            "priority": 150,
            "status": "active",
            "createdAt": "2025-08-01T10:01:00.000Z",
        },
        {
            "twoWordId": "quiet-fox",
            "clusterId": "myapp",
            "dropletId": "512345679",
            "hostname": "myapp-quiet-fox",
            "publicIp": "198.51.100.11",
            "role": "standby",
            "priority": 100,
            "status": "droplet-created",
            "createdAt": "2025-08-01T10:05:00.000Z",
        },
    ],
    "routes": [
        {
            "host": "api.example.com",
            "clusterId": "myapp",
            "healthPath": "/healthz",
            "proxied": True,
            "tlsEnabled": True,
            "isPlaceholder": True,
        }
    ],
}


def v1_state() -> dict[str, Any]:
    return copy.deepcopy(V1_STATE)


def test_every_older_version_has_a_step() -> None:
    assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))


def test_v1_state_is_recognised_as_schema_0() -> None:
    assert detect_version(v1_state()) == 0
    assert detect_version({"clusters": [], "clusterNodes": []}) == 0
    assert detect_version({"schema_version": 1}) == 1
    with pytest.raises(ValueError, match="missing key 'schema_version'"):
        detect_version({"clusters": {}})
    with pytest.raises(ValueError, match="non-negative integer"):
        detect_version({"schema_version": "1"})


def test_v1_clusters_nodes_and_reserved_ip_carry_over() -> None:
    state = parse_state(migrate(v1_state()))
    assert state.schema_version == SCHEMA_VERSION
    assert state.current_cluster == "myapp"
    assert sorted(state.clusters) == ["myapp", "spare"]

    app = state.clusters["myapp"]
    assert (app.node_provider, app.dns_provider) == ("digitalocean", "cloudflare")
    assert (app.region, app.size, app.planned_nodes) == ("sgp1", "s-1vcpu-1gb", 2)
    # Its droplets exist: infra-ready keeps a resumed create from provisioning them again.
    assert app.status == "infra-ready"
    owl, fox = app.nodes["misty-owl"], app.nodes["quiet-fox"]
    assert (owl.provider_id, owl.public_ip, owl.private_ip, owl.priority) == (
        "512345678",
        "198.51.100.10",
        "10.104.0.2",
        150,
    )
    assert owl.status == "out-of-sync"  # ran v1's stack, needs v2's configuration
    assert (fox.private_ip, fox.status) == ("", "provisioning")
    assert app.master is not None and app.master.name == "misty-owl"
    assert app.reserved_ip is not None
    assert (app.reserved_ip.address, app.reserved_ip.attached_to) == ("203.0.113.100", "misty-owl")
    assert app.services == {} and app.routes == {}

    spare = state.clusters["spare"]
    assert (spare.status, spare.nodes, spare.reserved_ip) == ("planned", {}, None)


def test_a_current_cluster_that_v1_no_longer_has_is_dropped() -> None:
    data = v1_state()
    data["currentCluster"] = "deleted-long-ago"
    assert migrate(data)["current_cluster"] is None


def test_current_schema_passes_through_unchanged() -> None:
    data = migrate(v1_state())
    assert migrate(copy.deepcopy(data)) == data


def test_schema_1_routes_gain_https_only_that_follows_the_certificate() -> None:
    data = migrate(v1_state())
    cluster = data["clusters"]["myapp"]
    cluster["services"]["web"] = {
        "name": "web", "compose": "services: {}\n", "compose_hash": "0" * 64,
        "internal_port": 20000, "container_port": 80, "main_service": "web",
    }  # fmt: skip
    cluster["routes"]["web.example.com"] = {
        "domain": "web.example.com", "service": "web", "dns_record_id": "rec-1",
    }  # fmt: skip
    schema_1 = {**copy.deepcopy(data), "schema_version": 1}

    migrated = migrate(copy.deepcopy(schema_1))
    assert migrated["clusters"]["myapp"]["routes"]["web.example.com"]["https_only"] is None
    state = parse_state(migrated)
    cluster_state = state.clusters["myapp"]
    assert cluster_state.https_only(cluster_state.routes["web.example.com"]) is False  # local CA
    assert "https_only" not in schema_1["clusters"]["myapp"]["routes"]["web.example.com"]


def test_schema_1_clusters_have_not_accepted_the_main_token_on_their_nodes() -> None:
    schema_1 = {**migrate(v1_state()), "schema_version": 1}
    del schema_1["clusters"]["myapp"]["settings"]["allow_main_credential_on_nodes"]

    migrated = migrate(copy.deepcopy(schema_1))
    assert migrated["clusters"]["myapp"]["settings"]["allow_main_credential_on_nodes"] is False
    assert not parse_state(migrated).clusters["myapp"].settings.allow_main_credential_on_nodes


def test_schema_2_clusters_keep_booting_the_image_their_nodes_run() -> None:
    schema_2 = {**migrate(v1_state()), "schema_version": 2}
    schema_2["clusters"]["local-one"] = {
        **copy.deepcopy(schema_2["clusters"]["spare"]), "name": "local-one",
        "node_provider": "local", "dns_provider": "local",
    }  # fmt: skip
    for cluster in schema_2["clusters"].values():
        del cluster["image"]

    state = parse_state(migrate(copy.deepcopy(schema_2)))
    # A droplet added later must boot what the first ones boot, not today's default.
    assert state.clusters["myapp"].image == "ubuntu-24-04-x64"
    assert state.clusters["local-one"].image == "debian-12"


def test_a_newer_schema_is_refused() -> None:
    with pytest.raises(SchemaTooNewError, match=f"schema_version {SCHEMA_VERSION + 1} is newer"):
        migrate({"schema_version": SCHEMA_VERSION + 1, "clusters": {}})


def test_a_broken_v1_file_names_what_is_missing() -> None:
    data = v1_state()
    del data["clusterNodes"][0]["dropletId"]
    with pytest.raises(ValueError, match="missing key 'dropletId' in a Dynia v1 state"):
        migrate(data)
    with pytest.raises(ValueError, match="clusterNodes: expected a list of objects"):
        migrate({"clusters": [], "clusterNodes": {"misty-owl": {}}})


def test_store_migrates_in_memory_and_rewrites_with_a_backup_on_the_next_save(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = StateStore(home)
    v1_bytes = json.dumps(V1_STATE, indent=2).encode()
    store.path.write_bytes(v1_bytes)

    assert store.load().clusters["myapp"].nodes["misty-owl"].priority == 150
    assert store.path.read_bytes() == v1_bytes  # loading never writes

    with store.transaction("dynia context current") as txn:
        assert txn.state.current_cluster == "myapp"
    on_disk = json.loads(store.path.read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert "currentCluster" not in on_disk and on_disk["current_cluster"] == "myapp"
    assert [p.read_bytes() for p in store.backups()] == [v1_bytes]

    # Once migrated, a save with no change writes nothing and keeps no further backup.
    with store.transaction("dynia context current"):
        pass
    assert len(store.backups()) == 1


def test_a_v1_file_that_cannot_be_migrated_is_reported_and_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = StateStore(home)
    data = v1_state()
    data["clusterNodes"][1]["priority"] = "high"
    store.path.write_text(json.dumps(data))
    before = store.path.read_bytes()
    with pytest.raises(StateError) as caught, store.transaction("t"):
        pass
    assert str(store.path) in caught.value.message
    assert "clusterNodes[quiet-fox].priority: expected a number, found 'high'" in str(caught.value)
    assert store.path.read_bytes() == before
