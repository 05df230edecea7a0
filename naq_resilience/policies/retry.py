"""`@retry`: try again after a delay when a failure is retryable.

The success path is one `try` around the next stage: no clock read (unless a deadline
needs one), no allocation. Everything else (classification, delay, history, hooks)
lives in the failure loop, which runs outside the `except` block so that the error
finally raised keeps its own `__context__` instead of the first attempt's.

After the last attempt the original exception is re-raised, never a wrapper, carrying
its attempt history: `attempts_of(exc)` returns it, and a note on the exception says
how many attempts were made and why they stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from naq_resilience.policies.classify import (
    Classification,
    ExcTypes,
    classify,
    exception_types,
    report_critical,
)
from naq_resilience.policies.delays import DelaySchedule
from naq_resilience.policies.durations import Duration, seconds
from naq_resilience.policies.pipeline import (
    Args,
    AsyncRunner,
    Kwargs,
    Runner,
    Stage,
    apply_stage,
    qualified_name,
)

__all__ = [
    "Attempt",
    "RetryPolicy",
    "RetryState",
    "attempts_of",
    "is_testing",
    "retry",
    "set_testing",
]

P = ParamSpec("P")
R = TypeVar("R")

_ATTEMPTS = "__naq_attempts__"
_testing = False


def set_testing(enabled: bool = True) -> None:
    """Turn every retry delay off (attempts still happen), for test suites."""
    global _testing
    _testing = bool(enabled)


def is_testing() -> bool:
    return _testing


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed attempt: its number (1-based), what went wrong, and the wait after it."""

    number: int
    error: BaseException | None
    result: Any
    delay: float
    failed_at: float


@dataclass(frozen=True, slots=True)
class RetryState:
    """What `on_retry` and `on_giveup` callbacks receive."""

    function: str
    attempt: int
    error: BaseException | None
    result: Any
    delay: float
    history: tuple[Attempt, ...]


def attempts_of(exc: BaseException) -> tuple[Attempt, ...]:
    """The attempt history `@retry` attached to `exc` when it gave up (empty if none)."""
    history: tuple[Attempt, ...] = getattr(exc, _ATTEMPTS, ())
    return history


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int
    schedule: DelaySchedule
    retry_on: ExcTypes | None
    ignore_on: ExcTypes
    deadline: float | None
    retry_if_result: Callable[[Any], bool] | None
    on_retry: Callable[[RetryState], object] | None
    on_giveup: Callable[[RetryState], object] | None

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1


_GIVE_UP = -1.0


# Base delays precomputed per stage, up to this many retries; rarer ones are computed.
_PRECOMPUTED = 64
# One failed attempt while retrying: (number, error, result, delay, failed_at). Plain
# tuples, turned into `Attempt`s only when someone reads them: the retry loop runs
# often, the history is read rarely.
_Raw = tuple[int, BaseException | None, Any, float, float]


