"""The worker: pull jobs, run them, and give every job exactly one final state.

The success path of a message is: decode the envelope (msgspec, typed), look the
function up (a dict hit after the first time), run it, `ack()` (a publish into the
connection's write buffer, not a round trip). Fetching is batched up to the free
slots, so a fetched message is always started at once and never handed back unrun.
Nothing is logged per job above DEBUG.

Failures are handled by what the function's policy and the job's options say:

- retryable with attempts left: a failure record, then `nak(delay)`; the broker
  redelivers after the delay, so no worker slot waits;
- an open circuit breaker: `nak(retry_after)` without counting an attempt (a KV counter
  of deferrals is subtracted from JetStream's delivery count);
- non-retryable, out of attempts, or critical (plus the critical hooks): a failure
  record, a dead letter with the whole failure history, then `ack()`;
- a message that cannot be decoded, has an unknown version or names a function this
  worker may not run: a dead letter with the reason and the raw bytes, then `ack()`.

The attempt number is JetStream's delivery count (minus deferrals), so a delivery that
crashed the worker counts as an attempt and a poison job ends as a dead letter
instead of looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError

from naq_resilience.codec import Format, InvalidMessage, decode, decode_envelope, encode
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.connection import ConnectionSettings, connect, ensure_jetstream
from naq_resilience.jetstream.publisher import Publisher
from naq_resilience.jetstream.registry import FunctionRegistry, JobFunction, UnknownFunction
from naq_resilience.jetstream.stores import BreakerSync, KVActionLog, load_action_log
from naq_resilience.jetstream.streams import Buckets, ensure_layout
from naq_resilience.models import DeadLetter, FailureRecord, JobEnvelope, JobResult, JobStatus
from naq_resilience.policies.chaos import is_injected
from naq_resilience.policies.classify import (
    Classification,
    classify,
    classify_by_name,
    context_of,
    report_critical,
)
from naq_resilience.policies.compensate import Saga, reset_action_log, use_action_log
from naq_resilience.policies.delays import DelaySchedule
from naq_resilience.policies.errors import CircuitBreakerOpenError
from naq_resilience.policies.pipeline import qualified_name

__all__ = ["Worker", "current_job"]

log = logging.getLogger("naq_resilience.worker")

_current_job: contextvars.ContextVar[JobEnvelope | None] = contextvars.ContextVar(
    "naq_current_job", default=None
)

MAX_FETCH = 256
DEFERRAL_TTL = 7 * 24 * 3600.0
"""A deferral count outlives any sane breaker outage, then expires with the job gone."""
_NO_SCHEDULE = DelaySchedule("fixed", 0.0, None, None)


def current_job() -> JobEnvelope | None:
    """The envelope of the job the calling code runs in (None outside a worker)."""
    return _current_job.get()


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


class Worker:
    """Runs the jobs of one or more queues; `await worker.run()` until `stop()` or a signal.

    `imports` are the modules whose functions jobs may name (the CLI's `--import`, or
    `NAQ_IMPORTS`, comma separated); `functions` allows single functions directly.
    Async jobs run on the event loop, sync jobs on a thread pool of `concurrency`
    threads; at most `concurrency` jobs run at once. `ack_wait` is how long the broker
    waits for a sign of life before redelivering; long jobs send one every third of it.
    """

    def __init__(
        self,
        queues: str | Sequence[str] = "default",
        *,
        nats_url: str | None = None,
        settings: ConnectionSettings | None = None,
        concurrency: int = 10,
        imports: Iterable[str] = (),
        functions: Iterable[Callable[..., Any]] = (),
        ack_wait: float = 30.0,
        shutdown_grace: float = 30.0,
        fetch_timeout: float = 1.0,
        format: Format = "json",
        worker_id: str | None = None,
    ) -> None:
        names = [queues] if isinstance(queues, str) else list(queues)
        if not names:
            raise ValueError("a worker needs at least one queue, e.g. Worker('default')")
        self.queues = tuple(layout.check_queue_name(q, "queue") for q in names)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
        self.concurrency = concurrency
        env_imports = [m.strip() for m in os.environ.get("NAQ_IMPORTS", "").split(",") if m.strip()]
        self.registry = FunctionRegistry([*imports, *env_imports])
        for func in functions:
            self.registry.register(func)
        if settings is None:
            settings = ConnectionSettings.from_env(**({"url": nats_url} if nats_url else {}))
        self._settings = settings
        self.ack_wait = ack_wait
        self.shutdown_grace = shutdown_grace
        self.fetch_timeout = fetch_timeout
        self._format: Format = format
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
        self._stopping = asyncio.Event()
        self._record_encoder = msgspec.json.Encoder(enc_hook=repr)
        self._policies: dict[str, _Policy] = {}
        self.processed = 0
        self.failed = 0

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Work until `stop()`; then finish in-flight jobs within `shutdown_grace`."""
        self._loop = asyncio.get_running_loop()
        self._nc = await connect(self._settings, max_reconnect_attempts=-1)
        await ensure_jetstream(self._nc)
        self._js = self._nc.jetstream()
        self._buckets = await ensure_layout(self._js)
        self._publisher = Publisher(self._nc)
        await self._publisher.start()
        breakers = BreakerSync(self._buckets.breakers, self.worker_id)
        await breakers.start()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="naq-job")
        subs = [await self._subscribe(queue) for queue in self.queues]
        log.info(
            "worker %s started: queues=%s concurrency=%d modules=%s",
            self.worker_id, ",".join(self.queues), self.concurrency,
            ",".join(self.registry.modules) or "-",
        )  # fmt: skip
        fetchers = [
            asyncio.create_task(self._fetch_loop(queue, sub))
            for queue, sub in zip(self.queues, subs, strict=True)
        ]
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        try:
            await self._stopping.wait()
        finally:
            for task in fetchers:
                task.cancel()
            await asyncio.gather(*fetchers, return_exceptions=True)
            await self._drain_in_flight()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await breakers.stop()
            await self._publisher.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=5)  # the acks of the last jobs
            await self._nc.close()
            log.info(
                "worker %s stopped: %d jobs processed, %d failures",
                self.worker_id, self.processed, self.failed,
            )  # fmt: skip

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

    def run_forever(self) -> None:
        """`run()` in a new event loop, stopping gracefully on SIGTERM or SIGINT."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            await self.run()

        asyncio.run(main())

    async def _drain_in_flight(self) -> None:
        if not self._running:
            return
        _, pending = await asyncio.wait(list(self._running), timeout=self.shutdown_grace)
        for task in pending:
            msg, _ = self._running.get(task, (None, 0.0))
            task.cancel()
            if msg is not None:
                with contextlib.suppress(Exception):
                    await msg.nak()
        if pending:
            log.warning(
                "worker %s: %d jobs did not finish within %.0fs and were handed back",
                self.worker_id, len(pending), self.shutdown_grace,
            )  # fmt: skip
        await asyncio.gather(*pending, return_exceptions=True)

    async def _subscribe(self, queue: str) -> JetStreamContext.PullSubscription:
        assert self._js is not None
        durable = layout.worker_consumer(queue)
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=layout.job_subject(queue),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=-1,
            max_waiting=512,
        )
        await self._js.add_consumer(layout.JOB_STREAM, config)
        return await self._js.pull_subscribe_bind(durable, layout.JOB_STREAM)

    # ------------------------------------------------------------------ fetching
    async def _fetch_loop(self, queue: str, sub: JetStreamContext.PullSubscription) -> None:
        # Fetch when half the slots are free (or all jobs ended), not whenever one is:
        # a fetch per finished job would be a round trip per job.
        low_water = max(1, min(self.concurrency, MAX_FETCH) // 2)
        while not self._stopping.is_set():
            if self._free < low_water and self._running:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                msgs = await sub.fetch(min(self._free, MAX_FETCH), timeout=self.fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.NoServersError):
                return
            except Exception as exc:  # disconnected: nats-py reconnects; try again shortly
                log.debug("fetch on %s failed (%r); retrying", queue, exc)
                await asyncio.sleep(0.25)
                continue
            now = time.time()
            for msg in msgs:
                self._free -= 1
                task = asyncio.create_task(self._handle(msg, queue))
                self._running[task] = (msg, now)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._free += 1
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker bug while handling a job", exc_info=task.exception())

    async def _heartbeat_loop(self) -> None:
        """Tell the broker that long jobs are alive, so it does not redeliver them."""
        period = self.ack_wait / 3
        while True:
            await asyncio.sleep(period)
            cutoff = time.time() - period
            for msg, started in list(self._running.values()):
                if started < cutoff:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    # ------------------------------------------------------------------ one job
    async def _handle(self, msg: Msg, queue: str) -> None:
        try:
            env = decode_envelope(msg.data)
        except InvalidMessage as exc:
            await self._dead_raw(msg, queue, exc.reason)
            return
        if env.queue != queue:
            # The subject is where the job is: failures and history are filed under it.
            # (Only a hand-written envelope differs, typically by leaving `queue` out.)
            env = msgspec.structs.replace(env, queue=queue)
        try:
            fn = self.registry.resolve(env.function)
        except UnknownFunction as exc:
            await self._dead(msg, env, queue, exc.reason, [])
            return
        delivered = _delivered(msg)
        deferrals = 0
        if delivered > 1:
            if fn.has_breaker:
                deferrals = await self._deferrals(env.id)
            policy = self._policy(fn, env)
            if delivered - deferrals > policy.max_attempts:
                await self._dead(
                    msg, env, queue,
                    f"delivered {delivered - deferrals} times, more than its "
                    f"{policy.max_attempts} attempts: a worker crashed or was killed while "
                    "running it (a poison job)",
                    await self._history(env),
                )  # fmt: skip
                return
        token = _current_job.set(env)
        logs: list[KVActionLog] | None = None
        if fn.has_saga:
            logs = []
            if delivered > 1:
                await self._roll_back_crashed(env)
            log_token = use_action_log(partial(self._saga_log, env, logs))
        started = time.time()
        try:
            args, kwargs = fn.convert(env.args, env.kwargs)
            if fn.is_async:
                result = fn.runner(*args, **kwargs)
                if env.timeout is not None:
                    result = await asyncio.wait_for(result, env.timeout)
                else:
                    result = await result
            else:
                assert self._pool is not None
                ctx = contextvars.copy_context()
                future = asyncio.get_running_loop().run_in_executor(
                    self._pool, ctx.run, _call, fn.runner, args, kwargs
                )
                result = await (
                    asyncio.wait_for(future, env.timeout) if env.timeout is not None else future
                )
            if logs:
                await _flush(logs)
        except CircuitBreakerOpenError as exc:
            if logs:
                await _flush(logs)
            await self._defer(msg, env, exc, deferrals)
        except Exception as exc:
            if logs:
                await _flush(logs)
            await self._failed(msg, env, queue, fn, exc, started, delivered - deferrals)
        else:
            if env.result_ttl is not None:
                await (await self._store_result(env, JobStatus.COMPLETED, result, None))
            await msg.ack()
            self.processed += 1
        finally:
            _current_job.reset(token)
            if fn.has_saga:
                reset_action_log(log_token)

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

    async def _defer(
        self, msg: Msg, env: JobEnvelope, exc: CircuitBreakerOpenError, deferrals: int
    ) -> None:
        """The breaker is open: come back when it may close, without using an attempt."""
        assert self._js is not None
        assert self._publisher is not None
        await (
            await self._publisher.publish(
                f"$KV.{layout.DEFERRAL_BUCKET}.{env.id}",
                str(deferrals + 1).encode(),
                msg_ttl=DEFERRAL_TTL,
            )
        )
        await msg.nak(delay=max(exc.retry_after, 0.001))
        log.debug("job %s deferred %.3fs: breaker %s open", env.id, exc.retry_after, exc.name)

    async def _deferrals(self, job_id: str) -> int:
        assert self._buckets is not None
        try:
            entry = await self._buckets.deferrals.get(job_id)
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def _failed(
        self,
        msg: Msg,
        env: JobEnvelope,
        queue: str,
        fn: JobFunction,
        exc: Exception,
        started: float,
        attempt: int,
    ) -> None:
        self.failed += 1
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
        record = FailureRecord(
            job_id=env.id,
            function=env.function,
            queue=queue,
            attempt=attempt,
            max_attempts=policy.max_attempts,
            error_type=qualified_name(type(exc)),
            message=str(exc),
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
        )
        subject, payload = self._failure_message(record)
        if delay is not None:
            assert self._publisher is not None
            await (await self._publisher.publish(subject, payload))  # kept before the nak
            await msg.nak(delay=delay)
            return
        # The job is dead: the dead letter, stored before the ack, carries this record
        # too, so the copy for the failures stream does not wait for its own ack.
        assert self._nc is not None
        await self._nc.publish(subject, payload)
        if kind is Classification.CRITICAL:
            reason = f"critical error {record.error_type}: {record.message}"
        elif kind is Classification.NON_RETRYABLE:
            reason = f"non-retryable error {record.error_type}: {record.message}"
        else:
            reason = f"out of attempts ({attempt} of {policy.max_attempts}): {record.error_type}"
        earlier = await self._history(env) if attempt > 1 else []
        history = [h for h in earlier if h.attempt < attempt] + [record]
        error = f"{record.error_type}: {exc}"
        await self._dead(msg, env, queue, reason, history, error=error)

    # ------------------------------------------------------------------ records
    def _failure_message(self, record: FailureRecord) -> tuple[str, bytes]:
        try:
            payload = self._record_encoder.encode(record)
        except (TypeError, msgspec.EncodeError, OverflowError):
            payload = self._record_encoder.encode(msgspec.structs.replace(record, context={}))
        return layout.failure_subject(record.queue, record.job_id), payload

    async def _history(self, env: JobEnvelope) -> list[FailureRecord]:
        """The job's earlier failure records, read back from the failures stream."""
        assert self._js is not None
        subject = layout.failure_subject(env.queue, env.id)
        records: list[FailureRecord] = []
        sub = await self._js.subscribe(subject, ordered_consumer=True, stream=layout.FAILURE_STREAM)
        try:
            while True:
                try:
                    got = await sub.next_msg(timeout=0.5)
                except nats.errors.TimeoutError:
                    break
                with contextlib.suppress(msgspec.DecodeError):
                    records.append(decode(got.data, FailureRecord))
                if got.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return records

    async def _dead(
        self,
        msg: Msg,
        env: JobEnvelope,
        queue: str,
        reason: str,
        failures: list[FailureRecord],
        error: str | None = None,
    ) -> None:
        """Store the dead letter (and the records before it), then ack: never the other way."""
        dead_queue = env.dead_letter_queue or layout.dead_letter_queue_for(queue)
        letter = DeadLetter(
            reason=reason,
            queue=queue,
            dead_letter_queue=dead_queue,
            dead_at=time.time(),
            job=env,
            failures=failures,
        )
        stored = await self._publish_dead(
            letter, layout.dead_subject(dead_queue, env.id), env.dead_letter_ttl
        )
        if env.result_ttl is not None:
            await (await self._store_result(env, JobStatus.DEAD, None, error or reason))
        await stored
        await msg.ack()
        log.debug("job %s dead-lettered to %s: %s", env.id, dead_queue, reason)

    async def _dead_raw(self, msg: Msg, queue: str, reason: str) -> None:
        dead_queue = layout.dead_letter_queue_for(queue)
        letter = DeadLetter(
            reason=reason, queue=queue, dead_letter_queue=dead_queue, dead_at=time.time(),
            raw=bytes(msg.data),
        )  # fmt: skip
        seq = msg.metadata.sequence.stream
        await (
            await self._publish_dead(letter, layout.dead_subject(dead_queue, f"seq-{seq}"), None)
        )
        await msg.ack()
        log.warning("message %d on %s dead-lettered: %s", seq, queue, reason)

    async def _publish_dead(
        self, letter: DeadLetter, subject: str, ttl: float | None
    ) -> asyncio.Future[Any]:
        assert self._publisher is not None
        payload = self._record_encoder.encode(letter)
        return await self._publisher.publish(subject, payload, msg_ttl=ttl)

    async def _store_result(
        self, env: JobEnvelope, status: JobStatus, result: Any, error: str | None
    ) -> asyncio.Future[int]:
        assert self._publisher is not None
        record = JobResult(
            job_id=env.id, status=status, result=result, error=error, finished_at=time.time()
        )
        try:
            payload = encode(record, self._format)
        except (TypeError, msgspec.EncodeError, OverflowError) as exc:
            unstorable = f"the job's return value could not be stored: {exc}"
            payload = encode(msgspec.structs.replace(record, result=None, error=unstorable))
        return await self._publisher.publish(
            f"$KV.{layout.RESULT_BUCKET}.{env.id}", payload, msg_ttl=env.result_ttl
        )


async def _flush(logs: list[KVActionLog]) -> None:
    """A saga's outcome (committed, or rolled back) is stored before the job is settled."""
    for saga_log in logs:
        await saga_log.flush()


def _delivered(msg: Msg) -> int:
    """JetStream's delivery count, read from the reply subject without parsing it all.

    `$JS.ACK.<stream>.<consumer>.<delivered>....` (9 tokens), or with a domain and
    account hash before the stream (12 tokens).
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[4])
    if len(tokens) >= 12:
        return int(tokens[6])
    return msg.metadata.num_delivered


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
    try:
        text = str(exc)
    except Exception:
        text = "<exception str() failed>"
    line = f"{name}: {text}\n" if text else f"{name}\n"
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        line += "".join(f"{note}\n" for note in notes)
    return line


def _call(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    return func(*args, **kwargs)
