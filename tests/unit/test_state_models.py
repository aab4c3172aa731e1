"""The state models: JSON round trip, and every rule that makes a state document invalid."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from dynia.state import State, serialize
from dynia.state.models import (
    Cluster,
    Network,
    Node,
    ReservedIp,
    Route,
    Service,
)
from dynia.state.validation import find_secret, parse_state

COMPOSE = "services:\n  web:\n    image: nginx:1.27\n    ports: ['127.0.0.1:20001:80']\n"


def full_state() -> State:
    """A state using every record type and every optional field."""
    cluster = Cluster(
        name="prod",
        node_provider="local",
        dns_provider="local",
        region="lab-1",
        size="small",
        planned_nodes=2,
        status="serving",
        completed_steps=["nodes", "network", "reserved-ip"],
        reserved_ip=ReservedIp(
            address="172.30.7.100", provider_id="rip-1", attached_to="misty-owl"
        ),
        network=Network(name="dynia-prod", subnet="172.30.7.0/24", interface="eth1"),
        tls_fingerprint="ab" * 32,
    )
    cluster.nodes = {
        "misty-owl": Node("misty-owl", "c-1", "172.29.0.2", "172.30.7.2", 150, "ready", ["k1"]),
        "quiet-fox": Node("quiet-fox", "c-2", "172.29.0.3", "172.30.7.3", 100, "out-of-sync"),
    }
    cluster.services = {
        "web": Service(
            name="web",
            compose=COMPOSE,
            compose_hash=hashlib.sha256(COMPOSE.encode()).hexdigest(),
            internal_port=20001,
            container_port=80,
            main_service="web",
            health_path="/healthz",
            image_ids={"nginx:1.27": "sha256:" + "0" * 64},
        ),
    }
    cluster.routes = {"web.demo.test": Route("web.demo.test", "web", "rec-9")}
    staging = Cluster("staging", "digitalocean", "cloudflare", "fra1", "s-1vcpu-1gb", 3)
    return State(current_cluster="prod", clusters={"prod": cluster, "staging": staging})


def full_dict() -> dict[str, Any]:
    return json.loads(serialize(full_state()))


def test_round_trip_through_dict_and_json_is_lossless() -> None:
    state = full_state()
    assert State.from_dict(state.to_dict()) == state
    again = parse_state(json.loads(serialize(state)))
    assert again == state
    assert serialize(again) == serialize(state)


def test_serialized_form_is_sorted_and_indented_by_two() -> None:
    text = serialize(full_state()).decode()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert text.startswith('{\n  "clusters": {\n    "prod": {')


def test_empty_state_is_valid() -> None:
    assert parse_state(json.loads(serialize(State()))) == State()


def test_no_field_of_the_schema_can_hold_a_token() -> None:
    # Record names are operator data; the schema's own field names are what must stay clear.
    def field_keys(value: Any, under_record_map: bool = False) -> set[str]:
        keys: set[str] = set()
        if isinstance(value, dict):
            for key, child in value.items():
                if not under_record_map:
                    keys.add(key)
                is_map = key in {"clusters", "nodes", "services", "routes", "image_ids"}
                keys |= field_keys(child, is_map and not under_record_map)
        elif isinstance(value, list):
            for child in value:
                keys |= field_keys(child)
        return keys

    keys = field_keys(full_dict())
    assert {"priority", "compose", "dns_record_id", "host_keys"} <= keys
    assert [k for k in keys if "token" in k.lower()] == []


def test_secret_finder_spots_a_digitalocean_token_anywhere() -> None:
    data = full_dict()
    token = "dop_v1_" + "a1" * 32
    data["clusters"]["prod"]["services"]["web"]["compose"] += f"      TOKEN: {token}\n"
    assert find_secret(data, []) == "clusters.prod.services.web.compose"
    data = full_dict()
    data["clusters"]["prod"]["nodes"]["misty-owl"]["host_keys"].append("cf-secret-value-123456")
    assert (
        find_secret(data, ["cf-secret-value-123456"])
        == "clusters.prod.nodes.misty-owl.host_keys[1]"
    )
    assert find_secret(full_dict(), ["cf-secret-value-123456"]) is None


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for part in parents:
            data = data[part]
        data[last] = value

    return apply


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for part in parents:
            data = data[part]
        del data[last]

    return apply


def _rename(path: str, new_key: str) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for part in parents:
            data = data[part]
        data[new_key] = data.pop(last)

    return apply


def _refile(path: str, new_key: str, field: str = "name") -> Callable[[dict[str, Any]], None]:
    """Move a record to a new key and give it the matching name, as a hand edit would."""
    rename = _rename(path, new_key)

    def apply(data: dict[str, Any]) -> None:
        rename(data)
        _set("/".join([*path.split("/")[:-1], new_key, field]), new_key)(data)

    return apply


def _second_route_for(domain: str) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        staging = data["clusters"]["staging"]
        staging["services"]["web"] = copy.deepcopy(data["clusters"]["prod"]["services"]["web"])
        staging["routes"][domain] = {"domain": domain, "service": "web", "dns_record_id": None}

    return apply


P = "clusters/prod"
INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("bad cluster name", _refile("clusters/staging", "Stage!"), "invalid cluster name 'Stage!'"),
    (
        "key differs from name",
        _rename("clusters/staging", "stage"),
        "clusters.stage: is filed under 'stage' but its name is 'staging'",
    ),
    ("bad node name", _set(f"{P}/nodes/misty-owl/name", "Misty_Owl"), "invalid node name"),
    ("bad service name", _set(f"{P}/services/web/name", "web_1"), "invalid service name"),
    ("bad domain", _refile(f"{P}/routes/web.demo.test", "web", "domain"), "invalid domain 'web'"),
    (
        "upper-case domain",
        _set(f"{P}/routes/web.demo.test/domain", "Web.demo.test"),
        "stored lower case",
    ),
    ("cluster status", _set(f"{P}/status", "live"), "'live' is not one of planned"),
    ("node status", _set(f"{P}/nodes/quiet-fox/status", "up"), "'up' is not one of provisioning"),
    (
        "route to a missing service",
        _set(f"{P}/routes/web.demo.test/service", "api"),
        "routes.web.demo.test.service: 'api' is not a service of cluster 'prod'",
    ),
    (
        "current cluster missing",
        _set("current_cluster", "gone"),
        "current_cluster: 'gone' is not one of the clusters (prod, staging)",
    ),
    (
        "string priority",
        _set(f"{P}/nodes/misty-owl/priority", "150"),
        "clusters.prod.nodes.misty-owl.priority: expected an integer, found a string '150'",
    ),
    (
        "boolean priority",
        _set(f"{P}/nodes/misty-owl/priority", True),
        "expected an integer, found true or false",
    ),
    ("priority range", _set(f"{P}/nodes/misty-owl/priority", 300), "must be within 0-255"),
    (
        "nodes as a list",
        _set(f"{P}/nodes", []),
        "clusters.prod.nodes: expected an object, found a list",
    ),
    (
        "missing key",
        _delete(f"{P}/nodes/misty-owl/provider_id"),
        "clusters.prod.nodes.misty-owl: missing key 'provider_id'",
    ),
    ("unknown key", _set(f"{P}/colour", "blue"), "clusters.prod: unknown key 'colour'"),
    ("bad ip", _set(f"{P}/nodes/quiet-fox/public_ip", "10.0.0.300"), "is not an IP address"),
    ("bad subnet", _set(f"{P}/network/subnet", "lan"), "'lan' is not a CIDR network"),
    ("bad port", _set(f"{P}/services/web/internal_port", 70000), "outside 1-65535"),
    ("bad health path", _set(f"{P}/services/web/health_path", "healthz"), "must start with /"),
    (
        "domain in two clusters",
        _second_route_for("web.demo.test"),
        "also routed by cluster 'prod'",
    ),
    ("schema missing", _delete("schema_version"), "missing key 'schema_version'"),
    ("null settings", _set(f"{P}/settings", None), "settings: expected an object, found null"),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, msg) for _, m, msg in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_invalid_documents_are_refused_with_the_path_and_problem(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = full_dict()
    mutate(data)
    with pytest.raises(ValueError) as caught:
        parse_state(data)
    assert message in str(caught.value)


def test_two_services_may_not_share_an_internal_port() -> None:
    data = full_dict()
    web = data["clusters"]["prod"]["services"]["web"]
    data["clusters"]["prod"]["services"]["api"] = dict(web, name="api")
    with pytest.raises(ValueError, match="port 20001 is also used by service 'web'"):
        parse_state(data)
    data["clusters"]["prod"]["services"]["api"]["internal_port"] = 20002
    assert "api" in parse_state(data).clusters["prod"].services


def test_integer_is_accepted_where_a_number_is_expected() -> None:
    data = full_dict()
    data["clusters"]["prod"]["settings"]["vrrp_advert_int"] = 2
    assert parse_state(data).clusters["prod"].settings.vrrp_advert_int == 2


@pytest.mark.parametrize("adverts", [0, 101, 2.5, True])
def test_missed_adverts_before_a_takeover_must_be_what_keepalived_takes(adverts: object) -> None:
    data = full_dict()
    data["clusters"]["prod"]["settings"]["vrrp_down_timer_adverts"] = adverts
    with pytest.raises(ValueError, match=r"settings\.vrrp_down_timer_adverts"):
        parse_state(data)


def test_a_state_written_before_missed_adverts_were_recorded_keeps_the_rfcs_three() -> None:
    data = full_dict()
    del data["clusters"]["prod"]["settings"]["vrrp_down_timer_adverts"]
    assert parse_state(data).clusters["prod"].settings.vrrp_down_timer_adverts == 3


def test_node_ips_may_be_empty_while_provisioning() -> None:
    data = full_dict()
    node = data["clusters"]["prod"]["nodes"]["quiet-fox"]
    node.update(public_ip="", private_ip="", status="provisioning")
    assert parse_state(data).clusters["prod"].nodes["quiet-fox"].public_ip == ""
