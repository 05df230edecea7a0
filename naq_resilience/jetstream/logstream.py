"""Workers' log records on NATS: each worker publishes its own to `NAQ_LOGS`, and
`naq worker-logs` reads them from any machine.

A record's subject is `naq.logs.<level>.<worker>.<queue>.<job_id>`, so the server does
the filtering a reader asks for (`--level WARNING` is three filters, one per level
token; `--job ID` one token) and a reader never downloads the DEBUG lines of a
thousand workers to find one job's three.

Publishing must cost a job nothing it would notice, and must never loop:

- `emit` runs on whatever thread logged (a job thread, the heartbeat thread, the event
  loop): it takes a token, builds and encodes the record, appends it to a deque and
  wakes the loop's publishing task, with `call_soon_threadsafe` only when it is not
  already awake. The task publishes with plain core-NATS publishes into the
  connection's buffer (the stream stores them); nothing waits for an acknowledgement.
- Two token buckets (DEBUG and INFO; WARNING and above) of `RATE` a second, in bursts
  of `BURST`, so a chatty job cannot crowd out the warnings. What is shed is counted,
  and said in a record of its own (`LogRecord.dropped`) once records pass again, or
  within `DROPPED_EVERY` seconds.
- Records of nats-py's own loggers (`nats.*`) are not published, nor anything logged
  by the publishing task itself: a report about publishing a log record never becomes
  a log record to publish.
- In a process that runs several workers (tests, an application embedding two), each
  publishes the records logged in its own tasks and job threads (the
  `running_worker` context variable); records logged outside any worker (an
  application thread) are published by the first one started.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import fnmatch
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from naq_resilience.fitting import cut_text
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.puller import Puller
from naq_resilience.models import LogRecord
from naq_resilience.ops.logging import JobContextFilter, record_fields, running_worker

__all__ = [
    "BURST",
    "RATE",
    "LogPublisher",
    "LogQuery",
    "publish_logs_from_env",
    "read_logs",
]

RATE: Final = 50.0
"""Records a second a worker publishes, per bucket (DEBUG and INFO; WARNING and up)."""
BURST: Final = 500
"""Records a bucket lets through at once after a quiet spell."""
MAX_PENDING: Final = 5000
"""Records waiting for the loop at most; past it (a loop stuck, a connection gone) they
are shed, and counted."""
DROPPED_EVERY: Final = 10.0
"""Seconds within which shed records are reported, when no record passes to say it."""
MESSAGE_CHARS: Final = 8192
TRACEBACK_CHARS: Final = 32768
FIELD_CHARS: Final = 1024
MAX_FIELDS: Final = 50
PUBLISH_LOGS_ENV: Final = "NAQ_PUBLISH_LOGS"
_OFF: Final = frozenset({"0", "false", "no", "off"})
_DROPPED_LOGGER: Final = "naq_resilience.logs"
_PAGE: Final = 256
_FOLLOW_WAIT: Final = 5.0
_BACKLOG_WAIT: Final = 1.0

_publishing: Final = contextvars.ContextVar("naq_publishing_logs", default=False)


def publish_logs_from_env() -> bool:
    """`NAQ_PUBLISH_LOGS`: on unless it says 0, false, no or off."""
    return os.environ.get(PUBLISH_LOGS_ENV, "").strip().lower() not in _OFF


class _Bucket:
    __slots__ = ("at", "burst", "dropped", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = time.monotonic()
        self.dropped = 0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _plain(value: Any) -> Any:
    """A field's value as JSON data, at most about `FIELD_CHARS` long; else its `repr`."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return cut_text(value, FIELD_CHARS)
    try:
        data = msgspec.to_builtins(value, enc_hook=repr, str_keys=True)
        if len(msgspec.json.encode(data)) <= FIELD_CHARS:
            return data
    except Exception:
        pass
    try:
        return cut_text(repr(value), FIELD_CHARS)
    except Exception:
        return "<repr() failed>"


