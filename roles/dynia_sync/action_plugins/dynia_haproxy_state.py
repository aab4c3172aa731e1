"""Set one server's state on every HAProxy of the cluster at once, from the controller.

An action plugin: it runs inside Ansible's own process on the controller, so setting a state
starts no module process of its own. One SSH command per HAProxy host, all in parallel, over the
connection Ansible already holds open to each host (its ControlPath). A delegated task looped
over the hosts would cost one round trip after another, per node drained and again per node put
back. Its documentation is library/dynia_haproxy_state.py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from typing import Any

from ansible.plugins.action import ActionBase

# Runs on each HAProxy host: bash -c SCRIPT dynia-haproxy-state SOCKET BACKEND/SERVER STATE TIMEOUT
REMOTE_SCRIPT = r"""
set -uo pipefail
sock=$1 server=$2 state=$3 timeout=$4
if [ ! -S "$sock" ]; then echo "skipped: no haproxy admin socket"; exit 0; fi
command -v socat >/dev/null || { echo "socat is not installed" >&2; exit 2; }
if ! out=$(echo "set server $server state $state" | socat -t 2 stdio "unix-connect:$sock" 2>&1)
then
  echo "skipped: haproxy not answering: $out"; exit 0
fi
case "$out" in *[a-zA-Z]*) echo "skipped: $out"; exit 0;; esac
if [ "$state" = drain ]; then
  end=$(( $(date +%s) + timeout ))
  while [ "$(date +%s)" -lt "$end" ]; do
    cur=$(echo "show stat" | socat -t 2 stdio "unix-connect:$sock" \
          | awk -F, -v s="$server" '$1 "/" $2 == s {print $5}')
    [ "${cur:-0}" = 0 ] && break
    sleep 0.2
  done
fi
echo "$state"
"""

CONNECT_TIMEOUT = 10


def control_path(template: str, directory: str) -> str:
    """Ansible's ControlPath for a host: its ``control_path`` with the directory filled in."""
    if not template:
        return ""
    return template % {"directory": os.path.expanduser(directory or "~/.ansible/cp")}


def ssh_command(host: dict, ssh_args: str, path: str, remote_args: list[str]) -> list[str]:
    """The ssh command that runs the remote script on ``host`` as Ansible would connect."""
    command = ["ssh", *shlex.split(ssh_args or "")]
    if path:
        command += ["-o", f"ControlPath={path}"]
    command += shlex.split(host.get("common_args") or "")
    if host.get("key"):
        # Quoted as Ansible quotes it: ssh reads the value as a config line, split at spaces.
        command += ["-o", f'IdentityFile="{host["key"]}"']
    if host.get("user"):
        command += ["-o", f"User={host['user']}"]
    if host.get("port"):
        command += ["-o", f"Port={int(host['port'])}"]
    command += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}"]
    words = ["bash", "-c", REMOTE_SCRIPT, "dynia-haproxy-state", *remote_args]
    remote = " ".join(shlex.quote(word) for word in words)
    return [*command, "--", host["address"], remote]


def outcome(rc: int, stdout: str, stderr: str) -> tuple[bool, str]:
    """(ok, what the host answered) from one host's ssh run."""
    lines = stdout.strip().splitlines()
    answer = lines[-1] if lines else ""
    if rc == 0:
        return True, answer
    detail = (stderr.strip().splitlines() or [answer or f"exit {rc}"])[-1]
    return False, detail


def set_state_everywhere(params: dict) -> dict[str, tuple[bool, str]]:
    """Start every host's command at once, then collect each; name -> (ok, answer)."""
    path = control_path(params["control_path"], params["control_path_dir"])
    remote_args = [
        params["socket"],
        f"{params['backend']}/{params['server']}",
        params["state"],
        str(params["drain_timeout"]),
    ]
    started = {}
    for host in params["hosts"]:
        started[host["name"]] = subprocess.Popen(
            ssh_command(host, params["ssh_args"], path, remote_args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    deadline = time.monotonic() + params["drain_timeout"] + CONNECT_TIMEOUT + 10
    results = {}
    for name, process in started.items():
        try:
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results[name] = outcome(process.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            results[name] = (False, "timed out")
    return results


ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "server": {"type": "str", "required": True},
    "backend": {"type": "str", "required": True},
    "socket": {"type": "str", "required": True},
    "state": {"type": "str", "required": True, "choices": ["drain", "ready", "maint"]},
    "drain_timeout": {"type": "int", "default": 10},
    "hosts": {"type": "list", "elements": "dict", "required": True},
    "ssh_args": {"type": "str", "default": ""},
    "control_path": {"type": "str", "default": ""},
    "control_path_dir": {"type": "str", "default": ""},
}


def task_result(params: dict[str, Any], results: dict[str, tuple[bool, str]]) -> dict[str, Any]:
    """The task's result from each host's (ok, answer): failed when any host failed."""
    answers = {name: answer for name, (_, answer) in results.items()}
    failed = sorted(name for name, (ok, _) in results.items() if not ok)
    if failed:
        details = "; ".join(f"{name}: {answers[name]}" for name in failed)
        return {
            "failed": True,
            "changed": False,
            "hosts": answers,
            "msg": f"could not set {params['server']} to {params['state']} on the HAProxy of "
            f"{', '.join(failed)}: {details}",
        }
    changed = any(answer == params["state"] for answer in answers.values())
    return {"changed": changed, "hosts": answers}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        _, params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        if self._task.check_mode:
            return {
                **result,
                "skipped": True,
                "msg": "HAProxy states are not changed in check mode",
            }
        result.update(task_result(params, set_state_everywhere(params)))
        return result
