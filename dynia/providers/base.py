"""The two provider protocols. Nothing above this layer knows which provider is in use.

A NodeProvider makes machines and the Reserved IP; a DnsProvider keeps A records. Both raise
``dynia.errors.ProviderError`` with an actionable message on failure, and both are idempotent by
name: asking twice for the same thing returns the existing one instead of making a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from dynia.errors import ProviderError


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    subnet: str  # CIDR
    interface: str  # interface on the nodes that carries this network (keepalived binds it)
    gateway: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    cluster: str
    name: str  # two-word node id, unique in the cluster
    region: str
    size: str
    ssh_public_key: str  # OpenSSH public key line to authorize for root
    image: str = ""  # the cluster's node image (a provider's name for it); "" = its default


@dataclass(frozen=True)
class ProvisionedNode:
    name: str
    provider_id: str
    public_ip: str
    private_ip: str
    host_keys: list[str] = field(default_factory=list)  # pinned "type base64" lines


@dataclass(frozen=True)
class ReservedIpInfo:
    address: str
    provider_id: str


class ReservedIpGoneError(ProviderError):
    """The account no longer has the Reserved IP: it was released outside Dynia.

    Part of the protocol: ``attach_reserved_ip`` raises it, so callers tell a lost address from
    any other failure by its type, never by the words of the message. The message is the
    provider's own (what it was doing); ``address`` names the lost address.
    """

    def __init__(self, address: str, message: str | None = None, hint: str | None = None) -> None:
        super().__init__(message or f"Reserved IP {address} no longer exists on the account", hint)
        self.address = address


@runtime_checkable
class NodeProvider(Protocol):
    name: str
    # "vrrp": keepalived carries the address as a virtual_ipaddress (attach = priorities).
    # "api":  the provider moves the address; keepalived's notify-master calls the provider API.
    reserved_ip_mode: Literal["vrrp", "api"]

    def ensure_network(self, cluster: str) -> NetworkInfo: ...

    def delete_network(self, cluster: str) -> None: ...

    def check_room(self, cluster: str, nodes: list[str]) -> None:
        """Refuse, before any is made, nodes of ``cluster`` the account has no room for.

        ``nodes`` are names about to be created; those that already exist (an interrupted run
        made them) take no more room.
        """
        ...

    def create_node(self, spec: NodeSpec) -> ProvisionedNode:
        """Create (or find, by cluster and name) a node and wait until SSH answers."""
        ...

    def list_nodes(self, cluster: str) -> list[ProvisionedNode]: ...

    def delete_node(self, cluster: str, provider_id: str) -> None:
        """Delete a node; deleting one that is already gone is not an error."""
        ...

    def allocate_reserved_ip(self, cluster: str, region: str) -> ReservedIpInfo: ...

    def attach_reserved_ip(self, ip: ReservedIpInfo, node_provider_id: str) -> None:
        """Put the address on the node; ReservedIpGoneError when the account no longer has it."""
        ...

    def reserved_ip_exists(self, ip: ReservedIpInfo) -> bool:
        """Whether the account still has the address; reads only, changes nothing."""
        ...

    def detach_reserved_ip(self, ip: ReservedIpInfo) -> None: ...

    def release_reserved_ip(self, cluster: str, ip: ReservedIpInfo) -> None: ...


@dataclass(frozen=True)
class Zone:
    id: str
    name: str


@dataclass(frozen=True)
class DnsRecord:
    id: str
    name: str  # fully qualified
    type: str
    content: str
    ttl: int


@runtime_checkable
class DnsProvider(Protocol):
    name: str

    def find_zone(self, domain: str) -> Zone:
        """The zone that holds ``domain`` (longest suffix match); ProviderError if none."""
        ...

    def upsert_a_record(self, domain: str, address: str, ttl: int = 60) -> DnsRecord: ...

    def delete_a_record(self, domain: str) -> None:
        """Delete the A record(s) of ``domain``; absent records are not an error."""
        ...

    def list_records(self, zone: Zone) -> list[DnsRecord]: ...

    def resolver_address(self) -> tuple[str, int] | None:
        """Where end-to-end verify should resolve names: (host, port), or None for the system."""
        ...
