"""The local DNS provider: RFC 1035 zone files answered by a real NSD process on loopback.

Records live in standard zone files under ``<home>/local-dns/zones/``. NSD, the authoritative-only
server from Debian's ``nsd`` package, serves them on 127.0.0.1:<port> over UDP and TCP. NSD was
chosen over bind9 because it is authoritative only (no resolver, no recursion to configure), reads
zone files directly, starts in tens of milliseconds, and reloads changed zone files on SIGHUP.

Dynia starts the server on first use, remembers its port in ``server.json``, and after each change
sends SIGHUP and waits until the server answers the zone's new SOA serial: a record that
``upsert_a_record`` returned is already resolvable. Zones are added explicitly (``add_zone``,
``ensure_zone``), passed to the constructor, or listed under ``local_dns_zones`` in the home's
``config.json``; a zone set change restarts the server because NSD reads zones from its config
only at start.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataset
import dns.rdatatype
import dns.zone

from dynia.errors import ProviderError
from dynia.files import atomic_write
from dynia.paths import HomeLayout
from dynia.providers.base import DnsRecord, Zone

DNS_SERVER_BINARY = "/usr/sbin/nsd"
DNS_SERVER_APT_PACKAGE = "nsd"
CONFIG_ZONES_KEY = "local_dns_zones"
LOOPBACK = "127.0.0.1"

_ZONE_TTL = 300
_SOA_TIMERS = "3600 600 86400 60"  # refresh retry expire negative-ttl
_START_TIMEOUT = 10.0
_RELOAD_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 3
_MAX_TTL = 2**31 - 1
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

log = logging.getLogger(__name__)


def find_dns_server_binary() -> str | None:
    """Path of the NSD binary, or None when the package is not installed.

    /usr/sbin is often missing from a non-root PATH, so the packaged location is checked too.
    """
    found = shutil.which("nsd")
    if found:
        return found
    return DNS_SERVER_BINARY if os.access(DNS_SERVER_BINARY, os.X_OK) else None


def normalize_domain(domain: str) -> str:
    """Lower-case, no trailing dot; ProviderError if it is not a valid DNS name."""
    name = domain.strip().lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ProviderError(
            f"{domain!r} is not a valid domain name",
            hint="use letters, digits and hyphens in dot-separated labels, e.g. app.example.test",
        )
    return name


@dataclass(frozen=True)
class ServerStatus:
    """The local DNS server as ``start()`` left it."""

    pid: int
    port: int
    started: bool  # False when it was already running
    moved_from_port: int | None = None  # the remembered port was taken by another program


class LocalDnsProvider:
    """DnsProvider backed by zone files and a local NSD process."""

    name = "local"

    def __init__(self, home: Path | str | HomeLayout, zones: Iterable[str] | None = None) -> None:
        self.layout = home if isinstance(home, HomeLayout) else HomeLayout(Path(home))
        self.dir = self.layout.local_dns_dir.absolute()  # NSD and /proc checks need absolute paths
        self._configured_zones = None if zones is None else [normalize_domain(z) for z in zones]
        self._defaults_ensured = False
        self._lock_file: int | None = None
        self._lock_depth = 0
        self.notices: list[str] = []  # operator-facing notes, e.g. a port move; the CLI shows them

    # ---- paths -------------------------------------------------------------------------------

    @property
    def zones_dir(self) -> Path:
        return self.dir / "zones"

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

    def zone_file(self, zone: str) -> Path:
        return self.zones_dir / f"{normalize_domain(zone)}.zone"

    # ---- zones -------------------------------------------------------------------------------

    def zones(self) -> list[Zone]:
        """Every zone this provider serves, sorted by name."""
        self._ensure_default_zones()
        return [Zone(id=name, name=name) for name in self._zone_names()]

    def add_zone(self, name: str) -> Zone:
        """Create an empty zone (SOA and NS only); ProviderError if it already exists."""
        zone = normalize_domain(name)
        if self.zone_file(zone).exists():
            raise ProviderError(
                f"local DNS zone {zone} already exists",
                hint="use ensure_zone() to accept an existing zone",
            )
        return self.ensure_zone(zone)

    def ensure_zone(self, name: str) -> Zone:
        """Create the zone if it is missing; the running server is restarted to serve it."""
        zone = normalize_domain(name)
        with self._locked():
            path = self.zone_file(zone)
            if not path.exists():
                self.zones_dir.mkdir(parents=True, exist_ok=True)
                _write_text(path, _empty_zone_text(zone, _next_serial(0)))
                self._apply_zone_set()
        return Zone(id=zone, name=zone)

    def remove_zone(self, name: str) -> None:
        """Delete a zone and its records; removing an absent zone is not an error."""
        zone = normalize_domain(name)
        with self._locked():
            path = self.zone_file(zone)
            if path.exists():
                path.unlink()
                self._apply_zone_set()

    def find_zone(self, domain: str) -> Zone:
        name = normalize_domain(domain)
        zone = self._zone_for(name)
        if zone is None:
            raise ProviderError(f"no local DNS zone holds {name}", hint=self._zone_hint(name))
        return Zone(id=zone, name=zone)

    # ---- records -----------------------------------------------------------------------------

    def upsert_a_record(self, domain: str, address: str, ttl: int = 60) -> DnsRecord:
        """Make ``address`` the only A record of ``domain``; returns once the server answers it."""
        name = normalize_domain(domain)
        ip = _ipv4(address)
        _check_ttl(ttl)
        zone = self.find_zone(name).name
        with self._locked():
            contents = self._read_zone(zone)
            relative = _relative(name, zone)
            current = contents.get_rdataset(relative, dns.rdatatype.A)
            if current is not None and current.ttl == ttl and _addresses(current) == {ip}:
                self.start()
            else:
                contents.replace_rdataset(relative, dns.rdataset.from_text("IN", "A", ttl, ip))
                self._publish(zone, contents)
        return DnsRecord(id=f"{name}/A", name=name, type="A", content=ip, ttl=ttl)

    def delete_a_record(self, domain: str) -> None:
        """Remove the A record(s) of ``domain``; absent records or zones are not an error."""
        name = normalize_domain(domain)
        zone = self._zone_for(name)
        if zone is None:
            return
        with self._locked():
            contents = self._read_zone(zone)
            relative = _relative(name, zone)
            if contents.get_rdataset(relative, dns.rdatatype.A) is not None:
                contents.delete_rdataset(relative, dns.rdatatype.A)
                self._publish(zone, contents)

    def list_records(self, zone: Zone) -> list[DnsRecord]:
        """Every record of the zone except its SOA, sorted by name and type."""
        contents = self._read_zone(normalize_domain(zone.name))
        records = []
        for name, rdataset in contents.iterate_rdatasets():
            if rdataset.rdtype == dns.rdatatype.SOA:
                continue
            fqdn = name.derelativize(contents.origin).to_text(omit_final_dot=True)
            kind = dns.rdatatype.to_text(rdataset.rdtype)
            for rdata in rdataset:
                records.append(
                    DnsRecord(f"{fqdn}/{kind}", fqdn, kind, rdata.to_text(), rdataset.ttl)
                )
        return sorted(records, key=lambda r: (r.name, r.type, r.content))

    def resolver_address(self) -> tuple[str, int] | None:
        """The running local server; started here so the address always answers."""
        return (LOOPBACK, self.start().port)

    # ---- server lifecycle --------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._running_pid() is not None

    def start(self) -> ServerStatus:
        """Start the server if it is not running with the current zones and port (idempotent)."""
        self._ensure_default_zones()
        with self._locked():
            pid = self._running_pid()
            port = self._saved_port()
            if pid is not None and port is not None and self._config_current(port):
                return ServerStatus(pid=pid, port=port, started=False)
            if pid is not None:
                self._stop_locked()
            return self._launch_locked(_require_binary())

    def stop(self) -> bool:
        """Stop the server; returns whether one was running."""
        with self._locked():
            return self._stop_locked()

    # ---- internals: zones --------------------------------------------------------------------

    def _zone_names(self) -> list[str]:
        if not self.zones_dir.is_dir():
            return []
        return sorted(path.name.removesuffix(".zone") for path in self.zones_dir.glob("*.zone"))

    def _zone_for(self, name: str) -> str | None:
        """The longest zone name that equals ``name`` or is a suffix of it at a label boundary."""
        self._ensure_default_zones()
        matches = [z for z in self._zone_names() if name == z or name.endswith("." + z)]
        return max(matches, key=len) if matches else None

    def _zone_hint(self, name: str) -> str:
        served = ", ".join(self._zone_names()) or "none"
        parent = ".".join(name.split(".")[-2:])
        return (
            f"zones served: {served}. Add one by listing it under "
            f'"{CONFIG_ZONES_KEY}" in {self.layout.config_file} (e.g. ["{parent}"])'
        )

    def _ensure_default_zones(self) -> None:
        """Create the constructor's or config.json's zones once per provider instance."""
        if self._defaults_ensured:
            return
        self._defaults_ensured = True
        wanted = self._configured_zones
        if wanted is None:
            wanted = [normalize_domain(z) for z in _config_zones(self.layout.config_file)]
        for zone in wanted:
            self.ensure_zone(zone)

    def _read_zone(self, zone: str) -> dns.zone.Zone:
        path = self.zone_file(zone)
        try:
            return dns.zone.from_file(str(path), origin=f"{zone}.", allow_include=False)
        except (OSError, dns.exception.DNSException) as exc:
            raise ProviderError(
                f"cannot read local DNS zone file {path}: {exc}",
                hint="fix or remove the file; remove_zone() and ensure_zone() recreate it empty",
            ) from exc

    def _publish(self, zone: str, contents: dns.zone.Zone) -> None:
        """Bump the serial, write the zone atomically, reload, wait until it is served."""
        serial = _bump_serial(contents)
        path = self.zone_file(zone)
        _write_text(path, contents.to_text(sorted=True, relativize=True, want_origin=True))
        status = self.start()
        old_servers: set[int] = set()
        if not status.started:
            old_servers = _server_pids(self.config_path)
            os.kill(status.pid, signal.SIGHUP)
        self._wait_for_serial(zone, serial, status.port)
        # NSD reloads by starting new server processes; the old ones keep answering (old data)
        # until they exit, so the change is served by everyone only once they are gone.
        self._wait_servers_gone(old_servers)

    def _apply_zone_set(self) -> None:
        """A running server reads zones only at start: restart it when the set changed."""
        port = self._saved_port()
        if self._running_pid() is not None and (port is None or not self._config_current(port)):
            self._stop_locked()
            self._launch_locked(_require_binary())

    # ---- internals: server -------------------------------------------------------------------

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
        for zone in self._zone_names():
            server += ["zone:", f'  name: "{zone}"', f'  zonefile: "{self.zone_file(zone)}"']
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
        _write_text(self.server_file, json.dumps({"port": port}) + "\n")
        if saved is not None:
            notice = (
                f"{LOOPBACK}:{saved} is taken by another program; "
                f"the local DNS server now listens on port {port}"
            )
            log.warning(notice)
            self.notices.append(notice)
        return port, saved

    def _launch_locked(self, binary: str) -> ServerStatus:
        """Start NSD, retrying on another port if one is taken between check and bind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._end_orphans()
        self.pid_path.unlink(missing_ok=True)  # stale: nothing of ours is running
        _trim_log(self.log_path)
        moved_from: int | None = None
        for _ in range(_PORT_ATTEMPTS):
            port, previous = self._choose_port()
            moved_from = moved_from or previous
            _write_text(self.config_path, self._render_config(port))
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
        deadline = time.monotonic() + _START_TIMEOUT
        while result.returncode == 0 and time.monotonic() < deadline:
            pid = self._running_pid()
            if pid is not None and _answers(port):
                return pid
            if pid is None and _pidfile_process_gone(self.pid_path):
                break  # the daemon wrote its pid and died
            time.sleep(0.01)
        output = self._log_since(log_offset)
        if "address already in use" in output.lower():
            return None
        raise ProviderError(
            f"the local DNS server (nsd, port {port}) did not start: {output.strip()[-600:]}",
            hint=f"check the zone files in {self.zones_dir} and {self.log_path}",
        )

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

    def _stop_locked(self) -> bool:
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

    def _wait_for_serial(self, zone: str, serial: int, port: int) -> None:
        deadline = time.monotonic() + _RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            served = _served_serial(zone, port)
            if served is not None and served >= serial:
                return
            time.sleep(0.005)
        raise ProviderError(
            f"the local DNS server did not load zone {zone} (serial {serial}) "
            f"within {_RELOAD_TIMEOUT:.0f} s",
            hint=f"see {self.log_path} for the reason; check {self.zone_file(zone)}",
        )

    def _wait_servers_gone(self, pids: set[int]) -> None:
        deadline = time.monotonic() + _RELOAD_TIMEOUT
        while pids & _server_pids(self.config_path):
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"the local DNS server's old processes {sorted(pids)} did not exit after "
                    "a reload",
                    hint=f"see {self.log_path}; stop() and start() the server",
                )
            time.sleep(0.005)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the directory, re-entrant within this provider instance."""
        if self._lock_depth == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_file = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_file is not None:
                os.close(self._lock_file)  # closing releases the flock
                self._lock_file = None


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


def _config_zones(config_file: Path) -> list[str]:
    try:
        data = json.loads(config_file.read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise ProviderError(
            f"{config_file} is not valid JSON: {exc}", hint="fix or remove the file"
        ) from exc
    zones = data.get(CONFIG_ZONES_KEY, []) if isinstance(data, dict) else []
    if not isinstance(zones, list) or not all(isinstance(z, str) for z in zones):
        raise ProviderError(
            f'"{CONFIG_ZONES_KEY}" in {config_file} must be a list of zone names',
            hint='e.g. "local_dns_zones": ["example.test"]',
        )
    return zones


def _empty_zone_text(zone: str, serial: int) -> str:
    # NS points outside the zone so no glue record is needed; the server is authoritative anyway.
    return (
        f"$ORIGIN {zone}.\n$TTL {_ZONE_TTL}\n"
        f"@ IN SOA localhost. hostmaster.{zone}. {serial} {_SOA_TIMERS}\n"
        "@ IN NS localhost.\n"
    )


def _next_serial(current: int) -> int:
    """Time-based and always increasing, so a re-created zone never goes backwards."""
    return max(current + 1, int(time.time())) % 2**32


def _bump_serial(contents: dns.zone.Zone) -> int:
    soa_set = contents.find_rdataset("@", dns.rdatatype.SOA)
    soa = soa_set[0]
    serial = _next_serial(soa.serial)
    contents.replace_rdataset("@", dns.rdataset.from_rdata(soa_set.ttl, soa.replace(serial=serial)))
    return serial


def _relative(name: str, zone: str) -> dns.name.Name:
    return dns.name.from_text(name).relativize(dns.name.from_text(zone))


def _addresses(rdataset: dns.rdataset.Rdataset) -> set[str]:
    return {rdata.address for rdata in rdataset}


def _ipv4(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address.strip()))
    except ValueError as exc:
        raise ProviderError(
            f"{address!r} is not an IPv4 address", hint="an A record needs e.g. 203.0.113.10"
        ) from exc


def _check_ttl(ttl: int) -> None:
    if not isinstance(ttl, int) or not 0 < ttl <= _MAX_TTL:
        raise ProviderError(f"TTL {ttl!r} is out of range", hint="use whole seconds, e.g. 60")


def _write_text(path: Path, text: str) -> None:
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_process_state(pid) in (None, "Z") for pid in pids):
            return True
        time.sleep(0.01)
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
