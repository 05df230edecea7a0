"""A worker's Prometheus metrics: `naq worker --metrics-port PORT`, or `WorkerMetrics`.

Needs prometheus_client (`pip install 'naq-resilience[metrics]'`); nothing else in the
library imports this module. Where each number comes from, and what it costs:

- The job counters and the duration histogram are a `JobObserver`, so the worker
  knows nothing of them. Per completed job, on the worker's loop: two dict lookups, an
  integer increment and a `bisect` into the bucket bounds, 0.5 to 0.9 us measured
  here (about 1 us with the worker's call through `Observers`); nothing awaited, no
  key built, no lock, since the loop is the only writer. prometheus_client's own
  `Counter.inc` and `Histogram.observe` cost 0.8 and 1.7 to 2.6 us a call here, each
  taking a lock, so the numbers are kept here and only exposed through
  prometheus_client. A scrape reads them from its own thread; a histogram's count is
  the sum of its buckets as read, so the two always agree.
- Label values are bounded. A worker's queues are its own, and function names and
  error types are bounded in practice, but a function name comes from the message
  (a job naming a function no worker runs is dead-lettered under that name). So each
  metric keeps at most `max_label_sets` (500) label sets; past that, a new one is
  counted with its `function` and `error_type` (or `outcome`) as "other", its queue
  kept.
- In-flight jobs come from the worker's running set, read at scrape.
- Breaker states come from the shared `naq-breakers` bucket, watched (so a scrape
  costs no request), and from the breakers this process's job modules define, which
  appear as their local state until one is shared: a breaker that never tripped is
  listed as closed.
- Queue and dead-letter depths are asked of the server at scrape (a consumer info per
  queue, a consumer's pending count per dead-letter queue), at most every `refresh`
  seconds (5): a scrape waits at most `wait` seconds (2) for fresh numbers and
  otherwise gets the last ones; numbers older than `STALE_AFTER` are left out rather
  than shown as if current.

Those reads run on a thread of their own, with their own event loop and NATS
connection, so a scrape never runs on the worker's event loop, never delays a job, and
still answers while a job blocks the loop.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

try:
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError:
    raise ImportError(
        "naq_resilience.ops.metrics needs prometheus_client, which is not installed: "
        "pip install 'naq-resilience[metrics]'"
    ) from None

import msgspec

from naq_resilience.codec import decode
from naq_resilience.jetstream import layout
from naq_resilience.models import BreakerRecord, FailureRecord, JobRecord, JobStatus
from naq_resilience.policies.breaker import CircuitState, MemoryBreakerStore, _default_store

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from naq_resilience.jetstream.client import Client
    from naq_resilience.jetstream.connection import ConnectionSettings
    from naq_resilience.jetstream.worker import Worker

__all__ = [
    "DEFAULT_HOST",
    "DURATION_BUCKETS",
    "JobCounters",
    "MAX_LABEL_SETS",
    "OTHER",
    "WorkerMetrics",
]

log = logging.getLogger("naq_resilience.metrics")

DEFAULT_HOST: Final = "0.0.0.0"
"""Every interface: a scraper is almost always another host or container, and the
endpoint says only names and counts (no job arguments, messages or tracebacks). Pass
`127.0.0.1` to keep it to this host."""
MAX_LABEL_SETS: Final = 500
OTHER: Final = "other"
"""The label value of whatever came after a metric's `max_label_sets` label sets."""
NONE: Final = "none"
"""The error type of a dead letter the worker decided without an error (a function it
refuses by name, a poison job that crashed workers before any attempt failed)."""
MAX_DEAD_LETTER_QUEUES: Final = 64
"""Dead-letter queues whose depth is read: the worker's queues' own, and up to this many
others named by jobs it dead-lettered (`dead_letter_queue=`)."""
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
"""Seconds: prometheus_client's defaults (5 ms to 10 s), then up to an hour, since jobs
run far longer than the requests those defaults were made for."""
STALE_AFTER: Final = 60.0
"""Seconds after which queue and dead-letter depths that could not be read again are
left out of a scrape (the series then go stale, as they should), not repeated."""
_LOG_EVERY: Final = 60.0
_COMPLETED: Final = JobStatus.COMPLETED
_RETRYING: Final = JobStatus.RETRYING
_FAILED: Final = JobStatus.FAILED
_BUCKET_LABELS: Final = (*map(repr, DURATION_BUCKETS), "+Inf")  # "0.005" ... "3600.0"


