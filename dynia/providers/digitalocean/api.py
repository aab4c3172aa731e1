"""The DigitalOcean API client: pydo with one bounded retry loop and errors that say what to do.

Every call goes through one bounded retry loop (pydo's own retries are off): a 429 waits as
``Retry-After`` says (else until ``ratelimit-reset``), 5xx, timeouts and connection failures back
off exponentially. Connect and read are bounded per request, every operation (its tries and
waits together) by a deadline, and each wait is reported through ``progress`` so a slow API is
visible. A create is never sent twice blindly: before any re-send the caller's ``find`` looks the
resource up by the name or tags it carries, since a 5xx or a read timeout does not mean the API
dropped it. An answer that is not a JSON object (a proxy's HTML page, a cut-off body, ``null``)
is treated like a 5xx: tried again when that is safe (a read, or a call that can look up what an
earlier try made), else reported. Errors become ``ProviderError`` (:class:`ApiError` with the
HTTP status) naming the operation and what to do. The token is a
:class:`~dynia.providers.credentials.Secret` and never appears in messages or reprs.

Environment: ``DIGITALOCEAN_TOKEN`` (else the credentials file, see ``credentials.py``),
``DIGITALOCEAN_API_URL`` (default ``https://api.digitalocean.com``; plain ``http`` only to a
loopback or private address, e.g. a local test API).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pydo
from azure.core.exceptions import (
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import HeadersPolicy

from dynia.endpoints import check_url_shape
from dynia.errors import ProviderError, UsageError
from dynia.providers.credentials import Secret, lookup_token

TOKEN_ENV = "DIGITALOCEAN_TOKEN"
API_URL_ENV = "DIGITALOCEAN_API_URL"
DEFAULT_API_URL = "https://api.digitalocean.com"
TOKEN_SCOPES = (
    "a DigitalOcean API token (https://cloud.digitalocean.com/account/api/tokens) with "
    "custom scopes droplet:create/read/delete, ssh_key:create/read/delete, "
    "vpc:create/read/delete, reserved_ip:create/read/update/delete, tag:create/read, "
    "actions:read, account:read, regions:read, sizes:read, image:read"
)
QUOTA_HINT = (
    "delete droplets you no longer use or ask DigitalOcean to raise the droplet limit "
    "(https://cloud.digitalocean.com/account/team), or create the cluster with fewer --nodes; "
    "then re-run the same command"
)
STATUS_HINT = "check https://status.digitalocean.com and re-run the same command; it resumes"
MALFORMED_HINT = (
    "re-run the same command, it resumes where it stopped; if it repeats, check "
    f"{API_URL_ENV}, any proxy between here and the API, and https://status.digitalocean.com"
)
# A refused request whose operation gave no hint of its own: DigitalOcean's message names what.
REFUSAL_HINT = "DigitalOcean's message says what it refused; correct that and re-run the command"

Progress = Callable[[str], None]
log = logging.getLogger(__name__)


def _log_progress(message: str) -> None:
    # Without a progress sink from the caller, a warning still reaches stderr (logging's
    # last-resort handler), so a command waiting on the API never sits there silently.
    log.warning("%s", message)


class ApiError(ProviderError):
    """A ProviderError that also carries the HTTP status and DigitalOcean's message."""

    def __init__(self, message: str, hint: str, *, status: int, api_message: str) -> None:
        super().__init__(message, hint)
        self.status = status
        self.api_message = api_message


class MalformedAnswer(Exception):
    """An answer pydo would read that is not a JSON object (raised inside the HTTP pipeline)."""

    def __init__(self, method: str, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}, {detail}")
        self.method = method
        self.status = status
        self.detail = detail


