"""The DigitalOcean node provider (pydo): droplets, the cluster VPC, the SSH key, a Reserved IP.

What it makes, and how it finds it again (so a re-run never duplicates anything):

* droplet ``<cluster>-<node>``, tags ``dynia``, ``dynia-cluster-<cluster>``,
  ``dynia-node-<node>`` and ``dynia-hostkey-<hex>`` (the raw ed25519 host public key, so the
  pinned host key can be recovered from the API after an interrupted run); found by listing the
  cluster tag.
* VPC ``dynia-<cluster>`` in the cluster's region; found by name.
* SSH key ``dynia-<cluster>``; found by fingerprint.
* no Cloud Firewall: its rules can let through only TCP, UDP and ICMP, and it filters the VPC
  interface too, so it would drop keepalived's VRRP adverts (IP protocol 112) and leave every
  node MASTER. The nodes' own firewall (role ``dynia_firewall``) does that job.
* a Reserved IP: reserved IPs carry no tags, so one is recognised as the cluster's while it is
  assigned to one of the cluster's droplets (a new one is created assigned to a cluster droplet
  when the cluster has any, for exactly that reason).

Host keys are pinned before first contact: the provider generates a bootstrap ed25519 host key
pair locally and hands it to cloud-init in the user data (``ssh_keys``), so the public half is
known before the droplet boots. The user data stays readable through the metadata service by
anything on the droplet, containers included, so that key is for the first connection only:
``operations/host_keys.py`` has the node generate a fresh key over it, pins that one and removes
the bootstrap key (the ``dynia-hostkey-`` tag keeps naming the bootstrap key).

Every call goes through one bounded retry loop (pydo's own retries are off): a 429 waits as
``Retry-After`` says (else until ``ratelimit-reset``), 5xx, timeouts and connection failures back
off exponentially. Connect and read are bounded per request, every operation (its tries and
waits together) by a deadline, and each wait is reported through ``progress`` so a slow API is
visible. A create is never sent twice blindly: before any re-send the provider looks the resource
up by the name or tags it carries, since a 5xx or a read timeout does not mean the API dropped it.
Errors become ``ProviderError`` naming the operation and what to do. The token is a
:class:`~dynia.providers.credentials.Secret` and never appears in messages or reprs.

Environment: ``DIGITALOCEAN_TOKEN`` (else the credentials file, see ``credentials.py``),
``DIGITALOCEAN_API_URL`` (default ``https://api.digitalocean.com``; plain ``http`` only to a
loopback or private address, e.g. a local test API).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pydo
import yaml
from azure.core.exceptions import (
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.policies import HeadersPolicy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dynia.endpoints import check_url_shape
from dynia.errors import ProviderError, UsageError
from dynia.providers.base import NetworkInfo, NodeSpec, ProvisionedNode, ReservedIpInfo
from dynia.providers.credentials import Secret, lookup_token

TOKEN_ENV = "DIGITALOCEAN_TOKEN"
API_URL_ENV = "DIGITALOCEAN_API_URL"
DEFAULT_API_URL = "https://api.digitalocean.com"
DEFAULT_IMAGE = "ubuntu-24-04-x64"
PRIVATE_INTERFACE = "eth1"  # DigitalOcean attaches the VPC network as the second interface
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


@dataclass(frozen=True)
class Timeouts:
    """How long to wait for DigitalOcean's asynchronous work (seconds)."""

    active: float = 300.0  # droplet from "new" to "active"
    ssh: float = 300.0  # sshd answering on the public address
    action: float = 120.0  # a reserved-IP action to complete
    vpc_release: float = 120.0  # a VPC to lose its members after the droplets are gone
    poll_interval: float = 3.0


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


@dataclass
class _HostKey:
    private_openssh: str
    public_line: str  # "ssh-ed25519 AAAA..."

    @property
    def tag(self) -> str:
        raw = base64.b64decode(self.public_line.split()[1])[-32:]
        return f"dynia-hostkey-{raw.hex()}"


def _generate_host_key() -> _HostKey:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return _HostKey(private, public.decode())


