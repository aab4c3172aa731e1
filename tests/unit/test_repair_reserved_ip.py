"""`dynia repair --force` after the Reserved IP was released outside Dynia (the console).

The operations, the state store, the renderer, the DigitalOcean provider (pydo against the fake
DigitalOcean API on loopback) and the local DNS provider (an NSD process) are the real ones; the
playbook runner and the node probes are the doubles of test_orchestration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_orchestration
from cli_invoke import run_dynia
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import FakeDigitalOcean
from sample_state import sample_cluster, save_sample
from test_orchestration import Rig, make_rig, served

from dynia.cli.context_obj import AppContext
from dynia.cli.repair import repair_command
from dynia.errors import ProviderError
from dynia.operations import certificates, cluster_nodes, infra, operate
from dynia.operations.deploy_config import render_cluster
from dynia.paths import HomeLayout
from dynia.providers import dns_provider_for
from dynia.providers.base import NodeSpec, ReservedIpGoneError, ReservedIpInfo
from dynia.providers.digitalocean.api import RetryPolicy
from dynia.providers.digitalocean.provider import DigitalOceanNodeProvider, Timeouts
from dynia.providers.local.dns import LocalDnsProvider
from dynia.providers.local.engine import Docker
from dynia.providers.local.nodes import LocalNodeProvider
from dynia.state.models import ReservedIp

# The fixture that leaves the config checkers off PATH (a render without them is quick).
no_validators = test_orchestration.no_validators
FAST = Timeouts(active=10, ssh=10, action=1.5, vpc_release=1.0, poll_interval=0.05)
DOMAIN = "web.demo.test"
# Files the replacement roll carries the address in (DigitalOcean: HAProxy's internal sources
# and the notify-master script; keepalived holds only a marker in API mode).
NAMING_THE_ADDRESS = ["haproxy/haproxy.cfg", "keepalived/notify-master.sh"]


@dataclasses.dataclass
class DoRig:
    rig: Rig
    fake: FakeDigitalOcean
    dns: LocalDnsProvider
    old: str  # the Reserved IP the cluster was created with

    def lose_the_reserved_ip(self) -> None:
        """The operator releases it in the DigitalOcean console."""
        with self.fake.lock:
            del self.fake.reserved_ips[self.old]

    def master_droplet(self) -> int:
        master = self.rig.cluster().master
        assert master is not None
        return int(master.provider_id)


def _provider(fake: FakeDigitalOcean) -> DigitalOceanNodeProvider:
    return DigitalOceanNodeProvider(
        fake.token,
        api_url=fake.api_url,
        region="fra1",
        ssh_port=fake.backend.ssh_port,
        timeouts=FAST,
        retry=RetryPolicy(attempts=4, base_delay=0.05, max_delay=5),
    )


def _public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@pytest.fixture
def do_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_validators: None) -> Iterator[DoRig]:
    """The sample cluster on the fake DigitalOcean: droplets, its Reserved IP on the MASTER, a
    published route, a real deploy-config; the rig's provider is the real DigitalOcean one."""
    with FakeDigitalOcean() as fake:
        monkeypatch.setenv("DIGITALOCEAN_TOKEN", fake.token)
        monkeypatch.setenv("DIGITALOCEAN_FAILOVER_TOKEN", "dop_v1_failover")
        monkeypatch.setenv("DIGITALOCEAN_API_URL", fake.api_url)
        provider = _provider(fake)
        cluster = sample_cluster(node_provider="digitalocean")
        cluster.region = "fra1"
        key = _public_key()
        for node in cluster.nodes.values():
            spec = NodeSpec("demo", node.name, "fra1", "s-1vcpu-1gb", key)
            node.provider_id = provider.create_node(spec).provider_id
        rip = provider.allocate_reserved_ip("demo", "fra1")
        assert cluster.master is not None
        provider.attach_reserved_ip(rip, cluster.master.provider_id)
        cluster.reserved_ip = ReservedIp(rip.address, rip.provider_id, cluster.master.name)
        home = tmp_path / "home"
        layout = HomeLayout(home)
        cluster.tls_fingerprint = certificates.issue_certificate(layout, cluster).fingerprint_sha256
        dns = dns_provider_for(cluster, layout)
        assert isinstance(dns, LocalDnsProvider)
        cluster.routes[DOMAIN].dns_record_id = dns.upsert_a_record(DOMAIN, rip.address).id
        save_sample(home, cluster)
        render_cluster(layout, cluster, validate=False)
        rig = make_rig(home)
        ctx = dataclasses.replace(rig.ctx, node_providers=lambda name, layout: provider)
        try:
            yield DoRig(dataclasses.replace(rig, ctx=ctx), fake, dns, rip.address)
        finally:
            dns.stop()


def _rendered_files_naming(rig: Rig, address: str) -> list[str]:
    folder = rig.layout.deploy_config_dir("demo")
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and address in path.read_text(errors="replace")
    )


