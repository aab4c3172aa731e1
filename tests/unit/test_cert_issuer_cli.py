"""`--cert-issuer` and `--proxied` as an operator uses them: refused where they cannot work,
recorded per cluster, defaulted from `dynia init`, and `dynia cert rotate` on an Origin CA cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeCloudflare
from sample_state import sample_cluster, save_sample

from dynia import pki
from dynia.paths import HomeLayout
from dynia.state.models import CERT_ISSUER_CLOUDFLARE_ORIGIN, Route

ORIGIN = ["--cert-issuer", "cloudflare-origin"]


def dynia(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DYNIA_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dynia.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )


def clusters(home: Path) -> dict:
    path = home / "state.json"
    return json.loads(path.read_text())["clusters"] if path.exists() else {}


def plan(home: Path, name: str, *flags: str) -> subprocess.CompletedProcess:
    return dynia(home, "cluster", "create", "--name", name, "--nodes", "1", "--plan-only", *flags)


def test_origin_issuer_is_refused_without_cloudflare_dns(tmp_path: Path) -> None:
    done = plan(tmp_path, "edge", *ORIGIN, "--proxied")
    assert done.returncode == 2
    assert "needs the cloudflare DNS provider, not 'local'" in done.stderr
    assert "--dns-provider cloudflare" in done.stderr
    assert "edge" not in clusters(tmp_path)

    proxied_local = plan(tmp_path, "edge", "--proxied")
    assert (
        proxied_local.returncode == 2 and "--proxied needs the cloudflare" in proxied_local.stderr
    )


def test_origin_issuer_needs_proxied_records(tmp_path: Path) -> None:
    done = plan(tmp_path, "edge", "--dns-provider", "cloudflare", *ORIGIN)
    assert done.returncode == 2
    assert "needs --proxied" in done.stderr and "only Cloudflare's edge trusts" in done.stderr
    assert clusters(tmp_path) == {}


def test_origin_issuer_with_cloudflare_is_recorded_in_the_cluster(tmp_path: Path) -> None:
    done = plan(tmp_path, "edge", "--dns-provider", "cloudflare", *ORIGIN, "--proxied")
    assert done.returncode == 0, done.stderr
    settings = clusters(tmp_path)["edge"]["settings"]
    assert settings["certificate_issuer"] == "cloudflare-origin"
    assert settings["dns_proxied"] is True

    again = plan(tmp_path, "edge", "--dns-provider", "cloudflare")
    assert again.returncode == 2
    assert "already exists with different --cert-issuer, --proxied" in again.stderr
    same = plan(tmp_path, "edge", "--dns-provider", "cloudflare", *ORIGIN, "--proxied")
    assert same.returncode == 0, same.stderr

    plain = plan(tmp_path, "plain")
    assert plain.returncode == 0, plain.stderr
    assert clusters(tmp_path)["plain"]["settings"]["certificate_issuer"] == "local"
    assert clusters(tmp_path)["plain"]["settings"]["dns_proxied"] is False


def test_init_defaults_are_checked_and_used_by_cluster_create(tmp_path: Path) -> None:
    refused = dynia(tmp_path, "init", *ORIGIN, "--proxied")
    assert refused.returncode == 2 and "cloudflare DNS provider" in refused.stderr
    assert not (tmp_path / "config.json").exists()

    done = dynia(tmp_path, "init", "--dns-provider", "cloudflare", *ORIGIN, "--proxied")
    assert done.returncode == 0, done.stderr
    assert "certificates from the cloudflare-origin CA, records proxied" in done.stdout
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["cert_issuer"], config["dns_proxied"]) == ("cloudflare-origin", True)

    assert plan(tmp_path, "edge").returncode == 0
    settings = clusters(tmp_path)["edge"]["settings"]
    assert (settings["certificate_issuer"], settings["dns_proxied"]) == ("cloudflare-origin", True)
    override = plan(tmp_path, "lan", "--cert-issuer", "local", "--no-proxied")
    assert override.returncode == 0, override.stderr
    assert clusters(tmp_path)["lan"]["settings"]["certificate_issuer"] == "local"

    # Going back to local DNS while the default issuer needs Cloudflare is refused as a whole.
    back = dynia(tmp_path, "init", "--dns-provider", "local")
    assert back.returncode == 2
    assert json.loads((tmp_path / "config.json").read_text()) == config


@pytest.fixture
def fake() -> Iterator[FakeCloudflare]:
    with FakeCloudflare() as server:
        server.add_zone("example.com")
        yield server


def test_cert_rotate_issues_from_the_origin_ca_and_revokes_the_replaced_one(
    tmp_path: Path, fake: FakeCloudflare
) -> None:
    # A cluster whose nodes are gone: the command path (issue, render with HAProxy's check,
    # sync, revoke) runs with no node to roll out to.
    cluster = sample_cluster("edge")
    cluster.nodes, cluster.reserved_ip = {}, None
    cluster.dns_provider = "cloudflare"
    cluster.settings.certificate_issuer = CERT_ISSUER_CLOUDFLARE_ORIGIN
    cluster.settings.dns_proxied = True
    cluster.routes = {"web.example.com": Route("web.example.com", "web")}
    save_sample(tmp_path, cluster)
    env = {"CLOUDFLARE_API_TOKEN": fake.token, "CLOUDFLARE_BASE_URL": fake.base_url}
    env["DYNIA_CREDENTIALS_FILE"] = str(tmp_path / "absent.json")

    first = dynia(tmp_path, "cert", "rotate", env=env)
    assert first.returncode == 0, first.stderr
    assert "cloudflare-origin CA" in first.stderr and "Revoked" not in first.stderr
    second = dynia(tmp_path, "cert", "rotate", env=env)
    assert second.returncode == 0, second.stderr
    first_id, second_id = list(fake.origin_certificates)
    assert f"Revoked the replaced Origin CA certificate {first_id}" in second.stderr
    assert fake.origin_certificates[first_id]["revoked_at"] is not None
    assert fake.origin_certificates[second_id]["revoked_at"] is None

    layout = HomeLayout(tmp_path)
    served = pki.current_certificate(layout, "edge")
    assert served is not None and served.issuer == "cloudflare-origin"
    assert clusters(tmp_path)["edge"]["tls_fingerprint"] == served.fingerprint_sha256
    shipped = layout.deploy_config_dir("edge") / "haproxy" / "certs" / "cluster.pem"
    assert shipped.read_bytes() == served.pem_path.read_bytes()
    assert fake.token not in first.stdout + first.stderr + second.stdout + second.stderr

    fake.deny_certificates()
    denied = dynia(tmp_path, "cert", "rotate", env=env)
    assert denied.returncode == 5
    assert "SSL and Certificates:Edit" in denied.stderr
    assert pki.current_certificate(layout, "edge") == served
