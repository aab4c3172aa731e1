"""The local DNS provider against a real NSD process, queried with dnspython over UDP and TCP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from dynia.errors import ProviderError
from dynia.paths import HomeLayout
from dynia.providers import get_dns_provider
from dynia.providers.base import DnsProvider
from dynia.providers.local.dns import LocalDnsProvider
from dynia.providers.local.nsd import DNS_SERVER_APT_PACKAGE, find_dns_server_binary


@pytest.fixture(scope="session", autouse=True)
def dns_server_installed() -> None:
    """Install the packaged server as `dynia local setup` would, when running as root."""
    if find_dns_server_binary() is not None:
        return
    assert os.geteuid() == 0, f"install {DNS_SERVER_APT_PACKAGE} (apt-get) to run these tests"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = shutil.which("apt-get") or "apt-get"
    install = [apt, "install", "-y", "--no-install-recommends", DNS_SERVER_APT_PACKAGE]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run([apt, "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    assert find_dns_server_binary() is not None


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def provider(home: Path) -> Iterator[LocalDnsProvider]:
    dns_provider = LocalDnsProvider(home, zones=["example.test"])
    try:
        yield dns_provider
    finally:
        dns_provider.stop()


def ask(
    server: tuple[str, int] | None, name: str, tcp: bool = False, timeout: float = 2
) -> tuple[str, set[str]]:
    """(rcode, A addresses) for ``name``, asked the way a resolver would."""
    assert server is not None
    host, port = server
    query = dns.message.make_query(name, "A")
    send = dns.query.tcp if tcp else dns.query.udp
    response = send(query, host, port=port, timeout=timeout)
    addresses = {rdata.address for rrset in response.answer for rdata in rrset}
    return dns.rcode.to_text(response.rcode()), addresses


def test_record_is_answered_then_gone_after_delete(provider: LocalDnsProvider) -> None:
    assert isinstance(provider, DnsProvider)
    started = time.monotonic()
    record = provider.upsert_a_record("www.example.test", "10.20.30.40", ttl=60)
    print(f"first upsert incl. server start: {time.monotonic() - started:.3f} s")
    assert (record.id, record.name, record.content, record.ttl) == (
        "www.example.test/A",
        "www.example.test",
        "10.20.30.40",
        60,
    )
    server = provider.resolver_address()
    assert ask(server, "www.example.test") == ("NOERROR", {"10.20.30.40"})
    assert ask(server, "www.example.test", tcp=True) == ("NOERROR", {"10.20.30.40"})

    started = time.monotonic()
    provider.upsert_a_record("www.example.test", "10.20.30.41")
    print(f"upsert + reload: {time.monotonic() - started:.3f} s")
    assert ask(server, "www.example.test") == ("NOERROR", {"10.20.30.41"})
    assert [r.content for r in provider.list_records(provider.find_zone("example.test"))] == [
        "localhost.",
        "10.20.30.41",
    ]

    started = time.monotonic()
    provider.delete_a_record("www.example.test")
    print(f"delete + reload: {time.monotonic() - started:.3f} s")
    assert ask(server, "www.example.test") == ("NXDOMAIN", set())
    provider.delete_a_record("www.example.test")  # already gone: not an error
    assert [r.type for r in provider.list_records(provider.find_zone("example.test"))] == ["NS"]


def test_zone_file_is_standard_and_serial_moves(provider: LocalDnsProvider) -> None:
    provider.upsert_a_record("app.example.test", "192.0.2.7")
    zone_file = provider.zone_file("example.test")
    checked = subprocess.run(
        ["nsd-checkzone", "example.test", str(zone_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "app 60 IN A 192.0.2.7" in zone_file.read_text()

    def serial() -> int:
        host, port = provider.resolver_address() or ("", 0)
        query = dns.message.make_query("example.test", "SOA")
        response = dns.query.udp(query, host, port=port, timeout=2)
        return response.answer[0][0].serial

    before = serial()
    provider.upsert_a_record("app.example.test", "192.0.2.7")  # unchanged: no new serial
    assert serial() == before
    provider.upsert_a_record("app.example.test", "192.0.2.8")
    assert serial() > before


def test_domain_outside_any_zone_is_refused(provider: LocalDnsProvider, home: Path) -> None:
    provider.upsert_a_record("www.example.test", "10.0.0.1")
    zone_before = provider.zone_file("example.test").read_text()
    with pytest.raises(ProviderError, match=r"no local DNS zone holds app\.other\.org") as caught:
        provider.upsert_a_record("app.other.org", "10.0.0.2")
    hint = caught.value.hint or ""
    assert "example.test" in hint and "local_dns_zones" in hint and '"other.org"' in hint
    with pytest.raises(ProviderError, match="no local DNS zone"):
        provider.find_zone("notexample.test")  # a suffix, but not at a label boundary
    assert provider.zone_file("example.test").read_text() == zone_before
    assert not (provider.zones_dir / "other.org.zone").exists()
    with pytest.raises(ProviderError, match="not an IPv4 address"):
        provider.upsert_a_record("www.example.test", "10.0.0.300")


def test_server_restarts_after_stop_and_keeps_records(provider: LocalDnsProvider) -> None:
    provider.upsert_a_record("db.example.test", "10.9.9.9")
    server = provider.resolver_address()
    first = provider.start()
    assert not first.started and provider.start().pid == first.pid  # idempotent

    assert provider.stop() is True
    assert not provider.is_running() and not provider.pid_path.exists()
    with pytest.raises((dns.exception.Timeout, ConnectionRefusedError)):
        ask(server, "db.example.test", timeout=0.3)
    assert provider.stop() is False

    started = time.monotonic()
    again = provider.start()
    print(f"server start: {time.monotonic() - started:.3f} s")
    assert again.started and again.port == server[1] and again.pid != first.pid
    assert ask(server, "db.example.test") == ("NOERROR", {"10.9.9.9"})


def test_longest_suffix_zone_wins(provider: LocalDnsProvider) -> None:
    provider.start()
    started = time.monotonic()
    provider.add_zone("dev.example.test")  # the running server is restarted to serve it
    print(f"add zone (server restart): {time.monotonic() - started:.3f} s")
    with pytest.raises(ProviderError, match="already exists"):
        provider.add_zone("dev.example.test")

    assert provider.find_zone("a.dev.example.test").name == "dev.example.test"
    assert provider.find_zone("dev.example.test").name == "dev.example.test"
    assert provider.find_zone("a.xdev.example.test").name == "example.test"
    assert provider.find_zone("WWW.Example.Test.").name == "example.test"

    provider.upsert_a_record("a.dev.example.test", "10.1.0.1")
    provider.upsert_a_record("a.example.test", "10.2.0.1")
    server = provider.resolver_address()
    assert ask(server, "a.dev.example.test") == ("NOERROR", {"10.1.0.1"})
    assert ask(server, "a.example.test") == ("NOERROR", {"10.2.0.1"})
    dev_names = [r.name for r in provider.list_records(provider.find_zone("dev.example.test"))]
    top_names = [r.name for r in provider.list_records(provider.find_zone("example.test"))]
    assert "a.dev.example.test" in dev_names and "a.dev.example.test" not in top_names

    provider.remove_zone("dev.example.test")
    assert provider.find_zone("a.dev.example.test").name == "example.test"
    assert ask(server, "a.dev.example.test") == ("NXDOMAIN", set())


def test_stale_pidfile_and_taken_port_do_not_break_it(provider: LocalDnsProvider) -> None:
    provider.upsert_a_record("www.example.test", "10.3.3.3")
    old_port = provider.start().port
    provider.stop()

    # A pidfile naming a live process that is not our server (this test process).
    provider.pid_path.write_text(f"{os.getpid()}\n")
    assert not provider.is_running()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", old_port))
        status = provider.start()
        assert status.started and status.port != old_port
        assert status.moved_from_port == old_port
        assert any(str(old_port) in notice for notice in provider.notices)
        assert provider.resolver_address() == ("127.0.0.1", status.port)
        assert ask(provider.resolver_address(), "www.example.test") == ("NOERROR", {"10.3.3.3"})
    saved = json.loads((provider.dir / "server.json").read_text())
    assert saved == {"port": status.port}


def test_server_whose_pidfile_was_lost_is_replaced_not_duplicated(
    provider: LocalDnsProvider,
) -> None:
    provider.upsert_a_record("www.example.test", "10.5.5.5")
    first = provider.start()
    provider.pid_path.unlink()
    assert not provider.is_running()

    second = provider.start()
    assert second.started and second.port == first.port and second.moved_from_port is None
    assert _state(first.pid) in ("gone", "Z")  # the orphan was ended, not left beside it
    assert ask(provider.resolver_address(), "www.example.test") == ("NOERROR", {"10.5.5.5"})


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_zones_from_the_home_config_via_the_registry(home: Path) -> None:
    layout = HomeLayout(home)
    home.mkdir(parents=True)
    layout.config_file.write_text(json.dumps({"local_dns_zones": ["corp.test"]}))
    dns_provider = get_dns_provider("local", layout)
    try:
        assert [z.name for z in dns_provider.zones()] == ["corp.test"]
        dns_provider.upsert_a_record("corp.test", "10.4.4.4")  # the zone apex itself
        assert ask(dns_provider.resolver_address(), "corp.test") == ("NOERROR", {"10.4.4.4"})
    finally:
        dns_provider.stop()
