"""Services: one lifecycle step each, the only layer that decides."""

from collections.abc import Callable

# How a service reports progress: one line at a time, printed by the CLI.
Progress = Callable[[str], None]
