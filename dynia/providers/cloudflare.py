"""The Cloudflare DNS provider (cloudflare v5 SDK): A records pointing domains at the Reserved IP.

* token: ``CLOUDFLARE_API_TOKEN`` (else the credentials file, see ``credentials.py``); it needs
  ``Zone:Read`` and ``DNS:Edit`` on the zones Dynia binds domains in.
* API base URL: ``CLOUDFLARE_BASE_URL`` (the SDK's own variable) or the ``base_url`` argument.
* The zone of a domain is the longest suffix of it that is a zone on the account
  (``app.eu.example.com`` -> ``eu.example.com`` if that is a zone, else ``example.com``).
* Records Dynia writes carry the comment ``managed by dynia``; ``delete_a_record`` removes only
  those, so a hand-made record of the same name is never deleted.
* Retries: the SDK's own, bounded by ``max_retries`` (429 honours ``Retry-After``; 5xx and
  connection errors back off). Failures become ``ProviderError`` naming the setting to change.

``CloudflareOriginCa`` issues and revokes Origin CA certificates (the cluster certificate of a
cluster with ``certificate_issuer = "cloudflare-origin"``) with the same token, which then also
needs ``SSL and Certificates:Edit``. Only Cloudflare's edge trusts those certificates, so they
go with proxied records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cloudflare
from cloudflare import Cloudflare

from dynia.errors import ProviderError
from dynia.providers.base import DnsRecord, Zone
from dynia.providers.credentials import Secret, lookup_token

TOKEN_ENV = "CLOUDFLARE_API_TOKEN"
BASE_URL_ENV = "CLOUDFLARE_BASE_URL"
MANAGED_COMMENT = "managed by dynia"
TOKEN_SCOPES = (
    "a Cloudflare API token (https://dash.cloudflare.com/profile/api-tokens) with "
    "Zone:Read and DNS:Edit permissions on the zones you bind domains in"
)
ORIGIN_CA_SCOPES = (
    "a Cloudflare API token with Zone:Read, DNS:Edit and SSL and Certificates:Edit "
    "permissions on the zones of the cluster's domains"
)
DNS_REFUSED_HINT = "check the domain and that no conflicting CNAME record exists for it"


def _connect(
    token: Secret | str | None,
    scopes_hint: str,
    base_url: str | None,
    max_retries: int,
    timeout: float,
) -> tuple[str | None, Cloudflare]:
    """The SDK client both Cloudflare classes use: token from the argument or the environment."""
    secret = Secret(token) if isinstance(token, str) else token
    secret = secret or lookup_token(TOKEN_ENV, scopes_hint=scopes_hint)
    url = base_url or os.environ.get(BASE_URL_ENV) or None
    client = Cloudflare(
        api_token=secret.reveal(), base_url=url, max_retries=max_retries, timeout=timeout
    )
    return url, client


class CloudflareDnsProvider:
    """``DnsProvider`` on Cloudflare."""

    name = "cloudflare"

    def __init__(
        self,
        token: Secret | str | None = None,
        *,
        base_url: str | None = None,
        proxied: bool = False,
        max_retries: int = 4,
        timeout: float = 30.0,
    ) -> None:
        self.base_url, self._client = _connect(token, TOKEN_SCOPES, base_url, max_retries, timeout)
        self.proxied = proxied

    def __repr__(self) -> str:
        return f"CloudflareDnsProvider(base_url={self.base_url!r}, proxied={self.proxied})"

    def _call(self, what: str, operation: Any, *args: Any, **kwargs: Any) -> Any:
        return _call(what, TOKEN_SCOPES, DNS_REFUSED_HINT, operation, *args, **kwargs)

    # -- zones ---------------------------------------------------------------------------------

    def find_zone(self, domain: str) -> Zone:
        domain = domain.strip().lower().rstrip(".")
        labels = domain.split(".")
        for start in range(len(labels) - 1):
            candidate = ".".join(labels[start:])
            page = self._call(
                f"looking up zone {candidate}", self._client.zones.list, name=candidate
            )
            for zone in page.result or []:
                if zone.name.lower() == candidate:
                    return Zone(id=zone.id, name=zone.name.lower())
        raise ProviderError(
            f"no Cloudflare zone holds {domain}",
            hint=f"add the domain's zone to the Cloudflare account, or give {TOKEN_ENV} "
            "Zone:Read on it (a token scoped to other zones cannot see it)",
        )

    # -- records -------------------------------------------------------------------------------

    def _a_records(self, zone: Zone, domain: str) -> list[Any]:
        listing = self._call(
            f"listing A records of {domain}",
            self._client.dns.records.list,
            zone_id=zone.id,
            name={"exact": domain},
            type="A",
        )
        return [r for r in self._call(f"listing A records of {domain}", list, listing)]

    def upsert_a_record(self, domain: str, address: str, ttl: int = 60) -> DnsRecord:
        domain = domain.strip().lower().rstrip(".")
        zone = self.find_zone(domain)
        existing = self._a_records(zone, domain)
        wanted = {
            "zone_id": zone.id,
            "name": domain,
            "type": "A",
            "content": address,
            "ttl": 1 if self.proxied else ttl,
            "proxied": self.proxied,
            "comment": MANAGED_COMMENT,
        }
        keep = next(
            (r for r in existing if r.content == address), existing[0] if existing else None
        )
        if keep is None:
            record = self._call(
                f"creating A record {domain}", self._client.dns.records.create, **wanted
            )
        elif _matches(keep, wanted):
            record = keep
        else:
            record = self._call(
                f"updating A record {domain}", self._client.dns.records.update, keep.id, **wanted
            )
        for extra in existing:
            if (
                extra.id != record.id
            ):  # one name, one address: a second A record would split traffic
                self._call(
                    f"deleting extra A record {domain}",
                    self._client.dns.records.delete,
                    extra.id,
                    zone_id=zone.id,
                )
        return _to_record(record)

    def delete_a_record(self, domain: str) -> None:
        domain = domain.strip().lower().rstrip(".")
        zone = self.find_zone(domain)
        for record in self._a_records(zone, domain):
            if (record.comment or "") != MANAGED_COMMENT:
                continue  # not made by dynia: leave it alone
            self._call(
                f"deleting A record {domain}",
                self._client.dns.records.delete,
                record.id,
                zone_id=zone.id,
            )

    def list_records(self, zone: Zone) -> list[DnsRecord]:
        listing = self._call(
            f"listing records of {zone.name}", self._client.dns.records.list, zone_id=zone.id
        )
        return [_to_record(r) for r in self._call(f"listing records of {zone.name}", list, listing)]

    def resolver_address(self) -> tuple[str, int] | None:
        return None


@dataclass(frozen=True)
class OriginCertificate:
    id: str  # the certificate's serial number, as the API names it
    certificate_pem: str
    hostnames: tuple[str, ...]
    expires_on: str


class CloudflareOriginCa:
    """Cloudflare's Origin CA: certificates for origins behind Cloudflare's proxy."""

    name = "cloudflare-origin"

    def __init__(
        self,
        token: Secret | str | None = None,
        *,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout: float = 30.0,
    ) -> None:
        self.base_url, self._client = _connect(
            token, ORIGIN_CA_SCOPES, base_url, max_retries, timeout
        )

    def __repr__(self) -> str:
        return f"CloudflareOriginCa(base_url={self.base_url!r})"

    def issue(self, csr_pem: str, hostnames: list[str], validity_days: int) -> OriginCertificate:
        """Have the Origin CA sign ``csr_pem`` (an ECDSA key) for ``hostnames``."""
        what = f"issuing an Origin CA certificate for {', '.join(hostnames)}"
        made = _call(
            what,
            ORIGIN_CA_SCOPES,
            "every hostname must be in a zone of the account that the token can reach",
            self._client.origin_ca_certificates.create,
            csr=csr_pem,
            hostnames=hostnames,
            request_type="origin-ecc",
            requested_validity=validity_days,
        )
        if made is None or not made.id or not made.certificate:
            raise ProviderError(
                f"Cloudflare answered without a certificate while {what}",
                hint="run the command again; nothing was installed",
            )
        return OriginCertificate(
            id=made.id,
            certificate_pem=made.certificate,
            hostnames=tuple(made.hostnames),
            expires_on=made.expires_on or "",
        )

    def revoke(self, certificate_id: str) -> None:
        """Revoke a certificate; one the API no longer knows counts as revoked."""

        def delete_if_present() -> None:
            try:
                self._client.origin_ca_certificates.delete(certificate_id)
            except cloudflare.NotFoundError:
                return

        _call(
            f"revoking Origin CA certificate {certificate_id}",
            ORIGIN_CA_SCOPES,
            "revoke it in the Cloudflare dashboard (SSL/TLS > Origin Server)",
            delete_if_present,
        )


def _call(
    what: str, scopes: str, refused_hint: str, operation: Any, *args: Any, **kwargs: Any
) -> Any:
    """Run one SDK call; translate its failures into an actionable ProviderError."""
    try:
        return operation(*args, **kwargs)
    except cloudflare.AuthenticationError:
        raise ProviderError(
            f"Cloudflare rejected the API token while {what} (401)",
            hint=f"{TOKEN_ENV} is missing, mistyped or revoked; set it to {scopes}",
        ) from None
    except cloudflare.PermissionDeniedError as exc:
        raise ProviderError(
            f"the Cloudflare token may not do this: {what} was refused (403: {_messages(exc)})",
            hint=f"give {TOKEN_ENV} the missing permission; it needs {scopes}",
        ) from None
    except cloudflare.RateLimitError:
        raise ProviderError(
            f"Cloudflare rate limit still exceeded while {what}, retries exhausted",
            hint="wait a minute and re-run the same command",
        ) from None
    except cloudflare.InternalServerError as exc:
        raise ProviderError(
            f"the Cloudflare API kept failing while {what} "
            f"(HTTP {exc.status_code}: {_messages(exc)})",
            hint="check https://www.cloudflarestatus.com and re-run the same command",
        ) from None
    except cloudflare.APIStatusError as exc:
        raise ProviderError(
            f"Cloudflare refused {what} (HTTP {exc.status_code}: {_messages(exc)})",
            hint=refused_hint,
        ) from None
    except cloudflare.APIConnectionError as exc:
        raise ProviderError(
            f"cannot reach the Cloudflare API while {what} ({type(exc).__name__})",
            hint=f"check the network and {BASE_URL_ENV}; then re-run",
        ) from None


def _matches(record: Any, wanted: dict[str, Any]) -> bool:
    return (
        record.content == wanted["content"]
        and int(record.ttl) == wanted["ttl"]
        and bool(record.proxied) == wanted["proxied"]
        and (record.comment or "") == MANAGED_COMMENT
    )


def _to_record(record: Any) -> DnsRecord:
    return DnsRecord(
        id=record.id,
        name=record.name,
        type=record.type,
        content=record.content or "",
        ttl=int(record.ttl),
    )


def _messages(exc: cloudflare.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    errors = body.get("errors") or []
    text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
    return text or exc.message
