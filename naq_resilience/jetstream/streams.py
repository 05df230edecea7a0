"""Create the streams and buckets of `layout` when they are missing, with their limits.

Both the client and the worker call `ensure_layout` once per connection, so whichever
starts first on a new server sets it up. An existing stream is left as it is, so an
operator may tune limits or replicas without the library undoing it; a replica count
that differs from the settings is reported, since it decides whether the queue survives
the loss of a node.

Every stream and bucket has a limit (`StorageSettings`, from `NAQ_*` variables). Where
a full store must not lose anything, it refuses new writes (discard "new"): a full job
stream refuses the enqueue with `StreamFullError`, a full dead-letter stream refuses
the dead letter and the worker keeps the job in its queue. Only failure records, which
are history and also travel inside each dead letter, and the outcome counters (whose
streams the server allows no other way) drop their oldest first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from naq_resilience.jetstream import layout
from naq_resilience.policies.durations import SecondsField

__all__ = [
    "Buckets",
    "StorageSettings",
    "count_tier_max_age",
    "ensure_layout",
    "ensure_incident_bucket",
    "ensure_monitor_bucket",
    "parse_size",
    "read_messages",
]

log = logging.getLogger("naq_resilience.streams")

_KiB, _MiB, _GiB = 1024, 1024**2, 1024**3
_DAY = 24 * 3600.0
_SIZE = re.compile(r"^\s*(-?\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": _KiB, "m": _MiB, "g": _GiB, "t": 1024**4}


async def read_messages(js: JetStreamContext, stream: str, subject: str) -> list[Msg]:
    """Every message of `stream` on `subject` (a filter), oldest first: counted first,
    so an empty subject costs one request and no wait for messages that never come."""
    try:
        info = await js.stream_info(stream, subjects_filter=subject)
    except NotFoundError:
        return []
    count = sum((info.state.subjects or {}).values())
    if not count:
        return []
    sub = await js.subscribe(subject, ordered_consumer=True, stream=stream)
    found: list[Msg] = []
    try:
        for _ in range(count):
            try:
                msg = await sub.next_msg(timeout=5.0)
            except nats.errors.TimeoutError:
                break
            found.append(msg)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


def parse_size(text: str) -> int:
    """Bytes from `"512MiB"`, `"1G"`, `"65536"` (binary units); -1 means no limit."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r}; write e.g. 1073741824, 1GiB, 512MiB or -1")
    number, unit = int(match.group(1)), (match.group(2) or "").lower()[:1]
    return number if number < 0 else number * _UNITS[unit]


