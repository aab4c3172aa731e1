"""The Cloudflare DNS provider (cloudflare v5 SDK): A records pointing domains at the Reserved IP.

* token: ``CLOUDFLARE_API_TOKEN`` (else the credentials file, see ``credentials.py``); it needs
  ``Zone:Read`` and ``DNS:Edit`` on the zones Dynia binds domains in. Only the token is ever
  sent: the SDK would prefer a Global API Key found in ``CLOUDFLARE_API_KEY`` /
  ``CLOUDFLARE_EMAIL``, so the client is built to ignore those.
* API base URL: ``CLOUDFLARE_BASE_URL`` (the SDK's own variable) or the ``base_url`` argument;
  https only, or plain http to a loopback address (a test API).
* The zone of a domain is the longest suffix of it that is a zone on the account
  (``app.eu.example.com`` -> ``eu.example.com`` if that is a zone, else ``example.com``).
* Records Dynia writes carry the comment ``managed by dynia``; ``delete_a_record`` removes only
  those, so a hand-made record of the same name is never deleted.
* Retries: Dynia's own loop (the SDK's retries are off), bounded by ``max_retries``: a 429 waits
  as ``Retry-After`` says (up to ``MAX_RETRY_AFTER``; the SDK ignores anything above 60 s), 5xx
  and connection errors back off, and so does an answer the SDK cannot read (a proxy's HTML page,
  JSON cut short); every wait is reported through ``progress``. A create (DNS
  record, Origin CA certificate) is never re-sent blindly: the record (by name, type, content)
  or certificate (by its CSR and hostnames) is looked up first, since a 5xx can come after
  Cloudflare made it. Deleting a record that is already gone, or whose zone is gone, counts as
  done. Failures become ``ProviderError`` naming the operation and what to do.

``CloudflareOriginCa`` issues and revokes Origin CA certificates (the cluster certificate of a
cluster with ``certificate_issuer = "cloudflare-origin"``) with the same token, which then also
needs ``SSL and Certificates:Edit``. Only Cloudflare's edge trusts those certificates, so they
go with proxied records.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import cloudflare
from cloudflare import Cloudflare

from dynia.endpoints import LOOPBACK, check_endpoint
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
ISSUE_REFUSED_HINT = "every hostname must be in a zone of the account that the token can reach"
MAX_RETRY_AFTER = 300.0  # longest Retry-After Dynia waits out; beyond it, the operator decides
BASE_DELAY = 0.5  # first backoff after a 5xx or a connection error, doubled each time
MAX_DELAY = 8.0
UNREADABLE_HINT = (
    "something other than the Cloudflare API may have answered (a proxy, a captive portal), or "
    f"Cloudflare has an incident: check {BASE_URL_ENV}, the network path and "
    "https://www.cloudflarestatus.com, then re-run the same command"
)
# Failures worth another try: the API (or the way to it) may answer properly a moment later.
_TRANSIENT = (
    cloudflare.RateLimitError,
    cloudflare.InternalServerError,
    cloudflare.APIConnectionError,
    cloudflare.APIResponseValidationError,
)
# The SDK module that turns an HTTP answer into objects (see _unreadable).
_SDK_RESPONSE_MODULE = "cloudflare._response"

Progress = Callable[[str], None]
log = logging.getLogger(__name__)


def _log_progress(message: str) -> None:
    # Without a progress sink from the caller, a warning still reaches stderr (logging's
    # last-resort handler), so a long wait is never silent.
    log.warning("%s", message)


def _checked_base_url(url: str | None) -> str | None:
    """The API base URL: https, or plain http to this machine only (a test API)."""
    return None if url is None else check_endpoint(BASE_URL_ENV, url, LOOPBACK)


class _TokenOnlyClient(Cloudflare):
    """The SDK client, authenticating with the API token and nothing else.

    For every credential it is not given the SDK reads the environment (``CLOUDFLARE_API_KEY``,
    ``CLOUDFLARE_EMAIL``, ``CLOUDFLARE_API_USER_SERVICE_KEY``; ``None`` means "not given") and
    prefers those to the token: an account-wide Global API Key would be sent instead of
    Dynia's scoped token. Clearing them after construction (copies construct again) stops that.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_key = None
        self.api_email = None
        self.user_service_key = None