def _check_answer(pipeline_response: PipelineResponse) -> None:
    """pydo's ``raw_response_hook``: refuse an answer it would read that is not a JSON object.

    Runs before pydo (and azure's content decoding) read the body, so a proxy's HTML page or a
    cut-off body becomes one error that says which request got it, not a JSONDecodeError or an
    AttributeError deep in the caller. 5xx and 429 answers keep their own retry path. A 4xx
    without JSON is still a refusal (a 401/403 names the token): it is raised as the
    HttpResponseError pydo raises for one, whatever its body; only a 404 is not, since "not
    found" from anything but DigitalOcean must never read as "the resource is gone".
    """
    response = pipeline_response.http_response
    status = response.status_code
    body = response.body()
    method = response.request.method
    if not body and method == "GET" and status == 200:  # every read answers an object
        raise MalformedAnswer(method, status, "an empty body")
    if not body or status >= 500 or status == 429:
        return
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        value = None
    if isinstance(value, dict):
        return
    if 400 <= status < 500 and status != 404:
        raise HttpResponseError(response=response)
    kind = response.headers.get("content-type") or "no content type"
    snippet = body[:60].decode("utf-8", "replace").replace("\n", " ")
    raise MalformedAnswer(method, status, f"{kind}: {snippet!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retry loop around every API call."""

    attempts: int = 6
    base_delay: float = 1.0  # first backoff for 5xx / connection errors, doubled each time
    max_delay: float = 60.0  # longest single wait, also for Retry-After or a rate-limit reset
    connect_timeout: float = 10.0  # to open a connection to the API
    # Between two reads of an answer. azure-core's default is 300 s: with 6 tries a hung API
    # would stall a command for half an hour.
    read_timeout: float = 30.0
    deadline: float = 300.0  # one operation: all its tries and waits together


class DigitalOceanApi:
    """One pydo client and the retry loop around its calls. ``client`` is the pydo client."""

    def __init__(
        self,
        token: Secret | str | None = None,
        *,
        api_url: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress | None = None,
    ) -> None:
        if isinstance(token, str):
            token = Secret(token)
        self._token = token or lookup_token(TOKEN_ENV, scopes_hint=TOKEN_SCOPES)
        self.api_url = check_endpoint(api_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self.progress = progress or _log_progress
        # A headers policy instead of azure's bearer policy: the latter refuses http endpoints,
        # and the endpoint check above already keeps plain http local.
        auth = HeadersPolicy({"Authorization": f"Bearer {self._token.reveal()}"})
        self.client = pydo.Client(
            token=self._token.reveal(),
            endpoint=self.api_url,
            authentication_policy=auth,
            retry_total=0,
            connection_timeout=self.retry.connect_timeout,
            read_timeout=self.retry.read_timeout,
            raw_response_hook=_check_answer,
        )

    def __repr__(self) -> str:
        return f"DigitalOceanApi(api_url={self.api_url!r})"

    def call(
        self,
        what: str,
        operation: Callable[..., Any],
        *args: Any,
        recover: Callable[[], Any] | None = None,
        refused: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run one API operation with bounded retries; translate failures to ProviderError.

        ``recover`` makes a non-idempotent call (a create) safe to retry: before every re-send
        it looks for what the earlier try may have made (a 5xx or a read timeout can come after
        the API accepted the request); a result other than None is returned instead.
        ``refused``: what to do when DigitalOcean refuses this operation (a 400/422).
        """
        deadline = time.monotonic() + self.retry.deadline
        for attempt in range(1, self.retry.attempts + 1):
            if attempt > 1 and recover is not None:
                found = recover()
                if found is not None:
                    self.progress(f"DigitalOcean accepted the earlier try of {what} after all")
                    return found
            try:
                return operation(*args, **kwargs)
            except MalformedAnswer as exc:
                # A 404 page (any other 4xx is an HttpResponseError) means nothing was done.
                safe = recover is not None or exc.method != "POST" or 400 <= exc.status < 500
                delay, reason = self._malformed_retry(what, exc, attempt, deadline, safe)
            except HttpResponseError as exc:
                delay, reason = self._http_retry(what, exc, attempt, deadline, refused)
            except (ServiceRequestError, ServiceResponseError) as exc:
                delay, reason = self._network_retry(what, exc, attempt, deadline)
            self.progress(
                f"DigitalOcean API: {reason} while {what}; waiting {delay:.3g}s before try "
                f"{attempt + 1} of {self.retry.attempts}"
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # the last attempt always returns or raises

    def _gives_up(self, attempt: int, deadline: float, delay: float | None) -> bool:
        if delay is None or attempt >= self.retry.attempts:
            return True
        return time.monotonic() + delay > deadline

    def _http_retry(
        self,
        what: str,
        exc: HttpResponseError,
        attempt: int,
        deadline: float,
        refused: str | None = None,
    ) -> tuple[float, str]:
        """(delay, reason) before the next try; raises when the failure is final."""
        status = exc.status_code or 0
        delay = self._retry_delay(exc, attempt) if status == 429 or status >= 500 else None
        if delay is None or self._gives_up(attempt, deadline, delay):
            raise self._translate(what, exc, attempt, refused) from None
        if status == 429:
            return delay, "rate limit reached (HTTP 429)"
        return delay, f"HTTP {status} ({_api_message(exc)})"

    def _network_retry(
        self, what: str, exc: ServiceRequestError, attempt: int, deadline: float
    ) -> tuple[float, str]:
        if isinstance(exc, ServiceResponseTimeoutError):
            reason = f"no answer within {self.retry.read_timeout:.0f}s"
        elif isinstance(exc, ServiceRequestTimeoutError):
            reason = f"no connection within {self.retry.connect_timeout:.0f}s"
        else:
            reason = f"connection failed ({type(exc).__name__})"
        delay = self._backoff(attempt)
        if self._gives_up(attempt, deadline, delay):
            raise ProviderError(
                f"the DigitalOcean API at {self.api_url} failed while {what}: {reason}, "
                f"{attempt} tries",
                hint=f"check the network, {API_URL_ENV} and https://status.digitalocean.com; "
                "then re-run the same command, it resumes where it stopped",
            ) from None
        return delay, reason

    def _malformed_retry(
        self, what: str, exc: MalformedAnswer, attempt: int, deadline: float, safe: bool
    ) -> tuple[float, str]:
        """Like a 5xx; but a POST the caller cannot look up afterwards is not sent again: the
        answer came, so DigitalOcean probably did what it asked."""
        delay = self._backoff(attempt)
        # A proxy's error page may echo the request, its Authorization header included.
        shown = str(exc).replace(self._token.reveal(), "<token>")
        if not safe:
            raise ProviderError(
                f"DigitalOcean's answer to {what} was not readable ({shown}); the request may "
                "have taken effect",
                hint=MALFORMED_HINT,
            ) from None
        if self._gives_up(attempt, deadline, delay):
            raise ProviderError(
                f"DigitalOcean kept answering {what} with something other than its JSON "
                f"({shown}) after {attempt} tries",
                hint=MALFORMED_HINT,
            ) from None
        return delay, f"an unreadable answer ({shown})"

    def _backoff(self, attempt: int) -> float:
        return min(self.retry.base_delay * 2 ** (attempt - 1), self.retry.max_delay)

    def _retry_delay(self, exc: HttpResponseError, attempt: int) -> float | None:
        """Seconds to wait before the next try, or None when waiting is pointless."""
        if exc.status_code != 429:
            return self._backoff(attempt)
        wait = _rate_limit_wait(exc)
        if wait is None:
            return self._backoff(attempt)
        if wait > self.retry.max_delay:
            return None  # the window is longer than we are willing to block
        return max(wait, 0.2)

    def _translate(
        self, what: str, exc: HttpResponseError, attempts: int, refused: str | None = None
    ) -> ApiError:
        status = exc.status_code or 0
        message = _api_message(exc)
        text, hint = self._explain(what, status, message, exc, attempts, refused)
        return ApiError(text, hint, status=status, api_message=message)

    def _explain(
        self,
        what: str,
        status: int,
        message: str,
        exc: HttpResponseError,
        attempts: int,
        refused: str | None = None,
    ) -> tuple[str, str]:
        if status == 401:
            return (
                f"DigitalOcean rejected the API token while {what} (401: {message})",
                f"{TOKEN_ENV} is missing, mistyped, expired or revoked; set it to {TOKEN_SCOPES}",
            )
        if "limit" in message.lower() and status in (403, 422):
            # QUOTA_HINT speaks of droplets; another limit gets the operation's own hint.
            hint = QUOTA_HINT if "droplet" in message.lower() else refused or REFUSAL_HINT
            return (f"DigitalOcean quota reached while {what}: {message}", hint)
        if status == 403:
            return (
                f"the DigitalOcean token may not do this: {what} was refused (403: {message})",
                f"give {TOKEN_ENV} the missing scope; it needs {TOKEN_SCOPES}",
            )
        if status == 429:
            wait = _rate_limit_wait(exc)
            when = time.strftime("%H:%M:%S", time.localtime(time.time() + (wait or 60)))
            return (
                f"DigitalOcean rate limit still exceeded while {what} after {attempts} attempts",
                f"wait until {when} and re-run the same command; it resumes where it stopped",
            )
        if status >= 500:
            return (
                f"the DigitalOcean API kept failing while {what} "
                f"(HTTP {status} after {attempts} attempts: {message})",
                STATUS_HINT,
            )
        hint = refused if refused and status in (400, 422) else _refusal_hint(status)
        return (f"DigitalOcean refused {what} (HTTP {status}: {message})", hint)

    def list_all(
        self, what: str, operation: Callable[..., Any], key: str, **kw: Any
    ) -> list[dict[str, Any]]:
        """Every item of a paginated list, following ``links.pages.next``.

        A page without its list, or with items that are not objects, is an error: read as
        "nothing there" it would make a re-run create a second of what exists.
        """
        items: list[dict[str, Any]] = []
        page = 1
        for _ in range(10_000):
            body = self.call(what, operation, page=page, per_page=200, **kw)
            found = body.get(key) if isinstance(body, dict) else None
            if not isinstance(found, list) or not all(isinstance(i, dict) for i in found):
                raise malformed(what, f"no list of {key!r}")
            items.extend(found)
            page = _next_page(body, page, what)
            if page is None:
                return items
        raise ProviderError(f"DigitalOcean kept paginating while {what}", hint="re-run")

    def create(
        self,
        what: str,
        operation: Callable[[dict[str, Any]], Any],
        body: dict[str, Any],
        key: str,
        find: Callable[[], dict[str, Any] | None],
        refused: str | None = None,
    ) -> dict[str, Any]:
        """POST a create and return ``body[key]`` of the answer; ``find`` looks the resource up
        (by the name or tags it carries) before any re-send, so a retry never makes a second.
        ``refused``: what to do when DigitalOcean refuses the create (see :meth:`call`)."""
        return self.call(
            what, lambda: field(operation(body), key, what), recover=find, refused=refused
        )


def check_endpoint(url: str) -> str:
    # The same URL is written into the nodes' notify-master script: it must be a plain URL.
    try:
        check_url_shape(API_URL_ENV, url)
    except UsageError as exc:
        raise ProviderError(exc.message, exc.hint) from exc
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderError(
            f"{API_URL_ENV}={url!r} is not an http(s) URL",
            hint=f"unset {API_URL_ENV} to use {DEFAULT_API_URL}",
        )
    if parts.scheme == "http":
        try:
            address = ipaddress.ip_address(socket.gethostbyname(parts.hostname))
        except (OSError, ValueError):
            address = None
        if address is None or not (address.is_loopback or address.is_private):
            raise ProviderError(
                f"{API_URL_ENV} points at {parts.hostname} over plain http: the token would "
                "cross the network unencrypted",
                hint=f"use https, or unset {API_URL_ENV}",
            )
    return url.rstrip("/")


def is_missing(body: Any) -> bool:
    """pydo returns the 404 body instead of raising for many operations."""
    return isinstance(body, dict) and body.get("id") == "not_found"


def field(body: Any, key: str, what: str) -> Any:
    """``body[key]``, or a ProviderError naming the operation when the answer lacks it."""
    if isinstance(body, dict) and isinstance(body.get(key), dict):
        return body[key]
    detail = body.get("message") if isinstance(body, dict) else None
    raise malformed(what, f"without its {key!r}: {detail or 'unexpected answer'}")


def require(item: dict[str, Any], what: str, **types: type | tuple[type, ...]) -> dict[str, Any]:
    """``item`` when each named field has one of its types, else a ProviderError naming it.

    The provider reads these fields to decide what exists; a malformed item must stop the
    command rather than count as "not there".
    """
    for name, kinds in types.items():
        value = item.get(name)
        # JSON true/false are Python ints too: never a valid id or count.
        if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is int):
            label = item.get("id", item.get("ip", item.get("name", "?")))
            raise malformed(what, f"an item ({label!r}) without a valid {name!r}: {value!r}")
    return item


def malformed(what: str, detail: str) -> ProviderError:
    return ProviderError(
        f"DigitalOcean answered {what} with a malformed answer ({detail})", hint=MALFORMED_HINT
    )


def _next_page(body: dict[str, Any], page: int, what: str) -> int | None:
    """The number of the next page ``links.pages.next`` names; None on the last page."""
    links = body.get("links") or {}
    pages = (links.get("pages") or {}) if isinstance(links, dict) else None
    if not isinstance(pages, dict):
        raise malformed(what, "unreadable 'links.pages'")
    next_url = pages.get("next")
    if not next_url:
        return None
    number = parse_qs(urlsplit(str(next_url)).query).get("page", [str(page + 1)])[0]
    if not number.isdigit():
        raise malformed(what, f"a next page {number!r}")
    return int(number)


def _rate_limit_wait(exc: HttpResponseError) -> float | None:
    """Seconds a 429 asks us to wait. ``Retry-After`` wins: DigitalOcean's burst limit also sends
    ``ratelimit-reset``, which is then up to an hour away (the expiry of the oldest request)."""
    headers = exc.response.headers if exc.response is not None else {}
    retry_after = (headers.get("retry-after") or "").strip()
    if retry_after.isdigit():
        return float(retry_after)
    reset = (headers.get("ratelimit-reset") or "").strip()
    if reset.isdigit():
        return float(reset) - time.time()
    return None


def _refusal_hint(status: int) -> str:
    if status == 404:
        return "the resource is gone from the account; re-run the same command to recreate it"
    if status == 409:
        return "another change to the same resource is still running; re-run in a minute"
    return REFUSAL_HINT


def _api_message(exc: HttpResponseError) -> str:
    try:
        body = exc.response.json() if exc.response is not None else None
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or "no message")
