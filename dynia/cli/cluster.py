"""`dynia cluster create|list|show|delete` and `dynia cluster node add|remove|activate`."""

from __future__ import annotations

import click

from dynia.cli.complete import cluster_names, node_names
from dynia.cli.context_obj import AppContext
from dynia.cli.output import JSON_OPTION_HELP, emit_json, store_of, warn
from dynia.operations import cluster_delete, cluster_nodes
from dynia.operations.cluster_create import CreateRequest, create_cluster
from dynia.operations.clusters import (
    cluster_details,
    cluster_summary,
    node_health,
    selected_cluster,
)
from dynia.operations.config import load_defaults
from dynia.operations.infra import MAX_NODES


@click.group("cluster")
def cluster_group() -> None:
    """Create, list, show and delete clusters; add, remove and activate nodes.

    \b
    Example:
      dynia cluster create --name prod --nodes 3
      dynia cluster show
      dynia cluster node activate misty-owl
    """


@cluster_group.command("create")
@click.option(
    "--name", required=True, help="Cluster name: 2-32 of a-z, 0-9 and '-', starting with a letter."
)
@click.option(
    "--nodes",
    type=int,
    default=3,
    show_default=True,
    help=f"How many nodes, 1 to {MAX_NODES} (keepalived gives each its own VRRP priority).",
)
@click.option("--region", help="Provider region (default from config; 'local' for local).")
@click.option("--size", help="Node size, e.g. s-1vcpu-1gb on DigitalOcean.")
@click.option("--node-provider", help="local or digitalocean (default from config: local).")
@click.option(
    "--image",
    help="Node image, recorded for the cluster (nodes added later boot it too). local: "
    "debian-12 or debian-13 (built on first use); digitalocean: an image slug. Default from "
    "config, else debian-12 (local) / debian-13-x64 (digitalocean).",
)
@click.option("--dns-provider", help="local or cloudflare (default from config: local).")
@click.option(
    "--cert-issuer",
    type=click.Choice(["local", "cloudflare-origin"]),
    help="CA of the cluster certificate: local, or cloudflare-origin (Cloudflare's Origin CA; "
    "needs --dns-provider cloudflare and --proxied). Default from config: local.",
)
@click.option(
    "--proxied/--no-proxied",
    default=None,
    help="Proxy the cluster's DNS records through Cloudflare's edge (default from config: no).",
)
@click.option(
    "--allow-main-token-on-nodes",
    is_flag=True,
    help="DigitalOcean: without DIGITALOCEAN_FAILOVER_TOKEN, put the main DIGITALOCEAN_TOKEN on "
    "the nodes for keepalived's failover (remembered for the cluster). Not recommended.",
)
@click.option(
    "--plan-only", is_flag=True, help="Only record the planned cluster; provision nothing yet."
)
@click.pass_obj
def create_command(
    app: AppContext,
    name: str,
    nodes: int,
    region: str | None,
    size: str | None,
    node_provider: str | None,
    image: str | None,
    dns_provider: str | None,
    cert_issuer: str | None,
    proxied: bool | None,
    allow_main_token_on_nodes: bool,
    plan_only: bool,
) -> None:
    """Provision nodes and the infra layer (HAProxy, Caddy, keepalived); no app, no DNS yet.

    Creates the nodes, allocates the Reserved IP, renders and rolls out the infra configs,
    puts the Reserved IP on the MASTER and makes the cluster current. Interrupted at any point,
    the same command resumes from the last completed step without duplicating anything.

    \b
    Example:
      dynia cluster create --name demo --nodes 3
      dynia cluster create --name trixie --image debian-13
      dynia cluster create --name prod --nodes 3 --node-provider digitalocean \\
          --dns-provider cloudflare --region fra1 --size s-1vcpu-2gb
      dynia cluster create --name edge --node-provider digitalocean \\
          --dns-provider cloudflare --proxied --cert-issuer cloudflare-origin
    """
    defaults = load_defaults(app.layout)
    chosen_provider = node_provider or defaults.node_provider
    request = CreateRequest(
        name=name,
        nodes=nodes,
        # `--region ""` is bad input to refuse, not a request for the default.
        region=defaults.region if region is None else region,
        size=defaults.size if size is None else size,
        node_provider=chosen_provider,
        image=image if image is not None else defaults.image_for(chosen_provider),
        dns_provider=dns_provider or defaults.dns_provider,
        cert_issuer=cert_issuer or defaults.cert_issuer,
        dns_proxied=defaults.dns_proxied if proxied is None else proxied,
        plan_only=plan_only,
        allow_main_token_on_nodes=allow_main_token_on_nodes,
    )
    create_cluster(app.run_context, request)


@cluster_group.command("list")
@click.option("--json", "as_json", is_flag=True, help=JSON_OPTION_HELP)
@click.pass_obj
def list_command(app: AppContext, as_json: bool) -> None:
    """List clusters in state.

    JSON: {"clusters": [{"name", "current", "status", "node_provider", "dns_provider", "image",
    "region", "nodes", "services", "reserved_ip"}]}
    """
    state = store_of(app).load()
    rows = [cluster_summary(c, state.current_cluster) for _, c in sorted(state.clusters.items())]
    if as_json:
        emit_json({"clusters": rows})
        return
    if not rows:
        click.echo("No clusters. Create one with `dynia cluster create --name NAME`.")
    for row in rows:
        marker = "*" if row["current"] else " "
        click.echo(
            f"{marker} {row['name']:<20} {row['status']:<12} {row['nodes']} node(s)  "
            f"{row['reserved_ip'] or '-':<16} {row['node_provider']}/{row['dns_provider']}"
        )


