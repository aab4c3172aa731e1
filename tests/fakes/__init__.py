"""Loopback fakes of the DigitalOcean v2 and Cloudflare v4 APIs, driven through the real SDKs."""

from .fake_cloudflare import FakeCloudflare
from .fake_digitalocean import (
    DropletAddresses,
    DropletBackend,
    DropletRequest,
    FakeDigitalOcean,
    InMemoryDropletBackend,
)

__all__ = [
    "DropletAddresses",
    "DropletBackend",
    "DropletRequest",
    "FakeCloudflare",
    "FakeDigitalOcean",
    "InMemoryDropletBackend",
]
