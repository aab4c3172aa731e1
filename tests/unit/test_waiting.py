"""wait_until: the one polling loop of the package."""

from __future__ import annotations

import time

import pytest

from dynia.errors import DyniaError
from dynia.waiting import WaitTimeout, wait_until


def test_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "ready", "later"])
    assert wait_until(lambda: next(answers), timeout=5, interval=0.001, what="x") == "ready"


def test_a_condition_that_holds_at_once_is_called_once_and_never_sleeps() -> None:
    calls, pauses = [], []

    def condition() -> bool:
        calls.append(1)
        return True

    assert wait_until(condition, timeout=0, interval=1, what="x", sleep=pauses.append) is True
    assert calls == [1] and pauses == []


def test_times_out_with_a_message_naming_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        wait_until(lambda: False, timeout=0.05, interval=0.005, what="the moon to rise")
    assert 0.05 <= time.monotonic() - started < 1
    assert str(caught.value) == "timed out after 0.05s waiting for the moon to rise"
    assert caught.value.what == "the moon to rise" and caught.value.timeout == 0.05
    assert isinstance(caught.value, DyniaError) and isinstance(caught.value, TimeoutError)


def test_checks_once_even_with_no_time_left() -> None:
    calls = []
    with pytest.raises(WaitTimeout):
        wait_until(lambda: calls.append(1), timeout=0, interval=0.001, what="x")
    assert calls == [1]


def test_pauses_for_the_interval_between_calls() -> None:
    pauses: list[float] = []
    answers = iter([False, False, True])
    wait_until(lambda: next(answers), timeout=5, interval=0.25, what="x", sleep=pauses.append)
    assert pauses == [0.25, 0.25]


def test_an_interval_function_gives_each_pause() -> None:
    pauses: list[float] = []
    steps = iter([0.1, 0.2])
    answers = iter([False, False, True])

    def interval() -> float:
        return next(steps)

    wait_until(lambda: next(answers), timeout=5, interval=interval, what="x", sleep=pauses.append)
    assert pauses == [0.1, 0.2]


def test_retry_on_exceptions_count_as_not_yet() -> None:
    answers = iter([ConnectionError("down"), ConnectionError("down"), "up"])

    def condition() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    got = wait_until(condition, timeout=5, interval=0.001, what="x", retry_on=(ConnectionError,))
    assert got == "up"


def test_the_last_retry_on_exception_is_raised_when_time_runs_out() -> None:
    count = 0

    def condition() -> None:
        nonlocal count
        count += 1
        raise ConnectionError(f"down {count}")

    with pytest.raises(ConnectionError) as caught:
        wait_until(condition, timeout=0.02, interval=0.001, what="x", retry_on=(ConnectionError,))
    assert str(caught.value) == f"down {count}" and count > 1


def test_a_timeout_after_a_later_falsy_answer_is_a_wait_timeout() -> None:
    answers = iter([ConnectionError("down")] + [None] * 1000)

    def condition() -> None:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer

    with pytest.raises(WaitTimeout):
        wait_until(condition, timeout=0.02, interval=0.001, what="x", retry_on=(ConnectionError,))


def test_other_exceptions_end_the_wait_at_once() -> None:
    calls = []

    def condition() -> None:
        calls.append(1)
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        wait_until(condition, timeout=5, interval=0.001, what="x", retry_on=(ConnectionError,))
    assert calls == [1]
