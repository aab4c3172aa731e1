"""`dynia render`: state -> deploy-config/<cluster>/, validated by the real programs."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dynia.paths import HomeLayout
from dynia.render.renderer import Renderer, RenderResult
from dynia.render.validate import ValidationOutcome, validate_deploy_config
from dynia.state.models import Cluster


@dataclass
class RenderReport:
    result: RenderResult
    validations: list[ValidationOutcome]


def render_cluster(
    layout: HomeLayout, cluster: Cluster, output: Path | None = None, validate: bool = True
) -> RenderReport:
    """Render and validate; a failed validation leaves the previous artifact in place."""
    renderer = Renderer(layout)
    target = output or layout.deploy_config_dir(cluster.name)
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
