"""Checks that a state document is well-formed and self-consistent.

``parse_state`` turns a JSON document of the current schema into a ``State`` or raises
``ValueError`` naming the offending path (``clusters.prod.nodes.misty-owl.priority``) and what is
wrong with it. The shape is checked against the models' own type hints, so the models stay the one
description of the schema; the rules a type cannot express (names, statuses, references, ranges)
follow in ``check_state``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import types
import typing
from functools import cache
from typing import Any

from dynia.state import models
from dynia.state.models import Cluster, State

_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    type(None): "null",
}

# DigitalOcean personal, OAuth and refresh tokens.
_DO_TOKEN_RE = re.compile(r"\bdo[opr]_v1_[0-9a-f]{64}\b")
# Where Dynia (and Dynia v1: DYNIA_DO_TOKEN, DYNIA_CF_TOKEN) read provider tokens from.
TOKEN_ENV_VARS = (
    "DIGITALOCEAN_TOKEN",
    "DIGITALOCEAN_ACCESS_TOKEN",
    "CLOUDFLARE_API_TOKEN",
    "DYNIA_DO_TOKEN",
    "DYNIA_CF_TOKEN",
)


# Values that reach a config file, a script or known_hosts on the nodes (most of them read or run
# by root) must match these in full: no newline, quote, ';', '$(...)' or backtick can get through.
# An address is digits, hex and separators only: Python accepts an IPv6 scope id ("fe80::1%eth0")
# made of any text, newlines included.
_IP_CHARS_RE = re.compile(r"[0-9A-Fa-f.:]{2,39}")
_CIDR_CHARS_RE = re.compile(r"[0-9A-Fa-f.:]{2,39}/[0-9]{1,3}")
# A Linux interface name is at most 15 bytes.
_INTERFACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
# Compose service names, as the compose specification allows them.
_COMPOSE_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Provider names, regions, sizes, network names: provider slugs such as fra1 or s-1vcpu-1gb.
_SLUG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A pinned host key as known_hosts holds it ("<type> <base64>"): one line, no quotes or '$'.
_HOST_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9@.+/= -]{0,8191}")
_MAX_ADVERT_INT = 255.0  # keepalived's upper bound, in seconds
_MAX_DOWN_TIMER_ADVERTS = 100  # keepalived's upper bound for down_timer_adverts


def _kind(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(models))


def check_shape(value: Any, expected: Any, path: str) -> None:
    """Raise ValueError if the JSON ``value`` does not fit the annotation ``expected``."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return
        real = [o for o in options if o is not type(None)]
        return check_shape(value, real[0], path) if len(real) == 1 else None
    if dataclasses.is_dataclass(expected):
        return _check_record(value, expected, path)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, found {_kind(value)}")
        (item,) = typing.get_args(expected)
        for index, element in enumerate(value):
            check_shape(element, item, f"{path}[{index}]")
        return None
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, found {_kind(value)}")
        _, item = typing.get_args(expected)
        for key, element in value.items():
            check_shape(element, item, _join(path, key))
        return None
    _check_scalar(value, expected, path)
    return None


