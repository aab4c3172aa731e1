"""`dynia deploy`."""

from __future__ import annotations

from pathlib import Path

import click

from dynia.cli.batch import batch_option
from dynia.cli.complete import service_names
from dynia.cli.context_obj import AppContext
from dynia.cli.output import warn
from dynia.operations.deploy import DeployRequest, deploy_service
from dynia.operations.rollout import parse_batch


@click.command("deploy")
@click.option(
    "--name",
    required=True,
    help="Service name: 2-32 of a-z, 0-9 and '-', starting with a letter.",
    shell_complete=service_names,
)
@click.option(
    "--compose",
    "compose_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Docker Compose file of the service.",
)
@click.option("--domain", help="Bind this domain to the service (creates the DNS record).")
@click.option(
    "--health-path", default="/", show_default=True, help="Path that answers 2xx when healthy."
)
@click.option(
    "--port",
    "container_port",
    # A TCP port: 0 or 70000 is refused here, naming --port, not passed on as "no port given".
    type=click.IntRange(1, 65535),
    help="Port the service listens on inside "
    "its container (default: from the compose file's ports/expose).",
)
@batch_option
@click.pass_obj
def deploy_command(
    app: AppContext,
    name: str,
    compose_path: Path,
    domain: str | None,
    health_path: str,
    container_port: int | None,
    batch_text: str,
) -> None:
    """Create or update a service on every node, one node at a time; optionally bind a domain.

    Images that exist only on this machine are copied to the nodes that lack them. Each node
    is drained, updated and health-checked before the next; a failed check restores that node
    and stops the roll; --batch changes several nodes at once after a one-node canary. With
    --domain, the DNS record to the Reserved IP is created after the rollout and the route is
    verified end to end (DNS, TLS, health path).

    \b
    Example:
      dynia deploy --name web --compose web.yml --domain web.example.com --health-path /healthz
      dynia deploy --name web --compose web.yml --batch 25%
    """
    batch = parse_batch(batch_text)
    request = DeployRequest(name, compose_path, domain, health_path, container_port, batch)
    outcome = deploy_service(app.run_context, request)
    for message in outcome.warnings:
        warn(message)
    click.echo(f"Deployed {outcome.service}.")