@dataclass(frozen=True)
class StorageSettings:
    """Replicas and limits of every stream and bucket the library creates.

    Applied when a stream or bucket is created; an existing one keeps its own
    configuration. Sizes are bytes (-1: no limit of our own, the server's account
    limits still apply), ages seconds (or a `timedelta`). Each field has an environment
    variable: the field's name upper-cased after `NAQ_` (`NAQ_REPLICAS`,
    `NAQ_JOBS_MAX_BYTES`, `NAQ_DEAD_MAX_AGE`, ...); sizes there may say `512MiB` or
    `1GiB`.
    """

    replicas: int = 1
    """Copies of every stream and bucket; 3 in a 3-node cluster survives losing a node."""
    duplicate_window: SecondsField = SecondsField(120.0, positive=True)
    """Seconds in which a second message with the same `Nats-Msg-Id` (a job id, an
    idempotency key, a dead letter's origin) is dropped as a duplicate."""
    jobs_max_bytes: int = _GiB
    """Queued jobs, all queues together; when reached, enqueue raises `StreamFullError`."""
    failures_max_age: SecondsField = SecondsField(7 * _DAY, positive=True)
    """How long failure records are kept."""
    failures_max_bytes: int = 256 * _MiB
    """Failure records; when reached the oldest go first (dead letters keep their own)."""
    dead_max_age: SecondsField = SecondsField(30 * _DAY, positive=True)
    """How long a dead letter is kept at most (`dead_letter_ttl` may say less)."""
    dead_max_bytes: int = _GiB
    """Dead letters; when reached, jobs that die stay in their queue until there is room."""
    results_max_bytes: int = 256 * _MiB
    """Results of jobs enqueued with `result_ttl`."""
    sagas_max_bytes: int = 64 * _MiB
    """Compensation logs of running `@saga` jobs."""
    attempts_max_bytes: int = 64 * _MiB
    """Attempt ledgers of redelivered jobs (`naq-attempts`)."""
    breakers_max_bytes: int = 16 * _MiB
    """Shared circuit-breaker states."""
    monitor_max_bytes: int = 16 * _MiB
    """The alert monitors' lease and rule cooldowns (`naq-monitor`)."""
    incidents_max_bytes: int = 64 * _MiB
    """Incidents (`naq-incidents`); when reached, new incidents are refused (logged)."""
    incidents_max_age: SecondsField = SecondsField(90 * _DAY, positive=True)
    """How long a resolved incident is kept (open ones are kept until resolved)."""
    history_max_age: SecondsField = SecondsField(7 * _DAY, positive=True)
    """How long a job's record (`get_job`, `Job.status()`, `get_jobs_in_timeframe`) is
    kept after its last change."""
    history_max_jobs: int = 1_000_000
    """Jobs whose records are kept; the oldest go first. The server keeps an index
    entry per job in memory (roughly 100-150 bytes), so this bounds that memory."""
    history_max_bytes: int = 512 * _MiB
    """Job records; the oldest go first."""
    schedules_max_bytes: int = 256 * _MiB
    """Scheduled jobs and their fired copies (`NAQ_SCHEDULES`). The server refuses
    discard-new for a stream of schedules, so a new schedule is refused by the client
    once the stream is 90% full instead (`StreamFullError`)."""
    logs_max_age: SecondsField = SecondsField(_DAY, positive=True)
    """How long workers' log records (`NAQ_LOGS`, `naq worker-logs`) are kept."""
    logs_max_bytes: int = 256 * _MiB
    """Workers' log records; when reached the oldest go first."""
    counts_max_age: SecondsField = SecondsField(8 * _DAY, positive=True)
    """How long the outcome counters of the hour and six-hour buckets, and the error
    patterns' records, are kept: the longest window `error_rate`, `error_patterns` and
    `error_budget` can read (a pattern's trend needs twice its window). The minute and
    ten-minute buckets are kept 12 hours and 3 days (or this, if shorter): only short
    windows and the edges of longer ones read them."""
    counts_max_bytes: int = 256 * _MiB
    """Each counter stream (`NAQ_COUNTS_1M`, `_10M`, `_1H`, `_6H`) and `NAQ_PATTERNS`;
    when reached the oldest buckets go first (a counter stream cannot discard new)."""

    def __post_init__(self) -> None:
        if isinstance(self.replicas, bool) or not 1 <= self.replicas <= 5:
            raise ValueError(
                f"replicas must be 1 to 5 (JetStream's range; 3 in a 3-node cluster), "
                f"got {self.replicas!r}"
            )
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name.endswith(("_bytes", "_jobs")) and (value == 0 or value < -1):
                raise ValueError(f"{spec.name} must be a positive number or -1, got {value!r}")

    @classmethod
    def from_env(cls, **overrides: Any) -> StorageSettings:
        """Settings from the `NAQ_*` variables; keyword arguments win over them."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            text = os.environ.get(f"NAQ_{spec.name.upper()}", "").strip()
            if not text:
                continue
            try:
                if spec.name.endswith("_bytes"):
                    values[spec.name] = parse_size(text)
                elif spec.name in ("replicas", "history_max_jobs"):
                    values[spec.name] = int(text)
                else:
                    values[spec.name] = float(text)
            except ValueError:
                raise ValueError(
                    f"NAQ_{spec.name.upper()}={text!r} is not valid: {spec.name} takes "
                    f"{'a size like 512MiB' if spec.name.endswith('_bytes') else 'a number'}"
                ) from None
        values.update(overrides)
        return cls(**values)

    def with_replicas(self, replicas: int | None) -> StorageSettings:
        return self if replicas is None else replace(self, replicas=replicas)


def _schedule_stream(settings: StorageSettings) -> StreamConfig:
    """Schedules and their fired copies, which expire once `NAQ_JOBS` has had a day to
    take them. Limits retention and discard old are what the server allows here; a
    schedule message replaces its subject's last (the server adds `Nats-Rollup: sub`)."""
    return StreamConfig(
        name=layout.SCHEDULE_STREAM,
        subjects=[layout.SCHEDULE_SUBJECTS, layout.RUN_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        allow_msg_schedules=True,
        allow_msg_ttl=True,
        allow_rollup_hdrs=True,
        duplicate_window=settings.duplicate_window,
        max_bytes=settings.schedules_max_bytes,
        discard=DiscardPolicy.OLD,
    )


_FINE_TIER_KEEP = {"1m": 12 * 3600.0, "10m": 3 * _DAY}
"""How long the fine buckets are kept: a window reads minute buckets only when it is
shorter than 5 hours (and its trend the 5 hours before), ten-minute buckets only when
shorter than 30 hours (docs/design.md, "Error analytics")."""


def count_tier_max_age(settings: StorageSettings, tier: str) -> float:
    """The `max_age` of the counter stream of `tier` (a name of `layout.COUNT_TIERS`)."""
    keep = _FINE_TIER_KEEP.get(tier)
    return settings.counts_max_age if keep is None else min(keep, settings.counts_max_age)


def _count_streams(settings: StorageSettings) -> list[StreamConfig]:
    """One counter stream per tier (ADR-49: only increments, `Nats-Incr: +N`, are
    accepted). One message per subject, the running total: a bucket costs the server
    one message however often it is incremented. Counters refuse discard new and
    per-message TTLs; `max_age` ages whole buckets out, oldest first."""
    return [
        StreamConfig(
            name=layout.count_stream(tier),
            subjects=[layout.COUNT_SUBJECTS.format(tier=tier)],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            allow_msg_counter=True,
            allow_direct=True,
            max_msgs_per_subject=1,
            max_age=count_tier_max_age(settings, tier),
            max_bytes=settings.counts_max_bytes,
            duplicate_window=settings.duplicate_window,
            discard=DiscardPolicy.OLD,
        )
        for tier, _ in layout.COUNT_TIERS
    ]


def _run_source() -> StreamSource:
    """`NAQ_JOBS` takes every fired copy in as a job: `naq.runs.<q>` -> `naq.jobs.<q>`."""
    return StreamSource(
        name=layout.SCHEDULE_STREAM,
        subject_transforms=[
            SubjectTransform(src=layout.RUN_SUBJECTS, dest="naq.jobs.{{wildcard(1)}}")
        ],
    )


def _streams(settings: StorageSettings) -> list[StreamConfig]:
    return [
        _schedule_stream(settings),
        StreamConfig(
            name=layout.JOB_STREAM,
            subjects=[layout.JOB_SUBJECTS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=settings.duplicate_window,
            max_bytes=settings.jobs_max_bytes,
            discard=DiscardPolicy.NEW,
            sources=[_run_source()],
        ),
        StreamConfig(
            name=layout.FAILURE_STREAM,
            subjects=[layout.FAILURE_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.failures_max_age,
            max_bytes=settings.failures_max_bytes,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=layout.DEAD_STREAM,
            subjects=[layout.DEAD_SUBJECTS, layout.ORIGINAL_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            allow_msg_ttl=True,
            max_age=settings.dead_max_age,
            max_bytes=settings.dead_max_bytes,
            discard=DiscardPolicy.NEW,
            # One subject per job: a letter written twice (the job's ack lost after the
            # letter was stored) replaces itself, even in a full stream.
            max_msgs_per_subject=1,
        ),
        StreamConfig(
            name=layout.HISTORY_STREAM,
            subjects=[layout.HISTORY_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.history_max_age,
            max_msgs=settings.history_max_jobs,
            max_bytes=settings.history_max_bytes,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=1,  # a job's latest state replaces the one before
        ),
        StreamConfig(
            name=layout.LOG_STREAM,
            subjects=[layout.LOG_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.logs_max_age,
            max_bytes=settings.logs_max_bytes,
            discard=DiscardPolicy.OLD,
        ),
        *_count_streams(settings),
        StreamConfig(
            name=layout.PATTERN_STREAM,
            subjects=[layout.PATTERN_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            allow_direct=True,
            max_age=settings.counts_max_age,
            max_bytes=settings.counts_max_bytes,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=1,  # a pattern's first record, and its latest
        ),
    ]


class Buckets:
    """The KV buckets, opened once per connection."""

    def __init__(self, breakers: KeyValue, sagas: KeyValue, results: KeyValue, attempts: KeyValue):
        self.breakers = breakers
        self.sagas = sagas
        self.results = results
        self.attempts = attempts


async def _stream(js: JetStreamContext, config: StreamConfig) -> None:
    name = config.name or ""
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)
        return
    existing = info.config
    _report_replicas(f"stream {name}", existing.num_replicas or 1, config.num_replicas or 1)
    # What the layout needs to mean what it says (not a tunable limit): the subjects a
    # newer version of the library writes to, one dead letter per job, the scheduled runs
    # the job stream takes in.
    missing = [s for s in config.subjects or [] if s not in (existing.subjects or [])]
    per_subject = config.max_msgs_per_subject
    have = {source.name for source in existing.sources or []}
    sources = [source for source in config.sources or [] if source.name not in have]
    if (
        missing
        or sources
        or (per_subject is not None and existing.max_msgs_per_subject != per_subject)
    ):
        await js.update_stream(
            replace(
                existing,
                subjects=[*(existing.subjects or []), *missing],
                max_msgs_per_subject=per_subject or existing.max_msgs_per_subject,
                sources=[*(existing.sources or []), *sources] or None,
            )
        )


def _report_replicas(what: str, existing: int, wanted: int) -> None:
    if existing != wanted:
        log.warning(
            "%s has %d replica%s but the settings ask for %d; an existing stream is left as "
            "it is: change it with `nats stream edit` (KV buckets are streams named KV_<bucket>), "
            "or set NAQ_REPLICAS=%d to match",
            what, existing, "" if existing == 1 else "s", wanted, existing,
        )  # fmt: skip


async def _bucket(
    js: JetStreamContext,
    name: str,
    settings: StorageSettings,
    max_bytes: int,
    *,
    per_key_ttl: bool,
) -> KeyValue:
    try:
        kv = await js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        config = KeyValueConfig(
            bucket=name,
            storage=StorageType.FILE,
            history=1,
            replicas=settings.replicas,
            max_bytes=max_bytes,
            limit_marker_ttl=1.0 if per_key_ttl else None,
        )
        return await js.create_key_value(config)
    status = await kv.status()
    replicas = status.stream_info.config.num_replicas or 1
    _report_replicas(f"bucket {name}", replicas, settings.replicas)
    return kv


async def ensure_layout(
    js: JetStreamContext, settings: StorageSettings | None = None
) -> Buckets:
    settings = settings if settings is not None else StorageSettings.from_env()
    for config in _streams(settings):
        await _stream(js, config)
    breakers, sagas, results, attempts = await asyncio.gather(
        _bucket(js, layout.BREAKER_BUCKET, settings, settings.breakers_max_bytes,
                per_key_ttl=False),
        _bucket(js, layout.SAGA_BUCKET, settings, settings.sagas_max_bytes, per_key_ttl=True),
        _bucket(js, layout.RESULT_BUCKET, settings, settings.results_max_bytes,
                per_key_ttl=True),
        _bucket(js, layout.ATTEMPT_BUCKET, settings, settings.attempts_max_bytes,
                per_key_ttl=True),
    )  # fmt: skip
    return Buckets(breakers, sagas, results, attempts)


# The buckets of the operations floor are opened by what uses them (a monitor, the first
# critical error), not by `ensure_layout`: a worker that never meets a critical error
# and a fleet without a monitor pay nothing for them.


async def ensure_monitor_bucket(
    js: JetStreamContext, settings: StorageSettings | None = None
) -> KeyValue:
    """`naq-monitor`, created when missing; per-key TTLs carry the leader's lease."""
    settings = settings if settings is not None else StorageSettings.from_env()
    return await _bucket(
        js, layout.MONITOR_BUCKET, settings, settings.monitor_max_bytes, per_key_ttl=True
    )


async def ensure_incident_bucket(
    js: JetStreamContext, settings: StorageSettings | None = None
) -> KeyValue:
    """`naq-incidents`, created when missing; resolved incidents expire by per-key TTL."""
    settings = settings if settings is not None else StorageSettings.from_env()
    return await _bucket(
        js, layout.INCIDENT_BUCKET, settings, settings.incidents_max_bytes, per_key_ttl=True
    )
