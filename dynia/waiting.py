"""One way to wait for something: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from dynia.errors import DyniaError

T = TypeVar("T")


class WaitTimeout(DyniaError, TimeoutError):
    """The condition did not hold in time. Callers usually re-raise it as their own error."""

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:g}s waiting for {what}")
        self.what = what
        self.timeout = timeout


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    interval: float | Callable[[], float],
    what: str,
    retry_on: tuple[type[BaseException], ...] = (),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    It is called at least once, and again after each pause until the deadline has passed.
    ``interval`` is the pause between calls, or a function giving each pause (e.g. jitter).
    An exception of a ``retry_on`` type counts as "not yet"; when time runs out after one, that
    exception is re-raised. Any other exception ends the wait at once. A timeout raises
    :class:`WaitTimeout`.
    """
    deadline = time.monotonic() + timeout
    while True:
        failure: BaseException | None = None
        try:
            result = condition()
        except retry_on as exc:
            failure = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            if failure is not None:
                raise failure
            raise WaitTimeout(what, timeout)
        sleep(interval() if callable(interval) else interval)
