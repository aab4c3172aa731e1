"""The local DNS server: one NSD process on loopback serving a folder of RFC 1035 zone files.

NSD, the authoritative-only server from Debian's ``nsd`` package, serves every ``<zone>.zone``
file of the zones folder on 127.0.0.1:<port> over UDP and TCP. NSD was chosen over bind9 because
it is authoritative only (no resolver, no recursion to configure), reads zone files directly,
starts in tens of milliseconds, and reloads changed zone files on SIGHUP.

The server's files (config, pid, log, ``server.json`` with the remembered port) live in one
directory. :class:`NsdServer` starts the server on first use, keeps its port across restarts
when it is free, restarts it when the set of zone files changed (NSD reads zones from its config
only at start), and after a zone file changed sends SIGHUP and waits until the zone's new SOA
serial is served. It does not lock: its caller holds the directory's lock (``dns.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from dynia.errors import ProviderError
from dynia.files import atomic_write
from dynia.waiting import WaitTimeout, wait_until

DNS_SERVER_BINARY = "/usr/sbin/nsd"
DNS_SERVER_APT_PACKAGE = "nsd"
LOOPBACK = "127.0.0.1"

_START_TIMEOUT = 10.0
_RELOAD_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 3

log = logging.getLogger(__name__)


class _ServerExited(Exception):
    """The daemon NSD started exited before it answered."""


def find_dns_server_binary() -> str | None:
    """Path of the NSD binary, or None when the package is not installed.

    /usr/sbin is often missing from a non-root PATH, so the packaged location is checked too.
    """
    found = shutil.which("nsd")
    if found:
        return found
    return DNS_SERVER_BINARY if os.access(DNS_SERVER_BINARY, os.X_OK) else None


@dataclass(frozen=True)
class ServerStatus:
    """The local DNS server as ``start()`` left it."""

    pid: int
    port: int
    started: bool  # False when it was already running
    moved_from_port: int | None = None  # the remembered port was taken by another program


class NsdServer:
    """The NSD process of one directory, serving the ``*.zone`` files of ``zones_dir``.

    Not safe to share between processes by itself: callers hold an exclusive lock on
    ``directory`` around every call.
    """

    def __init__(self, directory: Path, zones_dir: Path) -> None:
        self.dir = directory  # absolute: NSD and the /proc checks compare paths
        self.zones_dir = zones_dir
        self.notices: list[str] = []  # operator-facing notes, e.g. a port move; the CLI shows them

    # ---- paths -------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.dir / "nsd.conf"

    @property
    def pid_path(self) -> Path:
        return self.dir / "nsd.pid"

    @property
    def log_path(self) -> Path:
        return self.dir / "nsd.log"

    @property
    def server_file(self) -> Path:
        return self.dir / "server.json"

    # ---- lifecycle ---------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._running_pid() is not None

    def start(self) -> ServerStatus:
        """Start the server if it is not running with the current zones and port (idempotent)."""
        pid = self._running_pid()
        port = self._saved_port()
        if pid is not None and port is not None and self._config_current(port):
            return ServerStatus(pid=pid, port=port, started=False)
        if pid is not None:
            self.stop()
        return self._launch(_require_binary())

    def stop(self) -> bool:
        """Stop the server; returns whether one was running."""
        pid = self._running_pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return False
        started = _server_pids(self.config_path, role="nsd") | {pid}
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(started, _STOP_TIMEOUT):
            for leftover in started & _server_pids(self.config_path, role="nsd"):
                os.kill(leftover, signal.SIGKILL)
            _wait_gone(started, _STOP_TIMEOUT)
        self.pid_path.unlink(missing_ok=True)
        return True

    def apply_zone_set(self) -> None:
        """A running server reads zones only at start: restart it when the set changed."""
        port = self._saved_port()
        if self._running_pid() is not None and (port is None or not self._config_current(port)):
            self.stop()
            self._launch(_require_binary())

    def reload(self, zone: str, serial: int) -> None:
        """Serve the changed file of ``zone``; returns once every server process answers
        ``serial`` (starting the server if it is not running)."""
        status = self.start()
        old_servers: set[int] = set()
        if not status.started:
            old_servers = _server_pids(self.config_path)
            os.kill(status.pid, signal.SIGHUP)
        self._wait_for_serial(zone, serial, status.port)
        # NSD reloads by starting new server processes; the old ones keep answering (old data)
        # until they exit, so the change is served by everyone only once they are gone.
        self._wait_servers_gone(old_servers)

    # ---- internals ---------------------------------------------------------------------------

    def _zone_files(self) -> list[Path]:
        if not self.zones_dir.is_dir():
            return []
        return sorted(self.zones_dir.glob("*.zone"))

    def _render_config(self, port: int) -> str:
        server = [
            "server:",
            f"  ip-address: {LOOPBACK}",
            f"  port: {port}",
            "  do-ip6: no",
            '  username: ""',  # no privilege drop: works for root and for an ordinary user
            '  chroot: ""',
            '  database: ""',
            f'  zonelistfile: "{self.dir / "zone.list"}"',
            f'  xfrdfile: "{self.dir / "xfrd.state"}"',
            f'  xfrdir: "{self.dir / "xfr"}"',
            f'  pidfile: "{self.pid_path}"',
            f'  logfile: "{self.log_path}"',
            "  server-count: 1",
            "  hide-version: yes",
            "  verbosity: 1",
            # Rate limiting would drop the bursts of queries verify and tests send from loopback.
            "  rrl-ratelimit: 0",
            "  rrl-whitelist-ratelimit: 0",
            "remote-control:",
            "  control-enable: no",
        ]
        for path in self._zone_files():
            zone = path.name.removesuffix(".zone")
            server += ["zone:", f'  name: "{zone}"', f'  zonefile: "{path}"']
        return "\n".join(server) + "\n"

    def _config_current(self, port: int) -> bool:
        try:
            return self.config_path.read_text() == self._render_config(port)
        except FileNotFoundError:
            return False

    def _saved_port(self) -> int | None:
        try:
            port = json.loads(self.server_file.read_text()).get("port")
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return port if isinstance(port, int) and 0 < port < 65536 else None

    def _choose_port(self) -> tuple[int, int | None]:
        """The remembered port if it is free, else a new one (and the one it replaces)."""
        saved = self._saved_port()
        if saved is not None and _port_free(saved):
            return saved, None
        port = _free_port()
        write_file(self.server_file, json.dumps({"port": port}) + "\n")
        if saved is not None:
            notice = (
                f"{LOOPBACK}:{saved} is taken by another program; "
                f"the local DNS server now listens on port {port}"
            )
            log.warning(notice)
            self.notices.append(notice)
        return port, saved

    def _launch(self, binary: str) -> ServerStatus:
        """Start NSD, retrying on another port if one is taken between check and bind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._end_orphans()
        self.pid_path.unlink(missing_ok=True)  # stale: nothing of ours is running
        _trim_log(self.log_path)
        moved_from: int | None = None
        for _ in range(_PORT_ATTEMPTS):
            port, previous = self._choose_port()
            moved_from = moved_from or previous
            write_file(self.config_path, self._render_config(port))
            pid = self._spawn(binary, port)
            if pid is not None:
                return ServerStatus(pid=pid, port=port, started=True, moved_from_port=moved_from)
            # The port went to someone else after the check: forget it and try a fresh one.
            self.server_file.unlink(missing_ok=True)
        raise ProviderError(
            f"the local DNS server could not bind a port on {LOOPBACK}",
            hint=f"see {self.log_path}; free some loopback ports and retry",
        )

    def _spawn(self, binary: str, port: int) -> int | None:
        """Run NSD (it daemonizes); its pid once it answers, None if the port was taken."""
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.dir / "nsd.stderr", "wb") as stderr:
            # A new session keeps Ctrl-C on the dynia command from reaching the server.
            result = subprocess.run(
                [binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
                timeout=_START_TIMEOUT,
                check=False,
            )
        if result.returncode == 0:
            try:
                return wait_until(
                    lambda: self._answering_pid(port),
                    timeout=_START_TIMEOUT,
                    interval=0.01,
                    what=f"the local DNS server on port {port}",
                )
            except (WaitTimeout, _ServerExited):
                pass  # the log says why
        output = self._log_since(log_offset)
        if "address already in use" in output.lower():
            return None
        raise ProviderError(
            f"the local DNS server (nsd, port {port}) did not start: {output.strip()[-600:]}",
            hint=f"check the zone files in {self.zones_dir} and {self.log_path}",
        )

    def _answering_pid(self, port: int) -> int | None:
        """The started daemon's pid once it answers on ``port``; _ServerExited if it died."""
        pid = self._running_pid()
        if pid is not None and _answers(port):
            return pid
        if pid is None and _pidfile_process_gone(self.pid_path):
            raise _ServerExited  # the daemon wrote its pid and died
        return None

    def _log_since(self, offset: int) -> str:
        parts = []
        with contextlib.suppress(OSError), open(self.log_path, "rb") as handle:
            handle.seek(offset)
            parts.append(handle.read().decode(errors="replace"))
        with contextlib.suppress(OSError):
            parts.append((self.dir / "nsd.stderr").read_text(errors="replace"))
        return "\n".join(p for p in parts if p)

    def _running_pid(self) -> int | None:
        """The pid in the pidfile if it is a live NSD serving this directory's config."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_our_server(pid, self.config_path) else None

    def _end_orphans(self) -> None:
        """Stop servers this home started whose pidfile was lost, so they free the port."""
        orphans = _server_pids(self.config_path, role="nsd")
        for pid in orphans:
            os.kill(pid, signal.SIGTERM)
        if orphans and not _wait_gone(orphans, _STOP_TIMEOUT):
            for pid in orphans & _server_pids(self.config_path, role="nsd"):
                os.kill(pid, signal.SIGKILL)

    def _wait_for_serial(self, zone: str, serial: int, port: int) -> None:
        def loaded() -> bool:
            served = _served_serial(zone, port)
            return served is not None and served >= serial

        try:
            wait_until(loaded, timeout=_RELOAD_TIMEOUT, interval=0.005, what=f"zone {zone}")
        except WaitTimeout:
            raise ProviderError(
                f"the local DNS server did not load zone {zone} (serial {serial}) "
                f"within {_RELOAD_TIMEOUT:.0f} s",
                hint=f"see {self.log_path} for the reason; check {self.zones_dir / f'{zone}.zone'}",
            ) from None

    def _wait_servers_gone(self, pids: set[int]) -> None:
        try:
            wait_until(
                lambda: not (pids & _server_pids(self.config_path)),
                timeout=_RELOAD_TIMEOUT,
                interval=0.005,
                what="the old server processes to exit",
            )
        except WaitTimeout:
            raise ProviderError(
                f"the local DNS server's old processes {sorted(pids)} did not exit after a reload",
                hint=f"see {self.log_path}; stop() and start() the server",
            ) from None


# ---- helpers -----------------------------------------------------------------------------------


def _require_binary() -> str:
    binary = find_dns_server_binary()
    if binary is None:
        raise ProviderError(
            "the local DNS server (nsd) is not installed",
            hint=(
                f"run `dynia local setup` as root, or `apt-get install {DNS_SERVER_APT_PACKAGE}`"
            ),
        )
    return binary


def write_file(path: Path, text: str) -> None:
    """Write atomically; the mtime always moves so NSD's reload sees the change."""
    previous = path.stat().st_mtime_ns if path.exists() else None

    def newer_than_before(temp: Path) -> None:
        if previous is not None and temp.stat().st_mtime_ns <= previous:
            # Coarse file-system clocks could hide a change from NSD's mtime check.
            bumped = previous + 1_000_000_000
            os.utime(temp, ns=(bumped, bumped))

    atomic_write(path, text.encode(), 0o644, before_rename=newer_than_before)


def _port_free(port: int) -> bool:
    """Whether both UDP and TCP can bind ``port`` on loopback right now."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                # NSD sets SO_REUSEADDR too, so TIME_WAIT leftovers do not count as taken.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def _free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = probe.getsockname()[1]
        if _port_free(port):
            return port
    raise ProviderError(
        f"no free port on {LOOPBACK} for the local DNS server",
        hint="free some loopback ports and retry",
    )


def _is_our_server(pid: int, config_path: Path) -> bool:
    """A live (not zombie) process whose command line names this config: never a reused pid."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _process_state(pid) not in (None, "Z") and str(config_path).encode() in argv


def _trim_log(path: Path, limit: int = 1 << 20) -> None:
    """NSD appends two lines per reload forever: start each server with a short log."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > limit:
            path.unlink()


def _process_state(pid: int) -> str | None:
    """The one-letter state of a process, None when it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _pidfile_process_gone(pid_path: Path) -> bool:
    """The pidfile holds a whole pid whose process has exited (a half-written file does not)."""
    try:
        pid = int(pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    return _process_state(pid) in (None, "Z")


def _server_pids(config_path: Path, role: str = "nsd: server") -> set[int]:
    """Live NSD processes for this config whose name starts with ``role``.

    NSD names its processes "nsd: xfrd", "nsd: main" and "nsd: server N"; the command line
    (with our config path) tells them apart from any other NSD on the machine.
    """
    pids = set()
    needle = str(config_path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith(role):
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in argv and _process_state(int(entry.name)) not in (None, "Z"):
            pids.add(int(entry.name))
    return pids


def _wait_gone(pids: set[int], timeout: float) -> bool:
    try:
        return wait_until(
            lambda: all(_process_state(pid) in (None, "Z") for pid in pids),
            timeout=timeout,
            interval=0.01,
            what=f"processes {sorted(pids)} to exit",
        )
    except WaitTimeout:
        return False


def _query(name: str, rdtype: str, port: int) -> dns.message.Message | None:
    query = dns.message.make_query(name, rdtype)
    try:
        return dns.query.udp(query, LOOPBACK, port=port, timeout=0.25)
    except (dns.exception.DNSException, OSError):
        return None


def _answers(port: int) -> bool:
    """Any DNS reply (REFUSED for a name outside our zones included) means the server is up."""
    return _query(".", "SOA", port) is not None


def _served_serial(zone: str, port: int) -> int | None:
    response = _query(f"{zone}.", "SOA", port)
    if response is None or response.rcode() != dns.rcode.NOERROR:
        return None
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return rrset[0].serial
    return None
