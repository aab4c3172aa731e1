"""End-to-end verification of a route: DNS -> TLS -> the service's health path."""

from __future__ import annotations

import http.client
import socket
import ssl
import time

from dynia import pki
from dynia.errors import VerifyError
from dynia.paths import HomeLayout
from dynia.providers.base import DnsProvider
from dynia.state.models import Cluster


def resolve(provider: DnsProvider, domain: str) -> list[str]:
    """A records of ``domain`` from the provider's resolver (or the system's)."""
    import dns.resolver  # dnspython: loaded only when a route is verified

    address = provider.resolver_address()
    resolver = dns.resolver.Resolver(configure=address is None)
    if address:
        resolver.nameservers = [address[0]]
        resolver.port = address[1]
    try:
        answer = resolver.resolve(domain, "A", lifetime=5)
    except Exception as exc:  # dnspython raises many kinds; all mean "no answer"
        raise VerifyError(
            f"DNS lookup of {domain} failed: {exc}",
            hint="check that the record exists in the zone",
        ) from exc
    return sorted(r.address for r in answer)


class _AddressedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address while SNI, Host and the certificate check use the domain."""

    def __init__(self, address: str, domain: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(domain, port, timeout=5, context=context)
        self._address = address
        self._tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls_context.wrap_socket(raw, server_hostname=self.host)


def https_get(
    layout: HomeLayout, address: str, port: int, domain: str, path: str
) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(pki.ca_certificate_path(layout)))
    connection = _AddressedHTTPSConnection(address, domain, port, context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read(200).decode(errors="replace")
    finally:
        connection.close()


def verify_route(
    layout: HomeLayout, cluster: Cluster, domain: str, dns: DnsProvider, timeout: float = 20.0
) -> str:
    """Check the name resolves to the Reserved IP and the health path answers over TLS."""
    assert cluster.reserved_ip is not None
    route = cluster.routes[domain]
    service = cluster.services[route.service]
    deadline = time.monotonic() + timeout
    last: VerifyError | None = None
    while time.monotonic() < deadline:
        try:
            addresses = resolve(dns, domain)
            if cluster.reserved_ip.address not in addresses:
                raise VerifyError(
                    f"{domain} resolves to {', '.join(addresses)}, not the Reserved IP "
                    f"{cluster.reserved_ip.address}",
                    hint="fix the A record in the zone",
                )
            status, body = https_get(
                layout,
                cluster.reserved_ip.address,
                cluster.settings.https_port,
                domain,
                service.health_path,
            )
            if 200 <= status < 400:
                return f"https://{domain}{service.health_path} -> {status}"
            raise VerifyError(f"https://{domain}{service.health_path} answered {status}: {body}")
        except (OSError, ssl.SSLError) as exc:
            last = VerifyError(f"https://{domain}{service.health_path} failed: {exc}")
        except VerifyError as exc:
            last = exc
        time.sleep(1)
    assert last is not None
    raise last
