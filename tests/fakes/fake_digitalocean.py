"""A fake DigitalOcean API v2 on loopback: the subset Dynia's provider and notify script use.

Written from the public OpenAPI description (vendored subset: ``tests/fakes/openapi/digitalocean``):
status codes, body shapes, ``links.pages`` pagination with ``meta.total``, ``ratelimit-*``
headers on every answer, errors as ``{"id": ..., "message": ...}``.

Endpoints: ``/v2/account``; ``/v2/account/keys`` (list, create, get/delete by id or
fingerprint); ``/v2/droplets`` (list with ``tag_name`` or ``name``, create single, get, destroy);
``/v2/vpcs`` (list, create, get, delete: 409 while it has members, as the live API answers);
``/v2/firewalls`` (list, create, get, update, delete; a firewall may name only tags that exist,
conservatively: droplet creates and ``POST /v2/tags`` make tags);
``/v2/reserved_ips`` (list, create by region or droplet, get, delete) and its ``/actions``
(assign, unassign, list, get);
``/v2/actions/{id}``. Also the droplet metadata service's ``GET /metadata/v1/id`` (no token):
it answers the id of the droplet whose public or private address the request comes from (or
``metadata_ids[caller address]``), so the notify-master script can use the fake as its metadata
service too. ``host=`` binds the fake to an address nodes can reach.

Droplets become real through a :class:`DropletBackend`. The default,
:class:`InMemoryDropletBackend`, gives each droplet a loopback "public" address with a port that
answers an SSH banner, so the provider's SSH-ready wait has something real to connect to. A
local-fleet backend makes each droplet a container node and makes reserved-IP assignment move the
address between nodes.

Every API request is validated against the vendored description (openapi-core): one it does not
allow is answered 400 and listed in ``request_violations``.

Fault injection (all on the fake object, all counted per request):
``rate_limit(count, path_prefix, reset_in, retry_after)``,
``server_errors(count, path_prefix, status, after_serving)`` (``after_serving``: the request takes
effect, then the answer is a 5xx), ``stall(seconds, ...)`` (a hung API),
``reject_token()`` / ``accept_token()``, ``droplet_limit`` (quota on create), ``stall_actions``
(actions stay ``in-progress`` until ``resume_actions()``), ``failing_actions`` (the next N
reserved-IP moves end ``errored``: the address stays where it was, unlocked again),
``malformed_answers(body, content_type=...)`` (a raw body such as a proxy's HTML page, ``null``
or JSON cut short, by default with 200; ``after_serving`` as above), plus the generic
``inject(status, ...)``.

Custom-scoped tokens: ``add_scoped_token(token, {"reserved_ip:read", ...})`` makes the fake
accept a second token for only those scopes (``<resource>:<create|read|update|delete>``, as the
control panel names them); any other request with it is answered 403, as DigitalOcean does.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import ipaddress
import itertools
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._http import FakeApiServer, Request, Response, now_iso
from ._openapi import OPENAPI_DIR, RequestCheck

SPEC_FILE = OPENAPI_DIR / "digitalocean" / "subset.yaml"

_TAG_RE = re.compile(r"^[a-zA-Z0-9_\-:]{1,255}$")
_SIZES = ["s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-2gb", "s-2vcpu-4gb", "s-4vcpu-8gb"]
_REGION_FEATURES = ["private_networking", "backups", "ipv6", "metadata", "install_agent"]
_ERROR_IDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "server_error",
    503: "service_unavailable",
}
# First path segment after /v2 -> the scope resource of DigitalOcean's custom-scoped tokens.
_SCOPE_RESOURCES = {
    "account": "account",
    "actions": "actions",
    "droplets": "droplet",
    "firewalls": "firewall",
    "reserved_ips": "reserved_ip",
    "vpcs": "vpc",
}
_SCOPE_VERBS = {"GET": "read", "POST": "create", "PUT": "update", "DELETE": "delete"}
_ERROR_MESSAGES = {
    401: "Unable to authenticate you",
    403: "You are not authorized to perform this operation",
    404: "The resource you were accessing could not be found.",
    405: "Method not allowed",
    429: "API Rate limit exceeded.",
    500: "Server was unable to give you a response.",
}


# -- the backend interface --------------------------------------------------------------------


@dataclass(frozen=True)
class DropletRequest:
    """What a backend needs to bring up one droplet."""

    droplet_id: int
    name: str
    region: str
    size: str
    image: str
    tags: tuple[str, ...]
    user_data: str | None
    ssh_public_keys: tuple[str, ...]  # the OpenSSH public key lines the request named
    vpc_ip_range: str  # CIDR of the droplet's VPC; the private address must come from it


@dataclass(frozen=True)
class DropletAddresses:
    public_ip: str  # where SSH answers (port: the provider's ssh_port)
    private_ip: str  # inside ``vpc_ip_range``


class DropletBackend(Protocol):
    """Where the fake's droplets and reserved IPs physically live.

    The fake calls ``create`` on a worker thread after answering the create request with 202;
    the droplet stays ``new`` until ``create`` returns and turns ``active`` with the returned
    addresses. ``create`` may block for as long as booting takes. An exception from ``create``
    marks the droplet's create action ``errored`` and leaves the droplet ``new``.
    """

    def create(self, request: DropletRequest) -> DropletAddresses: ...

    def delete(self, droplet_id: int) -> None:
        """Tear the droplet's machine down (called while answering the destroy request)."""
        ...

    def reserve_address(self, region: str) -> str:
        """A fresh public address for a new reserved IP."""
        ...

    def release_address(self, address: str) -> None: ...

    def release_vpc(self, ip_range: str) -> None:
        """The VPC with ``ip_range`` was deleted: its network may go (it has no droplets)."""
        ...

    def assign_reserved_ip(self, address: str, droplet_id: int | None) -> None:
        """Make ``address`` reach ``droplet_id`` (None: reach no droplet).

        Called when an assign/unassign action completes, and when the droplet holding the
        address is destroyed (with None).
        """
        ...


