"""`dynia cert rotate`."""

from __future__ import annotations

import click

from dynia.cli.context_obj import AppContext
from dynia.operations import operate


@click.group("cert")
def cert_group() -> None:
    """Manage the cluster's TLS certificate (terminated by HAProxy)."""


@cert_group.command("rotate")
@click.pass_obj
def rotate_command(app: AppContext) -> None:
    """Issue a new cluster certificate and roll it out node by node.

    Example: dynia cert rotate
    """
    fingerprint = operate.rotate_certificate(app.run_context)
    click.echo(f"Rotated; new certificate sha256 {fingerprint}.")
