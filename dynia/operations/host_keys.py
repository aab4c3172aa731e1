"""Fresh SSH host keys for nodes whose first host key travelled in cloud-init user data.

On DigitalOcean the provider hands cloud-init a host key pair it generated, so the key is pinned
before first contact. That user data stays readable from the droplet's metadata service
(169.254.169.254) for its whole life, by every process and container on it: the private half is
no secret. So it is a bootstrap key only. Over the first connection that checks it, the node
generates a fresh ed25519 pair (the private half never leaves the node), Dynia pins the fresh
public key, the node installs it in place of every other host key and reloads sshd, and a new
connection that trusts only the fresh key proves the switch.

Each step is safe to repeat. Before the switch both keys are pinned and saved, so a run cut short
anywhere can reconnect to the node whichever key it presents, and finishes the rotation.
"""

from __future__ import annotations

import subprocess

from dynia import ssh
from dynia.errors import ProviderError
from dynia.operations import Progress
from dynia.paths import HomeLayout
from dynia.ssh import SshError
from dynia.state import Transaction
from dynia.state.models import Cluster, Node
from dynia.waiting import wait_until

FRESH_DIR = "/etc/ssh/dynia-fresh-host-key"
# Generates the fresh pair once (a repeat prints the same key) and prints its public half.
_GENERATE = f"""set -eu
d={FRESH_DIR}
if [ ! -s "$d/ssh_host_ed25519_key.pub" ] || [ ! -s "$d/ssh_host_ed25519_key" ]; then
    rm -rf "$d.tmp"
    install -d -m 700 "$d.tmp"
    ssh-keygen -q -t ed25519 -N '' -C '' -f "$d.tmp/ssh_host_ed25519_key"
    rm -rf "$d"
    mv "$d.tmp" "$d"
fi
cat "$d/ssh_host_ed25519_key.pub"
"""
# Installs it as the only host key. sshd re-reads its keys on reload; this session survives.
_INSTALL = f"""set -eu
d={FRESH_DIR}
if [ -d "$d" ]; then
    find /etc/ssh -maxdepth 1 -name 'ssh_host_*' -delete
    mv -f "$d/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
    mv -f "$d/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
    rmdir "$d"
fi
systemctl reload-or-restart ssh 2>/dev/null || systemctl reload-or-restart sshd
"""


def rotate_host_keys(
    layout: HomeLayout,
    txn: Transaction,
    cluster: Cluster,
    node: Node,
    progress: Progress,
    timeout: float = 60.0,
) -> None:
    """Replace ``node``'s bootstrap host key by one generated on the node; pin only that."""
    fresh = _fresh_key(_run(layout, cluster, node, _GENERATE, timeout).stdout, node)
    _pin(layout, txn, cluster, node, [*node.host_keys, fresh])
    _run(layout, cluster, node, _INSTALL, timeout)
    _pin(layout, txn, cluster, node, [fresh])
    _run(layout, cluster, node, "true", timeout)  # only the fresh key is trusted now
    progress(f"  node {node.name}: fresh SSH host key pinned; the bootstrap key is gone")


def _pin(
    layout: HomeLayout, txn: Transaction, cluster: Cluster, node: Node, keys: list[str]
) -> None:
    node.host_keys = list(dict.fromkeys(keys))
    ssh.write_known_hosts(
        layout.known_hosts(cluster.name),
        {n.public_ip: n.host_keys for n in cluster.nodes.values() if n.host_keys},
    )
    txn.save()


def _fresh_key(output: bytes, node: Node) -> str:
    fields = output.decode(errors="replace").split()
    if len(fields) < 2 or fields[0] != "ssh-ed25519":
        raise ProviderError(
            f"node {node.name} did not print a fresh ed25519 host key",
            hint="check that openssh-server (ssh-keygen) is installed on the image, then re-run "
            "the same command; it resumes",
        )
    return f"{fields[0]} {fields[1]}"


def _run(
    layout: HomeLayout, cluster: Cluster, node: Node, script: str, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """Run ``script`` on the node; the connection is retried while sshd starts or reloads (it
    may still present the key it is dropping for a moment), a failing script is not."""

    def ran() -> subprocess.CompletedProcess[bytes]:
        done = ssh.run_ssh(
            node.public_ip,
            layout.ssh_private_key(cluster.name),
            layout.known_hosts(cluster.name),
            ["sh", "-c", script],
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise ProviderError(
                f"replacing the bootstrap SSH host key of node {node.name} failed "
                f"(exit {done.returncode}): {done.stderr.decode(errors='replace').strip()[-300:]}",
                hint="re-run the same command; it resumes the rotation where it stopped",
            )
        return done

    # An SshError (HostKeyMismatchError included) is "not yet"; the last one ends the wait.
    return wait_until(
        ran, timeout=timeout, interval=1.0, what=f"ssh to {node.name}", retry_on=(SshError,)
    )
