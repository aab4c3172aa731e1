"""Provider registry: names, traits known without importing any SDK, and lazy factories.

The traits let the renderer and services decide (e.g. VRRP address or API-moved Reserved IP)
without loading pydo or cloudflare, which keeps commands that do not talk to a cloud fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dynia.errors import UsageError, check_choice
from dynia.paths import HomeLayout
from dynia.providers.base import DnsProvider, NodeProvider

if TYPE_CHECKING:
    from dynia.state.models import Cluster


@dataclass(frozen=True)
class NodeProviderTraits:
    reserved_ip_mode: Literal["vrrp", "api"]
    default_vrrp_advert_int: float
    # Adverts a BACKUP misses before it takes over (keepalived's down_timer_adverts).
    default_vrrp_down_timer_adverts: int
    # The node image a cluster boots when none is chosen.
    default_image: str
    # The images the tests run on; another one works if the provider offers it, untested.
    tested_images: tuple[str, ...]
    # The provider offers only these images (None: any slug the provider knows).
    only_images: tuple[str, ...] | None = None
    # The first host key reached the node in readable user data: Dynia replaces it on first
    # contact (operations/host_keys.py).
    bootstrap_host_key: bool = False


# Local nodes: adverts every 0.1 s and a BACKUP that takes over after 6 missed ones move the
# address about 0.65 s after a MASTER dies. A MASTER's adverts may then be up to about 0.5 s late
# on busy cores, or five in a row lost on a lossy link, before a BACKUP claims the address (with
# the RFCs' 3 missed adverts of 0.15 s, 30% packet loss on a BACKUP's link made it claim the
# address about once every 10 s). keepalived's VRRP process runs at nice -20 to keep them on
# time. A droplet's failover waits for the API anyway, so 1 s and the RFCs' 3 cost nothing there.
# Local images are built by providers/local/image.py (LOCAL_IMAGES); a droplet boots Debian 13,
# the release the local Debian 13 nodes test.
LOCAL_NODE_IMAGES = ("debian-12", "debian-13")
NODE_PROVIDERS: dict[str, NodeProviderTraits] = {
    "local": NodeProviderTraits(
        "vrrp",
        0.1,
        6,
        default_image="debian-12",
        tested_images=LOCAL_NODE_IMAGES,
        only_images=LOCAL_NODE_IMAGES,
    ),
    "digitalocean": NodeProviderTraits(
        "api",
        1.0,
        3,
        default_image="debian-13-x64",
        tested_images=("debian-13-x64",),
        bootstrap_host_key=True,
    ),
}

DNS_PROVIDERS = ("cloudflare", "local")


def check_node_provider(name: str) -> str:
    return check_choice("node provider", name, NODE_PROVIDERS)


def check_dns_provider(name: str) -> str:
    return check_choice("DNS provider", name, DNS_PROVIDERS)


def node_provider_traits(name: str) -> NodeProviderTraits:
    return NODE_PROVIDERS[check_node_provider(name)]


def get_node_provider(name: str, layout: HomeLayout) -> NodeProvider:
    """The named node provider; its SDK is imported only now."""
    if check_node_provider(name) == "local":
        from dynia.providers.local.nodes import LocalNodeProvider

        return LocalNodeProvider(home=layout.root)
    from dynia.providers.digitalocean.provider import DigitalOceanNodeProvider

    return DigitalOceanNodeProvider()


# The local DNS server serves the reserved `.test` TLD unless config.json lists other zones.
LOCAL_DEFAULT_ZONES = ["test"]


def get_dns_provider(
    name: str,
    layout: HomeLayout,
    *,
    proxied: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DnsProvider:
    """The named DNS provider; its SDK is imported only now.

    ``proxied``: records go through the provider's edge (Cloudflare); refused by the local one.
    ``progress``: the run's progress lines, where the provider's notices (retries, a zone no
    longer there) reach the operator; without it they go to Python logging only.
    """
    if check_dns_provider(name) == "local":
        if proxied:
            raise UsageError(
                "the local DNS provider cannot proxy records",
                hint="proxied records need --dns-provider cloudflare",
            )
        from dynia.providers.local.dns import LocalDnsProvider

        zones = _config_zones(layout)
        return LocalDnsProvider(layout, zones=zones or LOCAL_DEFAULT_ZONES)
    from dynia.providers.cloudflare import CloudflareDnsProvider

    return CloudflareDnsProvider(proxied=proxied, progress=progress)


def dns_provider_for(
    cluster: Cluster, layout: HomeLayout, progress: Callable[[str], None] | None = None
) -> DnsProvider:
    """The cluster's DNS provider, writing records as its settings say (proxied or not)."""
    return get_dns_provider(
        cluster.dns_provider, layout, proxied=cluster.settings.dns_proxied, progress=progress
    )


def _config_value(layout: HomeLayout, key: str) -> Any:
    try:
        data = json.loads(layout.config_file.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def _config_zones(layout: HomeLayout) -> list[str] | None:
    zones = _config_value(layout, "local_dns_zones")
    # A string is iterable too: "abc" must not become the zones a, b and c.
    if zones is not None and (
        not isinstance(zones, list) or not all(isinstance(z, str) for z in zones)
    ):
        raise UsageError(
            f'"local_dns_zones" in {layout.config_file} must be a list of zone names, '
            f"found {zones!r}",
            hint='fix the file, e.g. "local_dns_zones": ["example.test"]',
        )
    return zones
