"""What operations ask the nodes directly, outside a playbook run: over SSH and HTTP(S).

``LiveProbe`` is the real one; ``RunContext.probe`` carries it, so the steps that depend on an
answer (who holds the Reserved IP, does it answer, does a route answer through it) can be driven
by a double in tests.
"""

from __future__ import annotations

from typing import Protocol

from dynia import ssh
from dynia.errors import VerifyError
from dynia.operations.verify import verify_route
from dynia.paths import HomeLayout
from dynia.providers import node_provider_traits
from dynia.providers.base import DnsProvider
from dynia.render.variables import master_marker
from dynia.ssh import HostKeyMismatchError, SshError
from dynia.state.models import Cluster, Node
from dynia.waiting import WaitTimeout, wait_until

# ssh gives up on the connection after 5 s (ConnectTimeout); a node that connects but never runs
# the command (frozen, out of memory) is not waited on much longer.
_SSH_ANSWER_SECONDS = 10.0


class NodeProbe(Protocol):
    def ssh_problem(self, layout: HomeLayout, cluster: Cluster, node: Node) -> str | None:
        """None when ``node`` runs a command over SSH, else why it does not."""
        ...

    def holds_master_address(self, layout: HomeLayout, cluster: Cluster, node: Node) -> bool:
        """Whether keepalived gave ``node`` the MASTER's address; False when unreachable."""
        ...

    def wait_for_reserved_ip(self, cluster: Cluster, timeout: float = 30.0) -> str:
        """The answer through the Reserved IP once a node gives one; VerifyError on timeout."""
        ...

    def verify_route(
        self, layout: HomeLayout, cluster: Cluster, domain: str, dns: DnsProvider
    ) -> str:
        """The domain resolves to the Reserved IP and its health path answers over HTTPS."""
        ...


class LiveProbe:
    """Asks the nodes themselves: `ip addr` over the pinned SSH connection, HTTP to the IP."""

    def ssh_problem(self, layout: HomeLayout, cluster: Cluster, node: Node) -> str | None:
        """A changed host key is never a node that is merely down: it raises, and stops the run."""
        if not node.public_ip:
            return "it has no address yet"
        try:
            ssh.run_ssh(
                node.public_ip,
                layout.ssh_private_key(cluster.name),
                layout.known_hosts(cluster.name),
                ["true"],
                timeout=_SSH_ANSWER_SECONDS,
            )
        except HostKeyMismatchError:
            raise
        except SshError as exc:
            return ssh.failure_reason(exc)
        return None

    def holds_master_address(self, layout: HomeLayout, cluster: Cluster, node: Node) -> bool:
        """The Reserved IP itself, or in API mode the MASTER's marker on lo."""
        if cluster.reserved_ip is None or not node.public_ip:
            return False
        api_mode = node_provider_traits(cluster.node_provider).reserved_ip_mode == "api"
        address = master_marker(cluster) if api_mode else cluster.reserved_ip.address
        try:
            done = ssh.run_ssh(
                node.public_ip,
                layout.ssh_private_key(cluster.name),
                layout.known_hosts(cluster.name),
                ["ip", "-4", "-o", "addr", "show"],
                timeout=10,
                check=False,
            )
        except SshError:
            return False
        return f" {address}/" in done.stdout.decode(errors="replace")

    def wait_for_reserved_ip(self, cluster: Cluster, timeout: float = 30.0) -> str:
        """Wait until a node's Caddy answers through the Reserved IP; returns the status.

        The controller is a client like any other: HAProxy keeps the health path for the nodes
        (404), so the probe asks for a host no route serves. Caddy answers it (404, "no route
        for this host"); HAProxy itself answers 503 while no node passes its health check.
        """
        import urllib.error
        import urllib.request

        assert cluster.reserved_ip is not None
        url = f"http://{cluster.reserved_ip.address}:{cluster.settings.http_port}/"
        last_error = ""

        def answer() -> str | None:
            nonlocal last_error
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                if exc.code < 500:  # a node answered; only HAProxy's own errors are 5xx here
                    return f"HTTP {exc.code}"
                last_error = f"HTTP {exc.code}"
            except OSError as exc:
                last_error = str(exc)
            return None

        try:
            return wait_until(answer, timeout=timeout, interval=0.5, what=url)
        except WaitTimeout:
            raise VerifyError(
                f"the Reserved IP {cluster.reserved_ip.address} did not answer {url} within "
                f"{timeout:.0f}s ({last_error})",
                hint="check keepalived on the nodes (`dynia drift-check`), then "
                "`dynia repair --force`",
            ) from None

    def verify_route(
        self, layout: HomeLayout, cluster: Cluster, domain: str, dns: DnsProvider
    ) -> str:
        """DNS, then TLS and the health path through the Reserved IP (operations/verify.py)."""
        return verify_route(layout, cluster, domain, dns)
