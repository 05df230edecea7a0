"""Per-call cost of naq-resilience's decorators, next to the peers doing the same job.

What is measured, in one run (sync and async each):

* ``retry``   -- ``@retry(max_retries=3, retry_delay=0)`` alone, the call succeeds;
* ``breaker`` -- ``@circuit_breaker()`` alone, circuit closed, the call succeeds;
* ``stack``   -- ``@retry @circuit_breaker @fallback(alt) @chaos()`` (chaos is off, so
  it is a pass-through stage), the call succeeds;
* ``flaky``   -- the retry decorators around a function that raises ``ConnectionError``
  on every odd call and returns on every even one: one logical call is one failure,
  one retry with zero delay, one success.

The peers are configured to do the same work with no waiting: tenacity, stamina and
backoff for retry; pybreaker and circuitbreaker for the breaker; tenacity stacked on
pybreaker (and on circuitbreaker) as the nearest peer equivalent of the full stack
(it has no fallback or chaos stage, so it does strictly less work than naq's stack).

How it is measured: every case is a zero-argument callable timed in a plain ``for``
loop (``await f()`` inside one coroutine for async ones, all on one event loop), with
the garbage collector off while the loop runs, like ``timeit`` (``--gc`` keeps it on,
which adds the cost of collecting the reference cycles a failure leaves behind). Each
case is first checked (it must return the function's own value; a flaky call must run
the function exactly twice), then calibrated once so that one measurement takes about
``--target-time`` seconds (default 0.2). The cases are then measured ``--repeats``
times (default 7), interleaved round by round in a rotating order, so that load on the
machine hits every case alike. The reported time is the **minimum** over the repeats:
noise on a shared machine only ever adds time, so the minimum is the best estimate of
the true cost (the median is kept in the JSON output for reference). Wall-clock time
(``perf_counter``) is used, so the zero-second sleeps some peers make count, as they
do for their callers.

How to read the table: "us" is microseconds of *overhead per call*, i.e. the case's
time per call minus the time of the same loop calling the undecorated function (for
``flaky``: minus a hand-written ``try: f() except ConnectionError: f()``, so that only
what the library adds is counted, not the raise itself). ``ratio`` is
``peer overhead / naq-resilience overhead``: above 1 means naq-resilience is cheaper.
Overheads below ~0.05 us are at the resolution of the method. ``n/a`` is a case a peer
cannot do (with the reason); ``ERROR`` is a case that could not run, and makes the
script exit non-zero. The targets are printed as PASS / MISS and never change the
exit status: this is a benchmark, not a test.

Run from the repository root (the script puts its own checkout first on ``sys.path``)::

    python benchmarks/bench_decorators.py [--quick] [--gc] [--repeats N]
        [--target-time SECONDS] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import _machine
from _machine import load_warning, loadavg, version

__all__ = ["Case", "RunResult", "build_cases", "main", "run"]

Mode = Literal["sync", "async"]
Fn = Callable[[], Any]
"""A zero-argument callable; for async cases it returns an awaitable."""
Build = Callable[[Fn, bool], Fn]
"""Decorate a target (sync or async, says the flag) the way a library would."""
Status = Literal["ok", "error", "n/a"]

MODES: tuple[Mode, ...] = ("sync", "async")
NAQ = "naq-resilience"
BARE = "bare"
SENTINEL = object()
FALLBACK_SENTINEL = object()
RETRY_ATTEMPTS = 4  # naq's max_retries=3 is 4 attempts, as the peers' attempts=4
PEER_DISTS = ("tenacity", "stamina", "backoff", "pybreaker", "circuitbreaker")
TENACITY_NO_SLEEP = "tenacity, no-op sleep"
SLEEP_ZERO: dict[Mode, str] = {"sync": "time.sleep(0)", "async": "asyncio.sleep(0)"}

FULL_STACK_MAX_US = 2.0
FLAKY_MIN_RATIO_VS_TENACITY = 20.0


class NotApplicable(Exception):
    """A peer cannot do this case at all; the message says why."""


# --------------------------------------------------------------------------- targets


def make_target(is_async: bool, flaky: bool) -> tuple[Fn, Callable[[], int]]:
    """A fresh target function and a reader of how many times it ran.

    The success target does nothing but return (its call count is not tracked, so
    that it costs as little as a bare call can); the flaky target counts its calls and
    raises `ConnectionError` on the odd ones.
    """
    if not flaky:
        if is_async:

            async def async_target() -> object:
                return SENTINEL

            return async_target, lambda: -1

        def target() -> object:
            return SENTINEL

        return target, lambda: -1

    calls = 0
    if is_async:

        async def async_flaky() -> object:
            nonlocal calls
            calls += 1
            if calls & 1:
                raise ConnectionError("odd call")
            return SENTINEL

        return async_flaky, lambda: calls

    def flaky_target() -> object:
        nonlocal calls
        calls += 1
        if calls & 1:
            raise ConnectionError("odd call")
        return SENTINEL

    return flaky_target, lambda: calls


# --------------------------------------------------------------------------- baselines


def bare(target: Fn, is_async: bool) -> Fn:
    """The undecorated function: the baseline of the success cases."""
    return target


def bare_retry_by_hand(target: Fn, is_async: bool) -> Fn:
    """The least any retry must do for the flaky target: the baseline of `flaky`."""
    if is_async:

        async def async_by_hand() -> object:
            try:
                return await target()
            except ConnectionError:
                return await target()

        return async_by_hand

    def by_hand() -> object:
        try:
            return target()
        except ConnectionError:
            return target()

    return by_hand


# --------------------------------------------------------------------------- naq-resilience


def naq_retry(target: Fn, is_async: bool) -> Fn:
    from naq_resilience.policies.retry import retry

    return retry(max_retries=RETRY_ATTEMPTS - 1, retry_delay=0)(target)


def naq_breaker(target: Fn, is_async: bool) -> Fn:
    return _naq_breaker(target, f"bench-breaker-{'async' if is_async else 'sync'}")


def _naq_breaker(target: Fn, name: str) -> Fn:
    from naq_resilience.policies.breaker import circuit_breaker

    wrapped: Fn = circuit_breaker(name=name, failure_threshold=5, recovery_timeout=60)(target)
    return wrapped


def naq_fallback(target: Fn, is_async: bool) -> Fn:
    from naq_resilience.policies.fallback import fallback

    wrapped: Fn = fallback(_alternative(is_async))(target)
    return wrapped


def naq_chaos(target: Fn, is_async: bool) -> Fn:
    from naq_resilience.policies.chaos import chaos

    wrapped: Fn = chaos()(target)
    return wrapped


def naq_stack(target: Fn, is_async: bool) -> Fn:
    """`@retry(...) @circuit_breaker(...) @fallback(alt) @chaos() def target`.

    Decorators apply bottom-up: chaos first, retry last (outermost).
    """
    with_breaker = _naq_breaker(
        naq_fallback(naq_chaos(target, is_async), is_async),
        f"bench-stack-{'async' if is_async else 'sync'}",
    )
    return naq_retry(with_breaker, is_async)


def _alternative(is_async: bool) -> Callable[..., Any]:
    if is_async:

        async def async_alternative(*args: Any, **kwargs: Any) -> object:
            return FALLBACK_SENTINEL

        return async_alternative

    def alternative(*args: Any, **kwargs: Any) -> object:
        return FALLBACK_SENTINEL

    return alternative


# --------------------------------------------------------------------------- peers


def tenacity_retry(target: Fn, is_async: bool) -> Fn:
    import tenacity

    decorator = tenacity.retry(
        stop=tenacity.stop_after_attempt(RETRY_ATTEMPTS),
        wait=tenacity.wait_none(),
        retry=tenacity.retry_if_exception_type(ConnectionError),
        reraise=True,
    )
    return decorator(target)


def tenacity_retry_no_sleep(target: Fn, is_async: bool) -> Fn:
    """tenacity as above but with a no-op `sleep`: it sleeps 0 s between attempts otherwise."""
    import tenacity

    async def no_async_sleep(seconds: float) -> None:
        return None

    def no_sleep(seconds: float) -> None:
        return None

    settings: dict[str, Any] = {
        "stop": tenacity.stop_after_attempt(RETRY_ATTEMPTS),
        "wait": tenacity.wait_none(),
        "retry": tenacity.retry_if_exception_type(ConnectionError),
        "reraise": True,
    }
    retrying: tenacity.BaseRetrying = (
        tenacity.AsyncRetrying(sleep=no_async_sleep, **settings)
        if is_async
        else tenacity.Retrying(sleep=no_sleep, **settings)
    )
    wrapped: Fn = retrying.wraps(target)
    return wrapped


def stamina_retry(target: Fn, is_async: bool) -> Fn:
    import stamina
    from stamina.instrumentation import set_on_retry_hooks

    # stamina logs a WARNING per retry by default (to stderr when logging is not
    # configured); naq-resilience does no I/O on retry, so instrumentation goes off.
    set_on_retry_hooks([])
    if not stamina.is_active() or stamina.is_testing():
        raise RuntimeError("stamina is deactivated or in testing mode; results would lie")
    decorator = stamina.retry(
        on=ConnectionError,
        attempts=RETRY_ATTEMPTS,
        timeout=None,  # the default 45 s timeout adds a clock stop; the others have none
        wait_initial=0,
        wait_max=0,
        wait_jitter=0,
    )
    return decorator(target)


def backoff_retry(target: Fn, is_async: bool) -> Fn:
    import backoff

    decorator = backoff.on_exception(
        backoff.constant, ConnectionError, max_tries=RETRY_ATTEMPTS, interval=0, jitter=None
    )
    return decorator(target)


def pybreaker_breaker(target: Fn, is_async: bool) -> Fn:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    if not is_async:
        wrapped: Fn = breaker(target)
        return wrapped
    if not pybreaker.HAS_TORNADO_SUPPORT:
        raise NotApplicable(
            "pybreaker guards coroutines only through tornado (call_async), which is not "
            "installed; its plain decorator would only guard creating the coroutine"
        )

    async def via_call_async() -> object:
        return await breaker.call_async(target)  # type: ignore[no-untyped-call]

    return via_call_async


def circuitbreaker_breaker(target: Fn, is_async: bool) -> Fn:
    import circuitbreaker

    wrapped: Fn = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=60)(target)
    return wrapped


def stacked(outer: Build, inner: Build) -> Build:
    """`outer` applied over `inner`, as ``@outer @inner def f``."""

    def build(target: Fn, is_async: bool) -> Fn:
        return outer(inner(target, is_async), is_async)

    return build


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    flaky: bool
    naq: Build
    peers: tuple[tuple[str, Build], ...]


RETRY_PEERS: tuple[tuple[str, Build], ...] = (
    ("tenacity", tenacity_retry),
    ("stamina", stamina_retry),
    ("backoff", backoff_retry),
)
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("retry", "@retry, success", False, naq_retry, RETRY_PEERS),
    Scenario(
        "breaker",
        "@circuit_breaker, closed, success",
        False,
        naq_breaker,
        (("pybreaker", pybreaker_breaker), ("circuitbreaker", circuitbreaker_breaker)),
    ),
    Scenario(
        "stack",
        "full stack, success",
        False,
        naq_stack,
        (
            ("tenacity+pybreaker", stacked(tenacity_retry, pybreaker_breaker)),
            ("tenacity+circuitbreaker", stacked(tenacity_retry, circuitbreaker_breaker)),
        ),
    ),
    Scenario(
        "flaky",
        "1 failure + 1 retry, zero delay",
        True,
        naq_retry,
        (*RETRY_PEERS, (TENACITY_NO_SLEEP, tenacity_retry_no_sleep)),
    ),
)


def _sleep_zero(target: Fn, is_async: bool) -> Fn:
    """Reference: the zero-second sleep that tenacity, stamina and backoff still call."""
    return functools.partial(asyncio.sleep, 0) if is_async else functools.partial(time.sleep, 0)


# --------------------------------------------------------------------------- cases


@dataclass(slots=True)
class Case:
    scenario: str  # a Scenario key, "baseline" or "reference"
    mode: Mode
    lib: str
    build: Build
    flaky: bool
    fn: Fn | None = None
    number: int = 0
    samples: list[float] = field(default_factory=list)  # seconds per call, one per repeat
    status: Status = "ok"
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.scenario}.{self.mode}.{self.lib}"

    @property
    def is_async(self) -> bool:
        return self.mode == "async"

    @property
    def best_us(self) -> float:
        return min(self.samples) * 1e6

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples) * 1e6

    def fail(self, exc: BaseException) -> None:
        self.status = "n/a" if isinstance(exc, NotApplicable) else "error"
        self.reason = str(exc) if isinstance(exc, NotApplicable) else _describe(exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def baseline_key(flaky: bool, mode: Mode) -> str:
    return f"baseline.{mode}.{'bare-retry-by-hand' if flaky else BARE}"


def build_cases() -> list[Case]:
    """Every case of one run, baselines first; nothing is imported or built yet."""
    cases: list[Case] = []
    for mode in MODES:
        cases.append(Case("baseline", mode, BARE, bare, False))
        cases.append(Case("baseline", mode, "bare-retry-by-hand", bare_retry_by_hand, True))
        cases.append(Case("reference", mode, SLEEP_ZERO[mode], _sleep_zero, False))
    for scenario in SCENARIOS:
        for mode in MODES:
            cases.append(Case(scenario.key, mode, NAQ, scenario.naq, scenario.flaky))
            for lib, build in scenario.peers:
                cases.append(Case(scenario.key, mode, lib, build, scenario.flaky))
    return cases


# --------------------------------------------------------------------------- timing


async def _time_async(fn: Fn, number: int) -> float:
    loop = itertools.repeat(None, number)
    timer = time.perf_counter
    start = timer()
    for _ in loop:
        await fn()
    return timer() - start


def _time_sync(fn: Fn, number: int) -> float:
    loop = itertools.repeat(None, number)
    timer = time.perf_counter
    start = timer()
    for _ in loop:
        fn()
    return timer() - start


class Timer:
    """Times sync loops directly and async loops inside one coroutine on one loop."""

    def __init__(self, runner: asyncio.Runner, collect_garbage: bool = False) -> None:
        self._runner = runner
        self._collect_garbage = collect_garbage

    def call(self, fn: Fn, is_async: bool) -> Any:
        return self._runner.run(fn()) if is_async else fn()

    def time(self, fn: Fn, is_async: bool, number: int) -> float:
        """Seconds for `number` calls; the garbage collector is off unless asked, like timeit.

        With it off, reference cycles left by a failure path cost only their allocation;
        `collect_garbage=True` also counts the collections they trigger.
        """
        gc.collect()
        gc_was_enabled = gc.isenabled()
        if not self._collect_garbage:
            gc.disable()
        try:
            if is_async:
                return self._runner.run(_time_async(fn, number))
            return _time_sync(fn, number)
        finally:
            if gc_was_enabled:
                gc.enable()

    def calibrate(self, fn: Fn, is_async: bool, target_time: float) -> int:
        """How many calls take about `target_time` seconds."""
        number = 1
        while True:
            elapsed = self.time(fn, is_async, number)
            if elapsed >= target_time / 10:
                return max(1, round(number * target_time / elapsed))
            number *= 10 if elapsed < target_time / 100 else 2


def prepare(case: Case, timer: Timer, target_time: float) -> None:
    """Import and build the case, check it does what it claims, calibrate it."""
    try:
        target, count = make_target(case.is_async, case.flaky)
        fn = case.build(target, case.is_async)
        if case.scenario != "reference":
            _check(case, fn, count, timer)
        case.fn = fn
        case.number = timer.calibrate(fn, case.is_async, target_time)
    except Exception as exc:
        case.fail(exc)


def _check(case: Case, fn: Fn, count: Callable[[], int], timer: Timer) -> None:
    """A few calls must return the target's own value, each flaky call running it twice."""
    for _ in range(3):
        before = count()
        result = timer.call(fn, case.is_async)
        if result is not SENTINEL:
            raise RuntimeError(f"returned {result!r}, not the function's own value")
        if case.flaky and count() - before != 2:
            raise RuntimeError(f"ran the function {count() - before} times, not twice")


