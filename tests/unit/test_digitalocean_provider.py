"""The DigitalOcean node provider and notify-master script, via pydo against the fake API."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakes import FakeDigitalOcean

from dynia.errors import ProviderError
from dynia.providers.base import NodeProvider, NodeSpec, ProvisionedNode, ReservedIpInfo
from dynia.providers.digitalocean.api import RetryPolicy
from dynia.providers.digitalocean.provider import DigitalOceanNodeProvider, Timeouts
from dynia.render.renderer import template_environment

REPO = Path(__file__).resolve().parents[2]
FAST = Timeouts(active=10, ssh=10, action=1.5, vpc_release=1.0, poll_interval=0.05)


def _public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@pytest.fixture
def fake() -> Iterator[FakeDigitalOcean]:
    with FakeDigitalOcean() as server:
        yield server


@pytest.fixture
def provider(fake: FakeDigitalOcean) -> DigitalOceanNodeProvider:
    return _provider(fake)


def _provider(fake: FakeDigitalOcean, **overrides: object) -> DigitalOceanNodeProvider:
    options: dict[str, object] = {
        "api_url": fake.api_url,
        "region": "fra1",
        "ssh_port": fake.backend.ssh_port,
        "timeouts": FAST,
        "retry": RetryPolicy(attempts=4, base_delay=0.05, max_delay=5),
    }
    options.update(overrides)
    return DigitalOceanNodeProvider(fake.token, **options)  # type: ignore[arg-type]


@pytest.fixture
def key() -> str:
    return _public_key()


def _spec(name: str, key: str, cluster: str = "prod") -> NodeSpec:
    return NodeSpec(
        cluster=cluster, name=name, region="fra1", size="s-1vcpu-1gb", ssh_public_key=key
    )


def test_provider_satisfies_the_protocol(provider: DigitalOceanNodeProvider) -> None:
    assert isinstance(provider, NodeProvider)
    assert provider.reserved_ip_mode == "api"


def test_create_node_makes_a_tagged_droplet_in_the_cluster_vpc_with_a_pinned_host_key(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    network = provider.ensure_network("prod")
    node = provider.create_node(_spec("misty-owl", key))

    droplet = fake.droplets[int(node.provider_id)]
    assert droplet["name"] == "prod-misty-owl"
    assert {"dynia", "dynia-cluster-prod", "dynia-node-misty-owl"} <= set(droplet["tags"])
    assert fake.vpcs[droplet["vpc_uuid"]]["name"] == "dynia-prod"
    assert network.interface == "eth1"
    assert ipaddress.ip_address(node.private_ip) in ipaddress.ip_network(network.subnet)
    assert fake.backend.created[0].ssh_public_keys == (key,)
    # cloud-init installs exactly the host key the provider reports, and python3 for Ansible.
    user_data = droplet["user_data"]
    assert user_data.startswith("#cloud-config\n")
    config = yaml.safe_load(user_data)
    assert node.host_keys == [config["ssh_keys"]["ed25519_public"]]
    assert "python3" in config["packages"]
    private = serialization.load_ssh_private_key(
        config["ssh_keys"]["ed25519_private"].encode(), None
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert node.host_keys[0] == public.decode()


def test_network_planned_without_a_region_is_the_vpc_the_first_node_creates(
    fake: FakeDigitalOcean, key: str
) -> None:
    fake.vpcs.clear()
    taken = fake._make_vpc("someone-else", "fra1", None)["ip_range"]
    provider = _provider(fake, region=None)  # as the services build it: no region known yet

    planned = provider.ensure_network("prod")
    assert not any(v["name"] == "dynia-prod" for v in fake.vpcs.values())  # only planned
    assert not ipaddress.ip_network(planned.subnet).overlaps(ipaddress.ip_network(taken))

    node = provider.create_node(_spec("misty-owl", key))
    [vpc] = [v for v in fake.vpcs.values() if v["name"] == "dynia-prod"]
    assert (vpc["region"], vpc["ip_range"]) == ("fra1", planned.subnet)
    assert ipaddress.ip_address(node.private_ip) in ipaddress.ip_network(planned.subnet)
    assert provider.ensure_network("prod") == planned


def test_rerun_finds_the_droplet_and_recovers_its_host_key_without_duplicating(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    first = provider.create_node(_spec("misty-owl", key))
    again = _provider(fake).create_node(_spec("misty-owl", key))  # a fresh process, same account

    assert again == first
    assert len(fake.droplets) == 1
    assert len(fake.ssh_keys) == 1
    assert provider.list_nodes("prod") == [first]
    assert provider.list_nodes("other") == []


def test_lists_follow_pagination(key: str) -> None:
    with FakeDigitalOcean(per_page_max=2) as fake:
        provider = _provider(fake)
        names = ["ash-elk", "bold-fox", "calm-owl", "deep-yak", "even-cat"]
        for name in names:
            provider.create_node(_spec(name, key))

        assert [n.name for n in provider.list_nodes("prod")] == names
        pages = {e.query.get("page") for e in fake.exchanges if e.path == "/v2/droplets"}
        assert {"1", "2", "3"} <= pages


def test_reserved_ip_allocate_attach_detach_release(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    a = provider.create_node(_spec("ash-elk", key))
    b = provider.create_node(_spec("bold-fox", key))

    rip = provider.allocate_reserved_ip("prod", "fra1")
    assert provider.allocate_reserved_ip("prod", "fra1") == rip  # found again, not a second one
    assert len(fake.reserved_ips) == 1

    provider.attach_reserved_ip(rip, b.provider_id)
    assert fake.backend.assignments[rip.address] == int(b.provider_id)
    posts = len(fake.statuses(f"/v2/reserved_ips/{rip.address}/actions", "POST"))
    provider.attach_reserved_ip(rip, b.provider_id)  # already there: no new action
    assert len(fake.statuses(f"/v2/reserved_ips/{rip.address}/actions", "POST")) == posts

    provider.attach_reserved_ip(rip, a.provider_id)
    assert fake.backend.assignments[rip.address] == int(a.provider_id)
    provider.detach_reserved_ip(rip)
    assert fake.backend.assignments[rip.address] is None
    provider.release_reserved_ip("prod", rip)
    provider.release_reserved_ip("prod", rip)  # already gone: not an error
    assert fake.reserved_ips == {}


def test_teardown_deletes_only_what_it_created(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    ours = provider.create_node(_spec("ash-elk", key))
    theirs = provider.create_node(_spec("ash-elk", _public_key(), cluster="staging"))

    with pytest.raises(ProviderError, match="dynia-cluster-prod"):
        provider.delete_node("prod", theirs.provider_id)
    with pytest.raises(ProviderError, match="lose its droplets") as caught:
        provider.delete_network("prod")  # the VPC still has a member: bounded wait, clear error
    assert "deleting VPC dynia-prod" in caught.value.message
    assert "Networking > VPC" in (caught.value.hint or "")

    provider.delete_node("prod", ours.provider_id)
    provider.delete_node("prod", ours.provider_id)  # already gone: not an error
    provider.delete_network("prod")
    provider.delete_network("prod")

    assert [d["name"] for d in fake.droplets.values()] == ["staging-ash-elk"]
    assert [v["name"] for v in fake.vpcs.values() if not v["default"]] == ["dynia-staging"]
    assert [k["name"] for k in fake.ssh_keys.values()] == ["dynia-staging"]


def test_rate_limit_is_waited_out_using_the_reset_header(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    fake.rate_limit(2, path_prefix="/v2/droplets", reset_in=1)
    started = time.monotonic()
    node = provider.create_node(_spec("ash-elk", key))

    assert node.public_ip
    statuses = fake.statuses("/v2/droplets")
    assert statuses[:2] == [429, 429] and statuses[2] == 200
    assert time.monotonic() - started >= 0.5  # it waited for the reset, not a tight loop


def test_server_error_bursts_are_retried_and_long_outages_reported(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    fake.server_errors(3, path_prefix="/v2/account/keys")
    provider.create_node(_spec("ash-elk", key))
    assert fake.statuses("/v2/account/keys")[:4] == [500, 500, 500, 404]

    fake.server_errors(50, path_prefix="/v2/droplets")
    with pytest.raises(ProviderError) as caught:
        provider.list_nodes("prod")
    assert "kept failing" in caught.value.message and "500" in caught.value.message
    assert "status.digitalocean.com" in (caught.value.hint or "")
    assert fake.statuses("/v2/droplets").count(500) == 4  # bounded by RetryPolicy.attempts


def test_rejected_token_is_an_actionable_error(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    fake.reject_token()
    with pytest.raises(ProviderError) as caught:
        provider.create_node(_spec("ash-elk", key))
    assert "401" in caught.value.message
    assert "DIGITALOCEAN_TOKEN" in (caught.value.hint or "")
    assert "droplet:create" in (caught.value.hint or "")
    assert caught.value.exit_code == 5
    assert fake.statuses().count(401) == 1  # not retried
    assert fake.droplets == {}


def test_quota_on_create_is_actionable_and_leaves_nothing_a_rerun_trips_on(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    fake.droplet_limit = 1
    provider.create_node(_spec("ash-elk", key))
    with pytest.raises(ProviderError) as caught:
        provider.create_node(_spec("bold-fox", key))
    assert "quota" in caught.value.message and "droplet limit" in caught.value.message
    assert "--nodes" in (caught.value.hint or "")
    assert len(fake.droplets) == 1

    fake.droplet_limit = 3  # the operator raised the limit: the same run now converges
    provider.create_node(_spec("ash-elk", key))
    provider.create_node(_spec("bold-fox", key))
    assert sorted(d["name"] for d in fake.droplets.values()) == ["prod-ash-elk", "prod-bold-fox"]


def test_nodes_past_the_account_droplet_limit_are_refused_before_any_is_made(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    fake.droplet_limit = 3
    provider.create_node(_spec("ash-elk", key, cluster="other"))
    provider.create_node(_spec("bold-fox", key))

    with pytest.raises(ProviderError) as caught:
        provider.check_room("prod", ["bold-fox", "cold-owl", "dark-yak"])
    assert "has 2 of its 3 droplets" in caught.value.message
    assert "2 more for cluster prod" in caught.value.message
    assert "droplet limit" in (caught.value.hint or "") and "--nodes" in (caught.value.hint or "")
    assert len(fake.droplets) == 2

    provider.check_room("prod", ["bold-fox", "cold-owl"])  # bold-fox exists: one more fits
    provider.check_room("prod", ["bold-fox"])


def test_an_action_that_never_completes_is_a_bounded_clear_error(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    node = provider.create_node(_spec("ash-elk", key))
    rip = ReservedIpInfo(*[fake.backend.reserve_address("fra1")] * 2)
    fake.reserved_ips[rip.address] = {
        "ip": rip.address,
        "region": "fra1",
        "droplet_id": None,
        "locked": False,
        "project_id": "746c6152-2fa2-11ed-92d3-27aaa54e4988",
    }
    fake.stall_actions = True
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        provider.attach_reserved_ip(rip, node.provider_id)
    assert time.monotonic() - started < FAST.action + 2
    assert "did not complete within" in caught.value.message
    assert "status.digitalocean.com" in (caught.value.hint or "")


def test_missing_token_and_credentials_file_rules(
    fake: FakeDigitalOcean, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials.json"
    monkeypatch.delenv("DIGITALOCEAN_TOKEN", raising=False)
    monkeypatch.setenv("DYNIA_CREDENTIALS_FILE", str(credentials))
    with pytest.raises(ProviderError) as caught:
        DigitalOceanNodeProvider(api_url=fake.api_url)
    assert "DIGITALOCEAN_TOKEN" in caught.value.message

    credentials.write_text(json.dumps({"DIGITALOCEAN_TOKEN": fake.token}))
    credentials.chmod(0o644)
    with pytest.raises(ProviderError, match="readable by other users"):
        DigitalOceanNodeProvider(api_url=fake.api_url)

    credentials.chmod(0o600)
    from_file = DigitalOceanNodeProvider(api_url=fake.api_url, region="fra1", timeouts=FAST)
    assert from_file.ensure_network("prod").name == "dynia-prod"

    monkeypatch.setenv("DIGITALOCEAN_API_URL", fake.api_url)
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", fake.token)
    assert DigitalOceanNodeProvider(region="fra1").ensure_network("prod").name == "dynia-prod"


def test_plain_http_to_a_public_host_is_refused(fake: FakeDigitalOcean) -> None:
    with pytest.raises(ProviderError, match="unencrypted"):
        DigitalOceanNodeProvider(fake.token, api_url="http://8.8.8.8:9")


def test_token_never_appears_in_errors_or_reprs(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    seen: list[str] = [repr(provider), str(vars(provider._api).get("_token"))]
    fake.droplet_limit = 0
    fake.server_errors(50, path_prefix="/v2/vpcs")
    for action in (
        lambda: provider.create_node(_spec("ash-elk", key)),
        lambda: provider.delete_node("prod", "not-a-number"),
        fake.clear_faults,
        lambda: provider.create_node(_spec("ash-elk", key)),
        fake.reject_token,
        lambda: provider.list_nodes("prod"),
    ):
        try:
            action()
        except ProviderError as exc:
            seen += [str(exc), repr(exc), exc.message, exc.hint or ""]
    assert len(seen) > 10
    assert not [text for text in seen if fake.token in text]


# -- the notify-master script ------------------------------------------------------------------


class _Metadata:
    """The droplet metadata service: answers /metadata/v1/id with one droplet's id."""

    def __init__(self, droplet_id: int) -> None:
        body = str(droplet_id).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = self.path == "/metadata/v1/id"
                self.send_response(200 if found else 404)
                self.send_header("content-length", str(len(body) if found else 0))
                self.end_headers()
                if found:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metadata/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _render_script(
    tmp_path: Path, fake: FakeDigitalOcean, address: str, metadata: str, **extra: object
) -> Path:
    token_file = tmp_path / "do-token"
    token_file.write_text(fake.token + "\n")
    token_file.chmod(0o600)
    env = template_environment([REPO / "templates"])  # the renderer's, with its quote filter
    text = env.get_template("keepalived/notify-master-digitalocean.sh.j2").render(
        dynia_do_reserved_ip=address,
        dynia_do_metadata_url=metadata,
        dynia_do_token_file=str(token_file),
        dynia_do_action_timeout=5,
        **{"dynia_do_settle_seconds": 0, "dynia_do_api_url": fake.api_url, **extra},
    )
    script = tmp_path / "notify-master.sh"
    script.write_text(text)
    script.chmod(0o700)
    return script