def _check_scalar(value: Any, expected: type, path: str) -> None:
    # JSON true/false must not pass for a number, but an integer is a fine float.
    ok = (
        isinstance(value, expected) and not (expected in (int, float) and isinstance(value, bool))
    ) or (expected is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ValueError(
            f"{path}: expected {_JSON_TYPE_NAMES.get(expected, expected.__name__)}, "
            f"found {_kind(value)} {value!r}"
        )


def _check_record(value: Any, cls: type, path: str) -> None:
    what = path or "the state"
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object, found {_kind(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ValueError(f"{what}: unknown key {unknown[0]!r}")
    for name, spec in fields.items():
        if name in value:
            check_shape(value[name], _hints(cls)[name], _join(path, name))
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ValueError(f"{what}: missing key {name!r}")


def parse_state(data: Any) -> State:
    """A ``State`` from a current-schema JSON document, or ValueError naming the first problem."""
    check_shape(data, State, "")
    if "schema_version" not in data:
        raise ValueError("the state: missing key 'schema_version'")
    state = State.from_dict(data)
    check_state(state)
    return state


def check_state(state: State) -> None:
    """Raise ValueError if names, statuses or references in ``state`` are inconsistent."""
    if state.schema_version != models.SCHEMA_VERSION:
        raise ValueError(
            f"schema_version: expected {models.SCHEMA_VERSION}, found {state.schema_version}"
        )
    if state.current_cluster is not None and state.current_cluster not in state.clusters:
        raise ValueError(
            f"current_cluster: {state.current_cluster!r} is not one of the clusters "
            f"({', '.join(sorted(state.clusters)) or 'none'})"
        )
    owners: dict[str, str] = {}
    for key, cluster in state.clusters.items():
        _check_cluster(key, cluster)
        for domain in cluster.routes:
            if domain in owners:
                raise ValueError(
                    f"clusters.{key}.routes.{domain}: the domain is also routed by "
                    f"cluster {owners[domain]!r}"
                )
            owners[domain] = key


def _check(condition: bool, path: str, problem: str) -> None:
    if not condition:
        raise ValueError(f"{path}: {problem}")


def _check_name(kind: str, key: str, name: str, path: str) -> None:
    try:
        models.validate_name(kind, name)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    _check(key == name, path, f"is filed under {key!r} but its name is {name!r}")


def _check_ip(value: str, path: str, allow_empty: bool) -> None:
    if allow_empty and value == "":
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{path}: {value!r} is not an IP address") from None
    _check(
        bool(_IP_CHARS_RE.fullmatch(value)),
        path,
        f"{value!r} is not a plain IP address (no scope id, no spaces)",
    )


def _check_pattern(pattern: re.Pattern[str], value: str, path: str, what: str) -> None:
    _check(bool(pattern.fullmatch(value)), path, f"{value!r} is not {what}")


def _check_port(value: int, path: str) -> None:
    _check(1 <= value <= 65535, path, f"port {value} is outside 1-65535")


def _check_cluster(key: str, cluster: Cluster) -> None:
    base = f"clusters.{key}"
    _check_name("cluster", key, cluster.name, base)
    _check(
        cluster.status in models.CLUSTER_STATUSES,
        f"{base}.status",
        f"{cluster.status!r} is not one of {', '.join(models.CLUSTER_STATUSES)}",
    )
    _check(cluster.planned_nodes >= 0, f"{base}.planned_nodes", "must not be negative")
    _check_slugs(base, cluster)
    for node_key, node in cluster.nodes.items():
        path = f"{base}.nodes.{node_key}"
        _check_name("node", node_key, node.name, path)
        _check(
            node.status in models.NODE_STATUSES,
            f"{path}.status",
            f"{node.status!r} is not one of {', '.join(models.NODE_STATUSES)}",
        )
        _check(0 <= node.priority <= 255, f"{path}.priority", "must be within 0-255")
        _check_ip(node.public_ip, f"{path}.public_ip", allow_empty=True)
        _check_ip(node.private_ip, f"{path}.private_ip", allow_empty=True)
        _check_host_keys(node, path)
    if cluster.reserved_ip is not None:
        _check_ip(cluster.reserved_ip.address, f"{base}.reserved_ip.address", allow_empty=False)
    if cluster.network is not None:
        _check_network(f"{base}.network", cluster.network)
    _check_services(base, cluster)
    _check_routes(base, cluster)
    _check_settings(base, cluster.settings)


def _check_slugs(base: str, cluster: Cluster) -> None:
    for name in ("node_provider", "dns_provider", "region", "size", "image"):
        value = getattr(cluster, name)
        if value is not None:
            _check_pattern(_SLUG_RE, value, f"{base}.{name}", "a slug of a-z, 0-9, '.', '_', '-'")


def _check_host_keys(node: models.Node, path: str) -> None:
    # Each key becomes a known_hosts line: a newline would add a line of its own choosing.
    for index, key in enumerate(node.host_keys):
        _check_pattern(
            _HOST_KEY_RE, key, f"{path}.host_keys[{index}]", "a one-line '<type> <base64>' host key"
        )


def _check_network(path: str, network: models.Network) -> None:
    _check_pattern(_SLUG_RE, network.name, f"{path}.name", "a network name")
    try:
        ipaddress.ip_network(network.subnet, strict=False)
    except ValueError:
        raise ValueError(f"{path}.subnet: {network.subnet!r} is not a CIDR network") from None
    _check_pattern(_CIDR_CHARS_RE, network.subnet, f"{path}.subnet", "a plain CIDR network")
    # keepalived.conf names the interface unquoted; a newline there would add directives.
    _check_pattern(
        _INTERFACE_RE,
        network.interface,
        f"{path}.interface",
        "an interface name (up to 15 of a-z, A-Z, 0-9, '.', '_', '-')",
    )
    if network.gateway is not None:
        _check_ip(network.gateway, f"{path}.gateway", allow_empty=False)


def _check_services(base: str, cluster: Cluster) -> None:
    ports: dict[int, str] = {}
    for svc_key, service in cluster.services.items():
        path = f"{base}.services.{svc_key}"
        _check_name("service", svc_key, service.name, path)
        _check_port(service.internal_port, f"{path}.internal_port")
        _check_port(service.container_port, f"{path}.container_port")
        _check(bool(service.main_service), f"{path}.main_service", "must not be empty")
        _check_pattern(
            _COMPOSE_SERVICE_RE, service.main_service, f"{path}.main_service", "a compose service"
        )
        _check_http_path(service.health_path, f"{path}.health_path")
        other = ports.setdefault(service.internal_port, svc_key)
        _check(
            other == svc_key,
            f"{path}.internal_port",
            f"port {service.internal_port} is also used by service {other!r}",
        )


def _check_routes(base: str, cluster: Cluster) -> None:
    for domain, route in cluster.routes.items():
        path = f"{base}.routes.{domain}"
        try:
            normal = models.validate_domain(route.domain)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        _check(
            route.domain == normal == domain,
            path,
            f"is filed under {domain!r} but its domain is {route.domain!r} "
            f"(domains are stored lower case without a trailing dot)",
        )
        _check(
            route.service in cluster.services,
            f"{path}.service",
            f"{route.service!r} is not a service of cluster {cluster.name!r}",
        )


def _check_settings(base: str, settings: models.ClusterSettings) -> None:
    path = f"{base}.settings"
    _check(1 <= settings.vrrp_router_id <= 255, f"{path}.vrrp_router_id", "must be 1-255")
    # JSON as Python reads it also carries Infinity and NaN; keepalived.conf would get them as is.
    advert = settings.vrrp_advert_int
    _check(
        math.isfinite(advert) and 0 < advert <= _MAX_ADVERT_INT,
        f"{path}.vrrp_advert_int",
        f"must be a number of seconds above 0 and at most {_MAX_ADVERT_INT:g}",
    )
    _check(
        1 <= settings.vrrp_down_timer_adverts <= _MAX_DOWN_TIMER_ADVERTS,
        f"{path}.vrrp_down_timer_adverts",
        f"must be a whole number of adverts from 1 to {_MAX_DOWN_TIMER_ADVERTS}",
    )
    for name in ("caddy_port", "http_port", "https_port"):
        _check_port(getattr(settings, name), f"{path}.{name}")
    _check_http_path(settings.health_path, f"{path}.health_path")
    _check(
        settings.certificate_issuer in models.CERT_ISSUERS,
        f"{path}.certificate_issuer",
        f"{settings.certificate_issuer!r} is not one of {', '.join(models.CERT_ISSUERS)}",
    )


def _check_http_path(value: str, path: str) -> None:
    try:
        models.validate_http_path("health path", value)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def check_cluster(cluster: Cluster) -> None:
    """Raise ValueError naming the field if a value of ``cluster`` is malformed or unsafe.

    The renderer runs this again on the cluster it is given: a cluster built in memory, or changed
    since the state was loaded, never reaches a config file unchecked.
    """
    _check_cluster(cluster.name, cluster)


def find_secret(data: Any, secrets: list[str], path: str = "") -> str | None:
    """The path of the first string in ``data`` that holds a provider token, if any."""
    if isinstance(data, str):
        # The substring test first: the regex alone is slow on multi-megabyte compose files.
        hit = ("_v1_" in data and _DO_TOKEN_RE.search(data)) or any(s in data for s in secrets)
        return path if hit else None
    if isinstance(data, dict):
        children = [(_join(path, str(k)), v) for k, v in data.items()]
    elif isinstance(data, list):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(data)]
    else:
        return None
    for child_path, value in children:
        found = find_secret(value, secrets, child_path)
        if found:
            return found
    return None
