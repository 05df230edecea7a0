"""`@circuit_breaker`: stop calling a dependency that keeps failing, then probe it.

Three states. CLOSED runs every call and counts consecutive failures; at
`failure_threshold` the breaker OPENs and refuses calls at once with
`CircuitBreakerOpenError`, whose `retry_after` says when a probe will be allowed (so
`@retry` above a breaker waits instead of burning attempts). After `recovery_timeout`
the next call moves it to HALF_OPEN: up to `half_open_max_calls` probes run at once;
`success_threshold` probe successes close it, one probe failure reopens it.

Why it is shaped this way:

* The success path in CLOSED with no failures on record reads two attributes and
  calls through: no lock, no clock read, no allocation. Everything else (counting,
  admitting probes, transitions) takes a `threading.Lock` for a few assignments, and
  never while the protected function runs, so threads are not serialized through it.
* Async functions are counted after the `await`, when the outcome is known.
* A probe slot is released even when the probe is cancelled or interrupted
  (`BaseException`), without counting it either way; otherwise a cancelled probe
  would wedge the breaker in HALF_OPEN for good.
* An outcome is only counted in the period that admitted the call: a probe admitted
  in one HALF_OPEN period carries that period's generation and is ignored once the
  breaker has moved on, and a call admitted in CLOSED is ignored unless the breaker
  is CLOSED when it finishes.
* Breakers are named, and one name is one breaker with one policy, shared by every
  function decorated with it. A `BreakerStore` hands the shared `CircuitBreaker` out;
  the in-process `MemoryBreakerStore` is the default. Every state transition goes
  through `CircuitBreaker._transition` and is handed to `BreakerStore.publish` as a
  plain `BreakerSnapshot`, and `BreakerStore.apply` takes one back, which is what a
  store backed by a NATS JetStream KV bucket needs (compare-and-set on publish, a
  watch that applies what other workers published). Counters between transitions
  stay local to the process: publishing every failure would cost a KV write per
  failing call.
"""

from __future__ import annotations

import enum
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, Protocol, TypeVar, overload, runtime_checkable

from naq_resilience.policies.classify import ExcTypes, exception_types
from naq_resilience.policies.durations import Duration, seconds
from naq_resilience.policies.errors import CircuitBreakerOpenError
from naq_resilience.policies.pipeline import (
    Args,
    AsyncRunner,
    Kwargs,
    Runner,
    Stage,
    _check_target,
    apply_stage,
    pipeline_of,
)

__all__ = [
    "HALF_OPEN_RETRY_AFTER",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerStore",
    "CircuitBreaker",
    "CircuitState",
    "MemoryBreakerStore",
    "circuit_breaker",
    "get_breaker",
]

P = ParamSpec("P")
R = TypeVar("R")
Clock = Callable[[], float]

logger = logging.getLogger("naq_resilience")

HALF_OPEN_RETRY_AFTER: Final = 0.1
"""`retry_after` for a call refused because every HALF_OPEN probe slot is taken.

Nobody knows when the probes in flight will finish, so there is no exact answer. Zero
would be dishonest (nothing will be let through right now) and would make `@retry`
spend its attempts back to back; `recovery_timeout` would be far too long if the
probes succeed a moment later. A tenth of a second is about one round trip to a slow
dependency: soon enough not to waste the recovery, long enough not to spin.
"""


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN

StateListener = Callable[[str, CircuitState, CircuitState], object]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The settings of one named breaker; every decorator using the name must agree."""

    name: str
    failure_threshold: int
    recovery_timeout: float
    success_threshold: int
    half_open_max_calls: int
    exclude: ExcTypes

    def differences(self, other: BreakerPolicy) -> tuple[str, str]:
        """Our settings and `other`'s, written out, for the ones that differ ("" if none).

        `exclude` is compared as a set: the order classes are listed in changes nothing.
        """
        ours: list[str] = []
        theirs: list[str] = []
        for field in (
            "failure_threshold",
            "recovery_timeout",
            "success_threshold",
            "half_open_max_calls",
            "exclude",
        ):
            mine, other_value = getattr(self, field), getattr(other, field)
            same = set(mine) == set(other_value) if field == "exclude" else mine == other_value
            if not same:
                ours.append(f"{field}={_show(mine)}")
                theirs.append(f"{field}={_show(other_value)}")
        return ", ".join(ours), ", ".join(theirs)


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, type):
        return value.__qualname__
    return repr(value)


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's shared state as plain data: what a store publishes and applies.

    `opened_at` is a reading of the breaker's clock (None while CLOSED).
    `generation` counts transitions; a store applies a snapshot only if it is newer
    than what the breaker has, so echoes of our own publications and snapshots that
    arrive out of order are ignored. Probes in flight are not part of it: they belong
    to the process that admitted them, and a crashed worker must not leak a slot.
    """

    name: str
    state: CircuitState
    failures: int
    successes: int
    opened_at: float | None
    generation: int


