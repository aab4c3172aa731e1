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
    def __init__(
        self, address: str, domain: str, context: ssl.SSLContext, timeout: float = 3
    ) -> None:
        super().__init__(domain, 443, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, 443), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def fetch(
    address: str,
    domain: str,
    path: str,
    ca_file: Path,
    timeout: float = 3,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca_file))
    connection = _AddressedConnection(address, domain, context, timeout)
    try:
        connection.request("GET", path, headers=headers or {})
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
    slowest: float = 0.0  # seconds of the longest request that succeeded

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
            sent_at = time.monotonic()
            try:
                status, body = fetch(*self.args)
                if status != 200:
                    raise RuntimeError(f"status {status}: {body[:80]}")
                self.report.bodies[body] = self.report.bodies.get(body, 0) + 1
                self.report.slowest = max(self.report.slowest, time.monotonic() - sent_at)
            except Exception as exc:  # every kind of failure counts against zero-downtime
                self.report.failed += 1
                self.report.failures.append((time.monotonic(), str(exc)))


@dataclass
class Outcome:
    """One request of a timeline: when it started and ended (monotonic seconds), how it ended."""

    started: float
    ended: float
    error: str = ""

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Timeline:
    """Every request sent around a fault, and the moment the fault was made."""

    outcomes: list[Outcome] = field(default_factory=list)
    fault_at: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def late(self, threshold: float = 0.5) -> list[Outcome]:
        return [o for o in self.outcomes if not o.error and o.seconds > threshold]

    def outage(self, threshold: float = 0.5) -> float:
        """Seconds from the fault until requests stop failing or being late (0 when none was)."""
        bad = [o for o in self.outcomes if o.error or o.seconds > threshold]
        bad = [o for o in bad if o.started >= self.fault_at - 30]
        return max((o.started - self.fault_at for o in bad), default=0.0)

    def summary(self) -> str:
        late = self.late()
        slowest = max((o.seconds for o in self.outcomes), default=0.0)
        counts = (
            f"{len(self.outcomes)} sent, {len(self.failed)} failed, {len(late)} late (>0.5 s), "
            f"slowest {slowest:.2f} s"
        )
        if not self.fault_at:
            return counts
        return (
            f"{len(self.outcomes)} sent, {len(self.failed)} failed, {len(late)} late (>0.5 s), "
            f"slowest {slowest:.2f} s; requests failed or were late (>0.5 s) when started up to "
            f"{self.outage():.2f} s after the fault, failed or had to resend their SYN (>0.9 s) "
            f"up to {self.outage(0.9):.2f} s after it"
        )


class ConcurrentTraffic:
    """Starts a GET every 1/``rate`` seconds, each on its own thread, whatever the others do.

    A request that hangs does not hold the next ones back, so the timeline shows what a crowd of
    clients would see: requests that fail, and requests that succeed late.
    """

    def __init__(
        self,
        address: str,
        domain: str,
        path: str,
        ca_file: Path,
        rate: float = 50.0,
        timeout: float = 20.0,
    ) -> None:
        self.args = (address, domain, path, ca_file)
        self.interval = 1.0 / rate
        self.timeout = timeout
        self.timeline = Timeline()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._scheduler = threading.Thread(target=self._schedule, daemon=True)

    def __enter__(self) -> ConcurrentTraffic:
        self._scheduler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._scheduler.join(timeout=10)
        for worker in self._workers:
            worker.join(timeout=self.timeout + 5)

    def mark_fault(self) -> None:
        self.timeline.fault_at = time.monotonic()

    def _schedule(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += self.interval
            worker = threading.Thread(target=self._one, daemon=True)
            worker.start()
            self._workers.append(worker)

    def _one(self) -> None:
        started = time.monotonic()
        error = ""
        try:
            status, body = fetch(*self.args, timeout=self.timeout)
            if status != 200:
                error = f"status {status}: {body[:80]}"
        except Exception as exc:  # every kind of failure counts against zero-downtime
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.timeline.outcomes.append(Outcome(started, time.monotonic(), error))
