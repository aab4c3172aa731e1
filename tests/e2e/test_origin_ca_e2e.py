"""A proxied cluster whose certificate comes from Cloudflare's Origin CA, on a real local node.

The `dynia` CLI runs as an operator would, with the Cloudflare fake standing in for the API: the
cluster starts with a local-CA certificate, the first domain switches it to an Origin CA
certificate that HAProxy on the node serves, `cert rotate` replaces it on the node and revokes
the old one. Two nodes keep the run short; the rollout path is the same as with three.

The same cluster shows the TLS policy: the Origin CA route is HTTPS-only by default (redirect and
HSTS), a route bound with --no-https-only is not, testssl.sh finds TLS 1.2/1.3 with AEAD suites
only, and /dynia-health answers the nodes but not the controller.
"""

from __future__ import annotations

import http.client
import json
import shutil
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
        "    init: true\n"
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


# --- TLS policy: HTTPS-only routes, Mozilla intermediate, the nodes' own endpoints ----------------

PLAIN = f"plain.{ZONE}"


def _http(env: Env, host: str, path: str, tls: bool) -> tuple[int, dict[str, str]]:
    """Status and headers of a GET through the Reserved IP; no redirect followed, no chain check."""
    connection = http.client.HTTPConnection(env.reserved_ip(), 443 if tls else 80, timeout=5)
    if tls:  # SNI and Host name the route; the certificate chain is another test's subject
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection((env.reserved_ip(), 443), timeout=5)
        connection.sock = context.wrap_socket(raw, server_hostname=host)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def _routes_shown(env: Env) -> dict[str, bool]:
    shown = json.loads(env.run("cluster", "show", "--json").stdout)
    return {route["domain"]: route["https_only"] for route in shown["routes"]}


def test_an_origin_certificate_route_is_https_only_and_a_route_can_opt_out(env: Env) -> None:
    status, headers = _http(env, DOMAIN, "/healthz?x=1", tls=False)
    assert (status, headers.get("location")) == (308, f"https://{DOMAIN}/healthz?x=1")
    status, headers = _http(env, DOMAIN, "/healthz", tls=True)
    assert (status, headers.get("strict-transport-security")) == (200, "max-age=63072000")

    started = time.monotonic()
    env.run("route", "bind", "--domain", PLAIN, "--service", "web", "--no-https-only")
    print(f"\nroute bind --no-https-only: {time.monotonic() - started:.1f}s")
    assert _routes_shown(env) == {DOMAIN: True, PLAIN: False}
    status, headers = _http(env, PLAIN, "/healthz", tls=False)
    assert (status, "location" in headers) == (200, False)
    status, headers = _http(env, PLAIN, "/healthz", tls=True)
    assert (status, "strict-transport-security" in headers) == (200, False)


def _testssl(env: Env, host: str, report: Path) -> list[dict[str, str]]:
    """testssl.sh's findings for HOST at the Reserved IP: protocols, every cipher, headers."""
    binary = shutil.which("testssl") or shutil.which("testssl.sh")
    assert binary, "testssl.sh must be installed (scripts/test installs the Debian package)"
    argv = [
        binary, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
        "--ip", env.reserved_ip(), "--protocols", "--each-cipher", "--headers",
        "--jsonfile", str(report), f"https://{host}/healthz",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    print(f"\ntestssl.sh --protocols --each-cipher --headers: {time.monotonic() - started:.1f}s")
    assert report.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(report.read_text())


def test_testssl_finds_tls_1_2_and_1_3_with_aead_suites_only_and_hsts(env: Env) -> None:
    findings = _testssl(env, DOMAIN, env.workdir / "testssl.json")
    by_id = {f["id"]: f["finding"] for f in findings}
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert by_id[old] == "not offered", (old, by_id[old])
    assert by_id["TLS1_2"] == "offered" and by_id["TLS1_3"].startswith("offered")
    # Each offered cipher: "<hex> <openssl name> <kx> <bits> <enc> <bits> <RFC name>".
    suites = [f["finding"].split()[-1] for f in findings if f["id"].startswith("cipher_x")]
    assert suites, findings
    assert [s for s in suites if "_CBC_" in s or not ("_GCM_" in s or "CHACHA20" in s)] == []
    assert "63072000" in by_id["HSTS_time"]
    assert by_id["HSTS_subdomains"] == "only for this domain"


def test_the_health_path_answers_the_nodes_but_not_the_controller(env: Env) -> None:
    for host, tls in ((env.reserved_ip(), False), (DOMAIN, True), (PLAIN, False)):
        for path in ("/dynia-health", "/%64ynia-HEALTH", "//dynia-health/", "/dynia-revision"):
            assert _http(env, host, path, tls)[0] == 404, (host, path)
    state = json.loads((env.home / "state.json").read_text())
    for node in state["clusters"][env.name]["nodes"]:
        answer = subprocess.run(
            ["docker", "exec", f"dynia-{env.name}-{node}", "curl", "-sS", "-m", "5",
             f"http://{env.reserved_ip()}/dynia-health"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert answer.startswith("ok "), (node, answer)
