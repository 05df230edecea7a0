"""Job functions for the worker tests; a worker imports this module by name.

In-process tests read the module-level lists; subprocess workers leave their trace in
files under $NAQ_TEST_TRACE_DIR, one line per event, so a test can count what ran
even across killed processes.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from pathlib import Path

from naq_resilience import (
    CircuitBreakerOpenError,
    SecurityError,
    chaos,
    circuit_breaker,
    compensate,
    current_job,
    retry,
    saga,
)

calls: list[tuple[str, object]] = []
undone: list[object] = []


def trace(event: str) -> None:
    directory = os.environ.get("NAQ_TEST_TRACE_DIR")
    if directory:
        with open(Path(directory) / f"{os.getpid()}.log", "a") as f:
            f.write(event + "\n")


async def add(a: int, b: int) -> int:
    calls.append(("add", (a, b)))
    return a + b


def sync_multiply(a: int, b: int) -> int:
    calls.append(("sync_multiply", (a, b)))
    return a * b


def typed(when: datetime, count: int, tags: tuple[str, ...]) -> str:
    calls.append(("typed", (when, count, tags)))
    return f"{when.year}:{count}:{','.join(tags)}"


_attempts: dict[str, int] = {}


@retry(max_retries=3, retry_delay=0.2, retry_strategy="fixed", jitter=None)
async def fails_twice(key: str) -> str:
    _attempts[key] = _attempts.get(key, 0) + 1
    calls.append(("fails_twice", (key, _attempts[key])))
    if _attempts[key] <= 2:
        raise ConnectionError(f"attempt {_attempts[key]} of {key} failed")
    return f"{key} ok after {_attempts[key]}"


@retry(max_retries=5, retry_delay=0)
async def raises(kind: str) -> None:
    calls.append(("raises", kind))
    errors: dict[str, BaseException] = {
        "key": KeyError("missing"),
        "connection": ConnectionError("down"),
        "value": ValueError("bad input"),
        "security": SecurityError("tampered payload"),
        "timeout": TimeoutError("slow"),
    }
    raise errors[kind]


async def slow(seconds: float, tag: str) -> str:
    trace(f"start {tag}")
    await asyncio.sleep(seconds)
    trace(f"done {tag}")
    return tag


def slow_sync(seconds: float, tag: str) -> str:
    trace(f"start {tag}")
    time.sleep(seconds)
    trace(f"done {tag}")
    return tag


def crash(tag: str) -> None:
    """Takes the whole worker process down, like a segfault would."""
    trace(f"crash {tag}")
    os._exit(17)


def flag_path() -> Path:
    return Path(os.environ["NAQ_TEST_TRACE_DIR"]) / "dependency-is-up"


@circuit_breaker(name="tests:shared-dependency", failure_threshold=3, recovery_timeout=4.0)
async def call_dependency(tag: str) -> str:
    """Fails until the test creates the flag file: a dependency that is down, then up.

    The recovery timeout is longer than it takes the tests to start a second worker
    process, so that worker meets the breaker still open rather than half-open.
    """
    if not flag_path().exists():
        trace(f"fail {tag}")
        raise ConnectionError("dependency down")
    trace(f"ok {tag}")
    return tag


def _undo_reserve(result: str, item: str) -> None:
    undone.append(("reserve", item))
    trace(f"undo reserve {item}")


@compensate(undo=_undo_reserve)
def reserve(item: str) -> str:
    trace(f"reserve {item}")
    return f"reservation-{item}"


@saga
def order(item: str, crash_after_reserve: bool = False) -> str:
    reserve(item)
    if crash_after_reserve and not (Path(os.environ["NAQ_TEST_TRACE_DIR"]) / "crashed").exists():
        (Path(os.environ["NAQ_TEST_TRACE_DIR"]) / "crashed").touch()
        os._exit(17)
    trace(f"ordered {item}")
    return item


async def _undo_hold(result: str, item: str) -> None:
    undone.append(("hold", item))


@compensate(undo=_undo_hold)
async def hold(item: str) -> str:
    return f"hold-{item}"


@saga
async def checkout(item: str) -> None:
    await hold(item)
    raise ValueError(f"payment for {item} declined")


def fail_with(size: int, kind: str) -> None:
    """Raises an error whose message is `size` characters long."""
    trace(f"fail_with {kind}")
    errors: dict[str, type[Exception]] = {"connection": ConnectionError, "value": ValueError}
    raise errors[kind]("x" * size)


def big_result(size: int) -> str:
    trace(f"big_result {size}")
    return "r" * size


def want_int(n: int) -> int:
    trace("want_int")
    return n


async def blocks_the_loop(seconds: float, tag: str) -> str:
    """An async job that blocks its event loop, as a careless one does."""
    trace(f"start {tag}")
    time.sleep(seconds)  # noqa: ASYNC251 - the point of the test
    trace(f"done {tag}")
    return tag


def timed(seconds: float, tag: str) -> str:
    """Traces its start and end with times, to tell overlapping runs apart."""
    trace(f"start {tag} {time.time():.3f}")
    time.sleep(seconds)
    trace(f"done {tag} {time.time():.3f}")
    return tag


async def own_timeout(kind: str) -> None:
    """Raises a TimeoutError of its own, long before any job timeout."""
    raise TimeoutError(f"the {kind} upstream timed out")


def own_timeout_sync(kind: str) -> None:
    raise TimeoutError(f"the {kind} upstream timed out")


_FAULT_ERRORS: dict[str, type[Exception]] = {
    "retryable": ConnectionError,
    "non_retryable": ValueError,
    "critical": SecurityError,
}


@chaos(failure_rate=0.2, exceptions=(ConnectionError,), name="fault-suite")
def fault(tag: str, mode: str, seconds: float = 0.0) -> str:
    """The fault suite's job: traces every run and finish (with times); `mode` says how
    it fails. Chaos injects retryable faults when NAQ_CHAOS names "fault-suite".

    "ok" succeeds; "retryable", "non_retryable", "critical" always raise that kind;
    "flaky" fails its first run (on any worker), then succeeds.
    """
    trace(f"run {tag} {time.time():.3f}")
    if seconds:
        time.sleep(seconds)
    if mode == "flaky":
        marker = Path(os.environ["NAQ_TEST_TRACE_DIR"]) / f"flaky-{tag}"
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            pass
        else:
            raise TimeoutError(f"{tag}: the first try fails")
    elif mode != "ok":
        raise _FAULT_ERRORS[mode](f"{tag} failed ({mode})")
    trace(f"done {tag} {time.time():.3f}")
    return tag


def tick(tag: str) -> str:
    """A scheduled job's run: traces its tag, its job id and when it started."""
    env = current_job()
    trace(f"tick {tag} {env.id if env else '-'} {time.time():.3f}")
    return tag


