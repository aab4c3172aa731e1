"""Which CA signs a cluster's certificate, and revoking the certificates it replaced.

``settings.certificate_issuer`` chooses: ``local`` (Dynia's own CA, ``pki.py``) or
``cloudflare-origin`` (Cloudflare's Origin CA, trusted only by Cloudflare's edge, so it goes with
proxied records). An Origin CA certificate must name at least one hostname in the account's
zones, so a cluster without routes carries a local certificate until its first domain is bound;
from then on every new certificate comes from the Origin CA, for all routed domains.

Replaced Origin CA certificates are revoked once no node serves them: after a successful rollout
(``revoke_superseded``), never before, because Cloudflare's edge refuses a revoked origin
certificate in "Full (strict)" mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynia import pki
from dynia.errors import ProviderError, UsageError
from dynia.paths import HomeLayout
from dynia.state.models import (
    CERT_ISSUER_CLOUDFLARE_ORIGIN,
    CERT_ISSUER_LOCAL,
    CERT_ISSUERS,
    NODE_OUT_OF_SYNC,
    Cluster,
)

if TYPE_CHECKING:
    from dynia.providers.cloudflare import CloudflareOriginCa

# Cloudflare offers 7 to 5475 days; a year keeps `dynia cert rotate` a yearly habit.
ORIGIN_VALIDITY_DAYS = 365


def check_certificate_options(dns_provider: str, issuer: str, proxied: bool) -> None:
    """Refuse combinations that cannot work, before anything is recorded."""
    if issuer not in CERT_ISSUERS:
        raise UsageError(
            f"unknown certificate issuer {issuer!r}",
            hint=f"choose one of: {', '.join(CERT_ISSUERS)}",
        )
    if (issuer == CERT_ISSUER_CLOUDFLARE_ORIGIN or proxied) and dns_provider != "cloudflare":
        what = "--cert-issuer cloudflare-origin" if not proxied else "--proxied"
        raise UsageError(
            f"{what} needs the cloudflare DNS provider, not {dns_provider!r}",
            hint="add --dns-provider cloudflare, or leave the option out",
        )
    if issuer == CERT_ISSUER_CLOUDFLARE_ORIGIN and not proxied:
        raise UsageError(
            "--cert-issuer cloudflare-origin needs --proxied: only Cloudflare's edge trusts "
            "Origin CA certificates, so clients must reach the cluster through it",
            hint="add --proxied, or use the local CA (--cert-issuer local)",
        )


def wanted_issuer(cluster: Cluster) -> str:
    """The issuer the cluster's next certificate must come from."""
    if cluster.settings.certificate_issuer == CERT_ISSUER_CLOUDFLARE_ORIGIN and cluster.routes:
        return CERT_ISSUER_CLOUDFLARE_ORIGIN
    return CERT_ISSUER_LOCAL


def needs_new_certificate(layout: HomeLayout, cluster: Cluster) -> bool:
    """No certificate yet, one missing a routed domain, or one from the wrong issuer."""
    current = pki.current_certificate(layout, cluster.name)
    return (
        current is None
        or not current.covers(sorted(cluster.routes))
        or current.issuer != wanted_issuer(cluster)
    )


def issue_certificate(
    layout: HomeLayout, cluster: Cluster, origin_ca: CloudflareOriginCa | None = None
) -> pki.CertificateBundle:
    """A fresh key and certificate for the routed domains from the cluster's issuer.

    Nothing is written unless the CA answered with a certificate for the new key.
    """
    domains = sorted(cluster.routes)
    if wanted_issuer(cluster) == CERT_ISSUER_LOCAL:
        return pki.issue_cluster_certificate(layout, cluster.name, domains)
    ca = origin_ca or _origin_ca()
    key = pki.new_private_key()
    made = ca.issue(pki.certificate_request(key, domains), domains, ORIGIN_VALIDITY_DAYS)
    return pki.store_external_certificate(
        layout,
        cluster.name,
        made.certificate_pem,
        key,
        issuer=CERT_ISSUER_CLOUDFLARE_ORIGIN,
        certificate_id=made.id,
    )


def revoke_superseded(
    layout: HomeLayout, cluster: Cluster, origin_ca: CloudflareOriginCa | None = None
) -> list[str]:
    """Revoke replaced Origin CA certificates no node serves any more; one line per outcome.

    Best effort: a failure is reported and the certificate stays listed, so the next
    `dynia cert rotate` tries again.
    """
    pending = pki.pending_revocations(layout, cluster.name)
    if not pending:
        return []
    behind = sorted(n.name for n in cluster.nodes.values() if n.status == NODE_OUT_OF_SYNC)
    if behind:
        return [
            f"kept {len(pending)} replaced Origin CA certificate(s) unrevoked: "
            f"{', '.join(behind)} may still serve one; run `dynia sync`, then `dynia cert rotate`"
        ]
    return _revoke(layout, cluster.name, pending, origin_ca)


def revoke_all(
    layout: HomeLayout, cluster: Cluster, origin_ca: CloudflareOriginCa | None = None
) -> list[str]:
    """Revoke every Origin CA certificate the cluster holds or held (for cluster delete)."""
    pending = pki.retire_external_certificates(layout, cluster.name)
    return _revoke(layout, cluster.name, pending, origin_ca) if pending else []


def _revoke(
    layout: HomeLayout,
    cluster_name: str,
    pending: list[pki.ExternalCertificate],
    origin_ca: CloudflareOriginCa | None,
) -> list[str]:
    messages = []
    for certificate in pending:
        try:
            origin_ca = origin_ca or _origin_ca()
            origin_ca.revoke(certificate.id)
        except ProviderError as exc:
            messages.append(
                f"could not revoke the replaced Origin CA certificate {certificate.id}: "
                f"{exc.message}; {exc.hint or 'revoke it in the Cloudflare dashboard'}"
            )
            continue
        pki.mark_revoked(layout, cluster_name, certificate.id)
        messages.append(f"Revoked the replaced Origin CA certificate {certificate.id}")
    return messages


def _origin_ca() -> CloudflareOriginCa:
    from dynia.providers.cloudflare import CloudflareOriginCa  # the SDK loads only when needed

    return CloudflareOriginCa()
