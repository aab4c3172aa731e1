"""DigitalOcean misbehaving: a slow or failed Reserved IP move, lost answers, malformed answers,
refusals. The DigitalOcean provider (pydo against the fake API on loopback), the state store and
the provisioning step are the real ones; the fake only misbehaves as told.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from pathlib import Path

import pytest
import test_digitalocean_provider
from fakes import FakeDigitalOcean
from sample_state import save_sample
from test_digitalocean_provider import _provider, _spec
from test_orchestration import KeepalivedProbe

from dynia.errors import ProviderError
from dynia.operations import infra
from dynia.operations.run_context import RunContext
from dynia.paths import HomeLayout
from dynia.providers.base import ReservedIpGoneError, ReservedIpInfo
from dynia.providers.digitalocean.api import DigitalOceanApi, RetryPolicy
from dynia.providers.digitalocean.provider import DigitalOceanNodeProvider
from dynia.runner import PlaybookResult
from dynia.state import StateStore
from dynia.state.models import MASTER_PRIORITY, NODE_READY, Cluster, Network, Node, ReservedIp
from dynia.waiting import wait_until

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
# allocate_reserved_ip returns once the create answered; attach_reserved_ip finishes the move.


def _actions_polled(fake: FakeDigitalOcean) -> int:
    return len(fake.statuses("/v2/actions", "GET"))


def test_a_slow_first_assign_is_not_waited_for_and_the_rerun_makes_no_second(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str, tmp_path: Path
) -> None:
    ctx = _nodes_made(tmp_path, provider, key)
    fake.stall_actions = True  # DigitalOcean is slow today: the assign outlasts any wait
    polled = _actions_polled(fake)

    recorded = _provision(ctx, provider)
    assert list(fake.reserved_ips) == [recorded.address]  # the one on the account is in state
    assert _actions_polled(fake) == polled  # recorded without waiting for its assignment
    assert _provision(ctx, provider) == recorded  # the re-run
    assert list(fake.reserved_ips) == [recorded.address]

    # The rollout's attach waits while the first assign runs, then puts it on the MASTER.
    threading.Timer(0.3, fake.resume_actions).start()
    info = ReservedIpInfo(recorded.address, recorded.provider_id)
    provider.attach_reserved_ip(info, str(_master_droplet(ctx)))
    assert fake.backend.assignments[recorded.address] == _master_droplet(ctx)
    provider.release_reserved_ip("prod", info)  # `cluster delete` releases the one in state
    assert fake.reserved_ips == {}


def test_an_errored_first_assign_is_done_by_the_attach_and_nothing_leaks(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str, tmp_path: Path
) -> None:
    ctx = _nodes_made(tmp_path, provider, key)
    fake.failing_actions = 1  # DigitalOcean fails the assign that comes with the create

    recorded = _provision(ctx, provider)
    assert _provision(ctx, provider) == recorded  # the re-run
    assert list(fake.reserved_ips) == [recorded.address]

    info = ReservedIpInfo(recorded.address, recorded.provider_id)
    provider.attach_reserved_ip(info, str(_master_droplet(ctx)))  # what the rollout does next
    assert fake.backend.assignments[recorded.address] == _master_droplet(ctx)
    provider.release_reserved_ip("prod", info)
    assert fake.reserved_ips == {}


def _ctrl_c(seconds: float) -> None:
    raise KeyboardInterrupt  # the operator presses Ctrl-C at the run's first pause


def test_ctrl_c_after_an_errored_first_assign_leaves_the_rerun_no_second_address(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str, tmp_path: Path
) -> None:
    ctx = _nodes_made(tmp_path, provider, key)
    fake.failing_actions = 1  # the assign that comes with the create errors
    with contextlib.suppress(KeyboardInterrupt):  # however the first run ended
        _provision(ctx, _provider(fake, sleep=_ctrl_c))
    [made] = fake.reserved_ips
    wait_until(
        lambda: not fake.reserved_ips[made]["locked"], timeout=5, interval=0.02, what="the error"
    )
    assert fake.reserved_ips[made]["droplet_id"] is None  # unassigned, unlocked: not "ours"
    stored = ctx.store.load().clusters["prod"].reserved_ip
    assert stored is not None and stored.address == made  # the interrupted run recorded it

    recorded = _provision(ctx, provider)  # the re-run
    assert recorded.address == made
    assert list(fake.reserved_ips) == [made]  # no second address on the account
    provider.attach_reserved_ip(ReservedIpInfo(made, made), str(_master_droplet(ctx)))
    assert fake.backend.assignments[made] == _master_droplet(ctx)


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


# -- bug: a create re-run after the Reserved IP was released by hand ended at `repair --force`,
# which refuses a cluster still being created -------------------------------------------------


def _with_probe(ctx: RunContext, lines: list[str]) -> RunContext:
    """``ctx`` with the node probe of test_orchestration and its progress collected."""
    return dataclasses.replace(ctx, probe=KeepalivedProbe([]), progress=lines.append)


def test_a_create_rerun_replaces_a_reserved_ip_released_by_hand_and_finishes(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str, tmp_path: Path
) -> None:
    lines: list[str] = []
    ctx = _with_probe(_nodes_made(tmp_path, provider, key), lines)
    old = _provision(ctx, provider).address  # the run that was cut off after the allocation
    with fake.lock:
        del fake.reserved_ips[old]  # released in the control panel

    new = _provision(ctx, provider).address  # the re-run of `cluster create`
    assert new != old and list(fake.reserved_ips) == [new]
    assert any(f"Reserved IP {old} no longer exists" in line for line in lines)
    with ctx.store.transaction("cluster create") as txn:  # where the re-run's rollout ends
        infra.attach_reserved_ip(ctx, txn, txn.state.clusters["prod"], provider)
    assert fake.backend.assignments[new] == _master_droplet(ctx)


def test_a_reserved_ip_lost_during_a_create_names_the_create_not_repair(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, key: str, tmp_path: Path
) -> None:
    ctx = _with_probe(_nodes_made(tmp_path, provider, key), [])
    old = _provision(ctx, provider).address
    with fake.lock:
        del fake.reserved_ips[old]  # released while the rollout ran

    with pytest.raises(ReservedIpGoneError) as raised, ctx.store.transaction("create") as txn:
        infra.attach_reserved_ip(ctx, txn, txn.state.clusters["prod"], provider)
    assert f"Reserved IP {old} no longer exists" in raised.value.message
    hint = raised.value.hint or ""
    assert "`dynia cluster create`" in hint and "repair" not in hint


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


def test_a_droplet_tagged_by_hand_is_named_and_left_alone_not_a_malformed_answer(
    fake: FakeDigitalOcean, key: str
) -> None:
    provider, lines = _recording(fake)
    provider.create_node(_spec("ash-elk", key))
    web = int(provider.create_node(_spec("web", key, cluster="other")).provider_id)
    blank = int(provider.create_node(_spec("db", key, cluster="other")).provider_id)
    with fake.lock:  # someone tagged two droplets of their own in the control panel
        fake.droplets[web]["tags"] = ["dynia-cluster-prod"]
        fake.droplets[blank]["tags"] = ["dynia-cluster-prod", "dynia-node-"]

    # What `cluster delete` deletes as leftovers: Dynia's own nodes only, and it goes on.
    assert [n.name for n in provider.list_nodes("prod")] == ["ash-elk"]
    warnings = [line for line in lines if "no dynia-node-<name> tag" in line]
    assert len(warnings) == 2
    assert f"droplet {web} (other-web)" in warnings[0] + warnings[1]
    assert f"droplet {blank} (other-db)" in warnings[0] + warnings[1]
    assert all("remove the dynia-cluster-<cluster> tag" in line for line in warnings)
    assert not any("status.digitalocean.com" in line for line in warnings)
    assert {d["id"] for d in fake.droplets.values()} >= {web, blank}


# -- bug: a 4xx that is not JSON (a proxy's page) was retried and blamed on the proxy ----------


@pytest.mark.parametrize(
    ("status", "told"),
    [(401, "rejected the API token"), (403, "the DigitalOcean token may not do this")],
)
def test_a_401_or_403_page_from_a_proxy_names_the_token_at_once(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider, status: int, told: str
) -> None:
    page = f"<html>{status} Authorization Required</html>"
    fake.malformed_answers(page, count=50, status=status, path_prefix="/v2/droplets")
    with pytest.raises(ProviderError) as caught:
        provider.list_nodes("prod")
    assert told in caught.value.message
    assert "DIGITALOCEAN_TOKEN" in (caught.value.hint or "")
    assert "proxy" not in (caught.value.hint or "")
    assert fake.statuses("/v2/droplets", "GET") == [status]  # refused once, not retried


def test_a_400_page_to_a_create_is_a_refusal_sent_once(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider
) -> None:
    page = "<html>400 Bad Request</html>"
    fake.malformed_answers(page, count=50, status=400, path_prefix="/v2/vpcs", method="POST")
    with pytest.raises(ProviderError) as caught:
        provider.ensure_network("prod")
    assert "DigitalOcean refused creating VPC dynia-prod (HTTP 400" in caught.value.message
    assert "remove the VPC in its way" in (caught.value.hint or "")
    assert fake.statuses("/v2/vpcs", "POST") == [400]


def test_a_422_page_to_a_post_without_a_lookup_is_a_refusal_not_maybe_done(
    fake: FakeDigitalOcean,
) -> None:
    api = DigitalOceanApi(fake.token, api_url=fake.api_url, retry=RetryPolicy(attempts=3))
    fake.malformed_answers("<html>422</html>", status=422, path_prefix="/v2/tags", method="POST")
    with pytest.raises(ProviderError) as caught:
        api.call("creating tag web", api.client.tags.create, body={"name": "web"})
    assert "DigitalOcean refused creating tag web (HTTP 422" in caught.value.message
    assert "may have taken effect" not in caught.value.message
    assert "web" not in fake.tags


def test_a_404_page_is_never_read_as_the_reserved_ip_gone(
    fake: FakeDigitalOcean, provider: DigitalOceanNodeProvider
) -> None:
    rip = provider.allocate_reserved_ip("prod", "fra1")
    fake.malformed_answers("<html>404</html>", count=50, status=404, path_prefix="/v2/reserved_ips")
    with pytest.raises(ProviderError) as caught:
        provider.reserved_ip_exists(rip)  # not False: that would allocate a replacement
    assert "something other than its JSON" in caught.value.message


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
