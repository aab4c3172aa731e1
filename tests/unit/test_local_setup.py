"""`dynia local setup` and `dynia local doctor`: the DNS server is part of what they provide."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynia.operations import local_setup
from dynia.providers.local.nsd import DNS_SERVER_APT_PACKAGE, DNS_SERVER_BINARY


def test_setup_installs_the_dns_server_package() -> None:
    assert DNS_SERVER_APT_PACKAGE == "nsd"
    assert "nsd" in local_setup.wanted_packages()
    assert set(local_setup.BASE_PACKAGES) < set(local_setup.wanted_packages())


def test_doctor_checks_the_dns_server_and_names_its_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nsd"
    monkeypatch.setattr(local_setup, "DNS_SERVER_BINARY", str(missing))

    check = [c for c in local_setup.doctor() if c.name == "dns server"]

    assert len(check) == 1 and not check[0].ok
    assert check[0].detail == f"{missing} is not installed"
    assert check[0].fix == "sudo apt-get install nsd"


def test_doctor_finds_an_installed_dns_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_setup, "DNS_SERVER_BINARY", "/bin/sh")  # any file that exists
    check = [c for c in local_setup.doctor() if c.name == "dns server"]
    assert len(check) == 1 and check[0].ok and check[0].detail == "/bin/sh is installed"
    assert DNS_SERVER_BINARY == "/usr/sbin/nsd"