@runtime_checkable
class BreakerStore(Protocol):
    """Hands out the one `CircuitBreaker` for a name, and carries its transitions.

    `breaker` creates the breaker for `policy.name` or returns the existing one,
    raising `ValueError` if that one was created with different settings or clock.
    `publish` is called by the breaker after each of its own transitions, outside
    its lock; it must not block (a KV-backed store queues the compare-and-set write).
    `apply` takes a snapshot published elsewhere and applies it to the local breaker
    of that name, returning whether anything changed.
    """

    def breaker(self, policy: BreakerPolicy, clock: Clock) -> CircuitBreaker: ...

    def get(self, name: str) -> CircuitBreaker | None: ...

    def publish(self, snapshot: BreakerSnapshot) -> None: ...

    def apply(self, snapshot: BreakerSnapshot) -> bool: ...


class CircuitBreaker:
    """The runtime state of one named breaker, shared by every function using the name.

    Get it with `get_breaker(name)`. `state` and `failures` are read without a lock
    (each is one attribute); OPEN turns into HALF_OPEN only when a call arrives after
    `recovery_timeout`, so `state` can say OPEN while `retry_after()` already says 0.
    """

    __slots__ = (
        "_failures",
        "_generation",
        "_listeners",
        "_lock",
        "_opened_at",
        "_probes",
        "_retry_at",
        "_state",
        "_store",
        "_successes",
        "clock",
        "name",
        "policy",
    )

    def __init__(self, policy: BreakerPolicy, clock: Clock, store: BreakerStore) -> None:
        self.name = policy.name
        self.policy = policy
        self.clock = clock
        self._store = store
        self._lock = threading.Lock()
        self._listeners: tuple[StateListener, ...] = ()
        self._state: CircuitState = _CLOSED
        self._failures = 0
        self._successes = 0
        self._probes = 0
        self._opened_at: float | None = None
        self._retry_at = 0.0
        self._generation = 0

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.name!r} {self._state.value} "
            f"failures={self._failures} successes={self._successes}>"
        )

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted in the current CLOSED period."""
        return self._failures

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            return self._snapshot()

    def retry_after(self) -> float:
        """Seconds until a call would be let through (0.0 if one would be now)."""
        with self._lock:
            if self._state is _OPEN:
                return max(0.0, self._retry_at - self.clock())
            if self._state is _HALF_OPEN and self._probes >= self.policy.half_open_max_calls:
                return HALF_OPEN_RETRY_AFTER
            return 0.0

    def reset(self) -> None:
        """Close the breaker and forget its counters (an operator's "it is fixed")."""
        with self._lock:
            change = self._transition(_CLOSED)
        self._announce(change)

    def force_open(self) -> None:
        """Open the breaker now, for a full `recovery_timeout` (an operator's "stop")."""
        with self._lock:
            change = self._transition(_OPEN)
        self._announce(change)

    def apply(self, snapshot: BreakerSnapshot) -> bool:
        """Take on state published by another process, if it is newer than ours.

        Not published again (it came from the store). Probes in flight here belong to
        the generation being replaced, so their outcomes will be ignored.
        """
        if snapshot.name != self.name:
            raise ValueError(
                f"snapshot of breaker {snapshot.name!r} applied to breaker {self.name!r}"
            )
        state = CircuitState(snapshot.state)  # decoded wire data may carry a plain str
        with self._lock:
            if snapshot.generation <= self._generation:
                return False
            old = self._state
            self._state = state
            self._failures = snapshot.failures
            self._successes = snapshot.successes
            self._probes = 0
            self._opened_at = snapshot.opened_at
            self._retry_at = (
                0.0
                if snapshot.opened_at is None
                else snapshot.opened_at + self.policy.recovery_timeout
            )
            self._generation = snapshot.generation
        if old is not state:
            self._tell_listeners(old, state, None)
        return True

    # ------------------------------------------------------------------ transitions
    def _snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(
            self.name,
            self._state,
            self._failures,
            self._successes,
            self._opened_at,
            self._generation,
        )

    def _transition(self, state: CircuitState) -> tuple[CircuitState, BreakerSnapshot]:
        """The one place this process changes the state (caller holds the lock).

        Returns what `_announce` needs once the lock is released.
        """
        old = self._state
        if state is _OPEN:
            now = self.clock()
            self._opened_at = now
            self._retry_at = now + self.policy.recovery_timeout
        elif state is _CLOSED:
            self._opened_at = None
        self._failures = self._successes = self._probes = 0
        self._generation += 1
        self._state = state
        return old, self._snapshot()

    def _announce(
        self, change: tuple[CircuitState, BreakerSnapshot], error: BaseException | None = None
    ) -> None:
        old, snapshot = change
        try:
            self._store.publish(snapshot)
        except Exception as exc:
            self._complain(f"store {self._store!r} failed to publish {snapshot}", exc, error)
        if old is not snapshot.state:
            self._tell_listeners(old, snapshot.state, error)

    def _tell_listeners(
        self, old: CircuitState, new: CircuitState, error: BaseException | None
    ) -> None:
        for listener in self._listeners:
            try:
                listener(self.name, old, new)
            except Exception as exc:
                self._complain(f"on_state_change callback {listener!r} failed", exc, error)

    def _complain(self, what: str, exc: Exception, error: BaseException | None) -> None:
        """A broken callback or store must not break the breaker, nor go unnoticed."""
        message = f"naq-resilience circuit breaker {self.name!r}: {what}: {exc!r}"
        logger.warning(message, exc_info=exc)
        if error is not None:
            error.add_note(message)

    def _add_listener(self, listener: StateListener) -> None:
        with self._lock:
            if listener not in self._listeners:
                self._listeners = (*self._listeners, listener)

    # ------------------------------------------------------------------ outcomes
    def _closed_success(self) -> None:
        with self._lock:
            if self._state is _CLOSED:
                self._failures = 0

    def _closed_error(self, error: Exception) -> None:
        if isinstance(error, self.policy.exclude):
            if self._failures:
                self._closed_success()
            return
        with self._lock:
            if self._state is not _CLOSED:
                return
            self._failures += 1
            if self._failures < self.policy.failure_threshold:
                return
            change = self._transition(_OPEN)
        self._announce(change, error)

    def _admit(self) -> int:
        """Let a call through a breaker that is not CLOSED, or refuse it.

        Returns the generation a probe belongs to, or -1 if the breaker closed in the
        meantime and the call should run as a normal one.
        """
        change = None
        ticket, refused = -1, 0.0
        with self._lock:
            state = self._state
            if state is _CLOSED:
                return -1
            if state is _OPEN:
                refused = self._retry_at - self.clock()
                if refused <= 0.0:
                    change = self._transition(_HALF_OPEN)
                    state = _HALF_OPEN
            if state is _HALF_OPEN:
                if self._probes < self.policy.half_open_max_calls:
                    self._probes += 1
                    ticket = self._generation
                else:
                    refused = HALF_OPEN_RETRY_AFTER
        if change is not None:
            self._announce(change)
        if ticket < 0:
            raise CircuitBreakerOpenError(
                f"circuit breaker {self.name!r} is open; retry in {refused:.3f}s",
                refused,
                name=self.name,
            )
        return ticket

    def _probe_done(self, ticket: int, error: Exception | None) -> None:
        ok = error is None or isinstance(error, self.policy.exclude)
        with self._lock:
            if ticket != self._generation:
                return
            self._probes -= 1
            if ok:
                self._successes += 1
                if self._successes < self.policy.success_threshold:
                    return
                change = self._transition(_CLOSED)
            else:
                change = self._transition(_OPEN)
        self._announce(change, error)

    def _probe_abandoned(self, ticket: int) -> None:
        with self._lock:
            if ticket == self._generation:
                self._probes -= 1


class BreakerStage(Stage):
    policy: BreakerPolicy

    def __init__(self, policy: BreakerPolicy, breaker: CircuitBreaker) -> None:
        self.policy = policy
        self.breaker = breaker

    def build_sync(self, inner: Runner, func: Callable[..., Any]) -> Runner:
        breaker = self.breaker
        closed = _CLOSED

        def run(args: Args, kwargs: Kwargs) -> Any:
            if breaker._state is not closed:
                return probe(args, kwargs)
            try:
                result = inner(args, kwargs)
            except Exception as exc:
                error = exc
            else:
                if breaker._failures:
                    breaker._closed_success()
                return result
            try:
                breaker._closed_error(error)
                raise error
            finally:
                del error  # its traceback holds this frame: no cycle left for the GC

        def probe(args: Args, kwargs: Kwargs) -> Any:
            ticket = breaker._admit()
            if ticket < 0:
                return run(args, kwargs)
            try:
                result = inner(args, kwargs)
            except Exception as exc:
                error = exc
            except BaseException:
                breaker._probe_abandoned(ticket)
                raise
            else:
                breaker._probe_done(ticket, None)
                return result
            try:
                breaker._probe_done(ticket, error)
                raise error
            finally:
                del error  # its traceback holds this frame: no cycle left for the GC

        return run

    def build_async(self, inner: AsyncRunner, func: Callable[..., Any]) -> AsyncRunner:
        breaker = self.breaker
        closed = _CLOSED

        async def run(args: Args, kwargs: Kwargs) -> Any:
            if breaker._state is not closed:
                return await probe(args, kwargs)
            try:
                result = await inner(args, kwargs)
            except Exception as exc:
                error = exc
            else:
                if breaker._failures:
                    breaker._closed_success()
                return result
            try:
                breaker._closed_error(error)
                raise error
            finally:
                del error  # its traceback holds this frame: no cycle left for the GC

        async def probe(args: Args, kwargs: Kwargs) -> Any:
            ticket = breaker._admit()
            if ticket < 0:
                return await run(args, kwargs)
            try:
                result = await inner(args, kwargs)
            except Exception as exc:
                error = exc
            except BaseException:
                breaker._probe_abandoned(ticket)
                raise
            else:
                breaker._probe_done(ticket, None)
                return result
            try:
                breaker._probe_done(ticket, error)
                raise error
            finally:
                del error  # its traceback holds this frame: no cycle left for the GC

        return run


class MemoryBreakerStore:
    """Breakers shared within this process: the default store.

    Within one process everyone who uses a name shares the object itself; the job
    worker `subscribe`s to the transitions to share them with other processes through
    a JetStream KV bucket, and `apply`s what the others publish.
    """

    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._subscribers: tuple[Callable[[BreakerSnapshot], None], ...] = ()

    def subscribe(self, callback: Callable[[BreakerSnapshot], None]) -> None:
        """Hear every transition of every breaker here (the job worker shares them).

        The callback runs on the thread that made the transition, outside the
        breaker's lock, and must not block.
        """
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

    def unsubscribe(self, callback: Callable[[BreakerSnapshot], None]) -> None:
        with self._lock:
            self._subscribers = tuple(c for c in self._subscribers if c is not callback)

    def names(self) -> tuple[str, ...]:
        return tuple(self._breakers)

    def __repr__(self) -> str:
        return f"<MemoryBreakerStore {sorted(self._breakers)}>"

    def breaker(self, policy: BreakerPolicy, clock: Clock) -> CircuitBreaker:
        with self._lock:
            existing = self._breakers.get(policy.name)
            if existing is None:
                created = CircuitBreaker(policy, clock, self)
                self._breakers[policy.name] = created
                return created
        ours, theirs = existing.policy.differences(policy)
        if existing.clock != clock:
            ours = ", ".join(filter(None, (ours, f"clock={existing.clock!r}")))
            theirs = ", ".join(filter(None, (theirs, f"clock={clock!r}")))
        if ours:
            raise ValueError(
                f"circuit breaker {policy.name!r} already exists with {ours}, but this "
                f"decorator asks for {theirs}. One name is one breaker with one policy: "
                f"use the same settings, or give this breaker another name="
            )
        return existing

    def get(self, name: str) -> CircuitBreaker | None:
        return self._breakers.get(name)

    def publish(self, snapshot: BreakerSnapshot) -> None:
        for callback in self._subscribers:
            callback(snapshot)

    def apply(self, snapshot: BreakerSnapshot) -> bool:
        breaker = self.get(snapshot.name)
        return breaker is not None and breaker.apply(snapshot)


_default_store = MemoryBreakerStore()


def get_breaker(name: str, store: BreakerStore | None = None) -> CircuitBreaker:
    """The breaker called `name` (by default `module:qualname` of the function)."""
    breaker = (_default_store if store is None else store).get(name)
    if breaker is None:
        raise KeyError(
            f"no circuit breaker named {name!r}; a breaker exists once a function is "
            "decorated with it, and its default name is 'module:qualname' of that function"
        )
    return breaker


# ---------------------------------------------------------------------- the decorator


def _at_least_one(value: object, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be a whole number >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{argument} must be >= 1, got {value}; 1 is the smallest that works")
    return value


def _breaker_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"name must be a string or None, got {value!r}")
    if not value.strip():
        raise ValueError("name must not be empty; leave it out to use 'module:qualname'")
    return value


def _listener(value: object) -> StateListener | None:
    if value is None:
        return None
    if not callable(value):
        raise TypeError(f"on_state_change must be callable or None, got {value!r}")
    if inspect.iscoroutinefunction(value):
        raise TypeError(
            "on_state_change is called synchronously and cannot be async; from a plain "
            "function, schedule your coroutine (e.g. loop.create_task) instead"
        )
    return value


def _default_name(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"cannot name a circuit breaker after {function!r}, which has no "
            "__module__/__qualname__ of its own; pass name='...'"
        )
    return f"{module}:{qualname}"


def _original(target: object) -> Callable[..., Any]:
    if isinstance(target, (classmethod, staticmethod)):
        target = target.__func__
    pipeline = pipeline_of(target)
    if pipeline is not None:
        return pipeline.func
    return _check_target(target, "circuit_breaker")


@overload
def circuit_breaker(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def circuit_breaker(
    *,
    name: str | None = None,
    failure_threshold: int = 5,
    recovery_timeout: Duration = 60,
    success_threshold: int = 1,
    half_open_max_calls: int = 1,
    exclude: type[BaseException] | Sequence[type[BaseException]] | None = (),
    on_state_change: StateListener | None = None,
    clock: Clock | None = None,
    store: BreakerStore | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def circuit_breaker(
    func: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    failure_threshold: int = 5,
    recovery_timeout: Duration = 60,
    success_threshold: int = 1,
    half_open_max_calls: int = 1,
    exclude: type[BaseException] | Sequence[type[BaseException]] | None = (),
    on_state_change: StateListener | None = None,
    clock: Clock | None = None,
    store: BreakerStore | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Refuse calls while a dependency keeps failing; probe it again after a while.

    `failure_threshold` consecutive failures open the breaker; calls then raise
    `CircuitBreakerOpenError` without running. After `recovery_timeout` (seconds or a
    `timedelta`) up to
    `half_open_max_calls` probes run at once; `success_threshold` successes close it,
    one failure reopens it. An exception in `exclude` means the dependency answered
    (a 404, a validation error): it counts as a success and is re-raised unchanged.

    `name` defaults to `module:qualname`; decorators that share a name share one
    breaker (see `get_breaker`) and must give the same settings. Every
    `on_state_change(name, old, new)` given for a name is called, outside the lock, on
    each transition. `clock` defaults to `time.monotonic`, which wall-clock jumps do
    not disturb; a store shared between processes compares `opened_at` across
    machines and so needs wall time (`time.time`). `store` defaults to the in-process
    `MemoryBreakerStore`.
    """
    breaker_name = _breaker_name(name)
    thresholds = (
        _at_least_one(failure_threshold, "failure_threshold"),
        seconds(recovery_timeout, "recovery_timeout"),
        _at_least_one(success_threshold, "success_threshold"),
        _at_least_one(half_open_max_calls, "half_open_max_calls"),
        tuple(dict.fromkeys(exception_types(exclude, "exclude"))),
    )
    listener = _listener(on_state_change)
    if clock is None:
        clock = time.monotonic
    elif not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
    if store is None:
        store = _default_store
    elif not isinstance(store, BreakerStore):
        raise TypeError(
            f"store must implement BreakerStore (breaker, get, publish, apply), got {store!r}"
        )
    chosen_clock, chosen_store = clock, store

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        original = _original(target)
        policy = BreakerPolicy(breaker_name or _default_name(original), *thresholds)
        breaker = chosen_store.breaker(policy, chosen_clock)
        unwrapped = target.__func__ if isinstance(target, (classmethod, staticmethod)) else target
        pipeline = pipeline_of(unwrapped)
        if pipeline is not None and any(
            isinstance(stage, BreakerStage) and stage.breaker is breaker
            for stage in pipeline.stages
        ):
            raise ValueError(
                f"{target!r} already has circuit breaker {policy.name!r}; stacking it "
                "twice would count every failure twice"
            )
        wrapped = apply_stage(target, BreakerStage(policy, breaker), "circuit_breaker")
        if listener is not None:
            breaker._add_listener(listener)
        return wrapped

    return decorate if func is None else decorate(func)
