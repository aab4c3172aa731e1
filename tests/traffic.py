"""A steady HTTPS client through the Reserved IP, counting every failed request."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


class _AddressedConnection(http.client.HTTPSConnection):
    def __init__(self, address: str, domain: str, context: ssl.SSLContext) -> None:
        super().__init__(domain, 443, timeout=3, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, 443), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def fetch(address: str, domain: str, path: str, ca_file: Path) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca_file))
    connection = _AddressedConnection(address, domain, context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace").strip()
    finally:
        connection.close()


@dataclass
class TrafficReport:
    sent: int = 0
    failed: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    bodies: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    stopped: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / max(self.stopped - self.started, 1e-6)

    def longest_gap(self) -> float:
        """Longest span of consecutive failures, in seconds."""
        if not self.failures:
            return 0.0
        spans, start, last = [], self.failures[0][0], self.failures[0][0]
        for moment, _ in self.failures[1:]:
            if moment - last > 0.5:
                spans.append(last - start)
                start = moment
            last = moment
        spans.append(last - start)
        return max(spans) + 0.05


class SteadyTraffic:
    """Sends GETs at ``rate`` per second from a background thread until stopped."""

    def __init__(self, address: str, domain: str, path: str, ca_file: Path, rate: float = 25.0):
        self.args = (address, domain, path, ca_file)
        self.interval = 1.0 / rate
        self.report = TrafficReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyTraffic:
        self.report.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.report.stopped = time.monotonic()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += self.interval
            self.report.sent += 1
            try:
                status, body = fetch(*self.args)
                if status != 200:
                    raise RuntimeError(f"status {status}: {body[:80]}")
                self.report.bodies[body] = self.report.bodies.get(body, 0) + 1
            except Exception as exc:  # every kind of failure counts against zero-downtime
                self.report.failed += 1
                self.report.failures.append((time.monotonic(), str(exc)))
