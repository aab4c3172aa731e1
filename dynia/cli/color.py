"""Whether Dynia colours what it prints: never under NO_COLOR, else only on a terminal.

Kept free of imports beyond the standard library: the entry point reads it before any command
module is loaded, and ``dynia --help`` must stay fast.
"""

from __future__ import annotations

import os


def color_choice() -> bool | None:
    """``False`` when NO_COLOR is set to any non-empty value (https://no-color.org), else ``None``.

    ``None`` leaves the choice to click, which colours a terminal and strips colour from pipes and
    files; the value is given to the root click context, so every ``click.echo``/``secho`` of a
    command follows it.
    """
    return False if os.environ.get("NO_COLOR") else None
