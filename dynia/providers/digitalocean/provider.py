"""The DigitalOcean node provider (pydo): droplets, the cluster VPC, the SSH key, a Reserved IP.

What it makes, and how it finds it again (so a re-run never duplicates anything):

* droplet ``<cluster>-<node>``, tags ``dynia``, ``dynia-cluster-<cluster>``,
  ``dynia-node-<node>`` and ``dynia-hostkey-<hex>`` (the raw ed25519 host public key, so the
  pinned host key can be recovered from the API after an interrupted run); found by listing the
  cluster tag.
* VPC ``dynia-<cluster>`` in the cluster's region; found by name.
* SSH key ``dynia-<cluster>``; found by fingerprint.
* no Cloud Firewall: its rules can let through only TCP, UDP and ICMP, and it filters the VPC
  interface too, so it would drop keepalived's VRRP adverts (IP protocol 112) and leave every
  node MASTER. The nodes' own firewall (role ``dynia_firewall``) does that job.
* a Reserved IP: reserved IPs carry no tags, so one is recognised as the cluster's while it is
  assigned to one of the cluster's droplets (a new one is created assigned to a cluster droplet
  when the cluster has any, for exactly that reason). ``allocate_reserved_ip`` returns a new one
  as soon as its create answered, without waiting for the assignment that create started, so
  state learns of it before anything can fail; ``attach_reserved_ip`` finishes the move (it
  waits while the first assignment runs and assigns again after one that errored). Every move
  reads the address first and treats "already there" as done, so a lost answer never leads to
  a blind second action.

Host keys are pinned before first contact: the provider generates a bootstrap ed25519 host key
pair locally and hands it to cloud-init in the user data (``ssh_keys``), so the public half is
known before the droplet boots. The user data stays readable through the metadata service by
anything on the droplet, containers included, so that key is for the first connection only:
``operations/host_keys.py`` has the node generate a fresh key over it, pins that one and removes
the bootstrap key (the ``dynia-hostkey-`` tag keeps naming the bootstrap key).

Every call goes through the API client of ``api.py`` (bounded retries, errors as
``ProviderError``); a create there is given a lookup by the name or tags the resource carries,
so a retried create never makes a second one. Waits for DigitalOcean's asynchronous work (a
droplet booting, an action, a VPC emptying) are bounded by :class:`Timeouts`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dynia.errors import ProviderError
from dynia.providers.base import (
    NetworkInfo,
    NodeSpec,
    ProvisionedNode,
    ReservedIpGoneError,
    ReservedIpInfo,
)
from dynia.providers.credentials import Secret
from dynia.providers.digitalocean.api import (
    QUOTA_HINT,
    ApiError,
    DigitalOceanApi,
    Progress,
    RetryPolicy,
    field,
    is_missing,
    malformed,
    require,
)
from dynia.waiting import WaitTimeout, wait_until

# The release the local Debian 13 nodes test (Compose v2, HAProxy 3.0, keepalived 2.3); a
# cluster's recorded image (NodeSpec.image) takes precedence.
DEFAULT_IMAGE = "debian-13-x64"
PRIVATE_INTERFACE = "eth1"  # DigitalOcean attaches the VPC network as the second interface


@dataclass(frozen=True)
class Timeouts:
    """How long to wait for DigitalOcean's asynchronous work (seconds)."""

    active: float = 300.0  # droplet from "new" to "active"
    ssh: float = 300.0  # sshd answering on the public address
    action: float = 120.0  # a reserved-IP action to complete
    vpc_release: float = 120.0  # a VPC to lose its members after the droplets are gone
    poll_interval: float = 3.0


@dataclass
class _HostKey:
    private_openssh: str
    public_line: str  # "ssh-ed25519 AAAA..."

    @property
    def tag(self) -> str:
        raw = base64.b64decode(self.public_line.split()[1])[-32:]
        return f"dynia-hostkey-{raw.hex()}"


def _whole_number(body: dict[str, Any], key: str, what: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProviderError(
            f"DigitalOcean answered {what} without a number in {key!r} ({value!r})",
            hint="re-run the same command; if it repeats check https://status.digitalocean.com",
        )
    return value


def _generate_host_key() -> _HostKey:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return _HostKey(private, public.decode())


def _host_key_from_tag(tag: str) -> str:
    """Rebuild the "ssh-ed25519 <base64>" line from a ``dynia-hostkey-<hex>`` tag."""
    raw = bytes.fromhex(tag.removeprefix("dynia-hostkey-"))
    kind = b"ssh-ed25519"
    blob = len(kind).to_bytes(4, "big") + kind + len(raw).to_bytes(4, "big") + raw
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}"


