"""The runner boundary: what operations need from whatever runs a playbook.

``dynia.runner.run_playbook`` is the real one (ansible-runner against the nodes). Operations never
import it: they call the runner their ``RunContext`` carries, so a test can put a double of this
boundary in its place and the rest of Dynia runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dynia.runner.events import PlaybookResult, ProgressEvent


class PlaybookRunner(Protocol):
    def __call__(
        self,
        project_dir: Path,
        playbook: str,
        *,
        extra_vars: dict[str, Any] | None = None,
        limit: str | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        check: bool = False,
        raise_on_failure: bool = True,
        hosts: Sequence[str] | None = None,
    ) -> PlaybookResult:
        """Run ``playbook`` of the project in ``project_dir``; RunnerError on failure when
        ``raise_on_failure``, with the PlaybookResult as the error's ``result``."""
        ...
