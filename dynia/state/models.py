"""Typed records of Dynia's state: clusters, their nodes, services and routes.

The JSON form is the on-disk schema (``SCHEMA_VERSION``); ``to_dict``/``from_dict`` are the only
way in and out, so a schema change is one place plus one migration in ``migrations.py``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 3

# Lifecycle of a cluster, in order.
STATUS_PLANNED = "planned"
STATUS_INFRA_READY = "infra-ready"
STATUS_SERVING = "serving"
CLUSTER_STATUSES = (STATUS_PLANNED, STATUS_INFRA_READY, STATUS_SERVING)

# Node statuses. A node `node add` created but has not finished joining is "joining".
NODE_PROVISIONING = "provisioning"
NODE_JOINING = "joining"
NODE_READY = "ready"
NODE_OUT_OF_SYNC = "out-of-sync"
NODE_STATUSES = (NODE_PROVISIONING, NODE_JOINING, NODE_READY, NODE_OUT_OF_SYNC)

# Who issues the cluster certificate: Dynia's local CA, or Cloudflare's Origin CA (trusted only
# by Cloudflare's edge, so it goes with proxied records).
CERT_ISSUER_LOCAL = "local"
CERT_ISSUER_CLOUDFLARE_ORIGIN = "cloudflare-origin"
CERT_ISSUERS = (CERT_ISSUER_LOCAL, CERT_ISSUER_CLOUDFLARE_ORIGIN)

MASTER_PRIORITY = 150
BACKUP_PRIORITY = 100

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_DOMAIN_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# An HTTP path as HAProxy, Caddy and the health checks on the nodes are given it: it is pasted into
# their configs, so it holds no space, quote, ';', '$' or backtick, only what a plain path needs.
_HTTP_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/-]{0,200}$")


def validate_name(kind: str, value: str) -> str:
    """A cluster, node or service name: 2-32 chars of a-z, 0-9 and '-', starting with a letter."""
    # fullmatch: with match, "$" also matches before a final newline and "web\n" would pass.
    if not _NAME_RE.fullmatch(value or ""):
        raise ValueError(
            f"invalid {kind} name {value!r}: use 2-32 characters of a-z, 0-9 and '-', "
            "starting with a letter and not ending with '-'"
        )
    return value


def validate_domain(value: str) -> str:
    """A fully qualified domain name (lower case, at least two labels, no trailing dot)."""
    domain = (value or "").strip().lower().rstrip(".")
    labels = domain.split(".")
    if (
        len(domain) > 253
        or len(labels) < 2
        or not all(_DOMAIN_LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValueError(
            f"invalid domain {value!r}: give a fully qualified name such as app.example.com"
        )
    return domain


def validate_http_path(kind: str, value: str) -> str:
    """A health path: '/' then letters, digits and . _ ~ / - (no query, no spaces)."""
    if not _HTTP_PATH_RE.fullmatch(value or ""):
        raise ValueError(
            f"invalid {kind} {value!r}: it must start with / and hold up to 200 more of a-z, "
            "A-Z, 0-9 and . _ ~ / - (e.g. /healthz)"
        )
    return value


@dataclass
class Node:
    name: str  # human two-word id, e.g. "misty-owl"
    provider_id: str
    public_ip: str
    private_ip: str
    priority: int
    status: str = NODE_PROVISIONING
    host_keys: list[str] = field(default_factory=list)  # "ssh-ed25519 AAAA..." lines, pinned

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Node:
        return cls(**data)


@dataclass
class ReservedIp:
    address: str
    provider_id: str
    attached_to: str | None = None  # node name the provider last attached it to

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReservedIp:
        return cls(**data)


@dataclass
class Network:
    """The cluster's private network as the node provider reports it."""

    name: str
    subnet: str  # CIDR, e.g. "172.30.7.0/24"
    interface: str  # interface name on the nodes that carries the private network
    gateway: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Network:
        return cls(**data)


