"""`dynia local doctor` and `dynia local setup`: the machine the local provider runs on."""

from __future__ import annotations

import click

from dynia.operations import local_setup


@click.group("local")
def local_group() -> None:
    """Set up and check the local provider (Docker engine, node image, DNS server).

    \b
    Example:
      dynia local setup
      dynia local doctor
    """


@local_group.command("doctor")
@click.option(
    "--image",
    "images",
    multiple=True,
    help="Node image to check: debian-12 (the default) or debian-13; repeatable.",
)
@click.pass_context
def doctor_command(ctx: click.Context, images: tuple[str, ...]) -> None:
    """Check the Docker engine, the node image, debootstrap and the DNS server."""
    checks = local_setup.doctor(images=images)
    for check in checks:
        mark = click.style("ok  ", fg="green") if check.ok else click.style("FAIL", fg="red")
        click.echo(f"{mark} {check.name}: {check.detail}")
        if check.fix and not check.ok:
            click.echo(f"     fix: {check.fix}")
    if not all(check.ok for check in checks):
        ctx.exit(1)


@local_group.command("setup")
@click.option("--no-image", is_flag=True, help="Do not build the node image.")
@click.option(
    "--image",
    "images",
    multiple=True,
    help="Node image to build: debian-12 (the default) or debian-13; repeatable.",
)
def setup_command(no_image: bool, images: tuple[str, ...]) -> None:
    """Install and start what the local provider needs (as root on Debian/Ubuntu).

    Safe to run again: what is already there is kept. An image not built here is built the first
    time a cluster asks for it.

    \b
    Example:
      dynia local setup --image debian-12 --image debian-13
    """
    local_setup.setup(progress=click.echo, build_image=not no_image, images=images)
