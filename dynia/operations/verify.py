"""End-to-end verification of a route: DNS -> TLS -> the service's health path.

TLS is checked against what the cluster's certificate is:

* from the local CA: a normal TLS check that trusts ``<home>/pki/ca.pem`` only;
* from Cloudflare's Origin CA: that root is trusted by Cloudflare's edge alone, and the API does
  not hand it out, so the check pins the certificate instead: the origin must present exactly
  the cluster certificate Dynia installed (same SHA-256 fingerprint), and its names must cover
  the domain. A stale or foreign certificate fails just as an untrusted one would.

With proxied records, public DNS answers Cloudflare's edge addresses, not the Reserved IP; the
record is then checked through the provider's API, and TLS and the health path are checked at
the Reserved IP directly (the origin), as Cloudflare's edge reaches it.
"""

from __future__ import annotations

import http.client
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from dynia import pki
from dynia.errors import ProviderError, VerifyError
from dynia.paths import HomeLayout
from dynia.providers.base import DnsProvider
from dynia.state.models import Cluster
from dynia.waiting import wait_until


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


def record_addresses(provider: DnsProvider, domain: str) -> list[str]:
    """The A record contents the provider's API holds for ``domain`` (proxied records)."""
    zone = provider.find_zone(domain)
    return sorted(
        r.content for r in provider.list_records(zone) if r.type == "A" and r.name == domain
    )


class _AddressedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address while SNI, Host and the certificate check use the domain.

    With ``pinned`` (a SHA-256 fingerprint) the chain is not checked; the server must present
    exactly that certificate, and it must name the domain.
    """

    def __init__(
        self,
        address: str,
        domain: str,
        port: int,
        context: ssl.SSLContext,
        pinned: str | None = None,
    ) -> None:
        super().__init__(domain, port, timeout=5, context=context)
        self._address = address
        self._tls_context = context
        self._pinned = pinned

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls_context.wrap_socket(raw, server_hostname=self.host)
        if self._pinned is not None:
            _check_pinned(self.sock.getpeercert(binary_form=True), self._pinned, self.host)


def _check_pinned(der: bytes | None, fingerprint: str, domain: str) -> None:
    served = x509.load_der_x509_certificate(der) if der else None
    if served is None or served.fingerprint(hashes.SHA256()).hex() != fingerprint:
        got = served.fingerprint(hashes.SHA256()).hex()[:16] if served else "none"
        raise VerifyError(
            f"{domain} presents certificate sha256 {got}…, not the cluster certificate "
            f"{fingerprint[:16]}…",
            hint="a node still serves an old certificate: run `dynia sync` (or `dynia repair`)",
        )
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if not any(_name_matches(n, domain) for n in names.get_values_for_type(x509.DNSName)):
        raise VerifyError(
            f"the cluster certificate does not name {domain}",
            hint="run `dynia cert rotate` to issue one for every routed domain",
        )


def _name_matches(name: str, domain: str) -> bool:
    name, domain = name.lower(), domain.lower()
    if name.startswith("*."):
        head, _, rest = domain.partition(".")
        return bool(head) and rest == name[2:]
    return name == domain


def _tls_context(layout: HomeLayout, pinned: str | None) -> ssl.SSLContext:
    if pinned is None:
        return ssl.create_default_context(cafile=str(pki.ca_certificate_path(layout)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # checked against the pinned certificate's names instead
    context.verify_mode = ssl.CERT_NONE
    return context


def https_get(
    layout: HomeLayout,
    address: str,
    port: int,
    domain: str,
    path: str,
    pinned: str | None = None,
) -> tuple[int, str]:
    """GET ``path`` at ``address``; TLS trusts the local CA, or only the ``pinned`` certificate."""
    context = _tls_context(layout, pinned)
    connection = _AddressedHTTPSConnection(address, domain, port, context, pinned)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read(200).decode(errors="replace")
    finally:
        connection.close()


def verify_route(
    layout: HomeLayout, cluster: Cluster, domain: str, dns: DnsProvider, timeout: float = 20.0
) -> str:
    """Check the name points at the Reserved IP and the health path answers over TLS."""
    assert cluster.reserved_ip is not None
    route = cluster.routes[domain]
    service = cluster.services[route.service]
    pinned = _pinned_fingerprint(layout, cluster)
    address, url = cluster.reserved_ip.address, f"https://{domain}{service.health_path}"

    def answered() -> str:
        try:
            _check_record(cluster, domain, dns)
            status, body = https_get(
                layout,
                address,
                cluster.settings.https_port,
                domain,
                service.health_path,
                pinned,
            )
        except (OSError, ssl.SSLError) as exc:
            raise VerifyError(f"{url} failed: {exc}") from exc
        if 200 <= status < 300:
            return f"{url} -> {status}"
        raise VerifyError(f"{url} answered {status}: {body}")

    # On timeout the last VerifyError is raised: it says what was still wrong.
    return wait_until(answered, timeout=timeout, interval=1, what=url, retry_on=(VerifyError,))


def _pinned_fingerprint(layout: HomeLayout, cluster: Cluster) -> str | None:
    """The certificate to pin when it is not from the local CA (None: trust the local CA)."""
    bundle = pki.current_certificate(layout, cluster.name)
    if bundle is None or bundle.issuer == "local":
        return None
    return bundle.fingerprint_sha256


def _check_record(cluster: Cluster, domain: str, dns: DnsProvider) -> None:
    assert cluster.reserved_ip is not None
    if cluster.settings.dns_proxied:
        try:
            addresses, source = record_addresses(dns, domain), "its proxied A record holds"
        except ProviderError as exc:
            raise VerifyError(f"reading the A record of {domain} failed: {exc.message}") from exc
    else:
        addresses, source = resolve(dns, domain), "resolves to"
    if cluster.reserved_ip.address not in addresses:
        raise VerifyError(
            f"{domain} {source} {', '.join(addresses) or 'nothing'}, not the Reserved IP "
            f"{cluster.reserved_ip.address}",
            hint="fix the A record in the zone",
        )
