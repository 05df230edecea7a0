"""Enqueueing jobs, NAQ-style: `enqueue`, `enqueue_sync`, `enqueue_many`, `Client`, `SyncClient`.

`enqueue` waits for JetStream's ack, so a job it returned is stored; `enqueue_many`
pipelines (every publish first, then one wait for the acks, through a `Publisher` that
costs a third of nats-py's `publish_async`), which is what makes it as fast as raw
nats-py. The per-job options (`max_retries=`, `retry_on=`, ...) are
validated here, at the caller, so a typo fails where it was written and not later in a
worker; every other keyword goes to the job function, as in NAQ.

The sync API runs the async client on one event loop in a background thread, so
`enqueue_sync` works from plain code and from a thread that is already running an
event loop (where `asyncio.run` would fail), and reuses one connection.

Every job is published with its id as `Nats-Msg-Id`, so JetStream stores it once even
if it is sent twice within the duplicate window: a publish whose ack was lost (an
outage, a failover) can be repeated as the same job (`job_id=`) without running it
twice. Sizes are checked before anything is sent, headers included: a server closes
the connection of a client that sends a message over its `max_payload`. A client whose
connection was closed for good (a long outage with a finite reconnect budget, a server
error) connects afresh on its next use.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import hashlib
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, TypeVar, overload

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, NoStreamResponseError, NotFoundError

from naq_resilience.codec import Format, decode, encode, serializer_from_env
from naq_resilience.fitting import headers_size
from naq_resilience.jetstream import deadletters, layout
from naq_resilience.jetstream.arguments import (
    encode_job_arguments_with_exceptions,
    encode_with_exceptions,
)
from naq_resilience.jetstream.connection import (
    ConnectionSettings,
    connect,
    ensure_jetstream,
    while_jetstream_starts,
)
from naq_resilience.jetstream.deadletters import DeadLetterFilter, DeadLetterPage, ReplayReport
from naq_resilience.jetstream.history import (
    JobWindow,
    dead_letter_record,
    history_record,
    read_job,
)
from naq_resilience.jetstream.publisher import Publisher, PublishTimeoutError, StreamFullError
from naq_resilience.jetstream.registry import function_name
from naq_resilience.jetstream.signatures import call_shape, check_call
from naq_resilience.jetstream.stores import read_breakers, set_breaker
from naq_resilience.jetstream.streams import Buckets, StorageSettings, ensure_layout
from naq_resilience.jetstream.tracing import trace_headers
from naq_resilience.models import (
    BreakerRecord,
    DeadLetter,
    FailureRecord,
    JobEnvelope,
    JobId,
    JobRecord,
    JobResult,
    JobStatus,
)
from naq_resilience.policies.breaker import CircuitState
from naq_resilience.policies.classify import exception_types
from naq_resilience.policies.delays import DelaySchedule
from naq_resilience.policies.durations import Duration, seconds
from naq_resilience.policies.errors import ProcessingError
from naq_resilience.policies.pipeline import qualified_name

if TYPE_CHECKING:
    from naq_resilience.jetstream.analytics import BudgetStatus, ErrorPattern, ErrorRate
    from naq_resilience.jetstream.schedules import ScheduledJob, ScheduleInfo
    from naq_resilience.jetstream.status import FleetStatus

__all__ = [
    "Client",
    "Job",
    "JobFailedError",
    "JobList",
    "SyncClient",
    "SyncJob",
    "enqueue",
    "enqueue_many",
    "enqueue_sync",
    "archive_dead_letters",
    "count_dead_letters",
    "discard_dead_letters",
    "get_dead_letter",
    "get_dead_letter_jobs",
    "list_dead_letters",
    "purge_dead_letters",
    "replay_dead_letter",
    "replay_dead_letters",
    "reschedule_dead_letter",
    "get_failed_jobs",
    "get_job",
    "get_jobs_in_timeframe",
    "error_patterns",
    "error_rate",
]

T = TypeVar("T")
log = logging.getLogger("naq_resilience.client")
_MSG_ID_HEADER = headers_size({"Nats-Msg-Id": ""})


class JobFailedError(ProcessingError):
    """`Job.result()` of a job that ended in its dead-letter queue."""


class _Options(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Validated per-job options, ready to copy into every envelope of a batch."""

    queue: str = "default"
    max_retries: int | None = None
    retry_delay: float | list[float] | None = None
    retry_strategy: str | list[float] | None = None
    retry_on: list[str] | None = None
    ignore_on: list[str] | None = None
    dead_letter_queue: str | None = None
    dead_letter_ttl: float | None = None
    timeout: float | None = None
    result_ttl: float | None = None


def _positive(value: object, argument: str) -> float | None:
    return None if value is None else seconds(value, argument, positive=True)


def _delays(value: Duration | Sequence[Duration]) -> float | list[float]:
    """Checked by `DelaySchedule.build` already; here only made plain floats."""
    if isinstance(value, (int, float, timedelta)):
        return seconds(value, "retry_delay")
    return [seconds(d, "each delay in the list") for d in value]


def _options(
    queue_name: str,
    max_retries: int | None,
    retry_delay: Duration | Sequence[Duration] | None,
    retry_strategy: str | Sequence[Duration] | None,
    retry_on: Any,
    ignore_on: Any,
    dead_letter_queue: str | None,
    dead_letter_ttl: Duration | None,
    timeout: Duration | None,
    result_ttl: Duration | None,
) -> _Options:
    layout.check_queue_name(queue_name)
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
    ):
        raise ValueError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
    if retry_delay is not None or retry_strategy is not None:
        # Same validation as @retry, so an enqueue-time override fails here, not in a worker.
        DelaySchedule.build(
            1.0 if retry_delay is None else retry_delay,
            "exponential" if retry_strategy is None else retry_strategy,
            None,
            None,
        )
    if dead_letter_queue is not None:
        layout.check_dead_letter_queue(dead_letter_queue)
    return _Options(
        queue=queue_name,
        max_retries=max_retries,
        retry_delay=None if retry_delay is None else _delays(retry_delay),
        retry_strategy=(
            retry_strategy
            if retry_strategy is None or isinstance(retry_strategy, str)
            else [seconds(d, "each delay in the list") for d in retry_strategy]
        ),
        retry_on=_exception_names(retry_on, "retry_on"),
        ignore_on=_exception_names(ignore_on, "ignore_on"),
        dead_letter_queue=dead_letter_queue,
        dead_letter_ttl=_positive(dead_letter_ttl, "dead_letter_ttl"),
        timeout=_positive(timeout, "timeout"),
        result_ttl=_positive(result_ttl, "result_ttl"),
    )


def _job_id(job_id: str | None, idempotency_key: str | None) -> str:
    """The job's id: given, derived from the idempotency key (so a duplicate enqueue
    returns the id of the job that is stored), or new."""
    if job_id is not None:
        try:
            return msgspec.convert(job_id, JobId)
        except msgspec.ValidationError:
            raise ValueError(
                f"job_id must be 1-128 letters, digits, '-' or '_' (it becomes a NATS "
                f"subject token), got {job_id!r}"
            ) from None
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise ValueError(f"idempotency_key must be a non-empty string, got {idempotency_key!r}")
        return hashlib.blake2b(idempotency_key.encode(), digest_size=16).hexdigest()
    return _new_id()


