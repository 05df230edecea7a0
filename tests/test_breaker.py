"""@circuit_breaker: transitions, sharing, validation, async, concurrency, a model check.

No test sleeps for real: every breaker gets a fake clock, and waits in the threaded
tests are bounded barriers that only time out when the code under test is wrong.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from naq_resilience.policies.breaker import (
    HALF_OPEN_RETRY_AFTER,
    BreakerPolicy,
    BreakerSnapshot,
    BreakerStore,
    CircuitBreaker,
    CircuitState,
    MemoryBreakerStore,
    circuit_breaker,
    get_breaker,
)
from naq_resilience.policies.errors import CircuitBreakerOpenError, Retryable
from naq_resilience.policies.pipeline import policies_of
from naq_resilience.policies.retry import retry

from conftest import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(Exception):
    pass


class NotFound(LookupError):
    pass


class RecordingStore(MemoryBreakerStore):
    def __init__(self) -> None:
        super().__init__()
        self.published: list[BreakerSnapshot] = []

    def publish(self, snapshot: BreakerSnapshot) -> None:
        self.published.append(snapshot)


@pytest.fixture
def store() -> MemoryBreakerStore:
    return MemoryBreakerStore()


def outcome_of(outcome: str) -> str:
    if outcome == "fail":
        raise Boom(outcome)
    if outcome == "missing":
        raise NotFound(outcome)
    return outcome


def make(
    clock: FakeClock, store: BreakerStore, **options: Any
) -> tuple[Callable[[str], str], CircuitBreaker, list[str]]:
    """A sync function behind a breaker: "ok" returns, "fail" raises Boom, "missing" NotFound."""
    ran: list[str] = []
    options.setdefault("name", "dep")

    @circuit_breaker(clock=clock, store=store, **options)
    def f(outcome: str) -> str:
        ran.append(outcome)
        return outcome_of(outcome)

    return f, get_breaker(options["name"], store), ran


def refused(f: Callable[[str], object]) -> CircuitBreakerOpenError:
    with pytest.raises(CircuitBreakerOpenError) as info:
        f("ok")
    return info.value


def fail(f: Callable[[str], object], times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            f("fail")


# ---------------------------------------------------------------------- transitions


def test_consecutive_failures_open_the_breaker_and_a_success_resets_them(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    f, breaker, ran = make(clock, store, failure_threshold=3)
    fail(f, 2)
    assert (breaker.state, breaker.failures) == (CLOSED, 2)
    assert f("ok") == "ok"
    assert breaker.failures == 0
    fail(f, 2)
    assert breaker.state is CLOSED
    fail(f)
    assert breaker.state is OPEN
    assert breaker.snapshot().opened_at == clock.now
    ran.clear()
    error = refused(f)
    assert ran == []
    assert error.name == "dep"
    assert isinstance(error, Retryable)


def test_open_refuses_with_the_time_left_then_half_opens_on_the_next_call(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    f, breaker, ran = make(clock, store, failure_threshold=1, recovery_timeout=30)
    fail(f)
    assert refused(f).retry_after == 30.0
    assert breaker.retry_after() == 30.0
    clock.advance(12.5)
    assert refused(f).retry_after == 17.5
    clock.advance(17.5)
    assert breaker.state is OPEN  # only a call moves it on
    assert breaker.retry_after() == 0.0
    ran.clear()
    assert f("ok") == "ok"
    assert ran == ["ok"]
    assert breaker.state is CLOSED


def test_half_open_needs_success_threshold_successes_to_close(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    f, breaker, _ = make(clock, store, failure_threshold=2, recovery_timeout=5, success_threshold=3)
    fail(f, 2)
    clock.advance(5)
    f("ok")
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot().successes == 1
    f("ok")
    assert breaker.snapshot().successes == 2
    f("ok")
    snap = breaker.snapshot()
    assert (snap.state, snap.failures, snap.successes, snap.opened_at) == (CLOSED, 0, 0, None)
    fail(f)  # counting starts again from zero
    assert (breaker.state, breaker.failures) == (CLOSED, 1)


def test_a_probe_failure_reopens_at_once_with_a_new_opened_at(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    f, breaker, _ = make(
        clock, store, failure_threshold=1, recovery_timeout=10, success_threshold=2
    )
    fail(f)
    assert breaker.snapshot().opened_at == 1000.0
    clock.advance(10)
    f("ok")
    assert breaker.state is HALF_OPEN
    clock.advance(3)
    fail(f)
    snap = breaker.snapshot()
    assert snap.state is OPEN
    assert snap.opened_at == 1013.0
    assert refused(f).retry_after == 10.0


def test_zero_recovery_timeout_probes_on_the_very_next_call(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    f, breaker, _ = make(clock, store, failure_threshold=1, recovery_timeout=0)
    fail(f)
    assert breaker.state is OPEN
    assert breaker.retry_after() == 0.0
    assert f("ok") == "ok"
    assert breaker.state is CLOSED


def test_excluded_errors_count_as_successes_and_are_reraised_unchanged(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    errors: list[BaseException] = []

    @circuit_breaker(
        name="ex",
        failure_threshold=2,
        recovery_timeout=1,
        exclude=LookupError,
        clock=clock,
        store=store,
    )
    def lookup(outcome: str) -> None:
        error: Exception = NotFound("nope") if outcome == "missing" else Boom("down")
        errors.append(error)
        raise error

    breaker = get_breaker("ex", store)
    with pytest.raises(Boom):
        lookup("fail")
    assert breaker.failures == 1
    with pytest.raises(NotFound) as info:
        lookup("missing")
    assert info.value is errors[-1]
    assert not getattr(info.value, "__notes__", None)
    assert breaker.failures == 0
    for _ in range(5):
        with pytest.raises(NotFound):
            lookup("missing")
    assert breaker.state is CLOSED

    with pytest.raises(Boom):
        lookup("fail")
    with pytest.raises(Boom):
        lookup("fail")
    assert breaker.state is OPEN
    clock.advance(1)
    with pytest.raises(NotFound):
        lookup("missing")  # the probe got an answer: the dependency is back
    assert breaker.state is CLOSED


def test_operator_reset_and_force_open(clock: FakeClock, store: MemoryBreakerStore) -> None:
    f, breaker, ran = make(clock, store, failure_threshold=3, recovery_timeout=20)
    fail(f, 2)
    breaker.reset()
    assert (breaker.state, breaker.failures) == (CLOSED, 0)
    breaker.force_open()
    assert breaker.state is OPEN
    ran.clear()
    assert refused(f).retry_after == 20.0
    assert ran == []
    breaker.reset()
    assert f("ok") == "ok"


def test_snapshot_is_plain_data_and_counts_generations(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    f, breaker, _ = make(clock, store, failure_threshold=2, recovery_timeout=4)
    assert breaker.snapshot() == BreakerSnapshot("dep", CLOSED, 0, 0, None, 0)
    fail(f)
    assert breaker.snapshot() == BreakerSnapshot("dep", CLOSED, 1, 0, None, 0)
    fail(f)
    assert breaker.snapshot() == BreakerSnapshot("dep", OPEN, 0, 0, clock.now, 1)
    clock.advance(4)
    f("ok")
    assert breaker.snapshot() == BreakerSnapshot("dep", CLOSED, 0, 0, None, 3)
    assert breaker.snapshot().state == "closed"  # a str enum: JSON-ready as is
    assert repr(breaker) == "<CircuitBreaker 'dep' closed failures=0 successes=0>"


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.usefixtures("no_gc")
@pytest.mark.parametrize("when", ["closed", "probe"])
def test_a_failure_is_freed_without_the_garbage_collector(
    clock: FakeClock, store: MemoryBreakerStore, when: str
) -> None:
    """No frame of ours keeps the error its own traceback points back to."""
    f, breaker, _ = make(clock, store, failure_threshold=2, recovery_timeout=1)

    @circuit_breaker(name="dep", failure_threshold=2, recovery_timeout=1, clock=clock, store=store)
    async def af(outcome: str) -> str:
        await asyncio.sleep(0)
        return outcome_of(outcome)

    if when == "probe":
        breaker.force_open()
        clock.advance(1)
    try:
        f("fail")
    except Boom as error:
        sync_ref = weakref.ref(error)
    if when == "probe":
        breaker.force_open()
        clock.advance(1)
    coro = af("fail")
    try:
        while True:  # by hand: asyncio.run keeps a failed task's error in a cycle itself
            coro.send(None)
    except Boom as error:
        async_ref = weakref.ref(error)
    del coro
    assert sync_ref() is None
    assert async_ref() is None


# ---------------------------------------------------------------------- the store


def test_every_transition_is_published_once_in_order(clock: FakeClock) -> None:
    store = RecordingStore()
    f, breaker, _ = make(clock, store, failure_threshold=1, recovery_timeout=2)
    f("ok")
    fail(f)
    clock.advance(2)
    f("ok")
    breaker.force_open()
    breaker.reset()
    assert [(s.state, s.generation) for s in store.published] == [
        (OPEN, 1),
        (HALF_OPEN, 2),
        (CLOSED, 3),
        (OPEN, 4),
        (CLOSED, 5),
    ]
    assert store.published[0].opened_at == 1000.0


def test_a_remote_snapshot_is_applied_when_newer_and_not_republished(clock: FakeClock) -> None:
    store = RecordingStore()
    changes: list[tuple[str, CircuitState, CircuitState]] = []
    f, breaker, ran = make(
        clock,
        store,
        failure_threshold=2,
        recovery_timeout=10,
        on_state_change=lambda *change: changes.append(change),
    )
    remote = BreakerSnapshot("dep", OPEN, 0, 0, clock.now - 4, 7)
    assert store.apply(remote) is True
    assert store.published == []
    assert changes == [("dep", CLOSED, OPEN)]
    assert breaker.snapshot() == remote
    assert refused(f).retry_after == 6.0
    assert ran == []
    assert store.apply(replace(remote, state=CLOSED, opened_at=None)) is False  # not newer
    assert breaker.state is OPEN
    assert store.apply(replace(remote, name="other")) is False  # no such breaker here
    with pytest.raises(ValueError, match="'other' applied to breaker 'dep'"):
        breaker.apply(replace(remote, name="other"))
    decoded = BreakerSnapshot("dep", "closed", 1, 0, None, 8)  # type: ignore[arg-type]
    assert store.apply(decoded) is True
    assert breaker.state is CLOSED  # the enum member, which the fast path compares by identity
    assert changes[-1] == ("dep", OPEN, CLOSED)
    assert (breaker.state, breaker.failures) == (CLOSED, 1)
    fail(f)
    assert store.published[-1].generation == 9  # our next transition follows the remote one


def test_a_probe_of_a_replaced_generation_is_ignored(clock: FakeClock) -> None:
    store = MemoryBreakerStore()
    gate: list[str] = []

    @circuit_breaker(name="gen", failure_threshold=1, recovery_timeout=1, clock=clock, store=store)
    async def slow() -> str:
        await _Suspend()
        if gate:
            raise Boom("late")
        return "ok"

    breaker = get_breaker("gen", store)
    breaker.force_open()
    clock.advance(1)
    probe = slow()
    probe.send(None)
    assert breaker.state is HALF_OPEN
    store.apply(BreakerSnapshot("gen", CLOSED, 0, 0, None, breaker.snapshot().generation + 1))
    gate.append("fail")
    with pytest.raises(Boom):
        probe.send(None)
    assert (breaker.state, breaker.failures) == (CLOSED, 0)


def test_a_failing_store_publish_is_logged_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenStore(MemoryBreakerStore):
        def publish(self, snapshot: BreakerSnapshot) -> None:
            raise OSError("kv unavailable")

    f, breaker, _ = make(clock, BrokenStore(), failure_threshold=1)
    with caplog.at_level(logging.WARNING, logger="naq_resilience"), pytest.raises(Boom) as info:
        f("fail")
    assert breaker.state is OPEN
    assert "failed to publish" in caplog.text
    assert "kv unavailable" in info.value.__notes__[0]


def test_store_must_implement_the_protocol() -> None:
    with pytest.raises(TypeError, match="store must implement BreakerStore"):
        circuit_breaker(store=object())  # type: ignore[call-overload]
    assert isinstance(MemoryBreakerStore(), BreakerStore)


# ---------------------------------------------------------------------- names and sharing


def test_the_same_name_is_one_breaker(clock: FakeClock, store: MemoryBreakerStore) -> None:
    shared: dict[str, Any] = {"name": "payments", "failure_threshold": 2}

    @circuit_breaker(clock=clock, store=store, **shared)
    def charge() -> None:
        raise Boom("charge")

    @circuit_breaker(clock=clock, store=store, **shared)
    async def refund() -> str:
        return "refunded"

    with pytest.raises(Boom):
        charge()
    assert get_breaker("payments", store).failures == 1
    with pytest.raises(Boom):
        charge()
    with pytest.raises(CircuitBreakerOpenError):
        asyncio.run(refund())
    assert policies_of(charge) == policies_of(refund)


def test_default_name_is_module_and_qualname() -> None:
    @circuit_breaker
    def fetch_default_named() -> str:
        return "ok"

    name = f"{__name__}:test_default_name_is_module_and_qualname.<locals>.fetch_default_named"
    (policy,) = policies_of(fetch_default_named)
    assert isinstance(policy, BreakerPolicy)
    assert policy == BreakerPolicy(name, 5, 60.0, 1, 1, ())
    assert fetch_default_named() == "ok"
    assert get_breaker(name).name == name


def test_get_breaker_names_the_fix_for_an_unknown_name(store: MemoryBreakerStore) -> None:
    with pytest.raises(KeyError, match="no circuit breaker named 'nope'"):
        get_breaker("nope", store)


def test_conflicting_settings_for_one_name_are_refused(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    def first() -> None: ...

    def second() -> None: ...

    circuit_breaker(
        name="db", failure_threshold=5, exclude=(KeyError, ValueError), clock=clock, store=store
    )(first)
    with pytest.raises(ValueError, match="name") as info:
        circuit_breaker(
            name="db", failure_threshold=3, recovery_timeout=10, clock=clock, store=store
        )(second)
    message = str(info.value)
    assert "already exists with failure_threshold=5, recovery_timeout=60.0" in message
    assert "asks for failure_threshold=3, recovery_timeout=10.0" in message
    assert "exclude=(KeyError, ValueError)" in message
    assert "exclude=()" in message

    # The same settings (the order of exclude does not matter) share the breaker.
    same = circuit_breaker(
        name="db", failure_threshold=5, exclude=[ValueError, KeyError], clock=clock, store=store
    )(second)
    (policy,) = policies_of(same)
    assert isinstance(policy, BreakerPolicy)
    assert policy.exclude == (ValueError, KeyError)

    with pytest.raises(ValueError, match="clock="):
        circuit_breaker(name="db", exclude=(KeyError, ValueError), store=store)(second)


def test_the_same_breaker_cannot_be_stacked_twice(store: MemoryBreakerStore) -> None:
    def job() -> str:
        return "done"

    once = circuit_breaker(name="twice", store=store)(job)
    with pytest.raises(ValueError, match="count every failure twice"):
        circuit_breaker(name="twice", store=store)(once)
    both = circuit_breaker(name="outer", store=store)(once)
    assert [p.name for p in policies_of(both)] == ["outer", "twice"]  # type: ignore[attr-defined]
    assert both() == "done"


def test_callables_without_a_qualname_need_a_name(store: MemoryBreakerStore) -> None:
    import functools

    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="pass name="):
        circuit_breaker(store=store)(functools.partial(add, 1))
    named = circuit_breaker(name="adder", store=store)(functools.partial(add, 1))
    assert named(2) == 3


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"failure_threshold": 0}, ValueError, "failure_threshold must be >= 1, got 0"),
        ({"failure_threshold": 2.5}, TypeError, "failure_threshold must be a whole number"),
        ({"failure_threshold": True}, TypeError, "failure_threshold must be a whole number"),
        ({"success_threshold": -1}, ValueError, "success_threshold must be >= 1"),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls must be >= 1"),
        ({"recovery_timeout": -1}, ValueError, "recovery_timeout must be >= 0 seconds"),
        ({"recovery_timeout": float("inf")}, ValueError, "for a long pause give a large"),
        ({"recovery_timeout": float("nan")}, ValueError, "recovery_timeout must be a finite"),
        ({"recovery_timeout": "60"}, TypeError, "recovery_timeout must be a number of seconds"),
        ({"exclude": "KeyError"}, TypeError, "exclude"),
        ({"exclude": [KeyError, 3]}, TypeError, "exclude must contain exception classes"),
        ({"exclude": 3}, TypeError, "exclude must be an exception class or a tuple"),
        ({"name": ""}, ValueError, "name must not be empty"),
        ({"name": 3}, TypeError, "name must be a string or None"),
        ({"on_state_change": "log"}, TypeError, "on_state_change must be callable"),
        ({"clock": 3.0}, TypeError, "clock must be a callable"),
    ],
)
def test_arguments_are_validated_at_decoration_time(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        circuit_breaker(**kwargs)


def test_an_async_state_callback_is_refused() -> None:
    async def notify(name: str, old: CircuitState, new: CircuitState) -> None: ...

    with pytest.raises(TypeError, match="cannot be async"):
        circuit_breaker(on_state_change=notify)


def test_non_functions_and_generators_are_refused(store: MemoryBreakerStore) -> None:
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="cannot wrap generator function"):
        circuit_breaker(name="g", store=store)(gen)
    with pytest.raises(TypeError, match="decorates a function"):
        circuit_breaker(name="n", store=store)(42)  # type: ignore[arg-type]
    assert store.get("g") is None  # nothing registered by a refused decoration


# ---------------------------------------------------------------------- async and methods


class _Suspend:
    """Suspend a coroutine once, so a test can drive it by hand with `send(None)`."""

    def __await__(self) -> Generator[None, None, None]:
        yield None


def test_async_failures_are_counted_after_the_await(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    @circuit_breaker(name="a", failure_threshold=2, clock=clock, store=store)
    async def flaky() -> None:
        await asyncio.sleep(0)
        raise Boom("after the await")

    breaker = get_breaker("a", store)
    coro = flaky()
    assert breaker.failures == 0  # creating the coroutine is not a success either
    with pytest.raises(Boom):
        asyncio.run(coro)
    assert breaker.failures == 1
    with pytest.raises(Boom):
        asyncio.run(flaky())
    assert breaker.state is OPEN


def test_async_success_resets_failures_and_probes_close(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    outcomes = ["fail", "ok", "fail", "fail", "ok"]

    @circuit_breaker(name="a2", failure_threshold=2, recovery_timeout=3, clock=clock, store=store)
    async def job() -> str:
        await asyncio.sleep(0)
        if outcomes.pop(0) == "fail":
            raise Boom("x")
        return "ok"

    breaker = get_breaker("a2", store)

    async def scenario() -> None:
        with pytest.raises(Boom):
            await job()
        assert await job() == "ok"
        assert breaker.failures == 0
        for _ in range(2):
            with pytest.raises(Boom):
                await job()
        with pytest.raises(CircuitBreakerOpenError) as info:
            await job()
        assert info.value.retry_after == 3.0
        clock.advance(3)
        assert await job() == "ok"

    asyncio.run(scenario())
    assert breaker.state is CLOSED
    assert outcomes == []


def test_a_cancelled_probe_frees_its_slot_without_counting(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    @circuit_breaker(name="c", failure_threshold=1, recovery_timeout=1, clock=clock, store=store)
    async def probe() -> str:
        await _Suspend()
        return "ok"

    breaker = get_breaker("c", store)
    breaker.force_open()
    clock.advance(1)
    first = probe()
    first.send(None)
    assert breaker.retry_after() == HALF_OPEN_RETRY_AFTER
    with pytest.raises(asyncio.CancelledError):
        first.throw(asyncio.CancelledError())
    snap = breaker.snapshot()
    assert (snap.state, snap.successes) == (HALF_OPEN, 0)
    assert breaker.retry_after() == 0.0
    second = probe()
    second.send(None)
    with pytest.raises(StopIteration):
        second.send(None)
    assert breaker.state is CLOSED


def test_an_interrupted_sync_probe_frees_its_slot(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    class Interrupt(BaseException):
        pass

    @circuit_breaker(name="i", failure_threshold=1, recovery_timeout=1, clock=clock, store=store)
    def job(interrupt: bool) -> str:
        if interrupt:
            raise Interrupt
        return "ok"

    breaker = get_breaker("i", store)
    breaker.force_open()
    clock.advance(1)
    with pytest.raises(Interrupt):
        job(True)
    assert (breaker.state, breaker.retry_after()) == (HALF_OPEN, 0.0)
    assert job(False) == "ok"
    assert breaker.state is CLOSED


class Client:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    @circuit_breaker(failure_threshold=2, store=MemoryBreakerStore())
    def get(self, path: str) -> str:
        if self.fail:
            raise Boom(path)
        return f"GET {path}"

    @circuit_breaker(name="client.aget", failure_threshold=1)
    async def aget(self, path: str) -> str:
        await asyncio.sleep(0)
        if self.fail:
            raise Boom(path)
        return f"AGET {path}"

    @circuit_breaker(name="client.make")
    @classmethod
    def make(cls) -> Client:
        return cls(False)

    @circuit_breaker(name="client.version")
    @staticmethod
    def version() -> str:
        return "1"


def test_methods_classmethods_and_staticmethods() -> None:
    assert Client(False).get("/a") == "GET /a"
    with pytest.raises(Boom):
        Client(True).get("/b")
    (policy,) = policies_of(Client.get)
    assert policy.name == f"{__name__}:Client.get"  # type: ignore[attr-defined]
    with pytest.raises(Boom):
        Client(True).get("/c")  # a second instance shares the method's breaker
    with pytest.raises(CircuitBreakerOpenError):
        Client(False).get("/d")

    assert asyncio.run(Client(False).aget("/x")) == "AGET /x"
    assert isinstance(Client.make(), Client)
    assert Client.version() == "1"
    assert Client(False).version() == "1"
    assert [p.name for p in policies_of(Client.__dict__["make"])] == ["client.make"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- on_state_change


def test_on_state_change_sees_every_transition_of_the_name(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    seen: list[tuple[str, CircuitState, CircuitState]] = []
    also: list[CircuitState] = []
    f, breaker, _ = make(
        clock,
        store,
        failure_threshold=1,
        recovery_timeout=1,
        success_threshold=1,
        on_state_change=lambda *change: seen.append(change),
    )
    circuit_breaker(
        name="dep",
        failure_threshold=1,
        recovery_timeout=1,
        clock=clock,
        store=store,
        on_state_change=lambda name, old, new: also.append(new),
    )(lambda: None)
    fail(f)
    clock.advance(1)
    fail(f)
    clock.advance(1)
    f("ok")
    breaker.force_open()
    breaker.reset()
    breaker.reset()  # no change of state, no call
    assert seen == [
        ("dep", CLOSED, OPEN),
        ("dep", OPEN, HALF_OPEN),
        ("dep", HALF_OPEN, OPEN),
        ("dep", OPEN, HALF_OPEN),
        ("dep", HALF_OPEN, CLOSED),
        ("dep", CLOSED, OPEN),
        ("dep", OPEN, CLOSED),
    ]
    assert also == [new for _, _, new in seen]


def test_a_raising_callback_is_logged_and_noted_and_the_breaker_goes_on(
    clock: FakeClock, store: MemoryBreakerStore, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(name: str, old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError(f"pager down ({new})")

    f, breaker, _ = make(
        clock, store, failure_threshold=1, recovery_timeout=1, on_state_change=broken
    )
    with caplog.at_level(logging.WARNING, logger="naq_resilience"):
        with pytest.raises(Boom) as info:
            f("fail")
        assert breaker.state is OPEN
        assert info.value.__notes__ == [
            "naq-resilience circuit breaker 'dep': on_state_change callback "
            f"{broken!r} failed: RuntimeError('pager down (open)')"
        ]
        clock.advance(1)
        assert f("ok") == "ok"  # OPEN -> HALF_OPEN -> CLOSED, both callbacks fail
    assert breaker.state is CLOSED
    records = [r for r in caplog.records if r.name == "naq_resilience"]
    assert [r.levelno for r in records] == [logging.WARNING] * 3
    assert records[0].exc_info is not None
    assert "pager down (half_open)" in records[1].getMessage()


def test_a_callback_runs_outside_the_lock(clock: FakeClock, store: MemoryBreakerStore) -> None:
    inside: list[object] = []

    def peek(name: str, old: CircuitState, new: CircuitState) -> None:
        # From another thread, so that a lock still held here shows up as a timeout
        # rather than a deadlock of the test itself.
        breaker = get_breaker(name, store)
        reader = threading.Thread(
            target=lambda: inside.append((breaker.snapshot().state, breaker.retry_after())),
            daemon=True,
        )
        reader.start()
        reader.join(timeout=10)

    f, _, _ = make(clock, store, failure_threshold=1, recovery_timeout=7, on_state_change=peek)
    fail(f)
    assert inside == [(OPEN, 7.0)]


# ---------------------------------------------------------------------- with @retry


def test_retry_above_a_breaker_waits_retry_after(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    calls: list[float] = []

    @retry(max_retries=3, retry_delay=0, sleep=clock.sleep)
    @circuit_breaker(name="r", failure_threshold=1, recovery_timeout=30, clock=clock, store=store)
    def flaky() -> str:
        calls.append(clock.now)
        if len(calls) == 1:
            raise ConnectionError("down")
        return "ok"

    assert flaky() == "ok"
    assert clock.sleeps == [30.0]
    assert calls == [1000.0, 1030.0]
    assert [type(p).__name__ for p in policies_of(flaky)] == ["RetryPolicy", "BreakerPolicy"]


def test_async_retry_above_a_breaker_waits_retry_after(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    calls: list[float] = []

    @retry(max_retries=3, retry_delay=0, sleep=clock.async_sleep)
    @circuit_breaker(name="ar", failure_threshold=1, recovery_timeout=12, clock=clock, store=store)
    async def flaky() -> str:
        await asyncio.sleep(0)
        calls.append(clock.now)
        if len(calls) == 1:
            raise ConnectionError("down")
        return "ok"

    clock.advance(0.5)
    assert asyncio.run(flaky()) == "ok"
    assert clock.sleeps == [12.0]
    assert calls == [1000.5, 1012.5]


def test_an_open_error_of_your_own_needs_no_retry_after() -> None:
    """NAQ's guide raises it from a breaker class of its own, with a message only."""
    error = CircuitBreakerOpenError("Circuit breaker is open")
    assert str(error) == "Circuit breaker is open"
    assert (error.retry_after, error.name) == (None, None)
    assert isinstance(error, Retryable)
    assert str(CircuitBreakerOpenError()) == "circuit breaker is open"


