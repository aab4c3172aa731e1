"""The lifecycle with `--node-provider digitalocean --dns-provider cloudflare`, end to end.

The `dynia` CLI runs as an operator would, against the loopback fakes of the DigitalOcean and
Cloudflare APIs (through the real pydo and cloudflare SDKs). The fake's droplets are real local
nodes (``do_fleet.FleetDropletBackend``): keepalived's notify-master script on a node calls the
fake API, whose assign action really moves the Reserved IP between nodes. The droplets boot the
default image, ``debian-13-x64``, as Debian 13 nodes.

The tests share one cluster and run in file order: create -> deploy with a domain -> node add and
remove under load -> failover by killing the MASTER under load -> no token anywhere it must not
be -> delete. The nodes hold only a failover token with the four scopes notify-master needs (the
fake refuses it anything else); the main token never leaves the controller.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import secrets
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cluster_cli import docker_names, run_dynia, sweep_docker
from do_fleet import FleetDropletBackend
from fakes import FakeCloudflare, FakeDigitalOcean
from traffic import SteadyTraffic, fetch

pytestmark = [pytest.mark.e2e, pytest.mark.fleet]

ZONE = "dynia-e2e.example"
DOMAIN = f"web.{ZONE}"
REGION = "nyc3"
SECRET_SOURCE = "secrets/digitalocean-token"
FAILOVER_SCOPES = {"reserved_ip:read", "reserved_ip:update", "droplet:read", "actions:read"}
MAX_SCANNED_FILE = 20 * 1024 * 1024


@dataclass
class Env:
    home: Path
    name: str
    image: str
    workdir: Path
    backend: FleetDropletBackend
    do: FakeDigitalOcean
    cf: FakeCloudflare
    tmp_before: set[str]
    failover_token: str = field(default_factory=lambda: f"dop_v1_{secrets.token_hex(32)}")
    outputs: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> list[bytes]:
        """The controller's tokens: never on a node, never in the home."""
        return [self.do.token.encode(), self.cf.token.encode()]

    @property
    def cluster_tag(self) -> str:
        return f"dynia-cluster-{self.name}"

    def environment(self) -> dict[str, str]:
        return {
            "DYNIA_CREDENTIALS_FILE": str(self.workdir / "no-credentials.json"),
            "DIGITALOCEAN_TOKEN": self.do.token,
            "DIGITALOCEAN_FAILOVER_TOKEN": self.failover_token,
            "DIGITALOCEAN_API_URL": self.do.api_url,
            "DIGITALOCEAN_METADATA_URL": f"{self.do.api_url}/metadata/v1",
            "CLOUDFLARE_API_TOKEN": self.cf.token,
            "CLOUDFLARE_BASE_URL": self.cf.base_url,
        }

    def run(
        self, *args: str, check: bool = True, timeout: float = 900, **env: str
    ) -> subprocess.CompletedProcess[str]:
        environment = {**self.environment(), **env}
        done = run_dynia(self.home, *args, extra_env=environment, check=False, timeout=timeout)
        self.outputs += [done.stdout, done.stderr]
        if check:
            assert done.returncode == 0, f"dynia {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def state(self) -> dict:
        return json.loads((self.home / "state.json").read_text())["clusters"][self.name]

    @property
    def reserved_ip(self) -> str:
        return self.state()["reserved_ip"]["address"]

    @property
    def ca(self) -> Path:
        return self.home / "pki" / "ca.pem"

    @property
    def secret_file(self) -> Path:
        return self.home / "deploy-config" / self.name / SECRET_SOURCE

    def compose(self, version: str) -> Path:
        path = self.workdir / f"web-{version}.yml"
        path.write_text(
            "services:\n"
            "  web:\n"
            f"    image: {self.image}\n"
            '    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && '
            f'echo {version} > /www/version && exec httpd -f -p 8080 -h /www"]\n'
            "    init: true\n"  # a PID-1 httpd ignores SIGTERM; stopping it would take 10 s
            '    expose: ["8080"]\n'
        )
        return path

    def node_exec(self, node: str, command: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            ["docker", "exec", "-i", f"dynia-{self.name}-{node}", "sh", "-c", command],
            input=stdin or b"",
            capture_output=True,
            check=False,
        )
        return done.stdout.decode(errors="replace").strip()

    def master(self) -> dict:
        return max(self.state()["nodes"].values(), key=lambda n: (n["priority"], n["name"]))

    def reserved_ip_holder(self) -> int | None:
        """The droplet the fake API says the Reserved IP is assigned to."""
        with self.do.lock:
            return self.do.reserved_ips[self.reserved_ip]["droplet_id"]


