from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from naq_resilience.policies.classify import on_critical, remove_critical_hook
from naq_resilience.policies.errors import ProcessingError, SecurityError
from naq_resilience.policies.fallback import FallbackPolicy, fallback
from naq_resilience.policies.pipeline import policies_of
from naq_resilience.policies.retry import RetryPolicy, retry


@pytest.fixture
def reported() -> Iterator[list[BaseException]]:
    seen: list[BaseException] = []
    hook = on_critical(seen.append)
    yield seen
    remove_critical_hook(hook)


class Recorder:
    """Alternatives that log their calls, so tests can see who ran with what."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def returning(self, name: str, value: object) -> Any:
        def alternative(*args: Any, **kwargs: Any) -> object:
            self.calls.append((name, args, kwargs))
            return value

        alternative.__qualname__ = name
        return alternative

    def raising(self, name: str, error: BaseException) -> Any:
        def alternative(*args: Any, **kwargs: Any) -> object:
            self.calls.append((name, args, kwargs))
            raise error

        alternative.__qualname__ = name
        return alternative

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


# --------------------------------------------------------------------------- sync


def test_success_runs_no_alternative() -> None:
    rec = Recorder()

    @fallback(rec.returning("cached", "stale"))
    def fetch(key: str) -> str:
        return f"fresh {key}"

    assert fetch("a") == "fresh a"
    assert rec.calls == []


def test_alternative_gets_the_same_arguments() -> None:
    rec = Recorder()

    @fallback(rec.returning("cached", "stale"))
    def fetch(key: str, *, region: str) -> str:
        raise ConnectionError("down")

    assert fetch("a", region="eu") == "stale"
    assert rec.calls == [("cached", ("a",), {"region": "eu"})]


def test_failing_alternative_passes_on_to_the_next() -> None:
    rec = Recorder()

    @fallback(
        rec.raising("cache", KeyError("miss")),
        rec.returning("default", "default value"),
        rec.returning("never", "unused"),
    )
    def fetch(key: str) -> str:
        raise TimeoutError("slow")

    assert fetch("k") == "default value"
    assert rec.names() == ["cache", "default"]


def test_error_outside_on_propagates_unchanged() -> None:
    rec = Recorder()
    error = ValueError("bad input")

    @fallback(rec.returning("cached", "stale"), on=(ConnectionError, TimeoutError))
    def fetch() -> str:
        raise error

    with pytest.raises(ValueError, match="bad input") as info:
        fetch()
    assert info.value is error
    assert getattr(info.value, "__notes__", []) == []
    assert rec.calls == []


def test_on_accepts_a_single_class() -> None:
    rec = Recorder()

    @fallback(rec.returning("cached", "stale"), on=ConnectionError)
    def fetch(fail_with: Exception) -> str:
        raise fail_with

    assert fetch(ConnectionRefusedError()) == "stale"
    with pytest.raises(TimeoutError):
        fetch(TimeoutError())
    assert rec.names() == ["cached"]


def test_alternative_error_outside_on_propagates_at_once() -> None:
    rec = Recorder()
    escape = RuntimeError("alternative broke")

    @fallback(
        rec.raising("first", escape),
        rec.returning("second", "unused"),
        on=ConnectionError,
    )
    def fetch() -> str:
        raise ConnectionError("down")

    with pytest.raises(RuntimeError) as info:
        fetch()
    assert info.value is escape
    assert rec.names() == ["first"]
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1
    assert "first" in notes[0]
    assert "ConnectionError('down')" in notes[0]


def test_exhausted_calls_on_exhausted_then_raises_processing_error() -> None:
    rec = Recorder()
    primary_error = ConnectionError("down")
    cache_error = KeyError("miss")
    default_error = TimeoutError("slow")
    stored: list[tuple[tuple[BaseException, ...], tuple[Any, ...], dict[str, Any]]] = []

    def store_for_review(failures: tuple[BaseException, ...], *args: Any, **kwargs: Any) -> None:
        stored.append((failures, args, kwargs))

    @fallback(
        rec.raising("cache", cache_error),
        rec.raising("default", default_error),
        on_exhausted=store_for_review,
    )
    def fetch(key: str, *, region: str) -> str:
        raise primary_error

    with pytest.raises(ProcessingError) as info:
        fetch("k", region="eu")

    expected = (primary_error, cache_error, default_error)
    assert info.value.failures == expected
    assert info.value.__cause__ is default_error
    message = str(info.value)
    assert "fetch" in message
    for name in ("ConnectionError", "KeyError", "TimeoutError", "cache", "default"):
        assert name in message
    assert stored == [(expected, ("k",), {"region": "eu"})]


def test_failing_on_exhausted_is_noted_not_raised() -> None:
    def store_for_review(failures: tuple[BaseException, ...], *args: Any) -> None:
        raise OSError("disk full")

    @fallback(Recorder().raising("cache", KeyError("miss")), on_exhausted=store_for_review)
    def fetch() -> str:
        raise ConnectionError("down")

    with pytest.raises(ProcessingError) as info:
        fetch()
    notes = getattr(info.value, "__notes__", [])
    assert any("store_for_review" in note and "disk full" in note for note in notes)


# --------------------------------------------------------------------------- by type


class NonCriticalError(Exception):
    pass


class PartialOutage(NonCriticalError):
    pass


class CriticalPathError(Exception):
    pass


def test_mapping_picks_by_most_specific_type() -> None:
    rec = Recorder()

    @fallback(
        {
            NonCriticalError: rec.returning("partial", "partial result"),
            PartialOutage: rec.returning("outage", "outage result"),
            CriticalPathError: rec.returning("minimal", "minimal result"),
        }
    )
    def process(error: Exception) -> str:
        raise error

    assert process(NonCriticalError()) == "partial result"
    assert process(PartialOutage()) == "outage result"
    assert process(CriticalPathError()) == "minimal result"
    assert rec.names() == ["partial", "outage", "minimal"]


def test_mapping_lets_unmapped_types_through() -> None:
    rec = Recorder()
    error = LookupError("unmapped")

    @fallback({NonCriticalError: rec.returning("partial", "x")})
    def process() -> str:
        raise error

    with pytest.raises(LookupError) as info:
        process()
    assert info.value is error
    assert rec.calls == []


def test_mapping_alternative_failing_is_exhausted() -> None:
    primary_error = PartialOutage("half down")
    alternative_error = NonCriticalError("also down")
    rec = Recorder()

    @fallback(
        {
            PartialOutage: rec.raising("outage", alternative_error),
            NonCriticalError: rec.returning("partial", "never: one alternative per failure"),
        }
    )
    def process() -> str:
        raise primary_error

    with pytest.raises(ProcessingError) as info:
        process()
    assert info.value.failures == (primary_error, alternative_error)
    assert info.value.__cause__ is alternative_error
    assert rec.names() == ["outage"]


def test_mapping_alternative_error_outside_keys_propagates() -> None:
    escape = RuntimeError("bug in alternative")

    @fallback({NonCriticalError: Recorder().raising("partial", escape)})
    def process() -> str:
        raise NonCriticalError()

    with pytest.raises(RuntimeError) as info:
        process()
    assert info.value is escape


# --------------------------------------------------------------------------- critical


def test_critical_error_is_reported_before_degrading(reported: list[BaseException]) -> None:
    breach = SecurityError("token forged")
    seen_at_fallback: list[int] = []

    def degraded() -> str:
        seen_at_fallback.append(len(reported))
        return "degraded"

    @fallback(degraded)
    def handle() -> str:
        raise breach

    assert handle() == "degraded"
    assert reported == [breach]
    assert seen_at_fallback == [1]


def test_critical_errors_reported_once_each_when_exhausted(
    reported: list[BaseException],
) -> None:
    breach = SecurityError("token forged")
    second = SecurityError("again")

    @fallback(Recorder().raising("alt", second))
    def handle() -> str:
        raise breach

    with pytest.raises(ProcessingError) as info:
        handle()
    assert reported == [breach, second]
    assert info.value.failures == (breach, second)


def test_non_critical_errors_are_not_reported(reported: list[BaseException]) -> None:
    @fallback(Recorder().returning("alt", 1))
    def handle() -> int:
        raise ConnectionError()

    assert handle() == 1
    assert reported == []


# --------------------------------------------------------------------------- async


def test_async_mixes_sync_and_async_alternatives() -> None:
    calls: list[str] = []

    async def async_cache(key: str) -> str:
        calls.append("async_cache")
        raise KeyError(key)

    def sync_default(key: str) -> str:
        calls.append("sync_default")
        return f"default {key}"

    @fallback(async_cache, sync_default)
    async def fetch(key: str) -> str:
        calls.append("fetch")
        raise ConnectionError("down")

    assert asyncio.run(fetch("k")) == "default k"
    assert calls == ["fetch", "async_cache", "sync_default"]


def test_async_alternative_result_is_awaited() -> None:
    async def async_cache(key: str) -> str:
        return f"cached {key}"

    @fallback(async_cache)
    async def fetch(key: str) -> str:
        raise ConnectionError("down")

    assert asyncio.run(fetch("k")) == "cached k"


def test_async_success_and_unhandled_error() -> None:
    error = ValueError("bad")

    @fallback(Recorder().returning("alt", "x"), on=ConnectionError)
    async def fetch(fail: bool) -> str:
        if fail:
            raise error
        return "ok"

    assert asyncio.run(fetch(False)) == "ok"
    with pytest.raises(ValueError, match="bad") as info:
        asyncio.run(fetch(True))
    assert info.value is error


def test_async_exhausted_awaits_async_on_exhausted(reported: list[BaseException]) -> None:
    stored: list[tuple[BaseException, ...]] = []
    breach = SecurityError("forged")
    alt_error = TimeoutError("slow")

    async def store(failures: tuple[BaseException, ...], key: str) -> None:
        stored.append(failures)

    async def cache(key: str) -> str:
        raise alt_error

    @fallback(cache, on_exhausted=store)
    async def fetch(key: str) -> str:
        raise breach

    with pytest.raises(ProcessingError) as info:
        asyncio.run(fetch("k"))
    assert stored == [(breach, alt_error)]
    assert info.value.failures == (breach, alt_error)
    assert info.value.__cause__ is alt_error
    assert reported == [breach]


def test_async_mapping_and_escape() -> None:
    escape = RuntimeError("bug")

    async def partial(error: Exception) -> str:
        return f"partial after {type(error).__name__}"

    async def broken(error: Exception) -> str:
        raise escape

    @fallback({NonCriticalError: partial, CriticalPathError: broken})
    async def process(error: Exception) -> str:
        raise error

    assert asyncio.run(process(PartialOutage())) == "partial after PartialOutage"
    with pytest.raises(RuntimeError) as info:
        asyncio.run(process(CriticalPathError()))
    assert info.value is escape


def test_async_failing_on_exhausted_is_noted() -> None:
    async def store(failures: tuple[BaseException, ...]) -> None:
        raise OSError("disk full")

    @fallback(Recorder().raising("alt", KeyError()), on_exhausted=store)
    async def fetch() -> str:
        raise ConnectionError()

    with pytest.raises(ProcessingError) as info:
        asyncio.run(fetch())
    assert any("disk full" in note for note in getattr(info.value, "__notes__", []))


# --------------------------------------------------------------------------- methods, stacking


def test_methods_pass_self_to_alternatives() -> None:
    def from_cache(self: Service, key: str) -> str:
        return f"{self.name} cached {key}"

    class Service:
        name = "svc"

        @fallback(from_cache)
        def fetch(self, key: str) -> str:
            raise ConnectionError()

        @staticmethod
        @fallback(lambda key: f"static {key}")
        def lookup(key: str) -> str:
            raise ConnectionError()

        @classmethod
        @fallback(lambda cls, key: f"{cls.__name__} {key}")
        def build(cls, key: str) -> str:
            raise ConnectionError()

    assert Service().fetch("k") == "svc cached k"
    assert Service.lookup("k") == "static k"
    assert Service.build("k") == "Service k"


def test_retry_around_fallback_retries_only_exhaustion() -> None:
    attempts: list[str] = []

    def cache() -> str:
        attempts.append("cache")
        raise ConnectionError("cache down")

    @retry(max_retries=2, retry_delay=0, jitter=None, retry_on=ProcessingError)
    @fallback(cache)
    def fetch() -> str:
        attempts.append("fetch")
        raise ConnectionError("down")

    with pytest.raises(ProcessingError):
        fetch()
    assert attempts == ["fetch", "cache"] * 3
    policies = policies_of(fetch)
    assert [type(p) for p in policies] == [RetryPolicy, FallbackPolicy]


def test_fallback_around_retry_degrades_after_retries() -> None:
    attempts: list[str] = []

    @fallback(lambda: "stale")
    @retry(max_retries=2, sleep=lambda _: None)
    def fetch() -> str:
        attempts.append("fetch")
        raise ConnectionError("down")

    assert fetch() == "stale"
    assert attempts == ["fetch"] * 3
    assert [type(p) for p in policies_of(fetch)] == [FallbackPolicy, RetryPolicy]


def test_nested_fallbacks() -> None:
    @fallback(lambda: "last resort")
    @fallback(Recorder().raising("inner", KeyError()))
    def fetch() -> str:
        raise ConnectionError()

    assert fetch() == "last resort"


# --------------------------------------------------------------------------- policy


def test_policy_describes_list_form() -> None:
    def cache() -> str:
        return "c"

    def store(failures: tuple[BaseException, ...]) -> None:
        pass

    @fallback(cache, on=(ConnectionError, TimeoutError), on_exhausted=store)
    def fetch() -> str:
        return "x"

    assert policies_of(fetch) == (
        FallbackPolicy(
            alternatives=(cache,),
            on=(ConnectionError, TimeoutError),
            by_type=None,
            on_exhausted=store,
        ),
    )


def test_policy_describes_mapping_form() -> None:
    def partial() -> str:
        return "p"

    def minimal() -> str:
        return "m"

    @fallback({NonCriticalError: partial, CriticalPathError: minimal})
    def fetch() -> str:
        return "x"

    (policy,) = policies_of(fetch)
    assert isinstance(policy, FallbackPolicy)
    assert policy.by_type == ((NonCriticalError, partial), (CriticalPathError, minimal))
    assert policy.on == (NonCriticalError, CriticalPathError)
    assert policy.alternatives == (partial, minimal)
    assert policy.on_exhausted is None


def test_policy_default_handles_every_exception() -> None:
    @fallback(lambda: 1)
    def fetch() -> int:
        return 0

    (policy,) = policies_of(fetch)
    assert isinstance(policy, FallbackPolicy)
    assert policy.on == (Exception,)


def test_cancellation_is_never_handled() -> None:
    calls: list[str] = []

    @fallback(lambda: calls.append("alt"))
    async def job() -> None:
        raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(job())
    assert calls == []


# --------------------------------------------------------------------------- decoration time


async def _async_alt() -> str:
    return "x"


class _AsyncCallable:
    async def __call__(self) -> str:
        return "x"


@pytest.mark.parametrize("alternative", [_async_alt, _AsyncCallable()])
def test_sync_function_refuses_async_alternative(alternative: Any) -> None:
    with pytest.raises(TypeError, match=r"sync function .*cannot await"):

        @fallback(alternative)
        def fetch() -> str:
            return "x"


def test_sync_function_refuses_async_on_exhausted() -> None:
    async def store(failures: tuple[BaseException, ...]) -> None:
        pass

    with pytest.raises(TypeError, match=r"async on_exhausted .*store"):

        @fallback(lambda: 1, on_exhausted=store)
        def fetch() -> int:
            return 0


def test_refusal_also_when_stacked_on_an_existing_pipeline() -> None:
    @retry(max_retries=1, retry_delay=0)
    def fetch() -> str:
        return "x"

    with pytest.raises(TypeError, match="cannot await"):
        fallback(_async_alt)(fetch)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((), {}, ValueError, "at least one alternative"),
        ((42,), {}, TypeError, "alternative #1 must be callable"),
        ((len, "nope"), {}, TypeError, "alternative #2 must be callable"),
        ((ConnectionError,), {}, TypeError, "on=ConnectionError"),
        ((len,), {"on": "ConnectionError"}, TypeError, "exception classes"),
        ((len,), {"on": (ConnectionError, 3)}, TypeError, "exception classes"),
        ((len,), {"on": KeyboardInterrupt}, TypeError, "only name Exception subclasses"),
        ((len,), {"on": ()}, ValueError, "at least one exception class"),
        ((len,), {"on_exhausted": "log"}, TypeError, "on_exhausted must be callable"),
        (({},), {}, ValueError, "at least one"),
        (({"KeyError": len},), {}, TypeError, "mapping keys must be exception classes"),
        (({KeyError: 3},), {}, TypeError, "mapping value for KeyError must be callable"),
        (({KeyError: len}, len), {}, TypeError, "not both"),
        ((len, {KeyError: len}), {}, TypeError, "pass it alone"),
        (({KeyError: len},), {"on": KeyError}, TypeError, "drop on="),
        (({BaseException: len},), {}, TypeError, "only name Exception subclasses"),
    ],
)
def test_bad_arguments_fail_at_decoration(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        fallback(*args, **kwargs)
