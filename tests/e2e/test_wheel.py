"""Dynia installed from its wheel into a fresh virtualenv outside the checkout.

The wheel must carry the roles, playbooks, templates and inventory plugin, and the generated
deploy-config must point Ansible at the copies inside the installed package, so an operator with a
plain `pip install` gets a working `ansible-playbook sync.yml` and `ansible-inventory --graph`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from configparser import ConfigParser
from dataclasses import dataclass
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest
from sample_state import save_sample

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600


@dataclass(frozen=True)
class WheelInstall:
    wheel: Path
    venv: Path
    site_packages: Path
    timings: dict[str, float]

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """An environment where only the wheel's venv provides dynia and Ansible."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        env.update(extra)
        return env


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, (
        f"{argv} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def _timed(timings: dict[str, float], label: str, argv: list[str], **kwargs: object) -> None:
    started = time.monotonic()
    _run(argv, **kwargs)
    timings[label] = time.monotonic() - started


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WheelInstall]:
    """The wheel built from this checkout and installed into a new venv under the temp folder."""
    root = tmp_path_factory.mktemp("wheel")
    assert not root.is_relative_to(REPO)
    dist, venv, timings = root / "dist", root / "venv", {}
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _timed(
        timings,
        "build",
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
        env=pip_env,
        timeout=INSTALL_TIMEOUT,
    )
    (wheel,) = dist.glob("dynia-*.whl")
    _timed(timings, "venv", [sys.executable, "-m", "venv", str(venv)], timeout=120)
    # Dependencies come from PyPI through pip's cache; the checkout is never on the path.
    _timed(
        timings,
        "install",
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        env=pip_env,
        cwd=root,
        timeout=INSTALL_TIMEOUT,
    )
    purelib = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        cwd=root,
    ).stdout.strip()
    print("wheel: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    yield WheelInstall(wheel, venv, Path(purelib), timings)


def test_wheel_carries_the_ansible_content(wheel_install: WheelInstall) -> None:
    names = set(zipfile.ZipFile(wheel_install.wheel).namelist())
    for member in (
        "dynia/_data/roles/dynia_sync/tasks/main.yml",
        "dynia/_data/roles/dynia_sync/library/dynia_file_state.py",
        "dynia/_data/roles/haproxy/templates/haproxy.cfg.j2",
        "dynia/_data/playbooks/sync.yml",
        "dynia/_data/inventory_plugins/dynia.py",
    ):
        assert member in names, f"{member} is missing from {wheel_install.wheel.name}"
    assert any(n.startswith("dynia/_data/templates/") for n in names)


def _wheel_metadata(wheel: Path) -> tuple[Message, set[str], zipfile.ZipFile]:
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
    return Parser().parsestr(archive.read(metadata).decode()), names, archive


def test_wheel_metadata_is_what_pypi_shows(wheel_install: WheelInstall) -> None:
    """Licence, people, README as the project page, classifiers and keywords travel in the wheel."""
    metadata, names, archive = _wheel_metadata(wheel_install.wheel)
    assert metadata["License-Expression"] == "MIT"
    assert metadata["License-File"] == "LICENSE"
    (licence,) = (n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    assert archive.read(licence).decode().startswith("MIT License")
    assert metadata["Author"] and metadata["Maintainer"]
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().startswith("# Dynia")
    classifiers = metadata.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Intended Audience :: System Administrators" in classifiers
    assert "ansible" in metadata["Keywords"].split(",")


def test_render_from_the_wheel_points_ansible_at_the_installed_roles(
    wheel_install: WheelInstall, tmp_path: Path
) -> None:
    home, workdir = tmp_path / "home", tmp_path / "work"
    workdir.mkdir()
    cluster = save_sample(home)
    env = wheel_install.env(DYNIA_HOME=str(home))

    imported = _run(
        [str(wheel_install.bin / "python"), "-c", "import dynia; print(dynia.__file__)"],
        cwd=workdir,
        env=env,
    ).stdout.strip()
    assert Path(imported).is_relative_to(wheel_install.site_packages)

    started = time.monotonic()
    _run([str(wheel_install.bin / "dynia"), "render"], cwd=workdir, env=env, timeout=120)
    print(f"dynia render from the wheel: {time.monotonic() - started:.1f} s")

    project = home / "deploy-config" / cluster.name
    assert (project / "haproxy" / "haproxy.cfg").read_text().strip()
    for name in cluster.nodes:  # one Caddyfile per node: each binds its own private address
        assert "reverse_proxy" in (project / "caddy" / f"{name}.Caddyfile").read_text()
    assert sorted(p.name for p in (project / "keepalived").iterdir()) == sorted(
        f"{name}.conf" for name in cluster.nodes
    )
    assert (project / "metadata.json").is_file() and (project / "sync.yml").is_file()

    config = ConfigParser(interpolation=None)
    config.read(project / "ansible.cfg")
    data = wheel_install.site_packages / "dynia" / "_data"
    assert Path(config["defaults"]["roles_path"]) == data / "roles"
    assert Path(config["defaults"]["inventory_plugins"]) == data / "inventory_plugins"
    assert (data / "roles" / "dynia_sync" / "tasks" / "main.yml").is_file()

    # The operator's view: the wheel's own ansible-inventory, in deploy-config, no dynia process.
    started = time.monotonic()
    graph = _run(
        [str(wheel_install.bin / "ansible-inventory"), "--graph"],
        cwd=project,
        env=wheel_install.env(),
        timeout=120,
    ).stdout
    print(f"ansible-inventory --graph from the wheel: {time.monotonic() - started:.1f} s")
    assert f"@dynia_{cluster.name}" in graph
    for node in cluster.nodes:
        assert node in graph
