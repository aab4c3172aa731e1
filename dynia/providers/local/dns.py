"""The local DNS provider: zones and their records, kept as RFC 1035 zone files.

Records live in standard zone files under ``<home>/local-dns/zones/``, one ``<zone>.zone`` per
zone, served by the local NSD process (``nsd.py``). After each change the provider bumps the
zone's SOA serial and has the server reload it, and returns only once the new serial is served:
a record that ``upsert_a_record`` returned is already resolvable. Zones are added explicitly
(``add_zone``, ``ensure_zone``), passed to the constructor, or listed under ``local_dns_zones``
in the home's ``config.json``; a zone set change restarts the server because NSD reads zones from
its config only at start. One lock on ``<home>/local-dns/`` covers the zone files and the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataset
import dns.rdatatype
import dns.zone

from dynia.errors import ProviderError
from dynia.paths import HomeLayout
from dynia.providers.base import DnsRecord, Zone
from dynia.providers.local.nsd import (
    LOOPBACK,
    NsdServer,
    ServerStatus,
    write_file,
)

CONFIG_ZONES_KEY = "local_dns_zones"

_ZONE_TTL = 300
_SOA_TIMERS = "3600 600 86400 60"  # refresh retry expire negative-ttl
_MAX_TTL = 2**31 - 1
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

__all__ = [
    "CONFIG_ZONES_KEY",
    "LocalDnsProvider",
    "normalize_domain",
]


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
        self.server = NsdServer(self.dir, self.zones_dir)
        self.notices = self.server.notices  # operator-facing notes, e.g. a port move (CLI shows)

    # ---- paths -------------------------------------------------------------------------------

    @property
    def zones_dir(self) -> Path:
        return self.dir / "zones"

    @property
    def pid_path(self) -> Path:
        return self.server.pid_path

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
                write_file(path, _empty_zone_text(zone, _next_serial(0)))
                self.server.apply_zone_set()
        return Zone(id=zone, name=zone)

    def remove_zone(self, name: str) -> None:
        """Delete a zone and its records; removing an absent zone is not an error."""
        zone = normalize_domain(name)
        with self._locked():
            path = self.zone_file(zone)
            if path.exists():
                path.unlink()
                self.server.apply_zone_set()

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
        return self.server.is_running()

    def start(self) -> ServerStatus:
        """Start the server if it is not running with the current zones and port (idempotent)."""
        self._ensure_default_zones()
        with self._locked():
            return self.server.start()

    def stop(self) -> bool:
        """Stop the server; returns whether one was running."""
        with self._locked():
            return self.server.stop()

    # ---- internals: zones --------------------------------------------------------------------

    def _zone_names(self) -> list[str]:
        # The server serves exactly these files (NsdServer lists the same ``*.zone`` files).
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
        write_file(path, contents.to_text(sorted=True, relativize=True, want_origin=True))
        self.server.reload(zone, serial)

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
