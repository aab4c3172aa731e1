"""`dynia render`: state -> deploy-config/<cluster>/, validated by the real programs."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dynia.errors import RenderError, UsageError
from dynia.paths import HomeLayout
from dynia.render.renderer import RENDER_MARKER, Renderer, RenderResult
from dynia.render.validate import ValidationOutcome, validate_deploy_config
from dynia.state.models import Cluster


@dataclass
class RenderReport:
    result: RenderResult
    validations: list[ValidationOutcome]


def render_cluster(
    layout: HomeLayout, cluster: Cluster, output: Path | None = None, validate: bool = True
) -> RenderReport:
    """Render and validate; a failed validation leaves the previous artifact in place.

    ``output`` (``render --output``) must be a folder a render may replace: see
    ``check_output_folder``. The default, deploy-config/<cluster>, always is.
    """
    target = (
        check_output_folder(layout, output) if output else layout.deploy_config_dir(cluster.name)
    )
    try:
        return _render_and_validate(layout, cluster, target, validate)
    except OSError as exc:  # a full disk, a read-only or pseudo file system (/proc)
        raise RenderError(
            f"cannot write the rendered files into {target}: {exc.strerror or exc}",
            hint=f"check free space and permissions in {target.parent}, or choose another "
            "folder with --output; the previous folder is unchanged",
        ) from exc


def _render_and_validate(
    layout: HomeLayout, cluster: Cluster, target: Path, validate: bool
) -> RenderReport:
    renderer = Renderer(layout)
    validations: list[ValidationOutcome] = []
    if validate:
        # Validate a scratch render first so a config the programs refuse never replaces
        # the artifact that sync, drift-check and operators read.
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.validate-", dir=target.parent))
        try:
            validations = validate_deploy_config(renderer.render(cluster, scratch).directory)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return RenderReport(renderer.render(cluster, target), validations)


def check_output_folder(layout: HomeLayout, output: Path) -> Path:
    """The absolute folder ``render --output`` may replace, or UsageError saying why not.

    A render swaps the whole folder, so whatever else it held is gone: only a new or empty
    folder, or one an earlier render wrote (it holds the marker file), is safe to give it.
    """
    try:
        target = output.expanduser().resolve()
        home = layout.root.expanduser().resolve()
        cwd = Path.cwd().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a vanished working folder
        raise _refuse(output, f"the path cannot be resolved ({exc})") from exc
    if target == home or home.is_relative_to(target):
        raise _refuse(target, f"it is or contains the dynia home {home} (state, keys, backups)")
    if target.is_relative_to(home) and not target.is_relative_to(home / "deploy-config"):
        raise _refuse(target, f"it is inside the dynia home {home}, outside deploy-config/")
    if cwd.is_relative_to(target):
        raise _refuse(target, "it is or contains the current folder")
    _check_replaceable(target)
    return target


def _check_replaceable(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise _refuse(target, "it is not a folder")
    try:
        empty = next(target.iterdir(), None) is None
    except OSError as exc:
        raise _refuse(target, f"it cannot be listed ({exc.strerror or exc})") from exc
    if not empty and not (target / RENDER_MARKER).is_file():
        raise _refuse(target, f"it holds files that no render wrote (no {RENDER_MARKER} in it)")


def _refuse(target: Path, reason: str) -> UsageError:
    return UsageError(
        f"refusing to render into {target}: {reason}; a render replaces the whole folder",
        hint="give --output a new or empty folder, or one an earlier `dynia render --output` "
        "wrote, e.g. --output /tmp/<cluster>-config",
    )