class SuccessClock:
    """One HTTPS request at a time with a short timeout, remembering when each one succeeded.

    The longest time between two successes is the outage a client saw; unlike counting failed
    requests, it is not blurred by requests that hang until their timeout.
    """

    def __init__(self, address: str, domain: str, ca_file: Path, timeout: float = 1.0) -> None:
        self.address, self.domain, self.timeout = address, domain, timeout
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.successes: list[float] = []
        self.stopped = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SuccessClock:
        self.successes.append(time.monotonic())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.stopped = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._succeeds():
                self.successes.append(time.monotonic())
            self._stop.wait(0.04)

    def _succeeds(self) -> bool:
        try:
            raw = socket.create_connection((self.address, 443), self.timeout)
            connection = http.client.HTTPSConnection(self.domain, 443, timeout=self.timeout)
            connection.sock = self.context.wrap_socket(raw, server_hostname=self.domain)
            connection.request("GET", "/healthz")
            ok = connection.getresponse().status == 200
            connection.close()
            return ok
        except (OSError, http.client.HTTPException):
            return False

    def longest_gap(self) -> float:
        moments = [*self.successes, self.stopped]
        return max(b - a for a, b in itertools.pairwise(moments))


def files_containing(roots: list[Path], needles: list[bytes], skip: set[Path]) -> list[str]:
    """Regular files under ``roots`` whose bytes hold any needle (``skip``: allowed holders)."""
    hits = []
    for root in roots:
        candidates = [root] if root.is_file() else []
        for folder, _dirs, names in os.walk(root, onerror=lambda _e: None):
            candidates += [Path(folder) / n for n in names]
        for path in candidates:
            if path in skip or path.is_symlink():
                continue
            try:
                if not path.is_file() or path.stat().st_size > MAX_SCANNED_FILE:
                    continue
                data = path.read_bytes()
            except OSError:
                continue  # gone meanwhile, or a socket: nothing readable to leak
            if any(needle in data for needle in needles):
                hits.append(str(path))
    return hits


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, debian13_node_image: str, busybox_image: str
) -> Iterator[Env]:
    from fleet_fixtures import unique_prefix

    tmp_before = set(os.listdir("/tmp"))
    name = unique_prefix("do")
    backend = FleetDropletBackend(name)  # droplets of debian-13-x64 boot Debian 13 nodes
    do = FakeDigitalOcean(f"dop_v1_{secrets.token_hex(32)}", backend=backend, host=backend.gateway)
    cf = FakeCloudflare(f"cf{secrets.token_hex(20)}")
    cf.add_zone(ZONE)
    home = tmp_path_factory.mktemp("do-e2e-home")
    environment = Env(
        home,
        name,
        busybox_image,
        tmp_path_factory.mktemp("do-e2e"),
        backend,
        do,
        cf,
        tmp_before,
    )
    do.add_scoped_token(environment.failover_token, FAILOVER_SCOPES)
    try:
        with do, cf:
            yield environment
            environment.run("cluster", "delete", "--name", name, "--yes", check=False)
    finally:
        # The fake's stop closed the backend (nodes, VPC and public networks); sweep the rest.
        backend.close()
        sweep_docker(f"dynia-{name}")


