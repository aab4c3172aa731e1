"""Provider registry: names, traits known without importing any SDK, and lazy factories.

The traits let the renderer and services decide (e.g. VRRP address or API-moved Reserved IP)
without loading pydo or cloudflare, which keeps commands that do not talk to a cloud fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from dynia.errors import UsageError
from dynia.paths import HomeLayout
from dynia.providers.base import DnsProvider, NodeProvider


@dataclass(frozen=True)
class NodeProviderTraits:
    reserved_ip_mode: Literal["vrrp", "api"]
    default_vrrp_advert_int: float


NODE_PROVIDERS: dict[str, tuple[str, str, NodeProviderTraits]] = {
    "local": ("dynia.providers.local.nodes", "LocalNodeProvider", NodeProviderTraits("vrrp", 0.5)),
    "digitalocean": (
        "dynia.providers.digitalocean",
        "DigitalOceanNodeProvider",
        NodeProviderTraits("api", 1.0),
    ),
}

DNS_PROVIDERS: dict[str, tuple[str, str]] = {
    "local": ("dynia.providers.local.dns", "LocalDnsProvider"),
    "cloudflare": ("dynia.providers.cloudflare", "CloudflareDnsProvider"),
}


def check_node_provider(name: str) -> str:
    if name not in NODE_PROVIDERS:
        raise UsageError(
            f"unknown node provider {name!r}",
            hint=f"choose one of: {', '.join(sorted(NODE_PROVIDERS))}",
        )
    return name


def check_dns_provider(name: str) -> str:
    if name not in DNS_PROVIDERS:
        raise UsageError(
            f"unknown DNS provider {name!r}",
            hint=f"choose one of: {', '.join(sorted(DNS_PROVIDERS))}",
        )
    return name


def node_provider_traits(name: str) -> NodeProviderTraits:
    return NODE_PROVIDERS[check_node_provider(name)][2]


def get_node_provider(name: str, layout: HomeLayout) -> NodeProvider:
    module_name, class_name, _ = NODE_PROVIDERS[check_node_provider(name)]
    provider_class = getattr(importlib.import_module(module_name), class_name)
    return provider_class(home=layout.root)


def get_dns_provider(name: str, layout: HomeLayout) -> DnsProvider:
    module_name, class_name = DNS_PROVIDERS[check_dns_provider(name)]
    provider_class = getattr(importlib.import_module(module_name), class_name)
    return provider_class(home=layout)
