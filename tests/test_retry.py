from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from naq_resilience import (
    AuthenticationError,
    RateLimitError,
    RetryState,
    SecurityError,
    attempts_of,
    on_critical,
    policies_of,
    remove_critical_hook,
    retry,
    set_testing,
)
from naq_resilience.policies.retry import RetryPolicy, is_testing

from conftest import FakeClock


class Flaky:
    """Fails with `error` for the first `failures` calls, then returns `value`."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self, value: object = "ok") -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return value


@pytest.fixture
def critical_seen() -> Iterator[list[BaseException]]:
    seen: list[BaseException] = []
    hook = on_critical(seen.append)
    yield seen
    remove_critical_hook(hook)


def test_success_runs_once_without_sleeping(clock: FakeClock) -> None:
    flaky = Flaky(0)
    f = retry(max_retries=3, sleep=clock.sleep)(flaky)
    assert f("v") == "v"
    assert flaky.calls == 1
    assert clock.sleeps == []


def test_retries_with_the_schedule_then_succeeds(clock: FakeClock) -> None:
    flaky = Flaky(3)
    f = retry(
        max_retries=3, retry_delay=2, retry_strategy="exponential", jitter=None, sleep=clock.sleep
    )(flaky)
    assert f() == "ok"
    assert flaky.calls == 4
    assert clock.sleeps == [2, 4, 8]


def test_gives_up_with_the_original_error_and_its_history(clock: FakeClock) -> None:
    errors: list[BaseException] = []

    def always() -> None:
        err = ConnectionError(f"down {len(errors)}")
        errors.append(err)
        raise err

    f = retry(max_retries=2, retry_delay=1, retry_strategy="fixed", jitter=None, sleep=clock.sleep)(
        always
    )
    with pytest.raises(ConnectionError) as info:
        f()
    assert info.value is errors[-1]
    history = attempts_of(info.value)
    assert [a.number for a in history] == [1, 2, 3]
    assert [a.error for a in history] == errors
    assert [a.delay for a in history] == [1, 1, 0]
    assert "gave up after attempt 3 of 3" in info.value.__notes__[-1]
    assert info.value.__context__ is None


def test_non_retryable_is_raised_at_once(clock: FakeClock) -> None:
    flaky = Flaky(5, error=AuthenticationError)
    f = retry(max_retries=5, sleep=clock.sleep)(flaky)
    with pytest.raises(AuthenticationError) as info:
        f()
    assert flaky.calls == 1
    assert "non-retryable" in info.value.__notes__[-1]


def test_critical_is_raised_at_once_and_reported_once(
    clock: FakeClock, critical_seen: list[BaseException]
) -> None:
    flaky = Flaky(5, error=SecurityError)
    f = retry(max_retries=5, retry_on=(SecurityError,), sleep=clock.sleep)(flaky)
    with pytest.raises(SecurityError) as info:
        f()
    assert flaky.calls == 1
    assert critical_seen == [info.value]


def test_retry_on_and_ignore_on(clock: FakeClock) -> None:
    value_errors = Flaky(2, error=ValueError)
    assert retry(retry_on=ValueError, retry_delay=0)(value_errors)() == "ok"
    assert value_errors.calls == 3

    timeouts = Flaky(2, error=TimeoutError)
    with pytest.raises(TimeoutError):
        retry(retry_on=ValueError, retry_delay=0)(timeouts)()
    assert timeouts.calls == 1

    resets = Flaky(2, error=ConnectionResetError)
    with pytest.raises(ConnectionResetError):
        retry(ignore_on=[ConnectionResetError], retry_delay=0)(resets)()
    assert resets.calls == 1


def test_retry_after_is_honoured(clock: FakeClock) -> None:
    calls = 0

    def limited() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RateLimitError("slow down", retry_after=7.5)
        return "done"

    f = retry(retry_delay=1, jitter=None, max_delay=2, sleep=clock.sleep)(limited)
    assert f() == "done"
    assert clock.sleeps == [7.5]


def test_zero_delay_never_sleeps() -> None:
    def forbidden_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}")

    flaky = Flaky(3)
    assert retry(max_retries=3, retry_delay=0, sleep=forbidden_sleep)(flaky)() == "ok"
    assert flaky.calls == 4


def test_testing_switch_turns_delays_off(clock: FakeClock) -> None:
    flaky = Flaky(2)
    f = retry(max_retries=2, retry_delay=100, sleep=clock.sleep)(flaky)
    set_testing(True)
    try:
        assert is_testing()
        assert f() == "ok"
    finally:
        set_testing(False)
    assert flaky.calls == 3
    assert clock.sleeps == []


def test_deadline_stops_before_a_delay_would_pass_it(clock: FakeClock) -> None:
    flaky = Flaky(10)
    f = retry(
        max_retries=10,
        retry_delay=4,
        retry_strategy="fixed",
        jitter=None,
        deadline=10,
        sleep=clock.sleep,
        clock=clock,
    )(flaky)
    with pytest.raises(ConnectionError) as info:
        f()
    assert clock.sleeps == [4, 4]
    assert flaky.calls == 3
    assert "deadline" in info.value.__notes__[-1]


def test_retry_if_result_retries_and_returns_last_value(clock: FakeClock) -> None:
    values = iter([None, None, 3])
    f = retry(max_retries=5, retry_delay=0, retry_if_result=lambda r: r is None)(
        lambda: next(values)
    )
    assert f() == 3

    always_none: list[int] = []

    def empty() -> None:
        always_none.append(1)

    g = retry(max_retries=2, retry_delay=0, retry_if_result=lambda r: r is None)(empty)
    assert g() is None
    assert len(always_none) == 3


def test_callbacks_receive_state(clock: FakeClock) -> None:
    retries: list[RetryState] = []
    giveups: list[RetryState] = []
    f = retry(
        max_retries=2,
        retry_delay=1,
        retry_strategy="linear",
        jitter=None,
        on_retry=retries.append,
        on_giveup=giveups.append,
        sleep=clock.sleep,
    )(Flaky(5))
    with pytest.raises(ConnectionError):
        f()
    assert [(s.attempt, s.delay) for s in retries] == [(1, 1), (2, 2)]
    assert len(retries[1].history) == 2
    assert len(giveups) == 1
    assert giveups[0].attempt == 3
    assert isinstance(giveups[0].error, ConnectionError)
    assert giveups[0].function == "test_retry:Flaky"


def test_base_exceptions_are_not_retried() -> None:
    calls = 0

    def interrupted() -> None:
        nonlocal calls
        calls += 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retry(retry_delay=0)(interrupted)()
    assert calls == 1


def test_explicit_delay_list(clock: FakeClock) -> None:
    f = retry(max_retries=4, retry_delay=[1, 5, 30], sleep=clock.sleep)(Flaky(4))
    assert f() == "ok"
    assert clock.sleeps == [1, 5, 30, 30]


def test_bare_decorator_uses_defaults() -> None:
    @retry
    def f() -> int:
        return 1

    assert f() == 1
    (policy,) = policies_of(f)
    assert isinstance(policy, RetryPolicy)
    assert policy.max_retries == 3
    assert policy.schedule.strategy == "exponential"


def test_metadata_and_signature_are_preserved() -> None:
    def job(order_id: int, *, priority: str = "low") -> str:
        """Process an order."""
        return f"{order_id}:{priority}"

    wrapped = retry(retry_delay=0)(job)
    assert wrapped.__name__ == "job"
    assert wrapped.__doc__ == "Process an order."
    assert inspect.signature(wrapped) == inspect.signature(job)
    assert wrapped.__wrapped__ is job  # type: ignore[attr-defined]
    assert wrapped(5, priority="high") == "5:high"


def test_methods_classmethods_staticmethods() -> None:
    class Service:
        def __init__(self) -> None:
            self.calls = 0

        @retry(retry_delay=0)
        def fetch(self, x: int) -> int:
            self.calls += 1
            if self.calls < 2:
                raise TimeoutError
            return x * 2

        @retry(retry_delay=0)
        @classmethod
        def build(cls) -> str:
            return cls.__name__

        @retry(retry_delay=0)
        @staticmethod
        def pure(x: int) -> int:
            return x + 1

    service = Service()
    assert service.fetch(4) == 8
    assert service.calls == 2
    assert Service.build() == "Service"
    assert Service.pure(1) == 2
    assert len(policies_of(Service.__dict__["build"])) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_retries": -1}, ValueError, "max_retries must be >= 0"),
        ({"max_retries": 2.5}, TypeError, "whole number"),
        ({"retry_strategy": "sometimes"}, ValueError, "unknown retry_strategy"),
        ({"jitter": "lots"}, ValueError, "unknown jitter"),
        ({"retry_on": (ValueError, "KeyError")}, TypeError, "not names"),
        ({"retry_on": 42}, TypeError, "exception class"),
        ({"ignore_on": [dict]}, TypeError, "exception classes"),
        ({"deadline": 0}, ValueError, "deadline"),
        ({"on_retry": "print"}, TypeError, "on_retry must be callable"),
        ({"clock": 3}, TypeError, "clock must be callable"),
    ],
)
def test_bad_arguments_fail_at_decoration_time(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        retry(**kwargs)


def test_sync_sleep_on_async_function_is_refused(clock: FakeClock) -> None:
    async def job() -> None:
        return None

    with pytest.raises(TypeError, match="async sleep"):
        retry(sleep=clock.sleep)(job)


# ---------------------------------------------------------------------------- async


def test_async_retries_and_awaits_callbacks(clock: FakeClock) -> None:
    calls = 0
    seen: list[int] = []

    async def on_retry(state: RetryState) -> None:
        await asyncio.sleep(0)
        seen.append(state.attempt)

    @retry(
        max_retries=3,
        retry_delay=1,
        retry_strategy="linear",
        jitter=None,
        sleep=clock.async_sleep,
        on_retry=on_retry,
    )
    async def job(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls < 3:
            raise ConnectionError("later")
        return x

    assert inspect.iscoroutinefunction(job)
    assert asyncio.run(job(9)) == 9
    assert calls == 3
    assert clock.sleeps == [1, 2]
    assert seen == [1, 2]


def test_async_gives_up_with_history(clock: FakeClock) -> None:
    @retry(max_retries=1, retry_delay=0)
    async def job() -> None:
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError) as info:
        asyncio.run(job())
    assert len(attempts_of(info.value)) == 2


def test_async_retry_if_result() -> None:
    values = iter([0, 0, 5])

    @retry(max_retries=3, retry_delay=0, retry_if_result=lambda r: r == 0)
    async def job() -> int:
        return next(values)

    assert asyncio.run(job()) == 5


def test_async_default_sleep_is_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    flaky = Flaky(1)

    @retry(max_retries=1, retry_delay=3, retry_strategy="fixed", jitter=None)
    async def job() -> object:
        return flaky()

    assert asyncio.run(job()) == "ok"
    assert slept == [3]


@pytest.mark.parametrize("failures", [1, 3])
def test_errors_of_a_retried_success_are_freed_without_the_gc(failures: int) -> None:
    """A retry that ends well must not leave reference cycles for the collector."""
    import gc
    import weakref

    refs: list[weakref.ref[BaseException]] = []

    class Blip(ConnectionError):
        """A Python-level subclass, so it can be weakly referenced."""

    def blip() -> BaseException:
        err = Blip("blip")
        refs.append(weakref.ref(err))
        return err

    @retry(max_retries=5, retry_delay=0)
    def flaky() -> str:
        if len(refs) < failures:
            raise blip()  # no local holds the error, so the function adds no cycle
        return "ok"

    gc.disable()
    try:
        assert flaky() == "ok"
        assert len(refs) == failures
        assert all(ref() is None for ref in refs)
    finally:
        gc.enable()