def _deployed_when_repair_yml_ran(rig: Rig) -> dict[str, str]:
    """The files of NAMING_THE_ADDRESS as deploy-config held them while repair.yml ran."""
    seen: dict[str, str] = {}
    rig.runner.after["repair.yml"] = lambda run: seen.update(
        {name: rig.deployed(name) for name in NAMING_THE_ADDRESS}
    )
    return seen


def test_repair_force_replaces_a_reserved_ip_the_account_lost(do_rig: DoRig) -> None:
    rig, fake, old = do_rig.rig, do_rig.fake, do_rig.old
    do_rig.lose_the_reserved_ip()
    shipped = _deployed_when_repair_yml_ran(rig)

    report = operate.repair(rig.ctx)

    cluster = rig.cluster()
    assert cluster.reserved_ip is not None and cluster.master is not None
    new = cluster.reserved_ip.address
    assert new != old
    # A new address on the account, on the MASTER's droplet, in the cluster's region.
    assert set(fake.reserved_ips) == {new}
    assert fake.reserved_ips[new]["droplet_id"] == do_rig.master_droplet()
    assert fake.reserved_ips[new]["region"] == "fra1"
    assert cluster.reserved_ip.attached_to == cluster.master.name
    # Replaced before the render: the repair's one roll gave the nodes the new address, then
    # it was attached and checked (a second roll, sync.yml, once followed the first).
    assert [call for call, _ in rig.runner.calls()] == ["repair.yml", "drift-check.yml"]
    assert rig.journal[-1] == f"reserved IP checked, MASTER {cluster.master.name}"
    for name in NAMING_THE_ADDRESS:
        assert new in shipped[name] and old not in shipped[name], name
    assert _rendered_files_naming(rig, old) == []
    assert "cluster-metadata.json" in _rendered_files_naming(rig, new)
    # The routes' DNS records follow; nothing is left pending.
    assert served(do_rig.dns, DOMAIN) == [new]
    assert cluster.routes[DOMAIN].dns_record_id is not None
    assert infra.replaced_from(cluster) is None
    assert report.reserved_ip_change == infra.ReservedIpChange(old, new, [DOMAIN])
    assert report.clean


def test_repair_force_says_plainly_that_the_address_changed(do_rig: DoRig) -> None:
    rig, old = do_rig.rig, do_rig.old
    do_rig.lose_the_reserved_ip()
    app = AppContext.from_options(home=str(rig.home), cluster_name=None)
    app.__dict__["run_context"] = rig.ctx  # the command's one context: the rig's doubles

    done = CliRunner().invoke(repair_command, ["--force"], obj=app, catch_exceptions=False)

    cluster = rig.cluster()
    assert cluster.reserved_ip is not None
    new = cluster.reserved_ip.address
    assert done.exit_code == 0, done.output
    assert f"Reserved IP changed: {old} → {new}" in done.output
    assert f"names {old} at {new}" in done.output  # records outside Dynia are the operator's
    assert DOMAIN in done.output and "Repaired." in done.output
    assert any(f"Reserved IP {old} no longer exists" in line for line in rig.progress)


def test_repair_cut_short_after_the_allocation_keeps_the_address_and_finishes(
    do_rig: DoRig,
) -> None:
    rig, fake, old = do_rig.rig, do_rig.fake, do_rig.old
    do_rig.lose_the_reserved_ip()
    rig.runner.interrupt = "repair.yml"  # Ctrl-C during the roll of the new address

    with pytest.raises(KeyboardInterrupt):
        operate.repair(rig.ctx)

    cluster = rig.cluster()
    assert cluster.reserved_ip is not None
    new = cluster.reserved_ip.address
    assert set(fake.reserved_ips) == {new}  # recorded at once: nothing leaked
    assert infra.replaced_from(cluster) == old
    assert served(do_rig.dns, DOMAIN) == [old]
    plan = operate.plan_repair(rig.ctx)
    assert any(f"DNS records at {new}" in action for action in plan.actions)
    assert rig.runner.calls()[-1] == ("drift-check.yml", None)

    report = operate.repair(rig.ctx)

    assert set(fake.reserved_ips) == {new}  # the same address, not a second one
    assert fake.reserved_ips[new]["droplet_id"] == do_rig.master_droplet()
    assert served(do_rig.dns, DOMAIN) == [new]
    assert report.reserved_ip_change == infra.ReservedIpChange(old, new, [DOMAIN])
    assert infra.replaced_from(rig.cluster()) is None


def test_repair_force_with_the_reserved_ip_in_place_changes_no_address(do_rig: DoRig) -> None:
    rig, fake, old = do_rig.rig, do_rig.fake, do_rig.old

    report = operate.repair(rig.ctx)

    assert report.reserved_ip_change is None
    assert set(fake.reserved_ips) == {old}
    assert "sync.yml all" not in rig.journal  # no second roll
    assert served(do_rig.dns, DOMAIN) == [old]