_bucket = bisect.bisect_left  # `le` buckets: a value equal to a bound belongs to it


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class _Timing:
    """One label set's counter and histogram: `value` counts the jobs, `counts` the
    attempts timed per bucket (the last one +Inf), `total` their seconds. Kept together
    so that a completed job is one lookup; observed inline by the observer, since a
    method call would cost as much again."""

    __slots__ = ("counts", "total", "value")

    def __init__(self) -> None:
        self.value = 0
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0


class _Series:
    """One metric's label sets, each holding a `_Count` or a `_Timing`.

    Found through nested dicts, one level per label, so the per-job lookup builds no key.
    At most `cap` label sets; past that a new set is folded into its queue's "other".
    """

    def __init__(self, cap: int, make: Callable[[], Any]) -> None:
        self._tree: dict[str, Any] = {}
        self._cap = cap
        self._make = make
        self.items: list[tuple[tuple[str, ...], Any]] = []

    def two(self, queue: str, b: str) -> Any:
        level = self._tree.get(queue)
        if level is not None:
            found = level.get(b)
            if found is not None:
                return found
        return self._add((queue, b))

    def three(self, queue: str, b: str, c: str) -> Any:
        level = self._tree.get(queue)
        if level is not None:
            inner = level.get(b)
            if inner is not None:
                found = inner.get(c)
                if found is not None:
                    return found
        return self._add((queue, b, c))

    def _add(self, labels: tuple[str, ...]) -> Any:
        if len(self.items) >= self._cap:
            labels = (labels[0], *(OTHER for _ in labels[1:]))
            level: Any = self._tree
            for value in labels:
                level = level.get(value) if level is not None else None
            if level is not None:
                return level  # not remembered under the new names: they cannot grow the tree
        leaf = self._make()
        level = self._tree
        for value in labels[:-1]:
            level = level.setdefault(value, {})
        level[labels[-1]] = leaf
        self.items.append((labels, leaf))  # appended last: a scrape sees it whole
        return leaf


