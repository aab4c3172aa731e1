"""DigitalOcean misbehaving: a slow or failed Reserved IP move, lost answers, malformed answers,
refusals. The DigitalOcean provider (pydo against the fake API on loopback), the state store and
the provisioning step are the real ones; the fake only misbehaves as told.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import test_digitalocean_provider
from fakes import FakeDigitalOcean
from sample_state import save_sample
from test_digitalocean_provider import _provider, _spec

from dynia.errors import ProviderError
from dynia.operations import infra
from dynia.operations.run_context import RunContext
from dynia.paths import HomeLayout
from dynia.providers.base import ReservedIpInfo
from dynia.providers.digitalocean.api import RetryPolicy
from dynia.providers.digitalocean.provider import DigitalOceanNodeProvider
from dynia.runner import PlaybookResult
from dynia.state import StateStore
from dynia.state.models import MASTER_PRIORITY, NODE_READY, Cluster, Network, Node, ReservedIp

# The fake DigitalOcean, a provider on it and a public key (test_digitalocean_provider's).
fake = test_digitalocean_provider.fake
provider = test_digitalocean_provider.provider
key = test_digitalocean_provider.key


# -- a cluster whose nodes exist, up to the Reserved IP (what `cluster create` resumes) ---------


def _recording(fake: FakeDigitalOcean) -> tuple[DigitalOceanNodeProvider, list[str]]:
    """A provider on ``fake`` whose progress lines are collected."""
    lines: list[str] = []
    return _provider(fake, progress=lines.append), lines


def _no_playbooks(*args: object, **kwargs: object) -> PlaybookResult:
    raise AssertionError("provisioning runs no playbook")


def _nodes_made(tmp_path: Path, provider: DigitalOceanNodeProvider, key: str) -> RunContext:
    """State of cluster prod with two ready droplets (bold-fox the MASTER) and no Reserved IP,
    and a RunContext on that home."""
    nodes: dict[str, Node] = {}
    for name, priority in (("ash-elk", 100), ("bold-fox", MASTER_PRIORITY)):
        made = provider.create_node(_spec(name, key))
        nodes[name] = Node(
            name, made.provider_id, made.public_ip, made.private_ip, priority, NODE_READY
        )
    net = provider.ensure_network("prod")
    cluster = Cluster(
        name="prod",
        node_provider="digitalocean",
        dns_provider="local",
        region="fra1",
        size="s-1vcpu-1gb",
        planned_nodes=2,
        image="debian-13-x64",
        nodes=nodes,
        network=Network(net.name, net.subnet, net.interface, net.gateway),
    )
    home = tmp_path / "home"
    save_sample(home, cluster)
    return RunContext(layout=HomeLayout(home), store=StateStore(home), runner=_no_playbooks)


def _provision(ctx: RunContext, provider: DigitalOceanNodeProvider) -> ReservedIp:
    """The provisioning step of `cluster create` (a run or a re-run); the Reserved IP in state."""
    with ctx.store.transaction("cluster create") as txn:
        infra.provision(ctx, txn, txn.state.clusters["prod"], provider, 2)
    recorded = ctx.store.load().clusters["prod"].reserved_ip
    assert recorded is not None
    return recorded


def _master_droplet(ctx: RunContext) -> int:
    master = ctx.store.load().clusters["prod"].master
    assert master is not None
    return int(master.provider_id)


# -- bug: a slow or errored first assignment leaked a Reserved IP state never learned of -------


def test_a_slow_first_assign_still_records_the_reserved_ip_and_the_rerun_makes_no_second(
    fake: FakeDigitalOcean, key: str, tmp_path: Path
) -> None:
    provider, lines = _recording(fake)
    ctx = _nodes_made(tmp_path, provider, key)
    fake.stall_actions = True  # DigitalOcean is slow today: the assign outlasts the wait

    recorded = _provision(ctx, provider)
    assert list(fake.reserved_ips) == [recorded.address]  # the one on the account is in state
    assert any("allocated but not yet assigned" in line for line in lines)

    fake.resume_actions()
    assert _provision(ctx, provider) == recorded  # the re-run
    assert list(fake.reserved_ips) == [recorded.address]

    info = ReservedIpInfo(recorded.address, recorded.provider_id)
    provider.attach_reserved_ip(info, str(_master_droplet(ctx)))  # what the rollout does next
    assert fake.backend.assignments[recorded.address] == _master_droplet(ctx)
    provider.release_reserved_ip("prod", info)  # `cluster delete` releases the one in state
    assert fake.reserved_ips == {}


def test_an_errored_first_assign_is_done_again_and_nothing_leaks(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str, tmp_path: Path
) -> None:
    ctx = _nodes_made(tmp_path, provider, key)
    fake.failing_actions = 1  # DigitalOcean fails the assign that comes with the create

    recorded = _provision(ctx, provider)
    assert _provision(ctx, provider) == recorded  # the re-run
    assert list(fake.reserved_ips) == [recorded.address]
    holder = fake.reserved_ips[recorded.address]["droplet_id"]
    assert holder in {int(n.provider_id) for n in ctx.store.load().clusters["prod"].nodes.values()}

    provider.release_reserved_ip("prod", ReservedIpInfo(recorded.address, recorded.provider_id))
    assert fake.reserved_ips == {}


def test_a_run_cut_off_after_the_create_was_accepted_leaves_the_rerun_that_address(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    provider.create_node(_spec("ash-elk", key))
    fake.stall_actions = True
    fake.server_errors(1, path_prefix="/v2/reserved_ips", method="POST", after_serving=True)
    cut_off = _provider(fake, retry=RetryPolicy(attempts=1, base_delay=0.05))
    with pytest.raises(ProviderError):
        cut_off.allocate_reserved_ip("prod", "fra1")  # the answer never came: state lacks it
    [made] = fake.reserved_ips

    threading.Timer(0.5, fake.resume_actions).start()  # its assign ends during the re-run
    rerun = provider.allocate_reserved_ip("prod", "fra1")
    assert rerun.address == made
    assert list(fake.reserved_ips) == [made]


# -- bug: a lost answer to an assign or unassign was sent again blindly --------------------------


@pytest.fixture
def rip_on_ash(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> tuple[ReservedIpInfo, int, int]:
    """The Reserved IP on ash-elk; returns it, ash-elk's and bold-fox's droplet ids."""
    ash = provider.create_node(_spec("ash-elk", key))
    bold = provider.create_node(_spec("bold-fox", key))
    rip = provider.allocate_reserved_ip("prod", "fra1")
    provider.attach_reserved_ip(rip, ash.provider_id)
    return rip, int(ash.provider_id), int(bold.provider_id)


def _lose_next_action_answer(fake: FakeDigitalOcean, rip: ReservedIpInfo) -> str:
    path = f"/v2/reserved_ips/{rip.address}/actions"
    fake.server_errors(1, path_prefix=path, method="POST", after_serving=True)
    return path


def test_a_lost_answer_to_an_unassign_is_not_followed_by_a_second_one(
    fake: FakeDigitalOcean,
    provider: DigitalOceanNodeProvider,
    rip_on_ash: tuple[ReservedIpInfo, int, int],
) -> None:
    rip = rip_on_ash[0]
    path = _lose_next_action_answer(fake, rip)
    provider.detach_reserved_ip(rip)
    assert fake.statuses(path, "POST")[-1:] == [500]  # looked at again, not sent again
    assert fake.reserved_ips[rip.address]["droplet_id"] is None

    provider.attach_reserved_ip(rip, str(rip_on_ash[1]))
    _lose_next_action_answer(fake, rip)
    provider.release_reserved_ip("prod", rip)  # `cluster delete`: unassign, then release
    assert fake.statuses(path, "POST")[-1:] == [500]
    assert fake.reserved_ips == {}


def test_a_lost_answer_to_an_assign_is_not_followed_by_a_second_one(
    fake: FakeDigitalOcean,
    provider: DigitalOceanNodeProvider,
    rip_on_ash: tuple[ReservedIpInfo, int, int],
) -> None:
    rip, _, bold = rip_on_ash
    posts = len(fake.statuses(f"/v2/reserved_ips/{rip.address}/actions", "POST"))
    path = _lose_next_action_answer(fake, rip)
    provider.attach_reserved_ip(rip, str(bold))
    assert fake.statuses(path, "POST")[posts:] == [500]
    assert fake.backend.assignments[rip.address] == bold


def test_a_422_to_an_assign_that_took_effect_anyway_is_done(
    fake: FakeDigitalOcean,
    provider: DigitalOceanNodeProvider,
    rip_on_ash: tuple[ReservedIpInfo, int, int],
) -> None:
    # Another mover (keepalived's notify-master on bold-fox) got there first: DigitalOcean
    # refuses the second move, and the address is where it should be.
    rip, _, bold = rip_on_ash
    fake.inject(
        422,
        path_prefix=f"/v2/reserved_ips/{rip.address}/actions",
        method="POST",
        after_serving=True,
        message="Reserved IP is already assigned to this droplet",
    )
    provider.attach_reserved_ip(rip, str(bold))
    assert fake.backend.assignments[rip.address] == bold


# -- bug: malformed answers escaped as tracebacks -----------------------------------------------


def test_an_html_page_instead_of_json_is_retried_for_a_read_then_reported(
    fake: FakeDigitalOcean, key: str
) -> None:
    provider, lines = _recording(fake)
    provider.create_node(_spec("ash-elk", key))
    fake.malformed_answers("<html>502 Bad Gateway</html>", path_prefix="/v2/droplets")
    assert [n.name for n in provider.list_nodes("prod")] == ["ash-elk"]
    assert any("unreadable answer" in line and "listing droplets" in line for line in lines)

    fake.malformed_answers("<html>502 Bad Gateway</html>", count=50, path_prefix="/v2/droplets")
    with pytest.raises(ProviderError) as caught:
        provider.list_nodes("prod")
    assert "listing droplets of cluster prod" in caught.value.message
    assert "something other than its JSON" in caught.value.message
    assert "text/html" in caught.value.message
    assert "DIGITALOCEAN_API_URL" in (caught.value.hint or "")
    assert "re-run the same command" in (caught.value.hint or "")


@pytest.mark.parametrize("body", ['{"droplets": [', "null", ""])
def test_json_cut_short_or_null_is_retried_as_a_failure_not_read_as_a_refusal(
    fake: FakeDigitalOcean, key: str, body: str
) -> None:
    provider, lines = _recording(fake)
    provider.create_node(_spec("ash-elk", key))
    fake.malformed_answers(
        body, count=2, content_type="application/json", path_prefix="/v2/droplets", method="GET"
    )
    assert [n.name for n in provider.list_nodes("prod")] == ["ash-elk"]
    assert fake.statuses("/v2/droplets", "GET")[-3:] == [200, 200, 200]
    assert sum("unreadable answer" in line for line in lines) == 2


def test_a_droplet_without_tags_is_a_malformed_answer_not_a_key_error(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str
) -> None:
    provider.create_node(_spec("ash-elk", key))
    droplet = {"id": 1, "name": "prod-ash-elk", "status": "active", "region": {"slug": "fra1"}}
    body = json.dumps({"droplets": [droplet], "links": {}, "meta": {"total": 1}})
    fake.malformed_answers(body, content_type="application/json", path_prefix="/v2/droplets")
    with pytest.raises(ProviderError) as caught:
        provider.list_nodes("prod")
    assert "listing droplets of cluster prod" in caught.value.message
    assert "'tags'" in caught.value.message
    assert "re-run the same command" in (caught.value.hint or "")


def test_a_create_answered_with_json_cut_short_makes_exactly_one(fake: FakeDigitalOcean) -> None:
    provider, lines = _recording(fake)
    fake.malformed_answers(
        '{"vpc": {',
        content_type="application/json",
        path_prefix="/v2/vpcs",
        method="POST",
        after_serving=True,
    )
    provider.ensure_network("prod")
    assert [v["name"] for v in fake.vpcs.values() if not v["default"]] == ["dynia-prod"]
    assert any("accepted the earlier try of creating VPC" in line for line in lines)


# -- bug: one hint ("check the region, size and image") for every refusal -----------------------


def test_assigning_to_a_droplet_deleted_by_hand_names_the_droplet(
    fake: FakeDigitalOcean,
    provider: DigitalOceanNodeProvider,
    rip_on_ash: tuple[ReservedIpInfo, int, int],
) -> None:
    rip, _, bold = rip_on_ash
    with fake.lock:
        fake.droplets.pop(bold)  # deleted in the control panel
    with pytest.raises(ProviderError) as caught:
        provider.attach_reserved_ip(rip, str(bold))
    assert f"droplet {bold} is gone from the DigitalOcean account" in caught.value.message
    assert "no longer" not in caught.value.message  # not "the Reserved IP is gone"
    hint = caught.value.hint or ""
    assert "dynia cluster node remove" in hint and "size" not in hint


def test_refusal_hints_speak_of_the_refused_operation(
    fake: FakeDigitalOcean,
    provider: DigitalOceanNodeProvider,
    rip_on_ash: tuple[ReservedIpInfo, int, int],
    key: str,
) -> None:
    rip, _, bold = rip_on_ash
    actions = f"/v2/reserved_ips/{rip.address}/actions"
    fake.inject(422, path_prefix=actions, method="POST", message="Droplet is not in the region")
    with pytest.raises(ProviderError) as caught:
        provider.attach_reserved_ip(rip, str(bold))
    assert "Droplet is not in the region" in caught.value.message
    assert "reserved IP's region" in (caught.value.hint or "")
    assert "size" not in (caught.value.hint or "")

    fake.inject(422, path_prefix="/v2/droplets", method="POST", message="Size is not available")
    with pytest.raises(ProviderError) as caught:
        provider.create_node(_spec("calm-owl", key))
    assert "region, size and image" in (caught.value.hint or "")