def _host_key_from_tag(tag: str) -> str:
    """Rebuild the "ssh-ed25519 <base64>" line from a ``dynia-hostkey-<hex>`` tag."""
    raw = bytes.fromhex(tag.removeprefix("dynia-hostkey-"))
    kind = b"ssh-ed25519"
    blob = len(kind).to_bytes(4, "big") + kind + len(raw).to_bytes(4, "big") + raw
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}"


def ssh_fingerprint(public_key: str) -> str:
    """DigitalOcean's fingerprint of an OpenSSH public key: MD5 of the blob, colon hex."""
    try:
        blob = base64.b64decode(public_key.split()[1], validate=True)
    except (IndexError, ValueError):
        raise ProviderError(
            "the cluster SSH public key is not an OpenSSH public key line",
            hint="regenerate the cluster key pair (ssh-keygen -t ed25519)",
        ) from None
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _is_missing(body: Any) -> bool:
    """pydo returns the 404 body instead of raising for many operations."""
    return isinstance(body, dict) and body.get("id") == "not_found"


def _check_endpoint(url: str) -> str:
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


class DigitalOceanNodeProvider:
    """``NodeProvider`` on DigitalOcean. Construct once per command; it holds one API client."""

    name = "digitalocean"
    reserved_ip_mode: Literal["vrrp", "api"] = "api"

    def __init__(
        self,
        token: Secret | str | None = None,
        *,
        api_url: str | None = None,
        region: str | None = None,
        image: str = DEFAULT_IMAGE,
        ssh_port: int = 22,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress | None = None,
    ) -> None:
        if isinstance(token, str):
            token = Secret(token)
        self._token = token or lookup_token(TOKEN_ENV, scopes_hint=TOKEN_SCOPES)
        self.api_url = _check_endpoint(api_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL)
        self.region = region
        self.image = image
        self.ssh_port = ssh_port
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._progress = progress or _log_progress
        # A headers policy instead of azure's bearer policy: the latter refuses http endpoints,
        # and the endpoint check above already keeps plain http local.
        auth = HeadersPolicy({"Authorization": f"Bearer {self._token.reveal()}"})
        self._client = pydo.Client(
            token=self._token.reveal(),
            endpoint=self.api_url,
            authentication_policy=auth,
            retry_total=0,
            connection_timeout=self.retry.connect_timeout,
            read_timeout=self.retry.read_timeout,
        )

    def __repr__(self) -> str:
        return f"DigitalOceanNodeProvider(api_url={self.api_url!r}, region={self.region!r})"

    # -- the retry loop ------------------------------------------------------------------------

    def _call(
        self,
        what: str,
        operation: Callable[..., Any],
        *args: Any,
        recover: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run one API operation with bounded retries; translate failures to ProviderError.

        ``recover`` makes a non-idempotent call (a create) safe to retry: before every re-send
        it looks for what the earlier try may have made (a 5xx or a read timeout can come after
        the API accepted the request); a result other than None is returned instead.
        """
        deadline = time.monotonic() + self.retry.deadline
        for attempt in range(1, self.retry.attempts + 1):
            if attempt > 1 and recover is not None:
                found = recover()
                if found is not None:
                    self._progress(f"DigitalOcean accepted the earlier try of {what} after all")
                    return found
            try:
                return operation(*args, **kwargs)
            except HttpResponseError as exc:
                delay, reason = self._http_retry(what, exc, attempt, deadline)
            except (ServiceRequestError, ServiceResponseError) as exc:
                delay, reason = self._network_retry(what, exc, attempt, deadline)
            self._progress(
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
        self, what: str, exc: HttpResponseError, attempt: int, deadline: float
    ) -> tuple[float, str]:
        """(delay, reason) before the next try; raises when the failure is final."""
        status = exc.status_code or 0
        delay = self._retry_delay(exc, attempt) if status == 429 or status >= 500 else None
        if delay is None or self._gives_up(attempt, deadline, delay):
            raise self._translate(what, exc, attempt) from None
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

    def _translate(self, what: str, exc: HttpResponseError, attempts: int) -> ApiError:
        status = exc.status_code or 0
        message = _api_message(exc)
        text, hint = self._explain(what, status, message, exc, attempts)
        return ApiError(text, hint, status=status, api_message=message)

    def _explain(
        self, what: str, status: int, message: str, exc: HttpResponseError, attempts: int
    ) -> tuple[str, str]:
        if status == 401:
            return (
                f"DigitalOcean rejected the API token while {what} (401: {message})",
                f"{TOKEN_ENV} is missing, mistyped, expired or revoked; set it to {TOKEN_SCOPES}",
            )
        if "limit" in message.lower() and status in (403, 422):
            return (f"DigitalOcean quota reached while {what}: {message}", QUOTA_HINT)
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
        return (f"DigitalOcean refused {what} (HTTP {status}: {message})", _refusal_hint(status))

    def _list_all(self, what: str, operation: Callable[..., Any], key: str, **kw: Any) -> list:
        """Every item of a paginated list, following ``links.pages.next``."""
        items: list[Any] = []
        page = 1
        for _ in range(10_000):
            body = self._call(what, operation, page=page, per_page=200, **kw)
            items.extend(body.get(key) or [])
            next_url = ((body.get("links") or {}).get("pages") or {}).get("next")
            if not next_url:
                return items
            page = int(parse_qs(urlsplit(next_url).query).get("page", [page + 1])[0])
        raise ProviderError(f"DigitalOcean kept paginating while {what}", hint="re-run")

    def _create(
        self,
        what: str,
        operation: Callable[[dict[str, Any]], Any],
        body: dict[str, Any],
        key: str,
        find: Callable[[], dict[str, Any] | None],
    ) -> dict[str, Any]:
        """POST a create and return ``body[key]`` of the answer; ``find`` looks the resource up
        (by the name or tags it carries) before any re-send, so a retry never makes a second."""
        return self._call(what, lambda: _field(operation(body), key, what), recover=find)

    def _wait(self, what: str, timeout: float, check: Callable[[], Any]) -> Any:
        """Poll ``check`` until it returns something truthy; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"timed out after {timeout:.0f}s waiting for {what}",
                    hint="re-run the same command: it finds what was already created and waits "
                    "again; if it keeps timing out check the DigitalOcean control panel",
                )
            self._sleep(self.timeouts.poll_interval)

    # -- network -------------------------------------------------------------------------------

    def _vpcs(self) -> list[dict[str, Any]]:
        return self._list_all("listing VPCs", self._client.vpcs.list, "vpcs")

    def _find_vpc(self, cluster: str) -> dict[str, Any] | None:
        return next((v for v in self._vpcs() if v.get("name") == f"dynia-{cluster}"), None)

    def _ensure_vpc(self, cluster: str, region: str) -> dict[str, Any]:
        vpcs = self._vpcs()
        vpc = next((v for v in vpcs if v.get("name") == f"dynia-{cluster}"), None)
        if vpc is None:
            body = {
                "name": f"dynia-{cluster}",
                "region": region,
                "ip_range": _plan_ip_range(cluster, [v.get("ip_range", "") for v in vpcs]),
                "description": f"Private network of Dynia cluster {cluster}",
            }
            vpc = self._create(
                f"creating VPC dynia-{cluster}",
                self._client.vpcs.create,
                body,
                "vpc",
                lambda: self._find_vpc(cluster),
            )
        if vpc.get("region") != region:
            raise ProviderError(
                f"VPC dynia-{cluster} exists in region {vpc.get('region')}, not {region}",
                hint=f"create the cluster in {vpc.get('region')}, or delete that VPC first",
            )
        return vpc

    def ensure_network(self, cluster: str, region: str | None = None) -> NetworkInfo:
        """The cluster VPC: found, created when a region is known, or planned.

        Without a region (neither the argument nor the provider's) the VPC cannot be created
        yet; its address range is planned instead, and the first ``create_node`` creates the
        VPC with exactly that range in the node's region.
        """
        region = region or self.region
        if region:
            vpc = self._ensure_vpc(cluster, region)
            subnet = vpc["ip_range"]
        else:
            vpcs = self._vpcs()
            vpc = next((v for v in vpcs if v.get("name") == f"dynia-{cluster}"), None)
            taken = [v["ip_range"] for v in vpcs]
            subnet = vpc["ip_range"] if vpc else _plan_ip_range(cluster, taken)
        return NetworkInfo(f"dynia-{cluster}", subnet, PRIVATE_INTERFACE)

    def delete_network(self, cluster: str) -> None:
        """Delete the cluster VPC and SSH key; waits (bounded) for the VPC to empty."""
        vpc = self._find_vpc(cluster)
        if vpc is not None:
            self._delete_vpc(cluster, vpc["id"])
        for key in self._list_all("listing SSH keys", self._client.ssh_keys.list, "ssh_keys"):
            if key.get("name") == f"dynia-{cluster}":
                self._call("deleting SSH key", self._client.ssh_keys.delete, key["id"])

    def _delete_vpc(self, cluster: str, vpc_id: str) -> None:
        """Delete the VPC; while DigitalOcean still lists leaving droplets in it, wait (bounded)."""
        name, limit = f"dynia-{cluster}", self.timeouts.vpc_release
        told = False

        def attempt() -> bool:
            nonlocal told
            if self._try_delete_vpc(name, vpc_id):
                return True
            if not told:
                self._progress(
                    f"VPC {name} still has members (droplets being deleted); "
                    f"waiting up to {limit:.0f}s for DigitalOcean to release them"
                )
                told = True
            return False

        try:
            self._wait(f"VPC {name} to lose its droplets", limit, attempt)
        except ProviderError as exc:
            if "timed out" not in exc.message:
                raise
            raise ProviderError(
                f"deleting VPC {name}: it did not lose its droplets within {limit:.0f}s",
                hint="droplets of this or another cluster are still in it: check Networking > "
                "VPC in the DigitalOcean control panel, delete or move them, then re-run the "
                "same command (it resumes)",
            ) from None

    def _try_delete_vpc(self, name: str, vpc_id: str) -> bool:
        try:
            self._call(f"deleting VPC {name}", self._client.vpcs.delete, vpc_id)
        except ApiError as exc:
            # The live API answers 409 (its description says 403) while droplets are leaving.
            if exc.status in (403, 409) and "member" in exc.api_message.lower():
                return False
            if exc.status == 404:
                return True  # deleted by an earlier try whose answer was lost
            raise
        return True

    # -- SSH key -------------------------------------------------------------------------------

    def _ensure_ssh_key(self, cluster: str, public_key: str) -> int:
        fingerprint = ssh_fingerprint(public_key)
        key = self._get_ssh_key(fingerprint)
        if key is None:
            body = {"name": f"dynia-{cluster}", "public_key": public_key.strip()}
            try:
                key = self._create(
                    "uploading the SSH key",
                    self._client.ssh_keys.create,
                    body,
                    "ssh_key",
                    lambda: self._get_ssh_key(fingerprint),
                )
            except ApiError:
                key = self._get_ssh_key(fingerprint)  # uploaded by a concurrent run
                if key is None:
                    raise
        return int(key["id"])

    def _get_ssh_key(self, fingerprint: str) -> dict[str, Any] | None:
        try:
            body = self._call("looking up the SSH key", self._client.ssh_keys.get, fingerprint)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return None if _is_missing(body) else body.get("ssh_key")

    # -- droplets ------------------------------------------------------------------------------

    def _cluster_droplets(self, cluster: str) -> list[dict[str, Any]]:
        return self._list_all(
            f"listing droplets of cluster {cluster}",
            self._client.droplets.list,
            "droplets",
            tag_name=f"dynia-cluster-{cluster}",
        )

    def _find_droplet(self, cluster: str, node: str) -> dict[str, Any] | None:
        tag = f"dynia-node-{node}"
        return next((d for d in self._cluster_droplets(cluster) if tag in d["tags"]), None)

    def create_node(self, spec: NodeSpec) -> ProvisionedNode:
        droplet = self._find_droplet(spec.cluster, spec.name)
        if droplet is None:
            droplet = self._create_droplet(spec)
        droplet = self._wait_active(droplet["id"], spec.name)
        node = self._to_node(droplet)
        self._wait_ssh(node)
        return node

    def _create_droplet(self, spec: NodeSpec) -> dict[str, Any]:
        key_id = self._ensure_ssh_key(spec.cluster, spec.ssh_public_key)
        vpc = self._ensure_vpc(spec.cluster, spec.region)
        host_key = _generate_host_key()
        body = {
            "name": f"{spec.cluster}-{spec.name}",
            "region": spec.region,
            "size": spec.size,
            "image": self.image,
            "ssh_keys": [key_id],
            "tags": [
                "dynia",
                f"dynia-cluster-{spec.cluster}",
                f"dynia-node-{spec.name}",
                host_key.tag,
            ],
            "vpc_uuid": vpc["id"],
            "user_data": _user_data(spec, host_key),
            "monitoring": False,
            "ipv6": False,
        }
        return self._create(
            f"creating droplet {body['name']}",
            self._client.droplets.create,
            body,
            "droplet",
            lambda: self._find_droplet(spec.cluster, spec.name),
        )

    def _wait_active(self, droplet_id: int, node: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            body = self._call(f"reading droplet {node}", self._client.droplets.get, droplet_id)
            if _is_missing(body):
                raise ProviderError(
                    f"droplet of node {node} (id {droplet_id}) disappeared while booting",
                    hint="re-run the same command to create it again",
                )
            droplet = _field(body, "droplet", f"reading droplet {node}")
            ready = droplet["status"] == "active" and _address(droplet, "public")
            return droplet if ready else None

        return self._wait(f"droplet of node {node} to become active", self.timeouts.active, check)

    def _wait_ssh(self, node: ProvisionedNode) -> None:
        def check() -> bool:
            try:
                with socket.create_connection((node.public_ip, self.ssh_port), timeout=5) as conn:
                    conn.settimeout(5)
                    return conn.recv(4).startswith(b"SSH-")
            except OSError:
                return False

        self._wait(f"SSH on node {node.name} ({node.public_ip})", self.timeouts.ssh, check)

    def _to_node(self, droplet: dict[str, Any]) -> ProvisionedNode:
        tags = droplet.get("tags") or []
        node = next(t.removeprefix("dynia-node-") for t in tags if t.startswith("dynia-node-"))
        host_keys = [_host_key_from_tag(t) for t in tags if t.startswith("dynia-hostkey-")]
        return ProvisionedNode(
            name=node,
            provider_id=str(droplet["id"]),
            public_ip=_address(droplet, "public") or "",
            private_ip=_address(droplet, "private") or "",
            host_keys=host_keys,
        )

    def list_nodes(self, cluster: str) -> list[ProvisionedNode]:
        droplets = self._cluster_droplets(cluster)
        nodes = [
            self._to_node(d)
            for d in droplets
            if any(t.startswith("dynia-node-") for t in d["tags"])
        ]
        return sorted(nodes, key=lambda n: n.name)

    def delete_node(self, cluster: str, provider_id: str) -> None:
        droplet_id = _droplet_id(provider_id)
        body = self._call("reading the droplet to delete", self._client.droplets.get, droplet_id)
        if _is_missing(body):
            return
        tags = _field(body, "droplet", "reading the droplet to delete").get("tags") or []
        if f"dynia-cluster-{cluster}" not in tags:
            raise ProviderError(
                f"droplet {provider_id} does not carry tag dynia-cluster-{cluster}; "
                "Dynia deletes only droplets it created for this cluster",
                hint="check the node's provider id in state; delete foreign droplets by hand",
            )
        self._call(f"deleting droplet {provider_id}", self._client.droplets.destroy, droplet_id)

    # -- reserved IP ---------------------------------------------------------------------------

    def _reserved_ips(self) -> list[dict[str, Any]]:
        return self._list_all(
            "listing reserved IPs", self._client.reserved_ips.list, "reserved_ips"
        )

    def allocate_reserved_ip(self, cluster: str, region: str) -> ReservedIpInfo:
        droplets = self._cluster_droplets(cluster)
        ours = {d["id"] for d in droplets}
        existing = self._reserved_ips()
        for rip in existing:
            if (rip.get("droplet") or {}).get("id") in ours:
                return ReservedIpInfo(address=rip["ip"], provider_id=rip["ip"])
        # Creating it assigned to a cluster droplet keeps it recognisable as ours on a re-run.
        in_region = sorted(
            (d for d in droplets if d["region"]["slug"] == region), key=lambda d: d["name"]
        )
        target: int | None = in_region[0]["id"] if in_region else None
        body: dict[str, Any] = {"droplet_id": target} if target else {"region": region}
        before = {r["ip"] for r in existing}
        made = self._call(
            "creating the reserved IP",
            self._client.reserved_ips.create,
            body,
            recover=lambda: self._new_reserved_ip(before, ours, region),
        )
        rip = _field(made, "reserved_ip", "creating the reserved IP")
        for link in (made.get("links") or {}).get("actions") or []:
            self._wait_action(link["id"], "assigning the new reserved IP")
        if made.get("recovered") and target is not None:
            self._settle_assignment(rip["ip"], target)
        return ReservedIpInfo(address=rip["ip"], provider_id=rip["ip"])

    def _new_reserved_ip(
        self, before: set[str], ours: set[int], region: str
    ) -> dict[str, Any] | None:
        """The reserved IP an earlier create made: one on a cluster droplet, else a new,
        unassigned one in the region (its assign action may still be pending)."""
        rips = self._reserved_ips()
        held = [r for r in rips if (r.get("droplet") or {}).get("id") in ours]
        fresh = [
            r
            for r in rips
            if r["ip"] not in before
            and not r.get("droplet")
            and (r.get("region") or {}).get("slug") == region
        ]
        found = (held or fresh or [None])[0]
        return None if found is None else {"reserved_ip": found, "recovered": True}

    def _settle_assignment(self, address: str, droplet_id: int) -> None:
        """Let a pending action of a recovered reserved IP end, then put it on ``droplet_id``."""

        def unlocked() -> dict[str, Any] | None:
            rip = self._get_reserved_ip(address)
            if rip is None:
                raise ProviderError(
                    f"creating the reserved IP: {address} vanished from the account",
                    hint="re-run the same command to create a new one",
                )
            return None if rip.get("locked") else rip

        rip = self._wait(
            f"reserved IP {address} to finish its pending action", self.timeouts.action, unlocked
        )
        if (rip.get("droplet") or {}).get("id") != droplet_id:
            self._post_action(address, {"type": "assign", "droplet_id": droplet_id})

    def _get_reserved_ip(self, address: str) -> dict[str, Any] | None:
        try:
            body = self._call(
                f"reading reserved IP {address}", self._client.reserved_ips.get, address
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return None if _is_missing(body) else _field(body, "reserved_ip", f"reading {address}")

    def attach_reserved_ip(self, ip: ReservedIpInfo, node_provider_id: str) -> None:
        rip = self._get_reserved_ip(ip.address)
        if rip is None:
            raise ProviderError(
                f"reserved IP {ip.address} no longer exists on the account",
                hint="run `dynia repair --force` to allocate a new one",
            )
        target = _droplet_id(node_provider_id)
        if (rip.get("droplet") or {}).get("id") == target:
            return
        self._post_action(ip.address, {"type": "assign", "droplet_id": target})

    def detach_reserved_ip(self, ip: ReservedIpInfo) -> None:
        rip = self._get_reserved_ip(ip.address)
        if rip is None or not rip.get("droplet"):
            return
        self._post_action(ip.address, {"type": "unassign"})

    def _post_action(self, address: str, body: dict[str, Any]) -> None:
        what = f"{body['type']}ing reserved IP {address}"
        post = self._client.reserved_ips_actions.post

        def submit() -> dict[str, Any] | None:
            try:
                answer = self._call(what, post, reserved_ip=address, body=body)
            except ApiError as exc:
                if exc.status == 422 and "pending" in exc.api_message.lower():
                    return None  # an earlier action still runs: submit again once it ends
                if exc.status != 404:
                    raise
                answer = {"id": "not_found"}
            if _is_missing(answer):  # pydo returns the 404 body instead of raising
                raise ProviderError(
                    f"{what}: DigitalOcean no longer knows reserved IP {address}",
                    hint="it was released outside Dynia; run `dynia repair --force` to "
                    "allocate a new one",
                )
            return _field(answer, "action", what)

        action = self._wait(
            f"reserved IP {address} to accept {body['type']}", self.timeouts.action, submit
        )
        self._wait_action(action["id"], what)

    def _wait_action(self, action_id: int, what: str) -> None:
        def check() -> bool:
            action = self._call(what, self._client.actions.get, action_id)
            if _is_missing(action):
                raise ProviderError(f"DigitalOcean lost action {action_id} ({what})", hint="re-run")
            status = _field(action, "action", what)["status"]
            if status == "errored":
                raise ProviderError(
                    f"DigitalOcean action {action_id} ({what}) errored",
                    hint="check the action in the control panel and re-run the same command",
                )
            return status == "completed"

        try:
            self._wait(f"action {action_id} ({what})", self.timeouts.action, check)
        except ProviderError as exc:
            if "timed out" not in exc.message:
                raise
            raise ProviderError(
                f"DigitalOcean action {action_id} ({what}) did not complete within "
                f"{self.timeouts.action:.0f}s",
                hint="DigitalOcean may be degraded (https://status.digitalocean.com); "
                "re-run the same command once the action shows completed",
            ) from None

    def release_reserved_ip(self, cluster: str, ip: ReservedIpInfo) -> None:
        rip = self._get_reserved_ip(ip.address)
        if rip is None:
            return
        holder = rip.get("droplet")
        if holder and f"dynia-cluster-{cluster}" not in (holder.get("tags") or []):
            raise ProviderError(
                f"reserved IP {ip.address} is assigned to droplet {holder.get('name')}, which is "
                f"not part of cluster {cluster}; Dynia will not release it",
                hint="unassign it by hand if it really belongs to this cluster",
            )
        if holder:
            self._post_action(ip.address, {"type": "unassign"})

        def delete() -> bool:
            try:
                self._call(
                    f"releasing reserved IP {ip.address}",
                    self._client.reserved_ips.delete,
                    ip.address,
                )
            except ApiError as exc:
                if exc.status == 422 and "pending" in exc.api_message.lower():
                    return False
                if exc.status == 404:
                    return True  # released by an earlier try whose answer was lost
                raise
            return True

        self._wait(f"reserved IP {ip.address} to be released", self.timeouts.action, delete)


def _plan_ip_range(cluster: str, taken: list[str]) -> str:
    """A /24 for the cluster VPC in 10.100.0.0-10.199.255.0 that overlaps no existing VPC.

    Derived from the cluster name, so planning twice against the same account gives the same
    range (``ensure_network`` may plan before ``create_node`` creates).
    """
    used = []
    for cidr in taken:
        try:
            used.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue
    slots = 100 * 256
    start = int.from_bytes(hashlib.sha256(cluster.encode()).digest()[:4], "big") % slots
    for offset in range(slots):
        slot = (start + offset) % slots
        candidate = ipaddress.ip_network(f"10.{100 + slot // 256}.{slot % 256}.0/24")
        if not any(candidate.overlaps(other) for other in used):
            return str(candidate)
    raise ProviderError(
        "no free /24 left in 10.100.0.0/9 for a new cluster VPC",
        hint="delete unused VPCs on the DigitalOcean account",
    )


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
    return "check the region, size and image settings of the cluster; then re-run"


def _api_message(exc: HttpResponseError) -> str:
    try:
        body = exc.response.json() if exc.response is not None else None
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or "no message")


def _field(body: Any, key: str, what: str) -> Any:
    """``body[key]``, or a ProviderError naming the operation when the answer lacks it."""
    if isinstance(body, dict) and isinstance(body.get(key), dict):
        return body[key]
    detail = body.get("message") if isinstance(body, dict) else None
    raise ProviderError(
        f"DigitalOcean answered {what} without its {key!r} ({detail or 'unexpected answer'})",
        hint="re-run the same command; if it repeats check https://status.digitalocean.com",
    )


def _address(droplet: dict[str, Any], kind: str) -> str | None:
    for network in (droplet.get("networks") or {}).get("v4") or []:
        if network.get("type") == kind:
            return network.get("ip_address")
    return None


def _droplet_id(provider_id: str) -> int:
    if not str(provider_id).isdigit():
        raise ProviderError(
            f"{provider_id!r} is not a DigitalOcean droplet id",
            hint="the node's provider_id in state should be the droplet's numeric id",
        )
    return int(provider_id)


def _user_data(spec: NodeSpec, host_key: _HostKey) -> str:
    """cloud-init: install the pinned host key, make the node ready for Ansible (python3)."""
    config: dict[str, Any] = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": host_key.private_openssh,
            "ed25519_public": host_key.public_line,
        },
        "disable_root": False,
        "package_update": True,
        "packages": ["python3", "python3-apt"],
        "hostname": spec.name,
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


__all__ = [
    "DEFAULT_API_URL",
    "DigitalOceanNodeProvider",
    "RetryPolicy",
    "Timeouts",
    "ssh_fingerprint",
]
