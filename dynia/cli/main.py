"""The `dynia` entry point: global options and lazily loaded command modules.

Each top-level command lives in ``dynia/cli/<command>.py`` and is imported only when invoked, so
``dynia --help`` stays fast (ansible, pydo and cloudflare load only in the commands that use them).
"""

from __future__ import annotations

import difflib
import importlib
import shlex
import sys

import click

from dynia import __version__
from dynia.cli.color import color_choice
from dynia.cli.complete import cluster_names
from dynia.cli.context_obj import AppContext
from dynia.errors import DyniaError

# command name -> (module under dynia.cli, attribute, one-line help shown by `dynia --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("init", "init_command", "Create the dynia home and record provider defaults."),
    "context": ("context", "context_group", "Show, set or clear the current cluster."),
    "cluster": (
        "cluster",
        "cluster_group",
        "Create, list, show and delete clusters; manage nodes.",
    ),
    "render": ("render", "render_command", "Render deploy-config/ from state and templates."),
    "sync": ("sync", "sync_command", "Roll deploy-config/ out to the nodes, one at a time."),
    "drift-check": ("drift_check", "drift_check_command", "Compare nodes with deploy-config/."),
    "deploy": ("deploy", "deploy_command", "Create or update a service; optionally bind a domain."),
    "route": ("route", "route_group", "Bind or unbind a domain to a service."),
    "repair": ("repair", "repair_command", "Report or fix drift and broken HA."),
    "cert": ("cert", "cert_group", "Manage the cluster's TLS certificate."),
    "local": ("local", "local_group", "Set up and check the local provider (Docker engine, DNS)."),
}


# Options of `dynia` itself: given after a command, click reports them as unknown to it.
GLOBAL_OPTIONS = ("--cluster", "--home")
INTERRUPTED = "Interrupted. State keeps every completed step; re-run the command to resume."


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute, _ = entry
        try:
            module = importlib.import_module(f"dynia.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dynia.cli.{module_name}":
                return None
            raise
        return getattr(module, attribute)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            # click looks for close matches in self.commands, which stays empty here (commands
            # load on first use): suggest from the command table instead.
            typed = args[0] if args else ""
            close = difflib.get_close_matches(typed, COMMANDS)
            if close and typed not in COMMANDS and "Did you mean" not in exc.message:
                exc.message += f" Did you mean {' or '.join(repr(c) for c in close)}?"
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="dynia")
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="DYNIA_HOME",
    help="Dynia home holding state and keys (default ~/.dynia; env DYNIA_HOME).",
)
@click.option(
    "--cluster",
    "cluster_name",
    metavar="NAME",
    help="Cluster to act on; overrides the current context.",
    shell_complete=cluster_names,
)
@click.pass_context
def cli(ctx: click.Context, home: str | None, cluster_name: str | None) -> None:
    """Dynia runs a handful of servers as one highly available cluster.

    It provisions nodes, puts one Reserved IP in front of them with automatic failover,
    routes domains to Docker Compose services and rolls changes out one node at a time.

    \b
    Example, on one machine with the local provider:
      dynia local setup
      dynia init
      dynia cluster create --name demo --nodes 3
      dynia deploy --name web --compose web.yml --domain web.demo.test
    """
    if ctx.get_parameter_source("home") is click.core.ParameterSource.ENVIRONMENT:
        home = None  # resolve_home reads DYNIA_HOME itself, and names it when it refuses it
    ctx.obj = AppContext.from_options(home=home, cluster_name=cluster_name)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and turn every DyniaError into its message and exit code.

    Returns the exit code of a command that ends by ``ctx.exit(code)`` (0 otherwise): the console
    script and ``python -m dynia.cli`` pass it to ``sys.exit``.
    """
    color = color_choice()
    try:
        result = cli.main(args=argv, prog_name="dynia", standalone_mode=False, color=color)
        return result if isinstance(result, int) else 0
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C into Abort; say that state kept the completed steps.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            click.echo(INTERRUPTED, err=True)
        else:
            click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.NoSuchOption as exc:
        _show_no_such_option(exc, sys.argv[1:] if argv is None else argv)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except DyniaError as exc:
        # Printed after the command's context is gone, so the colour choice is passed again.
        click.secho(f"Error: {exc.message}", fg="red", err=True, color=color)
        if exc.hint:
            click.echo(f"  hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)


def _show_no_such_option(exc: click.NoSuchOption, argv: list[str]) -> None:
    """click's message; for `--cluster`/`--home` given after a command, say they go before it."""
    if exc.option_name not in GLOBAL_OPTIONS or exc.ctx is None or exc.ctx.parent is None:
        exc.show()
        return
    # Without click's guess ("Did you mean '--help'?"), which the hint would contradict.
    click.NoSuchOption(exc.option_name, ctx=exc.ctx).show()
    option = exc.option_name
    value = _value_of(option, argv) or ("NAME" if option == "--cluster" else "PATH")
    command = exc.ctx.command_path.split(" ", 1)[1]  # "dynia cluster show" -> "cluster show"
    click.echo(
        f"  hint: {option} is a global option: give it before the command, e.g. "
        f"`dynia {option} {shlex.quote(value)} {command} ...`",
        err=True,
    )


def _value_of(option: str, argv: list[str]) -> str | None:
    """The value given to ``option`` in ``argv`` (``--opt VALUE`` or ``--opt=VALUE``)."""
    for index, word in enumerate(argv):
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
        if word == option and index + 1 < len(argv):
            return argv[index + 1]
    return None