class JobError(Exception):
    """An exception defined in a module the worker imports: it may travel as an argument."""


def receives(error: BaseException, note: str = "") -> str:
    """Takes an exception as an argument (enqueued as an `ExceptionRecord`)."""
    calls.append(("receives", error))
    return f"{type(error).__module__}:{type(error).__qualname__}{error.args!r}{note}"


def wait_for(timeout: float) -> float:
    """A parameter named like an enqueue option: it can only be passed positionally."""
    return timeout


def echo(value: object) -> object:
    return value


def receives_typed(error: TimeoutError, errors: list[Exception]) -> str:
    calls.append(("receives_typed", (error, errors)))
    return ",".join(type(e).__qualname__ for e in [error, *errors])


_deferred_once: set[str] = set()


def guarded_by_my_own_breaker(tag: str) -> str:
    """A breaker of the user's own, as in NAQ's guide: it does not say when to retry."""
    if tag not in _deferred_once:
        _deferred_once.add(tag)
        raise CircuitBreakerOpenError("Circuit breaker is open")
    calls.append(("guarded_by_my_own_breaker", tag))
    return tag


__all__ = ["CircuitBreakerOpenError"]


def checks(value: str) -> str:
    """Refuses "bad": a job whose dead letter a replay with other arguments mends."""
    calls.append(("checks", value))
    if value == "bad":
        raise ValueError(f"bad value {value!r}")
    return f"checked {value}"