class RetryStage(Stage):
    policy: RetryPolicy

    def __init__(
        self,
        policy: RetryPolicy,
        sleep: Callable[[float], Any] | None,
        clock: Callable[[], float],
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        schedule = policy.schedule
        count = min(policy.max_retries, _PRECOMPUTED)
        self._bases = tuple(schedule.base_delay(n) for n in range(1, count + 1))

    def check(self, func: Callable[..., Any], is_async: bool) -> None:
        if self._sleep is not None and is_async != inspect.iscoroutinefunction(self._sleep):
            kind = "an async" if is_async else "a sync"
            raise TypeError(f"@retry(sleep=...) on {kind} function needs {kind} sleep callable")

    # ------------------------------------------------------------------ decisions
    def _next_delay(
        self,
        attempt: int,
        exc: BaseException | None,
        previous: float,
        started: float | None,
    ) -> tuple[float, str]:
        """The delay before the next attempt, or `_GIVE_UP` and the reason."""
        policy = self.policy
        if exc is not None:
            kind = classify(exc, policy.retry_on, policy.ignore_on)
            if kind is Classification.CRITICAL:
                report_critical(exc)
                return _GIVE_UP, "critical error"
            if kind is Classification.NON_RETRYABLE:
                return _GIVE_UP, "non-retryable error"
        if attempt > policy.max_retries:
            return _GIVE_UP, f"no retries left (max_retries={policy.max_retries})"
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after >= 0:
            delay = float(retry_after)
        else:
            bases = self._bases
            base = (
                bases[attempt - 1] if attempt <= len(bases) else policy.schedule.base_delay(attempt)
            )
            delay = policy.schedule.jittered(base, previous)
        deadline = policy.deadline
        past_deadline = (
            started is not None
            and deadline is not None
            and self._clock() - started + delay > deadline
        )
        if past_deadline:
            return _GIVE_UP, f"deadline of {deadline}s would pass"
        return delay, ""

    def _give_up(
        self,
        func: Callable[..., Any],
        attempt: int,
        exc: BaseException | None,
        result: Any,
        history: list[_Raw],
        reason: str,
    ) -> RetryState:
        history.append((attempt, exc, result, 0.0, time.time()))
        frozen = _freeze(history)
        if exc is not None:
            with contextlib.suppress(AttributeError):
                setattr(exc, _ATTEMPTS, frozen)
            exc.add_note(
                f"naq-resilience @retry on {qualified_name(func)}: gave up after attempt "
                f"{attempt} of {self.policy.max_attempts}: {reason}"
            )
        return RetryState(qualified_name(func), attempt, exc, result, 0.0, frozen)

    def _retrying(
        self,
        func: Callable[..., Any],
        attempt: int,
        exc: BaseException | None,
        result: Any,
        delay: float,
        history: list[_Raw],
    ) -> RetryState | None:
        history.append((attempt, exc, result, delay, time.time()))
        if self.policy.on_retry is None:
            return None
        return RetryState(qualified_name(func), attempt, exc, result, delay, _freeze(history))

    # ------------------------------------------------------------------ sync
    def build_sync(self, inner: Runner, func: Callable[..., Any]) -> Runner:
        policy = self.policy
        check_result = policy.retry_if_result
        clock = self._clock
        needs_start = policy.deadline is not None
        sleep = time.sleep if self._sleep is None else self._sleep

        def failing(
            args: Args,
            kwargs: Kwargs,
            exc: BaseException | None,
            result: Any,
            started: float | None,
        ) -> Any:
            history: list[_Raw] = []
            attempt, previous = 1, 0.0
            while True:
                delay, reason = self._next_delay(attempt, exc, previous, started)
                if delay == _GIVE_UP:
                    state = self._give_up(func, attempt, exc, result, history, reason)
                    if policy.on_giveup is not None:
                        policy.on_giveup(state)
                    if exc is not None:
                        raise exc
                    return result
                retrying = self._retrying(func, attempt, exc, result, delay, history)
                if retrying is not None and policy.on_retry is not None:
                    policy.on_retry(retrying)
                if delay > 0.0 and not _testing:
                    sleep(delay)
                attempt, previous, exc, result = attempt + 1, delay, None, None
                try:
                    result = inner(args, kwargs)
                except Exception as error:
                    exc = error
                    continue
                if check_result is None or not check_result(result):
                    history.clear()  # its errors' tracebacks hold this frame
                    return result

        def run(args: Args, kwargs: Kwargs) -> Any:
            started = clock() if needs_start else None
            try:
                result = inner(args, kwargs)
            except Exception as error:
                exc: BaseException | None = error
            else:
                if check_result is None or not check_result(result):
                    return result
                return failing(args, kwargs, None, result, started)
            try:
                return failing(args, kwargs, exc, None, started)
            finally:
                exc = None  # the error's traceback holds this frame: no cycle for the GC

        return run

    # ------------------------------------------------------------------ async
    def build_async(self, inner: AsyncRunner, func: Callable[..., Any]) -> AsyncRunner:
        policy = self.policy
        check_result = policy.retry_if_result
        clock = self._clock
        needs_start = policy.deadline is not None
        sleep = asyncio.sleep if self._sleep is None else self._sleep

        async def failing(
            args: Args,
            kwargs: Kwargs,
            exc: BaseException | None,
            result: Any,
            started: float | None,
        ) -> Any:
            history: list[_Raw] = []
            attempt, previous = 1, 0.0
            while True:
                delay, reason = self._next_delay(attempt, exc, previous, started)
                if delay == _GIVE_UP:
                    state = self._give_up(func, attempt, exc, result, history, reason)
                    if policy.on_giveup is not None:
                        await _maybe_await(policy.on_giveup(state))
                    if exc is not None:
                        raise exc
                    return result
                retrying = self._retrying(func, attempt, exc, result, delay, history)
                if retrying is not None and policy.on_retry is not None:
                    await _maybe_await(policy.on_retry(retrying))
                if delay > 0.0 and not _testing:
                    await sleep(delay)
                attempt, previous, exc, result = attempt + 1, delay, None, None
                try:
                    result = await inner(args, kwargs)
                except Exception as error:
                    exc = error
                    continue
                if check_result is None or not check_result(result):
                    history.clear()  # its errors' tracebacks hold this frame
                    return result

        async def run(args: Args, kwargs: Kwargs) -> Any:
            started = clock() if needs_start else None
            try:
                result = await inner(args, kwargs)
            except Exception as error:
                exc: BaseException | None = error
            else:
                if check_result is None or not check_result(result):
                    return result
                return await failing(args, kwargs, None, result, started)
            try:
                return await failing(args, kwargs, exc, None, started)
            finally:
                exc = None  # the error's traceback holds this frame: no cycle for the GC

        return run


def _freeze(history: list[_Raw]) -> tuple[Attempt, ...]:
    return tuple(Attempt(*raw) for raw in history)


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


def _non_negative_int(value: object, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{argument} must be >= 0, got {value}; use 0 for a single attempt")
    return value


def _optional_callable(value: object, argument: str) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{argument} must be callable or None, got {value!r}")
    return value


def make_retry_policy(
    max_retries: int = 3,
    retry_delay: Duration | Sequence[Duration] = 1.0,
    retry_strategy: str | Sequence[Duration] = "exponential",
    max_delay: Duration | None = 60.0,
    jitter: str | None = "full",
    retry_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
    ignore_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
    deadline: Duration | None = None,
    retry_if_result: Callable[[Any], bool] | None = None,
    on_retry: Callable[[RetryState], object] | None = None,
    on_giveup: Callable[[RetryState], object] | None = None,
) -> RetryPolicy:
    """Validate `@retry`'s arguments; also used for enqueue-time overrides."""
    return RetryPolicy(
        max_retries=_non_negative_int(max_retries, "max_retries"),
        schedule=DelaySchedule.build(retry_delay, retry_strategy, max_delay, jitter),
        retry_on=None if retry_on is None else exception_types(retry_on, "retry_on"),
        ignore_on=exception_types(ignore_on, "ignore_on"),
        deadline=None if deadline is None else seconds(deadline, "deadline", positive=True),
        retry_if_result=_optional_callable(retry_if_result, "retry_if_result"),
        on_retry=_optional_callable(on_retry, "on_retry"),
        on_giveup=_optional_callable(on_giveup, "on_giveup"),
    )


@overload
def retry(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def retry(
    *,
    max_retries: int = 3,
    retry_delay: Duration | Sequence[Duration] = 1.0,
    retry_strategy: str | Sequence[Duration] = "exponential",
    max_delay: Duration | None = 60.0,
    jitter: str | None = "full",
    retry_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
    ignore_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
    deadline: Duration | None = None,
    retry_if_result: Callable[[Any], bool] | None = None,
    on_retry: Callable[[RetryState], object] | None = None,
    on_giveup: Callable[[RetryState], object] | None = None,
    sleep: Callable[[float], Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def retry(
    func: Callable[P, R] | None = None,
    /,
    *,
    max_retries: int = 3,
    retry_delay: Duration | Sequence[Duration] = 1.0,
    retry_strategy: str | Sequence[Duration] = "exponential",
    max_delay: Duration | None = 60.0,
    jitter: str | None = "full",
    retry_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
    ignore_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
    deadline: Duration | None = None,
    retry_if_result: Callable[[Any], bool] | None = None,
    on_retry: Callable[[RetryState], object] | None = None,
    on_giveup: Callable[[RetryState], object] | None = None,
    sleep: Callable[[float], Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Retry the function when it raises a retryable error (see `classify`).

    `max_retries` counts retries, so a function runs at most `max_retries + 1` times.
    `retry_delay` with `retry_strategy` ("fixed", "linear", "exponential",
    "fibonacci") gives the base delay, capped by `max_delay`, then `jitter` ("full",
    "equal", "decorrelated" or None) spreads it; a list of delays in either argument is
    used as given. An error with a `retry_after` attribute (`RateLimitError`,
    `CircuitBreakerOpenError`) waits exactly that long (one whose `retry_after` is None,
    unknown, waits as the schedule says). `deadline` bounds the total time. Every
    duration is seconds or a `timedelta`. `retry_if_result(result)` returning True
    retries a returned value; when retries run out that last value is returned.

    `sleep` and `clock` are injectable (an async `sleep` for `async def` functions);
    `set_testing(True)` skips every delay.
    """
    policy = make_retry_policy(
        max_retries,
        retry_delay,
        retry_strategy,
        max_delay,
        jitter,
        retry_on,
        ignore_on,
        deadline,
        retry_if_result,
        on_retry,
        on_giveup,
    )
    _optional_callable(sleep, "sleep")
    if not callable(clock):
        raise TypeError(f"clock must be callable, got {clock!r}")

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        return apply_stage(target, RetryStage(policy, sleep, clock), "retry")

    return decorate if func is None else decorate(func)
