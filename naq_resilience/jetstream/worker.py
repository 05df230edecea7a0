"""The worker: pull jobs, run them, and give every job exactly one final state.

The success path of a message is: decode the envelope (msgspec, typed), look the
function up (a dict hit after the first time), run it, `ack()` (a publish into the
connection's write buffer, not a round trip). Fetching is batched up to the free
slots, so a fetched message is always started at once and never handed back unrun.
Nothing is logged for a job that went well above DEBUG; a failed attempt logs a
WARNING, a dead letter an ERROR (with the traceback of an error the classification
does not name), a critical error a CRITICAL, each at most `FAILURE_LINES` a minute per
function, the lines held back counted in the next one and in the shutdown summary.
While a job runs, every log line of the process carries its id and attempt
(`ops.logging.running_job`), and the worker publishes its log records to `NAQ_LOGS`
for `naq worker-logs` (`jetstream.logstream`).

Failures are handled by what the function's policy and the job's options say:

- retryable with attempts left: a failure record and the job's attempt ledger, then
  `nak(delay)`; the broker redelivers after the delay, so no worker slot waits;
- an open circuit breaker: `nak(retry_after)`, counted in the ledger as a deferral;
- non-retryable, out of attempts, or critical (plus the critical hooks): a failure
  record, a dead letter with the whole failure history, then `ack()`;
- a message that cannot be decoded, has an unknown version or names a function no
  worker importing its module would run: a dead letter with the reason and the raw
  bytes, then `ack()`;
- a job whose function is in a module this worker does not import, or that this
  worker's version of the module lacks (`UnroutableJob`): handed back for another
  worker, `nak(delay)` without using an attempt, with a warning; dead-lettered as
  unroutable once no worker took it for `unroutable_after`.

Crashes are not failures. The ledger (`naq-attempts`, written before every `nak` this
worker sends) says how the earlier deliveries of a redelivered job ended, so a delivery
JetStream counted that the ledger does not is one a crash interrupted (a worker killed,
out of memory, its connection lost). A job gets `max_crashes` of those, apart from its
attempts: a job without retries survives a worker being killed, and a job that kills
every worker it meets still ends as a dead letter.

And a backstop: whatever goes wrong while handling or settling a message (a bug of
ours, a record the server refuses) ends in a dead letter that says so; when even that
cannot be written, in a minimal one; when nothing can be written (the server is gone),
the message is redelivered later and each such delivery counts as a crash, so the
number of rounds is bounded. Records are fitted to the server's `max_payload` first
(`naq_resilience.fitting`), so size never makes a message loop.

Timeouts and shutdown never run two attempts of one job at once. An async job is
cancelled; a sync job runs on a thread, which Python cannot stop, so when it overruns
its `timeout` the attempt fails with `TimeoutError` but the job keeps its message (and
its heartbeats) until the thread ends, and only then is it retried or dead-lettered;
at shutdown the worker waits for such threads instead of handing their jobs back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError

from naq_resilience.codec import (
    Format,
    InvalidMessage,
    decode,
    decode_envelope,
    encode,
    serializer_from_env,
)
from naq_resilience.fitting import (
    MESSAGE_LIMIT,
    RECORD_LIMIT,
    cut_text,
    fit_dead_letter,
    fit_failure,
)
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.connection import (
    ConnectionSettings,
    connect,
    ensure_jetstream,
    while_jetstream_starts,
)
from naq_resilience.jetstream.heartbeat import Heartbeats
from naq_resilience.jetstream.incidents import IncidentRecorder
from naq_resilience.jetstream.logstream import LogPublisher, publish_logs_from_env
from naq_resilience.jetstream.observers import JobObserver, Observers
from naq_resilience.jetstream.outcomes import OutcomeRecorder, fingerprint_of, where_of
from naq_resilience.jetstream.presence import LIBRARY_VERSION, announce
from naq_resilience.jetstream.project import NO_MODULES_WARNING, import_sources
from naq_resilience.jetstream.publisher import Publisher, StreamFullError
from naq_resilience.jetstream.puller import Puller
from naq_resilience.jetstream.registry import (
    FunctionRegistry,
    JobFunction,
    UnknownFunction,
    UnroutableJob,
    strict_from_env,
)
from naq_resilience.jetstream.schedules import run_envelope
from naq_resilience.jetstream.stores import BreakerSync, KVActionLog, load_action_log
from naq_resilience.jetstream.streams import Buckets, StorageSettings, ensure_layout, read_messages
from naq_resilience.jetstream.tracing import job_tracing
from naq_resilience.models import (
    DeadLetter,
    FailureRecord,
    JobEnvelope,
    JobRecord,
    JobResult,
    JobStatus,
    Ledger,
    WorkerInfo,
)
from naq_resilience.ops.logging import iso_time, running_job, running_worker
from naq_resilience.policies.chaos import is_injected
from naq_resilience.policies.classify import (
    Classification,
    classify,
    classify_by_name,
    context_of,
    is_expected,
    report_critical,
)
from naq_resilience.policies.compensate import Saga, reset_action_log, use_action_log
from naq_resilience.policies.delays import DelaySchedule
from naq_resilience.policies.durations import Duration, seconds
from naq_resilience.policies.errors import CircuitBreakerOpenError, NonRetryable
from naq_resilience.policies.pipeline import qualified_name

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["ResultTooLargeError", "Worker", "WorkerConnectionLost", "current_job"]

log = logging.getLogger("naq_resilience.worker")

MAX_FETCH = 256
LEDGER_TTL: Final = 7 * 24 * 3600.0
"""A ledger outlives any sane retry delay or breaker outage, then expires with the job gone."""
RUNNING_AFTER: Final = 1.0
"""Seconds a job runs before its history records it as running (quicker jobs go
straight from queued to their outcome, which saves a record per job)."""
FULL_RETRY_DELAY: Final = 60.0
"""Seconds before a job whose dead letter found the dead-letter stream full comes back."""
UNSETTLED_RETRY_DELAY: Final = 30.0
"""Seconds before a message nothing could be written for (the server refusing, or gone)
is delivered again; that delivery counts as a crash, so the rounds are bounded."""
UNKNOWN_DEFERRAL: Final = (1.0, 60.0)
"""How long a job is deferred by a `CircuitBreakerOpenError` whose `retry_after` is None
(a breaker of the user's own that does not say): 1 s, doubling with each deferral of
the job, at most 60 s. A deferral uses no attempt, so a fixed short wait would redeliver
a job every second for as long as the breaker stays open; a fixed long one would keep
it waiting long after the breaker closed."""
RECORD_OUTCOMES_ENV: Final = "NAQ_RECORD_OUTCOMES"
"""`0` (or `false`, `no`, `off`): workers that do not say otherwise count no outcomes for
`error_rate`, `error_patterns` and `error_budget`."""
UNROUTABLE_AFTER_ENV: Final = "NAQ_UNROUTABLE_AFTER"
DEFAULT_UNROUTABLE_AFTER: Final = 300.0
"""Seconds a job no worker can route (its function's module not imported by the workers
that take it) is handed around before it is dead-lettered as unroutable: long enough for
a rolling deploy to bring up workers that import a new module, short enough that a job
for a module nobody imports is reported within minutes."""
UNROUTABLE_DELAY: Final = (1.0, 15.0)
"""How long a job this worker cannot route is handed back for: 1 s, doubling with each
hand-back, at most 15 s, at most a tenth of `unroutable_after` (so that a short one
still gives the job several rounds among the workers), and never past it. Each round
costs a redelivery and a ledger write; a shorter cap finds a capable worker among many
sooner, a longer one costs less while a flood of such jobs waits."""
UNROUTABLE_ERROR: Final = qualified_name(UnroutableJob)
"""`naq_resilience:UnroutableJob`: the `error_type` of an unroutable dead letter."""
LOG_EVERY: Final = 60.0
"""Seconds between two log lines about the same function's refused or handed-back jobs
(the lines held back in between are counted in the next one)."""
FAILURE_LINES: Final = 10
"""Log lines a minute per function and kind (failed attempts, dead letters, critical
errors): a burst of that many, then one every six seconds. A failing job logs each of
its attempts; a flood of failures of one function logs ten lines a minute, each saying
how many like it were held back, and does not hide the failures of other functions."""
_NO_LEDGER: Final = Ledger()
_NO_SCHEDULE = DelaySchedule("fixed", 0.0, None, None)


class ResultTooLargeError(NonRetryable):
    """A job's return value too big to store as its result: the job ran, its result is not
    kept, and running it again would not make the value smaller."""


ResultTooLargeError.__module__ = "naq_resilience"  # its wire name, like the library's others


class WorkerConnectionLost(ConnectionError):
    """The worker's NATS connection was closed for good; the process should exit and be
    restarted, its unsettled jobs are redelivered to other workers."""


def current_job() -> JobEnvelope | None:
    """The envelope of the job the calling code runs in (None outside a worker)."""
    run = running_job.get()
    return run[0] if run is not None else None


def unroutable_after_from_env() -> float:
    """`NAQ_UNROUTABLE_AFTER` in seconds, or the default (300) when it is unset."""
    raw = os.environ.get(UNROUTABLE_AFTER_ENV, "").strip()
    if not raw:
        return DEFAULT_UNROUTABLE_AFTER
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{UNROUTABLE_AFTER_ENV}={raw!r} is not a number of seconds; set e.g. "
            f"{UNROUTABLE_AFTER_ENV}=300"
        ) from None
    return seconds(value, UNROUTABLE_AFTER_ENV)


class _Every:
    """Lets through one log line per key every `period` seconds, and counts the rest, so
    a flood of one function's jobs logs a line a minute, not a line a job."""

    __slots__ = ("_last", "held", "period")

    def __init__(self, period: float) -> None:
        self.period = period
        self.held = 0
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str) -> int | None:
        """None to hold this line back; else how many were held back since the last."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.period:
            self._last[key] = (last[0], last[1] + 1)
            self.held += 1
            return None
        if last is None and len(self._last) >= 1024:  # names from a flood of garbage
            self._last.clear()
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0


class _Budget:
    """Lets through a burst of `burst` log lines per key, then one every `period / burst`
    seconds (a token bucket), and counts the rest: every failure of a failing job is
    logged, a flood of them is not."""

    __slots__ = ("_state", "burst", "held", "period")

    def __init__(self, burst: int, period: float) -> None:
        self.burst = burst
        self.period = period
        self.held = 0
        self._state: dict[str, tuple[float, float, int]] = {}

    def __call__(self, key: str) -> int | None:
        """None to hold this line back; else how many were held back since the last."""
        now = time.monotonic()
        state = self._state.get(key)
        if state is None:
            if len(self._state) >= 1024:  # names from a flood of garbage
                self._state.clear()
            tokens, held = float(self.burst), 0
        else:
            tokens = min(self.burst, state[0] + (now - state[1]) * self.burst / self.period)
            held = state[2]
        if tokens < 1.0:
            self._state[key] = (tokens, now, held + 1)
            self.held += 1
            return None
        self._state[key] = (tokens - 1.0, now, 0)
        return held


def _about(env: JobEnvelope, queue: str | None = None) -> dict[str, Any]:
    """The job a line is about, for a line logged outside the job's context, so that
    `naq worker-logs --job` finds it."""
    return {"job_id": env.id, "function": env.function, "queue": queue or env.queue}


def _held_back(count: int, what: str) -> str:
    return f" ({count} more {what} since the last such line)" if count else ""


class _Policy:
    """A job's effective retry policy: the decorator's, overridden by the job's options."""

    __slots__ = (
        "by_name", "ignore_names", "ignore_on", "max_attempts", "retry_names", "retry_on",
        "schedule",
    )  # fmt: skip

    def __init__(self, fn: JobFunction, env: JobEnvelope) -> None:
        retry = fn.retry
        max_retries = env.max_retries
        if max_retries is None:
            max_retries = retry.max_retries if retry is not None else 0
        self.max_attempts = max_retries + 1
        if env.retry_delay is not None or env.retry_strategy is not None:
            base = retry.schedule if retry is not None else None
            self.schedule = DelaySchedule.build(
                env.retry_delay if env.retry_delay is not None else (base.base if base else 1.0),
                env.retry_strategy
                if env.retry_strategy is not None
                else (base.strategy if base and base.strategy != "explicit" else "exponential"),
                base.max_delay if base else 60.0,
                base.jitter if base else "full",
            )
        elif retry is not None:
            self.schedule = retry.schedule
        else:
            self.schedule = DelaySchedule.build(1.0, "exponential", 60.0, "full")
        # Enqueue-time `retry_on` / `ignore_on` arrive as names: then the decorator's
        # classes are matched by name too, so the two combine in one by-name check.
        self.by_name = env.retry_on is not None or env.ignore_on is not None
        retry_on = retry.retry_on if retry is not None else None
        ignore_on = retry.ignore_on if retry is not None else ()
        self.retry_on, self.ignore_on = retry_on, ignore_on
        self.retry_names: frozenset[str] | None = (
            frozenset(env.retry_on)
            if env.retry_on is not None
            else None
            if retry_on is None
            else frozenset(map(qualified_name, retry_on))
        )
        self.ignore_names = frozenset(
            env.ignore_on if env.ignore_on is not None else map(qualified_name, ignore_on)
        )

    def classify(self, exc: BaseException) -> Classification:
        if self.by_name:
            return classify_by_name(exc, self.retry_names, self.ignore_names)
        return classify(exc, self.retry_on, self.ignore_on)