def test_create_and_deploy_with_a_domain_serve_https_through_the_reserved_ip(env: Env) -> None:
    started = time.monotonic()
    env.run(
        "cluster",
        "create",
        "--name",
        env.name,
        "--nodes",
        "3",
        "--node-provider",
        "digitalocean",
        "--dns-provider",
        "cloudflare",
        "--region",
        REGION,
        "--size",
        "s-1vcpu-1gb",
    )
    print(f"\ncluster create (3 droplets, DO/CF fakes): {time.monotonic() - started:.1f}s")
    state = env.state()
    assert state["status"] == "infra-ready" and len(state["nodes"]) == 3
    assert {n["provider_id"] for n in state["nodes"].values()} == {str(i) for i in env.do.droplets}
    # No --image: the default slug, booted as a Debian 13 node.
    assert state["image"] == "debian-13-x64"
    assert {d["image"] for d in env.do.droplets.values()} == {"debian-13-x64"}
    for node in state["nodes"]:
        assert env.node_exec(node, ". /etc/os-release && echo $VERSION_ID") == "13"
    master = env.master()
    assert env.reserved_ip_holder() == int(master["provider_id"])
    assert env.backend.holder_of(env.reserved_ip) == int(master["provider_id"])
    # A Cloud Firewall would drop VRRP between the droplets (its rules name only TCP, UDP and
    # ICMP); the nodes' own firewall guards them instead.
    assert env.do.firewalls == {}
    assert_host_keys_replaced_the_bootstrap_keys(env)

    started = time.monotonic()
    deploy = env.run(
        "deploy",
        "--name",
        "web",
        "--compose",
        str(env.compose("v1")),
        "--domain",
        DOMAIN,
        "--health-path",
        "/healthz",
    )
    print(f"first deploy with domain: {time.monotonic() - started:.1f}s")
    print(f"deploy warnings: {deploy.stderr.strip() or 'none'}")

    records = env.cf.records_named(DOMAIN)
    assert [(r["type"], r["content"]) for r in records] == [("A", env.reserved_ip)]
    assert fetch(env.reserved_ip, DOMAIN, "/healthz", env.ca) == (200, "ok")
    assert fetch(env.reserved_ip, DOMAIN, "/version", env.ca) == (200, "v1")
    for node in state["nodes"]:
        assert env.node_exec(node, "stat -c '%a %U' /etc/dynia/digitalocean-token") == "600 root"
        assert (
            env.node_exec(node, "stat -c '%a %U' /etc/keepalived/dynia-notify-master.sh")
            == "700 root"
        )


def assert_host_keys_replaced_the_bootstrap_keys(env: Env) -> None:
    """The key cloud-init got in the user data (readable from the metadata service) is gone:
    each node serves, and the home pins, a key generated on the node."""
    known_hosts = (env.home / "clusters" / env.name / "ssh" / "known_hosts").read_text()
    for node in env.state()["nodes"].values():
        with env.do.lock:
            user_data = env.do.droplets[int(node["provider_id"])]["user_data"]
        bootstrap = yaml.safe_load(user_data)["ssh_keys"]["ed25519_public"].split()[1]
        [pinned] = node["host_keys"]
        assert pinned.split()[1] != bootstrap, node["name"]
        served = env.node_exec(node["name"], "cat /etc/ssh/ssh_host_*_key.pub").split()
        assert served[:2] == pinned.split(), node["name"]
        assert pinned.split()[1] in known_hosts and bootstrap not in known_hosts
        assert bootstrap not in env.node_exec(node["name"], "cat /etc/ssh/*.pub; ls /etc/ssh")