def _run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), "INSTANCE", "VI_1", "MASTER", "150"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"]},
    )


@dataclass
class _MoveToBoldFox:
    """The Reserved IP on ash-elk; the script runs "on" bold-fox (the metadata answers its id)."""

    ash: ProvisionedNode
    bold: ProvisionedNode
    rip: ReservedIpInfo
    metadata_url: str


@pytest.fixture
def move_to_bold_fox(provider: DigitalOceanNodeProvider, key: str) -> Iterator[_MoveToBoldFox]:
    ash = provider.create_node(_spec("ash-elk", key))
    bold = provider.create_node(_spec("bold-fox", key))
    rip = provider.allocate_reserved_ip("prod", "fra1")
    provider.attach_reserved_ip(rip, ash.provider_id)
    metadata = _Metadata(int(bold.provider_id))
    try:
        yield _MoveToBoldFox(ash, bold, rip, metadata.url)
    finally:
        metadata.close()


def test_notify_master_script_moves_the_reserved_ip_to_its_own_droplet(
    fake: FakeDigitalOcean, move_to_bold_fox: _MoveToBoldFox, tmp_path: Path
) -> None:
    b, rip = move_to_bold_fox.bold, move_to_bold_fox.rip
    script = _render_script(tmp_path, fake, rip.address, move_to_bold_fox.metadata_url)
    assert "{{" not in script.read_text()
    fake.rate_limit(1, path_prefix="/v2/reserved_ips", reset_in=1)

    moved = _run(script)
    assert moved.returncode == 0, moved.stderr
    assert fake.backend.assignments[rip.address] == int(b.provider_id)
    assert f"assigned {rip.address} to droplet {b.provider_id}" in moved.stderr

    posts = len(fake.statuses(f"/v2/reserved_ips/{rip.address}/actions", "POST"))
    again = _run(script)
    assert again.returncode == 0
    assert "already assigned" in again.stderr
    assert len(fake.statuses(f"/v2/reserved_ips/{rip.address}/actions", "POST")) == posts
    assert fake.token not in moved.stderr + moved.stdout + again.stderr