@cluster_group.command("show")
@click.option("--health", "check_health", is_flag=True, help="Also check every node live over SSH.")
@click.option("--json", "as_json", is_flag=True, help=JSON_OPTION_HELP)
@click.pass_obj
def show_command(app: AppContext, check_health: bool, as_json: bool) -> None:
    """Show a cluster: nodes and roles, Reserved IP, services and routes.

    With --health each node is checked live (HAProxy, Caddy and keepalived running, the cluster
    and service health paths answering); nothing is changed.

    \b
    JSON: the `cluster list` fields plus "size", "completed_steps", "nodes" (list of name,
    role, priority, status, public_ip, private_ip, provider_id; with --health also "healthy",
    "problem" and "holds_reserved_ip": keepalived moves the address on a failure, so after one
    the holder can differ from the MASTER state names), "services" (name, internal_port,
    health_path, images) and "routes" (domain, service, dns, https_only). A node's status is
    provisioning, joining (`node add` not finished: run it again), ready or out-of-sync (run
    `dynia repair`).

    Example: dynia cluster show --health
    """
    state = store_of(app).load()
    cluster = selected_cluster(state, app.cluster_option)
    details = cluster_details(cluster, state.current_cluster)
    if check_health:
        health = node_health(app.run_context.without_live_progress(), cluster)
        for node in details["nodes"]:
            node.update(health[node["name"]])
    if as_json:
        emit_json(details)
        return
    click.echo(f"Cluster {details['name']} ({details['status']})")
    click.echo(f"  providers:   {details['node_provider']} / {details['dns_provider']}")
    click.echo(f"  node image:  {details['image'] or '-'}")
    click.echo(f"  reserved IP: {details['reserved_ip'] or '-'}")
    click.echo("  nodes:")
    for node in details["nodes"]:
        live = ""
        if "healthy" in node:
            live = "  healthy" if node["healthy"] else f"  UNHEALTHY: {node['problem']}"
            live += "  (holds the Reserved IP)" if node["holds_reserved_ip"] else ""
        click.echo(
            f"    {node['name']:<16} {node['role']:<7} priority {node['priority']:<4} "
            f"{node['status']:<13} {node['private_ip'] or '-'}{live}"
        )
    click.echo("  services:")
    for service in details["services"]:
        click.echo(f"    {service['name']:<16} port {service['internal_port']}")
    click.echo("  routes:")
    for route in details["routes"]:
        https = "  (HTTPS only: redirect + HSTS)" if route["https_only"] else ""
        click.echo(f"    {route['domain']} -> {route['service']}{https}")


@cluster_group.command("delete")
@click.option(
    "--name",
    help="Cluster to delete (default: --cluster or the current cluster).",
    shell_complete=cluster_names,
)
@click.option("--purge-volumes", is_flag=True, help="Also delete the services' Docker volumes.")
@click.option(
    "--keep-dns",
    is_flag=True,
    help="Leave the DNS records in place (e.g. their zone or the DNS token is gone) and delete "
    "the rest; each record left is named with its id, to delete by hand.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def delete_command(
    app: AppContext, name: str | None, purge_volumes: bool, keep_dns: bool, yes: bool
) -> None:
    """Tear a cluster down: DNS records, services, Reserved IP, nodes, state entry.

    \b
    Example:
      dynia cluster delete --name demo --yes
      dynia cluster delete --name demo --keep-dns --yes   # the DNS provider cannot answer
    """
    store = store_of(app)
    cluster = selected_cluster(store.load(), name or app.cluster_option)
    if not yes:
        nodes, records = f"{len(cluster.nodes)} node(s)", f"{len(cluster.routes)} DNS record(s)"
        question = (
            f"Delete cluster {cluster.name} with {nodes} and its Reserved IP, leaving its "
            f"{records} in place?"
            if keep_dns
            else f"Delete cluster {cluster.name} with {nodes}, {records} and its Reserved IP?"
        )
        # "n" is an answer, not an interruption: exit 1, not Ctrl-C's 130 (which the prompt
        # itself still raises as click's Abort).
        if not click.confirm(question):
            click.echo("Nothing deleted.", err=True)
            raise SystemExit(1)
    kept = cluster_delete.delete_cluster(app.run_context, cluster.name, purge_volumes, keep_dns)
    click.echo(f"Deleted cluster {cluster.name}.")
    for line in kept:
        warn(f"DNS record left in place: {line}")


@cluster_group.group("node")
def node_group() -> None:
    """Grow, shrink or steer the cluster's nodes."""


@node_group.command("add")
@click.pass_obj
def node_add_command(app: AppContext) -> None:
    """Add one node: create it, render, and roll out so every peer knows it.

    Example: dynia cluster node add
    """
    node = cluster_nodes.add_node(app.run_context)
    click.echo(f"Added node {node.name} ({node.private_ip}).")


@node_group.command("remove")
@click.argument("node", shell_complete=node_names)
@click.pass_obj
def node_remove_command(app: AppContext, node: str) -> None:
    """Drain NODE, move the MASTER role away if it holds it, delete it.

    Example: dynia cluster node remove misty-owl
    """
    cluster_nodes.remove_node(app.run_context, node)
    click.echo(f"Removed node {node}.")


@node_group.command("activate")
@click.argument("node", shell_complete=node_names)
@click.pass_obj
def node_activate_command(app: AppContext, node: str) -> None:
    """Make NODE the MASTER: health-check it, raise its priority, verify the Reserved IP.

    Example: dynia cluster node activate quiet-fox
    """
    cluster_nodes.activate_node(app.run_context, node)
    click.echo(f"{node} is MASTER and holds the Reserved IP, which answers.")