def _new_id() -> str:
    """128 random bits as 32 hex digits: a uuid4's worth, without building a `UUID`
    (a third of the cost, on every job)."""
    return os.urandom(16).hex()


def _exception_names(value: Any, argument: str) -> list[str] | None:
    """Exception classes travel as `module:qualname`; names given as strings pass as-is."""
    if value is None:
        return None
    if isinstance(value, str) or (
        isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value)
    ):
        names = [value] if isinstance(value, str) else list(value)
        for name in names:
            if ":" not in name:
                raise ValueError(
                    f"{argument} names exceptions as 'module:qualname' (e.g. "
                    f"'builtins:ConnectionError'), got {name!r}; or pass the classes"
                )
        return names
    return [qualified_name(cls) for cls in exception_types(value, argument)]


class Job:
    """A job that was enqueued: its id, and how to ask what became of it."""

    __slots__ = (
        "_client",
        "dead_letter_queue",
        "function",
        "job_id",
        "queue",
        "result_ttl",
        "sequence",
    )

    def __init__(
        self,
        client: Client,
        envelope: JobEnvelope,
        sequence: int,
    ) -> None:
        self._client = client
        self.job_id = envelope.id
        self.function = envelope.function
        self.queue = envelope.queue
        self.sequence = sequence
        self.result_ttl = envelope.result_ttl
        self.dead_letter_queue = envelope.dead_letter_queue or layout.dead_letter_queue_for(
            envelope.queue
        )

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.function} queue={self.queue}>"

    async def status(self) -> JobStatus:
        return await self._client.job_status(self)

    async def result(self, timeout: Duration | None = 30.0) -> Any:
        """The job's return value; raises `JobFailedError` if it ended as a dead letter.

        Waits at most `timeout` (seconds or a `timedelta`; None: for ever).
        """
        return await self._client.job_result(self, timeout)