class LogPublisher(logging.Handler):
    """A logging handler that publishes one worker's records to `NAQ_LOGS`; `start(nc)`
    on the worker's loop attaches it to the root logger, `await stop()` publishes what
    is left and detaches it."""

    _orphans: ClassVar[LogPublisher | None] = None
    _claim: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, worker_id: str, host: str, pid: int, *, rate: float = RATE, burst: int = BURST
    ) -> None:
        super().__init__(logging.NOTSET)
        self.worker_id = worker_id
        self.host = host
        self.pid = pid
        self.addFilter(JobContextFilter())
        self._chatter = _Bucket(rate, burst)
        self._alerts = _Bucket(rate, burst)
        self._pending: deque[tuple[str, bytes]] = deque()
        self._encoder = msgspec.json.Encoder(enc_hook=repr)
        self._nc: NatsClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake = asyncio.Event()
        self._woken = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._attached: list[logging.Logger] = []
        self._dropped_since = 0.0
        self.dropped_total = 0
        """Records shed by the rate limit (or a full backlog) while it ran."""
        self.published = 0
        self.lost = 0
        """Records the connection refused (closed, or its buffer full while away)."""

    # ------------------------------------------------------------------ lifecycle
    def start(self, nc: NatsClient) -> None:
        self._nc = nc
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._drain(), name=f"{self.worker_id} log publisher")
        with LogPublisher._claim:
            if LogPublisher._orphans is None:
                LogPublisher._orphans = self
        loggers = [logging.getLogger()]
        library = logging.getLogger("naq_resilience")
        if not library.propagate:  # setup_logging() for the library alone
            loggers.append(library)
        for logger in loggers:
            logger.addHandler(self)
            self._attached.append(logger)

    async def stop(self) -> None:
        """Detach, then publish what is waiting (and the count of what was shed)."""
        for logger in self._attached:
            logger.removeHandler(self)
        self._attached.clear()
        with LogPublisher._claim:
            if LogPublisher._orphans is self:
                LogPublisher._orphans = None
        task, self._task = self._task, None
        if task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(task, 5.0)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception:
            pass
        self._nc = None

    # ------------------------------------------------------------------ any thread
    def emit(self, record: logging.LogRecord) -> None:
        if self._nc is None or self._closing:
            return
        name = record.name
        if name == "nats" or name.startswith("nats.") or _publishing.get():
            return
        worker = running_worker.get()
        if worker != self.worker_id and (worker is not None or LogPublisher._orphans is not self):
            return
        bucket = self._alerts if record.levelno >= logging.WARNING else self._chatter
        if not bucket.take(time.monotonic()) or len(self._pending) >= MAX_PENDING:
            self._shed(bucket)
            return
        try:
            if self._chatter.dropped or self._alerts.dropped:
                self._pending.append(self._dropped_record())
            self._pending.append(self._encode(record))
        except Exception:
            self.handleError(record)
            return
        self._wake_loop()

    def _shed(self, bucket: _Bucket) -> None:
        if not (self._chatter.dropped or self._alerts.dropped):
            self._dropped_since = time.time()
        bucket.dropped += 1
        self.dropped_total += 1

    def _wake_loop(self) -> None:
        if self._woken:
            return
        self._woken = True
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
            return
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: exiting
                loop.call_soon_threadsafe(self._wake.set)

    def _encode(self, record: logging.LogRecord) -> tuple[str, bytes]:
        message, fields = record_fields(record)
        fields.pop("worker_id", None)
        job_id = fields.pop("job_id", None)
        function = fields.pop("function", None)
        queue = fields.pop("queue", None)
        attempt = fields.pop("attempt", None)
        error_type = fields.pop("error_type", None)
        traceback = fields.pop("traceback", None)
        cut: list[str] = []
        if len(message) > MESSAGE_CHARS:
            message = cut_text(message, MESSAGE_CHARS)
            cut.append("message")
        if isinstance(traceback, str) and len(traceback) > TRACEBACK_CHARS:
            traceback = cut_text(traceback, TRACEBACK_CHARS, tail=4096)
            cut.append("traceback")
        if len(fields) > MAX_FIELDS:
            fields = dict(list(fields.items())[:MAX_FIELDS])
            cut.append("fields")
        entry = LogRecord(
            time=record.created,
            level=record.levelname,
            levelno=record.levelno,
            logger=record.name,
            message=message,
            worker_id=self.worker_id,
            host=self.host,
            pid=self.pid,
            job_id=None if job_id is None else str(job_id),
            function=None if function is None else str(function),
            queue=None if queue is None else str(queue),
            attempt=attempt if isinstance(attempt, int) else None,
            error_type=None if error_type is None else str(error_type),
            traceback=None if traceback is None else str(traceback),
            fields={str(k): _plain(v) for k, v in fields.items()},
            cut=cut,
        )
        subject = layout.log_subject(
            layout.log_level_token(record.levelno), self.worker_id, entry.queue, entry.job_id
        )
        return subject, self._encoder.encode(entry)

    def _dropped_record(self) -> tuple[str, bytes]:
        """The count of what was shed since the last such record (resets it)."""
        chatter, alerts = self._chatter.dropped, self._alerts.dropped
        self._chatter.dropped = self._alerts.dropped = 0
        since = dt.datetime.fromtimestamp(self._dropped_since, dt.UTC).strftime("%H:%M:%S")
        kinds = [
            f"{count} {what}"
            for count, what in ((chatter, "DEBUG/INFO"), (alerts, "WARNING or above"))
            if count
        ]
        entry = LogRecord(
            time=time.time(),
            level="WARNING",
            levelno=logging.WARNING,
            logger=_DROPPED_LOGGER,
            message=(
                f"{' and '.join(kinds)} log records of this worker were not published since "
                f"{since} UTC: over the rate limit of {self._chatter.rate:g} a second "
                f"(bursts of {self._chatter.burst:g}); its own log output has them all"
            ),
            worker_id=self.worker_id,
            host=self.host,
            pid=self.pid,
            dropped=chatter + alerts,
        )
        subject = layout.log_subject("warning", self.worker_id, None, None)
        return subject, self._encoder.encode(entry)

    # ------------------------------------------------------------------ the loop
    async def _drain(self) -> None:
        _publishing.set(True)  # this task's context only: what it logs is not published
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DROPPED_EVERY)
            self._wake.clear()
            self._woken = False
            if self._chatter.dropped or self._alerts.dropped:
                lock = self.lock
                assert lock is not None
                with lock:  # emit() holds it on other threads
                    if self._chatter.dropped or self._alerts.dropped:
                        self._pending.append(self._dropped_record())
            await self._publish_pending()
            if self._closing:
                return

    async def _publish_pending(self) -> None:
        nc = self._nc
        pending = self._pending
        while pending:
            subject, payload = pending.popleft()
            if nc is None or nc.is_closed:
                self.lost += 1
                continue
            try:
                await nc.publish(subject, payload)
                self.published += 1
            except Exception:  # closed, or the buffer full while reconnecting
                self.lost += 1