@dataclass
class Service:
    name: str
    compose: str  # the compose file as the operator gave it
    compose_hash: str  # sha256 of ``compose``
    internal_port: int  # port on 127.0.0.1 of every node that Dynia assigned
    container_port: int  # port inside the service's main container
    main_service: str  # the compose service that receives traffic
    health_path: str = "/"
    image_ids: dict[str, str] = field(default_factory=dict)  # image ref -> local image id

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Service:
        return cls(**data)


@dataclass
class Route:
    domain: str
    service: str
    dns_record_id: str | None = None  # set once the DNS provider created the record
    # HTTP redirected to HTTPS and HSTS sent. None follows the certificate: on when a client's
    # browser trusts it (Cloudflare Origin CA behind Cloudflare's edge), off for the local CA,
    # whose users pass -k and would be locked out by HSTS. See ``Cluster.https_only``.
    https_only: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Route:
        return cls(**data)


@dataclass
class ClusterSettings:
    vrrp_router_id: int = 51
    vrrp_advert_int: float = 1.0
    # Adverts a BACKUP misses before it takes over; 3 is the VRRP RFCs' value.
    vrrp_down_timer_adverts: int = 3
    caddy_port: int = 8080
    http_port: int = 80
    https_port: int = 443
    health_path: str = "/dynia-health"
    certificate_issuer: str = CERT_ISSUER_LOCAL  # who signs the cluster certificate
    dns_proxied: bool = False  # A records proxied through the DNS provider's edge (Cloudflare)
    # The operator accepted the main API token on the nodes (for keepalived's notify-master)
    # when no narrow failover token is set. Off: such a render is refused.
    allow_main_credential_on_nodes: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSettings:
        return cls(**data)


@dataclass
class Cluster:
    name: str
    node_provider: str
    dns_provider: str
    region: str
    size: str
    planned_nodes: int
    status: str = STATUS_PLANNED
    completed_steps: list[str] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    reserved_ip: ReservedIp | None = None
    network: Network | None = None
    services: dict[str, Service] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    tls_fingerprint: str | None = None  # sha256 of the cluster certificate in use
    # The node image every node of the cluster boots (local: debian-12 / debian-13; DigitalOcean:
    # an image slug). None only in a plan made before the image was chosen.
    image: str | None = None

    @property
    def master(self) -> Node | None:
        """The node keepalived prefers: highest priority, ties broken by name."""
        if not self.nodes:
            return None
        return max(self.nodes.values(), key=lambda n: (n.priority, n.name))

    def role_of(self, node_name: str) -> str:
        master = self.master
        return "master" if master and master.name == node_name else "backup"

    def https_only(self, route: Route) -> bool:
        """Whether ``route`` redirects HTTP to HTTPS and sends HSTS (its flag, or the default)."""
        if route.https_only is not None:
            return route.https_only
        # Any issuer but the local CA gives a certificate the route's clients trust.
        return self.settings.certificate_issuer != CERT_ISSUER_LOCAL

    def step_done(self, step: str) -> bool:
        return step in self.completed_steps

    def mark_step(self, step: str) -> None:
        if step not in self.completed_steps:
            self.completed_steps.append(step)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cluster:
        data = dict(data)
        data["nodes"] = {k: Node.from_dict(v) for k, v in data.get("nodes", {}).items()}
        data["services"] = {k: Service.from_dict(v) for k, v in data.get("services", {}).items()}
        data["routes"] = {k: Route.from_dict(v) for k, v in data.get("routes", {}).items()}
        if data.get("reserved_ip"):
            data["reserved_ip"] = ReservedIp.from_dict(data["reserved_ip"])
        if data.get("network"):
            data["network"] = Network.from_dict(data["network"])
        data["settings"] = ClusterSettings.from_dict(data.get("settings", {}))
        return cls(**data)


@dataclass
class State:
    schema_version: int = SCHEMA_VERSION
    current_cluster: str | None = None
    clusters: dict[str, Cluster] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "current_cluster": self.current_cluster,
            "clusters": {name: c.to_dict() for name, c in sorted(self.clusters.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        return cls(
            schema_version=data["schema_version"],
            current_cluster=data.get("current_cluster"),
            clusters={k: Cluster.from_dict(v) for k, v in data.get("clusters", {}).items()},
        )
