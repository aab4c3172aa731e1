"""The node image a cluster boots: chosen per cluster (`--image`, `dynia init --image`),
checked against what the provider offers, recorded, and booted by nodes added later."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dynia.providers import NODE_PROVIDERS
from dynia.providers.local.image import LOCAL_IMAGES, dockerfile_text, node_image_tag


def dynia(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DYNIA_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "dynia.cli", *args], capture_output=True, text=True, env=env
    )


def shown(home: Path, cluster: str) -> dict[str, object]:
    done = dynia(home, "--cluster", cluster, "cluster", "show", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_each_local_release_has_its_own_image_tag_and_suite() -> None:
    assert set(LOCAL_IMAGES) == set(NODE_PROVIDERS["local"].only_images or ())
    assert node_image_tag("debian-12") != node_image_tag("debian-13")
    assert 'customize.sh "" /tmp/dynia-recipe "$MIRROR" trixie' in dockerfile_text(
        "debian:trixie", "trixie"
    )


def test_create_records_the_image_and_refuses_one_the_provider_lacks(tmp_path: Path) -> None:
    done = dynia(tmp_path, "cluster", "create", "--name", "t13", "--image", "debian-13",
                 "--plan-only")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert shown(tmp_path, "t13")["image"] == "debian-13"

    bad = dynia(tmp_path, "cluster", "create", "--name", "t14", "--image", "debian-14")
    assert bad.returncode == 2
    assert "unknown local node image 'debian-14'" in bad.stderr
    assert "debian-12, debian-13" in bad.stderr
    again = dynia(tmp_path, "cluster", "create", "--name", "t13", "--image", "debian-12",
                  "--plan-only")  # fmt: skip
    assert again.returncode == 2 and "different --image" in again.stderr


def test_local_clusters_default_to_debian_12_and_init_can_change_it(tmp_path: Path) -> None:
    assert dynia(tmp_path, "cluster", "create", "--name", "a1", "--plan-only").returncode == 0
    assert shown(tmp_path, "a1")["image"] == "debian-12"
    assert dynia(tmp_path, "init", "--image", "debian-13").returncode == 0
    assert dynia(tmp_path, "cluster", "create", "--name", "a2", "--plan-only").returncode == 0
    assert shown(tmp_path, "a2")["image"] == "debian-13"

    refused = dynia(tmp_path, "init", "--image", "ubuntu-24-04-x64")
    assert refused.returncode == 2 and "unknown local node image" in refused.stderr
    # The default image belongs to the default provider: a new provider starts from its own.
    assert dynia(tmp_path, "init", "--node-provider", "digitalocean").returncode == 0
    assert json.loads((tmp_path / "config.json").read_text())["image"] == ""


def test_droplets_boot_debian_13_and_an_untested_family_is_warned_about(tmp_path: Path) -> None:
    plan = ("cluster", "create", "--node-provider", "digitalocean", "--region", "fra1",
            "--plan-only")  # fmt: skip
    default = dynia(tmp_path, *plan, "--name", "d13")
    assert default.returncode == 0, default.stderr
    assert shown(tmp_path, "d13")["image"] == "debian-13-x64"
    assert "warning" not in default.stdout + default.stderr

    ubuntu = dynia(tmp_path, *plan, "--name", "u24", "--image", "ubuntu-24-04-x64")
    assert ubuntu.returncode == 0, ubuntu.stderr
    assert shown(tmp_path, "u24")["image"] == "ubuntu-24-04-x64"
    warned = ubuntu.stdout + ubuntu.stderr
    assert "no test covers digitalocean nodes booting 'ubuntu-24-04-x64'" in warned
    assert "debian-13-x64" in warned