def test_the_breakers_own_error_says_who_and_when(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    @circuit_breaker(name="says", failure_threshold=1, recovery_timeout=9, clock=clock, store=store)
    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        down()
    error = refused(down)
    assert (error.name, error.retry_after) == ("says", 9.0)
    assert str(error) == "circuit breaker 'says' is open; retry in 9.000s"


def test_retry_above_an_open_error_without_retry_after_waits_as_its_schedule_says(
    clock: FakeClock,
) -> None:
    calls: list[float] = []

    @retry(max_retries=3, retry_delay=2, retry_strategy="fixed", jitter=None, sleep=clock.sleep)
    def guarded() -> str:
        calls.append(clock.now)
        if len(calls) == 1:
            raise CircuitBreakerOpenError("Circuit breaker is open")
        return "ok"

    assert guarded() == "ok"
    assert clock.sleeps == [2.0]


# ---------------------------------------------------------------------- concurrency


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as possible so lost updates would actually happen."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.usefixtures("busy_switching")
def test_threads_count_every_failure_exactly(clock: FakeClock, store: MemoryBreakerStore) -> None:
    threads, per_thread = 8, 400
    f, breaker, _ = make(clock, store, failure_threshold=threads * per_thread + 1)
    barrier = threading.Barrier(threads)
    raised = [0] * threads

    def worker(i: int) -> None:
        barrier.wait(timeout=30)
        for _ in range(per_thread):
            try:
                f("fail")
            except Boom:
                raised[i] += 1

    run_threads(threads, worker)
    assert sum(raised) == threads * per_thread
    assert (breaker.state, breaker.failures) == (CLOSED, threads * per_thread)


@pytest.mark.usefixtures("busy_switching")
def test_threads_open_the_breaker_exactly_once(clock: FakeClock) -> None:
    """Many rounds, because one round gives a lost race only a small chance to show.

    In each round 8 threads fail 20 times each against a threshold of 100, so the
    breaker trips while every thread is hammering it; then it is reset for the next.
    """
    store = RecordingStore()
    threads, per_thread, threshold, rounds = 8, 20, 100, 250
    transitions: list[CircuitState] = []
    f, breaker, ran = make(
        clock,
        store,
        failure_threshold=threshold,
        on_state_change=lambda name, old, new: transitions.append(new),
    )
    start, end = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
    booms = [0] * threads
    refusals = [0] * threads

    def worker(i: int) -> None:
        for _ in range(rounds):
            start.wait(timeout=30)
            for _ in range(per_thread):
                try:
                    f("fail")
                except Boom:
                    booms[i] += 1
                except CircuitBreakerOpenError:
                    refusals[i] += 1
            end.wait(timeout=30)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    opened_per_round = []
    for _ in range(rounds):
        start.wait(timeout=30)
        end.wait(timeout=30)
        opened_per_round.append(transitions.count(OPEN))
        breaker.reset()
    for t in workers:
        t.join(timeout=30)
    assert opened_per_round == list(range(1, rounds + 1))
    assert transitions == [OPEN, CLOSED] * rounds
    assert [s.state for s in store.published] == [OPEN, CLOSED] * rounds
    assert sum(booms) + sum(refusals) == rounds * threads * per_thread
    assert sum(booms) == len(ran) >= rounds * threshold
    assert sum(refusals) > 0


def test_threads_are_not_serialized_through_a_closed_breaker(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    threads = 8
    barrier = threading.Barrier(threads)

    @circuit_breaker(name="par", clock=clock, store=store)
    def meet() -> int:
        # Every thread must be inside at once for this to return; a lock around the
        # call would leave the barrier waiting for threads that cannot enter.
        return barrier.wait(timeout=30)

    results: list[int] = []

    def worker(i: int) -> None:
        results.append(meet())

    run_threads(threads, worker)
    assert sorted(results) == list(range(threads))
    assert get_breaker("par", store).failures == 0


def test_threads_on_a_half_open_breaker_admit_exactly_max_probes(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    threads, max_probes = 8, 2
    release = threading.Event()
    entered: list[int] = []
    refused_after: list[float] = []

    @circuit_breaker(
        name="tprobe",
        failure_threshold=1,
        recovery_timeout=1,
        half_open_max_calls=max_probes,
        success_threshold=max_probes,
        clock=clock,
        store=store,
    )
    def probe(i: int) -> None:
        entered.append(i)
        everyone.wait(timeout=30)
        assert release.wait(timeout=30)

    breaker = get_breaker("tprobe", store)
    breaker.force_open()
    clock.advance(1)
    barrier = threading.Barrier(threads)
    everyone = threading.Barrier(threads + 1)  # probes inside the function, the rest refused

    def worker(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            probe(i)
        except CircuitBreakerOpenError as error:
            refused_after.append(error.retry_after)
            everyone.wait(timeout=30)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    try:
        everyone.wait(timeout=30)
        assert len(entered) == max_probes
        assert refused_after == [HALF_OPEN_RETRY_AFTER] * (threads - max_probes)
    finally:
        release.set()
        for t in workers:
            t.join(timeout=30)
    assert breaker.state is CLOSED


def test_fifty_tasks_on_a_half_open_breaker_admit_exactly_max_probes(
    clock: FakeClock, store: MemoryBreakerStore
) -> None:
    max_probes = 3
    entered: list[int] = []

    async def scenario() -> None:
        release = asyncio.Event()

        @circuit_breaker(
            name="aprobe",
            failure_threshold=1,
            recovery_timeout=5,
            half_open_max_calls=max_probes,
            success_threshold=max_probes,
            clock=clock,
            store=store,
        )
        async def probe(i: int) -> int:
            entered.append(i)
            await release.wait()
            return i

        breaker = get_breaker("aprobe", store)
        breaker.force_open()
        clock.advance(5)
        tasks = [asyncio.create_task(probe(i)) for i in range(50)]
        for _ in range(100):
            if len(entered) + sum(t.done() for t in tasks) == 50:
                break
            await asyncio.sleep(0)
        assert len(entered) == max_probes
        assert breaker.state is HALF_OPEN
        finished = [t for t in tasks if t.done()]
        assert len(finished) == 50 - max_probes
        for task in finished:
            error = task.exception()
            assert isinstance(error, CircuitBreakerOpenError)
            assert error.retry_after == HALF_OPEN_RETRY_AFTER
        release.set()
        probes = [t for t in tasks if not t.done()]
        assert sorted(await asyncio.gather(*probes)) == sorted(entered)
        assert breaker.state is CLOSED

    asyncio.run(scenario())


# ---------------------------------------------------------------------- model check


class Model:
    """The breaker as the brief states it, written plainly, to compare against."""

    def __init__(
        self,
        failure_threshold: int,
        recovery_timeout: float,
        success_threshold: int,
        half_open_max_calls: int,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.success_threshold = success_threshold
        self.half_open_max_calls = half_open_max_calls
        self.state = CLOSED
        self.failures = self.successes = self.probes = self.generation = 0
        self.opened_at: float | None = None
        self.changes: list[tuple[str, CircuitState, CircuitState]] = []

    def move(self, state: CircuitState, now: float) -> None:
        if state is not self.state:
            self.changes.append(("m", self.state, state))
        if state is OPEN:
            self.opened_at = now
        elif state is CLOSED:
            self.opened_at = None
        self.state = state
        self.failures = self.successes = self.probes = 0
        self.generation += 1

    def admit(self, now: float) -> tuple[str, float]:
        """("closed", 0), ("probe", generation) or ("refused", retry_after)."""
        if self.state is CLOSED:
            return "closed", 0
        if self.state is OPEN:
            assert self.opened_at is not None
            if now < self.opened_at + self.recovery_timeout:
                return "refused", self.opened_at + self.recovery_timeout - now
            self.move(HALF_OPEN, now)
        if self.probes >= self.half_open_max_calls:
            return "refused", HALF_OPEN_RETRY_AFTER
        self.probes += 1
        return "probe", self.generation

    def finish(self, kind: str, ticket: float, outcome: str, now: float) -> None:
        ok = outcome != "fail"
        if kind == "closed":
            if self.state is not CLOSED:
                return
            self.failures = 0 if ok else self.failures + 1
            if self.failures >= self.failure_threshold:
                self.move(OPEN, now)
        elif ticket == self.generation:
            self.probes -= 1
            if not ok:
                self.move(OPEN, now)
            else:
                self.successes += 1
                if self.successes >= self.success_threshold:
                    self.move(CLOSED, now)

    def cancel(self, kind: str, ticket: float) -> None:
        if kind == "probe" and ticket == self.generation:
            self.probes -= 1

    def retry_after(self, now: float) -> float:
        if self.state is OPEN:
            assert self.opened_at is not None
            return max(0.0, self.opened_at + self.recovery_timeout - now)
        if self.state is HALF_OPEN and self.probes >= self.half_open_max_calls:
            return HALF_OPEN_RETRY_AFTER
        return 0.0


OUTCOMES = st.sampled_from(["ok", "fail", "missing"])


class BreakerMachine(RuleBasedStateMachine):
    """Random successes, failures, excluded errors, overlapping async calls and clock steps.

    A sync and an async function share the breaker by name. Async calls are driven by
    hand (`send(None)`), so several can be in flight at once, deterministically.
    """

    inflight = Bundle("inflight")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = MemoryBreakerStore()
        self.coros: list[Coroutine[Any, Any, str]] = []

    @initialize(
        failure_threshold=st.integers(1, 4),
        recovery_timeout=st.sampled_from([0, 1, 2.5, 10]),
        success_threshold=st.integers(1, 3),
        half_open_max_calls=st.integers(1, 3),
    )
    def setup(
        self,
        failure_threshold: int,
        recovery_timeout: float,
        success_threshold: int,
        half_open_max_calls: int,
    ) -> None:
        self.model = Model(
            failure_threshold, recovery_timeout, success_threshold, half_open_max_calls
        )
        self.changes: list[tuple[str, CircuitState, CircuitState]] = []
        options: dict[str, Any] = {
            "name": "m",
            "failure_threshold": failure_threshold,
            "recovery_timeout": recovery_timeout,
            "success_threshold": success_threshold,
            "half_open_max_calls": half_open_max_calls,
            "exclude": LookupError,
            "clock": self.clock,
            "store": self.store,
        }
        self.sync_call = circuit_breaker(
            on_state_change=lambda *change: self.changes.append(change), **options
        )(outcome_of)

        @circuit_breaker(**options)
        async def held(box: list[str]) -> str:
            await _Suspend()
            return outcome_of(box[0])

        self.held = held
        self.breaker = get_breaker("m", self.store)

    def expect_refusal(self, call: Callable[[], object], retry_after: float) -> None:
        with pytest.raises(CircuitBreakerOpenError) as info:
            call()
        assert info.value.retry_after == pytest.approx(retry_after)

    @rule(outcome=OUTCOMES)
    def call(self, outcome: str) -> None:
        kind, ticket = self.model.admit(self.clock.now)
        if kind == "refused":
            self.expect_refusal(lambda: self.sync_call(outcome), ticket)
            return
        if outcome == "ok":
            assert self.sync_call(outcome) == "ok"
        else:
            with pytest.raises((Boom, NotFound)):
                self.sync_call(outcome)
        self.model.finish(kind, ticket, outcome, self.clock.now)

    @rule(target=inflight)
    def begin(self) -> object:
        kind, ticket = self.model.admit(self.clock.now)
        box: list[str] = []
        coro = self.held(box)
        if kind == "refused":
            self.expect_refusal(lambda: coro.send(None), ticket)
            return multiple()
        coro.send(None)
        self.coros.append(coro)
        return (coro, box, kind, ticket)

    @rule(call=consumes(inflight), outcome=OUTCOMES)
    def end(self, call: Any, outcome: str) -> None:
        coro, box, kind, ticket = call
        box.append(outcome)
        with pytest.raises(StopIteration if outcome == "ok" else (Boom, NotFound)):
            coro.send(None)
        self.model.finish(kind, ticket, outcome, self.clock.now)

    @rule(call=consumes(inflight))
    def cancel(self, call: Any) -> None:
        coro, _, kind, ticket = call
        with pytest.raises(asyncio.CancelledError):
            coro.throw(asyncio.CancelledError())
        self.model.cancel(kind, ticket)

    @rule(seconds=st.sampled_from([0.5, 1, 2.5, 4, 10]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["reset", "force_open"]))
    def operator(self, action: str) -> None:
        getattr(self.breaker, action)()
        self.model.move(CLOSED if action == "reset" else OPEN, self.clock.now)

    @invariant()
    def matches_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        snap = self.breaker.snapshot()
        model = self.model
        assert (snap.state, snap.failures, snap.successes, snap.generation) == (
            model.state,
            model.failures,
            model.successes,
            model.generation,
        )
        assert snap.opened_at == model.opened_at
        assert self.breaker.retry_after() == pytest.approx(model.retry_after(self.clock.now))
        assert [(old, new) for _, old, new in self.changes] == [
            (old, new) for _, old, new in model.changes
        ]

    def teardown(self) -> None:
        for coro in self.coros:
            coro.close()


BreakerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_breaker_matches_the_model = BreakerMachine.TestCase
