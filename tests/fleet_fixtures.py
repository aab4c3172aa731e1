"""Fixtures that build the node image and start real local nodes.

``node_image`` and ``busybox_image`` are built once per session (or reused by tag).
``local_nodes(count)`` starts a fleet under a unique cluster prefix; every fleet a test started is
removed when the test ends, passed or failed. ``local_fleet`` is the same as a context manager.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from testnodes import KEY_NAME, Fleet, fleet_down, fleet_up

from dynia.providers.local.image import (
    build_busybox_image,
    ensure_busybox_binary,
    ensure_node_image,
)
from dynia.providers.local.nodes import LocalNodeProvider


def unique_prefix(kind: str = "t") -> str:
    """A short cluster prefix no other test run uses (container names stay readable)."""
    return f"{kind}{secrets.token_hex(3)}"


@contextlib.contextmanager
def local_fleet(
    count: int,
    *,
    image: str | None = None,
    names: Sequence[str] | None = None,
    ready_timeout: float = 180.0,
    prefix: str | None = None,
) -> Iterator[Fleet]:
    """Start ``count`` nodes under a unique prefix; always remove them (and their key) after."""
    prefix = prefix or unique_prefix()
    directory = Path(tempfile.mkdtemp(prefix=f"dynia-fleet-{prefix}-"))
    provider = LocalNodeProvider(
        image=image,
        private_key_for=lambda _cluster: directory / KEY_NAME,
        ready_timeout=ready_timeout,
    )
    try:
        yield fleet_up(prefix, count, directory, names=names, provider=provider)
    finally:
        fleet_down(prefix, directory, provider)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def node_image() -> str:
    """The node image tag (built with the path this machine supports, or reused)."""
    return ensure_node_image().tag


@pytest.fixture(scope="session")
def debian13_node_image() -> str:
    """The Debian 13 node image tag (Compose v2); built once, about four minutes, else reused."""
    return ensure_node_image(image="debian-13").tag


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """A busybox-only image tag, named after the busybox binary it holds."""
    binary = ensure_busybox_binary()
    tag = f"dynia-busybox:{hashlib.sha256(binary.read_bytes()).hexdigest()[:12]}"
    build_busybox_image(tag)
    return tag


@pytest.fixture
def local_nodes(node_image: str) -> Iterator[Callable[..., Fleet]]:
    """Factory: ``local_nodes(3)`` starts three nodes; all are removed after the test."""
    with contextlib.ExitStack() as stack:

        def start(
            count: int, names: Sequence[str] | None = None, ready_timeout: float = 180.0
        ) -> Fleet:
            fleet = local_fleet(count, image=node_image, names=names, ready_timeout=ready_timeout)
            return stack.enter_context(fleet)

        yield start
