"""`@chaos`: inject failures and delays on purpose, to prove the other policies work.

Chaos is off unless a master switch turns it on, so a `@chaos` left on production code
costs one boolean read per call and never fails a real job. The switch is process-wide
(like `retry.set_testing`): the environment (`NAQ_CHAOS=1`, or a comma list of chaos
names; `NAQ_CHAOS_SEED`), `chaos.enable()` / `chaos.disable()`, or
`with chaos.enabled(...)`. Rates given to the switch override every chaos point's own
rates while it is on, so one test can turn every point up to `failure_rate=1.0`.

An injected fault replaces the call: the function does not run, as when a connection
fails before the request is sent. A delay happens before the call (or before the
injected fault). Every injected exception is marked, `is_injected(exc)`, so a failure
record can tell rehearsal from reality.

Randomness is per chaos point: each owns a `random.Random` seeded from the switch's seed
(or its own) and its name, and reseeds whenever the switch changes. So a seeded run
draws the same faults in every process, whatever other points did; and all draws happen
when the call is made, so concurrent async calls draw in call order, not in the order
their delays end.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, overload

from naq_resilience.policies.classify import exception_types
from naq_resilience.policies.durations import Duration, seconds
from naq_resilience.policies.pipeline import Args, AsyncRunner, Kwargs, Runner, Stage, apply_stage

__all__ = [
    "ENV_NAMES",
    "ENV_SEED",
    "Chaos",
    "ChaosBlock",
    "ChaosMonkey",
    "ChaosPolicy",
    "ChaosSwitch",
    "chaos",
    "is_injected",
    "switch_from_env",
]

P = ParamSpec("P")
R = TypeVar("R")

ENV_NAMES: Final = "NAQ_CHAOS"
ENV_SEED: Final = "NAQ_CHAOS_SEED"
_INJECTED: Final = "__naq_injected__"
_OFF_WORDS = frozenset({"", "0", "false", "no", "off"})
_ALL_WORDS = frozenset({"1", "true", "yes", "on", "all", "*"})


def is_injected(exc: BaseException) -> bool:
    """True if chaos raised `exc` on purpose (not an error the code really hit)."""
    return getattr(exc, _INJECTED, False) is True


def _mark(exc: BaseException) -> BaseException:
    with contextlib.suppress(AttributeError):
        setattr(exc, _INJECTED, True)
    return exc


# --------------------------------------------------------------------------- the switch


@dataclass(frozen=True, slots=True)
class ChaosSwitch:
    """The master switch while it is on; `None` stands for off.

    A frozen snapshot, so saving and restoring the switch (nested `enabled()` blocks,
    pytest fixtures) is one assignment. `names=None` targets every chaos point; the
    rates, when set, replace each point's own rates; `seed` replaces each point's own
    seed.
    """

    names: frozenset[str] | None = None
    failure_rate: float | None = None
    latency_rate: float | None = None
    seed: int | None = None

    def targets(self, name: str) -> bool:
        return self.names is None or name in self.names


@dataclass(frozen=True, slots=True)
class _Live:
    switch: ChaosSwitch | None
    generation: int


# The hot path reads `_active` only; `_live` is read once per call while it is True.
# Writers assign `_live` before `_active`, so a reader never sees an on flag paired
# with a stale state that could inject after `disable()` returns.
_active: bool = False
_live: _Live = _Live(None, 0)
_generations = itertools.count(1)
_lock = threading.Lock()


def _set_switch(switch: ChaosSwitch | None) -> ChaosSwitch | None:
    global _active, _live
    with _lock:
        previous = _live.switch
        _live = _Live(switch, next(_generations))
        _active = switch is not None
    return previous


def switch_from_env(environ: Mapping[str, str] | None = None) -> ChaosSwitch | None:
    """Parse `NAQ_CHAOS` / `NAQ_CHAOS_SEED` (default: `os.environ`) without applying them.

    `NAQ_CHAOS` is off when unset, empty, "0", "false", "no" or "off"; "1", "true",
    "yes", "on", "all" or "*" target every chaos point; anything else is a comma list
    of chaos names. A malformed seed is an error rather than silently unseeded: a chaos
    run that cannot be reproduced is worth less than no run.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV_NAMES, "").strip()
    if raw.lower() in _OFF_WORDS:
        return None
    names: frozenset[str] | None = None
    if raw.lower() not in _ALL_WORDS:
        names = frozenset(part.strip() for part in raw.split(",") if part.strip())
        if not names:
            return None
    seed_text = env.get(ENV_SEED, "").strip()
    seed: int | None = None
    if seed_text:
        try:
            seed = int(seed_text)
        except ValueError:
            raise ValueError(
                f"{ENV_SEED} must be a whole number, got {seed_text!r}; unset it for unseeded chaos"
            ) from None
    return ChaosSwitch(names=names, seed=seed)