def test_notify_master_script_leaves_the_address_when_the_node_is_no_longer_master(
    fake: FakeDigitalOcean, move_to_bold_fox: _MoveToBoldFox, tmp_path: Path
) -> None:
    # A backup that was MASTER for a moment (an election on busy nodes) and yielded: keepalived
    # took its marker address away before the script got to move the Reserved IP.
    a, rip = move_to_bold_fox.ash, move_to_bold_fox.rip
    script = _render_script(
        tmp_path,
        fake,
        rip.address,
        move_to_bold_fox.metadata_url,
        dynia_do_master_marker="169.254.0.250",
    )
    yielded = _run(script)
    assert yielded.returncode == 0, yielded.stderr
    assert "no longer MASTER" in yielded.stderr
    assert fake.backend.assignments[rip.address] == int(a.provider_id)
    assert fake.statuses(f"/v2/reserved_ips/{rip.address}/actions", "POST") == []


def test_notify_master_script_moves_the_address_back_when_a_yielded_node_moved_it_last(
    fake: FakeDigitalOcean,
    provider: DigitalOceanNodeProvider,
    move_to_bold_fox: _MoveToBoldFox,
    tmp_path: Path,
) -> None:
    a, b, rip = move_to_bold_fox.ash, move_to_bold_fox.bold, move_to_bold_fox.rip
    script = _render_script(
        tmp_path, fake, rip.address, move_to_bold_fox.metadata_url, dynia_do_settle_seconds=6
    )
    running = subprocess.Popen(
        ["bash", str(script), "INSTANCE", "VI_1", "MASTER", "150"],
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    deadline = time.monotonic() + 20
    while fake.backend.assignments.get(rip.address) != int(b.provider_id):
        assert time.monotonic() < deadline and running.poll() is None
        time.sleep(0.1)
    # The node that yielded moves the address last, while bold-fox is still MASTER.
    provider.attach_reserved_ip(rip, a.provider_id)
    _, stderr = running.communicate(timeout=30)
    assert running.returncode == 0, stderr
    assert "moving it back" in stderr
    assert fake.backend.assignments[rip.address] == int(b.provider_id)


def test_notify_master_script_refuses_a_readable_token_file_and_reports_a_bad_token(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str, tmp_path: Path
) -> None:
    a = provider.create_node(_spec("ash-elk", key))
    rip = provider.allocate_reserved_ip("prod", "fra1")
    metadata = _Metadata(int(a.provider_id))
    try:
        script = _render_script(tmp_path, fake, rip.address, metadata.url)
        (tmp_path / "do-token").chmod(0o644)
        loose = _run(script)
        assert loose.returncode == 2 and "mode 0600" in loose.stderr

        (tmp_path / "do-token").chmod(0o600)
        fake.reject_token()
        refused = _run(script)
        assert refused.returncode == 2 and "HTTP 401" in refused.stderr
        assert fake.token not in refused.stderr
    finally:
        metadata.close()


def test_notify_master_script_reports_a_failed_connection_as_http_000(
    fake: FakeDigitalOcean, move_to_bold_fox: _MoveToBoldFox, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # nothing listens here once the block ends
    script = _render_script(
        tmp_path,
        fake,
        move_to_bold_fox.rip.address,
        move_to_bold_fox.metadata_url,
        dynia_do_api_url=f"http://127.0.0.1:{port}",
        dynia_do_attempts=1,
    )
    failed = _run(script)
    assert failed.returncode == 1
    assert "HTTP 000 (attempt 1)" in failed.stderr
    assert "000000" not in failed.stderr


def test_notify_master_script_waits_as_long_as_retry_after_says(
    fake: FakeDigitalOcean, move_to_bold_fox: _MoveToBoldFox, tmp_path: Path
) -> None:
    # DigitalOcean's burst limit: a short Retry-After, a ratelimit-reset an hour away.
    b, rip = move_to_bold_fox.bold, move_to_bold_fox.rip
    script = _render_script(
        tmp_path, fake, rip.address, move_to_bold_fox.metadata_url, dynia_do_attempts=2
    )
    fake.rate_limit(2, path_prefix="/v2/reserved_ips", reset_in=3600, retry_after=2)
    started = time.monotonic()
    moved = _run(script)
    assert moved.returncode == 0, moved.stderr
    assert time.monotonic() - started >= 4  # both waits as asked; neither used up an attempt
    assert moved.stderr.count("waited 2s as DigitalOcean asked") == 2
    assert fake.backend.assignments[rip.address] == int(b.provider_id)


def test_notify_master_script_gives_up_when_retry_after_passes_its_bound(
    fake: FakeDigitalOcean, move_to_bold_fox: _MoveToBoldFox, tmp_path: Path
) -> None:
    a, rip = move_to_bold_fox.ash, move_to_bold_fox.rip
    script = _render_script(
        tmp_path, fake, rip.address, move_to_bold_fox.metadata_url, dynia_do_max_wait=5
    )
    fake.rate_limit(50, path_prefix="/v2/reserved_ips", reset_in=3600, retry_after=3600)
    started = time.monotonic()
    refused = _run(script)
    assert refused.returncode == 1
    assert time.monotonic() - started < 10
    assert "asks for 3600s more, past the 5s" in refused.stderr
    assert fake.backend.assignments[rip.address] == int(a.provider_id)


def test_notify_master_script_does_not_sleep_on_a_retry_after_too_long_to_count(
    fake: FakeDigitalOcean, move_to_bold_fox: _MoveToBoldFox, tmp_path: Path
) -> None:
    # 2**64 - 1 wraps the shell's arithmetic to -1: the bound would pass and sleep forever.
    rip = move_to_bold_fox.rip
    script = _render_script(
        tmp_path, fake, rip.address, move_to_bold_fox.metadata_url, dynia_do_max_wait=5
    )
    huge = 18446744073709551615
    fake.rate_limit(50, path_prefix="/v2/reserved_ips", reset_in=3600, retry_after=huge)
    started = time.monotonic()
    refused = _run(script)
    assert refused.returncode == 1
    assert time.monotonic() - started < 30
    assert "past the 5s this script waits in all" in refused.stderr


def test_host_key_tag_round_trips(provider: DigitalOceanNodeProvider, key: str) -> None:
    node = provider.create_node(_spec("ash-elk", key))
    kind, blob = node.host_keys[0].split()
    assert kind == "ssh-ed25519" and len(base64.b64decode(blob)) == 51


def test_the_fake_serves_as_metadata_service_for_the_notify_script(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str, tmp_path: Path
) -> None:
    a = provider.create_node(_spec("ash-elk", key))
    b = provider.create_node(_spec("bold-fox", key))
    rip = provider.allocate_reserved_ip("prod", "fra1")
    provider.attach_reserved_ip(rip, a.provider_id)
    fake.metadata_ids["127.0.0.1"] = int(b.provider_id)  # the script runs "on" bold-fox

    script = _render_script(tmp_path, fake, rip.address, f"{fake.origin}/metadata/v1")
    moved = _run(script)
    assert moved.returncode == 0, moved.stderr
    assert fake.backend.assignments[rip.address] == int(b.provider_id)


# -- cloud faults: a hung API, lost answers to creates, rate limits, leaving droplets ----------


def _recording(fake: FakeDigitalOcean, **retry: float) -> tuple[DigitalOceanNodeProvider, list]:
    """A provider whose progress lines are collected; retry options override fast defaults."""
    lines: list[str] = []
    policy = {"attempts": 4, "base_delay": 0.05, "max_delay": 60, **retry}
    provider = _provider(fake, retry=RetryPolicy(**policy), progress=lines.append)
    return provider, lines


def test_a_hung_api_is_given_up_on_after_the_read_timeout_and_said_so(
    fake: FakeDigitalOcean, key: str
) -> None:
    provider, lines = _recording(fake, read_timeout=0.3)
    provider.create_node(_spec("ash-elk", key))
    fake.stall(3, count=1, path_prefix="/v2/droplets", method="GET")
    started = time.monotonic()
    assert [n.name for n in provider.list_nodes("prod")] == ["ash-elk"]
    assert time.monotonic() - started < 2  # not the 300 s default of the HTTP stack
    assert any("no answer within" in line and "listing droplets" in line for line in lines)

    fake.stall(3, count=50, path_prefix="/v2/droplets", method="GET")
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        provider.list_nodes("prod")
    assert time.monotonic() - started < 4 * 0.3 + 2  # 4 tries, short backoffs
    assert "listing droplets" in caught.value.message
    assert "no answer within" in caught.value.message
    assert "re-run" in (caught.value.hint or "")


def test_a_create_answered_with_5xx_after_acceptance_makes_exactly_one_droplet(
    fake: FakeDigitalOcean, key: str
) -> None:
    provider, lines = _recording(fake)
    fake.server_errors(1, path_prefix="/v2/droplets", method="POST", after_serving=True)
    node = provider.create_node(_spec("ash-elk", key))

    assert list(fake.droplets) == [int(node.provider_id)]
    assert fake.statuses("/v2/droplets", "POST") == [500]  # looked up, not sent again
    assert any("accepted the earlier try of creating droplet" in line for line in lines)


def test_a_create_whose_answer_times_out_makes_exactly_one_droplet(
    fake: FakeDigitalOcean, key: str
) -> None:
    provider, _ = _recording(fake, read_timeout=0.3)
    fake.stall(1.5, path_prefix="/v2/droplets", method="POST")
    provider.create_node(_spec("ash-elk", key))
    assert len(fake.droplets) == 1
    assert len(fake.statuses("/v2/droplets", "POST")) == 1


def test_vpc_and_reserved_ip_creates_are_not_repeated_after_a_lost_answer(
    fake: FakeDigitalOcean, key: str
) -> None:
    provider, _ = _recording(fake)
    fake.server_errors(1, path_prefix="/v2/vpcs", method="POST", after_serving=True)
    provider.ensure_network("prod")
    assert [v["name"] for v in fake.vpcs.values() if not v["default"]] == ["dynia-prod"]

    node = provider.create_node(_spec("ash-elk", key))
    fake.server_errors(1, path_prefix="/v2/reserved_ips", method="POST", after_serving=True)
    rip = provider.allocate_reserved_ip("prod", "fra1")

    assert list(fake.reserved_ips) == [rip.address]
    assert fake.statuses("/v2/reserved_ips", "POST") == [500]
    assert provider.allocate_reserved_ip("prod", "fra1") == rip
    # The create's own assign may still run when allocate returns; attaching finishes the move.
    provider.attach_reserved_ip(rip, node.provider_id)
    assert fake.backend.assignments[rip.address] == int(node.provider_id)


def test_retry_after_wins_over_a_rate_limit_reset_an_hour_away(
    fake: FakeDigitalOcean, key: str
) -> None:
    waits: list[float] = []
    lines: list[str] = []
    provider = _provider(
        fake, sleep=waits.append, progress=lines.append, retry=RetryPolicy(base_delay=0.05)
    )
    fake.rate_limit(1, path_prefix="/v2/droplets", reset_in=3600, retry_after=29)
    assert provider.list_nodes("prod") == []
    assert waits == [29.0]
    assert fake.statuses("/v2/droplets") == [429, 200]
    assert any("HTTP 429" in line and "waiting 29s" in line for line in lines)

    fake.rate_limit(1, path_prefix="/v2/droplets", reset_in=3600, retry_after=3000)
    with pytest.raises(ProviderError) as caught:
        provider.list_nodes("prod")  # longer than RetryPolicy.max_delay: the operator decides
    assert "rate limit" in caught.value.message and "listing droplets" in caught.value.message
    assert "wait until" in (caught.value.hint or "")


def test_vpc_delete_waits_while_droplets_are_still_leaving(
    fake: FakeDigitalOcean, key: str
) -> None:
    lines: list[str] = []
    provider = _provider(
        fake, timeouts=Timeouts(vpc_release=10, poll_interval=0.05), progress=lines.append
    )
    node = provider.create_node(_spec("ash-elk", key))

    def droplet_finally_gone() -> None:  # DigitalOcean releases the member a little later
        with fake.lock:
            fake.droplets.pop(int(node.provider_id))

    threading.Timer(0.5, droplet_finally_gone).start()
    provider.delete_network("prod")

    assert not [v for v in fake.vpcs.values() if not v["default"]]
    assert 409 in fake.statuses("/v2/vpcs/", "DELETE")
    assert sum("still has members" in line for line in lines) == 1


def test_an_action_on_a_reserved_ip_that_is_gone_is_a_clear_error(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    node = provider.create_node(_spec("ash-elk", key))
    rip = provider.allocate_reserved_ip("prod", "fra1")
    with fake.lock:
        fake.reserved_ips.pop(rip.address)  # released in the control panel
    with pytest.raises(ProviderError) as caught:
        provider.attach_reserved_ip(rip, node.provider_id)
    assert f"no longer knows reserved IP {rip.address}" in caught.value.message
    assert "assigning" in caught.value.message
    assert "dynia repair" in (caught.value.hint or "")


def test_a_404_to_an_action_is_not_read_as_the_reserved_ip_gone_while_it_exists(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    provider.create_node(_spec("ash-elk", key))
    rip = provider.allocate_reserved_ip("prod", "fra1")
    fake.inject(404, path_prefix=f"/v2/reserved_ips/{rip.address}/actions", method="POST")
    with pytest.raises(ProviderError) as caught:
        provider.detach_reserved_ip(rip)
    assert "no longer" not in caught.value.message  # what attach's callers read as "gone"
    assert f"404 though reserved IP {rip.address} is on the account" in caught.value.message
    assert "dynia repair" not in (caught.value.hint or "")
