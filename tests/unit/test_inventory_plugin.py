"""The dynia inventory plugin, run by the real ansible-inventory on a real state file."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from sample_state import render_sample, save_sample

from dynia.paths import INVENTORY_FILE, HomeLayout, shipped_dir
from dynia.runner.run import _inventory_hosts
from dynia.state.models import Cluster, Node, State
from dynia.state.store import StateStore

ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


def _home(tmp_path: Path) -> HomeLayout:
    layout = HomeLayout(tmp_path / "home")
    cluster = Cluster("prod-eu", "digitalocean", "cloudflare", "fra1", "s-1vcpu-1gb", 3)
    for name, ip, priority in (
        ("quiet-fox", "203.0.113.2", 100),
        ("misty-owl", "203.0.113.3", 150),
        ("bold-elk", "203.0.113.4", 150),
    ):
        cluster.nodes[name] = Node(
            name, f"id-{name}", ip, ip.replace("203.0.113", "10.0.0"), priority
        )
    with StateStore(layout.root).transaction("test") as txn:
        txn.state.clusters["prod-eu"] = cluster
        txn.state.clusters["other"] = Cluster("other", "local", "local", "local", "c", 0)
    return layout


def _plain(value: object) -> object:
    """ansible-inventory marks values read from data files as unsafe (never templated)."""
    if isinstance(value, dict) and set(value) == {"__ansible_unsafe"}:
        return value["__ansible_unsafe"]
    return value


def _hostvars(inventory: dict, host: str) -> dict:
    return {key: _plain(value) for key, value in inventory["_meta"]["hostvars"][host].items()}


def _inventory(
    tmp_path: Path, config: dict, name: str = "dynia.yml"
) -> subprocess.CompletedProcess[str]:
    source = tmp_path / name
    source.write_text(yaml.safe_dump({"plugin": "dynia", **config}))
    return _ansible_inventory(tmp_path, "-i", str(source), "--list")


def _ansible_inventory(
    tmp_path: Path, *args: str, cwd: Path | None = None, plugin_env: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if plugin_env:
        env |= {
            "ANSIBLE_INVENTORY_PLUGINS": str(shipped_dir("inventory_plugins")),
            "ANSIBLE_INVENTORY_ENABLED": "dynia",
            "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
        }
    return subprocess.run(
        [str(ANSIBLE_INVENTORY), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _plugin_module() -> ModuleType:
    """The plugin file as Ansible loads it: a standalone module, not part of the dynia package."""
    path = shipped_dir("inventory_plugins") / "dynia.py"
    spec = importlib.util.spec_from_file_location("dynia_inventory_plugin", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("name", "claimed"),
    [
        ("dynia.yml", True),
        ("dynia.yaml", True),
        ("prod.dynia.yml", True),
        ("inventory.dynia.yaml", True),
        ("inventory.yml", False),
        ("hosts.yaml", False),
        ("mydynia.yml", False),
        ("dynia.yml.bak", False),
        ("dynia.json", False),
    ],
)
def test_plugin_claims_only_files_named_for_it(tmp_path: Path, name: str, claimed: bool) -> None:
    config = tmp_path / name
    config.write_text("plugin: dynia\ncluster: prod\n")
    assert _plugin_module().InventoryModule().verify_file(str(config)) is claimed


def test_a_plain_inventory_yml_is_left_to_other_plugins(tmp_path: Path) -> None:
    layout = _home(tmp_path)
    proc = _inventory(
        tmp_path, {"home": str(layout.root), "cluster": "prod-eu"}, name="inventory.yml"
    )
    assert proc.returncode != 0
    assert "Unable to parse" in proc.stderr and "inventory.yml" in proc.stderr


def test_rendered_project_reaches_the_nodes_through_its_inventory(tmp_path: Path) -> None:
    """The operator's view: ansible-inventory in deploy-config/<cluster>, no options, no env."""
    layout = HomeLayout(tmp_path / "home")
    cluster = save_sample(layout.root)
    project = render_sample(layout, cluster).directory
    assert (project / INVENTORY_FILE).is_file()
    assert not (project / "inventory.yml").exists()
    proc = _ansible_inventory(tmp_path, "--graph", cwd=project, plugin_env=False)
    assert proc.returncode == 0, proc.stderr
    assert f"@dynia_{cluster.name}" in proc.stdout
    assert all(node in proc.stdout for node in cluster.nodes)
    # The runner reads the same file to number nodes in progress lines ("node 2/3").
    assert _inventory_hosts(project, None) == sorted(cluster.nodes)