class JobCounters:
    """The job counters and the duration histogram, as a `JobObserver`.

    `completed`: jobs that ran to completion, and how long their last attempt ran.
    `failures`: failed attempts, one per failure record, retried or not, and
    `failed_timings` how long they ran. `retried`: failed attempts that will run again.
    `dead_lettered`: jobs that ended as a dead letter (a dead letter for a message that
    could not even be decoded names no function, so it is only in the dead-letter depth).

    Measured here: 0.5 to 0.9 us a completed job in the observer, about 1 us through
    the worker's `Observers`.
    """

    def __init__(self, max_label_sets: int = MAX_LABEL_SETS) -> None:
        if isinstance(max_label_sets, bool) or not isinstance(max_label_sets, int):
            raise TypeError(f"max_label_sets must be a whole number, got {max_label_sets!r}")
        if max_label_sets < 1:
            raise ValueError(f"max_label_sets must be at least 1, got {max_label_sets}")
        self.completed = _Series(max_label_sets, _Timing)
        self.failures = _Series(max_label_sets, _Count)
        self.failed_timings = _Series(max_label_sets, _Timing)
        self.retried = _Series(max_label_sets, _Count)
        self.dead_lettered = _Series(max_label_sets, _Count)
        self.dead_letter_queues: set[str] = set()

    def job_changed(self, record: JobRecord) -> None:
        status = record.status
        if status is _COMPLETED:
            leaf = self.completed.two(record.queue, record.function)
            leaf.value += 1
            started = record.started_at
            finished = record.finished_at
            if started is not None and finished is not None:  # a late ack has neither
                seconds = finished - started
                if seconds < 0.0:  # the wall clock stepped back
                    seconds = 0.0
                leaf.counts[_bucket(DURATION_BUCKETS, seconds)] += 1
                leaf.total += seconds
        elif status is _RETRYING:
            error = record.error_type or NONE
            self.retried.three(record.queue, record.function, error).value += 1
        elif status is _FAILED:
            error = record.error_type or NONE
            self.dead_lettered.three(record.queue, record.function, error).value += 1
            queue = record.dead_letter_queue
            if (
                queue is not None
                and queue not in self.dead_letter_queues
                and len(self.dead_letter_queues) < MAX_DEAD_LETTER_QUEUES
            ):
                self.dead_letter_queues.add(queue)

    def attempt_failed(self, failure: FailureRecord) -> None:
        self.failures.three(failure.queue, failure.function, failure.error_type).value += 1
        leaf = self.failed_timings.two(failure.queue, failure.function)
        seconds = max(0.0, failure.duration)
        leaf.counts[_bucket(DURATION_BUCKETS, seconds)] += 1
        leaf.total += seconds

    def families(self) -> Iterator[Metric]:
        """The counters and histogram as they stand, for a scrape (any thread)."""
        yield _counter(
            "naq_jobs_completed", "Jobs that ran to completion.",
            ("queue", "function"), self.completed,
        )  # fmt: skip
        yield _counter(
            "naq_job_failures",
            "Failed attempts (one per failure record), whether retried or not.",
            ("queue", "function", "error_type"), self.failures,
        )  # fmt: skip
        yield _counter(
            "naq_jobs_retried", "Failed attempts after which the job will run again.",
            ("queue", "function", "error_type"), self.retried,
        )  # fmt: skip
        yield _counter(
            "naq_jobs_dead_lettered",
            'Jobs that ended as a dead letter ("none": no attempt failed, e.g. a function '
            "no worker runs).",
            ("queue", "function", "error_type"), self.dead_lettered,
        )  # fmt: skip
        histogram = HistogramMetricFamily(
            "naq_job_duration_seconds",
            "Seconds each attempt ran, by outcome (completed or failed).",
            labels=("queue", "function", "outcome"),
        )
        for outcome, series in (("completed", self.completed), ("failed", self.failed_timings)):
            for labels, timing in list(series.items):
                counts = list(timing.counts)  # one copy: the buckets and their count agree
                if not any(counts):
                    continue  # completed only without times (late acks): nothing to show
                total = timing.total
                cumulative, buckets = 0, []
                for bound, count in zip(_BUCKET_LABELS, counts, strict=True):
                    cumulative += count
                    buckets.append((bound, float(cumulative)))
                histogram.add_metric([*labels, outcome], buckets, total)
        yield histogram


