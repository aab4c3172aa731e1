"""The local certificate authority and the cluster certificates it issues.

For the local provider no public CA can reach the cluster, so Dynia runs its own: a CA kept in
``<home>/pki/`` (ca.pem, ca.key 0600, created once) that issues one certificate per cluster. The
cluster certificate goes to ``clusters/<c>/tls/cluster.pem`` in HAProxy's format (certificate
chain and private key in one PEM, 0600); the renderer copies it into deploy-config. Its SANs are
the cluster's domains plus ``<cluster>.dynia.internal``, so a certificate exists before any route.
End-to-end verify trusts ``ca.pem``.

A cluster may instead carry a certificate from an external CA (Cloudflare's Origin CA):
``store_external_certificate`` writes it in the same format and place, so the renderer ships it
unchanged, and records it in ``clusters/<c>/tls/issued.json`` (issuer, the CA's id, fingerprint).
When a certificate replaces an external one, the old one is listed there as superseded until
``mark_revoked`` says the CA revoked it; ``pending_revocations`` never lists the certificate the
file ``cluster.pem`` still holds, whatever order a crash left the two files in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dynia.errors import UsageError
from dynia.files import atomic_write
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
    issuer: str = "local"  # "local", or the external CA recorded in issued.json

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


def issued_record_path(layout: HomeLayout, cluster: str) -> Path:
    return layout.tls_dir(cluster) / "issued.json"


@dataclass(frozen=True)
class ExternalCertificate:
    """A certificate an external CA issued for the cluster, as that CA names it."""

    issuer: str  # e.g. "cloudflare-origin"
    id: str  # the CA's identifier, used to revoke it
    fingerprint_sha256: str


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
    _retire_current(layout, cluster)
    atomic_write(path, pem, 0o600)
    return _bundle(layout, cluster, cert)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key, the kind every certificate of the cluster uses."""
    return ec.generate_private_key(ec.SECP256R1())


def certificate_request(key: ec.EllipticCurvePrivateKey, domains: list[str]) -> str:
    """A PEM CSR for ``domains`` (normalized; the first is the common name) signed by ``key``."""
    names = [_normalize(d) for d in dict.fromkeys(domains)]
    if not names:
        raise UsageError(
            "a certificate request needs at least one domain",
            hint="bind a domain to the cluster first (`dynia deploy --domain ...`)",
        )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def store_external_certificate(
    layout: HomeLayout,
    cluster: str,
    certificate_pem: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str,
    certificate_id: str,
) -> CertificateBundle:
    """Install a certificate an external CA signed for ``key`` as the cluster certificate.

    The PEM (the CA's chain as given, then the key) lands where the local CA's would, so render
    and sync treat it the same. Refuses a certificate that is not for ``key``: nothing is written.
    """
    try:
        chain = x509.load_pem_x509_certificates(certificate_pem.encode())
    except ValueError as exc:
        raise UsageError(
            f"the {issuer} CA answered something that is not a PEM certificate ({exc})",
            hint="run the command again; if it persists, report it with the CA's answer",
        ) from exc
    leaf = chain[0]
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise UsageError(
            f"the certificate the {issuer} CA returned is not for the key Dynia generated",
            hint="nothing was installed; run the command again",
        )
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain) + _private_pem(key)
    path = cluster_certificate_path(layout, cluster)
    _ensure_private_dir(path.parent)
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    # The record first: if a crash comes before the PEM, the old certificate still in
    # cluster.pem is listed as superseded but pending_revocations skips it by fingerprint.
    _retire_current(layout, cluster, ExternalCertificate(issuer, certificate_id, fingerprint))
    atomic_write(path, pem, 0o600)
    return _bundle(layout, cluster, leaf)


def pending_revocations(layout: HomeLayout, cluster: str) -> list[ExternalCertificate]:
    """Externally issued certificates the cluster no longer uses and the CA has not revoked."""
    _, superseded = _read_issued(layout, cluster)
    serving = _served_fingerprint(layout, cluster)
    return [c for c in superseded if c.fingerprint_sha256 != serving]


def mark_revoked(layout: HomeLayout, cluster: str, certificate_id: str) -> None:
    """Forget a superseded certificate once its CA revoked it."""
    with _pki_lock(layout):
        current, superseded = _read_issued(layout, cluster)
        _write_issued(layout, cluster, current, [c for c in superseded if c.id != certificate_id])


def retire_external_certificates(layout: HomeLayout, cluster: str) -> list[ExternalCertificate]:
    """List the cluster's current external certificate as superseded too (cluster delete)."""
    _retire_current(layout, cluster)
    return _read_issued(layout, cluster)[1]


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
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    current, _ = _read_issued(layout, cluster)
    external = current is not None and current.fingerprint_sha256 == fingerprint
    return CertificateBundle(
        cluster=cluster,
        pem_path=cluster_certificate_path(layout, cluster),
        ca_path=ca_certificate_path(layout),
        fingerprint_sha256=fingerprint,
        domains=tuple(sans.get_values_for_type(x509.DNSName)),
        not_after=cert.not_valid_after_utc,
        issuer=current.issuer if external and current else "local",
    )


def _served_fingerprint(layout: HomeLayout, cluster: str) -> str | None:
    try:
        pem = cluster_certificate_path(layout, cluster).read_bytes()
        return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()
    except (FileNotFoundError, ValueError):
        return None


def _read_issued(
    layout: HomeLayout, cluster: str
) -> tuple[ExternalCertificate | None, list[ExternalCertificate]]:
    path = issued_record_path(layout, cluster)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        current = ExternalCertificate(**data["current"]) if data.get("current") else None
        return current, [ExternalCertificate(**c) for c in data.get("superseded", [])]
    except FileNotFoundError:
        return None, []
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(
            f"{path} is not valid: {exc}",
            hint="restore it from a backup, or remove it (certificates it lists as superseded "
            "are then no longer revoked by Dynia; revoke them in the CA's dashboard)",
        ) from exc


def _write_issued(
    layout: HomeLayout,
    cluster: str,
    current: ExternalCertificate | None,
    superseded: list[ExternalCertificate],
) -> None:
    data = {
        "current": asdict(current) if current else None,
        "superseded": [asdict(c) for c in superseded],
    }
    path = issued_record_path(layout, cluster)
    _ensure_private_dir(path.parent)
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o600)


def _retire_current(
    layout: HomeLayout, cluster: str, replacement: ExternalCertificate | None = None
) -> None:
    """Move the current external certificate (if any) to superseded; ``replacement`` is next."""
    with _pki_lock(layout):
        current, superseded = _read_issued(layout, cluster)
        if current is None and replacement is None and not superseded:
            return  # a local-only cluster never gets an issued.json
        if current is not None and all(c.id != current.id for c in superseded):
            superseded.append(current)
        _write_issued(layout, cluster, replacement, superseded)


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
    atomic_write(ca_key_path(layout), _private_pem(key), 0o600)
    atomic_write(ca_certificate_path(layout), cert.public_bytes(serialization.Encoding.PEM), 0o644)


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
