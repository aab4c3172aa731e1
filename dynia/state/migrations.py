"""Upgrades of older state documents to the current schema, one version step at a time.

Each step is a pure function from a document of version N to one of version N + 1, written
against the frozen shape of both versions (never against today's models, which move on). The store
runs ``migrate`` in memory on load; the file is rewritten in the new schema on the next save, and
the old file is kept among the backups.

Schema 0 is the state of the TypeScript Dynia v1 (``.dynia/state.json``): no ``schema_version``,
camelCase keys, and lists instead of maps::

    {"nodes": [...], "deployments": [...],            # v1's single-node mode (not clusters)
     "currentCluster": "prod",                         # optional
     "clusters": [{"name", "baseDomain", "reservedIp", "reservedIpId", "region", "vpcId",
                   "size", "activeNodeId", "createdAt"}],
     "clusterNodes": [{"twoWordId", "clusterId", "dropletId", "hostname", "publicIp",
                       "privateIp", "role", "priority", "status", "createdAt"}],
     "routes": [{"host", "clusterId", "serviceRef", "port", "healthPath", "composePath", ...}]}

v1 ran DigitalOcean droplets with Cloudflare DNS only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from dynia.state.models import SCHEMA_VERSION

Document = dict[str, Any]


class SchemaTooNewError(ValueError):
    """The document was written by a newer dynia than this one."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"schema_version {version} is newer than this dynia understands "
            f"(up to {SCHEMA_VERSION})"
        )
        self.version = version


def detect_version(data: Document) -> int:
    """The schema version of ``data``; v1 documents carry none and are recognised by shape."""
    if "schema_version" in data:
        version = data["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"schema_version: expected a non-negative integer, found {version!r}")
        return version
    if "currentCluster" in data or "clusterNodes" in data or isinstance(data.get("clusters"), list):
        return 0
    raise ValueError("the state: missing key 'schema_version'")


def migrate(data: Document) -> Document:
    """``data`` upgraded to ``SCHEMA_VERSION``; ValueError if it cannot be."""
    version = detect_version(data)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(version)
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
        data["schema_version"] = version
    return data


# --- 0 -> 1 -------------------------------------------------------------------------------------

# v1 node statuses that mean the droplet exists and ran v1's stack. It still needs v2's
# configuration, which is exactly what "out-of-sync" tells sync and repair.
_V0_RUNNING = {"active", "infrastructure-ready"}


def _v0_list(data: Document, key: str) -> list[Document]:
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"{key}: expected a list of objects in a Dynia v1 state")
    return items


def _v0_field(record: Document, key: str, where: str) -> Any:
    if key not in record:
        raise ValueError(f"{where}: missing key {key!r} in a Dynia v1 state")
    return record[key]


def _v0_priority(node: Document, where: str) -> int:
    priority = _v0_field(node, "priority", where)
    if isinstance(priority, bool) or not isinstance(priority, int | float):
        raise ValueError(f"{where}.priority: expected a number, found {priority!r}")
    return int(priority)


def _v0_node(node: Document, cluster: str) -> Document:
    name = _v0_field(node, "twoWordId", f"clusterNodes[{cluster}]")
    where = f"clusterNodes[{name}]"
    return {
        "name": name,
        "provider_id": str(_v0_field(node, "dropletId", where)),
        "public_ip": node.get("publicIp") or "",
        "private_ip": node.get("privateIp") or "",
        "priority": _v0_priority(node, where),
        "status": "out-of-sync" if node.get("status") in _V0_RUNNING else "provisioning",
        # v1 never pinned host keys (it turned checking off): they are re-pinned on next contact.
        "host_keys": [],
    }


def _v0_cluster(cluster: Document, all_nodes: list[Document]) -> Document:
    name = _v0_field(cluster, "name", "clusters[]")
    where = f"clusters[{name}]"
    mine = [_v0_node(raw, name) for raw in all_nodes if raw.get("clusterId") == name]
    nodes = {node["name"]: node for node in mine}
    reserved_ip = None
    if cluster.get("reservedIp") and cluster.get("reservedIpId"):
        active = cluster.get("activeNodeId")
        reserved_ip = {
            "address": cluster["reservedIp"],
            "provider_id": str(cluster["reservedIpId"]),
            "attached_to": active if active in nodes else None,
        }
    return {
        "name": name,
        "node_provider": "digitalocean",
        "dns_provider": "cloudflare",
        "region": _v0_field(cluster, "region", where),
        "size": _v0_field(cluster, "size", where),
        "planned_nodes": len(nodes),
        # Droplets that exist must not be provisioned again; "planned" would invite that.
        "status": "infra-ready" if nodes else "planned",
        "completed_steps": [],
        "nodes": nodes,
        "reserved_ip": reserved_ip,
        # v1 kept only a VPC id; subnet and interface are read from the provider again.
        "network": None,
        # v1 routes pointed at placeholders or at compose files by path, never at content the
        # state could hold; services and routes are re-declared with `dynia deploy`. The v1 file
        # itself stays in the backups.
        "services": {},
        "routes": {},
        "settings": {
            "vrrp_router_id": 51,
            "vrrp_advert_int": 1.0,
            "caddy_port": 8080,
            "http_port": 80,
            "https_port": 443,
            "health_path": "/dynia-health",
        },
        "tls_fingerprint": None,
    }


def _v0_to_v1(data: Document) -> Document:
    all_nodes = _v0_list(data, "clusterNodes")
    clusters = {}
    for raw in _v0_list(data, "clusters"):
        cluster = _v0_cluster(raw, all_nodes)
        clusters[cluster["name"]] = cluster
    current = data.get("currentCluster")
    return {
        "schema_version": 1,
        "current_cluster": current if current in clusters else None,
        "clusters": clusters,
    }


# --- 1 -> 2 -------------------------------------------------------------------------------------


def _v1_to_v2(data: Document) -> Document:
    """Routes gain ``https_only``; null keeps the default that follows the certificate.
    Cluster settings gain ``allow_main_credential_on_nodes``, off: a schema-1 cluster never
    consented to the main DigitalOcean token on its nodes."""
    data = copy.deepcopy(data)
    # Anything not shaped like schema 1 is left for validation to name after the migration.
    for cluster in _v1_objects(data.get("clusters")):
        for route in _v1_objects(cluster.get("routes")):
            route.setdefault("https_only", None)
        settings = cluster.get("settings")
        if isinstance(settings, dict):
            settings.setdefault("allow_main_credential_on_nodes", False)
    return data


def _v1_objects(value: Any) -> list[Document]:
    """The object values of a schema-1 map, skipping what is not an object."""
    if not isinstance(value, dict):
        return []
    return [item for item in value.values() if isinstance(item, dict)]


# --- 2 -> 3 -------------------------------------------------------------------------------------

# What schema-2 clusters booted: the defaults of the dynia that wrote them. Recorded so nodes added
# later boot the same system even though the defaults have moved on.
_V2_IMAGES = {"local": "debian-12", "digitalocean": "ubuntu-24-04-x64"}


def _v2_to_v3(data: Document) -> Document:
    """Clusters gain ``image``: the node image their nodes boot."""
    data = copy.deepcopy(data)
    for cluster in _v1_objects(data.get("clusters")):
        provider = cluster.get("node_provider")
        if isinstance(provider, str) and provider in _V2_IMAGES:
            cluster.setdefault("image", _V2_IMAGES[provider])
    return data


# from-version -> step producing from-version + 1
MIGRATIONS: dict[int, Callable[[Document], Document]] = {
    0: _v0_to_v1,
    1: _v1_to_v2,
    2: _v2_to_v3,
}
