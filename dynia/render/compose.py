"""Turn an operator's compose file into the one Dynia runs on every node.

The main service gets exactly one published port, on 127.0.0.1 at the port Dynia assigned, so
Caddy can reach it and nothing else can. Ports the other services publish are bound to
127.0.0.1 too, unless the entry names an address itself ("0.0.0.0:5432:5432", ``host_ip``):
Docker publishes on every interface by default, past the host firewall. Everything else in the
file is kept as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from dynia.errors import RenderError, UsageError

LOOPBACK = "127.0.0.1"
# Python refuses to turn an integer of over 4,300 decimal digits into text, so a larger one (a
# YAML 0x or 0b literal may be any size) could not be written to the node's compose file. Smaller
# ones are left alone: an environment value may be a long id, and a stored service is re-read by
# every render.
_MAX_INT_BITS = 14_000  # about 4,200 decimal digits
# Port numbers have at most five digits; reading more would only find an out-of-range one.
_PORT_DIGITS = 5


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
    except RecursionError as exc:
        # PyYAML builds nested collections recursively; no compose file nests this deep.
        raise UsageError(
            f"{source} nests too deeply to be a compose file", hint="fix the file and run again"
        ) from exc
    except ValueError as exc:
        # PyYAML turns plain scalars into Python values itself: an integer of thousands of
        # digits or a date such as 2024-13-45 fails there, outside its own YAMLError.
        raise UsageError(
            f"{source} holds a value YAML cannot read: {_unreadable(exc)}",
            hint='quote the value if it is meant as text (e.g. expose: ["8080"]), or fix it',
        ) from exc
    if isinstance(document, dict):
        _check_keys(document, source)
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
        _check_port_lists(source, str(name), body)
    return document


def _unreadable(exc: ValueError) -> str:
    """Why PyYAML could not build a value, in the operator's terms."""
    text = str(exc).strip()
    if "integer string conversion" in text:
        return "an integer of more than 4,300 digits"
    return text.splitlines()[0] if text else type(exc).__name__


def _huge(value: object) -> bool:
    return isinstance(value, int) and value.bit_length() > _MAX_INT_BITS


def _check_keys(document: dict[Any, Any], source: str) -> None:
    """Every mapping key is a string, as compose requires, and no integer is absurdly large.

    YAML also allows 1: or null: as keys; mixed with names they cannot be sorted when the node's
    compose file is written, so they are refused here, where the operator can fix them.
    YAML's 0x and 0b integers may be any size: one too large to print would fail every later
    message about it and the node's compose file.
    Walked with a stack, not recursion: the document may nest as deep as the parser allowed;
    each node once, as YAML aliases may share one node many times or make it contain itself.
    """
    stack: list[tuple[str, Any]] = [("", document)]
    seen: set[int] = set()
    while stack:
        path, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if _huge(node):
            raise UsageError(
                f"{source}: the number at {path or 'the top level'} is too large "
                f"({node.bit_length()} bits)",
                hint="quote it if it is meant as text, or fix it",
            )
        if isinstance(node, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(node))
        elif isinstance(node, dict):
            for key, value in node.items():
                if _huge(key):
                    raise UsageError(
                        f"{source}: a key in {path or 'the top level'} is a number too large "
                        "to be a name",
                        hint="keys are names: quote it or remove it",
                    )
                if not isinstance(key, str):
                    raise UsageError(
                        f"{source}: key {key!r} in {path or 'the top level'} is not a string",
                        hint=f'quote it ("{key}":) or remove it',
                    )
                stack.append((f"{path}.{key}" if path else key, value))


def _check_port_lists(source: str, name: str, body: dict[str, Any]) -> None:
    """``ports`` and ``expose`` are lists, as in the compose specification.

    A bare string would otherwise be read character by character ("8080" as port 8).
    """
    for key in ("ports", "expose"):
        value = body.get(key)
        if value is not None and not isinstance(value, list):
            raise UsageError(
                f"{source}: {key!r} of service {name!r} must be a list, found {value!r}",
                hint=f'write it as a list, e.g. {key}: ["8080"]',
            )


def _port_number(value: object) -> int:
    text = str(value).split("/")[0].split("-")[0]
    # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
    if not (text.isascii() and text.isdigit()) or isinstance(value, bool):
        raise UsageError(
            f"cannot read a port number from {_shown(value)} in the compose file",
            hint='write container ports as plain numbers (e.g. expose: ["8080"]) or pass --port',
        )
    if len(text.lstrip("0")) > _PORT_DIGITS:
        # int() refuses over 4,300 digits; any port number has at most five.
        raise UsageError(
            f"port {text[:10]}... ({len(text)} digits) in the compose file is out of range 1-65535",
            hint='write the port the service listens on (e.g. expose: ["8080"]) or pass --port',
        )
    return int(text)


