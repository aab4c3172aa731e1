"""A proxied cluster whose certificate comes from Cloudflare's Origin CA, on a real local node.

The `dynia` CLI runs as an operator would, with the Cloudflare fake standing in for the API: the
cluster starts with a local-CA certificate, the first domain switches it to an Origin CA
certificate that HAProxy on the node serves, `cert rotate` replaces it on the node and revokes
the old one. Two nodes keep the run short; the rollout path is the same as with three.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster_cli import run_dynia, sweep_docker
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from fakes import FakeCloudflare

pytestmark = [pytest.mark.e2e, pytest.mark.fleet]

ZONE = "origin-e2e.example"
DOMAIN = f"web.{ZONE}"


@dataclass
class Env:
    home: Path
    name: str
    image: str
    workdir: Path
    cf: FakeCloudflare

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        environment = {
            "DYNIA_CREDENTIALS_FILE": str(self.workdir / "no-credentials.json"),
            "CLOUDFLARE_API_TOKEN": self.cf.token,
            "CLOUDFLARE_BASE_URL": self.cf.base_url,
        }
        return run_dynia(self.home, *args, extra_env=environment, timeout=600)

    def reserved_ip(self) -> str:
        import json

        state = json.loads((self.home / "state.json").read_text())
        return state["clusters"][self.name]["reserved_ip"]["address"]

    def served(self) -> x509.Certificate:
        """The certificate presented at the Reserved IP for DOMAIN (chain not checked)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection((self.reserved_ip(), 443), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=DOMAIN) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, node_image: str, busybox_image: str
) -> Iterator[Env]:
    from fleet_fixtures import unique_prefix

    name = unique_prefix("oca")
    with FakeCloudflare() as cf:
        cf.add_zone(ZONE)
        environment = Env(
            tmp_path_factory.mktemp("oca-home"),
            name,
            busybox_image,
            tmp_path_factory.mktemp("oca"),
            cf,
        )
        try:
            yield environment
            run_dynia(environment.home, "cluster", "delete", "--name", name, "--yes", check=False)
        finally:
            sweep_docker(f"dynia-{name}")


def test_first_domain_switches_the_node_to_an_origin_certificate(env: Env) -> None:
    started = time.monotonic()
    env.run(
        "cluster",
        "create",
        "--name",
        env.name,
        "--nodes",
        "2",
        "--dns-provider",
        "cloudflare",
        "--proxied",
        "--cert-issuer",
        "cloudflare-origin",
    )
    print(f"\ncluster create (2 nodes, origin CA): {time.monotonic() - started:.1f}s")
    before = env.served()
    assert before.issuer != env.cf.origin_root.subject  # no route yet: the local CA's
    assert env.cf.origin_certificates == {}

    compose = env.workdir / "web.yml"
    compose.write_text(
        "services:\n  web:\n"
        f"    image: {env.image}\n"
        '    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && '
        'exec httpd -f -p 8080 -h /www"]\n'
        '    expose: ["8080"]\n'
    )
    started = time.monotonic()
    deploy = env.run(
        "deploy", "--name", "web", "--compose", str(compose), "--domain", DOMAIN,
        "--health-path", "/healthz",
    )  # fmt: skip
    print(f"deploy with domain: {time.monotonic() - started:.1f}s")
    assert f"Verified: https://{DOMAIN}/healthz -> 200" in deploy.stderr + deploy.stdout
    served = env.served()
    served.verify_directly_issued_by(env.cf.origin_root)
    (issued,) = env.cf.origin_certificates.values()
    assert issued["id"] == str(served.serial_number) and issued["hostnames"] == [DOMAIN]
    assert [r["content"] for r in env.cf.records_named(DOMAIN)] == [env.reserved_ip()]


def test_cert_rotate_replaces_the_served_certificate_and_revokes_the_old_one(env: Env) -> None:
    old = env.served()
    started = time.monotonic()
    rotate = env.run("cert", "rotate")
    print(f"\ncert rotate (origin CA, 2 nodes): {time.monotonic() - started:.1f}s")
    new = env.served()
    new.verify_directly_issued_by(env.cf.origin_root)
    assert new.fingerprint(hashes.SHA256()) != old.fingerprint(hashes.SHA256())
    assert f"Revoked the replaced Origin CA certificate {old.serial_number}" in rotate.stderr
    assert env.cf.origin_certificates[str(old.serial_number)]["revoked_at"] is not None
    assert env.cf.origin_certificates[str(new.serial_number)]["revoked_at"] is None