class _Api:
    """One SDK client and the retry loop every call goes through."""

    def __init__(
        self,
        token: Secret | str | None,
        scopes: str,
        base_url: str | None,
        max_retries: int,
        timeout: float,
        sleep: Callable[[float], None],
        progress: Progress | None,
    ) -> None:
        secret = Secret(token) if isinstance(token, str) else token
        secret = secret or lookup_token(TOKEN_ENV, scopes_hint=scopes)
        self.base_url = _checked_base_url(base_url or os.environ.get(BASE_URL_ENV) or None)
        # SDK retries off: it re-sends creates blindly and caps Retry-After at 60 s.
        self.client = _TokenOnlyClient(
            api_token=secret.reveal(), base_url=self.base_url, max_retries=0, timeout=timeout
        )
        self.scopes = scopes
        self.attempts = max_retries + 1
        self._sleep = sleep
        self.progress = progress or _log_progress

    def call(
        self,
        what: str,
        refused_hint: str,
        operation: Callable[..., Any],
        *args: Any,
        recover: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run one SDK call with bounded retries; translate failures to ProviderError.

        ``recover`` makes a create safe to retry: it is asked before every re-send whether
        the earlier try took effect after all; a result other than None is returned instead.
        """
        for attempt in range(1, self.attempts + 1):
            if attempt > 1 and recover is not None:
                found = recover()
                if found is not None:
                    self.progress(f"Cloudflare accepted the earlier try of {what} after all")
                    return found
            try:
                return operation(*args, **kwargs)
            except _TRANSIENT as exc:
                delay, reason = self._retry(what, refused_hint, exc, attempt)
            except cloudflare.APIError as exc:
                raise _translate(what, self.scopes, refused_hint, exc) from None
            except (ValueError, AttributeError, TypeError) as exc:
                unreadable = _unreadable(exc)
                if unreadable is None:
                    raise  # not an answer the SDK failed to read: a fault of this code
                delay, reason = self._retry(what, refused_hint, unreadable, attempt)
            self.progress(
                f"Cloudflare API: {reason} while {what}; waiting {delay:.3g}s before try "
                f"{attempt + 1} of {self.attempts}"
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # the last attempt always returns or raises

    def _retry(
        self, what: str, refused_hint: str, exc: Exception, attempt: int
    ) -> tuple[float, str]:
        """(delay, reason) before the next try; raises when the failure is final."""
        backoff = min(BASE_DELAY * 2 ** (attempt - 1), MAX_DELAY)
        if attempt >= self.attempts:
            raise _translate(what, self.scopes, refused_hint, exc) from None
        if isinstance(exc, cloudflare.RateLimitError):
            wait = _retry_after(exc)
            if wait is None:
                return backoff, "rate limit reached (HTTP 429)"
            if wait > MAX_RETRY_AFTER:
                until = time.strftime("%H:%M:%S", time.localtime(time.time() + wait))
                raise ProviderError(
                    f"Cloudflare rate limit reached while {what}; it asks to wait {wait:.0f}s",
                    hint=f"wait until {until} and re-run the same command",
                ) from None
            return wait, "rate limit reached (HTTP 429, Retry-After)"
        if isinstance(exc, (UnreadableAnswer, cloudflare.APIResponseValidationError)):
            return backoff, "an answer that is not valid JSON"
        if isinstance(exc, cloudflare.APIStatusError):
            return backoff, f"HTTP {exc.status_code}"
        return backoff, f"no answer ({type(exc).__name__})"


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
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress | None = None,
    ) -> None:
        self._api = _Api(token, TOKEN_SCOPES, base_url, max_retries, timeout, sleep, progress)
        self.base_url, self._client = self._api.base_url, self._api.client
        self.proxied = proxied

    def __repr__(self) -> str:
        return f"CloudflareDnsProvider(base_url={self.base_url!r}, proxied={self.proxied})"

    def _call(self, what: str, operation: Any, *args: Any, **kwargs: Any) -> Any:
        return self._api.call(what, DNS_REFUSED_HINT, operation, *args, **kwargs)

    # -- zones ---------------------------------------------------------------------------------

    def find_zone(self, domain: str) -> Zone:
        return _find_zone(self._api, domain)

    # -- records -------------------------------------------------------------------------------

    def _a_records(self, zone: Zone, domain: str, *, zone_may_be_gone: bool = False) -> list[Any]:
        """The A records named ``domain``; with ``zone_may_be_gone``, none when the zone is."""

        def fetch() -> list[Any]:
            try:
                listing = self._client.dns.records.list(
                    zone_id=zone.id, name={"exact": domain}, type="A"
                )
                return list(listing)  # every page: a retry starts the listing again
            except cloudflare.NotFoundError:
                if zone_may_be_gone:
                    return []  # the zone was deleted after it was looked up
                raise

        return self._call(f"listing A records of {domain}", fetch)

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
                f"creating A record {domain}",
                self._client.dns.records.create,
                recover=lambda: self._made_record(zone, domain, address),
                **wanted,
            )
        elif _matches(keep, wanted):
            record = keep
        else:
            record = self._call(
                f"updating A record {domain}", self._client.dns.records.update, keep.id, **wanted
            )
        for extra in existing:
            if extra.id != record.id:  # one name, one address: a second would split traffic
                self._delete_record(zone, extra.id, f"deleting extra A record {domain}")
        return _to_record(record)

    def _made_record(self, zone: Zone, domain: str, address: str) -> Any:
        """The A record ``domain`` -> ``address`` if an earlier create made it, else None."""
        return next((r for r in self._a_records(zone, domain) if r.content == address), None)

    def _delete_record(self, zone: Zone, record_id: str, what: str) -> None:
        """Delete one record; one that is already gone (404) counts as deleted."""

        def delete_if_present() -> None:
            try:
                self._client.dns.records.delete(record_id, zone_id=zone.id)
            except cloudflare.NotFoundError:
                return  # gone already, e.g. an earlier try whose answer was lost

        self._call(what, delete_if_present)

    def delete_a_record(self, domain: str) -> None:
        """Delete the A records Dynia made for ``domain``.

        A zone the token cannot see is an error, not "nothing to delete": the token may have
        lost access to a zone whose record still points at the cluster's address, and that
        address is released next (whoever gets it would receive the domain's traffic).
        ``cluster delete --keep-dns`` is the way past it. A zone deleted between its lookup and
        the record listing took its records with it.
        """
        domain = domain.strip().lower().rstrip(".")
        zone = _find_zone(self._api, domain)
        for record in self._a_records(zone, domain, zone_may_be_gone=True):
            if (record.comment or "") != MANAGED_COMMENT:
                continue  # not made by dynia: leave it alone
            self._delete_record(zone, record.id, f"deleting A record {domain}")

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
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress | None = None,
    ) -> None:
        self._api = _Api(token, ORIGIN_CA_SCOPES, base_url, max_retries, timeout, sleep, progress)
        self.base_url, self._client = self._api.base_url, self._api.client

    def __repr__(self) -> str:
        return f"CloudflareOriginCa(base_url={self.base_url!r})"

    def issue(self, csr_pem: str, hostnames: list[str], validity_days: int) -> OriginCertificate:
        """Have the Origin CA sign ``csr_pem`` (an ECDSA key) for ``hostnames``."""
        what = f"issuing an Origin CA certificate for {', '.join(hostnames)}"
        made = self._api.call(
            what,
            ISSUE_REFUSED_HINT,
            self._client.origin_ca_certificates.create,
            csr=csr_pem,
            hostnames=hostnames,
            request_type="origin-ecc",
            requested_validity=validity_days,
            recover=lambda: self._issued_for(csr_pem, hostnames),
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

    def _issued_for(self, csr_pem: str, hostnames: list[str]) -> Any:
        """The certificate an earlier try issued for this CSR (a fresh key each time, so the CSR
        identifies the request) and these hostnames, else None."""
        zone = _find_zone(self._api, hostnames[0].removeprefix("*."))
        listing = self._api.call(
            f"listing Origin CA certificates of {zone.name}",
            ISSUE_REFUSED_HINT,
            self._client.origin_ca_certificates.list,
            zone_id=zone.id,
        )
        wanted = {h.lower() for h in hostnames}
        for certificate in self._api.call("listing Origin CA certificates", "", list, listing):
            same_csr = (certificate.csr or "").strip() == csr_pem.strip()
            if same_csr and {h.lower() for h in certificate.hostnames or []} == wanted:
                return certificate
        return None

    def revoke(self, certificate_id: str) -> None:
        """Revoke a certificate; one the API no longer knows counts as revoked."""

        def delete_if_present() -> None:
            try:
                self._client.origin_ca_certificates.delete(certificate_id)
            except cloudflare.NotFoundError:
                return

        self._api.call(
            f"revoking Origin CA certificate {certificate_id}",
            "revoke it in the Cloudflare dashboard (SSL/TLS > Origin Server)",
            delete_if_present,
        )


def _find_zone(api: _Api, domain: str) -> Zone:
    """The zone holding ``domain``: its longest suffix that is a zone on the account."""
    zone = _zone_of(api, domain)
    if zone is None:
        raise ProviderError(
            f"no Cloudflare zone holds {domain}",
            hint=f"add the domain's zone to the Cloudflare account, or give {TOKEN_ENV} "
            "Zone:Read on it (a token scoped to other zones cannot see it)",
        )
    return zone


def _zone_of(api: _Api, domain: str) -> Zone | None:
    """The zone holding ``domain`` (its longest suffix that is a zone), None without one."""
    domain = domain.strip().lower().rstrip(".")
    labels = domain.split(".")
    for start in range(len(labels) - 1):
        candidate = ".".join(labels[start:])
        page = api.call(
            f"looking up zone {candidate}",
            DNS_REFUSED_HINT,
            api.client.zones.list,
            name=candidate,
        )
        for zone in page.result or []:
            if zone.name.lower() == candidate:
                return Zone(id=zone.id, name=zone.name.lower())
    return None


class UnreadableAnswer(Exception):
    """An answer the SDK could not read (not JSON, JSON cut short), as ``_Api.call`` sees it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _unreadable(exc: Exception) -> UnreadableAnswer | None:
    """``exc`` as an unreadable answer if the SDK raised it while reading one, else None.

    Given a body that is not JSON, the SDK hands the text on and fails on it itself
    (AttributeError); JSON cut short fails to decode (ValueError). Both happen inside the SDK's
    response module; the same exceptions anywhere else are faults of the calling code and
    must not be retried as if Cloudflare had answered badly.
    """
    if not _raised_in(exc.__traceback__, _SDK_RESPONSE_MODULE):
        return None
    if isinstance(exc, json.JSONDecodeError):
        return UnreadableAnswer(f"invalid JSON: {exc.msg} at character {exc.pos}")
    return UnreadableAnswer("not JSON")


def _raised_in(trace: TracebackType | None, module: str) -> bool:
    while trace is not None:
        if trace.tb_frame.f_globals.get("__name__") == module:
            return True
        trace = trace.tb_next
    return False


def _retry_after(exc: cloudflare.APIStatusError) -> float | None:
    """Seconds a 429 asks to wait (``Retry-After`` in seconds), or None without one."""
    value = (exc.response.headers.get("retry-after") or "").strip()
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None


def _translate(what: str, scopes: str, refused_hint: str, exc: Exception) -> ProviderError:
    """An SDK failure as an actionable ProviderError: the operation, then what to do."""
    if isinstance(exc, (UnreadableAnswer, cloudflare.APIResponseValidationError)):
        detail = exc.detail if isinstance(exc, UnreadableAnswer) else exc.message
        return ProviderError(
            f"the Cloudflare API kept sending answers Dynia cannot read while {what} ({detail})",
            hint=UNREADABLE_HINT,
        )
    if isinstance(exc, cloudflare.AuthenticationError):
        return ProviderError(
            f"Cloudflare rejected the API token while {what} (401)",
            hint=f"{TOKEN_ENV} is missing, mistyped or revoked; set it to {scopes}",
        )
    if isinstance(exc, cloudflare.PermissionDeniedError):
        return ProviderError(
            f"the Cloudflare token may not do this: {what} was refused (403: {_messages(exc)})",
            hint=f"give {TOKEN_ENV} the missing permission; it needs {scopes}",
        )
    if isinstance(exc, cloudflare.RateLimitError):
        return ProviderError(
            f"Cloudflare rate limit still exceeded while {what}, retries exhausted",
            hint="wait a minute and re-run the same command",
        )
    if isinstance(exc, cloudflare.InternalServerError):
        return ProviderError(
            f"the Cloudflare API kept failing while {what} "
            f"(HTTP {exc.status_code}: {_messages(exc)})",
            hint="check https://www.cloudflarestatus.com and re-run the same command",
        )
    if isinstance(exc, cloudflare.APIStatusError):
        return ProviderError(
            f"Cloudflare refused {what} (HTTP {exc.status_code}: {_messages(exc)})",
            hint=refused_hint or "re-run the same command; if it repeats, check the request",
        )
    if isinstance(exc, cloudflare.APIConnectionError):
        return ProviderError(
            f"cannot reach the Cloudflare API while {what} ({type(exc).__name__})",
            hint=f"check the network and {BASE_URL_ENV}; then re-run",
        )
    return ProviderError(
        f"the Cloudflare SDK failed while {what} ({type(exc).__name__}: {exc})",
        hint="re-run the same command; if it repeats, report it with this message",
    )


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
