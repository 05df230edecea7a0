"""Delay schedules: exact values where promised, bounds and caps as properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from naq_resilience.policies.delays import DelaySchedule, fibonacci

bases = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
caps = st.none() | st.floats(min_value=0.0, max_value=1e5, allow_nan=False)
retry_numbers = st.integers(min_value=1, max_value=2000)
unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
strategies = st.sampled_from(["fixed", "linear", "exponential", "fibonacci"])


def test_exact_values() -> None:
    def first(strategy: str, n: int = 5) -> list[float]:
        schedule = DelaySchedule.build(2.0, strategy, None, None)
        return [schedule.delay(i) for i in range(1, n + 1)]

    assert first("fixed") == [2, 2, 2, 2, 2]
    assert first("linear") == [2, 4, 6, 8, 10]
    assert first("exponential") == [2, 4, 8, 16, 32]
    assert first("fibonacci") == [2, 4, 6, 10, 16]
    assert [fibonacci(n) for n in range(1, 8)] == [1, 2, 3, 5, 8, 13, 21]


def test_explicit_list_in_either_argument_repeats_last() -> None:
    for schedule in (
        DelaySchedule.build([1, 5, 30], "exponential", None, None),
        DelaySchedule.build(1.0, [1, 5, 30], None, None),
    ):
        assert [schedule.delay(n) for n in range(1, 6)] == [1, 5, 30, 30, 30]
        assert schedule.strategy == "explicit"


def test_cap_applies() -> None:
    schedule = DelaySchedule.build(1.0, "exponential", 10, None)
    assert [schedule.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


@given(bases, caps, strategies, retry_numbers)
def test_base_delay_is_finite_non_negative_and_capped(
    base: float, cap: float | None, strategy: str, n: int
) -> None:
    delay = DelaySchedule.build(base, strategy, cap, None).base_delay(n)
    assert delay >= 0
    assert math.isfinite(delay)
    if cap is not None:
        assert delay <= cap


@given(bases, caps, strategies, st.integers(min_value=1, max_value=500))
def test_growing_strategies_are_monotone(
    base: float, cap: float | None, strategy: str, n: int
) -> None:
    schedule = DelaySchedule.build(base, strategy, cap, None)
    assert schedule.base_delay(n) <= schedule.base_delay(n + 1)


@given(bases, caps, strategies, retry_numbers, unit)
def test_full_jitter_within_zero_and_base(
    base: float, cap: float | None, strategy: str, n: int, r: float
) -> None:
    schedule = DelaySchedule.build(base, strategy, cap, "full")
    assert 0.0 <= schedule.delay(n, rand=lambda: r) <= schedule.base_delay(n)


@given(bases, caps, strategies, retry_numbers, unit)
def test_equal_jitter_within_half_and_base(
    base: float, cap: float | None, strategy: str, n: int, r: float
) -> None:
    schedule = DelaySchedule.build(base, strategy, cap, "equal")
    full = schedule.base_delay(n)
    assert full / 2 <= schedule.delay(n, rand=lambda: r) <= full


@given(bases, caps, retry_numbers, st.floats(min_value=0, max_value=1e6), unit)
def test_decorrelated_jitter_between_base_and_three_times_previous(
    base: float, cap: float | None, n: int, previous: float, r: float
) -> None:
    schedule = DelaySchedule.build(base, "exponential", cap, "decorrelated")
    low = schedule.base_delay(1)
    delay = schedule.delay(n, previous=previous, rand=lambda: r)
    assert delay >= low
    assert delay <= max(low, 3 * previous) + 1e-9
    if cap is not None:
        assert delay <= cap


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((-1, "fixed", None, None), ValueError, "retry_delay"),
        ((float("nan"), "fixed", None, None), ValueError, "finite"),
        (("1", "fixed", None, None), TypeError, "number of seconds"),
        ((True, "fixed", None, None), TypeError, "number of seconds"),
        ((1, "quadratic", None, None), ValueError, "exponential"),
        ((1, "fixed", -5, None), ValueError, "max_delay"),
        ((1, "fixed", None, "gaussian"), ValueError, "decorrelated"),
        (([], "fixed", None, None), ValueError, "at least one delay"),
        (([1, -2], "fixed", None, None), ValueError, "each delay"),
    ],
)
def test_bad_arguments_name_the_fix(
    args: tuple[object, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        DelaySchedule.build(*args)  # type: ignore[arg-type]