# --------------------------------------------------------------------------- reading


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


@dataclass(frozen=True)
class LogQuery:
    """Which records to read: at least `level`, of a worker, queue or job (each exact,
    or a glob), logged at `since` (unix time) or later."""

    since: float
    level: int = logging.DEBUG
    worker: str | None = None
    queue: str | None = None
    job_id: str | None = None

    def _token(self, value: str | None, exact: Callable[[str], str]) -> str:
        return "*" if value is None or _has_glob(value) else exact(value)

    def filters(self) -> list[str]:
        """The subject filters the server applies: one per level token at or above `level`."""
        first = layout.LOG_LEVELS.index(layout.log_level_token(self.level))
        worker = self._token(self.worker, layout.log_token)
        queue = self._token(self.queue, layout.log_token)
        job = self._token(self.job_id, layout.log_token)
        if first == 0:
            return [layout.log_filter("*", worker, queue, job)]
        return [layout.log_filter(level, worker, queue, job) for level in layout.LOG_LEVELS[first:]]

    def matches(self, record: LogRecord) -> bool:
        """What the subject cannot say: a custom level between two, and globs."""
        if record.levelno < self.level:
            return False
        for pattern, value in (
            (self.worker, record.worker_id),
            (self.queue, record.queue),
            (self.job_id, record.job_id),
        ):
            globbed = pattern is not None and _has_glob(pattern)
            if globbed and (value is None or not fnmatch.fnmatchcase(value, str(pattern))):
                return False
        return True


async def read_logs(
    nc: NatsClient,
    query: LogQuery,
    deliver: Callable[[LogRecord], None],
    *,
    follow: bool = False,
) -> int:
    """Hand every record the query names, oldest first, to `deliver`; returns how many.

    Without `follow`, the records stored when it starts (counted first: an ephemeral
    consumer's pending count); with it, those and then every new one, until cancelled.
    """
    js = nc.jetstream()
    filters = query.filters()
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=dt.datetime.fromtimestamp(query.since, dt.UTC),
        ack_policy=AckPolicy.NONE,
        inactive_threshold=60.0,
        max_waiting=1,
        **({"filter_subject": filters[0]} if len(filters) == 1 else {"filter_subjects": filters}),
    )
    info = await js.add_consumer(layout.LOG_STREAM, config)
    total = info.num_pending or 0
    delivered = 0
    seen = 0

    def receive(msg: Msg) -> None:
        nonlocal delivered, seen
        seen += 1
        try:
            record = msgspec.json.decode(msg.data, type=LogRecord)
        except msgspec.DecodeError:
            return
        if query.matches(record):
            delivered += 1
            deliver(record)

    # Waits short while the backlog is read (its records exist), long once following.
    puller = Puller(nc, layout.LOG_STREAM, info.name, receive, _BACKLOG_WAIT)
    await puller.start()
    try:
        while seen < total:
            before = seen
            await puller.pull(min(_PAGE, total - seen))
            if seen == before:
                break  # the rest expired while being read
        if follow:
            await puller.stop()
            puller = Puller(nc, layout.LOG_STREAM, info.name, receive, _FOLLOW_WAIT)
            await puller.start()
            while True:
                await puller.pull(_PAGE)
    finally:
        with contextlib.suppress(Exception):
            await puller.stop()
        with contextlib.suppress(Exception):
            await js.delete_consumer(layout.LOG_STREAM, info.name)
    return delivered
