"""Scheduled jobs, NAQ-style, kept and fired by nats-server itself (ADR-51 message schedules).

`enqueue_at`, `enqueue_in`, `schedule`, `cancel_scheduled_job`, `pause_scheduled_job`,
`resume_scheduled_job`, `modify_scheduled_job` and `purge_queue`, each with a `_sync`
twin, and NAQ's `Queue` object. There is no scheduler process: a schedule is a message
in `NAQ_SCHEDULES` that the stream's leader fires at its time, so there is nothing of
ours to run, to crash or to elect, and a schedule is as durable and as replicated as
the stream. Measured on nats-server 2.15:

- A schedule's target must be a subject of its own stream, so the server fires into
  `naq.runs.<queue>` there, and `NAQ_JOBS` sources those copies as `naq.jobs.<queue>`:
  to a worker a fired job is a job like any other.
- A fired copy carries the schedule message's body and headers, less `Nats-Msg-Id`,
  `Nats-TTL` and the `Nats-Schedule-*` ones, plus `Nats-Scheduler` (the schedule's
  subject) and `Nats-Schedule-Next` (the next run's time, or `purge` for a one-shot,
  whose schedule message the server then deletes).
- A repeating schedule (`@every 5s`, a 6-field cron, a cron in an IANA time zone) sends
  the very same body every time. So a schedule that repeats until cancelled has one
  message, and each run's job id is derived from its `Nats-Schedule-Next` by
  `run_envelope`, which the worker calls. A counted schedule (`repeat=N`) is stored as
  N one-shot (`@at`) messages, one per run, each with its own job id in its envelope:
  it stops after N runs with nothing of ours running, and each run fires once.
- After the server was down past a run's time, a one-shot fires at once when it is
  back, and a repeating schedule fires once and carries on from then.

Times are checked at the call: a time in the past, an interval under a second (the
server's minimum), a cron the server would refuse, both or neither of cron and interval
are refused with the fix. A naive `datetime` is read as local time, as NAQ does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import nats.errors
from nats.js.errors import APIError, NotFoundError

from naq_resilience.codec import InvalidMessage, decode_envelope, encode
from naq_resilience.fitting import headers_size
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.client import (
    Client,
    Job,
    SyncJob,
    _default_client,
    _default_sync_client,
    _job_id,
    _options,
)
from naq_resilience.jetstream.cron import CronError, parse_cron, zone
from naq_resilience.jetstream.publisher import StreamFullError
from naq_resilience.jetstream.registry import function_name
from naq_resilience.jetstream.streams import ensure_layout, read_messages
from naq_resilience.jetstream.tracing import trace_headers
from naq_resilience.models import JobEnvelope, JobStatus, ScheduleRecord

__all__ = [
    "JobNotFoundError",
    "Queue",
    "ScheduleInfo",
    "ScheduledJob",
    "cancel_scheduled_job",
    "cancel_scheduled_job_sync",
    "enqueue_at",
    "enqueue_at_sync",
    "enqueue_in",
    "enqueue_in_sync",
    "list_schedules",
    "list_schedules_sync",
    "modify_scheduled_job",
    "modify_scheduled_job_sync",
    "pause_scheduled_job",
    "pause_scheduled_job_sync",
    "purge_queue",
    "purge_queue_sync",
    "resume_scheduled_job",
    "resume_scheduled_job_sync",
    "purge_messages",
    "run_envelope",
    "schedule_envelope",
    "schedule",
    "schedule_sync",
]

log = logging.getLogger("naq_resilience.schedules")

SCHEDULE_HEADER: Final = "Naq-Schedule"
"""The `ScheduleRecord` of a schedule message, as JSON; copied into every job it fires."""
MAX_REPEAT: Final = 10_000
"""A counted schedule stores one message per run up front; past this, repeat=None."""
MIN_INTERVAL: Final = 1.0
"""nats-server refuses `@every` under a second."""
MODIFIABLE: Final = frozenset({"cron", "interval", "repeat", "scheduled_timestamp_utc"})
ROOM: Final = 0.9
"""A new schedule is refused once `NAQ_SCHEDULES` is this full: the server allows only
discard-old there, which would drop the oldest schedules to make room."""

_OPTIONS = (
    "max_retries", "retry_delay", "retry_strategy", "retry_on", "ignore_on",
    "dead_letter_queue", "dead_letter_ttl", "timeout", "result_ttl",
)  # fmt: skip
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_REPEATING_ID_MAX = 112  # room for "-t<unix seconds>" in a 128-character job id
_decode_record = msgspec.json.Decoder(ScheduleRecord).decode
_encode_record = msgspec.json.Encoder().encode


class JobNotFoundError(LookupError):
    """No scheduled job has this id (NAQ's name for the error)."""


class ScheduleInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One schedule as `list_schedules` and `naq schedule list --json` report it."""

    id: str
    queue: str
    function: str
    kind: str
    """"once", "interval" or "cron"."""
    cron: str | None = None
    interval: float | None = None
    time_zone: str | None = None
    next_run: float | None = None
    """Unix time of the next run when it is known here: a counted schedule's, or a
    cron's; an interval that repeats until cancelled keeps its phase in the server."""
    runs_left: int | None = None
    """Runs still to come; None: until cancelled."""
    paused: bool = False


class ScheduledJob(Job):
    """What `enqueue_at` and `schedule` return: `job_id` is the schedule's id, which the
    cancel, pause, resume and modify calls take. For a single run it is also the job's
    own id; run n of a counted schedule is `<id>-r<n>`."""

    __slots__ = ("next_run",)

    def __init__(
        self, client: Client, envelope: JobEnvelope, sequence: int, next_run: float | None
    ) -> None:
        super().__init__(client, envelope, sequence)
        self.next_run = next_run

    def __repr__(self) -> str:
        return f"<ScheduledJob {self.job_id} {self.function} queue={self.queue}>"

    async def status(self) -> JobStatus:
        """`queued` while the schedule has runs to come; then what became of the job."""
        if await _exists(self._client, self.job_id):
            return JobStatus.QUEUED
        return await self._client.job_status(self.job_id, self.queue)


def run_envelope(envelope: JobEnvelope, headers: Mapping[str, str] | None) -> JobEnvelope:
    """The envelope of one run of a repeating schedule, with the run's own job id.

    The server fires the same body every time, so every run of a schedule that repeats
    until cancelled arrives with the schedule's id. Each fired copy carries the time of
    the run after it (`Nats-Schedule-Next`), which is the same if one run were stored
    twice and differs from run to run: the run's id is `<schedule id>-t<that time as
    unix seconds>`. Any other message, one-shots and counted runs included (their
    envelopes carry their own ids), is returned as it is. The worker calls this right
    after decoding a job, so ledgers, results and dead letters are per run.
    """
    if not headers:
        return envelope
    following = headers.get("Nats-Schedule-Next")
    if following is None or following == "purge" or "Nats-Scheduler" not in headers:
        return envelope
    try:
        at = int(datetime.fromisoformat(following).timestamp())
    except ValueError:
        return envelope
    run_id = f"{envelope.id}-t{at}"
    if len(run_id) > 128:
        return envelope
    return msgspec.structs.replace(envelope, id=run_id)


# --------------------------------------------------------------------------- checks at the call


def _timestamp(when: Any, argument: str) -> float:
    if isinstance(when, datetime):
        # NAQ reads a naive datetime as local time (`astimezone` does), and so do we.
        return when.astimezone(UTC).timestamp()
    if isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when):
        return float(when)
    raise TypeError(
        f"{argument} must be a datetime (an aware one, or naive for local time) or unix "
        f"seconds, got {when!r}"
    )


