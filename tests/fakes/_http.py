"""The HTTP machinery both fake APIs share: a loopback server, routing, faults, an exchange log.

A fake is a ``FakeApiServer`` subclass that registers routes and says how its errors look. It
runs a ``ThreadingHTTPServer`` on ``host`` (127.0.0.1 unless told otherwise, e.g. a bridge address
nodes can reach) with a random port in a daemon thread while used as a context manager. Every
exchange is recorded (``exchanges``) with the OpenAPI path template of the route that answered
it, so conformance tests can check each body against the API's schema.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)  # captured from the route pattern
    client: str = ""  # the caller's IP address


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serialisable, a str (sent as text/plain), or None for no body
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to hold the answer back (outside the lock): a slow or hung API


@dataclass
class Exchange:
    """One request and the answer the fake gave."""

    method: str
    path: str
    template: str  # e.g. "/v2/droplets/{droplet_id}"; "" when no route matched
    status: int
    body: Any
    query: dict[str, str]
    request_body: Any
    client: str = ""  # the caller's IP address


@dataclass
class Fault:
    """Answer the next ``remaining`` matching requests with ``status`` instead of serving them.

    ``after_serving``: serve the request first (it takes effect), then answer with the fault,
    as an API whose gateway fails after the backend accepted a create. ``status`` None keeps
    the real answer (useful with ``delay``). ``delay``: hold the answer back that long.
    """

    status: int | None
    remaining: int
    path_prefix: str
    method: str | None
    message: str
    headers: Callable[[], dict[str, str]] = dict
    after_serving: bool = False
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        return path.startswith(self.path_prefix) and self.method in (None, method)


Handler = Callable[[Request], Response]
# Why a request does not conform to the API's description, or None (see _openapi.RequestCheck).
RequestCheck = Callable[[Request], str | None]


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    template: str
    handler: Handler


class FakeApiServer:
    """Base of the fake APIs: subclasses add routes and shape error bodies."""

    api_prefix = "/"  # the paths of the API's calls start with this

    def __init__(self, token: str, host: str = "127.0.0.1") -> None:
        self.token = token
        self.host = host
        self.exchanges: list[Exchange] = []
        self.lock = threading.RLock()
        self._routes: list[_Route] = []
        self._faults: list[Fault] = []
        self._malformed: list[Fault] = []  # raw-body faults: ``message`` is the body sent
        self.request_check: RequestCheck | None = None
        self.request_violations: list[str] = []  # requests refused by ``request_check``
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeApiServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._server = ThreadingHTTPServer((self.host, 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the fake is not running"
        return self._server.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- routing and faults ------------------------------------------------------------------

    def route(self, method: str, template: str, handler: Handler) -> None:
        """Serve ``method template``; ``{name}`` segments are captured into ``request.params``."""
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        self._routes.append(_Route(method, re.compile(f"^{regex}$"), template, handler))

    def inject(
        self,
        status: int | None,
        *,
        count: int = 1,
        path_prefix: str = "",
        method: str | None = None,
        message: str = "injected fault",
        headers: Callable[[], dict[str, str]] = dict,
        after_serving: bool = False,
        delay: float = 0.0,
    ) -> Fault:
        """Answer the next ``count`` requests under ``path_prefix`` with ``status`` (see Fault)."""
        fault = Fault(status, count, path_prefix, method, message, headers, after_serving, delay)
        with self.lock:
            self._faults.append(fault)
        return fault

    def stall(
        self, seconds: float, *, count: int = 1, path_prefix: str = "", method: str | None = None
    ) -> Fault:
        """Hold the next ``count`` answers back ``seconds`` (the request itself is served)."""
        return self.inject(None, count=count, path_prefix=path_prefix, method=method, delay=seconds)

    def malformed_answers(
        self,
        body: str,
        *,
        count: int = 1,
        status: int = 200,
        content_type: str = "text/html",
        path_prefix: str | None = None,
        method: str | None = None,
        after_serving: bool = False,
    ) -> None:
        """Answer the next ``count`` matching requests with ``body`` as it is (not an API body):
        a proxy's HTML page, or ``content_type="application/json"`` with ``null`` or JSON cut
        short. ``path_prefix`` defaults to the API's root (``api_prefix``). ``after_serving``:
        the request takes effect first, then its answer is the raw body."""

        def headers() -> dict[str, str]:
            return {"content-type": content_type}

        prefix = self.api_prefix if path_prefix is None else path_prefix
        fault = Fault(status, count, prefix, method, body, headers, after_serving)
        with self.lock:
            self._malformed.append(fault)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def statuses(self, path_prefix: str = "", method: str | None = None) -> list[int]:
        """Statuses answered so far to requests under ``path_prefix`` (oldest first)."""
        with self.lock:
            return [
                e.status
                for e in self.exchanges
                if e.path.startswith(path_prefix) and method in (None, e.method)
            ]

    # -- hooks for subclasses ------------------------------------------------------------------

    def error_body(self, status: int, message: str) -> Any:
        raise NotImplementedError

    def common_headers(self) -> dict[str, str]:
        return {}

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {self.token}"

    def before_request(self) -> None:
        """Called under the lock before every request: lets time-based state advance."""

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> tuple[str, Response]:
        with self.lock:
            raw = next(
                (f for f in self._malformed if f.matches(request.method, request.path)), None
            )
            if raw is not None:
                raw.remaining -= 1
        if raw is not None:
            template = self._template_of(request)
            if raw.after_serving:
                template, _ = self._checked_dispatch(request)
            return template, Response(raw.status or 200, raw.message, headers=raw.headers())
        return self._checked_dispatch(request)

    def _checked_dispatch(self, request: Request) -> tuple[str, Response]:
        problem = self.request_check(request) if self.request_check else None
        if problem is not None:
            # A request the real API would not accept as described: refuse it loudly.
            with self.lock:
                self.request_violations.append(problem)
            message = f"request does not conform to the API description: {problem}"
            return self._template_of(request), Response(400, self.error_body(400, message))
        with self.lock:
            self.before_request()
            fault = next((f for f in self._faults if f.matches(request.method, request.path)), None)
            if fault is not None:
                fault.remaining -= 1
                template, answer = self._template_of(request), Response(0)
                if fault.status is None or fault.after_serving:
                    template, answer = self._serve(request)
                if fault.status is not None:  # the fault's answer replaces the real one
                    answer = Response(fault.status, self.error_body(fault.status, fault.message))
                answer.headers.update(fault.headers())
                answer.delay = fault.delay
                return template, answer
            return self._serve(request)

    def _serve(self, request: Request) -> tuple[str, Response]:
        with self.lock:
            if not self.authorized(request):
                return self._template_of(request), Response(401, self.error_body(401, ""))
            for route in self._routes:
                match = route.pattern.match(request.path)
                if match and route.method == request.method:
                    request.params = {k: unquote(v) for k, v in match.groupdict().items()}
                    return route.template, route.handler(request)
            status = 405 if self._template_of(request) else 404
            return self._template_of(request), Response(status, self.error_body(status, ""))

    def _template_of(self, request: Request) -> str:
        for route in self._routes:
            if route.pattern.match(request.path):
                return route.template
        return ""

    def record(self, request: Request, template: str, response: Response) -> None:
        with self.lock:
            self.exchanges.append(
                Exchange(
                    request.method,
                    request.path,
                    template,
                    response.status,
                    response.body,
                    request.query,
                    request.body,
                    request.client,
                )
            )


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _make_handler(fake: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in separate writes

        def log_message(self, format: str, *args: Any) -> None:
            return  # keep test output clean; the exchange log holds what matters

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(
                self.command, parts.path, query, body, headers, client=self.client_address[0]
            )
            template, response = fake.dispatch(request)
            fake.record(request, template, response)
            if response.delay:
                time.sleep(response.delay)  # a slow API: the client may give up meanwhile
            if isinstance(response.body, str):
                payload, kind = response.body.encode(), "text/plain; charset=utf-8"
            else:
                payload = b"" if response.body is None else json.dumps(response.body).encode()
                kind = "application/json; charset=utf-8"
            self.send_response(response.status)
            headers = {**fake.common_headers(), **response.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            # An answer's own content-type wins (a malformed answer: JSON cut short as JSON).
            if payload and not any(name.lower() == "content-type" for name in headers):
                self.send_header("content-type", kind)
            self.send_header("content-length", str(len(payload)))
            try:
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                self.close_connection = True  # the client gave up waiting (a read timeout)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return _Handler
