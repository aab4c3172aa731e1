"""Operations: one lifecycle step each, the only layer that decides."""

from collections.abc import Callable

# How an operation reports progress: one line at a time, printed by the CLI.
Progress = Callable[[str], None]