class InMemoryDropletBackend:
    """Droplets as loopback addresses that answer an SSH banner; no machines."""

    def __init__(self) -> None:
        self._hosts = itertools.count(2)
        self._reserved = itertools.count(10)
        self._private: dict[str, itertools.count[int]] = {}
        self._listeners: dict[int, socket.socket] = {}
        self.assignments: dict[str, int | None] = {}
        self.created: list[DropletRequest] = []
        # One port for every droplet's "sshd": the first address reserves it.
        self._anchor = socket.create_server(("127.77.0.1", 0))
        self.ssh_port: int = self._anchor.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def create(self, request: DropletRequest) -> DropletAddresses:
        with self._lock:
            self.created.append(request)
            public_ip, listener = self._listen()
            network = ipaddress.ip_network(request.vpc_ip_range)
            counter = self._private.setdefault(request.vpc_ip_range, itertools.count(2))
            private_ip = str(network.network_address + next(counter))
            self._listeners[request.droplet_id] = listener
        threading.Thread(target=self._answer_banner, args=(listener,), daemon=True).start()
        return DropletAddresses(public_ip, private_ip)

    def _listen(self) -> tuple[str, socket.socket]:
        """A fresh loopback address with the "sshd" port open on it. The anchor holds the port
        on 127.77.0.1 only: another test process may hold it on the next address already."""
        for _ in range(50):
            host = next(self._hosts)
            public_ip = f"127.77.{host // 250}.{host % 250 + 2}"
            try:
                return public_ip, socket.create_server((public_ip, self.ssh_port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free loopback address for port {self.ssh_port}")

    def _answer_banner(self, listener: socket.socket) -> None:
        # Like sshd: greet every connection with a protocol banner, then hang up.
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-FakeDroplet_1.0\r\n")

    def delete(self, droplet_id: int) -> None:
        with self._lock:
            listener = self._listeners.pop(droplet_id, None)
        if listener is not None:
            listener.close()

    def reserve_address(self, region: str) -> str:
        return f"203.0.113.{next(self._reserved)}"

    def release_address(self, address: str) -> None:
        self.assignments.pop(address, None)

    def release_vpc(self, ip_range: str) -> None:
        """Nothing to release: private addresses here are only numbers."""

    def assign_reserved_ip(self, address: str, droplet_id: int | None) -> None:
        self.assignments[address] = droplet_id

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for listener in self._listeners.values():
                listener.close()
            self._listeners.clear()
        self._anchor.close()


# -- the fake ---------------------------------------------------------------------------------


@dataclass
class _Action:
    id: int
    type: str
    resource_id: int | None
    resource_type: str
    region_slug: str
    due: float  # monotonic time at which it completes
    effect: Any = None  # callable run under the lock when the action completes
    fails: bool = False  # ends "errored" without its effect
    undo: Any = None  # callable run under the lock when a failing action ends
    status: str = "in-progress"
    started_at: str = field(default_factory=now_iso)
    completed_at: str | None = None
    stalled: bool = False


def _region(slug: str) -> dict[str, Any]:
    return {
        "name": slug.upper(),
        "slug": slug,
        "features": list(_REGION_FEATURES),
        "available": True,
        "sizes": list(_SIZES),
    }


def _size(slug: str, region: str) -> dict[str, Any]:
    return {
        "slug": slug,
        "memory": 1024,
        "vcpus": 1,
        "disk": 25,
        "transfer": 1.0,
        "price_monthly": 6.0,
        "price_hourly": 0.00893,
        "regions": [region],
        "available": True,
        "description": "Basic",
    }


def _image(slug: str, region: str) -> dict[str, Any]:
    return {
        "id": 100000 + len(slug),
        "name": slug,
        "distribution": "Ubuntu",
        "slug": slug,
        "public": True,
        "regions": [region],
        "created_at": "2024-04-25T00:00:00Z",
        "type": "base",
        "min_disk_size": 7,
        "size_gigabytes": 2.5,
        "description": "",
        "tags": [],
        "status": "available",
        "error_message": "",
    }


def fingerprint_of(public_key: str) -> str:
    """DigitalOcean's key fingerprint: MD5 of the key blob, colon-separated hex."""
    blob = base64.b64decode(public_key.split()[1])
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class FakeDigitalOcean(FakeApiServer):
    """The fake; use as a context manager, point the client at ``api_url``."""

    api_prefix = "/v2/"

    def __init__(
        self,
        token: str = "dop_v1_fake_" + uuid.uuid4().hex,
        *,
        backend: DropletBackend | None = None,
        action_delay: float = 0.05,
        per_page_max: int = 200,
        host: str = "127.0.0.1",
        validate_requests: bool = True,
    ) -> None:
        super().__init__(token, host)
        if validate_requests:
            check = RequestCheck(SPEC_FILE, "https://api.digitalocean.com")
            # The metadata service is no part of the API description.
            self.request_check = lambda r: (
                None if r.path.startswith("/metadata/") else check.problem(r)
            )
        self.backend: DropletBackend = backend or InMemoryDropletBackend()
        self.action_delay = action_delay
        self.per_page_max = per_page_max
        self.droplet_limit = 25
        self.stall_actions = False
        self.failing_actions = 0  # the next N reserved-IP assign/unassign actions error
        self.backend_errors: list[str] = []
        self.metadata_ids: dict[str, int] = {}  # caller address -> droplet id, checked first
        self.droplets: dict[int, dict[str, Any]] = {}
        self.vpcs: dict[str, dict[str, Any]] = {}
        self.ssh_keys: dict[int, dict[str, Any]] = {}
        self.reserved_ips: dict[str, dict[str, Any]] = {}
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.tags: set[str] = set()
        self.actions: dict[int, _Action] = {}
        self._ids = itertools.count(3164444)
        self._vpc_ranges = itertools.count(0)
        self._accepted_token = token
        self.scoped_tokens: dict[str, frozenset[str]] = {}
        self._ratelimit_remaining = 5000
        self._ticker_stop = threading.Event()
        self._register_routes()

    @property
    def api_url(self) -> str:
        return self.origin

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        assert self._server is not None
        threading.Thread(target=self._tick, daemon=True).start()

    def stop(self) -> None:
        self._ticker_stop.set()
        super().stop()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def _tick(self) -> None:
        # Actions complete on their own, as on the real API, whether or not anyone polls.
        while not self._ticker_stop.wait(0.02):
            with self.lock:
                self.before_request()

    # -- fault injection ---------------------------------------------------------------------

    def rate_limit(
        self,
        count: int = 1,
        *,
        path_prefix: str = "/v2/",
        reset_in: int = 1,
        retry_after: int | None = None,
    ) -> None:
        """The next ``count`` requests get 429 with ``ratelimit-reset`` ``reset_in`` s ahead and
        ``retry-after`` (default ``reset_in``). The burst limit sends a short ``retry-after``
        with a ``ratelimit-reset`` up to an hour away."""
        wait = reset_in if retry_after is None else retry_after

        def headers() -> dict[str, str]:
            return {
                "ratelimit-limit": "5000",
                "ratelimit-remaining": "0",
                "ratelimit-reset": str(int(time.time()) + reset_in),
                "retry-after": str(wait),
            }

        self.inject(429, count=count, path_prefix=path_prefix, headers=headers)

    def server_errors(
        self,
        count: int = 3,
        *,
        path_prefix: str = "/v2/",
        status: int = 500,
        method: str | None = None,
        after_serving: bool = False,
    ) -> None:
        """A burst of ``count`` 5xx answers; ``after_serving``: each request took effect first."""
        self.inject(
            status, count=count, path_prefix=path_prefix, method=method, after_serving=after_serving
        )

    def resume_actions(self) -> None:
        """Stalled reserved-IP actions go on and complete (``stall_actions`` is switched off)."""
        with self.lock:
            self.stall_actions = False
            for action in self.actions.values():
                if action.resource_type == "reserved_ip":
                    action.stalled = False

    def reject_token(self) -> None:
        """Every request is now 401, as with a revoked token."""
        self._accepted_token = "revoked-" + uuid.uuid4().hex

    def accept_token(self) -> None:
        self._accepted_token = self.token

    def add_scoped_token(self, token: str, scopes: set[str]) -> None:
        """Accept ``token`` too, for ``scopes`` only (e.g. ``{"reserved_ip:update"}``)."""
        self.scoped_tokens[token] = frozenset(scopes)

    def authorized(self, request: Request) -> bool:
        if request.path.startswith("/metadata/"):
            return True  # the metadata service needs no token, as on a droplet
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        return sent == self._accepted_token or sent in self.scoped_tokens

    def _serve(self, request: Request) -> tuple[str, Response]:
        missing = self._missing_scope(request)
        if missing is not None:
            message = f"You are not authorized to perform this operation ({missing})"
            return self._template_of(request), self._error(403, message)
        return super()._serve(request)

    def _missing_scope(self, request: Request) -> str | None:
        """The scope a custom-scoped token lacks for ``request``; None when it may proceed."""
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        scopes = self.scoped_tokens.get(sent)
        if scopes is None or sent == self._accepted_token:
            return None
        parts = request.path.split("/")  # "", "v2", resource, ...
        resource = "ssh_key" if parts[2:4] == ["account", "keys"] else None
        resource = resource or _SCOPE_RESOURCES.get(parts[2] if len(parts) > 2 else "", "?")
        verb = _SCOPE_VERBS.get(request.method, "?")
        # Moving a reserved IP is an action on it: the "update" scope, not "create".
        if resource == "reserved_ip" and request.method == "POST" and len(parts) > 4:
            verb = "update"
        scope = f"{resource}:{verb}"
        return None if scope in scopes else scope

    # -- shared answers ----------------------------------------------------------------------

    def error_body(self, status: int, message: str) -> dict[str, str]:
        text = message or _ERROR_MESSAGES.get(status, "error")
        return {"id": _ERROR_IDS.get(status, "error"), "message": text}

    def common_headers(self) -> dict[str, str]:
        self._ratelimit_remaining = max(0, self._ratelimit_remaining - 1)
        return {
            "ratelimit-limit": "5000",
            "ratelimit-remaining": str(self._ratelimit_remaining),
            "ratelimit-reset": str(int(time.time()) + 60),
        }

    def _error(self, status: int, message: str = "") -> Response:
        return Response(status, self.error_body(status, message))

    def _page(self, request: Request, key: str, items: list[Any]) -> Response:
        try:
            per_page = max(1, min(int(request.query.get("per_page", 20)), self.per_page_max))
            page = max(1, int(request.query.get("page", 1)))
        except ValueError:
            return self._error(400, "page and per_page must be integers")
        last = max(1, -(-len(items) // per_page))
        chosen = items[(page - 1) * per_page : page * per_page]

        def link(number: int) -> str:
            extra = "".join(
                f"&{k}={v}"
                for k, v in sorted(request.query.items())
                if k not in ("page", "per_page")
            )
            return f"{self.origin}{request.path}?page={number}&per_page={per_page}{extra}"

        pages: dict[str, str] = {}
        if page > 1:
            pages.update(first=link(1), prev=link(page - 1))
        if page < last:
            pages.update(next=link(page + 1), last=link(last))
        body = {
            key: chosen,
            "links": {"pages": pages} if pages else {},
            "meta": {"total": len(items)},
        }
        return Response(200, body)

    def _new_action(
        self,
        kind: str,
        resource_id: int | None,
        resource_type: str,
        region: str,
        effect: Any = None,
    ) -> _Action:
        action = _Action(
            id=next(self._ids),
            type=kind,
            resource_id=resource_id,
            resource_type=resource_type,
            region_slug=region,
            due=time.monotonic() + self.action_delay,
            effect=effect,
            stalled=self.stall_actions,
        )
        self.actions[action.id] = action
        return action

    def before_request(self) -> None:
        now = time.monotonic()
        for action in self.actions.values():
            if action.status == "in-progress" and not action.stalled and action.due <= now:
                if action.fails:
                    if action.undo is not None:
                        action.undo()
                    action.status = "errored"
                    action.completed_at = now_iso()
                    continue
                if action.effect is not None:
                    try:
                        action.effect()
                    except Exception as exc:  # the backend failed: the action errors, as on DO
                        self.backend_errors.append(f"action {action.id}: {exc}")
                        action.status = "errored"
                        action.completed_at = now_iso()
                        continue
                action.status = "completed"
                action.completed_at = now_iso()

    def _action_json(self, action: _Action) -> dict[str, Any]:
        return {
            "id": action.id,
            "status": action.status,
            "type": action.type,
            "started_at": action.started_at,
            "completed_at": action.completed_at,
            "resource_id": action.resource_id,
            "resource_type": action.resource_type,
            "region": _region(action.region_slug),
            "region_slug": action.region_slug,
        }

    # -- routes ------------------------------------------------------------------------------

    def _register_routes(self) -> None:
        self.route("GET", "/metadata/v1/id", self._metadata_id)
        self.route("GET", "/v2/account", self._account)
        self.route("GET", "/v2/account/keys", self._keys_list)
        self.route("POST", "/v2/account/keys", self._keys_create)
        self.route("GET", "/v2/account/keys/{ssh_key_identifier}", self._keys_get)
        self.route("DELETE", "/v2/account/keys/{ssh_key_identifier}", self._keys_delete)
        self.route("GET", "/v2/actions/{action_id}", self._action_get)
        self.route("GET", "/v2/droplets", self._droplets_list)
        self.route("POST", "/v2/droplets", self._droplets_create)
        self.route("GET", "/v2/droplets/{droplet_id}", self._droplets_get)
        self.route("DELETE", "/v2/droplets/{droplet_id}", self._droplets_destroy)
        self.route("GET", "/v2/vpcs", self._vpcs_list)
        self.route("POST", "/v2/vpcs", self._vpcs_create)
        self.route("GET", "/v2/vpcs/{vpc_id}", self._vpcs_get)
        self.route("DELETE", "/v2/vpcs/{vpc_id}", self._vpcs_delete)
        self.route("GET", "/v2/firewalls", self._firewalls_list)
        self.route("POST", "/v2/firewalls", self._firewalls_create)
        self.route("GET", "/v2/firewalls/{firewall_id}", self._firewalls_get)
        self.route("PUT", "/v2/firewalls/{firewall_id}", self._firewalls_update)
        self.route("DELETE", "/v2/firewalls/{firewall_id}", self._firewalls_delete)
        self.route("POST", "/v2/tags", self._tags_create)
        self.route("GET", "/v2/reserved_ips", self._rips_list)
        self.route("POST", "/v2/reserved_ips", self._rips_create)
        self.route("GET", "/v2/reserved_ips/{reserved_ip}", self._rips_get)
        self.route("DELETE", "/v2/reserved_ips/{reserved_ip}", self._rips_delete)
        self.route("GET", "/v2/reserved_ips/{reserved_ip}/actions", self._rip_actions_list)
        self.route("POST", "/v2/reserved_ips/{reserved_ip}/actions", self._rip_actions_post)
        self.route(
            "GET", "/v2/reserved_ips/{reserved_ip}/actions/{action_id}", self._rip_actions_get
        )

    def _metadata_id(self, request: Request) -> Response:
        """The metadata service's ``/metadata/v1/id``: the id of the droplet asking."""
        droplet_id = self.metadata_ids.get(request.client)
        if droplet_id is None:
            droplet_id = next(
                (
                    d["id"]
                    for d in self.droplets.values()
                    if request.client in (d["public_ip"], d["private_ip"])
                ),
                None,
            )
        if droplet_id is None:
            return Response(404, "not a droplet")
        return Response(200, str(droplet_id))

    def _account(self, request: Request) -> Response:
        account = {
            "droplet_limit": self.droplet_limit,
            "floating_ip_limit": 3,
            "email": "operator@example.com",
            "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
            "email_verified": True,
            "status": "active",
            "status_message": "",
        }
        return Response(200, {"account": account})

    # ssh keys

    def _find_key(self, identifier: str) -> dict[str, Any] | None:
        if identifier.isdigit():
            return self.ssh_keys.get(int(identifier))
        return next((k for k in self.ssh_keys.values() if k["fingerprint"] == identifier), None)

    def _keys_list(self, request: Request) -> Response:
        return self._page(request, "ssh_keys", list(self.ssh_keys.values()))

    def _keys_create(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        public_key, name = body.get("public_key"), body.get("name")
        if not isinstance(public_key, str) or not isinstance(name, str) or not name:
            return self._error(422, "public_key and name are required")
        try:
            fingerprint = fingerprint_of(public_key)
        except (IndexError, ValueError):
            return self._error(422, "Key invalid type, we support 'ssh-rsa', 'ssh-ed25519'")
        if self._find_key(fingerprint):
            return self._error(422, "SSH Key is already in use on your account")
        key = {"id": next(self._ids), "fingerprint": fingerprint, "public_key": public_key}
        key["name"] = name
        self.ssh_keys[key["id"]] = key
        return Response(201, {"ssh_key": key})

    def _keys_get(self, request: Request) -> Response:
        key = self._find_key(request.params["ssh_key_identifier"])
        return Response(200, {"ssh_key": key}) if key else self._error(404)

    def _keys_delete(self, request: Request) -> Response:
        key = self._find_key(request.params["ssh_key_identifier"])
        if not key:
            return self._error(404)
        del self.ssh_keys[key["id"]]
        return Response(204)

    # actions

    def _action_get(self, request: Request) -> Response:
        action = self.actions.get(_int(request.params["action_id"]))
        return Response(200, {"action": self._action_json(action)}) if action else self._error(404)

    # droplets

    def _droplet_json(self, record: dict[str, Any]) -> dict[str, Any]:
        v4: list[dict[str, Any]] = []
        if record["public_ip"]:
            v4 = [
                {
                    "ip_address": record["public_ip"],
                    "netmask": "255.255.240.0",
                    "gateway": record["public_ip"].rsplit(".", 1)[0] + ".1",
                    "type": "public",
                },
                {
                    "ip_address": record["private_ip"],
                    "netmask": str(ipaddress.ip_network(record["vpc_range"]).netmask),
                    "gateway": str(ipaddress.ip_network(record["vpc_range"]).network_address + 1),
                    "type": "private",
                },
            ]
        return {
            "id": record["id"],
            "name": record["name"],
            "memory": 1024,
            "vcpus": 1,
            "disk": 25,
            "locked": False,
            "status": record["status"],
            "kernel": None,
            "created_at": record["created_at"],
            "features": ["private_networking"],
            "backup_ids": [],
            "next_backup_window": None,
            "snapshot_ids": [],
            "image": _image(record["image"], record["region"]),
            "volume_ids": [],
            "size": _size(record["size"], record["region"]),
            "size_slug": record["size"],
            "networks": {"v4": v4, "v6": []},
            "region": _region(record["region"]),
            "tags": list(record["tags"]),
            "vpc_uuid": record["vpc_uuid"],
        }

    def _droplets_list(self, request: Request) -> Response:
        tag, name = request.query.get("tag_name"), request.query.get("name")
        if tag and name:
            return self._error(400, "tag_name can not be combined with name")
        chosen = [
            self._droplet_json(d)
            for d in sorted(self.droplets.values(), key=lambda d: d["id"])
            if (not tag or tag in d["tags"]) and (not name or d["name"].lower() == name.lower())
        ]
        return self._page(request, "droplets", chosen)

    def _droplets_create(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        problem = self._create_problem(body)
        if problem:
            return self._error(422, problem)
        region = body.get("region") or "nyc3"
        vpc_uuid = body.get("vpc_uuid") or self._default_vpc(region)["id"]
        keys = tuple(self._find_key(str(k))["public_key"] for k in body.get("ssh_keys") or [])
        droplet_id = next(self._ids)
        record = {
            "id": droplet_id,
            "name": body["name"],
            "region": region,
            "size": body["size"],
            "image": str(body["image"]),
            "tags": list(dict.fromkeys(body.get("tags") or [])),
            "vpc_uuid": vpc_uuid,
            "vpc_range": self.vpcs[vpc_uuid]["ip_range"],
            "user_data": body.get("user_data"),
            "status": "new",
            "created_at": now_iso(),
            "public_ip": None,
            "private_ip": None,
        }
        self.droplets[droplet_id] = record
        self.tags.update(record["tags"])  # tagging a droplet creates the tag, as on DO
        action = self._new_action("create", droplet_id, "droplet", region)
        action.stalled = True  # completed by the boot thread, not by the clock
        spec = DropletRequest(
            droplet_id,
            record["name"],
            region,
            record["size"],
            record["image"],
            tuple(record["tags"]),
            record["user_data"],
            keys,
            record["vpc_range"],
        )
        threading.Thread(target=self._boot, args=(spec, action), daemon=True).start()
        links = {"actions": [{"id": action.id, "rel": "create", "href": self._href(action.id)}]}
        return Response(202, {"droplet": self._droplet_json(record), "links": links})

    def _href(self, action_id: int) -> str:
        return f"{self.origin}/v2/actions/{action_id}"

    def _create_problem(self, body: dict[str, Any]) -> str | None:
        if "names" in body:
            return "this fake creates one droplet per request: send name, not names"
        for required in ("name", "size", "image"):
            if not body.get(required):
                return f"{required} is required"
        if len(self.droplets) >= self.droplet_limit:
            return (
                "creating this/these droplet(s) will exceed your droplet limit "
                f"({self.droplet_limit})"
            )
        bad_tags = [t for t in body.get("tags") or [] if not _TAG_RE.match(str(t))]
        if bad_tags:
            return f"tag names {bad_tags} must match {_TAG_RE.pattern}"
        for key in body.get("ssh_keys") or []:
            if not self._find_key(str(key)):
                return f"ssh key {key} is not on this account"
        vpc = self.vpcs.get(str(body.get("vpc_uuid"))) if body.get("vpc_uuid") else None
        if body.get("vpc_uuid") and (vpc is None or vpc["region"] != body.get("region")):
            return "vpc_uuid does not name a VPC in the droplet's region"
        return None

    def _boot(self, spec: DropletRequest, action: _Action) -> None:
        try:
            addresses = self.backend.create(spec)
        except Exception as exc:  # a failed boot shows as an errored create action, as on DO
            with self.lock:
                self.backend_errors.append(f"droplet {spec.droplet_id}: {exc}")
                action.status, action.completed_at = "errored", now_iso()
            return
        with self.lock:
            record = self.droplets.get(spec.droplet_id)
            if record is None:  # destroyed while booting
                self.backend.delete(spec.droplet_id)
                return
            record.update(
                public_ip=addresses.public_ip, private_ip=addresses.private_ip, status="active"
            )
            action.status, action.completed_at = "completed", now_iso()

    def _droplets_get(self, request: Request) -> Response:
        record = self.droplets.get(_int(request.params["droplet_id"]))
        if record is None:
            return self._error(404)
        return Response(200, {"droplet": self._droplet_json(record)})

    def _droplets_destroy(self, request: Request) -> Response:
        droplet_id = _int(request.params["droplet_id"])
        if self.droplets.pop(droplet_id, None) is None:
            return self._error(404)
        for rip in self.reserved_ips.values():
            if rip["droplet_id"] == droplet_id:
                rip["droplet_id"] = None
                self.backend.assign_reserved_ip(rip["ip"], None)
        self.backend.delete(droplet_id)
        return Response(204)

    # firewalls and tags

    def _tags_create(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        name = str(body.get("name") or "")
        if not _TAG_RE.match(name):
            return self._error(422, f"tag name must match {_TAG_RE.pattern}")
        self.tags.add(name)  # creating a tag that exists answers it again
        resources = {"count": 0, "droplets": {"count": 0}}
        return Response(201, {"tag": {"name": name, "resources": resources}})

    def _firewall_problem(self, body: dict[str, Any]) -> str | None:
        unknown = [t for t in body.get("tags") or [] if t not in self.tags]
        if unknown:
            return f"tag {unknown[0]} not found"
        for key, target in (("inbound_rules", "sources"), ("outbound_rules", "destinations")):
            for rule in body.get(key) or []:
                if not any((rule.get(target) or {}).values()):
                    return f"each of {key} needs at least one of its {target}"
                if rule["protocol"] != "icmp" and not re.fullmatch(
                    r"0|all|\d{1,5}(-\d{1,5})?", str(rule.get("ports"))
                ):
                    return f"ports {rule.get('ports')!r} is not a port, a range or 0"
        missing = [d for d in body.get("droplet_ids") or [] if d not in self.droplets]
        return f"droplet {missing[0]} not found" if missing else None

    def _firewall_record(self, body: dict[str, Any], firewall_id: str) -> dict[str, Any]:
        def rules(key: str) -> list[dict[str, Any]]:
            # The API answers "0" as the ports of an ICMP rule.
            return [
                {**r, "ports": "0" if r["protocol"] == "icmp" else str(r["ports"])}
                for r in body.get(key) or []
            ]

        return {
            "id": firewall_id,
            "name": body["name"],
            "status": "succeeded",
            "created_at": now_iso(),
            "pending_changes": [],
            "droplet_ids": list(body.get("droplet_ids") or []),
            "tags": list(dict.fromkeys(body.get("tags") or [])),
            "inbound_rules": rules("inbound_rules"),
            "outbound_rules": rules("outbound_rules"),
        }

    def _firewalls_list(self, request: Request) -> Response:
        return self._page(request, "firewalls", [dict(f) for f in self.firewalls.values()])

    def _firewalls_create(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        problem = self._firewall_problem(body)
        if problem:
            return self._error(422, problem)
        record = self._firewall_record(body, str(uuid.uuid4()))
        record["status"] = "waiting"  # applying to droplets takes a moment on DO
        self.firewalls[record["id"]] = record
        return Response(202, {"firewall": dict(record)})

    def _firewalls_get(self, request: Request) -> Response:
        record = self.firewalls.get(request.params["firewall_id"])
        if record is None:
            return self._error(404)
        record["status"] = "succeeded"
        return Response(200, {"firewall": dict(record)})

    def _firewalls_update(self, request: Request) -> Response:
        record = self.firewalls.get(request.params["firewall_id"])
        if record is None:
            return self._error(404)
        body = request.body if isinstance(request.body, dict) else {}
        problem = self._firewall_problem(body)
        if problem:
            return self._error(422, problem)
        updated = self._firewall_record(body, record["id"])
        updated["created_at"] = record["created_at"]
        self.firewalls[record["id"]] = updated
        return Response(200, {"firewall": dict(updated)})

    def _firewalls_delete(self, request: Request) -> Response:
        if self.firewalls.pop(request.params["firewall_id"], None) is None:
            return self._error(404)
        return Response(204)

    # vpcs

    def _vpc_json(self, vpc: dict[str, Any]) -> dict[str, Any]:
        return dict(vpc)

    def _default_vpc(self, region: str) -> dict[str, Any]:
        for vpc in self.vpcs.values():
            if vpc["region"] == region and vpc["default"]:
                return vpc
        return self._make_vpc(f"default-{region}", region, None, default=True)

    def _make_vpc(
        self, name: str, region: str, ip_range: str | None, *, default: bool = False
    ) -> dict[str, Any]:
        vpc_id = str(uuid.uuid4())
        vpc = {
            "id": vpc_id,
            "urn": f"do:vpc:{vpc_id}",
            "name": name,
            "description": "",
            "region": region,
            "ip_range": ip_range or f"10.{110 + next(self._vpc_ranges)}.0.0/20",
            "default": default,
            "created_at": now_iso(),
        }
        self.vpcs[vpc_id] = vpc
        return vpc

    def _vpcs_list(self, request: Request) -> Response:
        return self._page(request, "vpcs", [self._vpc_json(v) for v in self.vpcs.values()])

    def _vpcs_create(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        name, region = body.get("name"), body.get("region")
        if not name or not region:
            return self._error(422, "name and region are required")
        if not re.match(r"^[a-zA-Z0-9\-.]{1,255}$", str(name)):
            return self._error(422, "name may contain only alphanumerics, dashes and periods")
        if any(v["name"] == name for v in self.vpcs.values()):
            return self._error(422, "A VPC with this name already exists in your account")
        ip_range = body.get("ip_range")
        if ip_range is not None:
            try:
                network = ipaddress.ip_network(str(ip_range))
            except ValueError:
                return self._error(422, "ip_range must be an IPv4 CIDR")
            if not network.is_private or not 16 <= network.prefixlen <= 28:
                return self._error(422, "ip_range must be an RFC1918 range between /16 and /28")
            taken = [ipaddress.ip_network(v["ip_range"]) for v in self.vpcs.values()]
            if any(network.overlaps(other) for other in taken):
                return self._error(422, "ip_range overlaps another VPC network in your account")
        vpc = self._make_vpc(str(name), str(region), body.get("ip_range"))
        return Response(201, {"vpc": self._vpc_json(vpc)})

    def _vpcs_get(self, request: Request) -> Response:
        vpc = self.vpcs.get(request.params["vpc_id"])
        return Response(200, {"vpc": self._vpc_json(vpc)}) if vpc else self._error(404)

    def _vpcs_delete(self, request: Request) -> Response:
        vpc = self.vpcs.get(request.params["vpc_id"])
        if vpc is None:
            return self._error(404)
        if vpc["default"]:
            return self._error(403, "Can not delete the default VPC")
        if any(d["vpc_uuid"] == vpc["id"] for d in self.droplets.values()):
            return self._error(409, "Can not delete VPC with members")
        del self.vpcs[vpc["id"]]
        self.backend.release_vpc(vpc["ip_range"])
        return Response(204)

    # reserved IPs

    def _rip_json(self, rip: dict[str, Any]) -> dict[str, Any]:
        droplet = self.droplets.get(rip["droplet_id"]) if rip["droplet_id"] else None
        return {
            "ip": rip["ip"],
            "region": _region(rip["region"]),
            "droplet": self._droplet_json(droplet) if droplet else None,
            "locked": rip["locked"],
            "project_id": rip["project_id"],
        }

    def _rips_list(self, request: Request) -> Response:
        rips = [self._rip_json(r) for r in self.reserved_ips.values()]
        return self._page(request, "reserved_ips", rips)

    def _rips_create(self, request: Request) -> Response:
        body = request.body if isinstance(request.body, dict) else {}
        droplet_id, region = body.get("droplet_id"), body.get("region")
        droplet = self.droplets.get(droplet_id) if isinstance(droplet_id, int) else None
        if droplet_id is not None and droplet is None:
            return self._error(422, "droplet_id does not name a droplet")
        if droplet is None and not region:
            return self._error(422, "either droplet_id or region is required")
        region = droplet["region"] if droplet else str(region)
        address = self.backend.reserve_address(region)
        rip = {
            "ip": address,
            "region": region,
            "droplet_id": None,
            "locked": False,
            "project_id": "746c6152-2fa2-11ed-92d3-27aaa54e4988",
        }
        self.reserved_ips[address] = rip
        links: dict[str, Any] = {}
        if droplet is not None:
            action = self._assign(rip, droplet["id"])
            links = {
                "droplets": [
                    {"id": droplet["id"], "rel": "droplet", "href": self._droplet_href(droplet)}
                ],
                "actions": [{"id": action.id, "rel": "assign_ip", "href": self._href(action.id)}],
            }
        return Response(202, {"reserved_ip": self._rip_json(rip), "links": links})

    def _droplet_href(self, droplet: dict[str, Any]) -> str:
        return f"{self.origin}/v2/droplets/{droplet['id']}"

    def _assign(self, rip: dict[str, Any], droplet_id: int | None) -> _Action:
        def effect() -> None:
            self.backend.assign_reserved_ip(rip["ip"], droplet_id)
            rip["droplet_id"] = droplet_id
            rip["locked"] = False

        def unlock() -> None:
            rip["locked"] = False

        rip["locked"] = True
        kind = "assign_ip" if droplet_id else "unassign_ip"
        action = self._new_action(
            kind, int(ipaddress.ip_address(rip["ip"])), "reserved_ip", rip["region"], effect
        )
        if self.failing_actions > 0:  # DigitalOcean failed the move: nothing changes
            self.failing_actions -= 1
            action.fails, action.undo = True, unlock
        return action

    def _rips_get(self, request: Request) -> Response:
        rip = self.reserved_ips.get(request.params["reserved_ip"])
        return Response(200, {"reserved_ip": self._rip_json(rip)}) if rip else self._error(404)

    def _rips_delete(self, request: Request) -> Response:
        rip = self.reserved_ips.get(request.params["reserved_ip"])
        if rip is None:
            return self._error(404)
        if rip["locked"]:
            return self._error(422, "Reserved IP has a pending event")
        del self.reserved_ips[rip["ip"]]
        if rip["droplet_id"] is not None:
            self.backend.assign_reserved_ip(rip["ip"], None)
        self.backend.release_address(rip["ip"])
        return Response(204)

    def _rip_actions_list(self, request: Request) -> Response:
        rip = self.reserved_ips.get(request.params["reserved_ip"])
        if rip is None:
            return self._error(404)
        resource = int(ipaddress.ip_address(rip["ip"]))
        chosen = [
            self._action_json(a)
            for a in self.actions.values()
            if a.resource_type == "reserved_ip" and a.resource_id == resource
        ]
        return self._page(request, "actions", chosen)

    def _rip_actions_post(self, request: Request) -> Response:
        rip = self.reserved_ips.get(request.params["reserved_ip"])
        if rip is None:
            return self._error(404)
        body = request.body if isinstance(request.body, dict) else {}
        kind = body.get("type")
        if kind not in ("assign", "unassign"):
            return self._error(422, "type must be assign or unassign")
        if rip["locked"]:
            return self._error(422, "Reserved IP has a pending event; try again once it completes")
        droplet_id = body.get("droplet_id") if kind == "assign" else None
        if kind == "assign":
            droplet = self.droplets.get(droplet_id) if isinstance(droplet_id, int) else None
            if droplet is None:
                return self._error(422, "droplet_id does not name a droplet")
            if droplet["region"] != rip["region"]:
                return self._error(422, "the droplet is in another region than the reserved IP")
        elif rip["droplet_id"] is None:
            return self._error(422, "Reserved IP is not assigned to a droplet")
        action = self._assign(rip, droplet_id)
        return Response(201, {"action": self._action_json(action)})

    def _rip_actions_get(self, request: Request) -> Response:
        action = self.actions.get(_int(request.params["action_id"]))
        if action is None or action.resource_type != "reserved_ip":
            return self._error(404)
        return Response(200, {"action": self._action_json(action)})


def _int(value: str) -> int:
    return int(value) if value.isdigit() else -1