def _future(at: float, argument: str) -> float:
    now = time.time()
    if at <= now:
        when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
        raise ValueError(
            f"{argument} is {when}, {now - at:.1f}s in the past; give a time after now "
            "(a naive datetime is local time), or use enqueue() to run the job now"
        )
    return at


def _interval(value: Any) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"interval must be a timedelta or seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"interval must be > 0, got {value!r}; e.g. interval=timedelta(minutes=5)")
    if seconds < MIN_INTERVAL:
        raise ValueError(
            f"interval must be at least 1 second (nats-server's scheduler refuses shorter "
            f"ones), got {seconds:g}s; run the job in a loop of its own for faster cycles"
        )
    return float(seconds)


def _repeat(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPEAT:
        raise ValueError(
            f"repeat must be a number of runs from 1 to {MAX_REPEAT:,}, or None to run until "
            f"cancelled, got {value!r}"
        )
    return value


def _cron(value: Any, time_zone: str | None) -> str:
    try:
        parse_cron(value)
        zone(time_zone)
    except CronError as exc:
        raise ValueError(str(exc)) from None
    text = str(value).strip()
    return text.lower() if text.startswith("@") else text


def _schedule_id(value: str | None, idempotency_key: str | None, repeating: bool) -> str:
    sid = _job_id(value, idempotency_key)
    if repeating and len(sid) > _REPEATING_ID_MAX:
        raise ValueError(
            f"job_id of a schedule that repeats until cancelled may have at most "
            f"{_REPEATING_ID_MAX} characters (each run's id adds '-t<unix time>'), got "
            f"{len(sid)}"
        )
    return sid


def _checked_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not _ID.match(job_id):
        raise ValueError(
            f"job_id must be a schedule's id (1-128 letters, digits, '-' or '_', as "
            f"enqueue_at and schedule return it in job.job_id), got {job_id!r}"
        )
    return job_id


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-job options out of `kwargs`; the rest go to the job function, as in `enqueue`."""
    options = {name: kwargs.pop(name) for name in _OPTIONS if name in kwargs}
    return options, kwargs


# --------------------------------------------------------------------------- messages


def _at_text(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _every(seconds: float) -> str:
    """A Go duration for `@every`."""
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def _kind(record: ScheduleRecord) -> str:
    return "cron" if record.cron else "interval" if record.interval else "once"


def _run_times(record: ScheduleRecord, count: int, now: float) -> list[float]:
    """When runs `record.run` .. `record.last_run` of a counted schedule fire."""
    if record.interval is not None:
        first = record.at if record.at is not None else now + record.interval
        return [first + i * record.interval for i in range(count)]
    if record.cron is not None:
        cron, time_zone = parse_cron(record.cron), zone(record.time_zone)
        times = []
        if record.at is not None:
            times.append(record.at)
        after = datetime.fromtimestamp(record.at if record.at is not None else now, UTC)
        times += [t.timestamp() for t in itertools.islice(cron.times(after, time_zone), count)]
        return times[:count]
    assert record.at is not None, "a single run has its time"
    return [record.at]


Message = tuple[str, bytes, dict[str, str]]


def _messages(
    record: ScheduleRecord, envelope: JobEnvelope, payload: bytes, msg_id: str | None
) -> tuple[list[Message], float | None]:
    """The messages that are the schedule, and when it runs next if that is known."""
    target = layout.run_subject(record.queue)
    ttl = f"{layout.RUN_COPY_TTL}s"

    def headers(rec: ScheduleRecord, run: int) -> dict[str, str]:
        out = {SCHEDULE_HEADER: _encode_record(rec).decode()}
        if msg_id is not None:
            out["Nats-Msg-Id"] = f"{msg_id}:{run}"
        return out

    if record.paused:
        head = {**headers(record, 0), "Nats-Rollup": "sub"}
        return [(layout.schedule_subject(record.queue, record.id, 0), payload, head)], None
    if record.last_run is None:
        head = headers(record, 0)
        head.update({
            "Nats-Schedule": record.cron or f"@every {_every(record.interval or 0)}",
            "Nats-Schedule-Target": target,
            "Nats-Schedule-TTL": ttl,
        })  # fmt: skip
        if record.time_zone:
            head["Nats-Schedule-Time-Zone"] = record.time_zone
        following = None
        if record.cron:
            cron = parse_cron(record.cron)
            following = cron.next_after(datetime.now(UTC), zone(record.time_zone))
        return [
            (layout.schedule_subject(record.queue, record.id, 0), payload, head)
        ], following.timestamp() if following else None
    runs = range(record.run, record.last_run + 1)
    times = _run_times(record, len(runs), time.time())
    once = _kind(record) == "once"
    # A one-shot's run joins the trace that scheduled it (the server copies the header
    # into the job it fires). A repeating schedule's runs start traces of their own: one
    # that fires for months would otherwise make every run a child of one old request.
    trace = trace_headers() if once else None
    messages: list[Message] = []
    for run, at in zip(runs, times, strict=False):
        rec = msgspec.structs.replace(record, run=run, at=at)
        run_job = msgspec.structs.replace(envelope, id=f"{record.id}-r{run}")
        body = payload if once else encode(run_job)
        head = headers(rec, run)
        head.update({
            "Nats-Schedule": f"@at {_at_text(at)}",
            "Nats-Schedule-Target": target,
            "Nats-Schedule-TTL": ttl,
        })  # fmt: skip
        if trace is not None:
            head.update(trace)
        messages.append((layout.schedule_subject(record.queue, record.id, run), body, head))
    return messages, times[0] if times else None


# --------------------------------------------------------------------------- talking to the stream


async def _checked_stream(client: Client) -> None:
    """The stream fires schedules (a server before 2.12 keeps them as plain messages, and
    never fires them), and has room for one more."""
    js, _ = await client._ready()
    try:
        info = await js.stream_info(layout.SCHEDULE_STREAM)
    except NotFoundError:  # deleted under a live client (a server given a fresh store)
        log.warning("the stream %s is gone; creating the streams again", layout.SCHEDULE_STREAM)
        client._buckets = await ensure_layout(js, client._storage)
        info = await js.stream_info(layout.SCHEDULE_STREAM)
    if not info.config.allow_msg_schedules:
        version = client._nc.connected_server_version if client._nc else "?"
        raise RuntimeError(
            f"the stream {layout.SCHEDULE_STREAM} does not fire schedules (nats-server "
            f"{version}); scheduled jobs need nats-server 2.12 or later (2.14 for cron time "
            f"zones). Upgrade the server, then delete {layout.SCHEDULE_STREAM} for the "
            "library to create it again"
        )
    limit = info.config.max_bytes or -1
    if limit > 0 and info.state.bytes >= limit * ROOM:
        raise StreamFullError(
            code=400,
            err_code=10077,
            stream=layout.SCHEDULE_STREAM,
            description=(
                f"{layout.SCHEDULE_STREAM} holds {info.state.bytes:,} of its {limit:,} bytes, so "
                "no new schedule is stored (only discard-old is allowed there, which would "
                "drop the oldest schedules). Cancel schedules you no longer need, or raise "
                "the limit (NAQ_SCHEDULES_MAX_BYTES, or `nats stream edit "
                f"{layout.SCHEDULE_STREAM}`)"
            ),
        )


async def _store(client: Client, messages: list[Message]) -> list[int]:
    await client._ready()
    publisher = client._publisher
    assert publisher is not None
    for subject, payload, head in messages:
        size = len(payload) + headers_size(head)
        if size > publisher.max_payload:
            raise ValueError(
                f"a scheduled job on {subject} is {size:,} bytes with its headers, over the "
                f"NATS server's max_payload of {publisher.max_payload:,}; nothing was "
                "scheduled. Pass a reference to big data instead of the data itself"
            )
    try:
        return list(
            await asyncio.gather(*(publisher.store(s, p, h, resend=True) for s, p, h in messages))
        )
    except APIError as exc:
        if isinstance(exc, StreamFullError) or exc.err_code not in range(10186, 10230):
            raise
        raise ValueError(
            f"nats-server refused the schedule: {exc.description} (err_code {exc.err_code}); "
            "scheduled jobs need nats-server 2.12 or later, and 2.14 for a cron time zone"
        ) from None


async def purge_messages(
    client: Client, stream: str, subject: str, before: int | None = None
) -> int:
    """Messages on `subject` (older than sequence `before`, if given) removed; how many."""
    await client._ready()
    assert client._nc is not None
    request: dict[str, Any] = {"filter": subject}
    if before is not None:
        request["seq"] = before
    try:
        reply = await client._nc.request(
            f"$JS.API.STREAM.PURGE.{stream}", json.dumps(request).encode(), timeout=10.0
        )
    except nats.errors.NoRespondersError:
        raise NotFoundError(description=f"no JetStream answered for {stream}") from None
    answer = json.loads(reply.data)
    if "error" in answer:
        error = answer["error"]
        if error.get("err_code") == 10059:  # no such stream: nothing in it to remove
            return 0
        raise APIError(
            code=error.get("code"), err_code=error.get("err_code"),
            description=error.get("description"), stream=stream,
        )  # fmt: skip
    return int(answer.get("purged", 0))


class _Stored(msgspec.Struct):
    record: ScheduleRecord
    envelope: JobEnvelope
    sequence: int


async def _read(client: Client, subject: str) -> list[_Stored]:
    """Every schedule message on `subject` (a filter), oldest first."""
    js, _ = await client._ready()
    found: list[_Stored] = []
    for msg in await read_messages(js, layout.SCHEDULE_STREAM, subject):
        seq = msg.metadata.sequence.stream
        try:
            record = _decode_record((msg.headers or {}).get(SCHEDULE_HEADER, ""))
            envelope = decode_envelope(msg.data)
        except (msgspec.DecodeError, InvalidMessage) as exc:
            log.warning("skipping an unreadable schedule message on %s (sequence %d): %s",
                        msg.subject, seq, exc)  # fmt: skip
        else:
            found.append(_Stored(record, envelope, seq))
    return found


def _current(stored: list[_Stored]) -> tuple[ScheduleRecord, JobEnvelope]:
    """The schedule's definition, from its messages: the paused or repeating one, or a
    counted schedule's earliest run still to come."""
    first = min(stored, key=lambda s: (s.record.run != 0, s.record.run, -s.sequence))
    envelope = msgspec.structs.replace(first.envelope, id=first.record.id)
    return first.record, envelope


async def _find(client: Client, job_id: str) -> tuple[ScheduleRecord, JobEnvelope]:
    stored = await _read(client, layout.schedule_filter(_checked_id(job_id)))
    if not stored:
        raise JobNotFoundError(
            f"no scheduled job {job_id!r}: it was cancelled, or it ran its last run (a "
            "schedule is kept until then); `naq schedule list` shows what there is"
        )
    return _current(stored)


async def _exists(client: Client, job_id: str) -> bool:
    js, _ = await client._ready()
    subject = layout.schedule_filter(job_id)
    try:
        info = await js.stream_info(layout.SCHEDULE_STREAM, subjects_filter=subject)
    except NotFoundError:
        return False
    return bool(info.state.subjects)


async def _replace(client: Client, record: ScheduleRecord, envelope: JobEnvelope) -> float | None:
    """Store the schedule as `record` says, then remove what was stored before it."""
    messages, following = _messages(record, envelope, encode(envelope), os.urandom(6).hex())
    sequences = await _store(client, messages)
    await purge_messages(
        client, layout.SCHEDULE_STREAM,
        layout.schedule_filter(record.id, record.queue), before=min(sequences),
    )  # fmt: skip
    return following


# --------------------------------------------------------------------------- the operations


async def _create(
    client: Client,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    queue_name: str,
    job_id: str | None,
    idempotency_key: str | None,
    at: float | None = None,
    cron: str | None = None,
    interval: float | None = None,
    time_zone: str | None = None,
    repeat: int | None = None,
) -> ScheduledJob:
    options_given, kwargs = _split(kwargs)
    options = _options(queue_name, *(options_given.get(name) for name in _OPTIONS))
    name = function_name(func)
    repeating = (cron is not None or interval is not None) and repeat is None
    sid = _schedule_id(job_id, idempotency_key, repeating)
    envelope, payload = client._envelope(name, options, args, kwargs, sid)
    counted = cron is None and interval is None
    record = ScheduleRecord(
        id=sid,
        queue=options.queue,
        function=name,
        cron=cron,
        interval=interval,
        time_zone=time_zone,
        run=0 if repeating else 1,
        last_run=None if repeating else (1 if counted else repeat),
        at=at,
        created_at=envelope.enqueued_at,
    )
    return await _stored_schedule(client, record, envelope, payload)


async def _stored_schedule(
    client: Client, record: ScheduleRecord, envelope: JobEnvelope, payload: bytes
) -> ScheduledJob:
    await _checked_stream(client)
    # The schedule's id (and run) as Nats-Msg-Id: a create repeated with job_id= after a
    # PublishTimeoutError is stored once, as an enqueue is, even if it fired meanwhile.
    messages, following = _messages(record, envelope, payload, record.id)
    sequences = await _store(client, messages)
    await client._record_queued(envelope, JobStatus.SCHEDULED, scheduled_for=following)
    return ScheduledJob(client, envelope, sequences[0], following)


async def schedule_envelope(
    client: Client, envelope: JobEnvelope, payload: bytes, at: float
) -> ScheduledJob:
    """A job already encoded (a dead letter's replay) run once at `at`, as `enqueue_at`
    would: the envelope's id is the schedule's."""
    record = ScheduleRecord(
        id=envelope.id, queue=envelope.queue, function=envelope.function, run=1, last_run=1,
        at=_future(at, "at"), created_at=envelope.enqueued_at,
    )  # fmt: skip
    return await _stored_schedule(client, record, envelope, payload)


async def client_enqueue_at(
    client: Client, when: Any, func: Callable[..., Any], *args: Any, **kwargs: Any
) -> ScheduledJob:
    queue_name = kwargs.pop("queue_name", "default")
    job_id, key = kwargs.pop("job_id", None), kwargs.pop("idempotency_key", None)
    at = _future(_timestamp(when, "dt"), "dt")
    return await _create(
        client, func, args, kwargs, queue_name=queue_name, job_id=job_id, idempotency_key=key,
        at=at,
    )  # fmt: skip


async def client_enqueue_in(
    client: Client, delta: Any, func: Callable[..., Any], *args: Any, **kwargs: Any
) -> ScheduledJob:
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else delta
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"delta must be a timedelta or seconds, got {delta!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"delta must be > 0, got {delta!r}; use enqueue() to run the job now")
    return await client_enqueue_at(client, time.time() + seconds, func, *args, **kwargs)


async def client_schedule(
    client: Client, func: Callable[..., Any], *args: Any, **kwargs: Any
) -> ScheduledJob:
    queue_name = kwargs.pop("queue_name", "default")
    job_id, key = kwargs.pop("job_id", None), kwargs.pop("idempotency_key", None)
    cron, interval = kwargs.pop("cron", None), kwargs.pop("interval", None)
    repeat, time_zone = _repeat(kwargs.pop("repeat", None)), kwargs.pop("time_zone", None)
    if (cron is None) == (interval is None):
        raise ValueError(
            "schedule() takes either cron= (e.g. cron='0 */5 * * * *', seconds first) or "
            f"interval= (a timedelta or seconds), not {'both' if cron is not None else 'neither'}"
        )
    if time_zone is not None and cron is None:
        raise ValueError(
            "time_zone applies to a cron schedule; an interval is the same in every zone"
        )
    return await _create(
        client, func, args, kwargs, queue_name=queue_name, job_id=job_id, idempotency_key=key,
        cron=_cron(cron, time_zone) if cron is not None else None,
        interval=_interval(interval) if interval is not None else None,
        time_zone=time_zone, repeat=repeat,
    )  # fmt: skip


async def client_cancel(client: Client, job_id: str) -> bool:
    """Remove the schedule, every run still to come with it; False if there was none."""
    subject = layout.schedule_filter(_checked_id(job_id))
    return await purge_messages(client, layout.SCHEDULE_STREAM, subject) > 0


async def client_pause(client: Client, job_id: str) -> bool:
    """The schedule stops firing and keeps its definition and runs left, as one message
    without `Nats-Schedule` on its subject 0."""
    record, envelope = await _find(client, job_id)
    if not record.paused:
        keep_at = record.at if _kind(record) == "once" else None
        await _replace(client, msgspec.structs.replace(record, paused=True, at=keep_at), envelope)
    return True


async def client_resume(client: Client, job_id: str) -> bool:
    """A paused schedule fires again: an interval from now, a cron at its next time, a
    single run at its time (at once if that passed while paused)."""
    record, envelope = await _find(client, job_id)
    if record.paused:
        await _replace(client, msgspec.structs.replace(record, paused=False), envelope)
    return True


async def client_modify(client: Client, job_id: str, **updates: Any) -> bool:
    """NAQ's modify: `cron`, `interval` (timedelta or seconds), `repeat` (runs from now
    on, None: until cancelled), `scheduled_timestamp_utc` (the next run's time, unix
    seconds or a datetime). The schedule is stored anew and keeps its id and pause."""
    unknown = set(updates) - MODIFIABLE
    if unknown:
        raise ValueError(
            f"modify_scheduled_job cannot change {', '.join(sorted(unknown))}; it takes "
            f"{', '.join(sorted(MODIFIABLE))} (cancel and schedule again to change the job)"
        )
    record, envelope = await _find(client, job_id)
    changes: dict[str, Any] = {}
    if "cron" in updates and "interval" in updates:
        raise ValueError("modify takes cron= or interval=, not both")
    if "cron" in updates:
        changes.update(cron=_cron(updates["cron"], record.time_zone), interval=None, at=None)
    if "interval" in updates:
        changes.update(interval=_interval(updates["interval"]), cron=None, time_zone=None, at=None)
    if "scheduled_timestamp_utc" in updates:
        at = _future(_timestamp(updates["scheduled_timestamp_utc"], "scheduled_timestamp_utc"),
                     "scheduled_timestamp_utc")  # fmt: skip
        changes["at"] = at
    new = msgspec.structs.replace(record, **changes)
    recurring = _kind(new) != "once"
    if "repeat" in updates:
        repeat = _repeat(updates["repeat"])
        if repeat is not None and not recurring:
            raise ValueError("repeat needs cron= or interval=: a single run runs once")
        start = new.run or 1
        new = msgspec.structs.replace(
            new, run=0 if repeat is None else start,
            last_run=None if repeat is None else start + repeat - 1,
        )  # fmt: skip
    elif recurring and _kind(record) == "once":
        new = msgspec.structs.replace(new, run=0, last_run=None)  # NAQ: repeat stays None
    if new.last_run is None and new.at is not None and recurring:
        raise ValueError(
            "scheduled_timestamp_utc cannot set the next run of a schedule that repeats until "
            "cancelled: the server keeps its phase (an interval from when it is stored, a "
            "cron at its own times). Give repeat=N with it, or change interval= or cron="
        )
    if new.last_run is None and len(new.id) > _REPEATING_ID_MAX:
        raise ValueError(f"the schedule's id is too long to repeat until cancelled: {new.id!r}")
    await _replace(client, new, envelope)
    return True


async def client_purge_queue(client: Client, queue_name: str = "default") -> int:
    """Remove every job waiting in `queue_name` (not its schedules); how many were removed,
    as NAQ's `purge` says it returns."""
    layout.check_queue_name(queue_name)
    return await purge_messages(client, layout.JOB_STREAM, layout.job_subject(queue_name))


async def client_list(client: Client, queue_name: str | None = None) -> list[ScheduleInfo]:
    """Every schedule (of `queue_name`, if given), by queue and id."""
    if queue_name is not None:
        layout.check_queue_name(queue_name)
    stored = await _read(client, f"naq.schedules.{queue_name or '*'}.*.*")
    by_id: dict[tuple[str, str], list[_Stored]] = {}
    for item in stored:
        by_id.setdefault((item.record.queue, item.record.id), []).append(item)
    now = datetime.now(UTC)
    infos = []
    for (queue, sid), items in sorted(by_id.items()):
        record, _ = _current(items)
        next_run = record.at if record.last_run is not None and not record.paused else None
        if record.cron and record.last_run is None and not record.paused:
            with_zone = zone(record.time_zone)
            next_run = parse_cron(record.cron).next_after(now, with_zone).timestamp()
        left = None if record.last_run is None else record.last_run - record.run + 1
        info = ScheduleInfo(
            id=sid, queue=queue, function=record.function, kind=_kind(record),
            cron=record.cron, interval=record.interval, time_zone=record.time_zone,
            next_run=next_run, runs_left=left, paused=record.paused,
        )  # fmt: skip
        infos.append(info)
    return infos


# --------------------------------------------------------------------------- module-level API


async def enqueue_at(
    dt: datetime, func: Callable[..., Any], *args: Any, nats_url: str | None = None,
    **kwargs: Any,
) -> ScheduledJob:  # fmt: skip
    """Run `func(*args, **kwargs)` once at `dt` (an aware datetime, or a naive one in local
    time). Takes `queue_name=` and every option `enqueue` takes."""
    return await client_enqueue_at(_default_client(nats_url), dt, func, *args, **kwargs)


async def enqueue_in(
    delta: timedelta | float, func: Callable[..., Any], *args: Any,
    nats_url: str | None = None, **kwargs: Any,
) -> ScheduledJob:  # fmt: skip
    """Run `func(*args, **kwargs)` once, `delta` (a timedelta or seconds) from now."""
    return await client_enqueue_in(_default_client(nats_url), delta, func, *args, **kwargs)


async def schedule(
    func: Callable[..., Any], *args: Any, nats_url: str | None = None, **kwargs: Any
) -> ScheduledJob:
    """Run `func` on `cron=` (6 fields, seconds first; `time_zone=` an IANA zone) or every
    `interval=` (timedelta or seconds, at least 1 s), `repeat=` times (None: until
    cancelled). Takes `queue_name=` and every option `enqueue` takes."""
    return await client_schedule(_default_client(nats_url), func, *args, **kwargs)


async def cancel_scheduled_job(job_id: str, nats_url: str | None = None) -> bool:
    return await client_cancel(_default_client(nats_url), job_id)


async def pause_scheduled_job(job_id: str, nats_url: str | None = None) -> bool:
    return await client_pause(_default_client(nats_url), job_id)


async def resume_scheduled_job(job_id: str, nats_url: str | None = None) -> bool:
    return await client_resume(_default_client(nats_url), job_id)


async def modify_scheduled_job(job_id: str, nats_url: str | None = None, **updates: Any) -> bool:
    return await client_modify(_default_client(nats_url), job_id, **updates)


async def purge_queue(queue_name: str = "default", nats_url: str | None = None) -> int:
    return await client_purge_queue(_default_client(nats_url), queue_name)


async def list_schedules(
    queue_name: str | None = None, nats_url: str | None = None
) -> list[ScheduleInfo]:
    return await client_list(_default_client(nats_url), queue_name)


def _run_sync(nats_url: str | None, call: Callable[[Client], Any]) -> Any:
    sync = _default_sync_client(nats_url)
    return sync._runner.run(call(sync._client))


def _sync_job(nats_url: str | None, job: Job) -> SyncJob:
    return SyncJob(job, _default_sync_client(nats_url)._runner)


def enqueue_at_sync(
    dt: datetime, func: Callable[..., Any], *args: Any, nats_url: str | None = None,
    **kwargs: Any,
) -> SyncJob:  # fmt: skip
    job = _run_sync(nats_url, lambda c: client_enqueue_at(c, dt, func, *args, **kwargs))
    return _sync_job(nats_url, job)


def enqueue_in_sync(
    delta: timedelta | float, func: Callable[..., Any], *args: Any,
    nats_url: str | None = None, **kwargs: Any,
) -> SyncJob:  # fmt: skip
    job = _run_sync(nats_url, lambda c: client_enqueue_in(c, delta, func, *args, **kwargs))
    return _sync_job(nats_url, job)


def schedule_sync(
    func: Callable[..., Any], *args: Any, nats_url: str | None = None, **kwargs: Any
) -> SyncJob:
    job = _run_sync(nats_url, lambda c: client_schedule(c, func, *args, **kwargs))
    return _sync_job(nats_url, job)


def cancel_scheduled_job_sync(job_id: str, nats_url: str | None = None) -> bool:
    return bool(_run_sync(nats_url, lambda c: client_cancel(c, job_id)))


def pause_scheduled_job_sync(job_id: str, nats_url: str | None = None) -> bool:
    return bool(_run_sync(nats_url, lambda c: client_pause(c, job_id)))


def resume_scheduled_job_sync(job_id: str, nats_url: str | None = None) -> bool:
    return bool(_run_sync(nats_url, lambda c: client_resume(c, job_id)))


def modify_scheduled_job_sync(job_id: str, nats_url: str | None = None, **updates: Any) -> bool:
    return bool(_run_sync(nats_url, lambda c: client_modify(c, job_id, **updates)))


def purge_queue_sync(queue_name: str = "default", nats_url: str | None = None) -> int:
    return int(_run_sync(nats_url, lambda c: client_purge_queue(c, queue_name)))


def list_schedules_sync(
    queue_name: str | None = None, nats_url: str | None = None
) -> list[ScheduleInfo]:
    result: list[ScheduleInfo] = _run_sync(nats_url, lambda c: client_list(c, queue_name))
    return result


class Queue:
    """NAQ's `Queue(name)`: the async calls of this module bound to one queue.

    Connections are shared per event loop and URL (as the module-level functions share
    them), so a `Queue` is cheap to make and `close()` leaves the connection to others.
    """

    def __init__(
        self,
        name: str = "default",
        nats_url: str | None = None,
        default_timeout: float | None = None,
    ) -> None:
        self.name = layout.check_queue_name(name, "name")
        self._nats_url = nats_url
        self._default_timeout = default_timeout

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to close: the connection is shared (see the class docstring)."""

    def _client(self) -> Client:
        return _default_client(self._nats_url)

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._default_timeout is not None:
            kwargs.setdefault("timeout", self._default_timeout)
        return {**kwargs, "queue_name": self.name}

    async def enqueue(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        return await self._client().enqueue(func, *args, **self._options(kwargs))

    async def enqueue_at(
        self, dt: datetime, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> ScheduledJob:
        return await client_enqueue_at(self._client(), dt, func, *args, **self._options(kwargs))

    async def enqueue_in(
        self, delta: timedelta | float, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> ScheduledJob:
        return await client_enqueue_in(self._client(), delta, func, *args, **self._options(kwargs))

    async def schedule(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> ScheduledJob:
        return await client_schedule(self._client(), func, *args, **self._options(kwargs))

    async def purge(self) -> int:
        return await client_purge_queue(self._client(), self.name)

    async def cancel_scheduled_job(self, job_id: str) -> bool:
        return await client_cancel(self._client(), job_id)

    async def pause_scheduled_job(self, job_id: str) -> bool:
        return await client_pause(self._client(), job_id)

    async def resume_scheduled_job(self, job_id: str) -> bool:
        return await client_resume(self._client(), job_id)

    async def modify_scheduled_job(self, job_id: str, **updates: Any) -> bool:
        return await client_modify(self._client(), job_id, **updates)
