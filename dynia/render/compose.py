"""Turn an operator's compose file into the one Dynia runs on every node.

The main service gets exactly one published port, on 127.0.0.1 at the port Dynia assigned, so
Caddy can reach it and nothing else can; everything else in the file is kept as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from dynia.errors import UsageError


@dataclass(frozen=True)
class ComposeFacts:
    main_service: str
    container_port: int
    images: list[str]


def parse_compose(text: str, source: str = "compose file") -> dict[str, Any]:
    """Parse and shape-check a compose document; UsageError names what is wrong."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(
            f"{source} is not valid YAML: {exc}", hint="fix the file and run again"
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise UsageError(
            f"{source} has no 'services:' mapping",
            hint="a compose file needs at least one service under 'services:'",
        )
    if not document["services"]:
        raise UsageError(f"{source} defines no services", hint="add a service under 'services:'")
    for name, body in document["services"].items():
        if not isinstance(body, dict):
            raise UsageError(f"{source}: service {name!r} is not a mapping")
        if "image" not in body and "build" not in body:
            raise UsageError(
                f"{source}: service {name!r} has neither 'image' nor 'build'",
                hint="give each service an image (Dynia ships local images to the nodes)",
            )
        if "image" in body and not isinstance(body["image"], str):
            raise UsageError(f"{source}: service {name!r} has an image that is not a name")
        if "build" in body and "image" not in body:
            raise UsageError(
                f"{source}: service {name!r} uses 'build' without 'image'",
                hint="build the image locally, tag it, and name it in 'image:'",
            )
    return document


def _port_number(value: object) -> int:
    text = str(value).split("/")[0].split("-")[0]
    if not text.isdigit():
        raise UsageError(
            f"cannot read a port number from {value!r} in the compose file",
            hint='write container ports as plain numbers (e.g. expose: ["8080"]) or pass --port',
        )
    return int(text)


def _container_port_of(body: dict[str, Any]) -> int | None:
    for entry in body.get("ports") or []:
        target = entry.get("target") if isinstance(entry, dict) else str(entry).split(":")[-1]
        if target is not None:
            return _port_number(target)
    for entry in body.get("expose") or []:
        return _port_number(entry)
    return None


def inspect_compose(
    document: dict[str, Any], service_name: str, container_port: int | None
) -> ComposeFacts:
    """Find the service that receives traffic and the port it listens on inside its container."""
    services: dict[str, Any] = document["services"]
    if service_name in services:
        main = service_name
    else:
        with_ports = [n for n, b in services.items() if _container_port_of(b) is not None]
        main = with_ports[0] if with_ports else next(iter(services))
    port = container_port or _container_port_of(services[main])
    if port is None:
        raise UsageError(
            f"cannot tell which port compose service {main!r} listens on",
            hint="add 'expose: [\"8080\"]' (or ports) to it, or pass --port",
        )
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is out of range 1-65535")
    images = sorted({b["image"] for b in services.values() if "image" in b})
    return ComposeFacts(main_service=main, container_port=port, images=images)


def node_compose(
    document: dict[str, Any], main_service: str, internal_port: int, container_port: int
) -> str:
    """The compose file as it runs on a node: main service on 127.0.0.1:<internal_port>."""
    services = {name: dict(body) for name, body in document["services"].items()}
    main = services[main_service]
    main["ports"] = [f"127.0.0.1:{internal_port}:{container_port}"]
    for body in services.values():
        body.setdefault("restart", "unless-stopped")
    rendered = {key: value for key, value in document.items() if key != "version"}
    rendered["services"] = services
    return yaml.safe_dump(rendered, sort_keys=True, default_flow_style=False)
