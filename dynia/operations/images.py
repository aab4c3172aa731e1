"""Getting a service's images onto nodes that have no registry to pull from.

The controller's image is streamed over the pinned SSH connection (`docker save | docker load`),
and skipped on nodes that already hold the same image id.
"""

from __future__ import annotations

import re
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

# Docker's image reference grammar (the distribution "reference" package): an optional registry
# host[:port], lower-case path components, then an optional tag and an optional digest.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_HOST}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE_RE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?", re.ASCII)
_NAME_MAX = 255  # docker refuses longer repository names
_REFERENCE_FORM = (
    "write it as [registry[:port]/]name[:tag] or name@sha256:<digest>, the name in lower-case "
    "letters, digits and . _ - (e.g. image: dynia-sample-web:1)"
)


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


def check_image_reference(image: str) -> str:
    """``image`` if docker can take it as an image name; else a UsageError saying why.

    Checked before docker sees it: a name such as "--help" would be read as an option (its
    help text taken for the image id), and docker's own refusal of "Web:1" reads as if the image
    were merely missing.
    """
    match = _REFERENCE_RE.fullmatch(image)
    if match and len(match["name"]) <= _NAME_MAX:
        return image
    raise UsageError(
        f"image {_shown(image)} in the compose file is not a valid image name: "
        f"{_why_invalid(image, match)}",
        hint=_REFERENCE_FORM,
    )


def _why_invalid(image: str, match: re.Match[str] | None) -> str:
    if match:
        return f"the name is longer than {_NAME_MAX} characters"
    if image.startswith("-"):
        return "it starts with '-', which docker would read as an option"
    if _REFERENCE_RE.fullmatch(_lower_name(image)):
        return f"image names are lower case ({_lower_name(image)!r} would do)"
    return "docker's image names allow no such form"


def _lower_name(image: str) -> str:
    """``image`` with its name (not its tag or digest) in lower case."""
    name, at, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = name[colon:] if colon > slash else ""
    return name[: len(name) - len(tag)].lower() + tag + at + digest


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 80 else f"{text[:40]!r}... ({len(text)} characters)"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def local_image_id(image: str) -> str | None:
    # `--` ends docker's options: whatever the name, it is taken as an image.
    done = _docker(["image", "inspect", "--format", "{{.Id}}", "--", image])
    return done.stdout.strip() if done.returncode == 0 else None


def resolve_images(images: list[str]) -> dict[str, str]:
    """Map each image to its local id; an image missing here must be pullable, or it is an error."""
    for image in images:
        check_image_reference(image)  # every name first: docker runs for none of a bad file
    found: dict[str, str] = {}
    for image in images:
        image_id = local_image_id(image)
        if image_id is None:
            pulled = _docker(["pull", "--", image], timeout=300)
            if pulled.returncode != 0:
                raise UsageError(
                    f"image {image!r} is not on this machine and could not be pulled: "
                    f"{_last_line(pulled.stderr)}",
                    hint=f"build or load it here first (docker build -t {image} ...), or check "
                    "the name and the registry login, then deploy",
                )
            image_id = local_image_id(image)
        if image_id is None:
            raise UsageError(
                f"image {image!r} was pulled but docker cannot show its id",
                hint=f"check it with `docker image inspect {image}`, then deploy again",
            )
        found[image] = image_id
    return found


def _node_image_id(layout: HomeLayout, cluster: Cluster, node: Node, image: str) -> str | None:
    done = ssh.run_ssh(
        node.public_ip,
        layout.ssh_private_key(cluster.name),
        layout.known_hosts(cluster.name),
        ["docker", "image", "inspect", "--format", "{{.Id}}", "--", image],
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
    save = subprocess.Popen(["docker", "save", "--", image], stdout=subprocess.PIPE)
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