def _counter(
    name: str, documentation: str, labels: Sequence[str], series: _Series
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, count in list(series.items):
        family.add_metric(list(values), count.value)
    return family


# --------------------------------------------------------------------------- broker reads


@dataclass(frozen=True)
class _Reading:
    at: float
    queues: dict[str, tuple[int, int]] = field(default_factory=dict)
    """queue: (waiting to be delivered, delivered and not yet acknowledged)."""
    dead: dict[str, int] = field(default_factory=dict)


class _BrokerReads:
    """Queue and dead-letter depths and breaker states, on a thread of their own."""

    def __init__(
        self,
        settings: ConnectionSettings,
        queues: Sequence[str],
        dead_letter_queues: Callable[[], Iterable[str]],
        refresh: float,
        wait: float,
    ) -> None:
        self._settings = settings
        self._queues = tuple(queues)
        self._dead_letter_queues = dead_letter_queues
        self.refresh = refresh
        self.wait = wait
        self.breakers: dict[str, tuple[str, str]] = {}
        """KV key: (breaker name, state), as the bucket has them now."""
        self._reading: _Reading | None = None
        self._pending: Any = None  # concurrent.futures.Future of the refresh under way
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: NatsClient | None = None
        self._client: Client | None = None
        self._watcher: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._last_warning = -_LOG_EVERY

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="naq-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = None
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()

    def read(self) -> _Reading | None:
        """The latest depths: refreshed first when older than `refresh`, waiting at most
        `wait` for it; None when there are none younger than `STALE_AFTER`."""
        with self._lock:
            reading, pending, loop = self._reading, self._pending, self._loop
            due = reading is None or time.monotonic() - reading.at >= self.refresh
            if due and loop is not None and (pending is None or pending.done()):
                pending = self._pending = asyncio.run_coroutine_threadsafe(self._refresh(), loop)
        if due and pending is not None:
            with contextlib.suppress(Exception):  # too slow: the last reading will do
                pending.result(timeout=self.wait)
        reading = self._reading
        if reading is None or time.monotonic() - reading.at > STALE_AFTER:
            return None
        return reading

    async def _refresh(self) -> None:
        try:
            client = await self._connected()
            js, _ = await client._ready()
            queues = self._queues
            dead = sorted({*(layout.dead_letter_queue_for(q) for q in queues),
                           *self._dead_letter_queues()})  # fmt: skip
            infos = await asyncio.gather(
                *(js.consumer_info(layout.JOB_STREAM, layout.worker_consumer(q)) for q in queues),
                return_exceptions=True,
            )
            counts = await asyncio.gather(
                *(client.count_dead_letters(dead_letter_queue=d) for d in dead),
                return_exceptions=True,
            )
        except Exception as exc:
            self._warn(exc)
            return
        reading = _Reading(time.monotonic())
        for queue, info in zip(queues, infos, strict=True):
            if isinstance(info, BaseException):
                self._warn(info)  # no consumer yet (the worker is starting): no value
            else:
                reading.queues[queue] = (info.num_pending or 0, info.num_ack_pending or 0)
        for name, count in zip(dead, counts, strict=True):
            if isinstance(count, BaseException):
                self._warn(count)
            else:
                reading.dead[name] = count
        self._reading = reading

    async def _connected(self) -> Client:
        if self._client is not None:
            return self._client
        from naq_resilience.jetstream.client import Client
        from naq_resilience.jetstream.connection import connect

        nc = await connect(self._settings, name="naq-resilience metrics", max_reconnect_attempts=-1)
        client = Client(settings=self._settings, connection=nc)
        try:
            _, buckets = await client._ready()
            watcher = await buckets.breakers.watchall()
            # What the bucket holds now, before the first scrape answers.
            with contextlib.suppress(TimeoutError):
                while (entry := await watcher.updates(timeout=5.0)) is not None:  # type: ignore[no-untyped-call]
                    self._breaker_entry(entry)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._client, self._watcher = nc, client, watcher
        self._watch = asyncio.create_task(self._watch_breakers(watcher))
        return client

    async def _watch_breakers(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is not None:
                self._breaker_entry(entry)

    def _breaker_entry(self, entry: Any) -> None:
        if not entry.value:  # deleted or purged
            self.breakers.pop(entry.key, None)
            return
        try:
            record = decode(entry.value, BreakerRecord)
        except msgspec.DecodeError:
            return
        self.breakers[entry.key] = (record.name, record.state)

    async def _close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        client, nc = self._client, self._nc
        self._client = self._nc = self._watcher = None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()
        # Whatever nats-py left running on this loop ends with it, not destroyed pending.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            log.warning(
                "metrics: could not read queue or dead-letter depths (%r); scrapes show the "
                "last ones for up to %.0fs (logged once a minute)", exc, STALE_AFTER,
            )  # fmt: skip


# --------------------------------------------------------------------------- the collector


class _WorkerCollector:
    """What a scrape reads: the counters, then the worker's and the broker's gauges."""

    def __init__(
        self,
        worker: Worker,
        counters: JobCounters,
        broker: _BrokerReads,
        store: MemoryBreakerStore,
        max_label_sets: int,
    ) -> None:
        self._worker = worker
        self._counters = counters
        self._broker = broker
        self._store = store
        self._cap = max_label_sets

    def describe(self) -> Iterable[Metric]:
        """The families' names, so that registering reads nothing from the broker."""
        return [*self._counters.families(), *self._gauges({}, None, {}, None)]

    def collect(self) -> Iterable[Metric]:
        yield from self._counters.families()
        worker = self._worker
        yield from self._gauges(
            worker.in_flight, worker.concurrency, self._breakers(), self._broker.read()
        )

    def _breakers(self) -> dict[str, str]:
        """Every shared breaker's state, and the local state of this process's others."""
        shared = dict(self._broker.breakers)
        states = {name: state for name, state in shared.values()}
        for name in self._store.names():
            if name not in states:
                breaker = self._store.get(name)
                if breaker is not None:
                    states[name] = breaker.state.value
        return dict(sorted(states.items())[: self._cap])

    @staticmethod
    def _gauges(
        in_flight: dict[str, int],
        concurrency: int | None,
        breakers: dict[str, str],
        reading: _Reading | None,
    ) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "naq_jobs_in_flight", "Jobs this worker is running now.", labels=("queue",)
        )
        for queue, count in in_flight.items():
            running.add_metric([queue], count)
        yield running
        slots = GaugeMetricFamily("naq_worker_concurrency", "Jobs the worker runs at most at once.")
        if concurrency is not None:
            slots.add_metric([], concurrency)
        yield slots
        states = GaugeMetricFamily(
            "naq_breaker_state",
            "1 for a circuit breaker's current state (closed, open, half_open), 0 for the "
            "others, as shared by the workers.",
            labels=("breaker", "state"),
        )
        for name, current in breakers.items():
            for state in CircuitState:
                states.add_metric([name, state.value], 1.0 if state.value == current else 0.0)
        yield states
        depth = GaugeMetricFamily(
            "naq_queue_depth", "Jobs stored in the queue and not yet delivered to a worker.",
            labels=("queue",),
        )  # fmt: skip
        fleet_in_flight = GaugeMetricFamily(
            "naq_queue_in_flight",
            "Jobs delivered and not yet settled, on any worker: running, or waiting out a "
            "retry's delay (naq status's in flight).",
            labels=("queue",),
        )
        dead = GaugeMetricFamily(
            "naq_dead_letter_queue_depth", "Dead letters in the dead-letter queue.",
            labels=("dead_letter_queue",),
        )  # fmt: skip
        if reading is not None:
            for queue, (waiting, delivered) in reading.queues.items():
                depth.add_metric([queue], waiting)
                fleet_in_flight.add_metric([queue], delivered)
            for name, count in reading.dead.items():
                dead.add_metric([name], count)
        yield depth
        yield fleet_in_flight
        yield dead


