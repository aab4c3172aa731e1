"""The operator's compose file: what Dynia accepts, what it refuses, what it runs on nodes."""

from __future__ import annotations

import pytest
import yaml

from dynia.errors import UsageError
from dynia.render.compose import inspect_compose, node_compose, parse_compose


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services: [a, b]\n", "no 'services:' mapping"),
        ("services: {}\n", "defines no services"),
        ("services:\n  web: {command: x}\n", "neither 'image' nor 'build'"),
        ("services:\n  web: {build: .}\n", "'build' without 'image'"),
        ("services:\n  web: {image: 5}\n", "image that is not a name"),
        ("services: {web: [\n", "not valid YAML"),
    ],
)
def test_refused_compose_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_compose(text)


def test_unreadable_port_is_a_usage_error() -> None:
    document = parse_compose("services:\n  web: {image: x, expose: ['${PORT}']}\n")
    with pytest.raises(UsageError, match="port number"):
        inspect_compose(document, "web", None)


def test_main_service_and_port_are_found() -> None:
    document = parse_compose(
        "services:\n  db: {image: postgres:16}\n  app: {image: shop:2, ports: ['8000:3000/tcp']}\n"
    )
    facts = inspect_compose(document, "shop", None)
    assert (facts.main_service, facts.container_port) == ("app", 3000)
    assert facts.images == ["postgres:16", "shop:2"]
    assert inspect_compose(document, "shop", 4000).container_port == 4000


def test_a_service_without_any_port_needs_port_flag() -> None:
    document = parse_compose("services:\n  web: {image: x}\n")
    with pytest.raises(UsageError, match="--port"):
        inspect_compose(document, "web", None)


def test_node_compose_publishes_only_on_loopback_at_the_assigned_port() -> None:
    document = parse_compose("services:\n  web: {image: x, ports: ['80:8080'], restart: 'no'}\n")
    rendered = yaml.safe_load(node_compose(document, "web", 20001, 8080))
    assert rendered["services"]["web"]["ports"] == ["127.0.0.1:20001:8080"]
    assert rendered["services"]["web"]["restart"] == "no"


def test_a_long_integer_id_in_the_environment_is_kept_as_written() -> None:
    # 67 bits: a service deployed with it must go on rendering, as every sync re-reads it.
    text = "services:\n  web:\n    image: x\n    environment:\n"
    text += "      ORG_ID: 123456789012345678901\n"
    document = parse_compose(text)
    assert document["services"]["web"]["environment"]["ORG_ID"] == 123456789012345678901
    assert "ORG_ID: 123456789012345678901" in node_compose(document, "web", 20000, 8080)
