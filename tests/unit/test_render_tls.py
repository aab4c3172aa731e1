"""TLS policy in the rendered HAProxy config: HTTPS-only routes (redirect + HSTS) and the nodes'
own endpoints (/dynia-health, /dynia-revision) answered only to the nodes.

The defaults follow the certificate: a route whose certificate clients trust (Cloudflare Origin
CA) is HTTPS-only, one signed by the local CA is not; a route's own flag wins either way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sample_state import sample_cluster

from dynia.operations.deploy_config import render_cluster
from dynia.paths import HomeLayout
from dynia.render.variables import haproxy_vars
from dynia.state.models import CERT_ISSUER_CLOUDFLARE_ORIGIN, Cluster, Route

HSTS = 'http-response set-header Strict-Transport-Security "max-age=63072000"'


def _with_routes(issuer: str, flags: dict[str, bool | None]) -> Cluster:
    cluster = sample_cluster()
    cluster.settings.certificate_issuer = issuer
    cluster.routes = {
        domain: Route(domain, "web", https_only=flag) for domain, flag in flags.items()
    }
    return cluster


@pytest.mark.parametrize(
    ("issuer", "flag", "expected"),
    [
        ("local", None, False),  # curl -k users would be locked out by HSTS
        (CERT_ISSUER_CLOUDFLARE_ORIGIN, None, True),
        ("local", True, True),
        (CERT_ISSUER_CLOUDFLARE_ORIGIN, False, False),
    ],
)
def test_https_only_default_follows_the_certificate_and_the_flag_wins(
    issuer: str, flag: bool | None, expected: bool
) -> None:
    cluster = _with_routes(issuer, {"web.demo.test": flag})
    hosts = haproxy_vars(cluster, with_tls=True)["haproxy_https_only_hosts"]
    assert hosts == (["web.demo.test"] if expected else [])


def test_internal_paths_are_open_to_every_node_address_and_the_reserved_ip() -> None:
    cluster = sample_cluster()
    cluster.nodes["misty-owl"].public_ip = "203.0.113.10"
    variables = haproxy_vars(cluster, with_tls=True)
    assert variables["haproxy_internal_paths"] == ["/dynia-health", "/dynia-revision"]
    assert variables["haproxy_internal_sources"] == [
        "172.30.9.10", "172.30.9.11", "172.30.9.12", "172.30.9.250", "203.0.113.10",
    ]  # fmt: skip


@pytest.fixture
def layout(tmp_path: Path) -> HomeLayout:
    return HomeLayout(tmp_path / "home")


def _rendered_haproxy(layout: HomeLayout, cluster: Cluster) -> str:
    assert shutil.which("haproxy"), "haproxy must be installed for this test"
    report = render_cluster(layout, cluster)
    assert any(v.program == "haproxy" and not v.skipped for v in report.validations)
    return (layout.deploy_config_dir(cluster.name) / "haproxy" / "haproxy.cfg").read_text()


def test_https_only_routes_render_redirect_and_hsts_that_haproxy_accepts(
    layout: HomeLayout,
) -> None:
    flags = {"web.demo.test": None, "plain.demo.test": False, "shop.demo.test": None}
    cluster = _with_routes(CERT_ISSUER_CLOUDFLARE_ORIGIN, flags)
    text = _rendered_haproxy(layout, cluster)
    assert "-m str shop.demo.test web.demo.test\n" in text  # plain.demo.test left out
    assert "http-request redirect scheme https code 308 if !{ ssl_fc } dynia_https_only" in text
    assert "!{ path_beg /.well-known/acme-challenge/ }" in text
    (hsts,) = [line for line in text.splitlines() if "Strict-Transport-Security" in line]
    assert HSTS in hsts and "includeSubDomains" not in hsts and "preload" not in hsts


def test_local_ca_routes_render_no_redirect_or_hsts(layout: HomeLayout) -> None:
    text = _rendered_haproxy(layout, sample_cluster())
    assert "redirect" not in text and "Strict-Transport-Security" not in text
    deny = "deny deny_status 404 if { path,url_dec,lower -m sub /dynia-health /dynia-revision }"
    assert deny in text


def test_a_non_default_https_port_is_kept_in_the_redirect(layout: HomeLayout) -> None:
    cluster = _with_routes(CERT_ISSUER_CLOUDFLARE_ORIGIN, {"web.demo.test": None})
    cluster.settings.https_port = 8443
    text = _rendered_haproxy(layout, cluster)
    assert (
        "redirect location https://%[req.hdr(host),field(1,:)]:8443%[capture.req.uri] code 308"
        in text
    )
