"""state + templates -> deploy-config/<cluster>/ with its manifest (metadata.json).

The folder is built in a temporary sibling and swapped in, so a failed render leaves the previous
artifact untouched. Nothing in a hashed file depends on time or on dict order: the same state gives
a byte-identical folder.

Rendering is pure: state plus ``RenderInputs`` in, files out. What depends on the provider or on
the environment (the Reserved IP mode, the nodes' failover token, a test API's address, the
cluster's certificate) is decided by the render operation (``dynia/operations/deploy_config.py``)
and handed in as plain values.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2

from dynia.errors import RenderError
from dynia.files import write_new_file
from dynia.paths import HomeLayout, shipped_dir
from dynia.render import variables
from dynia.render.compose import node_compose, parse_compose
from dynia.state.models import Cluster
from dynia.state.validation import check_cluster

# 2: file entries carry validate and role_source_var/role_target_var, components their order.
MANIFEST_SCHEMA = 2
# Written into every rendered folder: `render --output` replaces a non-empty folder only when it
# holds this file, so it never swaps away a folder some render did not write.
RENDER_MARKER = ".dynia-render"
MARKER_TEXT = b"Rendered by dynia. `dynia render` replaces this whole folder.\n"
SERVICES_ROOT = "/opt/dynia/services"
# The notify-master script and its token are not keepalived configuration: keepalived runs the
# script afresh on each transition, so a change needs no reload, and the config validator (which
# checks every "keepalived" file with `keepalived -t`) must never read, or echo, the token.
NOTIFY_COMPONENT = "keepalived-notify"


@dataclass(frozen=True)
class RenderInputs:
    """What a render needs besides state, as plain values the render operation decided."""

    # "vrrp": the Reserved IP is a keepalived address; "api": notify-master moves it by API.
    reserved_ip_mode: Literal["vrrp", "api"] = "vrrp"
    # Content of the nodes' failover token file (API mode); None leaves the file out of the
    # manifest, and the nodes keep the token they hold. Never shown in a repr.
    failover_token_file: bytes | None = field(default=None, repr=False)
    # The cluster's certificate bundle (certificate chain + key) for HAProxy; None: no TLS.
    tls_certificate: bytes | None = field(default=None, repr=False)
    # Where notify-master talks to DigitalOcean; checked by whoever chose them.
    digitalocean_api_url: str = variables.DEFAULT_DIGITALOCEAN_API_URL
    digitalocean_metadata_url: str = variables.DEFAULT_DIGITALOCEAN_METADATA_URL


@dataclass(frozen=True)
class RenderedFile:
    source: str  # path inside deploy-config/<cluster>/
    target: str  # path on the node
    content: bytes
    component: str
    nodes: tuple[str, ...]
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    # Checks the new file on the node before it replaces the old one (`%s`: the new file).
    validate: str | None = None
    # The role variables bootstrap hands this file to: its source in deploy-config, its target.
    role_source_var: str | None = None
    role_target_var: str | None = None

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "mode": self.mode,
            "owner": self.owner,
            "group": self.group,
            "sha256": hashlib.sha256(self.content).hexdigest(),
            "component": self.component,
            "nodes": list(self.nodes),
            "validate": self.validate,
            "role_source_var": self.role_source_var,
            "role_target_var": self.role_target_var,
        }


@dataclass
class RenderResult:
    directory: Path
    files: list[RenderedFile] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        return self.directory / "metadata.json"


def shell_quote(value: object) -> str:
    """Jinja filter ``quote`` (as Ansible names it): one shell word, whatever ``value`` holds."""
    return shlex.quote(str(value))


def template_environment(search_path: list[Path]) -> jinja2.Environment:
    """The Jinja2 environment every Dynia template is rendered in."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in search_path]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["quote"] = shell_quote
    return env