class WorkerMetrics:
    """A worker's Prometheus metrics, served over HTTP from a thread of their own.

        worker = Worker("emails", imports=["myapp.jobs"])
        with WorkerMetrics(worker).serve(9100):
            worker.run_forever()

    `registry` is prometheus_client's default one unless given, so the endpoint also
    serves the process metrics and any metric the job modules define; a second
    `WorkerMetrics` in the same process needs a registry of its own. Queue and
    dead-letter depths are read at most every `refresh` seconds; a scrape waits at
    most `wait` seconds for them. Each metric keeps at most `max_label_sets` label sets
    (the rest are counted as "other").
    """

    def __init__(
        self,
        worker: Worker,
        *,
        registry: CollectorRegistry | None = None,
        refresh: float = 5.0,
        wait: float = 2.0,
        max_label_sets: int = MAX_LABEL_SETS,
        breakers: MemoryBreakerStore | None = None,
    ) -> None:
        if not refresh > 0 or not wait > 0:
            raise ValueError(f"refresh and wait must be > 0 seconds, got {refresh!r}, {wait!r}")
        self.registry = REGISTRY if registry is None else registry
        self.counters = JobCounters(max_label_sets)
        self._broker = _BrokerReads(
            worker.settings, worker.queues, lambda: tuple(self.counters.dead_letter_queues),
            refresh, wait,
        )  # fmt: skip
        self._collector = _WorkerCollector(
            worker, self.counters, self._broker,
            _default_store if breakers is None else breakers, max_label_sets,
        )  # fmt: skip
        self.registry.register(self._collector)
        worker.observers.add(self.counters)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.host: str | None = None
        self.port: int | None = None

    def serve(self, port: int, host: str = DEFAULT_HOST) -> WorkerMetrics:
        """Serve `/metrics` on `host:port` (port 0: any free one, then read `port`).

        Raises `OSError` when the address cannot be bound (a port in use).
        """
        if self._server is not None:
            raise RuntimeError(f"already serving on {self.url}")
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self._broker.start()
        self.host, self.port = host, int(self._server.server_port)
        return self

    @property
    def url(self) -> str:
        host = self.host or DEFAULT_HOST
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, close the broker connection and unregister the metrics."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        self._broker.stop()
        with contextlib.suppress(KeyError):
            self.registry.unregister(self._collector)

    def __enter__(self) -> WorkerMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