async def _finish(task: asyncio.Task[None], done: asyncio.Event) -> None:
    done.set()
    with contextlib.suppress(Exception):
        await task


class Worker:
    """Runs the jobs of one or more queues; `await worker.run()` until `stop()` or a signal.

    `imports` are the modules whose functions jobs may name (the CLI's `--import`), to
    which `NAQ_IMPORTS` (comma separated) and `[tool.naq] imports` of the nearest
    pyproject.toml add theirs (`import_sources` says where each came from); `functions`
    allows single functions directly. A job whose function is in a module this worker
    does not import (or that its version of the module lacks) is handed back for
    another worker, without using an attempt, and dead-lettered as unroutable when no
    worker took it for `unroutable_after` (default `NAQ_UNROUTABLE_AFTER`, or 300 s;
    0 dead-letters it at once). With no module and no function, the worker runs no job,
    which it warns about at start.
    Async jobs run on the event loop, sync jobs on a thread pool of `concurrency`
    threads; at most `concurrency` jobs run at once. `ack_wait` is how long the broker
    waits for a sign of life before redelivering; long jobs send one every third of it,
    from a thread of their own. `max_crashes` is how many deliveries of one job a worker
    crash may interrupt before the job is dead-lettered as a poison job. `storage` sets
    the replicas and limits of the streams this worker creates when they are missing.
    `strict` (or `NAQ_STRICT=1`) runs only functions marked `@job` or given in
    `functions`. Durations are seconds or `timedelta`s. `format` is what results are
    stored as: by default what `NAQ_JOB_SERIALIZER` says (json when unset; `pickle` is
    refused here, at start). `observers` are told of every change of a job's state and
    every failed attempt (`JobObserver`): metrics, counters, logs. `publish_logs`
    (default: on unless `NAQ_PUBLISH_LOGS=0`) publishes the log records of the process
    that reach the root logger while the worker runs to `NAQ_LOGS`, at most
    `logstream.RATE` a second, for `naq worker-logs`.
    Every worker also
    counts its outcomes and error patterns for `error_rate`, `error_patterns` and
    `error_budget` (`outcomes`, an `OutcomeRecorder`, sending its counts once a second);
    `record_outcomes=False` (default: `NAQ_RECORD_OUTCOMES`, on unless `0`) leaves them
    out.
    With `incidents`
    (the default), a job that fails with a critical error opens an incident in
    `naq-incidents`, or adds to the open one of the same error (`IncidentRecorder`).
    `tracing` runs each job in an OpenTelemetry span joined to the trace that enqueued
    it: by default when the process has configured a tracer provider by the time the
    worker is built; True (the global provider), False, or a `TracerProvider` of its
    own (`naq_resilience.jetstream.tracing`).
    """

    def __init__(
        self,
        queues: str | Sequence[str] = "default",
        *,
        nats_url: str | None = None,
        settings: ConnectionSettings | None = None,
        storage: StorageSettings | None = None,
        concurrency: int = 10,
        imports: Iterable[str] = (),
        functions: Iterable[Callable[..., Any]] = (),
        ack_wait: Duration = 30.0,
        shutdown_grace: Duration = 30.0,
        fetch_timeout: Duration = 1.0,
        max_crashes: int = 3,
        strict: bool = False,
        format: Format | None = None,
        worker_id: str | None = None,
        unroutable_after: Duration | None = None,
        observers: Iterable[JobObserver] = (),
        publish_logs: bool | None = None,
        record_outcomes: bool | None = None,
        incidents: bool = True,
        tracing: bool | TracerProvider | None = None,
    ) -> None:
        names = [queues] if isinstance(queues, str) else list(queues)
        if not names:
            raise ValueError("a worker needs at least one queue, e.g. Worker('default')")
        self.queues = tuple(layout.check_queue_name(q, "queue") for q in names)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
        if isinstance(max_crashes, bool) or not isinstance(max_crashes, int) or max_crashes < 1:
            raise ValueError(f"max_crashes must be a whole number >= 1, got {max_crashes!r}")
        self.concurrency = concurrency
        self.max_crashes = max_crashes
        self.import_sources = import_sources(imports)
        self.registry = FunctionRegistry(
            self.import_sources.modules, strict=strict or strict_from_env()
        )
        for func in functions:
            self.registry.register(func)
        if settings is None:
            settings = ConnectionSettings.from_env(**({"url": nats_url} if nats_url else {}))
        self._settings = settings
        self._storage = storage if storage is not None else StorageSettings.from_env()
        self.ack_wait = seconds(ack_wait, "ack_wait", positive=True)
        self.shutdown_grace = seconds(shutdown_grace, "shutdown_grace")
        self.fetch_timeout = seconds(fetch_timeout, "fetch_timeout", positive=True)
        self.unroutable_after = (
            unroutable_after_from_env()
            if unroutable_after is None
            else seconds(unroutable_after, "unroutable_after")
        )
        self._format: Format = serializer_from_env() if format is None else format
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.worker_id = worker_id or f"{self.host}:{self.pid}:{uuid.uuid4().hex[:6]}"
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._buckets: Buckets | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._publisher: Publisher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free = concurrency
        self._slot_freed = asyncio.Event()
        self._running: dict[asyncio.Task[None], tuple[Msg, float]] = {}
        self._on_thread: set[asyncio.Task[None]] = set()
        self._attempts: dict[asyncio.Task[None], tuple[JobEnvelope, int, float]] = {}
        self._announced: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._lost: str | None = None
        self._record_encoder = msgspec.json.Encoder(enc_hook=repr)
        self._policies: dict[str, _Policy] = {}
        self._log_handed_back = _Every(LOG_EVERY)
        self._log_refused = _Every(LOG_EVERY)
        self._log_unroutable = _Every(LOG_EVERY)
        self._log_failures = _Budget(FAILURE_LINES, 60.0)
        self.publish_logs = publish_logs_from_env() if publish_logs is None else publish_logs
        self._logs: LogPublisher | None = None
        self._started_at = time.time()
        if record_outcomes is None:
            record_outcomes = os.environ.get(RECORD_OUTCOMES_ENV, "").strip().lower() not in (
                "0", "false", "no", "off",
            )  # fmt: skip
        self.outcomes = OutcomeRecorder() if record_outcomes else None
        self.observers = Observers(
            (*observers, self.outcomes) if self.outcomes is not None else tuple(observers)
        )
        self._incidents: IncidentRecorder | None = None
        if incidents:
            self._incidents = IncidentRecorder(self.worker_id, self._storage)
            self.observers.add(self._incidents)
        # After the registry: the job modules it imported may have set up OpenTelemetry.
        self._tracing = job_tracing(tracing)
        if self._tracing is not None:
            self.observers.add(self._tracing)  # the records fill in the job's span
        self.processed = 0
        """Jobs that completed."""
        self.failed = 0
        """Attempts that failed (retried, or the last one)."""
        self.retried = 0
        self.dead = 0
        """Jobs dead-lettered, for any reason."""
        self.critical = 0
        self.deferred = 0
        self.handed_back = 0

    def _info(self) -> WorkerInfo:
        """This worker as `naq status` shows it."""
        return WorkerInfo(
            worker_id=self.worker_id, host=self.host, pid=self.pid, queues=list(self.queues),
            concurrency=self.concurrency, started_at=self._started_at, seen_at=time.time(),
            processed=self.processed, failed=self.failed, running=len(self._running),
            library=LIBRARY_VERSION, stopping=self._stopping.is_set(),
        )  # fmt: skip

    @property
    def has_jobs(self) -> bool:
        """False when no module and no function was given: every job would be refused."""
        return bool(self.registry.modules or self.registry.registered)

    @property
    def settings(self) -> ConnectionSettings:
        """How this worker connects (what a metrics reader connects with too)."""
        return self._settings

    @property
    def in_flight(self) -> dict[str, int]:
        """Jobs this worker holds now, by queue. Safe from another thread (a metrics
        scrape): the running set is copied in one step, as the heartbeat thread does."""
        counts = dict.fromkeys(self.queues, 0)
        for msg, _ in self._running.copy().values():
            queue = layout.queue_of_subject(msg.subject)
            counts[queue] = counts.get(queue, 0) + 1
        return counts

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Work until `stop()`; then finish in-flight jobs within `shutdown_grace`.

        Raises `WorkerConnectionLost` when the connection was closed for good: the jobs
        still running could not be settled, so they are left to be redelivered.
        """
        self._loop = asyncio.get_running_loop()
        self._started_at = time.time()
        worker_token = running_worker.set(self.worker_id)  # inherited by its tasks and jobs
        try:
            await self._run()
        finally:
            running_worker.reset(worker_token)
        if self._lost is not None:
            raise WorkerConnectionLost(self._lost)

    async def _run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            self._nc = nc = await connect(self._settings, max_reconnect_attempts=-1)
            stack.push_async_callback(self._close_connection, nc)
            if self.publish_logs:
                # Closed last but the connection, so the shutdown's lines are published.
                self._logs = LogPublisher(self.worker_id, self.host, self.pid)
                stack.push_async_callback(self._logs.stop)
            wait = self._settings.jetstream_timeout
            await ensure_jetstream(nc, wait)
            self._js = js = nc.jetstream()
            self._buckets = await while_jetstream_starts(
                lambda: ensure_layout(js, self._storage), timeout=wait, what="the job streams"
            )
            if self._logs is not None:
                self._logs.start(nc)
            self._publisher = Publisher(nc)
            await self._publisher.start()
            stack.push_async_callback(self._publisher.close)
            if self.outcomes is not None:
                await self.outcomes.start(self._publisher)
                # Before the publisher closes, after the last jobs were settled.
                stack.push_async_callback(self.outcomes.stop)
            if self._incidents is not None:
                self._incidents.bind(js)
                stack.push_async_callback(self._incidents.close)
            breakers = BreakerSync(self._buckets.breakers, self.worker_id)
            await breakers.start()
            stack.push_async_callback(breakers.stop)
            gone = asyncio.Event()
            announcer = asyncio.create_task(
                announce(js, self._storage.replicas, self._info, gone)
            )
            stack.push_async_callback(_finish, announcer, gone)
            heartbeats = Heartbeats(
                self._settings,
                lambda: [(m.reply, started) for m, started in self._running.copy().values()],
                self.ack_wait / 3,
                Worker._process.__code__,
                f"{self.worker_id} heartbeats",
            )
            await asyncio.to_thread(heartbeats.start)
            stack.push_async_callback(asyncio.to_thread, heartbeats.stop)
            stamper = asyncio.create_task(heartbeats.stamp_loop())  # before the thread looks
            stack.callback(stamper.cancel)
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="naq-job")
            stack.callback(self._pool.shutdown, wait=False, cancel_futures=True)
            pullers = [
                await while_jetstream_starts(
                    partial(self._puller, queue), timeout=wait, what=f"the consumer of {queue}"
                )
                for queue in self.queues
            ]
            watchers = [
                asyncio.create_task(self._watch_connection(nc)),
                asyncio.create_task(self._announce_running()),
                *(asyncio.create_task(self._fetch_loop(puller)) for puller in pullers),
            ]
            log.info(
                "worker %s started: queues=%s concurrency=%d modules=%s%s",
                self.worker_id, ",".join(self.queues), self.concurrency,
                self.import_sources.describe(),
                " strict (only @job functions)" if self.registry.strict else "",
            )  # fmt: skip
            if not self.has_jobs:
                log.warning("worker %s: %s", self.worker_id, NO_MODULES_WARNING)
            try:
                await self._stopping.wait()
            finally:
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                for puller in pullers:
                    with contextlib.suppress(Exception):
                        await puller.stop()  # no more deliveries for this worker
                if self._lost is None:
                    await self._drain_in_flight()
                else:
                    await self._abandon_in_flight()
                log.info("worker %s stopped: %s", self.worker_id, self.summary())

    def summary(self) -> str:
        """What happened while the worker ran, as its last log line says it."""
        said = [f"{self.processed} jobs completed", f"{self.failed} attempts failed"]
        if self.failed:
            said[-1] += f" ({self.retried} retried)"
        said.append(
            f"{self.dead} dead-lettered" + (f" ({self.critical} critical)" if self.critical else "")
        )
        if self.deferred:
            said.append(f"{self.deferred} deferred by open circuit breakers")
        if self.handed_back:
            said.append(f"{self.handed_back} handed back")
        held = (
            self._log_failures.held + self._log_handed_back.held + self._log_refused.held
            + self._log_unroutable.held
        )  # fmt: skip
        text = ", ".join(said)
        if held:
            text += f"; {held} log lines held back by rate limits"
        if self._logs is not None and self._logs.dropped_total:
            text += (
                f"; {self._logs.dropped_total} log records not published to "
                f"{layout.LOG_STREAM} (rate limit)"
            )
        return text

    @staticmethod
    async def _close_connection(nc: NatsClient) -> None:
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=5)  # the acks of the last jobs
            await nc.close()

    async def _watch_connection(self, nc: NatsClient) -> None:
        """nats-py closes a connection for good after some server errors; a worker that
        cannot fetch must not idle alive, so it stops and `run()` says why. (Polled:
        nats-py offers only its one `closed_cb`, which `connect` already uses.)"""
        while not nc.is_closed:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        self._connection_lost()

    def _connection_lost(self) -> None:
        if self._lost is None:
            assert self._nc is not None
            why = self._nc.last_error
            self._lost = "the NATS connection was closed for good" + (
                f" ({type(why).__name__}: {why})" if why is not None else ""
            )
        self._stopping.set()

    def stop(self) -> None:
        """Stop fetching; in-flight jobs get `shutdown_grace` seconds to finish.

        Safe to call from any thread (an application embedding a worker stops it from
        its own shutdown code), not only from the worker's event loop.
        """
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop and not loop.is_closed():
            loop.call_soon_threadsafe(self._stopping.set)
        else:
            self._stopping.set()

    @contextlib.contextmanager
    def running(self, timeout: float = 30.0) -> Iterator[Worker]:
        """`with worker.running():` runs the worker on a thread of its own (with its own
        event loop) for the block, for synchronous programs, scripts and tests; on exit
        it stops as `stop()` does and waits for it. An error that ended the worker is
        raised at the block's end."""
        failed: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as error:
                failed.append(error)

        thread = threading.Thread(target=main, name=f"naq-worker {self.worker_id}", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while self._loop is None and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            yield self
        finally:
            self.stop()
            thread.join(self.shutdown_grace + timeout)
        if failed:
            raise failed[0]

    def run_forever(self) -> None:
        """`run()` in a new event loop, stopping gracefully on SIGTERM or SIGINT.

        A second signal exits at once: jobs still running are then redelivered to other
        workers (each counted as a crash), which is what the operator asked for.
        """

        async def main() -> None:
            loop = asyncio.get_running_loop()
            signals = 0

            def on_signal() -> None:
                nonlocal signals
                signals += 1
                if signals == 1:
                    self.stop()
                    return
                log.warning(
                    "worker %s: second signal, exiting now; %d running jobs will be "
                    "redelivered", self.worker_id, len(self._running),
                )  # fmt: skip
                logging.shutdown()
                os._exit(1)

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal)
            await self.run()

        asyncio.run(main())

    async def _drain_in_flight(self) -> None:
        if not self._running:
            return
        _, pending = await asyncio.wait(list(self._running), timeout=self.shutdown_grace)
        if not pending:
            return
        threads = [task for task in pending if task in self._on_thread]
        for task in pending:
            if task not in self._on_thread:
                task.cancel()  # the job is handed back once it has stopped (_process)
        log.warning(
            "worker %s: %d jobs did not finish within the %.0fs shutdown grace; %d async "
            "ones were cancelled and handed back%s",
            self.worker_id, len(pending), self.shutdown_grace, len(pending) - len(threads),
            "" if not threads else (
                f", {len(threads)} sync ones run on threads Python cannot stop: the worker "
                "waits for them to end (their messages stay here, kept alive by heartbeats, "
                "so no other worker runs them meanwhile); a second SIGTERM exits at once "
                "and they are redelivered"
            ),
        )  # fmt: skip
        await asyncio.gather(*pending, return_exceptions=True)

    async def _abandon_in_flight(self) -> None:
        """The connection is gone: nothing can be settled, so stop at once."""
        log.error(
            "worker %s: %s; %d running jobs cannot be settled and will be redelivered to "
            "other workers. The worker stops (`naq worker` exits with status 3, for its "
            "supervisor to start it again)",
            self.worker_id, self._lost, len(self._running),
        )  # fmt: skip
        for task in list(self._running):
            if task not in self._on_thread:
                task.cancel()
        async_tasks = [t for t in self._running if t not in self._on_thread]
        await asyncio.gather(*async_tasks, return_exceptions=True)

    async def _puller(self, queue: str) -> Puller:
        """The queue's durable consumer (created, or its `ack_wait` updated), and a puller."""
        assert self._js is not None
        assert self._nc is not None
        config = self._consumer_config(queue)
        await self._js.add_consumer(layout.JOB_STREAM, config)
        puller = Puller(
            self._nc,
            layout.JOB_STREAM,
            config.durable_name or "",
            partial(self._start, queue),
            self.fetch_timeout,
        )
        await puller.start()
        return puller

    def _consumer_config(self, queue: str) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=layout.worker_consumer(queue),
            filter_subject=layout.job_subject(queue),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=-1,
            max_waiting=512,
        )

    # ------------------------------------------------------------------ fetching
    async def _fetch_loop(self, puller: Puller) -> None:
        # Pull when half the slots are free (or all jobs ended), not whenever one is:
        # a request per finished job would be a round trip per job.
        low_water = max(1, min(self.concurrency, MAX_FETCH) // 2)
        while not self._stopping.is_set():
            if self._free < low_water and self._running:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                await puller.pull(min(self._free, MAX_FETCH))
            except (nats.errors.ConnectionClosedError, nats.errors.NoServersError):
                self._connection_lost()
                return
            except Exception as exc:  # disconnected: nats-py reconnects; try again shortly
                log.debug("pull request failed (%r); retrying", exc)
                await asyncio.sleep(0.25)

    def _start(self, queue: str, msg: Msg) -> None:
        """A message arrived: it starts now (it was asked for, so a slot is free)."""
        self._free -= 1
        work = self._handle(msg, queue) if not self._stopping.is_set() else self._return(msg)
        task = asyncio.create_task(work)
        self._running[task] = (msg, time.time())
        task.add_done_callback(self._done)

    async def _return(self, msg: Msg) -> None:
        """A message that arrived as the worker stopped goes back unstarted, recorded as
        handed back, so it does not count as a crash."""
        try:
            env = decode_envelope(msg.data)
        except InvalidMessage:
            await msg.nak()  # the next worker dead-letters it
            return
        ledger = await self._ledger(env.id) if _delivered(msg) > 1 else _NO_LEDGER
        await self._hand_back(msg, env, ledger, 0.0, "it arrived as the worker stopped")

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._on_thread.discard(task)
        self._attempts.pop(task, None)
        self._announced.discard(task)
        self._free += 1
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker bug while handling a job", exc_info=task.exception())

    # ------------------------------------------------------------------ one job
    async def _handle(self, msg: Msg, queue: str) -> None:
        try:
            await self._process(msg, queue)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._backstop(msg, queue, exc)
        finally:
            if self._tracing is not None:
                self._tracing.end()  # the span `_process` started, once the job is settled

    async def _process(self, msg: Msg, queue: str) -> None:
        try:
            env = decode_envelope(msg.data)
        except InvalidMessage as exc:
            await self._dead_raw(msg, queue, exc.reason)
            return
        env = run_envelope(env, msg.headers)  # a repeating schedule's run gets its own id
        if env.queue != queue:
            # The subject is where the job is: failures and history are filed under it.
            # (Only a hand-written envelope differs, typically by leaving `queue` out.)
            env = msgspec.structs.replace(env, queue=queue)
        if self._tracing is not None:
            self._tracing.start(env, queue, msg.headers)
        ledger = _NO_LEDGER
        crashes = 0
        delivered = _delivered(msg)
        if delivered > 1 and env.result_ttl is not None:
            # Before the function is looked up: a worker that cannot run it must not
            # hand back, or dead-letter, a job that already ended.
            ended = await self._already_settled(env)
            if ended is not None:
                await msg.ack()  # it ended before; only its ack was lost
                await self._record(env, ended, finished_at=time.time())
                return
        try:
            fn = self.registry.resolve(env.function)
        except UnroutableJob as exc:
            await self._unroutable(msg, env, queue, exc, delivered)
            return
        except UnknownFunction as exc:
            held = self._log_refused(env.function)
            if held is not None:
                log.error(
                    "job %s dead-lettered to %s: %s%s", env.id,
                    env.dead_letter_queue or layout.dead_letter_queue_for(queue), exc.reason,
                    _held_back(held, "jobs of this function"),
                    extra=_about(env, queue),
                )  # fmt: skip
            await self._dead(msg, env, queue, exc.reason, [])
            return
        if delivered > 1:
            ledger = await self._ledger(env.id)
            crashes = _crashes(delivered, ledger)
            if crashes >= self.max_crashes:
                await self._dead_poison(msg, env, queue, crashes, ledger)
                return
            if ledger.unroutable_since is not None:
                # A worker that can run it took it: the wait for one is over (a later
                # hand-back, after a failed attempt, starts a new one).
                ledger = msgspec.structs.replace(ledger, unroutable=0, unroutable_since=None)
                await self._write_ledger(env.id, ledger)
        token = running_job.set((env, ledger.failed + 1))
        logs: list[KVActionLog] | None = None
        if fn.has_saga:
            logs = []
            if delivered > 1:
                await self._roll_back_crashed(env)
            log_token = use_action_log(partial(self._saga_log, env, logs))
        started = time.time()
        task = asyncio.current_task()
        if task is not None:
            self._attempts[task] = (env, ledger.failed + 1, started)
        try:
            args, kwargs = fn.convert(env.args, env.kwargs, env.exceptions)
            if fn.is_async:
                result = fn.runner(*args, **kwargs)
                if env.timeout is not None:
                    result = await _within_timeout(result, env)
                else:
                    result = await result
            else:
                result = await self._run_on_thread(fn, env, args, kwargs)
            if logs:
                await _flush(logs)
            if env.result_ttl is not None:
                await self._store_completed(env, result)
        except CircuitBreakerOpenError as exc:
            if logs:
                await _flush(logs)
            await self._defer(msg, env, exc, ledger)
        except asyncio.CancelledError:
            if self._stopping.is_set() and self._lost is None:
                with contextlib.suppress(Exception):  # unsettled, it comes back as a crash
                    await self._hand_back(msg, env, ledger, 0.0, "the worker is shutting down")
            raise
        except Exception as exc:
            if logs:
                await _flush(logs)
            await self._failed(msg, env, queue, fn, exc, started, ledger, crashes)
        else:
            await msg.ack()
            self.processed += 1
            await self._record(
                env, JobStatus.COMPLETED, started_at=started, finished_at=time.time(),
                attempts=ledger.failed + 1,
            )  # fmt: skip
        finally:
            running_job.reset(token)
            if fn.has_saga:
                reset_action_log(log_token)

    async def _dead_poison(
        self, msg: Msg, env: JobEnvelope, queue: str, crashes: int, ledger: Ledger
    ) -> None:
        reason = (
            f"a worker crashed (was killed, ran out of memory or lost its connection) "
            f"during {crashes} deliveries of this job, the limit of max_crashes="
            f"{self.max_crashes}: a poison job. It failed {ledger.failed} attempts "
            "before that"
        )
        stored = await self._dead(
            msg, env, queue, reason, await self._history(env) if ledger.failed else []
        )
        held = self._log_failures(f"poison:{env.function}") if stored else None
        if held is not None:
            log.error(
                "job %s (%s) dead-lettered to %s: %s%s", env.id, env.function,
                env.dead_letter_queue or layout.dead_letter_queue_for(queue), reason,
                _held_back(held, "such lines of this function"),
                extra={"job_id": env.id, "function": env.function, "queue": queue,
                       "crashes": crashes, "held_back": held},
            )  # fmt: skip

    async def _run_on_thread(
        self, fn: JobFunction, env: JobEnvelope, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        """Run a sync job on the pool; a timeout fails the attempt, never frees the job early.

        The task stays in the running set (heartbeats go on) until the thread has
        ended, so the job's next attempt cannot start while this one still runs.
        """
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        task = asyncio.current_task()
        assert task is not None
        self._on_thread.add(task)
        future = loop.run_in_executor(self._pool, ctx.run, _call, fn.runner, args, kwargs)
        if env.timeout is None:
            return await future
        started = time.monotonic()
        done, _ = await asyncio.wait([future], timeout=env.timeout)
        if done:
            return future.result()  # returned or raised in time, its own error included
        log.warning(
            "job %s (%s) ran past its timeout of %gs; a thread cannot be stopped, so the job "
            "keeps its message until the thread ends, then fails with TimeoutError",
            env.id, env.function, env.timeout,
        )  # fmt: skip
        await asyncio.wait([future])
        raise TimeoutError(
            f"job {env.id} ({env.function}) ran past its timeout of {env.timeout:g}s (its "
            f"thread ended after {time.monotonic() - started:.1f}s; what it returned or "
            "raised was discarded)"
        )

    def _policy(self, fn: JobFunction, env: JobEnvelope) -> _Policy:
        """Most jobs carry no options of their own: their policy is built once per function."""
        if (
            env.max_retries is None
            and env.retry_delay is None
            and env.retry_strategy is None
            and env.retry_on is None
            and env.ignore_on is None
        ):
            policy = self._policies.get(fn.name)
            if policy is None:
                policy = self._policies[fn.name] = _Policy(fn, env)
            return policy
        return _Policy(fn, env)

    def _saga_log(self, env: JobEnvelope, logs: list[KVActionLog]) -> KVActionLog:
        assert self._buckets is not None
        assert self._loop is not None  # the factory may run on a job thread: no running loop
        created = KVActionLog(self._buckets.sagas, env.id, self._loop)
        logs.append(created)
        return created

    async def _roll_back_crashed(self, env: JobEnvelope) -> None:
        """A delivery of this job died mid-saga: undo its steps before running it again."""
        assert self._buckets is not None
        stored = await load_action_log(self._buckets.sagas, env.id, asyncio.get_running_loop())
        if stored is None:
            return
        saga = Saga(stored, name=f"{env.function} (job {env.id}, an interrupted delivery)")
        compensation = await saga.arollback()
        await stored.flush()
        if compensation is not None:
            report_critical(compensation)
            log.error("job %s: %s", env.id, compensation)
        else:
            log.info("job %s: rolled back the steps of an interrupted delivery", env.id)

    async def _already_settled(self, env: JobEnvelope) -> JobStatus | None:
        """How a redelivered job ended, if its result already says: its ack was lost (a
        worker killed between storing the result and acking, a failover), and running
        it again would only run it twice."""
        assert self._buckets is not None
        try:
            entry = await self._buckets.results.get(env.id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            status = decode(entry.value, JobResult).status
        except msgspec.DecodeError:
            return None
        log.info(
            "job %s was redelivered but had already ended (%s): acked", env.id, status,
            extra=_about(env),
        )  # fmt: skip
        return JobStatus.FAILED if status is JobStatus.DEAD else status

    # ------------------------------------------------------------------ history
    async def _record(self, env: JobEnvelope, status: JobStatus, **fields: Any) -> None:
        """The job's new state in its history: sent without waiting for an ack (history
        is for looking, not for deciding), after the job was settled."""
        assert self._nc is not None
        record = JobRecord(
            job_id=env.id, queue=env.queue, function=env.function, status=status,
            updated_at=time.time(), enqueued_at=env.enqueued_at, worker_id=self.worker_id,
            replay_of=env.replay_of, **fields,
        )  # fmt: skip
        with contextlib.suppress(Exception):
            await self._nc.publish(
                layout.history_subject(env.id), self._record_encoder.encode(record)
            )
        if self.observers.items:
            self.observers.job_changed(record)

    async def _announce_running(self) -> None:
        """Jobs that have run for a second are recorded as running. From the loop, on
        the job's own connection, so the record cannot overtake the final one."""
        while True:
            await asyncio.sleep(RUNNING_AFTER)
            due = time.time() - RUNNING_AFTER
            for task, (env, attempt, started) in list(self._attempts.items()):
                if started <= due and task not in self._announced and not task.done():
                    self._announced.add(task)
                    await self._record(
                        env, JobStatus.RUNNING, started_at=started, attempts=attempt
                    )

    # ------------------------------------------------------------------ the ledger
    async def _ledger(self, job_id: str) -> Ledger:
        assert self._buckets is not None
        try:
            entry = await self._buckets.attempts.get(job_id)
        except KeyNotFoundError:
            return _NO_LEDGER
        if not entry.value:
            return _NO_LEDGER
        try:
            return decode(entry.value, Ledger)
        except msgspec.DecodeError:
            log.warning("job %s: its attempt ledger is unreadable; counting from zero", job_id)
            return _NO_LEDGER

    async def _write_ledger(self, job_id: str, ledger: Ledger) -> None:
        """Stored before the `nak` it announces, so a redelivery is never mistaken for a
        crash; a ledger that cannot be written makes the redelivery count as one, which
        only brings a poison job's end closer."""
        assert self._publisher is not None
        try:
            await self._publisher.store(
                f"$KV.{layout.ATTEMPT_BUCKET}.{job_id}",
                encode(ledger),
                msg_ttl=LEDGER_TTL,
                resend=True,
            )
        except Exception as exc:
            log.warning("job %s: attempt ledger not written (%r)", job_id, exc)

    async def _hand_back(
        self, msg: Msg, env: JobEnvelope, ledger: Ledger, delay: float, why: str
    ) -> None:
        """Give the job back unfinished: neither an attempt nor a crash."""
        handed = msgspec.structs.replace(ledger, handed_back=ledger.handed_back + 1)
        await self._write_ledger(env.id, handed)
        await msg.nak(delay=delay or None)
        if self._tracing is not None:
            self._tracing.outcome("handed_back")
        self.handed_back += 1
        log.info("job %s handed back (%s)", env.id, why, extra=_about(env))

    async def _defer(
        self, msg: Msg, env: JobEnvelope, exc: CircuitBreakerOpenError, ledger: Ledger
    ) -> None:
        """The breaker is open: come back when it may close, without using an attempt."""
        delay = exc.retry_after
        if delay is None:  # the breaker does not know: back off, per deferral of this job
            first, longest = UNKNOWN_DEFERRAL
            delay = min(first * 2.0 ** min(ledger.deferred, 16), longest)
        await self._write_ledger(
            env.id, msgspec.structs.replace(ledger, deferred=ledger.deferred + 1)
        )
        await msg.nak(delay=max(delay, 0.001))
        if self._tracing is not None:
            self._tracing.outcome("deferred")
        self.deferred += 1
        log.debug("job %s deferred %.3fs: breaker %s open", env.id, delay, exc.name or "-")

    async def _unroutable(
        self, msg: Msg, env: JobEnvelope, queue: str, exc: UnroutableJob, delivered: int
    ) -> None:
        """This worker cannot run the job's function but another may: hand it back, not
        as an attempt, until no worker took it for `unroutable_after`; then dead-letter
        it as unroutable. The time is kept in the job's ledger, so it counts across
        workers from the first hand-back."""
        ledger = await self._ledger(env.id) if delivered > 1 else _NO_LEDGER
        if delivered > 1 and _crashes(delivered, ledger) >= self.max_crashes:
            # Also what bounds the rounds when the ledger cannot be written (the wait
            # could not be measured): each such hand-back counts as a crash.
            await self._dead_poison(msg, env, queue, _crashes(delivered, ledger), ledger)
            return
        now = time.time()
        since = ledger.unroutable_since if ledger.unroutable_since is not None else now
        waited = max(0.0, now - since)  # a clock behind the first worker's: not negative
        if waited >= self.unroutable_after:
            reason = unroutable_reason(
                env, queue, exc, waited, ledger.unroutable, self.unroutable_after,
                self.registry.modules,
            )  # fmt: skip
            failures = await self._history(env) if ledger.failed else []
            stored = await self._dead(
                msg, env, queue, reason, failures, error_type=UNROUTABLE_ERROR
            )
            held = self._log_unroutable(env.function) if stored else None
            if held is not None:
                log.error(
                    "job %s dead-lettered to %s: %s%s", env.id,
                    env.dead_letter_queue or layout.dead_letter_queue_for(queue), reason,
                    _held_back(held, "unroutable jobs of this function"),
                    extra=_about(env, queue),
                )  # fmt: skip
            return
        first, longest = UNROUTABLE_DELAY
        delay = min(
            first * 2.0 ** min(ledger.unroutable, 16),
            longest,
            self.unroutable_after / 10,
            self.unroutable_after - waited,
        )
        handed = msgspec.structs.replace(
            ledger,
            handed_back=ledger.handed_back + 1,
            unroutable=ledger.unroutable + 1,
            unroutable_since=since,
        )
        await self._write_ledger(env.id, handed)
        await msg.nak(delay=max(delay, 0.001))
        if self._tracing is not None:
            self._tracing.outcome("handed_back")
        self.handed_back += 1
        held = self._log_handed_back(env.function)
        if held is not None:
            log.warning(
                "job %s handed back for another worker (not an attempt): %s. Unless a worker "
                "runs it within %gs of its first hand-back (unroutable_after; %gs so far), "
                "it is dead-lettered as unroutable%s",
                env.id, exc.reason, self.unroutable_after, round(waited, 1),
                _held_back(held, "hand-backs of this function"),
                extra=_about(env, queue),
            )  # fmt: skip

    # ------------------------------------------------------------------ failures
    async def _failed(
        self,
        msg: Msg,
        env: JobEnvelope,
        queue: str,
        fn: JobFunction,
        exc: Exception,
        started: float,
        ledger: Ledger,
        crashes: int,
    ) -> None:
        self.failed += 1
        attempt = ledger.failed + 1
        policy = self._policy(fn, env)
        kind = policy.classify(exc)
        if kind is Classification.CRITICAL:
            report_critical(exc)
        retry_after = getattr(exc, "retry_after", None)
        delay = None
        if kind is Classification.RETRYABLE and attempt < policy.max_attempts:
            if isinstance(retry_after, (int, float)) and retry_after >= 0:
                delay = float(retry_after)
            else:
                delay = policy.schedule.delay(attempt)
        now = time.time()
        message = _message(exc)
        error_type = qualified_name(type(exc))
        where = where_of(exc)
        record = FailureRecord(
            job_id=env.id,
            function=env.function,
            queue=queue,
            attempt=attempt,
            max_attempts=policy.max_attempts,
            error_type=error_type,
            message=message,
            traceback=_format_traceback(exc),
            classification=kind.value,
            outcome="retry" if delay is not None else "dead",
            injected=is_injected(exc),
            worker_id=self.worker_id,
            host=self.host,
            pid=self.pid,
            started_at=started,
            failed_at=now,
            duration=now - started,
            context=context_of(exc),
            next_retry_at=None if delay is None else now + delay,
            crashes=crashes,
            where=where,
            fingerprint=fingerprint_of(error_type, where),
        )
        subject = layout.failure_subject(record.queue, record.job_id)
        assert self._nc is not None
        limit = min(RECORD_LIMIT, self._nc.max_payload - 1024)
        record, payload = fit_failure(record, self._record_encoder.encode, limit)
        if self.observers.items:
            self.observers.attempt_failed(record)
        assert self._publisher is not None
        if delay is not None:
            # Both stored before the nak: the history is complete, and the redelivery
            # will not be taken for a crash.
            await asyncio.gather(
                self._publisher.store(subject, payload),
                self._write_ledger(
                    env.id, msgspec.structs.replace(ledger, failed=ledger.failed + 1)
                ),
            )
            await msg.nak(delay=delay)
            self.retried += 1
            await self._record(
                env, JobStatus.RETRYING, started_at=started, attempts=attempt,
                error_type=record.error_type, error=record.message[:512],
                next_retry_at=record.next_retry_at,
            )  # fmt: skip
            self._log_failure(record, kind, exc, None)
            return
        # The job is dead: the dead letter, stored before the ack, carries this record
        # too, so the copy for the failures stream does not wait for its own ack.
        assert self._nc is not None
        await self._nc.publish(subject, payload)
        error_type = record.error_type
        if kind is Classification.CRITICAL:
            reason = f"critical error {error_type}: {cut_text(message, MESSAGE_LIMIT)}"
        elif kind is Classification.NON_RETRYABLE:
            reason = f"non-retryable error {error_type}: {cut_text(message, MESSAGE_LIMIT)}"
        else:
            reason = f"out of attempts ({attempt} of {policy.max_attempts}): {error_type}"
        earlier = await self._history(env) if attempt > 1 else []
        history = [h for h in earlier if h.attempt < attempt] + [record]
        if kind is Classification.CRITICAL:
            self.critical += 1
        stored = await self._dead(
            msg, env, queue, reason, history, error=f"{error_type}: {record.message}"
        )
        if stored:
            dead_queue = env.dead_letter_queue or layout.dead_letter_queue_for(queue)
            self._log_failure(record, kind, exc, dead_queue)

    def _log_failure(
        self, record: FailureRecord, kind: Classification, exc: Exception, dead_queue: str | None
    ) -> None:
        """A failed attempt's line: a WARNING saying when it runs again, or an ERROR (a
        CRITICAL for a critical error) saying where its dead letter is, with the
        traceback when the error is critical or unexpected (`is_expected`). Every field
        is also given apart (`extra`), for JSON lines and `naq worker-logs`."""
        if dead_queue is None:
            level, what = logging.WARNING, "retry"
        elif kind is Classification.CRITICAL:
            level, what = logging.CRITICAL, "critical"
        else:
            level, what = logging.ERROR, "dead"
        if not log.isEnabledFor(level):
            return
        held = self._log_failures(f"{what}:{record.function}")
        if held is None:
            return
        next_at = None if record.next_retry_at is None else iso_time(record.next_retry_at)
        if next_at is not None:
            assert record.next_retry_at is not None
            wait = record.next_retry_at - record.failed_at
            then = f"; it runs again in {wait:.3g}s, at {next_at}"
        elif kind is Classification.CRITICAL:
            then = f"; a critical error is not retried: dead-lettered to {dead_queue}"
        elif kind is Classification.NON_RETRYABLE:
            then = f"; not retryable: dead-lettered to {dead_queue}"
        else:
            then = f"; out of attempts: dead-lettered to {dead_queue}"
        extra: dict[str, Any] = {
            "job_id": record.job_id, "function": record.function, "queue": record.queue,
            "attempt": record.attempt, "max_attempts": record.max_attempts,
            "error_type": record.error_type, "error_message": record.message,
            "classification": record.classification, "outcome": record.outcome,
            "next_retry_at": next_at, "dead_letter_queue": dead_queue,
        }  # fmt: skip
        if record.context:
            extra["context"] = record.context
        if held:
            extra["held_back"] = held
        log.log(
            level, "job %s (%s) attempt %d of %d failed: %s: %s%s%s",
            record.job_id, record.function, record.attempt, record.max_attempts,
            record.error_type, cut_text(record.message, 500), then,
            _held_back(held, "such lines of this function"),
            exc_info=exc if level == logging.CRITICAL or (
                level == logging.ERROR and not is_expected(exc)
            ) else None,
            extra=extra,
        )  # fmt: skip

    async def _history(self, env: JobEnvelope) -> list[FailureRecord]:
        """The job's earlier failure records, read back from the failures stream."""
        assert self._js is not None
        subject = layout.failure_subject(env.queue, env.id)
        records: list[FailureRecord] = []
        for got in await read_messages(self._js, layout.FAILURE_STREAM, subject):
            with contextlib.suppress(msgspec.DecodeError):
                records.append(decode(got.data, FailureRecord))
        return records

    # ------------------------------------------------------------------ dead letters
    async def _dead(
        self,
        msg: Msg,
        env: JobEnvelope,
        queue: str,
        reason: str,
        failures: list[FailureRecord],
        error: str | None = None,
        error_type: str | None = None,
    ) -> bool:
        """Store the dead letter (and the records before it), then ack: never the other way.

        False when it could not be stored (the dead-letter stream is full): the job was
        handed back to come again later. `error_type` is the letter's, for a dead end the
        worker decided (`UNROUTABLE_ERROR`).
        """
        dead_queue = env.dead_letter_queue or layout.dead_letter_queue_for(queue)
        letter = DeadLetter(
            reason=reason,
            queue=queue,
            dead_letter_queue=dead_queue,
            dead_at=time.time(),
            job=env,
            failures=failures,
            error_type=error_type,
        )
        stored = await self._publish_dead(msg, letter, env.id, env.dead_letter_ttl)
        if stored:
            self.dead += 1
        if stored and env.result_ttl is not None:
            with contextlib.suppress(Exception):  # the letter is stored: that is the outcome
                await self._store_result(env, JobStatus.DEAD, None, error or reason)
        if stored:
            await msg.ack()
            log.debug(
                "job %s dead-lettered to %s: %s", env.id, dead_queue, reason,
                extra=_about(env, queue),
            )  # fmt: skip
            last = failures[-1] if failures else None
            await self._record(
                env, JobStatus.FAILED, finished_at=letter.dead_at,
                started_at=last.started_at if last else None,
                attempts=last.attempt if last else 0,
                error_type=error_type or (last.error_type if last else None),
                error=(last.message if last and not error_type else reason)[:512],
                dead_letter_queue=dead_queue,
            )  # fmt: skip
        return stored

    async def _dead_raw(self, msg: Msg, queue: str, reason: str) -> None:
        dead_queue = layout.dead_letter_queue_for(queue)
        seq = _stream_sequence(msg)
        letter = DeadLetter(
            reason=reason, queue=queue, dead_letter_queue=dead_queue, dead_at=time.time(),
            raw=bytes(msg.data), letter_id=f"seq-{seq}",
        )  # fmt: skip
        if await self._publish_dead(msg, letter, letter.letter_id, None):
            await msg.ack()
            self.dead += 1
            held = self._log_refused(f"unreadable:{queue}")
            if held is not None:
                log.error(
                    "message %d on %s dead-lettered as %s: %s%s", seq, queue, letter.letter_id,
                    reason, _held_back(held, "unreadable messages on this queue"),
                    extra={"queue": queue, "job_id": letter.letter_id},
                )  # fmt: skip

    async def _publish_dead(
        self, msg: Msg, letter: DeadLetter, name: str, ttl: float | None
    ) -> bool:
        """Store a dead letter fitted to `max_payload`; False when the dead-letter stream
        is full (the job is then handed back to wait for room, never acked away).

        A letter stored twice (the job's ack lost after the letter was written) is
        stored once: the dead-letter stream keeps one message per subject, a job's.
        """
        assert self._publisher is not None
        ttl_header = 0 if ttl is None else 24  # "Nats-TTL: <seconds>\r\n" and the block
        budget = self._publisher.max_payload - ttl_header
        payload = self._record_encoder.encode(letter)
        moved = False
        if len(payload) > budget:
            original = layout.original_subject(letter.dead_letter_queue, name)
            payload, moved = fit_dead_letter(
                letter, self._record_encoder.encode, budget, bytes(msg.data), original
            )
        subject = layout.dead_subject(letter.dead_letter_queue, name)
        try:
            if moved:
                await asyncio.gather(
                    self._publisher.store(subject, payload, msg_ttl=ttl, resend=True),
                    self._store_original(
                        msg, layout.original_subject(letter.dead_letter_queue, name), ttl
                    ),
                )
            else:
                await self._publisher.store(subject, payload, msg_ttl=ttl, resend=True)
        except StreamFullError as exc:
            log.error(
                "the dead-letter stream %s is full (%s): job %s stays in its queue and comes "
                "back in %.0fs; make room (`naq dlq purge`, NAQ_DEAD_MAX_BYTES) or nothing more "
                "can be dead-lettered",
                layout.DEAD_STREAM, exc.description, name, FULL_RETRY_DELAY,
            )  # fmt: skip
            ledger = await self._ledger(name) if _delivered(msg) > 1 else _NO_LEDGER
            handed = msgspec.structs.replace(ledger, handed_back=ledger.handed_back + 1)
            await self._write_ledger(name, handed)
            await msg.nak(delay=FULL_RETRY_DELAY)
            return False
        return True

    async def _store_original(self, msg: Msg, subject: str, ttl: float | None) -> None:
        """The job's message, byte for byte, beside a letter too small to hold it."""
        assert self._publisher is not None
        data = bytes(msg.data)
        if ttl is not None and len(data) + 24 > self._publisher.max_payload:
            ttl = None  # no room for the TTL header: kept until the stream's max_age
        await self._publisher.store(subject, data, None, ttl, resend=True)

    async def _backstop(self, msg: Msg, queue: str, exc: Exception) -> None:
        """Something failed while handling or settling this message: end it as a dead
        letter that says so; if that fails too, a minimal one; if nothing can be
        written, let it come back later (a delivery the ledger counts as a crash)."""
        seq = _stream_sequence(msg)
        log.error(
            "worker error while handling message %d on %s; dead-lettering it", seq, queue,
            exc_info=exc,
        )  # fmt: skip
        reason = (
            f"the worker failed while handling this message: {qualified_name(type(exc))}: "
            f"{cut_text(_message(exc), MESSAGE_LIMIT)}"
        )
        try:
            env = decode_envelope(msg.data)
        except InvalidMessage:
            env = None
        try:
            if env is None:
                await self._dead_raw(msg, queue, reason)
            else:
                await self._dead(msg, msgspec.structs.replace(env, queue=queue), queue, reason, [])
            return
        except Exception as second:
            log.error("message %d: its dead letter failed too (%r)", seq, second)
        try:
            assert self._publisher is not None
            job_id = env.id if env is not None else f"seq-{seq}"
            dead_queue = (env.dead_letter_queue if env else None) or layout.dead_letter_queue_for(
                queue
            )
            original = layout.original_subject(dead_queue, job_id)
            minimal = DeadLetter(
                reason=cut_text(reason, 1024), queue=queue, dead_letter_queue=dead_queue,
                dead_at=time.time(), original_subject=original,
                letter_id=job_id,  # the job itself is left out: the id must be said
                cut=[f"a last-resort letter: the job's message is kept verbatim at {original}"],
            )  # fmt: skip
            await asyncio.gather(
                self._store_original(msg, original, None),
                self._publisher.store(
                    layout.dead_subject(dead_queue, job_id),
                    self._record_encoder.encode(minimal),
                    resend=True,
                ),
            )
            await msg.ack()
            if env is not None:
                await self._record(
                    msgspec.structs.replace(env, queue=queue), JobStatus.FAILED,
                    finished_at=minimal.dead_at, error=reason[:512],
                    dead_letter_queue=dead_queue,
                )  # fmt: skip
        except Exception as third:
            log.error(
                "message %d: not even a minimal dead letter could be stored (%r); it comes "
                "back in %.0fs", seq, third, UNSETTLED_RETRY_DELAY,
            )  # fmt: skip
            with contextlib.suppress(Exception):
                await msg.nak(delay=UNSETTLED_RETRY_DELAY)

    async def _store_completed(self, env: JobEnvelope, result: Any) -> None:
        """The job ran: a result too big fails it (`ResultTooLargeError`), but a store that
        refuses it (the results bucket full, the server gone) must not make it run again."""
        try:
            await self._store_result(env, JobStatus.COMPLETED, result, None)
        except ResultTooLargeError:
            raise
        except Exception as exc:
            log.error(
                "job %s (%s) completed but its result could not be stored (%r); "
                "Job.result() will not find it", env.id, env.function, exc,
            )  # fmt: skip

    async def _store_result(
        self, env: JobEnvelope, status: JobStatus, result: Any, error: str | None
    ) -> None:
        assert self._publisher is not None
        record = JobResult(
            job_id=env.id,
            status=status,
            result=result,
            error=None if error is None else cut_text(error, MESSAGE_LIMIT),
            finished_at=time.time(),
        )
        try:
            payload = encode(record, self._format)
        except (TypeError, msgspec.EncodeError, OverflowError, RecursionError) as exc:
            unstorable = f"the job's return value could not be stored: {exc}"
            payload = encode(msgspec.structs.replace(record, result=None, error=unstorable))
        room = self._publisher.max_payload - 32  # the Nats-TTL header
        if len(payload) > room:
            raise ResultTooLargeError(
                f"the return value of {env.function} is {len(payload):,} bytes encoded, over "
                f"the {room:,} a result may take (the NATS server's max_payload); it was not "
                "stored. Return something smaller (a key to where the data is), or enqueue "
                "without result_ttl"
            )
        await self._publisher.store(
            f"$KV.{layout.RESULT_BUCKET}.{env.id}", payload, msg_ttl=env.result_ttl, resend=True
        )


def unroutable_reason(
    env: JobEnvelope,
    queue: str,
    exc: UnroutableJob,
    waited: float,
    handed: int,
    unroutable_after: float,
    modules: Sequence[str],
) -> str:
    """The unroutable dead letter's reason: what could not run, for how long, and the fix
    (`modules` are those of the worker that gives up on the job)."""
    module, qualname = exc.module, env.function.partition(":")[2]
    if exc.imported:
        why = f"the version of module {module} this worker imports has no {qualname}"
        fix = (
            f"deploy the version of {module} that defines {qualname} to the workers of "
            f"queue {queue} (or correct the job's function name)"
        )
    else:
        why = (
            f"this worker does not import module {module} (its modules: "
            f"{', '.join(modules) or 'none'})"
        )
        fix = (
            f"run workers of queue {queue} that import it: `naq worker {queue} --import "
            f"{module}`, NAQ_IMPORTS={module}, or `imports = [\"{module}\"]` under "
            "[tool.naq] in their pyproject.toml"
        )
    return (
        f"unroutable: no worker ran function {env.function} within {round(waited, 1):g}s "
        f"(unroutable_after={unroutable_after:g}s; handed back {handed} times by "
        f"workers that could not run it): {why}. To run it, {fix}; then enqueue the job "
        "again"
    )


async def _within_timeout(job: Any, env: JobEnvelope) -> Any:
    """Await an async job for at most its `timeout`: cancelled past it. A `TimeoutError`
    the job raises itself (a network call of its own) stays what it is."""
    assert env.timeout is not None
    try:
        async with asyncio.timeout(env.timeout) as scope:
            return await job
    except TimeoutError:
        if not scope.expired():
            raise
    raise TimeoutError(
        f"job {env.id} ({env.function}) ran past its timeout of {env.timeout:g}s and was "
        "cancelled"
    )


async def _flush(logs: list[KVActionLog]) -> None:
    """A saga's outcome (committed, or rolled back) is stored before the job is settled."""
    for saga_log in logs:
        await saga_log.flush()


def _crashes(delivered: int, ledger: Ledger) -> int:
    """Deliveries JetStream counted that the ledger does not explain: crashes."""
    return max(0, delivered - 1 - ledger.failed - ledger.deferred - ledger.handed_back)


def _delivered(msg: Msg) -> int:
    """JetStream's delivery count, read from the reply subject without parsing it all.

    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>....` (9 tokens), or with a
    domain and account hash before the stream (12 tokens). nats-py's `msg.metadata`
    builds an object and a datetime for it: a cost on every message.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[4])
    if len(tokens) >= 12:
        return int(tokens[6])
    return msg.metadata.num_delivered


def _stream_sequence(msg: Msg) -> int:
    """The message's sequence in the job stream, from the reply subject (as `_delivered`)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    if len(tokens) >= 12:
        return int(tokens[7])
    return msg.metadata.sequence.stream


_stack_texts: dict[tuple[tuple[Any, int], ...], str] = {}
_STACK_CACHE_SIZE = 1024


def _format_traceback(exc: BaseException) -> str:
    """The traceback as Python prints it, at a fraction of the cost.

    `traceback.format_exception` on 3.11 re-parses each source line to place its
    carets (about 140 us a failure here). The plain stack is enough for a record, and
    a job that fails the same way a thousand times has the same stack a thousand
    times, so its text is kept by code location. Only a chained error goes through
    the full formatter, to show its causes.
    """
    if exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        return "".join(traceback.format_exception(exc))
    frames = tuple(traceback.walk_tb(exc.__traceback__))
    key = tuple((frame.f_code, lineno) for frame, lineno in frames)
    stack = _stack_texts.get(key)
    if stack is None:
        stack = "".join(traceback.StackSummary.extract(iter(frames)).format())
        if len(_stack_texts) >= _STACK_CACHE_SIZE:
            _stack_texts.clear()
        _stack_texts[key] = stack
    return f"Traceback (most recent call last):\n{stack}{_exception_only(exc)}"


def _exception_only(exc: BaseException) -> str:
    """`traceback.format_exception_only`, without building a `TracebackException`."""
    cls = type(exc)
    if issubclass(cls, SyntaxError):
        return "".join(traceback.format_exception_only(exc))
    name = cls.__qualname__
    if cls.__module__ not in ("__main__", "builtins"):
        name = f"{cls.__module__}.{name}"
    text = _message(exc)
    if len(text) > MESSAGE_LIMIT:
        text = cut_text(text, MESSAGE_LIMIT)
    line = f"{name}: {text}\n" if text else f"{name}\n"
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        line += "".join(f"{note}\n" for note in notes)
    return line


def _message(exc: BaseException) -> str:
    """`str(exc)`, which user code may make raise."""
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def _call(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    return func(*args, **kwargs)