# --------------------------------------------------------------------------- validation


def _rate(value: object, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{argument} must be a probability between 0 and 1, got {value!r}")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        hint = f"; write {argument}={value / 100:g} for {value:g}%" if 1 < value <= 100 else ""
        raise ValueError(f"{argument} must be between 0 and 1, got {value!r}{hint}")
    return float(value)


def _optional_rate(value: object, argument: str) -> float | None:
    return None if value is None else _rate(value, argument)


def _seed(value: object, argument: str = "seed") -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(
            f"{argument} must be a whole number or None, got {value!r}; "
            "a seed makes the injected faults reproducible"
        )
    return value


def _name(value: object, argument: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{argument} must be a non-empty string, got {value!r}")
    if "," in value or value != value.strip():
        raise ValueError(
            f"{argument} must not contain ',' or surrounding spaces ({ENV_NAMES} is a "
            f"comma list of names), got {value!r}"
        )
    return value


def _names(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items: list[str] = [part.strip() for part in value.split(",") if part.strip()]
    else:
        try:
            items = list(value)
        except TypeError:
            raise TypeError(
                f"names must be a chaos name, a comma list or an iterable of names, got {value!r}"
            ) from None
    names = frozenset(_name(item, "names") for item in items)
    if not names:
        raise ValueError(
            "names is empty, which would target nothing; pass names=None to target every "
            "chaos point, or call chaos.disable()"
        )
    return names


def _delay(value: object, argument: str) -> float:
    return seconds(value, argument)


def _latency(value: object) -> float | tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise TypeError(
                f"latency must be seconds or a (min, max) pair of seconds, got {value!r}"
            )
        low, high = _delay(value[0], "latency min"), _delay(value[1], "latency max")
        if low > high:
            raise ValueError(
                f"latency=({value[0]!r}, {value[1]!r}) has min > max; "
                f"write latency=({value[1]!r}, {value[0]!r})"
            )
        return (low, high)
    return _delay(value, "latency")


_PROBE_MESSAGE = "chaos: checking that this exception can be injected"


def _injectable(value: object, argument: str) -> tuple[type[Exception], ...]:
    """Exception classes chaos can build from one message; checked by building one."""
    types = exception_types(value, argument)
    for cls in types:
        if not issubclass(cls, Exception):
            raise TypeError(
                f"{argument} must contain Exception subclasses, got {cls.__qualname__}: "
                "injecting KeyboardInterrupt or SystemExit would stop the process, "
                "not exercise its error handling"
            )
        try:
            cls(_PROBE_MESSAGE)
        except Exception as error:
            raise TypeError(
                f"{argument}: {cls.__qualname__} cannot be built from one message argument "
                f"({error}); inject a subclass whose __init__ takes a single message"
            ) from None
    return types  # type: ignore[return-value]


def _check_sleep(value: object, argument: str) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{argument} must be callable or None, got {value!r}")


# --------------------------------------------------------------------------- dice


@dataclass(frozen=True, slots=True)
class _Roll:
    """One chaos point's view of one switch generation."""

    generation: int
    failure_rate: float
    latency_rate: float
    rng: random.Random | None  # None: this point is not targeted


_STALE: Final = _Roll(-1, 0.0, 0.0, None)


class _Dice:
    """Per-name randomness that restarts whenever the switch changes.

    Restarting on every change is what makes `enabled(seed=1)` replay the same faults
    each time it is entered, and makes each test's draws independent of the tests
    before it.
    """

    __slots__ = ("_failure_rate", "_latency_rate", "_name", "_roll", "_seed")

    def __init__(self, name: str, seed: int | None, failure_rate: float, latency_rate: float):
        self._name = name
        self._seed = seed
        self._failure_rate = failure_rate
        self._latency_rate = latency_rate
        self._roll = _STALE

    def current(self) -> _Roll:
        live = _live
        roll = self._roll
        if roll.generation != live.generation:
            roll = self._roll = self._reseed(live)
        return roll

    def _reseed(self, live: _Live) -> _Roll:
        switch = live.switch
        if switch is None or not switch.targets(self._name):
            return _Roll(live.generation, 0.0, 0.0, None)
        seed = switch.seed if switch.seed is not None else self._seed
        # A str seed is hashed with SHA-512, so it is stable across processes.
        rng = random.Random() if seed is None else random.Random(f"{seed}:{self._name}")
        failure = self._failure_rate if switch.failure_rate is None else switch.failure_rate
        latency = self._latency_rate if switch.latency_rate is None else switch.latency_rate
        return _Roll(live.generation, failure, latency, rng)


# --------------------------------------------------------------------------- @chaos


@dataclass(frozen=True, slots=True)
class ChaosPolicy:
    """What `@chaos` does when the switch targets it: plain data a worker can read.

    `latency` is seconds or a (min, max) range; `latency_rate` is resolved (1.0 when a
    latency was given without a rate, 0.0 without latency).
    """

    name: str
    failure_rate: float
    exceptions: tuple[type[Exception], ...]
    latency: float | tuple[float, float] | None
    latency_rate: float
    seed: int | None


_NOTHING: Final[tuple[float, BaseException | None]] = (0.0, None)


class ChaosStage(Stage):
    policy: ChaosPolicy

    def __init__(self, policy: ChaosPolicy, sleep: Callable[[float], Any] | None) -> None:
        self.policy = policy
        self._sleep = sleep
        self._dice = _Dice(policy.name, policy.seed, policy.failure_rate, policy.latency_rate)
        latency = policy.latency
        self._latency = (latency, latency) if isinstance(latency, float) else latency

    def check(self, func: Callable[..., Any], is_async: bool) -> None:
        if self._sleep is not None and is_async != inspect.iscoroutinefunction(self._sleep):
            kind = "an async" if is_async else "a sync"
            raise TypeError(f"@chaos(sleep=...) on {kind} function needs {kind} sleep callable")

    def _decide(self) -> tuple[float, BaseException | None]:
        """Draw this call's delay and fault, both before anything runs."""
        roll = self._dice.current()
        rng = roll.rng
        if rng is None:
            return _NOTHING
        policy = self.policy
        delay = 0.0
        latency = self._latency
        if latency is not None and roll.latency_rate and rng.random() < roll.latency_rate:
            low, high = latency
            delay = low if low == high else rng.uniform(low, high)
        fault: BaseException | None = None
        exceptions = policy.exceptions
        if exceptions and roll.failure_rate and rng.random() < roll.failure_rate:
            cls = exceptions[0] if len(exceptions) == 1 else rng.choice(exceptions)
            fault = _mark(cls(f"chaos: injected {cls.__name__} into {policy.name}"))
        if not delay and fault is None:
            return _NOTHING
        return delay, fault

    def build_sync(self, inner: Runner, func: Callable[..., Any]) -> Runner:
        decide = self._decide
        sleep = time.sleep if self._sleep is None else self._sleep

        def run(args: Args, kwargs: Kwargs) -> Any:
            if not _active:
                return inner(args, kwargs)
            delay, fault = decide()
            if delay:
                sleep(delay)
            if fault is not None:
                raise fault
            return inner(args, kwargs)

        return run

    def build_async(self, inner: AsyncRunner, func: Callable[..., Any]) -> AsyncRunner:
        decide = self._decide
        sleep = asyncio.sleep if self._sleep is None else self._sleep

        async def inject(
            delay: float, fault: BaseException | None, args: Args, kwargs: Kwargs
        ) -> Any:
            if delay:
                await sleep(delay)
            if fault is not None:
                raise fault
            return await inner(args, kwargs)

        # A plain function: when nothing is injected it hands back the inner awaitable
        # itself, so chaos adds no coroutine to the call.
        def run(args: Args, kwargs: Kwargs) -> Awaitable[Any]:
            if not _active:
                return inner(args, kwargs)
            delay, fault = decide()
            if not delay and fault is None:
                return inner(args, kwargs)
            return inject(delay, fault, args, kwargs)

        return run


def _default_name(target: object) -> str:
    func = getattr(target, "__func__", target)
    module = getattr(func, "__module__", None) or "?"
    qualname = (
        getattr(func, "__qualname__", None)
        or getattr(func, "__name__", None)
        or type(func).__qualname__
    )
    return f"{module}:{qualname}"


def make_chaos_policy(
    name: str,
    failure_rate: float = 0.1,
    exceptions: type[Exception] | Sequence[type[Exception]] = (ConnectionError,),
    latency: Duration | tuple[Duration, Duration] | None = None,
    latency_rate: float | None = None,
    seed: int | None = None,
) -> ChaosPolicy:
    """Validate `@chaos`'s arguments, at decoration time rather than at the first fault."""
    rate = _rate(failure_rate, "failure_rate")
    types = _injectable(exceptions, "exceptions")
    if rate and not types:
        raise ValueError(
            f"failure_rate={failure_rate!r} needs an exception class to inject; pass "
            "exceptions=(ConnectionError,) or failure_rate=0 for delays only"
        )
    delay = _latency(latency)
    if delay is None and latency_rate is not None:
        raise ValueError(
            f"latency_rate={latency_rate!r} has no effect without latency; pass latency= "
            "seconds or a (min, max) range"
        )
    if delay is None:
        delay_rate = 0.0
    else:
        delay_rate = 1.0 if latency_rate is None else _rate(latency_rate, "latency_rate")
    return ChaosPolicy(
        name=_name(name),
        failure_rate=rate,
        exceptions=types,
        latency=delay,
        latency_rate=delay_rate,
        seed=_seed(seed),
    )


class ChaosBlock(AbstractContextManager[None], AbstractAsyncContextManager[None]):
    """What `chaos.enabled()` returns: chaos on for a block, then the previous state back.

    Both a sync and an async context manager, so `async with` works where a `with`
    around an `await` would read oddly; the switch itself is the same either way.
    """

    __slots__ = ("_saved", "_switch")

    def __init__(self, switch: ChaosSwitch) -> None:
        self._switch = switch
        self._saved: list[ChaosSwitch | None] = []

    def __enter__(self) -> None:
        self._saved.append(_set_switch(self._switch))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _set_switch(self._saved.pop())

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class Chaos:
    """`chaos`: the decorator and the master switch in one object.

    One object because the two are used together: `@chaos(...)` marks where faults may
    happen, `chaos.enable()` / `with chaos.enabled()` decides when they do.
    """

    __slots__ = ()

    @overload
    def __call__(self, func: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def __call__(
        self,
        /,
        *,
        failure_rate: float = 0.1,
        exceptions: type[Exception] | Sequence[type[Exception]] = (ConnectionError,),
        latency: Duration | tuple[Duration, Duration] | None = None,
        latency_rate: float | None = None,
        seed: int | None = None,
        name: str | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def __call__(
        self,
        func: Callable[P, R] | None = None,
        /,
        *,
        failure_rate: float = 0.1,
        exceptions: type[Exception] | Sequence[type[Exception]] = (ConnectionError,),
        latency: Duration | tuple[Duration, Duration] | None = None,
        latency_rate: float | None = None,
        seed: int | None = None,
        name: str | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
        """Inject faults and delays into the function while the master switch targets it.

        `failure_rate` is the probability that a call raises one of `exceptions` (picked
        at random when several) instead of running. `latency` (seconds, or a (min, max)
        range) delays a call with probability `latency_rate` (1.0 when latency is set).
        `name` (default "module:qualname") is what `NAQ_CHAOS` and `enable(names=...)`
        target; `seed` makes this point's faults reproducible when the switch has no
        seed of its own. `sleep` is injectable (async for `async def` functions).
        """
        # Validated before a function is given, so a bad argument fails at the decorator
        # line; the default name is filled in per function.
        template = make_chaos_policy(
            "chaos" if name is None else name,
            failure_rate,
            exceptions,
            latency,
            latency_rate,
            seed,
        )
        _check_sleep(sleep, "sleep")

        def decorate(target: Callable[P, R]) -> Callable[P, R]:
            policy = template if name is not None else replace(template, name=_default_name(target))
            return apply_stage(target, ChaosStage(policy, sleep), "chaos")

        return decorate if func is None else decorate(func)

    # ------------------------------------------------------------------ the switch
    @staticmethod
    def switch(
        names: str | Iterable[str] | None = None,
        failure_rate: float | None = None,
        latency_rate: float | None = None,
        seed: int | None = None,
    ) -> ChaosSwitch:
        """Build (and validate) a switch state without applying it."""
        return ChaosSwitch(
            names=_names(names),
            failure_rate=_optional_rate(failure_rate, "failure_rate"),
            latency_rate=_optional_rate(latency_rate, "latency_rate"),
            seed=_seed(seed),
        )

    def enable(
        self,
        names: str | Iterable[str] | None = None,
        failure_rate: float | None = None,
        latency_rate: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Turn chaos on, replacing the whole previous switch state.

        `names` (a name, a comma list or an iterable) limits it to those chaos points;
        rates override every targeted point's own; `seed` overrides their own seeds.
        """
        _set_switch(self.switch(names, failure_rate, latency_rate, seed))

    def disable(self) -> None:
        _set_switch(None)

    def enabled(
        self,
        names: str | Iterable[str] | None = None,
        failure_rate: float | None = None,
        latency_rate: float | None = None,
        seed: int | None = None,
    ) -> ChaosBlock:
        """`with` / `async with` block with chaos on; the previous state comes back after.

        The switch is process-wide, not per task: blocks must nest, not interleave
        across threads or tasks, or one block's exit restores over another's.
        """
        return ChaosBlock(self.switch(names, failure_rate, latency_rate, seed))

    def is_enabled(self, name: str | None = None) -> bool:
        """Whether the switch is on at all, or (given `name`) on for that chaos point."""
        switch = _live.switch
        if switch is None:
            return False
        return name is None or switch.targets(name)

    def current(self) -> ChaosSwitch | None:
        """The switch state now (None when off), for saving and `restore`."""
        return _live.switch

    def restore(self, switch: ChaosSwitch | None) -> None:
        """Put back a state from `current()`; chaos points restart their random draws."""
        if switch is not None and not isinstance(switch, ChaosSwitch):
            raise TypeError(f"restore needs a ChaosSwitch or None, got {switch!r}")
        _set_switch(switch)

    def reload_env(self, environ: Mapping[str, str] | None = None) -> ChaosSwitch | None:
        """Re-read `NAQ_CHAOS` / `NAQ_CHAOS_SEED` and apply them (they are read at import)."""
        switch = switch_from_env(environ)
        _set_switch(switch)
        return switch

    def __repr__(self) -> str:
        return f"<chaos switch={_live.switch!r}>"


chaos: Final = Chaos()
chaos.reload_env()


# --------------------------------------------------------------------------- ChaosMonkey


class ChaosMonkey:
    """Fault points to call by hand, inside code that is not a decorated function.

    It honours the master switch like `@chaos`: off unless switched on. A monkey is
    written into application code, and the code it sits in is the code that ships, so
    it must be inert in production rather than fail a share of real work. The switch's
    `failure_rate` overrides this monkey's rate for `maybe_fail`, and its
    `latency_rate` for `maybe_delay` (which otherwise uses `failure_rate` too).
    """

    __slots__ = ("_async_sleep", "_dice", "_failure_rate", "_name", "_seed", "_sleep")

    def __init__(
        self,
        failure_rate: float = 0.1,
        seed: int | None = None,
        *,
        name: str = "chaos-monkey",
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self._failure_rate = _rate(failure_rate, "failure_rate")
        self._seed = _seed(seed)
        self._name = _name(name)
        _check_sleep(sleep, "sleep")
        _check_sleep(async_sleep, "async_sleep")
        self._sleep = time.sleep if sleep is None else sleep
        self._async_sleep = asyncio.sleep if async_sleep is None else async_sleep
        self._dice = _Dice(self._name, self._seed, self._failure_rate, self._failure_rate)

    # Read-only: the dice are built from these, so changing one later would silently
    # do nothing.
    @property
    def failure_rate(self) -> float:
        return self._failure_rate

    @property
    def seed(self) -> int | None:
        return self._seed

    @property
    def name(self) -> str:
        return self._name

    def maybe_fail(
        self, error_type: type[Exception] = Exception, message: str = "Chaos monkey strike!"
    ) -> None:
        """Raise `error_type(message)`, marked as injected, with the failure rate."""
        if not _active:
            return
        roll = self._dice.current()
        if roll.rng is not None and roll.failure_rate and roll.rng.random() < roll.failure_rate:
            (cls,) = _injectable(error_type, "error_type")
            raise _mark(cls(message))

    def _next_delay(self, max_delay: Duration) -> float:
        limit = _delay(max_delay, "max_delay")
        roll = self._dice.current()
        if roll.rng is None or not roll.latency_rate or roll.rng.random() >= roll.latency_rate:
            return 0.0
        return roll.rng.uniform(0.0, limit)

    def maybe_delay(self, max_delay: Duration = 1.0) -> float:
        """Sleep up to `max_delay` seconds, sometimes; returns how long it slept."""
        if not _active:
            return 0.0
        delay = self._next_delay(max_delay)
        if delay:
            self._sleep(delay)
        return delay

    async def maybe_delay_async(self, max_delay: Duration = 1.0) -> float:
        """`maybe_delay` for async code: awaits the sleep instead of blocking the loop."""
        if not _active:
            return 0.0
        delay = self._next_delay(max_delay)
        if delay:
            await self._async_sleep(delay)
        return delay

    def __repr__(self) -> str:
        rate, seed, name = self.failure_rate, self.seed, self.name
        return f"ChaosMonkey(failure_rate={rate!r}, seed={seed!r}, name={name!r})"
