"""Ansible inventory plugin: the nodes of one Dynia cluster, read from Dynia's state file.

It imports only the standard library and ansible, so any ansible install that can read this file
can use it, with or without the dynia package importable.
"""

from __future__ import annotations

import json
import os
import re
import shlex

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

DOCUMENTATION = r"""
name: dynia
short_description: The nodes of a Dynia cluster, from Dynia's state file
description:
  - Reads the Dynia state file (C(state.json) in the dynia home) and yields every node of one
    cluster with its SSH connection settings (per-cluster key, pinned known_hosts, host-key
    checking always on), the groups C(dynia_<cluster>), C(master), C(backup),
    C(provider_<node provider>), and the variables Dynia's roles need.
  - The config file is named C(dynia.yml) or C(<anything>.dynia.yml) (C(.yaml) works too) and
    its C(plugin) key is C(dynia); Ansible's other inventory files are left to their own plugins.
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks the file as a config of this plugin.
    required: true
    choices: [dynia]
  home:
    description:
      - The dynia home holding C(state.json) and C(clusters/<cluster>/ssh/).
      - Defaults to E(DYNIA_HOME), else C(~/.dynia).
    type: path
    env:
      - name: DYNIA_HOME
  state_file:
    description: The state file; defaults to C(<home>/state.json).
    type: path
  cluster:
    description: The cluster whose nodes make the inventory.
    type: str
    required: true
  deploy_config_dir:
    description: The rendered deploy-config folder; defaults to C(<home>/deploy-config/<cluster>).
    type: path
  user:
    description: The SSH user on the nodes.
    type: str
    default: root
"""

EXAMPLES = r"""
# inventory.dynia.yml
plugin: dynia
home: /home/ops/.dynia
cluster: prod
keyed_groups:
  - key: dynia_priority
    prefix: priority
"""


CONFIG_NAMES = ("dynia.yml", "dynia.yaml")


def is_config_name(path: str) -> bool:
    """``dynia.yml`` or ``*.dynia.yml``: the plugin claims only files named for it, as aws_ec2."""
    name = os.path.basename(path)
    return name in CONFIG_NAMES or name.endswith(tuple("." + n for n in CONFIG_NAMES))


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "dynia"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and is_config_name(path)

    def parse(self, inventory, loader, path, cache=True):  # type: ignore[no-untyped-def]
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        home = os.path.abspath(
            os.path.expanduser(self.get_option("home") or os.path.join("~", ".dynia"))
        )
        cluster_name = self.get_option("cluster")
        state_file = self.get_option("state_file") or os.path.join(home, "state.json")
        cluster = _load_cluster(state_file, cluster_name)
        deploy_dir = self.get_option("deploy_config_dir") or os.path.join(
            home, "deploy-config", cluster_name
        )
        ssh_dir = os.path.join(home, "clusters", cluster_name, "ssh")
        self._add_nodes(cluster, cluster_name, ssh_dir, deploy_dir)

    def _add_nodes(self, cluster: dict, cluster_name: str, ssh_dir: str, deploy_dir: str) -> None:
        nodes = sorted(cluster.get("nodes", {}).values(), key=lambda n: n["name"])
        master = _master_name(nodes)
        cluster_group = "dynia_" + cluster_name.replace("-", "_")
        provider_group = "provider_" + str(cluster.get("node_provider", "unknown")).replace(
            "-", "_"
        )
        for group in (cluster_group, "master", "backup", provider_group):
            self.inventory.add_group(group)
        common_args = ssh_common_args(os.path.join(ssh_dir, "known_hosts"))
        strict = self.get_option("strict")
        for node in nodes:
            name = node["name"]
            role = "master" if name == master else "backup"
            for group in (cluster_group, role, provider_group):
                self.inventory.add_host(name, group=group)
            host_vars = {
                "ansible_host": node["public_ip"],
                "ansible_user": self.get_option("user"),
                "ansible_ssh_private_key_file": os.path.join(ssh_dir, "id_ed25519"),
                "ansible_ssh_common_args": common_args,
                "dynia_cluster": cluster_name,
                "dynia_node_name": name,
                "dynia_node_role": role,
                "dynia_private_ip": node["private_ip"],
                "dynia_priority": node["priority"],
                "dynia_deploy_config_dir": deploy_dir,
            }
            for key, value in host_vars.items():
                self.inventory.set_variable(name, key, value)
            self._construct(name, strict)

    def _construct(self, host: str, strict: bool) -> None:
        host_vars = self.inventory.get_host(host).get_vars()
        self._set_composite_vars(self.get_option("compose"), host_vars, host, strict=strict)
        host_vars = self.inventory.get_host(host).get_vars()
        self._add_host_to_composed_groups(self.get_option("groups"), host_vars, host, strict=strict)
        self._add_host_to_keyed_groups(
            self.get_option("keyed_groups"), host_vars, host, strict=strict
        )


# Mirrors dynia.ssh.ssh_config_value (this plugin imports no dynia module): what an ssh_config(5)
# argument may hold unquoted.
_SSH_CONFIG_PLAIN = re.compile(r"[A-Za-z0-9_/.,:@+=%-]+")


def ssh_common_args(known_hosts: str) -> str:
    """``ansible_ssh_common_args`` pinning ``known_hosts``, whatever characters its path holds.

    Two layers read it: Ansible splits the string as a shell would (shlex), then ssh splits the
    ``-o`` value as a config line, where whitespace separates several known_hosts files. So the
    path is quoted for ssh first, and the whole option quoted for shlex around that.
    """
    if "${" in known_hosts:
        raise AnsibleParserError(
            f"the known_hosts path {known_hosts} holds '${{', which ssh expands from the "
            "environment: use a dynia home without it"
        )
    value = known_hosts.replace("%", "%%")  # ssh expands %-tokens in the path
    if not _SSH_CONFIG_PLAIN.fullmatch(value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return shlex.join(["-o", f"UserKnownHostsFile={value}", "-o", "StrictHostKeyChecking=yes"])


def _load_cluster(state_file: str, cluster_name: str) -> dict:
    """The cluster's record from the state file, with errors that say what to do."""
    try:
        with open(state_file, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError as exc:
        raise AnsibleParserError(
            f"dynia state file {state_file} does not exist: create the cluster with "
            "'dynia cluster create' or point 'home'/'state_file' at the right dynia home"
        ) from exc
    except (OSError, ValueError) as exc:
        raise AnsibleParserError(f"dynia state file {state_file} is unreadable: {exc}") from exc
    clusters = state.get("clusters") or {}
    if cluster_name not in clusters:
        known = ", ".join(sorted(clusters)) or "none"
        raise AnsibleParserError(
            f"cluster {cluster_name!r} is not in {state_file} (clusters: {known}); "
            "set 'cluster' in the inventory config to one of them"
        )
    return clusters[cluster_name]


def _master_name(nodes: list[dict]) -> str | None:
    """The node keepalived prefers: highest priority, ties broken by name (as Dynia's state)."""
    if not nodes:
        return None
    return max(nodes, key=lambda n: (n["priority"], n["name"]))["name"]