def check_render_inputs(cluster: Cluster, layout: HomeLayout) -> None:
    """Refuse, before anything is written, a value that would change what a rendered file says.

    State is checked when it is loaded; this runs the same checks on the cluster as it is now,
    so a value set in memory since (or a hand-built cluster) cannot reach a config file either.
    """
    try:
        check_cluster(cluster)
    except ValueError as exc:
        raise RenderError(
            f"refusing to render cluster {cluster.name!r}: {exc}",
            hint="nothing was rendered; correct the value in state.json (or the input that set "
            "it) and render again",
        ) from exc
    # The home's paths are written into ansible.cfg and the playbooks: one line each.
    root = str(layout.root)
    if any(ord(char) < 32 or ord(char) == 127 for char in root):
        raise RenderError(
            f"refusing to render cluster {cluster.name!r}: the dynia home {root!r} holds a "
            "control character",
            hint="use a home path without newlines or control characters (--home, DYNIA_HOME)",
        )


def _render(env: jinja2.Environment, template: str, context: dict[str, Any]) -> bytes:
    try:
        return env.get_template(template).render(**context).encode()
    except jinja2.UndefinedError as exc:
        raise RenderError(
            f"template {template} uses an undefined variable: {exc.message}",
            hint="the template and the variables Dynia computes disagree; "
            "check the role's documented variables",
        ) from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {template} failed to render: {exc}") from exc


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