def ssh_fingerprint(public_key: str) -> str:
    """DigitalOcean's fingerprint of an OpenSSH public key: MD5 of the blob, colon hex."""
    try:
        blob = base64.b64decode(public_key.split()[1], validate=True)
    except (IndexError, ValueError):
        raise ProviderError(
            "the cluster SSH public key is not an OpenSSH public key line",
            hint="regenerate the cluster key pair (ssh-keygen -t ed25519)",
        ) from None
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class DigitalOceanNodeProvider:
    """``NodeProvider`` on DigitalOcean. Construct once per command; it holds one API client."""

    name = "digitalocean"
    reserved_ip_mode: Literal["vrrp", "api"] = "api"

    def __init__(
        self,
        token: Secret | str | None = None,
        *,
        api_url: str | None = None,
        region: str | None = None,
        image: str = DEFAULT_IMAGE,
        ssh_port: int = 22,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        progress: Progress | None = None,
    ) -> None:
        self._api = DigitalOceanApi(
            token, api_url=api_url, retry=retry, sleep=sleep, progress=progress
        )
        self._client = self._api.client
        self.region = region
        self.image = image
        self.ssh_port = ssh_port
        self.timeouts = timeouts or Timeouts()
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"DigitalOceanNodeProvider(api_url={self._api.api_url!r}, region={self.region!r})"

    def _wait(
        self,
        what: str,
        timeout: float,
        check: Callable[[], Any],
        timed_out: ProviderError | None = None,
    ) -> Any:
        """Poll ``check`` until it returns something truthy; bounded by ``timeout``.

        ``timed_out``: the error to raise past the timeout instead of the general one.
        """
        try:
            return wait_until(
                check,
                timeout=timeout,
                interval=self.timeouts.poll_interval,
                what=what,
                sleep=self._sleep,
            )
        except WaitTimeout:
            if timed_out is not None:
                raise timed_out from None
            raise ProviderError(
                f"timed out after {timeout:.0f}s waiting for {what}",
                hint="re-run the same command: it finds what was already created and waits "
                "again; if it keeps timing out check the DigitalOcean control panel",
            ) from None

    # -- network -------------------------------------------------------------------------------

    def _vpcs(self) -> list[dict[str, Any]]:
        what = "listing VPCs"
        vpcs = self._api.list_all(what, self._client.vpcs.list, "vpcs")
        return [require(v, what, id=str, name=str, region=str, ip_range=str) for v in vpcs]

    def _find_vpc(self, cluster: str) -> dict[str, Any] | None:
        return next((v for v in self._vpcs() if v.get("name") == f"dynia-{cluster}"), None)

    def _ensure_vpc(self, cluster: str, region: str) -> dict[str, Any]:
        vpcs = self._vpcs()
        vpc = next((v for v in vpcs if v.get("name") == f"dynia-{cluster}"), None)
        if vpc is None:
            body = {
                "name": f"dynia-{cluster}",
                "region": region,
                "ip_range": _plan_ip_range(cluster, [v["ip_range"] for v in vpcs]),
                "description": f"Private network of Dynia cluster {cluster}",
            }
            what = f"creating VPC dynia-{cluster}"
            vpc = self._api.create(
                what,
                self._client.vpcs.create,
                body,
                "vpc",
                lambda: self._find_vpc(cluster),
                refused=f"DigitalOcean's message says what it refuses about VPC dynia-{cluster} "
                f"(its name, region {region} or range {body['ip_range']}); remove the VPC in "
                "its way (Networking > VPC in the control panel) and re-run the same command",
            )
            require(vpc, what, id=str, region=str, ip_range=str)
        if vpc.get("region") != region:
            raise ProviderError(
                f"VPC dynia-{cluster} exists in region {vpc.get('region')}, not {region}",
                hint=f"create the cluster in {vpc.get('region')}, or delete that VPC first",
            )
        return vpc

    def ensure_network(self, cluster: str, region: str | None = None) -> NetworkInfo:
        """The cluster VPC: found, created when a region is known, or planned.

        Without a region (neither the argument nor the provider's) the VPC cannot be created
        yet; its address range is planned instead, and the first ``create_node`` creates the
        VPC with exactly that range in the node's region.
        """
        region = region or self.region
        if region:
            vpc = self._ensure_vpc(cluster, region)
            subnet = vpc["ip_range"]
        else:
            vpcs = self._vpcs()
            vpc = next((v for v in vpcs if v.get("name") == f"dynia-{cluster}"), None)
            taken = [v["ip_range"] for v in vpcs]
            subnet = vpc["ip_range"] if vpc else _plan_ip_range(cluster, taken)
        return NetworkInfo(f"dynia-{cluster}", subnet, PRIVATE_INTERFACE)

    def delete_network(self, cluster: str) -> None:
        """Delete the cluster VPC and SSH key; waits (bounded) for the VPC to empty."""
        vpc = self._find_vpc(cluster)
        if vpc is not None:
            self._delete_vpc(cluster, vpc["id"])
        what = "listing SSH keys"
        for key in self._api.list_all(what, self._client.ssh_keys.list, "ssh_keys"):
            if require(key, what, id=int, name=str)["name"] == f"dynia-{cluster}":
                self._api.call("deleting SSH key", self._client.ssh_keys.delete, key["id"])

    def _delete_vpc(self, cluster: str, vpc_id: str) -> None:
        """Delete the VPC; while DigitalOcean still lists leaving droplets in it, wait (bounded)."""
        name, limit = f"dynia-{cluster}", self.timeouts.vpc_release
        told = False

        def attempt() -> bool:
            nonlocal told
            if self._try_delete_vpc(name, vpc_id):
                return True
            if not told:
                self._api.progress(
                    f"VPC {name} still has members (droplets being deleted); "
                    f"waiting up to {limit:.0f}s for DigitalOcean to release them"
                )
                told = True
            return False

        try:
            self._wait(f"VPC {name} to lose its droplets", limit, attempt)
        except ProviderError as exc:
            if "timed out" not in exc.message:
                raise
            raise ProviderError(
                f"deleting VPC {name}: it did not lose its droplets within {limit:.0f}s",
                hint="droplets of this or another cluster are still in it: check Networking > "
                "VPC in the DigitalOcean control panel, delete or move them, then re-run the "
                "same command (it resumes)",
            ) from None

    def _try_delete_vpc(self, name: str, vpc_id: str) -> bool:
        try:
            self._api.call(f"deleting VPC {name}", self._client.vpcs.delete, vpc_id)
        except ApiError as exc:
            # The live API answers 409 (its description says 403) while droplets are leaving.
            if exc.status in (403, 409) and "member" in exc.api_message.lower():
                return False
            if exc.status == 404:
                return True  # deleted by an earlier try whose answer was lost
            raise
        return True

    # -- SSH key -------------------------------------------------------------------------------

    def _ensure_ssh_key(self, cluster: str, public_key: str) -> int:
        fingerprint = ssh_fingerprint(public_key)
        key = self._get_ssh_key(fingerprint)
        if key is None:
            body = {"name": f"dynia-{cluster}", "public_key": public_key.strip()}
            try:
                key = self._api.create(
                    "uploading the SSH key",
                    self._client.ssh_keys.create,
                    body,
                    "ssh_key",
                    lambda: self._get_ssh_key(fingerprint),
                )
            except ApiError:
                key = self._get_ssh_key(fingerprint)  # uploaded by a concurrent run
                if key is None:
                    raise
        return int(key["id"])

    def _get_ssh_key(self, fingerprint: str) -> dict[str, Any] | None:
        what = "looking up the SSH key"
        try:
            body = self._api.call(what, self._client.ssh_keys.get, fingerprint)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return None if is_missing(body) else require(field(body, "ssh_key", what), what, id=int)

    # -- droplets ------------------------------------------------------------------------------

    def _cluster_droplets(self, cluster: str) -> list[dict[str, Any]]:
        what = f"listing droplets of cluster {cluster}"
        droplets = self._api.list_all(
            what, self._client.droplets.list, "droplets", tag_name=f"dynia-cluster-{cluster}"
        )
        return [_checked_droplet(d, what) for d in droplets]

    def _find_droplet(self, cluster: str, node: str) -> dict[str, Any] | None:
        tag = f"dynia-node-{node}"
        return next((d for d in self._cluster_droplets(cluster) if tag in d["tags"]), None)

    def check_room(self, cluster: str, nodes: list[str]) -> None:
        """Compare the account's droplet limit with its droplets and the ones still to make."""
        existing = {tag for d in self._cluster_droplets(cluster) for tag in d["tags"]}
        missing = [n for n in nodes if f"dynia-node-{n}" not in existing]
        if not missing:
            return
        what = "reading the account's droplet limit"
        account = field(self._api.call(what, self._client.account.get), "account", what)
        limit = _whole_number(account, "droplet_limit", what)
        what = "counting the account's droplets"
        listed = self._api.call(what, self._client.droplets.list, per_page=1)
        used = _whole_number(field(listed, "meta", what), "total", what)
        if used + len(missing) > limit:
            raise ProviderError(
                f"the DigitalOcean account has {used} of its {limit} droplets: "
                f"{len(missing)} more for cluster {cluster} would pass its droplet limit",
                hint=QUOTA_HINT,
            )

    def create_node(self, spec: NodeSpec) -> ProvisionedNode:
        droplet = self._find_droplet(spec.cluster, spec.name)
        if droplet is None:
            droplet = self._create_droplet(spec)
        droplet = self._wait_active(droplet["id"], spec.name)
        node = self._to_node(droplet)
        self._wait_ssh(node)
        return node

    def _create_droplet(self, spec: NodeSpec) -> dict[str, Any]:
        key_id = self._ensure_ssh_key(spec.cluster, spec.ssh_public_key)
        vpc = self._ensure_vpc(spec.cluster, spec.region)
        host_key = _generate_host_key()
        body = {
            "name": f"{spec.cluster}-{spec.name}",
            "region": spec.region,
            "size": spec.size,
            "image": spec.image or self.image,
            "ssh_keys": [key_id],
            "tags": [
                "dynia",
                f"dynia-cluster-{spec.cluster}",
                f"dynia-node-{spec.name}",
                host_key.tag,
            ],
            "vpc_uuid": vpc["id"],
            "user_data": _user_data(spec, host_key),
            "monitoring": False,
            "ipv6": False,
        }
        return self._api.create(
            f"creating droplet {body['name']}",
            self._client.droplets.create,
            body,
            "droplet",
            lambda: self._find_droplet(spec.cluster, spec.name),
            refused=f"check the cluster's region, size and image ({spec.region}, {spec.size}, "
            f"{body['image']}): DigitalOcean's message names the one it refuses; then re-run",
        )

    def _wait_active(self, droplet_id: int, node: str) -> dict[str, Any]:
        what = f"reading droplet {node}"

        def check() -> dict[str, Any] | None:
            body = self._api.call(what, self._client.droplets.get, droplet_id)
            if is_missing(body):
                raise ProviderError(
                    f"droplet of node {node} (id {droplet_id}) disappeared while booting",
                    hint="re-run the same command to create it again",
                )
            droplet = _checked_droplet(field(body, "droplet", what), what)
            ready = droplet["status"] == "active" and _address(droplet, "public")
            return droplet if ready else None

        return self._wait(f"droplet of node {node} to become active", self.timeouts.active, check)

    def _wait_ssh(self, node: ProvisionedNode) -> None:
        def check() -> bool:
            try:
                with socket.create_connection((node.public_ip, self.ssh_port), timeout=5) as conn:
                    conn.settimeout(5)
                    return conn.recv(4).startswith(b"SSH-")
            except OSError:
                return False

        self._wait(f"SSH on node {node.name} ({node.public_ip})", self.timeouts.ssh, check)

    def _to_node(self, droplet: dict[str, Any]) -> ProvisionedNode:
        tags = droplet["tags"]
        node = _node_name(droplet)
        if node is None:
            raise ProviderError(
                f"droplet {droplet['id']} ({droplet['name']}) has no dynia-node-<name> tag, "
                "so it is no node Dynia made",
                hint=_UNTAGGED_HINT,
            )
        host_keys = [_host_key_from_tag(t) for t in tags if t.startswith("dynia-hostkey-")]
        return ProvisionedNode(
            name=node,
            provider_id=str(droplet["id"]),
            public_ip=_address(droplet, "public") or "",
            private_ip=_address(droplet, "private") or "",
            host_keys=host_keys,
        )

    def list_nodes(self, cluster: str) -> list[ProvisionedNode]:
        """The cluster's nodes: its droplets that carry a node tag.

        Dynia tags every droplet it makes with its node's name; one carrying only the cluster
        tag was tagged by hand. It is left out with a warning rather than failing the listing:
        ``cluster delete`` deletes what this returns, and must go on without deleting it.
        """
        nodes = []
        for droplet in self._cluster_droplets(cluster):
            if _node_name(droplet) is None:
                self._api.progress(
                    f"warning: droplet {droplet['id']} ({droplet['name']}) carries tag "
                    f"dynia-cluster-{cluster} but no dynia-node-<name> tag: Dynia did not make "
                    f"it and leaves it alone; {_UNTAGGED_HINT}"
                )
                continue
            nodes.append(self._to_node(droplet))
        return sorted(nodes, key=lambda n: n.name)

    def delete_node(self, cluster: str, provider_id: str) -> None:
        droplet_id = _droplet_id(provider_id)
        body = self._api.call(
            "reading the droplet to delete", self._client.droplets.get, droplet_id
        )
        if is_missing(body):
            return
        tags = field(body, "droplet", "reading the droplet to delete").get("tags") or []
        if f"dynia-cluster-{cluster}" not in tags:
            raise ProviderError(
                f"droplet {provider_id} does not carry tag dynia-cluster-{cluster}; "
                "Dynia deletes only droplets it created for this cluster",
                hint="check the node's provider id in state; delete foreign droplets by hand",
            )
        self._api.call(f"deleting droplet {provider_id}", self._client.droplets.destroy, droplet_id)

    # -- reserved IP ---------------------------------------------------------------------------

    def _reserved_ips(self) -> list[dict[str, Any]]:
        what = "listing reserved IPs"
        rips = self._api.list_all(what, self._client.reserved_ips.list, "reserved_ips")
        return [require(r, what, ip=str, region=dict, droplet=(dict, type(None))) for r in rips]

    def allocate_reserved_ip(self, cluster: str, region: str) -> ReservedIpInfo:
        """The cluster's reserved IP: the one on a cluster droplet, else a new one.

        A new one is returned as soon as DigitalOcean answers its create, before its first
        assignment ended: the caller records it at once, and ``attach_reserved_ip`` (which waits
        while an action runs on the address, and assigns it again after one errored) finishes
        the move. Any wait here would leave an address on the account that state lacks when the
        run is cut off, and the re-run would make a second.
        """
        droplets = self._cluster_droplets(cluster)
        ours = {d["id"] for d in droplets}
        held, existing = self._held_reserved_ip(ours, region)
        if held is not None:
            return ReservedIpInfo(address=held["ip"], provider_id=held["ip"])
        # Creating it assigned to a cluster droplet keeps it recognisable as ours on a re-run.
        in_region = sorted(
            (d for d in droplets if d["region"].get("slug") == region), key=lambda d: d["name"]
        )
        target: int | None = in_region[0]["id"] if in_region else None
        body: dict[str, Any] = {"droplet_id": target} if target else {"region": region}
        before = {r["ip"] for r in existing}
        what = "creating the reserved IP"
        made = self._api.call(
            what,
            self._client.reserved_ips.create,
            body,
            recover=lambda: self._new_reserved_ip(before, ours, region),
            refused=f"check that region {region} offers reserved IPs and that the account has "
            "room for one more (Networking > Reserved IPs); then re-run the same command",
        )
        address = require(field(made, "reserved_ip", what), what, ip=str)["ip"]
        return ReservedIpInfo(address=address, provider_id=address)

    def _held_reserved_ip(
        self, ours: set[int], region: str
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The reserved IP on one of the droplets ``ours``, and every reserved IP of the account.

        A create whose answer never came (the connection lost, the run cut off during it) may
        have left an address state does not know, unassigned and locked while its assign action
        runs, and recognisable as this cluster's only once that action put it on the droplet:
        such addresses in the region are waited for (bounded) before deciding that the cluster
        has none. Once the create answered, state holds the address and no re-run asks here.
        """
        rips = self._reserved_ips()
        held = _held_by(rips, ours)
        moving = [r["ip"] for r in rips if _moving_in(r, region)]
        if held is None and ours and moving:
            self._wait_unlocked(moving, region)
            rips = self._reserved_ips()
            held = _held_by(rips, ours)
        return held, rips

    def _wait_unlocked(self, addresses: list[str], region: str) -> None:
        names = ", ".join(addresses)
        self._api.progress(
            f"reserved IP {names} in {region} has an action running; waiting for it to end "
            "before deciding whether it is this cluster's"
        )

        def unlocked() -> bool:
            return not any((self._get_reserved_ip(a) or {}).get("locked") for a in addresses)

        limit = self.timeouts.action
        self._wait(
            f"reserved IP {names} to finish its action",
            limit,
            unlocked,
            timed_out=ProviderError(
                f"reserved IP {names} in {region} still has an action running after "
                f"{limit:.0f}s; it may be this cluster's, from a run that was cut off",
                hint="re-run the same command once the action ended (Networking > Reserved IPs "
                "in the control panel): creating another now could leave one unused",
            ),
        )

    def _new_reserved_ip(
        self, before: set[str], ours: set[int], region: str
    ) -> dict[str, Any] | None:
        """The reserved IP an earlier create made: one on a cluster droplet, else a new,
        unassigned one in the region (its assign action may still be pending)."""
        rips = self._reserved_ips()
        fresh = [
            r
            for r in rips
            if r["ip"] not in before and not r["droplet"] and r["region"].get("slug") == region
        ]
        found = _held_by(rips, ours) or (fresh or [None])[0]
        return None if found is None else {"reserved_ip": found}

    def _get_reserved_ip(self, address: str) -> dict[str, Any] | None:
        what = f"reading reserved IP {address}"
        try:
            body = self._api.call(what, self._client.reserved_ips.get, address)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        if is_missing(body):
            return None
        rip = field(body, "reserved_ip", what)
        return require(rip, what, ip=str, region=dict, droplet=(dict, type(None)))

    def reserved_ip_exists(self, ip: ReservedIpInfo) -> bool:
        """GET /v2/reserved_ips/{ip}: a 404 means the account no longer has it."""
        return self._get_reserved_ip(ip.address) is not None

    def attach_reserved_ip(self, ip: ReservedIpInfo, node_provider_id: str) -> None:
        target = _droplet_id(node_provider_id)
        self._post_action(ip.address, {"type": "assign", "droplet_id": target})

    def detach_reserved_ip(self, ip: ReservedIpInfo) -> None:
        rip = self._get_reserved_ip(ip.address)
        if rip is None or not (rip["droplet"] or rip.get("locked")):
            return
        self._post_action(ip.address, {"type": "unassign"})

    def _post_action(self, address: str, body: dict[str, Any]) -> None:
        """Move the reserved IP as ``body`` says and wait until it is there.

        The address is read before every send: already where ``body`` wants it means done (an
        earlier try whose answer was lost did it), and an action still running on it is waited
        for; so a lost answer is never followed by a blind second action.
        """
        what = f"{body['type']}ing reserved IP {address}"
        post = self._client.reserved_ips_actions.post
        refused = None
        if body["type"] == "assign":
            refused = (
                "the droplet must exist and be in the reserved IP's region; DigitalOcean's "
                "message says what it refused; then re-run the same command"
            )

        def recheck() -> dict[str, Any] | None:
            return None if self._placement(address, body, what) == "todo" else _RECHECK

        def submit() -> dict[str, Any] | None:
            placement = self._placement(address, body, what)
            if placement != "todo":
                return _DONE if placement == "done" else None
            try:
                answer = self._api.call(
                    what,
                    post,
                    reserved_ip=address,
                    body=body,
                    recover=recheck,
                    refused=refused,
                )
            except ApiError as exc:
                return self._after_refusal(address, body, what, exc)
            if is_missing(answer):  # pydo returns the 404 body instead of raising
                return self._after_refusal(address, body, what, None)
            return None if answer is _RECHECK else field(answer, "action", what)

        action = self._wait(
            f"reserved IP {address} to accept {body['type']}", self.timeouts.action, submit
        )
        if action is not _DONE:
            self._wait_action(action["id"], what)

    def _placement(self, address: str, body: dict[str, Any], what: str) -> str:
        """Where the reserved IP stands for ``body``: "done" when it is where ``body`` wants it,
        "busy" while an action on it runs, else "todo"."""
        rip = self._get_reserved_ip(address)
        if rip is None:
            raise ReservedIpGoneError(
                address,
                f"{what}: DigitalOcean no longer knows reserved IP {address}",
                hint="it was released outside Dynia; run `dynia repair --force` to "
                "allocate a new one",
            )
        if rip.get("locked"):
            return "busy"
        holder = (rip["droplet"] or {}).get("id")
        return "done" if holder == body.get("droplet_id") else "todo"

    def _after_refusal(
        self, address: str, body: dict[str, Any], what: str, error: ApiError | None
    ) -> dict[str, Any] | None:
        """What a refused action means (``error`` None: pydo returned a 404 body).

        _DONE when a lost earlier try did it after all; None to send again once a running
        action ended; else raises, naming what is missing: the reserved IP or the droplet.
        """
        if error is not None and error.status not in (404, 422):
            raise error
        if error is not None and "pending" in error.api_message.lower():
            return None  # an earlier action still runs: submit again once it ends
        placement = self._placement(address, body, what)  # raises when the address is gone
        if placement != "todo":
            return _DONE if placement == "done" else None
        droplet_id = body.get("droplet_id")
        if droplet_id is not None and not self._droplet_exists(droplet_id):
            raise ProviderError(
                # A plain ProviderError: only ReservedIpGoneError leads to a new address.
                f"{what}: droplet {droplet_id} is gone from the DigitalOcean account "
                "(deleted outside Dynia?)",
                hint="`dynia cluster show --json` lists each node's provider_id: remove that "
                "node with `dynia cluster node remove NAME` (add a replacement with `dynia "
                "cluster node add`), then re-run the command",
            )
        if error is None or error.status == 404:
            raise ProviderError(
                f"{what}: DigitalOcean answered 404 though reserved IP {address} is on the account",
                hint="re-run the same command; if it repeats check https://status.digitalocean.com",
            )
        raise error

    def _droplet_exists(self, droplet_id: int) -> bool:
        what = f"reading droplet {droplet_id}"
        try:
            body = self._api.call(what, self._client.droplets.get, droplet_id)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return not is_missing(body)

    def _wait_action(self, action_id: int, what: str) -> None:
        if self._action_end(action_id, what) == "errored":
            raise ProviderError(
                f"DigitalOcean action {action_id} ({what}) errored",
                hint="check the action in the control panel and re-run the same command",
            )

    def _action_end(self, action_id: int, what: str) -> str:
        """How action ``action_id`` ended: "completed" or "errored"; bounded by the timeout."""

        def check() -> str | None:
            body = self._api.call(what, self._client.actions.get, action_id)
            if is_missing(body):
                raise ProviderError(
                    f"DigitalOcean lost action {action_id} ({what})",
                    hint="re-run the same command",
                )
            status = field(body, "action", what).get("status")
            return status if status in ("completed", "errored") else None

        limit = self.timeouts.action
        return self._wait(
            f"action {action_id} ({what})",
            limit,
            check,
            timed_out=ProviderError(
                f"DigitalOcean action {action_id} ({what}) did not complete within {limit:.0f}s",
                hint="DigitalOcean may be degraded (https://status.digitalocean.com); "
                "re-run the same command once the action shows completed",
            ),
        )

    def release_reserved_ip(self, cluster: str, ip: ReservedIpInfo) -> None:
        rip = self._get_reserved_ip(ip.address)
        if rip is None:
            return
        holder = rip["droplet"]
        if holder and f"dynia-cluster-{cluster}" not in (holder.get("tags") or []):
            raise ProviderError(
                f"reserved IP {ip.address} is assigned to droplet {holder.get('name')}, which is "
                f"not part of cluster {cluster}; Dynia will not release it",
                hint="unassign it by hand if it really belongs to this cluster",
            )
        if holder:
            self._post_action(ip.address, {"type": "unassign"})

        def delete() -> bool:
            try:
                self._api.call(
                    f"releasing reserved IP {ip.address}",
                    self._client.reserved_ips.delete,
                    ip.address,
                )
            except ApiError as exc:
                if exc.status == 422 and "pending" in exc.api_message.lower():
                    return False
                if exc.status == 404:
                    return True  # released by an earlier try whose answer was lost
                raise
            return True

        self._wait(f"reserved IP {ip.address} to be released", self.timeouts.action, delete)


# What _post_action's submit answers besides an action: the address is already where it should
# be; or (from the retry's lookup) a lost earlier try was accepted, so read the address again.
_DONE: dict[str, Any] = {"done": True}
_RECHECK: dict[str, Any] = {"recheck": True}


def _held_by(rips: list[dict[str, Any]], ours: set[int]) -> dict[str, Any] | None:
    return next((r for r in rips if (r["droplet"] or {}).get("id") in ours), None)


def _moving_in(rip: dict[str, Any], region: str) -> bool:
    """Unassigned and locked in ``region``: e.g. a new address whose assign action runs."""
    return bool(rip.get("locked")) and not rip["droplet"] and rip["region"].get("slug") == region


def _plan_ip_range(cluster: str, taken: list[str]) -> str:
    """A /24 for the cluster VPC in 10.100.0.0-10.199.255.0 that overlaps no existing VPC.

    Derived from the cluster name, so planning twice against the same account gives the same
    range (``ensure_network`` may plan before ``create_node`` creates).
    """
    used = []
    for cidr in taken:
        try:
            used.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue
    slots = 100 * 256
    start = int.from_bytes(hashlib.sha256(cluster.encode()).digest()[:4], "big") % slots
    for offset in range(slots):
        slot = (start + offset) % slots
        candidate = ipaddress.ip_network(f"10.{100 + slot // 256}.{slot % 256}.0/24")
        if not any(candidate.overlaps(other) for other in used):
            return str(candidate)
    raise ProviderError(
        "no free /24 left in 10.100.0.0/9 for a new cluster VPC",
        hint="delete unused VPCs on the DigitalOcean account",
    )


def _address(droplet: dict[str, Any], kind: str) -> str | None:
    networks = droplet.get("networks")
    v4 = networks.get("v4") if isinstance(networks, dict) else None
    for network in v4 if isinstance(v4, list) else []:
        if isinstance(network, dict) and network.get("type") == kind:
            address = network.get("ip_address")
            return address if isinstance(address, str) else None
    return None


def _checked_droplet(droplet: dict[str, Any], what: str) -> dict[str, Any]:
    """``droplet`` when it has the fields the provider reads, else a ProviderError naming them:
    a droplet read without its tags would count as not the cluster's."""
    require(droplet, what, id=int, name=str, status=str, tags=list, region=dict)
    if not all(isinstance(tag, str) for tag in droplet["tags"]):
        raise malformed(what, f"droplet {droplet['id']} with tags that are not names")
    if not isinstance(droplet["region"].get("slug"), str):
        raise malformed(what, f"droplet {droplet['id']} without a region slug")
    return droplet


# What to do about a droplet that carries a cluster tag but no node tag (tagged by hand).
_UNTAGGED_HINT = (
    "remove the dynia-cluster-<cluster> tag from that droplet (Droplets > Tags in the control "
    "panel), or, if it is a node Dynia made, add back its dynia-node-<name> tag"
)


def _node_name(droplet: dict[str, Any]) -> str | None:
    """The node name of the droplet's ``dynia-node-<name>`` tag; None without one."""
    names = (t.removeprefix("dynia-node-") for t in droplet["tags"] if t.startswith("dynia-node-"))
    return next((name for name in names if name), None)


def _droplet_id(provider_id: str) -> int:
    if not str(provider_id).isdigit():
        raise ProviderError(
            f"{provider_id!r} is not a DigitalOcean droplet id",
            hint="the node's provider_id in state should be the droplet's numeric id",
        )
    return int(provider_id)


def _user_data(spec: NodeSpec, host_key: _HostKey) -> str:
    """cloud-init: install the pinned host key, make the node ready for Ansible (python3)."""
    config: dict[str, Any] = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": host_key.private_openssh,
            "ed25519_public": host_key.public_line,
        },
        "disable_root": False,
        "package_update": True,
        "packages": ["python3", "python3-apt"],
        "hostname": spec.name,
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


__all__ = ["DigitalOceanNodeProvider", "Timeouts", "ssh_fingerprint"]
