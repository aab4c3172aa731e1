"""`dynia route bind | unbind`."""

from __future__ import annotations

import click

from dynia.cli.complete import domain_names, service_names
from dynia.cli.context_obj import AppContext
from dynia.cli.output import warn
from dynia.operations.deploy import bind_route, unbind_route


@click.group("route")
def route_group() -> None:
    """Bind or unbind a domain to a service, DNS record included.

    \b
    Example:
      dynia route bind --domain shop.example.com --service web
      dynia route bind --domain shop.example.com --service web --no-https-only
      dynia route unbind --domain shop.example.com
    """


@route_group.command("bind")
@click.option("--domain", required=True, help="Fully qualified domain to route.")
@click.option(
    "--service",
    required=True,
    help="Service that receives the traffic.",
    shell_complete=service_names,
)
@click.option(
    "--https-only/--no-https-only",
    default=None,
    help="Redirect plain HTTP to HTTPS (308) and send Strict-Transport-Security "
    "(max-age=63072000). Default: on when clients trust the cluster's certificate (Cloudflare "
    "Origin CA), off with Dynia's local CA; a bound domain keeps its setting unless given.",
)
@click.pass_obj
def bind_command(app: AppContext, domain: str, service: str, https_only: bool | None) -> None:
    """Route DOMAIN to SERVICE: render, sync, create the DNS record, verify.

    Binding a bound domain again changes its --https-only setting.

    Example: dynia route bind --domain shop.example.com --service web
    """
    warnings = bind_route(app.run_context, domain, service, https_only=https_only)
    for message in warnings:
        warn(message)
    click.echo(f"Bound {domain} -> {service}.")


@route_group.command("unbind")
@click.option(
    "--domain", required=True, help="Domain to stop routing.", shell_complete=domain_names
)
@click.pass_obj
def unbind_command(app: AppContext, domain: str) -> None:
    """Delete DOMAIN's DNS record, then remove its route from every node.

    Example: dynia route unbind --domain shop.example.com
    """
    unbind_route(app.run_context, domain)
    click.echo(f"Unbound {domain}.")