class Renderer:
    """Renders one cluster's deploy-config."""

    def __init__(self, layout: HomeLayout) -> None:
        self.layout = layout
        self.roles_dir = shipped_dir("roles")
        self.templates_dir = shipped_dir("templates")
        self.env = template_environment([self.roles_dir, self.templates_dir])

    def node_files(self, cluster: Cluster, inputs: RenderInputs) -> list[RenderedFile]:
        """Every file that goes to nodes, sorted by (target, source)."""
        check_render_inputs(cluster, self.layout)
        nodes = tuple(sorted(cluster.nodes))
        with_tls = inputs.tls_certificate is not None
        files = [
            RenderedFile(
                "haproxy/haproxy.cfg",
                "/etc/haproxy/haproxy.cfg",
                _render(
                    self.env,
                    "haproxy/templates/haproxy.cfg.j2",
                    variables.haproxy_vars(cluster, with_tls),
                ),
                "haproxy",
                nodes,
                validate=variables.HAPROXY_VALIDATE,
                role_source_var="haproxy_config_source",
            ),
            RenderedFile(
                variables.FIREWALL_SOURCE,
                variables.FIREWALL_TARGET,
                _render(
                    self.env,
                    "dynia_firewall/templates/dynia-firewall.nft.j2",
                    variables.firewall_vars(cluster),
                ),
                variables.FIREWALL_COMPONENT,
                nodes,
                validate=variables.FIREWALL_VALIDATE,
                role_source_var="dynia_firewall_config_source",
            ),
        ]
        if inputs.tls_certificate is not None:
            files.append(
                RenderedFile(
                    "haproxy/certs/cluster.pem",
                    variables.HAPROXY_CERT_TARGET,
                    inputs.tls_certificate,
                    "haproxy",
                    nodes,
                    mode="0600",
                    role_source_var="haproxy_tls_certificate_source",
                    role_target_var="haproxy_tls_certificate_path",
                )
            )
        files.extend(self._caddy_files(cluster))
        files.extend(self._keepalived_files(cluster, inputs.reserved_ip_mode))
        files.extend(self._notify_master_files(cluster, nodes, inputs))
        files.extend(self._service_files(cluster, nodes))
        return sorted(files, key=lambda f: (f.target, f.source))

    def _caddy_files(self, cluster: Cluster) -> list[RenderedFile]:
        """One Caddyfile per node: each binds only that node's private address."""
        return [
            RenderedFile(
                f"caddy/{node.name}.Caddyfile",
                "/etc/caddy/Caddyfile",
                _render(
                    self.env, "caddy/templates/Caddyfile.j2", variables.caddy_vars(cluster, node)
                ),
                "caddy",
                (node.name,),
                validate=variables.CADDY_VALIDATE,
                role_source_var="caddy_config_source",
            )
            for node in sorted(cluster.nodes.values(), key=lambda n: n.name)
        ]

    def _keepalived_files(self, cluster: Cluster, mode: str) -> list[RenderedFile]:
        if not cluster.nodes:
            return []
        if cluster.network is None:
            # keepalived needs the private network's interface and prefix; state has neither.
            raise RenderError(
                f"cluster {cluster.name!r} has nodes but no private network in state "
                f"(clusters.{cluster.name}.network is null)",
                hint="restore the network record (name, subnet, interface) in state.json, or "
                "restore a backup from backups/ that has it",
            )
        return [
            RenderedFile(
                f"keepalived/{node.name}.conf",
                "/etc/keepalived/keepalived.conf",
                _render(
                    self.env,
                    "keepalived/templates/keepalived.conf.j2",
                    variables.keepalived_vars(cluster, node, mode),
                ),
                "keepalived",
                (node.name,),
                validate=variables.KEEPALIVED_VALIDATE,
                role_source_var="keepalived_config_source",
            )
            for node in sorted(cluster.nodes.values(), key=lambda n: n.name)
        ]

    def _notify_master_files(
        self, cluster: Cluster, nodes: tuple[str, ...], inputs: RenderInputs
    ) -> list[RenderedFile]:
        """Where the provider moves the Reserved IP by API: the script and its root-only token.

        Without a token file (``inputs.failover_token_file`` None: an offline render the
        operator allowed) the token stays out of the manifest; a sync then leaves the token the
        nodes already hold untouched.
        """
        if inputs.reserved_ip_mode != "api" or cluster.reserved_ip is None or not nodes:
            return []
        script = _render(
            self.env,
            "keepalived/notify-master-digitalocean.sh.j2",
            variables.notify_master_vars(
                cluster, inputs.digitalocean_api_url, inputs.digitalocean_metadata_url
            ),
        )
        files = [
            RenderedFile(
                "keepalived/notify-master.sh",
                variables.NOTIFY_MASTER_TARGET,
                script,
                NOTIFY_COMPONENT,
                nodes,
                mode="0700",
                validate=variables.NOTIFY_MASTER_VALIDATE,
            )
        ]
        if inputs.failover_token_file is not None:
            files.append(
                RenderedFile(
                    "secrets/digitalocean-token",
                    variables.DIGITALOCEAN_TOKEN_TARGET,
                    inputs.failover_token_file,
                    NOTIFY_COMPONENT,
                    nodes,
                    mode="0600",
                )
            )
        return files

    def _service_files(self, cluster: Cluster, nodes: tuple[str, ...]) -> list[RenderedFile]:
        files = []
        for name, service in sorted(cluster.services.items()):
            source = f"compose of service {name!r}"
            document = parse_compose(service.compose, source)
            content = node_compose(
                document,
                service.main_service,
                service.internal_port,
                service.container_port,
                source,
            )
            files.append(
                RenderedFile(
                    f"services/{name}/docker-compose.yml",
                    f"{SERVICES_ROOT}/{name}/docker-compose.yml",
                    content.encode(),
                    f"service:{name}",
                    nodes,
                    # Root only: a compose file may carry credentials in its environment.
                    mode="0600",
                )
            )
        return files

    def components(self, cluster: Cluster) -> dict[str, dict[str, Any]]:
        """How each component takes a change: its unit, action and place in the reload order.

        The firewall reloads first: a joining node is let in before HAProxy routes to it or
        keepalived lists it as a peer. A forced sync (repair) restarts keepalived.
        """
        components: dict[str, dict[str, Any]] = {
            variables.FIREWALL_COMPONENT: {"action": "reload", "unit": variables.FIREWALL_UNIT},
            "caddy": {"action": "reload", "unit": "caddy"},
            "haproxy": {"action": "reload", "unit": "haproxy"},
            "keepalived": {"action": "reload", "force_action": "restart", "unit": "keepalived"},
        }
        for order, component in enumerate(components.values()):
            component["order"] = order
        for name, service in sorted(cluster.services.items()):
            components[f"service:{name}"] = {
                "action": "compose-up",
                "project": f"dynia-{name}",
                "directory": f"{SERVICES_ROOT}/{name}",
                "health_url": f"http://127.0.0.1:{service.internal_port}{service.health_path}",
            }
        return components

    def manifest(self, cluster: Cluster, files: list[RenderedFile]) -> dict[str, Any]:
        settings = cluster.settings
        return {
            "schema": MANIFEST_SCHEMA,
            "cluster": cluster.name,
            "files": [f.manifest_entry() for f in files],
            "components": self.components(cluster),
            "health": {"url": f"http://127.0.0.1:{settings.caddy_port}{settings.health_path}"},
            "drain": {
                "backend": variables.HAPROXY_BACKEND,
                "socket": variables.HAPROXY_ADMIN_SOCKET,
            },
        }

    def cluster_metadata(self, cluster: Cluster) -> dict[str, Any]:
        return {
            "cluster": cluster.name,
            "node_provider": cluster.node_provider,
            "dns_provider": cluster.dns_provider,
            "region": cluster.region,
            "size": cluster.size,
            "reserved_ip": cluster.reserved_ip.address if cluster.reserved_ip else None,
            "nodes": [
                {
                    "name": n.name,
                    "public_ip": n.public_ip,
                    "private_ip": n.private_ip,
                    "priority": n.priority,
                    "role": cluster.role_of(n.name),
                }
                for n in sorted(cluster.nodes.values(), key=lambda n: n.name)
            ],
            "services": [
                {
                    "name": s.name,
                    "internal_port": s.internal_port,
                    "health_path": s.health_path,
                    "domains": sorted(r.domain for r in cluster.routes.values() if r.service == n),
                }
                for n, s in sorted(cluster.services.items())
            ],
        }

    def ansible_project(self, cluster: Cluster, directory: Path) -> dict[str, bytes]:
        """The controller-side Ansible project: ansible.cfg, inventory, playbook wrappers."""
        project_dir = self.templates_dir / "ansible"
        if not project_dir.is_dir():
            return {}
        context = {
            "dynia_roles_path": str(self.roles_dir),
            "dynia_playbooks_path": str(shipped_dir("playbooks")),
            "dynia_inventory_plugins_path": str(shipped_dir("inventory_plugins")),
            "dynia_home": str(self.layout.root),
            "dynia_cluster": cluster.name,
            "dynia_state_file": str(self.layout.state_file),
            "dynia_deploy_config_dir": str(directory),
            "dynia_known_hosts": str(self.layout.known_hosts(cluster.name)),
            "dynia_private_key": str(self.layout.ssh_private_key(cluster.name)),
        }
        rendered = {}
        for template in sorted(project_dir.rglob("*.j2")):
            relative = template.relative_to(project_dir).with_suffix("")
            name = f"ansible/{template.relative_to(project_dir)}"
            rendered[str(relative)] = _render(self.env, name, context)
        return rendered

    def render(
        self, cluster: Cluster, directory: Path | None = None, *, inputs: RenderInputs
    ) -> RenderResult:
        """Write the folder from the state and the inputs the render operation chose."""
        target = directory or self.layout.deploy_config_dir(cluster.name)
        files = self.node_files(cluster, inputs)
        contents: dict[str, bytes] = {f.source: f.content for f in files}
        contents["metadata.json"] = _json_bytes(self.manifest(cluster, files))
        contents["cluster-metadata.json"] = _json_bytes(self.cluster_metadata(cluster))
        contents.update(self.ansible_project(cluster, target))
        contents[RENDER_MARKER] = MARKER_TEXT
        _write_swapped(target, contents, {f.source: f.mode for f in files})
        return RenderResult(directory=target, files=files)


def _write_swapped(target: Path, contents: dict[str, bytes], modes: dict[str, str]) -> None:
    """Write every file into a temporary sibling folder, then swap it in place of ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _recover_interrupted_swap(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.render-", dir=target.parent))
    try:
        for relative, content in sorted(contents.items()):
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            write_new_file(path, content, 0o600 if modes.get(relative) == "0600" else 0o644)
        staging.chmod(0o700)
        previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
        if target.exists():
            target.rename(previous)
        staging.rename(target)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _recover_interrupted_swap(target: Path) -> None:
    """Put the previous folder back if a render died between the two renames of a swap."""
    if target.exists():
        return
    leftovers = sorted(target.parent.glob(f".{target.name}.previous-*"), key=os.path.getmtime)
    if leftovers:
        leftovers[-1].rename(target)