def _shown(value: object) -> str:
    """``value`` for a message: a long one cut short, so a garbage file does not flood it."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _container_port_of(body: dict[str, Any]) -> int | None:
    for entry in body.get("ports") or []:
        target = entry.get("target") if isinstance(entry, dict) else str(entry).split(":")[-1]
        if target is not None:
            return _port_number(target)
    for entry in body.get("expose") or []:
        return _port_number(entry)
    return None


def _main_service(services: dict[str, Any], service_name: str) -> str:
    """The compose service that receives traffic: the one named like the Dynia service.

    Otherwise the one service that publishes or exposes a port (or, when none does, the one
    service there is). Guessing among several would route the domain to whichever comes first
    in the file, a database as readily as the web server, so that is refused.
    """
    if service_name in services:
        return service_name
    with_ports = [name for name, body in services.items() if _container_port_of(body) is not None]
    candidates = with_ports or list(services)
    if len(candidates) == 1:
        return candidates[0]
    listed = ", ".join(_described(name, services[name]) for name in candidates)
    raise UsageError(
        f"the compose file has no service {service_name!r} and {len(candidates)} that could "
        f"receive its traffic: {listed}; Dynia does not guess which",
        hint="the compose service named like --name receives the traffic: deploy with --name "
        f"set to that service's name, or rename that service to {service_name!r} in the "
        "compose file",
    )


def _described(name: str, body: dict[str, Any]) -> str:
    port = _container_port_of(body)
    return f"{name!r} (port {port})" if port is not None else repr(name)


def inspect_compose(
    document: dict[str, Any], service_name: str, container_port: int | None
) -> ComposeFacts:
    """Find the service that receives traffic and the port it listens on inside its container."""
    services: dict[str, Any] = document["services"]
    main = _main_service(services, service_name)
    # `is not None`: a port 0 given is refused below, never silently replaced by the file's.
    port = container_port if container_port is not None else _container_port_of(services[main])
    if port is None:
        raise UsageError(
            f"cannot tell which port compose service {main!r} listens on",
            hint="add 'expose: [\"8080\"]' (or ports) to it, or pass --port",
        )
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is out of range 1-65535")
    images = sorted({b["image"] for b in services.values() if "image" in b})
    return ComposeFacts(main_service=main, container_port=port, images=images)


def loopback_port(entry: Any) -> Any:
    """A ``ports`` entry published on 127.0.0.1 unless it names its host address itself.

    Short form "[HOST:]PUBLISHED:TARGET[/PROTO]" or "TARGET": with two colons (or an IPv6
    address in brackets) the host address is given; otherwise 127.0.0.1 is put in front
    ("127.0.0.1::TARGET" keeps Docker's random published port). Long form: ``host_ip`` is set
    when absent. Anything else is left for compose to judge.
    """
    if isinstance(entry, dict):
        return entry if "host_ip" in entry else {**entry, "host_ip": LOOPBACK}
    if isinstance(entry, bool) or not isinstance(entry, (int, str)):
        return entry
    text = str(entry)
    ports = text.split("/", 1)[0]
    if text.startswith("[") or ports.count(":") >= 2:
        return entry
    if ports.count(":") == 1:
        return f"{LOOPBACK}:{text}"
    return f"{LOOPBACK}::{text}"


def node_compose(
    document: dict[str, Any],
    main_service: str,
    internal_port: int,
    container_port: int,
    source: str = "the compose file",
) -> str:
    """The compose file as it runs on a node: main service on 127.0.0.1:<internal_port>."""
    services = {name: dict(body) for name, body in document["services"].items()}
    if main_service not in services:
        raise RenderError(
            f"{source} has no service {main_service!r}, the one recorded to receive "
            f"traffic (it has {', '.join(sorted(map(str, services)))})",
            hint="deploy the service again with `dynia deploy --name <service> --compose <file>` "
            "so the recorded main service matches its compose file",
        )
    for name, body in services.items():
        if name != main_service and isinstance(body.get("ports"), list):
            body["ports"] = [loopback_port(entry) for entry in body["ports"]]
    main = services[main_service]
    main["ports"] = [f"{LOOPBACK}:{internal_port}:{container_port}"]
    for body in services.values():
        body.setdefault("restart", "unless-stopped")
    rendered = {key: value for key, value in document.items() if key != "version"}
    rendered["services"] = services
    try:
        return yaml.safe_dump(rendered, sort_keys=True, default_flow_style=False)
    except RecursionError as exc:
        raise RenderError(
            f"{source} nests too deeply to be written back out",
            hint="deploy the service again with a flatter compose file",
        ) from exc
