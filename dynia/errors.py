"""Errors every layer raises; the CLI maps them to messages and exit codes.

Each error carries what went wrong and, where one exists, what the operator can do about it.
Nothing below the CLI prints or exits: it raises one of these instead.
"""

from __future__ import annotations

from collections.abc import Iterable


class DyniaError(Exception):
    """Base of every error Dynia reports to the operator."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(DyniaError):
    """Bad input from the operator: a name, a flag, a file."""

    exit_code = 2


def check_choice(kind: str, name: str, choices: Iterable[str]) -> str:
    """``name`` if it is one of ``choices``, else a UsageError naming the kind and the choices."""
    known = sorted(choices)
    if name not in known:
        raise UsageError(f"unknown {kind} {name!r}", hint=f"choose one of: {', '.join(known)}")
    return name


class NotFoundError(UsageError):
    """A cluster, node, service or route that state does not have."""


class StateError(DyniaError):
    """The state file is unreadable, corrupt or of an unknown schema."""

    exit_code = 3


class LockTimeoutError(DyniaError):
    """Another dynia command holds the state lock."""

    exit_code = 4


class ProviderError(DyniaError):
    """A node or DNS provider refused or failed a request."""

    exit_code = 5


class RenderError(DyniaError):
    """A template could not be rendered or a rendered config failed validation."""

    exit_code = 6


class RunnerError(DyniaError):
    """A playbook run failed: unreachable nodes, failed tasks, failed health checks."""

    exit_code = 7


class DriftError(DyniaError):
    """Nodes differ from deploy-config."""

    exit_code = 8


class LeftBehindError(DriftError):
    """A roll went on without nodes that did not answer; they keep their previous files."""


class VerifyError(DyniaError):
    """End-to-end verification (DNS, TLS, health path) failed."""

    exit_code = 9
