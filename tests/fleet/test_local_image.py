"""The node image: built without a registry, tagged by recipe, reused, and clean on failure."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fleet_fixtures import unique_prefix

from dynia.providers.local.engine import Docker
from dynia.providers.local.image import (
    BASE_IMAGE,
    RECIPE_LABEL,
    ImageBuildError,
    choose_build_method,
    ensure_node_image,
    node_image_tag,
    recipe_hash,
)


def registry_reachable(docker: Docker) -> bool:
    return docker.exists("image", BASE_IMAGE) or (
        docker.run(["pull", BASE_IMAGE], check=False, timeout=120).returncode == 0
    )


@pytest.mark.fleet
def test_second_build_is_a_no_op(node_image: str) -> None:
    assert node_image == node_image_tag()
    started = time.monotonic()
    again = ensure_node_image()
    warm = time.monotonic() - started
    print(f"\nwarm node image build (reuse of {again.tag}): {warm:.2f}s")
    assert again.method == "existing" and again.tag == node_image
    assert warm < 5
    labels = Docker().inspect("image", [node_image])[0]["Config"]["Labels"]
    assert labels[RECIPE_LABEL] == recipe_hash()


@pytest.mark.fleet
def test_build_without_registry_from_scratch(tmp_path: Path) -> None:
    """The debootstrap + import path, into a throwaway tag, exactly as a machine without a
    registry builds it (the recipe-hash image may already exist from an earlier run)."""
    docker = Docker()
    if not registry_reachable(docker):
        assert choose_build_method(docker) == "debootstrap"
    tag = f"dynia-test-{unique_prefix()}:scratch"
    try:
        result = ensure_node_image(tag=tag, method="debootstrap", work_root=tmp_path)
        print(f"\ncold node image build via debootstrap: {result.seconds:.1f}s")
        assert result.method == "debootstrap"
        image = docker.inspect("image", [tag])[0]
        assert image["Config"]["Labels"][RECIPE_LABEL] == recipe_hash()
        assert image["Config"]["Cmd"] == ["/usr/local/sbin/dynia-node-init"]
        listing = docker.text(
            ["run", "--rm", "--network=none", "--entrypoint=/bin/sh", tag, "-c",
             "ls /etc/ssh/ | grep -c ssh_host_ ; wc -c < /etc/machine-id;"
             " which haproxy caddy keepalived dockerd docker-compose sshd python3 | wc -l"]
        )  # fmt: skip
        host_keys, machine_id_bytes, binaries = listing.split()
        assert (host_keys, machine_id_bytes, binaries) == ("0", "0", "7")
        assert list(tmp_path.iterdir()) == []
    finally:
        docker.run(["image", "rm", "-f", tag], check=False)


@pytest.mark.fleet
def test_build_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    tag = f"dynia-test-{unique_prefix()}:broken"
    dead_mirror = "http://127.0.0.1:9/debian"
    with pytest.raises(ImageBuildError) as caught:
        ensure_node_image(tag=tag, mirror=dead_mirror, method="debootstrap", work_root=tmp_path)
    assert "debootstrap" in caught.value.message and dead_mirror in caught.value.message
    assert "DYNIA_DEBIAN_MIRROR" in (caught.value.hint or "")
    assert list(tmp_path.iterdir()) == []
    assert not Docker().exists("image", tag)


@pytest.mark.fleet
def test_busybox_image_runs_a_command(busybox_image: str) -> None:
    out = Docker().text(["run", "--rm", "--network=none", busybox_image, "busybox", "echo", "ok"])
    assert out == "ok"
    size = int(Docker().text(["image", "inspect", "--format", "{{.Size}}", busybox_image]))
    assert size < 5_000_000


@pytest.mark.fleet
def test_dockerfile_path_builds_from_a_debian_base(node_image: str, tmp_path: Path) -> None:
    """The path taken where a registry serves debian:bookworm. No registry here, so the base is
    a Debian bookworm image this machine has: the node image itself."""
    docker = Docker()
    tag = f"dynia-test-{unique_prefix()}:dockerfile"
    try:
        result = ensure_node_image(
            tag=tag, method="dockerfile", base_image=node_image, work_root=tmp_path
        )
        print(f"\nnode image build via Dockerfile: {result.seconds:.1f}s")
        image = docker.inspect("image", [tag])[0]
        assert image["Config"]["Labels"][RECIPE_LABEL] == recipe_hash()
        assert image["Config"]["StopSignal"] == "SIGRTMIN+3"
        listing = docker.text(
            ["run", "--rm", "--network=none", "--entrypoint=/bin/sh", tag, "-c",
             "ls /etc/ssh/ | grep -c ssh_host_ ; wc -c < /etc/machine-id"]
        )  # fmt: skip
        assert listing.split() == ["0", "0"]
        assert list(tmp_path.iterdir()) == []
    finally:
        docker.run(["image", "rm", "-f", tag], check=False)
