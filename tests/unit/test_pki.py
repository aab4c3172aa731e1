"""The local CA: a TLS client that trusts it accepts the cluster's domains and nothing else."""

from __future__ import annotations

import contextlib
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynia import pki
from dynia.errors import UsageError
from dynia.paths import HomeLayout


@pytest.fixture
def layout(tmp_path: Path) -> HomeLayout:
    return HomeLayout(tmp_path / "home")


@contextlib.contextmanager
def tls_server(pem: Path) -> Iterator[int]:
    """A TLS server on loopback that presents ``pem`` and answers each handshake with 'hello'."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            with raw, contextlib.suppress(ssl.SSLError, OSError):
                raw.settimeout(5)
                with context.wrap_socket(raw, server_side=True) as conn:
                    conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def fetch(port: int, hostname: str, cafile: Path | None) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as conn,
    ):
        return conn.recv(5)


def test_client_trusting_the_ca_accepts_sans_and_rejects_other_names(layout: HomeLayout) -> None:
    bundle = pki.issue_cluster_certificate(layout, "prod", ["app.example.test", "api.example.test"])
    assert bundle.domains == ("app.example.test", "api.example.test", "prod.dynia.internal")

    with tls_server(bundle.pem_path) as port:
        for name in bundle.domains:
            assert fetch(port, name, bundle.ca_path) == b"hello"
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            fetch(port, "other.example.test", bundle.ca_path)
        # Without the Dynia CA the same certificate is not trusted at all.
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate"):
            fetch(port, "app.example.test", None)


def test_certificate_exists_before_any_route(layout: HomeLayout) -> None:
    assert pki.current_certificate(layout, "prod") is None
    bundle = pki.issue_cluster_certificate(layout, "prod", [])
    assert bundle.domains == ("prod.dynia.internal",)
    with tls_server(bundle.pem_path) as port:
        assert fetch(port, "prod.dynia.internal", pki.ca_certificate_path(layout)) == b"hello"


def test_keys_are_private_and_ca_is_created_once(layout: HomeLayout) -> None:
    first = pki.issue_cluster_certificate(layout, "prod", ["app.example.test"])
    ca_pem = pki.ca_certificate_path(layout).read_bytes()
    ca_key = pki.ca_key_path(layout).read_bytes()

    second = pki.issue_cluster_certificate(layout, "prod", ["app.example.test", "new.example.test"])

    assert pki.ca_certificate_path(layout).read_bytes() == ca_pem
    assert pki.ca_key_path(layout).read_bytes() == ca_key
    assert second.fingerprint_sha256 != first.fingerprint_sha256
    assert pki.current_certificate(layout, "prod") == second
    assert second.covers(["NEW.example.test."]) and not first.covers(["new.example.test"])
    for path, mode in (
        (pki.ca_key_path(layout), 0o600),
        (second.pem_path, 0o600),
        (pki.ca_certificate_path(layout), 0o644),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    pem = second.pem_path.read_text()
    assert pem.count("BEGIN CERTIFICATE") == 2 and pem.count("BEGIN PRIVATE KEY") == 1


def test_rotated_certificate_is_served_and_verified(layout: HomeLayout) -> None:
    pki.issue_cluster_certificate(layout, "prod", ["app.example.test"])
    rotated = pki.issue_cluster_certificate(layout, "prod", ["app.example.test"])
    with tls_server(rotated.pem_path) as port:
        assert fetch(port, "app.example.test", rotated.ca_path) == b"hello"


def test_invalid_domain_is_refused_and_nothing_written(layout: HomeLayout) -> None:
    with pytest.raises(UsageError, match="not a valid domain") as caught:
        pki.issue_cluster_certificate(layout, "prod", ["bad domain.test"])
    assert caught.value.hint
    assert pki.current_certificate(layout, "prod") is None
    assert not pki.ca_certificate_path(layout).exists()