def test_a_render_without_the_failover_token_is_refused_and_changes_nothing(env: Env) -> None:
    folder = env.home / "deploy-config" / env.name
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    refused = env.run("render", check=False, DIGITALOCEAN_FAILOVER_TOKEN="")
    assert refused.returncode != 0
    assert "DIGITALOCEAN_FAILOVER_TOKEN" in refused.stderr
    assert "reserved_ip:update" in refused.stderr
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_node_add_and_remove_never_move_the_reserved_ip(env: Env) -> None:
    master = env.master()
    before = set(env.state()["nodes"])
    actions = f"/v2/reserved_ips/{env.reserved_ip}/actions"
    posts_before = env.do.statuses(actions, "POST")
    with SteadyTraffic(env.reserved_ip, DOMAIN, "/version", env.ca, rate=25) as load:
        env.run("cluster", "node", "add")
        added = (set(env.state()["nodes"]) - before).pop()
        env.run("cluster", "node", "remove", added)
        time.sleep(1)
    print(f"\nnode add + remove: {load.report.sent} requests, {load.report.failed} failed")
    # A joining node that elected itself would have assigned the Reserved IP to its own droplet.
    assert env.do.statuses(actions, "POST") == posts_before
    assert env.reserved_ip_holder() == int(master["provider_id"])
    assert load.report.failed == 0, load.report.failures[:5]
    assert set(env.state()["nodes"]) == before
    assert len(env.do.droplets) == 3


def test_killing_the_master_moves_the_reserved_ip_through_the_notify_script(env: Env) -> None:
    master = env.master()
    survivors = [n for n in env.state()["nodes"].values() if n["name"] != master["name"]]
    successor = max(survivors, key=lambda n: (n["priority"], n["name"]))
    posts_before = env.do.statuses(f"/v2/reserved_ips/{env.reserved_ip}/actions", "POST")
    load = SteadyTraffic(env.reserved_ip, DOMAIN, "/version", env.ca, rate=25)
    with load, SuccessClock(env.reserved_ip, DOMAIN, env.ca) as clock:
        time.sleep(2)
        subprocess.run(
            ["docker", "kill", f"dynia-{env.name}-{master['name']}"],
            check=True,
            capture_output=True,
        )
        time.sleep(14)
    gap = clock.longest_gap()
    print(
        f"\nfailover: master {master['name']} killed; {load.report.sent} requests under load, "
        f"{load.report.failed} failed; longest time without a successful request {gap:.2f}s"
    )
    assert gap < 10.0
    assert clock.successes[-1] > clock.stopped - 2, "requests succeed again after the failover"
    # No dynia command ran meanwhile: the assign request came from the successor itself.
    posts = env.do.statuses(f"/v2/reserved_ips/{env.reserved_ip}/actions", "POST")
    assert len(posts) > len(posts_before) and posts[-1] == 201
    with env.do.lock:
        assign = [e for e in env.do.exchanges if e.method == "POST" and "/actions" in e.path][-1]
    assert assign.request_body == {"type": "assign", "droplet_id": int(successor["provider_id"])}
    assert assign.client == successor["public_ip"]
    assert env.reserved_ip_holder() == int(successor["provider_id"])
    assert env.backend.holder_of(env.reserved_ip) == int(successor["provider_id"])
    log = env.node_exec(successor["name"], "journalctl -q --no-pager -t dynia-notify-master")
    assert f"assigned {env.reserved_ip} to droplet {successor['provider_id']}" in log
    assert fetch(env.reserved_ip, DOMAIN, "/version", env.ca) == (200, "v1")


