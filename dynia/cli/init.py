"""`dynia init`: lifecycle stage 1, the dynia home and its defaults."""

from __future__ import annotations

import click

from dynia.cli.context_obj import AppContext
from dynia.cli.output import store_of
from dynia.operations.config import save_defaults


@click.command("init")
@click.option("--node-provider", help="Default node provider: local, digitalocean.")
@click.option(
    "--image",
    help="Default node image for clusters on the default node provider: debian-12 or debian-13 "
    "(local), an image slug (digitalocean). Reset when the default node provider changes.",
)
@click.option("--dns-provider", help="Default DNS provider: local, cloudflare.")
@click.option("--region", help="Default region, e.g. fra1 on DigitalOcean.")
@click.option("--size", help="Default node size, e.g. s-1vcpu-2gb on DigitalOcean.")
@click.option(
    "--cert-issuer",
    type=click.Choice(["local", "cloudflare-origin"]),
    help="Default CA of cluster certificates: local, or cloudflare-origin (needs --proxied).",
)
@click.option(
    "--proxied/--no-proxied",
    default=None,
    help="Default for DNS records: proxied through Cloudflare's edge, or DNS only.",
)
@click.option(
    "--local-dns-zone",
    "zones",
    multiple=True,
    help="A zone the local DNS server serves (repeatable; default: test).",
)
@click.pass_obj
def init_command(
    app: AppContext,
    node_provider: str | None,
    image: str | None,
    dns_provider: str | None,
    region: str | None,
    size: str | None,
    cert_issuer: str | None,
    proxied: bool | None,
    zones: tuple[str, ...],
) -> None:
    """Create the dynia home (state, config) and record the defaults new clusters use.

    Safe to run again: only the options given change; everything else is kept.

    \b
    Example:
      dynia init
      dynia init --node-provider digitalocean --dns-provider cloudflare --region fra1
      dynia init --image debian-13
      dynia init --local-dns-zone shop.test
      dynia init --dns-provider cloudflare --cert-issuer cloudflare-origin --proxied
    """
    given: dict[str, str | bool | None] = {
        "node_provider": node_provider,
        "dns_provider": dns_provider,
        "region": region,
    }
    given.update(size=size, cert_issuer=cert_issuer, dns_proxied=proxied, image=image)
    updates = {key: value for key, value in given.items() if value is not None}
    defaults = save_defaults(app.layout, store_of(app), updates, list(zones))
    click.echo(f"Dynia home: {app.home}")
    click.echo(
        f"Defaults: node provider {defaults.node_provider}, DNS provider {defaults.dns_provider}, "
        f"region {defaults.region}, size {defaults.size}, certificates from the "
        f"{defaults.cert_issuer} CA, records {'proxied' if defaults.dns_proxied else 'DNS only'}, "
        f"node image {defaults.image or 'the provider default'}"
    )
