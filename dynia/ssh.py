"""SSH to the nodes: per-cluster key pairs, pinned host keys, and the ssh command line.

Host-key checking is always strict: every node's host key is read out-of-band when the node is
provisioned and pinned in the cluster's own known_hosts file. A node answering with a different
key is refused, never learned.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from dynia.errors import ProviderError

HOST_KEY_CHANGED_MARKERS = (
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Host key verification failed",
    "No ED25519 host key is known",
    "No RSA host key is known",
    "No ECDSA host key is known",
)


class SshError(ProviderError):
    """An ssh command could not reach or log in to a node, or the command failed."""


class HostKeyMismatchError(SshError):
    """The node presented a host key that is not the one pinned for it."""


def generate_key_pair(private_key: Path, comment: str) -> str:
    """Create an ed25519 key pair at ``private_key`` (+ ``.pub``) unless one exists.

    Returns the public key line. The folder is 0700 and the private key 0600.
    """
    private_key.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(private_key.parent, 0o700)
    public_key = private_key.with_name(private_key.name + ".pub")
    if not private_key.exists():
        result = subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private_key)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SshError(
                f"ssh-keygen could not create {private_key}: {result.stderr.strip()}",
                hint="check that openssh-client is installed and the folder is writable",
            )
    os.chmod(private_key, 0o600)
    if not public_key.exists():
        public_key.write_text(public_key_of(private_key) + "\n")
    return public_key.read_text().strip()


def public_key_of(private_key: Path) -> str:
    result = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private_key)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SshError(
            f"cannot read the SSH key {private_key}: {result.stderr.strip()}",
            hint="the key file is damaged or not a private key; remove it to have a new one made",
        )
    return result.stdout.strip()


def key_body(line: str) -> str:
    """``type base64`` of an OpenSSH public key or host key line (drops options and comment)."""
    for index, word in enumerate(parts := line.split()):
        if word.startswith(("ssh-", "ecdsa-", "sk-")) and index + 1 < len(parts):
            return f"{word} {parts[index + 1]}"
    raise ValueError(f"not an OpenSSH public key line: {line!r}")


def remove_key_pair(private_key: Path) -> None:
    for path in (private_key, private_key.with_name(private_key.name + ".pub")):
        path.unlink(missing_ok=True)


def known_hosts_lines(hosts: Mapping[str, Sequence[str]]) -> list[str]:
    """``host type base64`` lines, sorted, for each host's pinned keys."""
    return [f"{host} {key_body(key)}" for host in sorted(hosts) for key in sorted(set(hosts[host]))]


def write_known_hosts(path: Path, hosts: Mapping[str, Sequence[str]]) -> None:
    """Write ``path`` holding exactly the given hosts' keys (0600, replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(line + "\n" for line in known_hosts_lines(hosts)))
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def pin_host_keys(path: Path, host: str, keys: Sequence[str]) -> None:
    """Replace ``host``'s entries in ``path`` with ``keys``, keeping every other host's."""
    hosts = read_known_hosts(path)
    hosts[host] = list(keys)
    write_known_hosts(path, hosts)


def forget_host(path: Path, host: str) -> None:
    hosts = read_known_hosts(path)
    if hosts.pop(host, None) is not None:
        write_known_hosts(path, hosts)


def read_known_hosts(path: Path) -> dict[str, list[str]]:
    hosts: dict[str, list[str]] = {}
    if not path.exists():
        return hosts
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            hosts.setdefault(parts[0], []).append(f"{parts[1]} {parts[2]}")
    return hosts


def failure_reason(error: SshError) -> str:
    """Why a connection failed, without the ``ssh user@host failed:`` its message starts with."""
    return re.sub(r"^ssh \S+ failed: ", "", error.message)


# What an ssh_config(5) argument may hold without quotes: anything else (a space, a quote, a '#')
# is quoted, since ssh splits UserKnownHostsFile's value into several files at whitespace.
_SSH_CONFIG_PLAIN = re.compile(r"[A-Za-z0-9_/.,:@+=%-]+")


def ssh_config_value(value: str) -> str:
    r"""``value`` as one argument of an ssh_config(5) option (``-o Name=<this>``).

    ssh reads the argument as its config files do: double quotes group words, ``\\`` and ``\"``
    are escapes inside them, and paths expand ``%`` tokens (``%%`` is a literal ``%``). ssh has no
    escape for ``${``, which it expands from the environment: such a value is a ValueError (the
    dynia home refuses those paths, dynia.paths.check_home_path).
    """
    if "${" in value:
        raise ValueError(f"ssh would expand '${{' in {value!r}; it cannot be passed to ssh")
    value = value.replace("%", "%%")
    if _SSH_CONFIG_PLAIN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ssh_options(known_hosts: Path, connect_timeout: int = 5) -> list[str]:
    """The ``-o`` options every connection uses: pinned keys only, no prompts, no learning."""
    options = {
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": ssh_config_value(str(known_hosts)),
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "HashKnownHosts": "no",
        "IdentitiesOnly": "yes",
        "BatchMode": "yes",
        "PasswordAuthentication": "no",
        "ConnectTimeout": str(connect_timeout),
        "LogLevel": "ERROR",
    }
    return [arg for name, value in options.items() for arg in ("-o", f"{name}={value}")]


def ssh_common_args(known_hosts: Path) -> str:
    """The options as one string, for Ansible's ``ansible_ssh_common_args``."""
    return shlex.join(ssh_options(known_hosts))


def ssh_command(
    host: str,
    key: Path,
    known_hosts: Path,
    command: str | Sequence[str] | None = None,
    *,
    user: str = "root",
    port: int = 22,
    connect_timeout: int = 5,
) -> list[str]:
    """argv for ``ssh`` to ``user@host`` with ``key``, checking the host key against the pin."""
    argv = ["ssh", "-i", str(key), "-p", str(port), *ssh_options(known_hosts, connect_timeout)]
    argv.append(f"{user}@{host}")
    if command is not None:
        argv.append(command if isinstance(command, str) else shlex.join(command))
    return argv


def run_ssh(
    host: str,
    key: Path,
    known_hosts: Path,
    command: str | Sequence[str],
    *,
    user: str = "root",
    timeout: float = 60.0,
    input_data: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` on ``host``. A changed host key raises HostKeyMismatchError; a failed
    connection or (with ``check``) a failing command raises SshError."""
    argv = ssh_command(host, key, known_hosts, command, user=user)
    try:
        result = subprocess.run(
            argv, input=input_data, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SshError(
            f"ssh {user}@{host} did not finish within {timeout:.0f}s",
            hint="check that the node is running and reachable",
        ) from exc
    stderr = result.stderr.decode(errors="replace")
    if any(marker in stderr for marker in HOST_KEY_CHANGED_MARKERS):
        raise HostKeyMismatchError(
            f"{host} presented a host key that does not match the one pinned in {known_hosts}",
            hint="the node was replaced or someone is intercepting the connection; if the node "
            "was rebuilt on purpose, re-provision it so its new key is pinned",
        )
    if result.returncode == 255:
        raise SshError(
            f"ssh {user}@{host} failed: {stderr.strip() or 'connection failed'}",
            hint="check that the node is running, its address is right and the key is installed",
        )
    if check and result.returncode != 0:
        raise SshError(
            f"command on {host} exited {result.returncode}: {stderr.strip()[-500:]}",
            hint="see the command's error output above",
        )
    return result