def measure_rounds(cases: Sequence[Case], timer: Timer, repeats: int, progress: bool) -> None:
    """Measure every runnable case `repeats` times, interleaved, rotating the order."""
    for round_number in range(repeats):
        runnable = [case for case in cases if case.status == "ok"]
        if not runnable:
            return
        shift = (round_number * len(runnable)) // max(repeats, 1)
        for case in runnable[shift:] + runnable[:shift]:
            assert case.fn is not None
            try:
                elapsed = timer.time(case.fn, case.is_async, case.number)
            except Exception as exc:
                case.fail(exc)
                continue
            case.samples.append(elapsed / case.number)
        if progress:
            print(f"  round {round_number + 1}/{repeats} done", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Row:
    scenario: Scenario
    mode: Mode
    peer: str
    naq: Case
    other: Case
    naq_us: float | None
    peer_us: float | None

    @property
    def ratio(self) -> float | None:
        if self.naq_us is None or self.peer_us is None or self.naq_us <= 0:
            return None
        return self.peer_us / self.naq_us


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    value: float | None
    limit: float
    higher_is_better: bool
    unit: str

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "ERROR"
        met = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return "PASS" if met else "MISS"


@dataclass(slots=True)
class RunResult:
    cases: dict[str, Case]
    rows: list[Row]
    targets: list[TargetCheck]
    meta: dict[str, Any]

    @property
    def errors(self) -> list[Case]:
        return [case for case in self.cases.values() if case.status == "error"]

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


def overhead_us(case: Case, cases: dict[str, Case]) -> float | None:
    """Time per call over the baseline, or None if either did not run."""
    base = cases[baseline_key(case.flaky, case.mode)]
    if case.status != "ok" or base.status != "ok" or not case.samples or not base.samples:
        return None
    return case.best_us - base.best_us


def make_rows(cases: dict[str, Case]) -> list[Row]:
    rows: list[Row] = []
    for scenario in SCENARIOS:
        for mode in MODES:
            naq = cases[f"{scenario.key}.{mode}.{NAQ}"]
            for peer, _ in scenario.peers:
                other = cases[f"{scenario.key}.{mode}.{peer}"]
                rows.append(
                    Row(
                        scenario,
                        mode,
                        peer,
                        naq,
                        other,
                        overhead_us(naq, cases),
                        overhead_us(other, cases),
                    )
                )
    return rows


def make_targets(rows: list[Row], cases: dict[str, Case]) -> list[TargetCheck]:
    def ratio_vs_tenacity(mode: Mode) -> float | None:
        for row in rows:
            if row.scenario.key == "flaky" and row.mode == mode and row.peer == "tenacity":
                return row.ratio
        return None

    return [
        TargetCheck(
            "full sync stack overhead per call",
            overhead_us(cases[f"stack.sync.{NAQ}"], cases),
            FULL_STACK_MAX_US,
            higher_is_better=False,
            unit="us",
        ),
        TargetCheck(
            "failure-then-success, sync: tenacity overhead / naq overhead",
            ratio_vs_tenacity("sync"),
            FLAKY_MIN_RATIO_VS_TENACITY,
            higher_is_better=True,
            unit="x",
        ),
        TargetCheck(
            "failure-then-success, async: tenacity overhead / naq overhead",
            ratio_vs_tenacity("async"),
            FLAKY_MIN_RATIO_VS_TENACITY,
            higher_is_better=True,
            unit="x",
        ),
    ]


# --------------------------------------------------------------------------- environment


def _prefer_this_checkout() -> None:
    """Import naq_resilience from the checkout this script is in, not an installed copy.

    `python benchmarks/bench_decorators.py` puts `benchmarks/` first on `sys.path`, so an
    editable install of another checkout would otherwise win.
    """
    root = str(Path(__file__).resolve().parent.parent)
    if (Path(root) / "naq_resilience").is_dir() and sys.path[:1] != [root]:
        sys.path.insert(0, root)


def _timer_slack() -> str:
    """The kernel's sleep rounding for this thread, which a 0 s `time.sleep` pays."""
    try:
        return f"{int(Path('/proc/self/timerslack_ns').read_text()) / 1000:g} us"
    except (OSError, ValueError):
        return "unknown"


def environment() -> dict[str, Any]:
    return {
        **_machine.environment(),
        "timer_slack": _timer_slack(),
        "peers": {dist: version(dist) for dist in PEER_DISTS},
    }


# --------------------------------------------------------------------------- output


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _cell(case: Case, value: float | None) -> str:
    if case.status == "error":
        return "ERROR"
    if case.status == "n/a":
        return "n/a"
    return _us(value)


def _ratio_cell(row: Row) -> str:
    ratio = row.ratio
    if ratio is not None:
        return f"{ratio:.1f}x"
    if row.naq_us is not None and row.naq_us <= 0 and row.peer_us is not None:
        return "n/a (naq overhead below resolution)"
    return "—"


def _reference_us(cases: dict[str, Case], mode: Mode) -> str:
    case = cases[f"reference.{mode}.{SLEEP_ZERO[mode]}"]
    return _us(case.best_us) if case.status == "ok" and case.samples else case.status


def _notes(cases: dict[str, Case]) -> list[str]:
    return [
        "- tenacity, stamina and backoff sleep between attempts even when the wait is 0: "
        f"time.sleep(0) costs {_reference_us(cases, 'sync')} us here (timer slack: "
        f"{_timer_slack()}), "
        f"await asyncio.sleep(0) {_reference_us(cases, 'async')} us (one event-loop turn); "
        f"naq-resilience skips a 0 s sleep. '{TENACITY_NO_SLEEP}' is tenacity without it.",
        "- stamina runs with its retry instrumentation off (it logs a warning per retry "
        "by default) and timeout=None (no clock stop, like the others); backoff keeps its "
        "default logger (INFO records are dropped, but each retry formats the exception).",
        "- The peer 'full stack' is tenacity over a breaker: it has no fallback and no chaos "
        "stage, so it does less work than naq-resilience's four stages.",
    ]


def render(result: RunResult) -> str:
    meta = result.meta
    lines = [
        f"# naq-resilience decorator overhead — Python {meta['python']} "
        f"({meta['implementation']}) | {meta['platform']} | {meta['cpu']} | "
        f"{meta['cores']} cores ({meta['usable_cores']} usable) | "
        f"loadavg {meta['loadavg_start']} (start), {meta['loadavg_end']} (end)",
        "",
        f"naq_resilience from {meta['naq_resilience']}; peers: "
        + ", ".join(f"{name} {version}" for name, version in meta["peers"].items()),
        f"Statistic: min of {meta['repeats']} interleaved repeats of ~{meta['target_time']}s "
        f"each (noise only adds time), GC {'on' if meta['gc_while_timing'] else 'off'} "
        "while timing; us = overhead per call over "
        "the baseline; ratio = peer / naq-resilience.",
        *load_warning(meta),
        "",
        "| case | peer | naq-resilience us | peer us | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for row in result.rows:
        label = f"{row.scenario.title}, {row.mode}"
        lines.append(
            f"| {label} | {row.peer} | {_cell(row.naq, row.naq_us)} | "
            f"{_cell(row.other, row.peer_us)} | {_ratio_cell(row)} |"
        )
    lines += ["", "Baselines and reference (time per call, us):"]
    for case in result.cases.values():
        if case.scenario in ("baseline", "reference"):
            value = _us(case.best_us) if case.status == "ok" and case.samples else case.status
            lines.append(f"- {case.mode} {case.lib}: {value}")
    lines += ["", "Notes:", *_notes(result.cases)]
    lines += ["", "Targets:"]
    for check in result.targets:
        shown = "—" if check.value is None else f"{check.value:.2f} {check.unit}"
        relation = ">=" if check.higher_is_better else "<="
        lines.append(
            f"- {check.verdict}: {check.name} = {shown} (target {relation} "
            f"{check.limit:g} {check.unit})"
        )
    problems = [case for case in result.cases.values() if case.status != "ok"]
    if problems:
        lines += ["", "Not measured:"]
        lines += [f"- {case.status.upper()} {case.key}: {case.reason}" for case in problems]
    return "\n".join(lines)


def to_json(result: RunResult) -> dict[str, Any]:
    cases = {
        key: {
            "status": case.status,
            "reason": case.reason,
            "number": case.number,
            "per_call_us": [sample * 1e6 for sample in case.samples],
            "min_us": case.best_us if case.samples else None,
            "median_us": case.median_us if case.samples else None,
            "overhead_us": (
                overhead_us(case, result.cases)
                if case.scenario not in ("baseline", "reference")
                else None
            ),
        }
        for key, case in result.cases.items()
    }
    rows = [
        {
            "scenario": row.scenario.key,
            "mode": row.mode,
            "peer": row.peer,
            "naq_overhead_us": row.naq_us,
            "peer_overhead_us": row.peer_us,
            "ratio": row.ratio,
        }
        for row in result.rows
    ]
    targets = [
        {
            "name": check.name,
            "value": check.value,
            "limit": check.limit,
            "unit": check.unit,
            "verdict": check.verdict,
        }
        for check in result.targets
    ]
    return {
        "meta": result.meta,
        "cases": cases,
        "rows": rows,
        "targets": targets,
        "exit_code": result.exit_code,
    }


# --------------------------------------------------------------------------- driver


def run(
    repeats: int, target_time: float, collect_garbage: bool = False, progress: bool = False
) -> RunResult:
    """Build, check, calibrate and measure every case; never raises for a bad case."""
    meta = environment()
    cases = build_cases()
    with asyncio.Runner() as runner:
        timer = Timer(runner, collect_garbage)
        for case in cases:
            prepare(case, timer, target_time)
        if progress:
            print(f"  {len(cases)} cases prepared", file=sys.stderr, flush=True)
        measure_rounds(cases, timer, repeats, progress)
    meta.update(
        repeats=repeats,
        target_time=target_time,
        gc_while_timing=collect_garbage,
        loadavg_end=loadavg(),
    )
    by_key = {case.key: case for case in cases}
    rows = make_rows(by_key)
    return RunResult(by_key, rows, make_targets(rows, by_key), meta)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 repeats of ~0.02 s (for CI smoke runs)"
    )
    parser.add_argument("--repeats", type=int, help="repeats per case (default 7, quick 3)")
    parser.add_argument(
        "--target-time", type=float, help="seconds per measurement (default 0.2, quick 0.02)"
    )
    parser.add_argument(
        "--gc",
        action="store_true",
        help="keep the garbage collector on while timing (default off, like timeit)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.target_time is None:
        args.target_time = 0.02 if args.quick else 0.2
    if args.repeats < 1 or args.target_time <= 0:
        parser.error("--repeats must be >= 1 and --target-time > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _prefer_this_checkout()
    result = run(args.repeats, args.target_time, args.gc, progress=True)
    print(render(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
