"""API endpoints taken from the environment: checked before they are used or written anywhere.

``DIGITALOCEAN_API_URL`` and ``DIGITALOCEAN_METADATA_URL`` are written into the notify-master
script that root runs on every node; ``CLOUDFLARE_BASE_URL`` receives the Cloudflare token. Each
must be a plain http(s) URL (scheme, host, optional port and path: no quotes, spaces, ';', '$' or
backticks) and use https, except where a test API listens on this machine or a private network.
"""

from __future__ import annotations

import ipaddress
import re

from dynia.errors import UsageError

# scheme://host[:port][/path]; the host is a DNS name, an IPv4 address or a bracketed IPv6 one.
_URL_RE = re.compile(
    r"(?P<scheme>https?)://"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~/-]{0,200})?"
)

# Where plain http is allowed: a test API on this machine only, or also one on a private network
# (the DigitalOcean fake listens on a bridge the nodes reach; the droplet metadata service is at
# the link-local 169.254.169.254).
LOOPBACK = "loopback"
PRIVATE = "private"


def _http_allowed(host: str, scope: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        # A name could resolve anywhere, and the nodes may resolve it differently from us.
        return False
    if scope == LOOPBACK:
        return address.is_loopback
    return address.is_loopback or address.is_private or address.is_link_local


def check_url_shape(name: str, url: str) -> re.Match[str]:
    """The parts of ``url`` if it is a plain http(s) URL, else UsageError naming ``name``."""
    match = _URL_RE.fullmatch(url)
    if match is None:
        raise UsageError(
            f"{name}={url!r} is not a plain http(s) URL",
            hint=f"give scheme://host[:port][/path] (letters, digits, . _ ~ / -), or unset {name}",
        )
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise UsageError(f"{name}={url!r}: port {port} is outside 1-65535", hint=f"unset {name}")
    return match


def check_endpoint(name: str, url: str, http_scope: str = LOOPBACK) -> str:
    """``url`` without a trailing '/', or UsageError naming ``name`` and what is wrong."""
    match = check_url_shape(name, url)
    if match.group("scheme") == "http" and not _http_allowed(match.group("host"), http_scope):
        where = "this machine" if http_scope == LOOPBACK else "this machine or a private network"
        raise UsageError(
            f"{name}={url!r} uses plain http to a host that is not on {where}: "
            "a token would cross the network unencrypted",
            hint=f"use https, or unset {name}",
        )
    return url.rstrip("/")