def test_nodes_groups_and_connection_vars(tmp_path: Path) -> None:
    layout = _home(tmp_path)
    proc = _inventory(tmp_path, {"home": str(layout.root), "cluster": "prod-eu"})
    assert proc.returncode == 0, proc.stderr
    inventory = json.loads(proc.stdout)
    assert sorted(inventory["dynia_prod_eu"]["hosts"]) == ["bold-elk", "misty-owl", "quiet-fox"]
    # Highest priority wins; the tie between bold-elk and misty-owl goes to the later name.
    assert inventory["master"]["hosts"] == ["misty-owl"]
    assert sorted(inventory["backup"]["hosts"]) == ["bold-elk", "quiet-fox"]
    assert sorted(inventory["provider_digitalocean"]["hosts"]) == sorted(
        inventory["dynia_prod_eu"]["hosts"]
    )
    host = _hostvars(inventory, "quiet-fox")
    ssh_dir = layout.cluster_dir("prod-eu") / "ssh"
    assert host["ansible_host"] == "203.0.113.2"
    assert host["ansible_user"] == "root"
    assert host["ansible_ssh_private_key_file"] == str(ssh_dir / "id_ed25519")
    assert host["ansible_ssh_common_args"] == (
        f"-o UserKnownHostsFile={ssh_dir / 'known_hosts'} -o StrictHostKeyChecking=yes"
    )
    assert host["dynia_private_ip"] == "10.0.0.2"
    assert host["dynia_priority"] == 100
    assert host["dynia_node_name"] == "quiet-fox"
    assert host["dynia_cluster"] == "prod-eu"
    assert host["dynia_deploy_config_dir"] == str(layout.deploy_config_dir("prod-eu"))


def test_constructable_options(tmp_path: Path) -> None:
    layout = _home(tmp_path)
    proc = _inventory(
        tmp_path,
        {
            "state_file": str(layout.state_file),
            "home": str(layout.root),
            "cluster": "prod-eu",
            "deploy_config_dir": "/srv/deploy",
            "compose": {"node_label": "dynia_node_name ~ '@' ~ dynia_private_ip"},
            "groups": {"preferred": "dynia_priority >= 150"},
            "keyed_groups": [{"key": "dynia_priority | string", "prefix": "priority"}],
        },
    )
    assert proc.returncode == 0, proc.stderr
    inventory = json.loads(proc.stdout)
    assert sorted(inventory["preferred"]["hosts"]) == ["bold-elk", "misty-owl"]
    assert inventory["priority_100"]["hosts"] == ["quiet-fox"]
    host = _hostvars(inventory, "bold-elk")
    assert host["node_label"] == "bold-elk@10.0.0.4"
    assert host["dynia_deploy_config_dir"] == "/srv/deploy"


def test_unknown_cluster_names_the_known_ones(tmp_path: Path) -> None:
    layout = _home(tmp_path)
    proc = _inventory(tmp_path, {"home": str(layout.root), "cluster": "staging"})
    assert proc.returncode != 0
    assert "'staging' is not in" in proc.stderr and "other, prod-eu" in proc.stderr


def test_missing_state_file_says_what_to_do(tmp_path: Path) -> None:
    proc = _inventory(tmp_path, {"home": str(tmp_path / "nowhere"), "cluster": "prod"})
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr and "dynia cluster create" in proc.stderr


def test_empty_state_has_no_hosts(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path / "home")
    with StateStore(layout.root).transaction("test") as txn:
        txn.state = State()
        txn.state.clusters["empty"] = Cluster("empty", "local", "local", "local", "c", 0)
    proc = _inventory(tmp_path, {"home": str(layout.root), "cluster": "empty"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["_meta"]["hostvars"] == {}
