"""The local certificate authority and the cluster certificates it issues.

For the local provider no public CA can reach the cluster, so Dynia runs its own: a CA kept in
``<home>/pki/`` (ca.pem, ca.key 0600, created once) that issues one certificate per cluster. The
cluster certificate goes to ``clusters/<c>/tls/cluster.pem`` in HAProxy's format (certificate
chain and private key in one PEM, 0600); the renderer copies it into deploy-config. Its SANs are
the cluster's domains plus ``<cluster>.dynia.internal``, so a certificate exists before any route.
End-to-end verify trusts ``ca.pem``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dynia.errors import UsageError
from dynia.paths import HomeLayout

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=90)
INTERNAL_SUFFIX = "dynia.internal"
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks slightly behind ours (nodes, clients)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class CertificateBundle:
    cluster: str
    pem_path: Path  # certificate chain + private key, HAProxy's format
    ca_path: Path
    fingerprint_sha256: str  # hex of the leaf certificate's DER
    domains: tuple[str, ...]  # the SANs, in issue order
    not_after: dt.datetime

    def covers(self, domains: list[str]) -> bool:
        """Whether every domain is one of this certificate's SANs."""
        return {_normalize(d) for d in domains} <= set(self.domains)


def cluster_internal_name(cluster: str) -> str:
    return f"{cluster}.{INTERNAL_SUFFIX}"


def ca_certificate_path(layout: HomeLayout) -> Path:
    return layout.pki_dir / "ca.pem"


def ca_key_path(layout: HomeLayout) -> Path:
    return layout.pki_dir / "ca.key"


def cluster_certificate_path(layout: HomeLayout, cluster: str) -> Path:
    return layout.tls_dir(cluster) / "cluster.pem"


def ensure_ca(layout: HomeLayout) -> Path:
    """Create the CA once (under a lock, so two commands never make two CAs); its cert path."""
    with _pki_lock(layout):
        if not ca_certificate_path(layout).exists():
            _create_ca(layout)
    return ca_certificate_path(layout)


def issue_cluster_certificate(
    layout: HomeLayout, cluster: str, domains: list[str]
) -> CertificateBundle:
    """Issue a fresh key and certificate for ``domains`` + the cluster-local name."""
    names = _san_list(cluster, domains)
    ensure_ca(layout)
    ca_cert, ca_key = _load_ca(layout)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + LEAF_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = (
        cert.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
        + _private_pem(key)
    )
    path = cluster_certificate_path(layout, cluster)
    _ensure_private_dir(path.parent)
    _atomic_write(path, pem, 0o600)
    return _bundle(layout, cluster, cert)


def current_certificate(layout: HomeLayout, cluster: str) -> CertificateBundle | None:
    """The cluster's issued certificate, or None if none was issued (or the file is unusable)."""
    path = cluster_certificate_path(layout, cluster)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return _bundle(layout, cluster, cert)


def _bundle(layout: HomeLayout, cluster: str, cert: x509.Certificate) -> CertificateBundle:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return CertificateBundle(
        cluster=cluster,
        pem_path=cluster_certificate_path(layout, cluster),
        ca_path=ca_certificate_path(layout),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        domains=tuple(sans.get_values_for_type(x509.DNSName)),
        not_after=cert.not_valid_after_utc,
    )


def _create_ca(layout: HomeLayout) -> None:
    _ensure_private_dir(layout.pki_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    # The home path in the name tells two homes' CAs apart in a browser's or OS trust store.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dynia"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Dynia local CA {str(layout.root)[-40:]}"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a ca.pem without its key would look like a finished CA to the next command.
    _atomic_write(ca_key_path(layout), _private_pem(key), 0o600)
    _atomic_write(ca_certificate_path(layout), cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_ca(layout: HomeLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca_certificate_path(layout).read_bytes())
        key = serialization.load_pem_private_key(ca_key_path(layout).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"the local CA in {layout.pki_dir} is unreadable: {exc}",
            hint=f"restore ca.pem and ca.key, or remove {layout.pki_dir} to create a new CA "
            "(clients trusting the old one must then trust the new ca.pem)",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(
            f"the local CA key {ca_key_path(layout)} is not an EC key",
            hint=f"remove {layout.pki_dir} to create a new CA",
        )
    return cert, key


def _san_list(cluster: str, domains: list[str]) -> list[str]:
    """The given domains (normalized, de-duplicated, in order), then the cluster-local name."""
    names: list[str] = []
    for domain in [*domains, cluster_internal_name(cluster)]:
        name = _normalize(domain)
        if name not in names:
            names.append(name)
    return names


def _normalize(domain: str) -> str:
    name = domain.strip().lower().rstrip(".")
    labels = name.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]  # a wildcard is allowed only as the whole leftmost label
    if not name or len(name) > 253 or not labels or not all(_LABEL.match(x) for x in labels):
        raise UsageError(
            f"{domain!r} is not a valid domain name for a certificate",
            hint="use letters, digits and hyphens in dot-separated labels, e.g. app.example.test",
        )
    return name


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


@contextlib.contextmanager
def _pki_lock(layout: HomeLayout) -> Iterator[None]:
    _ensure_private_dir(layout.pki_dir)
    fd = os.open(layout.pki_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """The file appears complete with its final mode, or not at all: keys are never readable."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