def test_the_killed_master_comes_back_without_taking_the_reserved_ip(env: Env) -> None:
    holder = env.reserved_ip_holder()
    returning = next(
        n for n in env.state()["nodes"].values() if int(n["provider_id"]) != holder
        and f"dynia-{env.name}-{n['name']}" in docker_stopped(env.name)
    )  # fmt: skip
    posts_before = env.do.statuses(f"/v2/reserved_ips/{env.reserved_ip}/actions", "POST")
    load = SteadyTraffic(env.reserved_ip, DOMAIN, "/version", env.ca, rate=25)
    with load:
        subprocess.run(
            ["docker", "start", f"dynia-{env.name}-{returning['name']}"],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 60
        while env.node_exec(returning["name"], "systemctl is-active keepalived") != "active":
            assert time.monotonic() < deadline, "keepalived did not start on the returning node"
            time.sleep(0.5)
        time.sleep(5)  # longer than keepalived needs to claim the role, were it to preempt
    print(
        f"\n{returning['name']} back: {load.report.sent} requests under load, "
        f"{load.report.failed} failed"
    )
    assert env.do.statuses(f"/v2/reserved_ips/{env.reserved_ip}/actions", "POST") == posts_before
    assert env.reserved_ip_holder() == holder
    assert load.report.failed == 0, load.report.failures[:5]


def docker_stopped(cluster: str) -> str:
    """Names of the cluster's node containers that are not running."""
    filters = ["--filter", "status=exited", "--filter", f"name=dynia-{cluster}-"]
    return subprocess.run(
        ["docker", "ps", "-a", *filters, "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_no_token_appears_outside_the_root_only_secret_file(env: Env) -> None:
    deploy_config = env.home / "deploy-config" / env.name
    assert stat.S_IMODE(deploy_config.stat().st_mode) == 0o700
    assert stat.S_IMODE(env.secret_file.stat().st_mode) == 0o600
    failover = env.failover_token.encode()
    assert env.secret_file.read_bytes().strip() == failover
    state_text = (env.home / "state.json").read_bytes()
    assert not any(token in state_text for token in [*env.tokens, failover])
    # The scan finds the token where it is (so an empty result means something), and only there.
    assert files_containing([env.home], [failover], set()) == [str(env.secret_file)]
    new_tmp = [Path("/tmp", e) for e in set(os.listdir("/tmp")) - env.tmp_before]
    leaks = files_containing([env.home, *new_tmp], [*env.tokens, failover], {env.secret_file})
    assert leaks == []
    secrets_seen = [*env.tokens, failover]
    assert not any(token.decode() in text for text in env.outputs for token in secrets_seen)
    for node in env.state()["nodes"]:
        on_node = env.node_exec(node, "cat /etc/dynia/digitalocean-token")
        assert on_node == env.failover_token, node
        journal = env.node_exec(node, "journalctl -q --no-pager 2>/dev/null")
        assert not any(token.decode() in journal for token in secrets_seen), node
        # The main token is on no node: its files hold neither it nor the Cloudflare token.
        found = env.node_exec(
            node,
            "grep -rlsF -f /dev/stdin /etc /opt /root /var/lib/dynia /var/lib/cloud || true",
            stdin=b"\n".join(env.tokens) + b"\n",
        )
        assert found == "", (node, found)


def test_delete_leaves_no_droplet_record_or_container(env: Env) -> None:
    vpc_networks = list(env.backend.vpc_networks.values())
    started = time.monotonic()
    env.run("cluster", "delete", "--name", env.name, "--yes")
    print(f"\ncluster delete: {time.monotonic() - started:.1f}s")
    assert env.name not in json.loads((env.home / "state.json").read_text())["clusters"]
    assert env.do.droplets == {} and env.do.reserved_ips == {}
    assert not [v for v in env.do.vpcs.values() if v["name"] == f"dynia-{env.name}"]
    assert not [k for k in env.do.ssh_keys.values() if k["name"] == f"dynia-{env.name}"]
    assert env.cf.records_named(DOMAIN) == []
    for kind in ("container", "volume"):
        assert docker_names(kind, f"dynia-{env.name}") == [], kind
    # What remains is the backend's public network: the fake API listens on it ("internet").
    assert docker_names("network", f"dynia-{env.name}") == [f"dynia-{env.name}"]
    assert vpc_networks and not set(vpc_networks) & set(docker_names("network", "dynia-"))
    new_tmp = [Path("/tmp", e) for e in set(os.listdir("/tmp")) - env.tmp_before]
    assert files_containing([env.home, *new_tmp], env.tokens, set()) == []
    assert not any(token.decode() in text for text in env.outputs for token in env.tokens)
