#!/usr/bin/python
"""Documentation of the dynia_haproxy_state action plugin (action_plugins/dynia_haproxy_state.py),
which runs on the controller and has no module part on the node."""

from __future__ import annotations

DOCUMENTATION = r"""
module: dynia_haproxy_state
short_description: Set a server's state on every HAProxy at once (drain, ready, maint)
description:
  - Sends C(set server BACKEND/SERVER state STATE) to the admin socket of HAProxy on every given
    host, over SSH, in parallel; with C(drain), waits on each host until the server has no
    sessions left (or I(drain_timeout) passes).
  - A host whose HAProxy is not running, has no admin socket yet, or does not list the server
    yet is skipped, not failed. A host that cannot be reached, or lacks C(socat), fails the task.
  - Runs on the controller, as an action plugin; the node itself is not contacted.
options:
  server: {description: Server name (the node's)., type: str, required: true}
  backend: {description: HAProxy backend the server is in., type: str, required: true}
  socket: {description: Path of HAProxy's admin socket on the hosts., type: str, required: true}
  state: {description: State to set., type: str, required: true, choices: [drain, ready, maint]}
  drain_timeout:
    description: Seconds to wait for the sessions of a drained server.
    type: int
    default: 10
  hosts:
    description: The HAProxy hosts and how to reach them (their Ansible connection variables).
    type: list
    elements: dict
    required: true
    suboptions:
      name: {description: Inventory name., type: str, required: true}
      address: {description: Address to connect to., type: str, required: true}
      user: {description: SSH user., type: str}
      port: {description: SSH port., type: int}
      key: {description: Private key file., type: str}
      common_args: {description: Extra ssh arguments (ansible_ssh_common_args)., type: str}
  ssh_args:
    description: The ssh arguments of Ansible's ssh connection (ControlMaster, ControlPersist).
    type: str
    default: ""
  control_path:
    description: Ansible's ssh C(control_path), C(%(directory)s) standing for I(control_path_dir).
    type: str
    default: ""
  control_path_dir: {description: Ansible's ssh C(control_path_dir)., type: str, default: ""}
"""

RETURN = r"""
hosts:
  description: Per HAProxy host, what it answered (C(drain), C(ready) or C(skipped: why)).
  type: dict
  returned: always
"""