def test_a_command_without_force_names_the_lost_address_and_repair_force(do_rig: DoRig) -> None:
    rig, fake, old = do_rig.rig, do_rig.fake, do_rig.old
    do_rig.lose_the_reserved_ip()

    with pytest.raises(ReservedIpGoneError) as raised:
        cluster_nodes.activate_node(rig.ctx, "quiet-fox")

    assert isinstance(raised.value, ProviderError) and raised.value.exit_code == 5
    assert f"Reserved IP {old} no longer exists" in raised.value.message
    hint = raised.value.hint or ""
    assert "`dynia repair --force`" in hint and "allocates a new Reserved IP" in hint
    assert fake.reserved_ips == {}  # only repair --force allocates
    cluster = rig.cluster()
    assert cluster.reserved_ip is not None and cluster.reserved_ip.address == old


def test_plain_repair_exits_non_zero_naming_force_and_what_it_replaces(tmp_path: Path) -> None:
    save_sample(tmp_path)

    done = run_dynia(tmp_path, "repair")

    assert done.exit_code == 2
    assert "--force" in done.stderr
    assert "replace it when it no longer exists" in done.stderr


def test_repair_check_only_names_the_lost_reserved_ip_and_exits_non_zero(
    do_rig: DoRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig, fake, old = do_rig.rig, do_rig.fake, do_rig.old
    do_rig.lose_the_reserved_ip()
    before = rig.ctx.store.path.read_bytes()
    # The command's one context is the rig's (doubles of the runner and probes).
    monkeypatch.setattr(AppContext, "run_context", property(lambda app: rig.ctx))

    done = run_dynia(rig.home, "repair", "--check-only")

    assert done.exit_code == 5, done.stdout
    assert (
        f"Error: reserved IP {old} no longer exists on the account: `dynia repair --force` "
        "allocates a new one (the address changes)"
    ) in done.stderr
    assert "re-attach" not in done.stderr  # re-attaching cannot bring it back
    assert fake.reserved_ips == {}  # a check allocates nothing
    assert rig.ctx.store.path.read_bytes() == before
    assert [call for call, _ in rig.runner.calls()] == ["drift-check.yml"]


def test_repair_check_only_with_the_reserved_ip_in_place_passes(
    do_rig: DoRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AppContext, "run_context", property(lambda app: do_rig.rig.ctx))

    done = run_dynia(do_rig.rig.home, "repair", "--check-only")

    assert done.exit_code == 0, done.stderr
    assert "- nothing to repair" in done.stdout
    assert done.stderr == ""


def test_the_digitalocean_provider_reads_whether_the_reserved_ip_exists(do_rig: DoRig) -> None:
    fake, old = do_rig.fake, do_rig.old
    provider = _provider(fake)
    info = ReservedIpInfo(old, old)
    posts = len(fake.statuses("/v2/reserved_ips", "POST"))
    assert provider.reserved_ip_exists(info)

    do_rig.lose_the_reserved_ip()

    assert not provider.reserved_ip_exists(info)
    assert fake.statuses(f"/v2/reserved_ips/{old}", "GET")[-1] == 404
    assert len(fake.statuses("/v2/reserved_ips", "POST")) == posts  # it only reads
    with pytest.raises(ReservedIpGoneError) as gone:  # the same, by type, on an assign
        provider.attach_reserved_ip(info, str(do_rig.master_droplet()))
    assert gone.value.address == old


def _fake_docker(tmp_path: Path, networks: dict[str, str]) -> Docker:
    """A `docker` that knows only ``networks`` (name -> subnet), for `docker network inspect`."""
    import json
    import sys

    answers = {
        name: {"Name": name, "IPAM": {"Config": [{"Subnet": subnet, "Gateway": ""}]}}
        for name, subnet in networks.items()
    }
    tmp_path.mkdir()
    script = tmp_path / "docker"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"known = json.loads({json.dumps(json.dumps(answers))})\n"
        "found = [known[n] for n in sys.argv[3:] if n in known]\n"
        "print(json.dumps(found))\n"
        "sys.exit(0 if found else 1)\n"
    )
    script.chmod(0o755)
    return Docker(binary=str(script))


def test_the_local_reserved_ip_exists_while_its_cluster_network_holds_it(tmp_path: Path) -> None:
    info = ReservedIpInfo("10.213.4.250", "vrrp:dynia-demo:10.213.4.250")
    there = LocalNodeProvider(docker=_fake_docker(tmp_path / "a", {"dynia-demo": "10.213.4.0/24"}))
    remade = LocalNodeProvider(docker=_fake_docker(tmp_path / "b", {"dynia-demo": "10.213.9.0/24"}))
    gone = LocalNodeProvider(docker=_fake_docker(tmp_path / "c", {}))

    assert there.reserved_ip_exists(info)
    there.attach_reserved_ip(info, "demo-misty-owl")  # keepalived moves it: nothing to do
    assert not remade.reserved_ip_exists(info)  # a network made again has another subnet
    assert not gone.reserved_ip_exists(info)
    with pytest.raises(ReservedIpGoneError) as raised:
        gone.attach_reserved_ip(info, "demo-misty-owl")
    assert "dynia-demo" in raised.value.message and "create it again" in (raised.value.hint or "")
