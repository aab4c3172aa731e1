"""Getting a service's images onto nodes that have no registry to pull from.

The controller's image is streamed over the pinned SSH connection (`docker save | docker load`),
and skipped on nodes that already hold the same image id.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from dynia import ssh
from dynia.errors import ProviderError, UsageError
from dynia.operations import Progress
from dynia.paths import HomeLayout
from dynia.state.models import Cluster, Node, Service

# Nodes looked at, or loaded, at the same time: enough for a cluster's worth at once without
# opening a hundred SSH connections on a big one.
_MAX_PARALLEL_NODES = 8


def _docker(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the controller's docker client; a missing client or a hang is an operator error."""
    try:
        return subprocess.run(
            ["docker", *argv], capture_output=True, text=True, check=False, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise UsageError(
            "deploy needs the docker client on this machine to read and copy service images",
            hint="install Docker here (e.g. `dynia local setup` or apt-get install docker.io)",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ProviderError(
            f"`docker {' '.join(argv)}` did not finish within {timeout:.0f}s",
            hint="check the Docker engine here (`docker info`) and the registry, then retry",
        ) from exc


def local_image_id(image: str) -> str | None:
    done = _docker(["image", "inspect", "--format", "{{.Id}}", image])
    return done.stdout.strip() if done.returncode == 0 else None


def resolve_images(images: list[str]) -> dict[str, str]:
    """Map each image to its local id; an image missing here must be pullable, or it is an error."""
    found: dict[str, str] = {}
    for image in images:
        image_id = local_image_id(image)
        if image_id is None:
            pulled = _docker(["pull", image], timeout=300)
            image_id = local_image_id(image) if pulled.returncode == 0 else None
        if image_id is None:
            raise UsageError(
                f"image {image!r} is not on this machine and could not be pulled",
                hint=f"build or load it here first (docker build -t {image} ...), then deploy",
            )
        found[image] = image_id
    return found


def _node_image_id(layout: HomeLayout, cluster: Cluster, node: Node, image: str) -> str | None:
    done = ssh.run_ssh(
        node.public_ip,
        layout.ssh_private_key(cluster.name),
        layout.known_hosts(cluster.name),
        ["docker", "image", "inspect", "--format", "{{.Id}}", image],
        check=False,
    )
    return done.stdout.decode().strip() if done.returncode == 0 else None


def _ship(layout: HomeLayout, cluster: Cluster, node: Node, image: str) -> None:
    argv = ssh.ssh_command(
        node.public_ip,
        layout.ssh_private_key(cluster.name),
        layout.known_hosts(cluster.name),
        ["docker", "load"],
    )
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    load = subprocess.run(argv, stdin=save.stdout, capture_output=True, text=True, check=False)
    assert save.stdout is not None
    save.stdout.close()
    if save.wait() != 0 or load.returncode != 0:
        raise ProviderError(
            f"could not copy image {image} to node {node.name}: {load.stderr.strip()}",
            hint="check the node's disk space and SSH access, then deploy again",
        )


def _ship_to_node(
    layout: HomeLayout,
    cluster: Cluster,
    node: Node,
    images: list[tuple[str, str]],
    progress: Progress,
) -> int:
    """Load each ``(image, id)`` the node lacks onto it; returns copies made."""
    copies = 0
    for image, image_id in images:
        if _node_image_id(layout, cluster, node, image) == image_id:
            continue
        progress(f"  copying image {image} to {node.name}")
        _ship(layout, cluster, node, image)
        copies += 1
    return copies


def ship_service_images(
    layout: HomeLayout, cluster: Cluster, services: list[Service], progress: Progress
) -> int:
    """Load every service image onto every node lacking that exact id; returns copies made.

    The nodes are served at once: each look at a node is an SSH connection of its own, and a
    node that has every image already costs only that look.
    """
    images = sorted({pair for service in services for pair in service.image_ids.items()})
    nodes = sorted(cluster.nodes.values(), key=lambda n: n.name)
    if not images or not nodes:
        return 0
    with ThreadPoolExecutor(max_workers=min(len(nodes), _MAX_PARALLEL_NODES)) as pool:
        copies = [
            pool.submit(_ship_to_node, layout, cluster, node, images, progress) for node in nodes
        ]
        return sum(copy.result() for copy in copies)


class ImageTransfer(Protocol):
    """How a deploy finds its images here and gets them onto the nodes."""

    def resolve(self, images: list[str]) -> dict[str, str]: ...

    def ship(
        self, layout: HomeLayout, cluster: Cluster, services: list[Service], progress: Progress
    ) -> int: ...


class ControllerImages:
    """The real transfer: this machine's docker, streamed to each node over SSH."""

    def resolve(self, images: list[str]) -> dict[str, str]:
        return resolve_images(images)

    def ship(
        self, layout: HomeLayout, cluster: Cluster, services: list[Service], progress: Progress
    ) -> int:
        return ship_service_images(layout, cluster, services, progress)