class Client:
    """One connection for enqueueing, reading results and dead letters.

    `async with Client() as client:`; the URL and credentials come from the arguments
    or the environment (`NAQ_NATS_URL`, see `ConnectionSettings`). An enqueue waits at
    most `publish_timeout` (seconds or a `timedelta`) for JetStream to confirm the job
    is stored. Jobs are written as `format`: "json" or "msgpack"; by default what
    `NAQ_JOB_SERIALIZER` says (json when unset), read when the first job is enqueued.
    """

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        settings: ConnectionSettings | None = None,
        storage: StorageSettings | None = None,
        format: Format | None = None,
        connection: NatsClient | None = None,
        publish_timeout: Duration = 10.0,
    ) -> None:
        if format is not None and format not in ("json", "msgpack"):
            raise ValueError(f'format must be "json" or "msgpack", got {format!r}')
        self.publish_timeout = seconds(publish_timeout, "publish_timeout", positive=True)
        if settings is None:
            settings = ConnectionSettings.from_env(**({"url": nats_url} if nats_url else {}))
        self._settings = settings
        self._storage = storage
        self._format: Format | None = format
        self._nc = connection
        self._owns_connection = connection is None
        self._js: JetStreamContext | None = None
        self._buckets: Buckets | None = None
        self._publisher: Publisher | None = None
        self._lock = asyncio.Lock()
        self._count_keep: dict[str, float] | None = None  # analytics.Reader's, read once

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        await self._ready()

    async def close(self) -> None:
        nc, self._nc, self._js, self._buckets = self._nc, None, None, None
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        if nc is not None and self._owns_connection and not nc.is_closed:
            try:
                await nc.drain()
            except nats.errors.ConnectionReconnectingError:
                # The server is away: nothing to drain into, and a connection left
                # reconnecting (for ever, by default) would outlive the client.
                await nc.close()

    async def _ready(self) -> tuple[JetStreamContext, Buckets]:
        if self._js is not None and self._buckets is not None:
            if self._nc is not None and not self._nc.is_closed:
                return self._js, self._buckets
            await self._forget_closed_connection()
        async with self._lock:
            if self._js is None or self._buckets is None:
                if self._nc is None:
                    self._nc = await connect(self._settings)
                wait = self._settings.jetstream_timeout
                await ensure_jetstream(self._nc, wait)
                js = self._nc.jetstream()
                self._buckets = await while_jetstream_starts(
                    lambda: ensure_layout(js, self._storage), timeout=wait, what="the job streams"
                )
                publisher = Publisher(self._nc, ack_timeout=self.publish_timeout)
                await publisher.start()
                self._publisher = publisher
                self._js = js
            return self._js, self._buckets

    async def _forget_closed_connection(self) -> None:
        """The connection was closed for good: connect afresh, or say why we cannot."""
        async with self._lock:
            if self._nc is None or not self._nc.is_closed:
                return
            if not self._owns_connection:
                raise nats.errors.ConnectionClosedError(
                    "the NATS connection given to this Client was closed; give it a new "
                    "one, or let the Client connect itself (no connection=)"
                )
            log.info("the NATS connection was closed; connecting again")
            publisher, self._publisher = self._publisher, None
            self._nc, self._js, self._buckets = None, None, None
            if publisher is not None:
                await publisher.close()

    # ------------------------------------------------------------------ enqueue
    def _job_format(self) -> Format:
        """The format jobs are written in, `NAQ_JOB_SERIALIZER` read at the first job."""
        if self._format is None:
            self._format = serializer_from_env()
        return self._format

    def _envelope(
        self,
        name: str,
        options: _Options,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        job_id: str | None = None,
    ) -> tuple[JobEnvelope, bytes]:
        envelope = JobEnvelope(
            id=job_id or _new_id(),
            function=name,
            queue=options.queue,
            args=list(args),
            kwargs=kwargs,
            enqueued_at=time.time(),
            max_retries=options.max_retries,
            retry_delay=options.retry_delay,
            retry_strategy=options.retry_strategy,
            retry_on=options.retry_on,
            ignore_on=options.ignore_on,
            dead_letter_queue=options.dead_letter_queue,
            dead_letter_ttl=options.dead_letter_ttl,
            timeout=options.timeout,
            result_ttl=options.result_ttl,
        )
        fmt = self._format or self._job_format()
        try:
            return envelope, encode(envelope, fmt)
        except (TypeError, msgspec.EncodeError, OverflowError):
            pass
        # Only what the plain encoder refused gets here: exceptions, or a mistake.
        envelope = msgspec.structs.replace(envelope, exceptions=True)
        try:
            return envelope, encode_with_exceptions(envelope, fmt)
        except (TypeError, msgspec.EncodeError, OverflowError, RecursionError):
            encode_job_arguments_with_exceptions(name, args, kwargs, fmt)
            raise

    async def enqueue(
        self,
        func: Callable[..., Any],
        *args: Any,
        queue_name: str = "default",
        max_retries: int | None = None,
        retry_delay: Duration | Sequence[Duration] | None = None,
        retry_strategy: str | Sequence[Duration] | None = None,
        retry_on: Any = None,
        ignore_on: Any = None,
        dead_letter_queue: str | None = None,
        dead_letter_ttl: Duration | None = None,
        idempotency_key: str | None = None,
        job_id: str | None = None,
        timeout: Duration | None = None,
        result_ttl: Duration | None = None,
        **kwargs: Any,
    ) -> Job:
        """Put one job on `queue_name` and wait until JetStream has stored it.

        Keywords other than the options are the job function's own. The job is stored
        once per id within the duplicate window (2 minutes by default): an enqueue
        repeated with the same `job_id=` after a `PublishTimeoutError` cannot run the
        job twice. `idempotency_key=` does the same for an id of your own making: the
        job id is derived from it, so a second enqueue returns the first job.

        The call is bound to the function's signature here: a keyword it does not take
        (a misspelled option, say) is refused, naming what it probably meant, instead
        of failing in a worker. Durations are seconds or `timedelta`s. An exception
        argument travels as an `ExceptionRecord` and is rebuilt by the worker.
        """
        options = _options(
            queue_name, max_retries, retry_delay, retry_strategy, retry_on, ignore_on,
            dead_letter_queue, dead_letter_ttl, timeout, result_ttl,
        )  # fmt: skip
        name = function_name(func)
        check_call(func, name, args, kwargs, ENQUEUE_OPTIONS)
        job_id = _job_id(job_id, idempotency_key)
        envelope, payload = self._envelope(name, options, args, kwargs, job_id)
        return await self._store_envelope(envelope, payload)

    async def _store_envelope(self, envelope: JobEnvelope, payload: bytes) -> Job:
        await self._ready()
        assert self._publisher is not None
        # Always the job id (derived from an idempotency key when one is given): a retry
        # with job_id= then carries the same Nats-Msg-Id as the first publish.
        headers = {"Nats-Msg-Id": envelope.id}
        trace = trace_headers()  # None unless the caller is in an OpenTelemetry span
        if trace is None:
            size = len(payload) + _MSG_ID_HEADER + len(envelope.id)
        else:
            headers.update(trace)
            size = len(payload) + headers_size(headers)
        self._check_size(envelope.function, size)
        try:
            sequence = await self._store(layout.job_subject(envelope.queue), payload, headers)
        except PublishTimeoutError as exc:
            raise _not_confirmed(exc, envelope) from None
        except StreamFullError as exc:
            raise _queue_full(exc, 1) from None
        await self._record_queued(envelope)
        return Job(self, envelope, sequence)

    def _job(self, envelope: JobEnvelope, sequence: int) -> Job:
        return Job(self, envelope, sequence)

    async def _record_queued(
        self, envelope: JobEnvelope, status: JobStatus = JobStatus.QUEUED, **fields: Any
    ) -> None:
        """The job's history begins once it is stored (queued, or scheduled); sent
        without waiting for an ack. A worker can take the job and write its own record
        before this one arrives, so "queued" is written only where no record is yet:
        it never overwrites what the worker wrote."""
        assert self._nc is not None
        headers = _FIRST_RECORD if status is JobStatus.QUEUED else None
        record = JobRecord(
            job_id=envelope.id,
            queue=envelope.queue,
            function=envelope.function,
            status=status,
            updated_at=envelope.enqueued_at,
            enqueued_at=envelope.enqueued_at,
            replay_of=envelope.replay_of,
            **fields,
        )
        with contextlib.suppress(Exception):  # history is for looking, never for deciding
            await self._nc.publish(
                layout.history_subject(envelope.id), _history_encode(record), headers=headers
            )

    async def _store(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """A job carries its id as Nats-Msg-Id, so sending it again is safe: while no
        ack comes (a stream leader died before answering), it is."""
        assert self._publisher is not None
        return await self._publisher.store(
            subject, payload, headers, resend=True, on_no_stream=self._restore_layout
        )

    async def _restore_layout(self) -> None:
        """No stream answered a publish. Either it was deleted (a development server
        restarted with a fresh store, an operator), then it is created again, or a
        cluster is electing its leader, and `Publisher.store` waits for it."""
        if self._js is None:
            return
        try:
            await self._js.stream_info(layout.JOB_STREAM)
        except NotFoundError:
            log.warning("the job stream %s is gone; creating the streams again", layout.JOB_STREAM)
            self._buckets = await ensure_layout(self._js, self._storage)
        except Exception as exc:  # unavailable for now: the publish is asked again
            log.debug("stream_info(%s) failed: %r", layout.JOB_STREAM, exc)

    async def _recreate_layout(self) -> None:
        """A stream of the layout did not answer a read (deleted under a live client):
        create the missing ones again, so what comes next finds them."""
        if self._js is None:
            return
        log.warning("a stream of the job layer is gone; creating the streams again")
        self._buckets = await ensure_layout(self._js, self._storage)

    async def _stream_missing(self, exc: NotFoundError) -> bool:
        """A read found a stream gone (deleted under a live client): create the streams
        again and say so, for the read to be asked again; False for any other 404."""
        if exc.err_code != _STREAM_NOT_FOUND or self._js is None:
            return False
        log.warning("a stream of the job layer is gone (%s); creating the streams again", exc)
        self._buckets = await ensure_layout(self._js, self._storage)
        return True

    def _check_size(self, name: str, size: int) -> None:
        """`size` is the message's, headers included."""
        assert self._publisher is not None
        if size > self._publisher.max_payload:
            raise ValueError(
                f"a job for {name} is {size:,} bytes with its headers, over the NATS "
                f"server's max_payload of {self._publisher.max_payload:,}; nothing was "
                "enqueued. Pass a reference to big data (a key, a path, an object store "
                "name) instead of the data itself"
            )

    async def enqueue_many(
        self,
        func: Callable[..., Any],
        calls: Iterable[Sequence[Any]],
        *,
        queue_name: str = "default",
        max_retries: int | None = None,
        retry_delay: Duration | Sequence[Duration] | None = None,
        retry_strategy: str | Sequence[Duration] | None = None,
        retry_on: Any = None,
        ignore_on: Any = None,
        dead_letter_queue: str | None = None,
        dead_letter_ttl: Duration | None = None,
        timeout: Duration | None = None,
        result_ttl: Duration | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> list[Job]:
        """Enqueue one job per item of `calls` (a tuple of positional arguments each).

        Pipelined: every publish goes out before any ack is awaited, so this runs at
        the broker's pace rather than one round trip per job. Every call is checked,
        encoded and measured against the server's `max_payload` before the first
        publish, so a bad call enqueues none of the batch. `kwargs`, if given, go to
        every call.
        """
        options = _options(
            queue_name, max_retries, retry_delay, retry_strategy, retry_on, ignore_on,
            dead_letter_queue, dead_letter_ttl, timeout, result_ttl,
        )  # fmt: skip
        name = function_name(func)
        shape = call_shape(func)
        shared_kwargs = dict(kwargs or {})
        subject = layout.job_subject(options.queue)
        await self._ready()
        assert self._publisher is not None
        envelopes: list[JobEnvelope] = []
        payloads: list[bytes] = []
        trace = trace_headers()  # the batch's caller's span: the same for every job
        trace_size = headers_size(_job_headers("", trace)) - _MSG_ID_HEADER if trace else 0
        for call in calls:
            if not isinstance(call, (tuple, list)):
                raise TypeError(
                    f"enqueue_many takes an iterable of argument tuples, got {call!r}; "
                    "write e.g. [(1,), (2,)] or [(order_id, email), ...]"
                )
            if shape is not None and not shape.fits(call, shared_kwargs):
                shape.check(name, call, shared_kwargs, ENQUEUE_OPTIONS)
            envelope, payload = self._envelope(name, options, call, shared_kwargs)
            # An id is ASCII: its length is its size in the Nats-Msg-Id header.
            self._check_size(name, len(payload) + _MSG_ID_HEADER + len(envelope.id) + trace_size)
            envelopes.append(envelope)
            payloads.append(payload)
        publish = self._publisher.publish
        futures = [
            await publish(subject, payload, _job_headers(envelope.id, trace), resend=True)
            for envelope, payload in zip(envelopes, payloads, strict=True)
        ]
        outcomes: list[int | BaseException] = await asyncio.gather(*futures, return_exceptions=True)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                message = (payloads[i], _job_headers(envelopes[i].id, trace))
                outcomes[i] = await self._publish_again(
                    subject, message, envelopes[i], outcome, outcomes
                )
        jobs = [
            Job(self, envelope, sequence)
            for envelope, sequence in zip(envelopes, outcomes, strict=True)
            if isinstance(sequence, int)
        ]
        for envelope in envelopes:
            await self._record_queued(envelope)
        return jobs

    async def _publish_again(
        self,
        subject: str,
        message: tuple[bytes, dict[str, str]],
        envelope: JobEnvelope,
        error: BaseException,
        outcomes: list[int | BaseException],
    ) -> int:
        """One publish of a batch failed: a stream between leaders is asked again (the
        job's `Nats-Msg-Id` makes that safe); any other error ends the batch, saying how
        much of it is stored."""
        assert self._publisher is not None
        try:
            if _no_leader(error):
                first = not any(isinstance(o, int) for o in outcomes)
                return await self._publisher.store(
                    subject, *message, resend=True,
                    on_no_stream=self._restore_layout if first else None,
                )  # fmt: skip
            raise error
        except PublishTimeoutError as exc:
            failure: BaseException = _not_confirmed(exc, envelope)
        except StreamFullError as exc:
            failure = _queue_full(exc, len(outcomes))
        except BaseException as exc:
            failure = exc
        stored = sum(isinstance(o, int) for o in outcomes)
        failure.add_note(
            f"enqueue_many: {stored} of the {len(outcomes)} jobs were stored before this "
            "error; the others were not (or are not confirmed)"
        )
        raise failure

    # ------------------------------------------------------------------ what became of a job
    async def job_status(self, job: Job | str, queue_name: str = "default") -> JobStatus:
        """Where the job is now: its history record, or else the broker's own state."""
        js, buckets = await self._ready()
        job_id = job.job_id if isinstance(job, Job) else job
        record = await read_job(js, job_id)
        if record is not None:
            return record.status
        try:
            entry = await buckets.results.get(job_id)
        except KeyNotFoundError:
            pass
        else:
            if entry.value:
                status = decode(entry.value, JobResult).status
                return JobStatus.FAILED if status is JobStatus.DEAD else status
        if isinstance(job, Job):
            try:
                await js.get_msg(layout.JOB_STREAM, job.sequence)
            except NotFoundError:
                pass
            else:
                return JobStatus.QUEUED
            dead_queue = job.dead_letter_queue
        else:
            dead_queue = layout.dead_letter_queue_for(queue_name)
        try:
            await js.get_last_msg(layout.DEAD_STREAM, layout.dead_subject(dead_queue, job_id))
        except NotFoundError:
            return JobStatus.FINISHED
        return JobStatus.FAILED

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job's latest record (status, times, attempts, worker, error type), or
        None when there is none: never enqueued, or older than the history window."""
        js, _ = await self._ready()
        return await read_job(js, job_id)

    async def get_jobs_in_timeframe(
        self, hours: float = 1.0, *, since: float | dt.datetime | None = None
    ) -> JobWindow:
        """The jobs whose latest change falls in the last `hours` (or since `since`):
        `await window.count()` is one request, `async for record in window` pages."""
        js, _ = await self._ready()
        assert self._nc is not None
        return JobWindow(
            self._nc, js, layout.HISTORY_STREAM, layout.HISTORY_SUBJECTS,
            _window_start(hours, since), history_record, self._stream_missing,
        )  # fmt: skip

    async def get_failed_jobs(
        self, hours: float = 24.0, *, since: float | dt.datetime | None = None
    ) -> JobWindow:
        """The jobs that failed for good in the last `hours`: their dead letters, as
        records (`.status` "failed", `.error_type` of the last attempt)."""
        js, _ = await self._ready()
        assert self._nc is not None
        return JobWindow(
            self._nc, js, layout.DEAD_STREAM, layout.DEAD_SUBJECTS,
            _window_start(hours, since), dead_letter_record, self._stream_missing,
        )  # fmt: skip

    # ------------------------------------------------------------------ the fleet
    async def fleet_status(self) -> FleetStatus:
        """Queues (depth, in flight), live workers, breakers and dead-letter depths."""
        from naq_resilience.jetstream.status import fleet_status

        return await fleet_status(self)

    async def list_breakers(self) -> list[BreakerRecord]:
        """Every circuit breaker the workers share, with its state."""
        _, buckets = await self._ready()
        return await read_breakers(buckets.breakers)

    async def open_breaker(self, name: str) -> BreakerRecord:
        """Open breaker `name` on every worker now; it probes after its recovery_timeout."""
        _, buckets = await self._ready()
        return await set_breaker(buckets.breakers, name, CircuitState.OPEN, "naq-operator")

    async def close_breaker(self, name: str) -> BreakerRecord:
        """Close breaker `name` on every worker, its failure count cleared."""
        _, buckets = await self._ready()
        return await set_breaker(buckets.breakers, name, CircuitState.CLOSED, "naq-operator")

    async def reset_breaker(self, name: str) -> BreakerRecord:
        """Close breaker `name` everywhere, then forget it in the shared bucket."""
        _, buckets = await self._ready()
        return await set_breaker(
            buckets.breakers, name, CircuitState.CLOSED, "naq-operator", forget=True
        )

    async def job_result(self, job: Job, timeout: Duration | None = 30.0) -> Any:
        if job.result_ttl is None:
            raise ValueError(
                f"job {job.job_id} was enqueued without result_ttl, so its result was not "
                "kept; enqueue with result_ttl=<seconds> to fetch it"
            )
        wait = None if timeout is None else seconds(timeout, "timeout")
        _, buckets = await self._ready()
        deadline = None if wait is None else time.monotonic() + wait
        pause = 0.005
        while True:
            try:
                entry = await buckets.results.get(job.job_id)
            except KeyNotFoundError:
                entry = None
            if entry is not None and entry.value:
                record = decode(entry.value, JobResult)
                if record.status is JobStatus.COMPLETED:
                    return record.result
                raise JobFailedError(f"job {job.job_id} ({job.function}) failed: {record.error}")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job.job_id} has no result after {wait:g}s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    # ------------------------------------------------------------------ dead letters
    # Listing, replaying and removing them; the code is in jetstream/deadletters.py.
    def _dead_letters(self) -> tuple[deadletters.Reader, deadletters.Replayer]:
        reader = deadletters.Reader(self)
        return reader, deadletters.Replayer(self, reader)

    async def get_dead_letter_jobs(
        self, name: str | None = None, limit: int = 1000, **filters: Any
    ) -> list[DeadLetter]:
        """The oldest `limit` dead letters of `name`: a dead-letter queue ("emails.dead",
        "failed_jobs") or a queue ("emails", meaning "emails.dead"); None: every one.
        Takes the filters of `DeadLetterFilter`; `list_dead_letters` pages past `limit`."""
        page = await self.list_dead_letters(limit=limit, dead_letter_queue=name, **filters)
        return page.letters

    async def list_dead_letters(
        self,
        filter: DeadLetterFilter | None = None,
        *,
        limit: int = 50,
        after: int = 0,
        max_scan: int | None = None,
        **filters: Any,
    ) -> DeadLetterPage:
        """A page of the dead letters `filter` (or the keywords of `DeadLetterFilter`)
        names, oldest first; pass the page's `next_after` as `after=` for the next.

        `max_scan` bounds the letters read for the page (a rare filter otherwise reads
        the whole queue): the page may then stop short (`exhausted`), and its
        `next_after` goes on from the last letter read."""
        reader, _ = self._dead_letters()
        flt = DeadLetterFilter.of(filter, **filters)
        return await reader.page(flt, limit, after, max_scan)

    async def iter_dead_letters(
        self, filter: DeadLetterFilter | None = None, **filters: Any
    ) -> AsyncIterator[DeadLetter]:
        """Every dead letter the filter names, oldest first, read a page at a time."""
        reader, _ = self._dead_letters()
        async for _, batch in reader.scan(DeadLetterFilter.of(filter, **filters)):
            for stored in batch:
                yield stored.letter

    async def count_dead_letters(
        self, filter: DeadLetterFilter | None = None, **filters: Any
    ) -> int:
        """How many dead letters the filter names: one request when it names only the
        dead-letter queue and `since`; otherwise the letters are read to count them."""
        reader, _ = self._dead_letters()
        return await reader.count(DeadLetterFilter.of(filter, **filters))

    async def get_dead_letter(
        self, letter_id: str, dead_letter_queue: str | None = None
    ) -> DeadLetter:
        """The dead letter with this id (a job id, or `seq-<n>`), as stored now."""
        reader, _ = self._dead_letters()
        return (await reader.find(letter_id, dead_letter_queue)).letter

    async def get_failure_history(self, letter: DeadLetter | str) -> list[FailureRecord]:
        """Every failed attempt of a dead letter's job, oldest first: those the letter
        carries, and those left out of it to fit (read from `NAQ_FAILURES` while kept)."""
        reader, _ = self._dead_letters()
        if isinstance(letter, str):
            letter = (await reader.find(letter)).letter
        return await reader.failure_history(letter)

    async def replay_dead_letter(
        self,
        letter: DeadLetter | str,
        *,
        queue_name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        force: bool = False,
        **options: Any,
    ) -> Job:
        """Run a dead letter's job again, on its queue (or `queue_name`), with its
        arguments (or `args`/`kwargs`) and options (or those given: `max_retries=`...).

        The new job's `replay_of` is the letter's id; the letter is marked replayed
        (`replays`) once the job is stored. A letter replayed before raises
        `AlreadyReplayedError` unless `force=True`; one holding no readable job raises
        `NotReplayableError`.
        """
        deadletters.check_options(options)
        reader, replayer = self._dead_letters()
        stored = await reader.find(letter if isinstance(letter, str) else letter.id, None)
        return await replayer.replay(
            stored, queue_name=queue_name, args=args, kwargs=kwargs, force=force, **options
        )

    async def reschedule_dead_letter(
        self,
        letter: DeadLetter | str,
        *,
        delay: Duration | None = None,
        at: dt.datetime | float | None = None,
        queue_name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        force: bool = False,
        **options: Any,
    ) -> Job:
        """`replay_dead_letter`, run `delay` from now or `at` a time: a one-shot schedule
        kept by the server (it survives restarts), marked on the letter with its time."""
        if (delay is None) == (at is None):
            raise ValueError(
                "reschedule takes delay= (a timedelta or seconds) or at= (a datetime or unix "
                "seconds), one of them"
            )
        if delay is not None:
            when = time.time() + seconds(delay, "delay", positive=True)
        elif isinstance(at, dt.datetime):
            if at.tzinfo is None:
                raise ValueError(f"at must be timezone-aware, got the naive {at!r}")
            when = at.timestamp()
        else:
            when = seconds(at, "at", positive=True)
        deadletters.check_options(options)
        reader, replayer = self._dead_letters()
        stored = await reader.find(letter if isinstance(letter, str) else letter.id, None)
        return await replayer.replay(
            stored, queue_name=queue_name, args=args, kwargs=kwargs, at=when, force=force,
            **options,
        )  # fmt: skip

    async def replay_dead_letters(
        self,
        filter: DeadLetterFilter | None = None,
        *,
        rate: float | None = 1000.0,
        concurrency: int = 64,
        force: bool = False,
        queue_name: str | None = None,
        options: dict[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
        **filters: Any,
    ) -> ReplayReport:
        """Replay every dead letter the filter names, at most `rate` a second (None: as
        fast as the server takes them), `concurrency` in flight. Letters that cannot
        be replayed, or were replayed before (unless `force`), are skipped and listed
        in the report. `progress(done, total)` is called as letters are done."""
        reader, replayer = self._dead_letters()
        return await deadletters.replay_many(
            reader, replayer, DeadLetterFilter.of(filter, **filters), rate=rate,
            concurrency=concurrency, progress=progress, force=force, queue_name=queue_name,
            options=options or {},
        )  # fmt: skip

    async def archive_dead_letters(
        self,
        out: str | os.PathLike[str] | IO[bytes],
        filter: DeadLetterFilter | None = None,
        *,
        delete: bool = False,
        progress: Callable[[int, int], None] | None = None,
        **filters: Any,
    ) -> int:
        """Write the letters the filter names to `out` (a path, appended to, or a binary
        file) as JSON Lines; with `delete=True`, remove exactly those written, once the
        file is flushed. How many were written."""
        reader, _ = self._dead_letters()
        flt = DeadLetterFilter.of(filter, **filters)
        if isinstance(out, (str, os.PathLike)):
            file = _LazyFile(out)  # no letters, no file
            try:
                written = await deadletters.write_archive(reader, flt, file, progress)
                file.sync()
            finally:
                file.close()
        else:
            written = await deadletters.write_archive(reader, flt, out, progress)
        if delete:
            await deadletters.remove(self, written)
        return len(written)

    async def discard_dead_letters(
        self,
        ids: Iterable[str] | None = None,
        filter: DeadLetterFilter | None = None,
        **filters: Any,
    ) -> int:
        """Remove the dead letters with these ids, or those the filter names (not both
        unset: `purge_dead_letters` empties a whole dead-letter queue). How many."""
        reader, _ = self._dead_letters()
        if ids is not None:
            if isinstance(ids, str):
                ids = [ids]
            found = []
            for letter_id in ids:
                with contextlib.suppress(deadletters.DeadLetterNotFoundError):
                    found.append(await reader.find(letter_id))
            return await deadletters.remove(self, found)
        flt = DeadLetterFilter.of(filter, **filters)
        if flt == DeadLetterFilter():
            raise ValueError(
                "discard needs ids or a filter (dead_letter_queue=, function=, error_type=, "
                "...); to empty a dead-letter queue use purge_dead_letters(name)"
            )
        chosen = [stored async for _, batch in reader.scan(flt) for stored in batch]
        return await deadletters.remove(self, chosen)

    async def purge_dead_letters(self, dead_letter_queue: str) -> int:
        """Remove every letter of one dead-letter queue (or of a queue's, `"emails"`
        meaning `"emails.dead"`), and the job messages kept beside them. How many letters."""
        from naq_resilience.jetstream.schedules import purge_messages

        layout.check_dead_letter_queue(dead_letter_queue)
        reader, _ = self._dead_letters()
        subject = await reader.subject_filter(dead_letter_queue)
        removed = await purge_messages(self, layout.DEAD_STREAM, subject)
        originals = "naq.originals." + subject.removeprefix("naq.dead.")
        await purge_messages(self, layout.DEAD_STREAM, originals)
        return removed

    # ------------------------------------------------------------------ error analytics
    # Read from the counters workers keep as they work; the code is in jetstream/analytics.py.
    async def error_rate(
        self,
        window: float | timedelta,
        *,
        queue: str | None = None,
        function: str | Callable[..., Any] | None = None,
    ) -> ErrorRate:
        """How many jobs ended in the last `window` (seconds or a `timedelta`) and how many
        of them failed for good, for every queue or one `queue` and/or `function`. A
        few dozen counters are read, however many jobs there were."""
        from naq_resilience.jetstream.analytics import Reader

        return await Reader(self).error_rate(window, queue=queue, function=function)

    async def error_patterns(
        self, window: float | timedelta, *, queue: str | None = None, limit: int = 20
    ) -> list[ErrorPattern]:
        """The `limit` most frequent error patterns (an error type raised in one place) of
        the failed attempts in the last `window`, most frequent first, with their
        share, first and last time seen, trend against the window before, and jobs."""
        from naq_resilience.jetstream.analytics import Reader

        return await Reader(self).error_patterns(window, queue=queue, limit=limit)

    async def error_budget(
        self, target_success_rate: float = 0.999, window: float | timedelta = 86400.0
    ) -> BudgetStatus:
        """Where a success-rate target stands over `window`: the error budget, how much
        of it is left, and the SRE workbook's fast and slow burn-rate alerts."""
        from naq_resilience.jetstream.analytics import Reader

        return await Reader(self).error_budget(target_success_rate, window)

    # ------------------------------------------------------------------ scheduled jobs
    # Kept and fired by nats-server (ADR-51); the code is in jetstream/schedules.py.
    async def enqueue_at(
        self, dt: datetime, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> ScheduledJob:
        """Run `func` once at `dt`; `queue_name=`, `job_id=` and the enqueue options apply."""
        from naq_resilience.jetstream import schedules

        return await schedules.client_enqueue_at(self, dt, func, *args, **kwargs)

    async def enqueue_in(
        self, delta: timedelta | float, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> ScheduledJob:
        """Run `func` once, `delta` (a timedelta or seconds) from now."""
        from naq_resilience.jetstream import schedules

        return await schedules.client_enqueue_in(self, delta, func, *args, **kwargs)

    async def schedule(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> ScheduledJob:
        """Run `func` on `cron=` or every `interval=`, `repeat=` times (None: until cancelled)."""
        from naq_resilience.jetstream import schedules

        return await schedules.client_schedule(self, func, *args, **kwargs)

    async def cancel_scheduled_job(self, job_id: str) -> bool:
        from naq_resilience.jetstream import schedules

        return await schedules.client_cancel(self, job_id)

    async def pause_scheduled_job(self, job_id: str) -> bool:
        from naq_resilience.jetstream import schedules

        return await schedules.client_pause(self, job_id)

    async def resume_scheduled_job(self, job_id: str) -> bool:
        from naq_resilience.jetstream import schedules

        return await schedules.client_resume(self, job_id)

    async def modify_scheduled_job(self, job_id: str, **updates: Any) -> bool:
        from naq_resilience.jetstream import schedules

        return await schedules.client_modify(self, job_id, **updates)

    async def list_schedules(self, queue_name: str | None = None) -> list[ScheduleInfo]:
        from naq_resilience.jetstream import schedules

        return await schedules.client_list(self, queue_name)

    async def purge_queue(self, queue_name: str = "default") -> int:
        """Remove the jobs waiting in `queue_name`; how many. Its schedules stay."""
        from naq_resilience.jetstream import schedules

        return await schedules.client_purge_queue(self, queue_name)


_history_encode = msgspec.json.Encoder().encode
_FIRST_RECORD = {"Nats-Expected-Last-Subject-Sequence": "0"}
_STREAM_NOT_FOUND = 10059


def _job_headers(job_id: str, trace: dict[str, str] | None) -> dict[str, str]:
    return {"Nats-Msg-Id": job_id} if trace is None else {"Nats-Msg-Id": job_id, **trace}


def _window_start(hours: float, since: float | dt.datetime | None) -> float:
    if since is not None:
        return since.timestamp() if isinstance(since, dt.datetime) else float(since)
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not hours > 0:
        raise ValueError(f"hours must be a number > 0, got {hours!r}; or pass since=")
    return time.time() - hours * 3600


def _no_leader(error: BaseException) -> bool:
    """A publish no stream leader answered: certainly not stored, worth asking again."""
    return isinstance(error, NoStreamResponseError) or (
        isinstance(error, APIError) and error.err_code == 10008
    )


def _not_confirmed(error: PublishTimeoutError, envelope: JobEnvelope) -> PublishTimeoutError:
    return PublishTimeoutError(
        f"{error}. Job {envelope.id} ({envelope.function}) may still be stored once the "
        "connection is back. To retry safely, enqueue it again with "
        f"job_id={envelope.id!r}: JetStream stores one job per id within its duplicate "
        "window (NAQ_DUPLICATE_WINDOW, 2 minutes by default)"
    )


def _queue_full(error: StreamFullError, count: int) -> StreamFullError:
    return StreamFullError(
        code=error.code,
        err_code=error.err_code,
        stream=error.stream,
        description=(
            f"{error.description}: the job stream {layout.JOB_STREAM} is full, so "
            f"{'the job was' if count == 1 else 'not every job was'} stored (a stored "
            "job is never discarded to make room). Let the workers catch up, or raise "
            "the limit (NAQ_JOBS_MAX_BYTES, or `nats stream edit NAQ_JOBS`)"
        ),
    )


# --------------------------------------------------------------------------- sync API


class _LoopThread:
    """One event loop in a daemon thread, shared by the sync API of a process."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        loop = self._loop
        if loop is None:
            with self._lock:
                if self._loop is None:
                    self._loop = self._start()
                loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    @staticmethod
    def _start() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="naq-sync-client", daemon=True)
        thread.start()
        return loop


_loop_thread = _LoopThread()


class SyncJob:
    """`Job` for synchronous code."""

    __slots__ = ("_job", "_runner")

    def __init__(self, job: Job, runner: _LoopThread) -> None:
        self._job = job
        self._runner = runner

    @property
    def job_id(self) -> str:
        return self._job.job_id

    @property
    def queue(self) -> str:
        return self._job.queue

    @property
    def function(self) -> str:
        return self._job.function

    def __repr__(self) -> str:
        return repr(self._job)

    def status(self) -> JobStatus:
        return self._runner.run(self._job.status())

    def result(self, timeout: Duration | None = 30.0) -> Any:
        return self._runner.run(self._job.result(timeout))


class JobList(Sequence[JobRecord]):
    """A `JobWindow` for synchronous code, as the guide uses it: `len()` is one request
    however many jobs the window holds; iterating reads a page at a time; indexing
    reads (and keeps) the pages up to the index."""

    def __init__(self, window: JobWindow, runner: _LoopThread) -> None:
        self._window = window
        self._runner = runner
        self._kept: list[JobRecord] = []
        self._pages: AsyncIterator[list[JobRecord]] | None = None

    def __len__(self) -> int:
        return self._runner.run(self._window.count())

    def __iter__(self) -> Iterator[JobRecord]:
        pages = self._window.pages()
        try:
            while (page := self._runner.run(_next_page(pages))) is not None:
                yield from page
        finally:
            self._runner.run(_close(pages))

    @overload
    def __getitem__(self, index: int) -> JobRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[JobRecord]: ...
    def __getitem__(self, index: int | slice) -> JobRecord | list[JobRecord]:
        if isinstance(index, slice) or index < 0:
            self._keep(len(self))
            return self._kept[index]
        self._keep(index + 1)
        return self._kept[index]

    def _keep(self, count: int) -> None:
        if self._pages is None:
            self._pages = self._window.pages()
        while len(self._kept) < count:
            page = self._runner.run(_next_page(self._pages))
            if page is None:
                break
            self._kept.extend(page)

    def __repr__(self) -> str:
        return f"<JobList since {self._window.since:.0f}>"


async def _next_page(pages: AsyncIterator[list[JobRecord]]) -> list[JobRecord] | None:
    try:
        return await anext(pages)
    except StopAsyncIteration:
        return None


async def _close(pages: AsyncIterator[list[JobRecord]]) -> None:
    close = getattr(pages, "aclose", None)
    if close is not None:
        await close()


class _LazyFile:
    """A local file opened for appending at its first write; written a page at a time
    from async code, blocking the loop only for as long as a page takes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = path
        self._file: IO[bytes] | None = None

    def write(self, data: bytes) -> int:
        if self._file is None:
            self._file = open(self._path, "ab")  # noqa: SIM115
        return self._file.write(data)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def sync(self) -> None:
        """On disk before anything it holds is deleted from the stream."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class SyncClient:
    """`Client` for synchronous code: `with SyncClient() as client: client.enqueue(...)`."""

    def __init__(self, nats_url: str | None = None, **options: Any) -> None:
        self._client = Client(nats_url, **options)
        self._runner = _loop_thread

    def __enter__(self) -> SyncClient:
        self._runner.run(self._client.connect())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self._client.close())

    def enqueue(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> SyncJob:
        return SyncJob(self._runner.run(self._client.enqueue(func, *args, **kwargs)), self._runner)

    def enqueue_many(
        self, func: Callable[..., Any], calls: Iterable[Sequence[Any]], **options: Any
    ) -> list[SyncJob]:
        jobs = self._runner.run(self._client.enqueue_many(func, calls, **options))
        return [SyncJob(job, self._runner) for job in jobs]

    # Dead letters: `Client`'s methods of the same names, for synchronous code.
    def get_dead_letter_jobs(
        self, name: str | None = None, limit: int = 1000, **filters: Any
    ) -> list[DeadLetter]:
        return self._runner.run(self._client.get_dead_letter_jobs(name, limit, **filters))

    def list_dead_letters(
        self, filter: DeadLetterFilter | None = None, *, limit: int = 50, after: int = 0,
        max_scan: int | None = None, **filters: Any,
    ) -> DeadLetterPage:  # fmt: skip
        return self._runner.run(
            self._client.list_dead_letters(
                filter, limit=limit, after=after, max_scan=max_scan, **filters
            )
        )

    def iter_dead_letters(
        self, filter: DeadLetterFilter | None = None, **filters: Any
    ) -> Iterator[DeadLetter]:
        """Every letter the filter names, oldest first, a page at a time."""
        flt = DeadLetterFilter.of(filter, **filters)
        after = 0
        while True:
            page = self.list_dead_letters(flt, limit=500, after=after)
            yield from page.letters
            if page.next_after is None:
                return
            after = page.next_after

    def count_dead_letters(self, filter: DeadLetterFilter | None = None, **filters: Any) -> int:
        return self._runner.run(self._client.count_dead_letters(filter, **filters))

    def get_dead_letter(self, letter_id: str, dead_letter_queue: str | None = None) -> DeadLetter:
        return self._runner.run(self._client.get_dead_letter(letter_id, dead_letter_queue))

    def get_failure_history(self, letter: DeadLetter | str) -> list[FailureRecord]:
        return self._runner.run(self._client.get_failure_history(letter))

    def replay_dead_letter(self, letter: DeadLetter | str, **options: Any) -> SyncJob:
        job = self._runner.run(self._client.replay_dead_letter(letter, **options))
        return SyncJob(job, self._runner)

    def reschedule_dead_letter(self, letter: DeadLetter | str, **options: Any) -> SyncJob:
        job = self._runner.run(self._client.reschedule_dead_letter(letter, **options))
        return SyncJob(job, self._runner)

    def replay_dead_letters(
        self, filter: DeadLetterFilter | None = None, **options: Any
    ) -> ReplayReport:
        return self._runner.run(self._client.replay_dead_letters(filter, **options))

    def archive_dead_letters(
        self,
        out: str | os.PathLike[str] | IO[bytes],
        filter: DeadLetterFilter | None = None,
        **options: Any,
    ) -> int:
        return self._runner.run(self._client.archive_dead_letters(out, filter, **options))

    def discard_dead_letters(
        self,
        ids: Iterable[str] | None = None,
        filter: DeadLetterFilter | None = None,
        **filters: Any,
    ) -> int:
        return self._runner.run(self._client.discard_dead_letters(ids, filter, **filters))

    def purge_dead_letters(self, dead_letter_queue: str) -> int:
        return self._runner.run(self._client.purge_dead_letters(dead_letter_queue))

    def get_job(self, job_id: str) -> JobRecord | None:
        return self._runner.run(self._client.get_job(job_id))

    def get_jobs_in_timeframe(
        self, hours: float = 1.0, *, since: float | dt.datetime | None = None
    ) -> JobList:
        window = self._runner.run(self._client.get_jobs_in_timeframe(hours, since=since))
        return JobList(window, self._runner)

    def get_failed_jobs(
        self, hours: float = 24.0, *, since: float | dt.datetime | None = None
    ) -> JobList:
        window = self._runner.run(self._client.get_failed_jobs(hours, since=since))
        return JobList(window, self._runner)

    # Error analytics: `Client`'s methods of the same names, for synchronous code.
    def error_rate(
        self,
        window: float | timedelta,
        *,
        queue: str | None = None,
        function: str | Callable[..., Any] | None = None,
    ) -> ErrorRate:
        return self._runner.run(self._client.error_rate(window, queue=queue, function=function))

    def error_patterns(
        self, window: float | timedelta, *, queue: str | None = None, limit: int = 20
    ) -> list[ErrorPattern]:
        return self._runner.run(self._client.error_patterns(window, queue=queue, limit=limit))

    def error_budget(
        self, target_success_rate: float = 0.999, window: float | timedelta = 86400.0
    ) -> BudgetStatus:
        return self._runner.run(self._client.error_budget(target_success_rate, window))


# --------------------------------------------------------------------------- module-level API

_default_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Client]] = (
    weakref.WeakKeyDictionary()
)


ENQUEUE_OPTIONS: tuple[str, ...] = (
    *(
        p.name
        for p in inspect.signature(Client.enqueue).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    ),
    "nats_url",
)
"""The keywords `enqueue` takes for itself; every other keyword goes to the function."""


def _default_client(nats_url: str | None) -> Client:
    """One client per URL and event loop for the module-level functions.

    A connection belongs to the loop it was made on, so each `asyncio.run(...)` gets
    its own; the clients go with their loop.
    """
    url = nats_url or ConnectionSettings.from_env().url
    clients = _default_clients.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(url)
    if client is None:
        client = clients[url] = Client(url)
    return client


async def enqueue(
    func: Callable[..., Any], *args: Any, nats_url: str | None = None, **kwargs: Any
) -> Job:
    """`Client.enqueue` on a shared connection to `nats_url` (or `NAQ_NATS_URL`)."""
    return await _default_client(nats_url).enqueue(func, *args, **kwargs)


async def enqueue_many(
    func: Callable[..., Any],
    calls: Iterable[Sequence[Any]],
    *,
    nats_url: str | None = None,
    **options: Any,
) -> list[Job]:
    return await _default_client(nats_url).enqueue_many(func, calls, **options)


_sync_clients: dict[str, SyncClient] = {}


def _default_sync_client(nats_url: str | None) -> SyncClient:
    url = nats_url or ConnectionSettings.from_env().url
    client = _sync_clients.get(url)
    if client is None:
        client = _sync_clients[url] = SyncClient(url)
    return client


def get_job(job_id: str, *, nats_url: str | None = None) -> JobRecord | None:
    """A job's latest record by id (status, times, attempts, worker, error type)."""
    return _default_sync_client(nats_url).get_job(job_id)


def get_jobs_in_timeframe(
    hours: float = 1.0, *, since: float | dt.datetime | None = None, nats_url: str | None = None
) -> JobList:
    """The jobs whose latest change falls in the last `hours`, as the guide asks for them."""
    return _default_sync_client(nats_url).get_jobs_in_timeframe(hours, since=since)


def get_failed_jobs(
    hours: float = 24.0, *, since: float | dt.datetime | None = None, nats_url: str | None = None
) -> JobList:
    """The jobs that failed for good in the last `hours`, as records."""
    return _default_sync_client(nats_url).get_failed_jobs(hours, since=since)


# Error analytics, as NAQ's guide monitors errors: synchronous, on a shared connection.
def error_rate(
    window: float | timedelta,
    *,
    queue: str | None = None,
    function: str | Callable[..., Any] | None = None,
    nats_url: str | None = None,
) -> ErrorRate:
    """`Client.error_rate`: jobs ended and failed for good in the last `window` (seconds
    or a `timedelta`), from the workers' counters: `error_rate(timedelta(hours=1)).rate`."""
    return _default_sync_client(nats_url).error_rate(window, queue=queue, function=function)


def error_patterns(
    window: float | timedelta,
    *,
    queue: str | None = None,
    limit: int = 20,
    nats_url: str | None = None,
) -> list[ErrorPattern]:
    """`Client.error_patterns`: the most frequent error patterns of the last `window`."""
    return _default_sync_client(nats_url).error_patterns(window, queue=queue, limit=limit)


# Dead letters, as NAQ's guide calls them: synchronous, on a shared connection to
# `nats_url` (or `NAQ_NATS_URL`). Async code has them on `Client`.
def get_dead_letter_jobs(
    name: str | None = None, limit: int = 1000, *, nats_url: str | None = None, **filters: Any
) -> list[DeadLetter]:
    """The oldest `limit` dead letters of `name`: a dead-letter queue ("failed_jobs",
    "emails.dead") or a queue ("default", meaning "default.dead"); None: of every one."""
    return _default_sync_client(nats_url).get_dead_letter_jobs(name, limit, **filters)


def list_dead_letters(
    filter: DeadLetterFilter | None = None,
    *,
    limit: int = 50,
    after: int = 0,
    nats_url: str | None = None,
    **filters: Any,
) -> DeadLetterPage:
    """A page of the dead letters the filter names; `next_after` gives the next."""
    client = _default_sync_client(nats_url)
    return client.list_dead_letters(filter, limit=limit, after=after, **filters)


def count_dead_letters(
    filter: DeadLetterFilter | None = None, *, nats_url: str | None = None, **filters: Any
) -> int:
    return _default_sync_client(nats_url).count_dead_letters(filter, **filters)


def get_dead_letter(
    letter_id: str, dead_letter_queue: str | None = None, *, nats_url: str | None = None
) -> DeadLetter:
    """One dead letter by id (its job's id, or `seq-<n>`)."""
    return _default_sync_client(nats_url).get_dead_letter(letter_id, dead_letter_queue)


def replay_dead_letter(
    letter: DeadLetter | str, *, nats_url: str | None = None, **options: Any
) -> SyncJob:
    """`Client.replay_dead_letter`: its job run again, the letter marked replayed."""
    return _default_sync_client(nats_url).replay_dead_letter(letter, **options)


def reschedule_dead_letter(
    letter: DeadLetter | str, *, nats_url: str | None = None, **options: Any
) -> SyncJob:
    """`Client.reschedule_dead_letter`: replayed after `delay=` or at `at=`."""
    return _default_sync_client(nats_url).reschedule_dead_letter(letter, **options)


def replay_dead_letters(
    filter: DeadLetterFilter | None = None, *, nats_url: str | None = None, **options: Any
) -> ReplayReport:
    """`Client.replay_dead_letters`: every letter the filter names, at a bounded rate."""
    return _default_sync_client(nats_url).replay_dead_letters(filter, **options)


def archive_dead_letters(
    out: str | os.PathLike[str] | IO[bytes],
    filter: DeadLetterFilter | None = None,
    *,
    nats_url: str | None = None,
    **options: Any,
) -> int:
    return _default_sync_client(nats_url).archive_dead_letters(out, filter, **options)


def discard_dead_letters(
    ids: Iterable[str] | None = None,
    filter: DeadLetterFilter | None = None,
    *,
    nats_url: str | None = None,
    **filters: Any,
) -> int:
    return _default_sync_client(nats_url).discard_dead_letters(ids, filter, **filters)


def purge_dead_letters(dead_letter_queue: str, *, nats_url: str | None = None) -> int:
    return _default_sync_client(nats_url).purge_dead_letters(dead_letter_queue)


def enqueue_sync(
    func: Callable[..., Any], *args: Any, nats_url: str | None = None, **kwargs: Any
) -> SyncJob:
    """`enqueue` for synchronous code; safe to call from inside a running event loop's thread."""
    return _default_sync_client(nats_url).enqueue(func, *args, **kwargs)


@atexit.register
def _close_sync_clients() -> None:
    for client in list(_sync_clients.values()):
        with contextlib.suppress(Exception):  # exiting: a dead server must not block it
            client.close()
