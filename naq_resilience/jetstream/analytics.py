"""Error rates, error patterns and error budgets, read from the workers' counters.

Workers keep counts as they work (`outcomes.py`): per time bucket of four tiers (a
minute, ten minutes, an hour, six hours), per scope (every queue, a queue, a function,
an error pattern). A window is read as a cover of aligned buckets, coarse in the middle
and finer towards its edges (`plan`), which bounds what one answer reads whatever the
window: the finest tier used is the largest no longer than a thirtieth of the window,
and the window's start is rounded down to it. An hour is read at minute precision from
about 20 buckets, a day at ten-minute precision from about 15. Each tier is one
counter stream, read with one batched direct get (ADR-31 `multi_last`) of the buckets'
subjects: a few hundred small messages at most, never a record per job.

The answers are as exact as the counts: every outcome counted once, in the bucket of
the moment it happened, visible once the worker has sent it (within a second). The
window a figure covers is `since` to `until`: at least the window asked for, at most a
thirtieth longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import APIError, NotFoundError

from naq_resilience.jetstream import layout
from naq_resilience.jetstream.outcomes import OTHER_PATTERN, function_token
from naq_resilience.jetstream.registry import function_name
from naq_resilience.jetstream.streams import (
    StorageSettings,
    count_tier_max_age,
    read_messages,
)
from naq_resilience.models import PatternRecord
from naq_resilience.policies.durations import seconds

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client

__all__ = [
    "BURN_ALERTS",
    "BudgetStatus",
    "BurnRate",
    "ErrorPattern",
    "ErrorRate",
    "Reader",
    "Span",
    "plan",
]

TIER_SECONDS: Final = dict(layout.COUNT_TIERS)
_BY_SIZE: Final = sorted(layout.COUNT_TIERS, key=lambda tier: tier[1], reverse=True)
EDGE_PARTS: Final = 30
"""A window is read at the precision of the largest tier no longer than window / 30."""
BURN_ALERTS: Final = (("fast", 3600.0, 300.0, 14.4), ("slow", 21600.0, 1800.0, 6.0))
"""The SRE workbook's multi-window burn-rate alerts (chapter 5, "Alerting on SLOs"):
page when the last hour and the last 5 minutes both burn the budget 14.4 times as
fast as it allows (2% of a 30-day budget in an hour), open a ticket when the last 6
hours and the last 30 minutes both burn it 6 times as fast (5% in 6 hours). The short
window makes an alert stop soon after the errors do."""
_READ_TIMEOUT = 10.0
_MAX_SUBJECTS = 1024  # what the server answers one multi_last with, at most (413 past it)
_decode_pattern = msgspec.json.Decoder(PatternRecord).decode


# --------------------------------------------------------------------------- answers


class ErrorRate(msgspec.Struct, frozen=True, kw_only=True):
    """How many jobs ended, and how many of them failed for good, in a window."""

    total: int
    """Jobs that ended in the window: completed, or failed for good."""
    failed: int
    """Jobs that failed for good (became dead letters) in the window."""
    rate: float
    """failed / total; 0.0 when no job ended."""
    since: float
    """The window's start, unix time: the start asked for, rounded down to its precision."""
    until: float
    """The window's end: when it was read."""
    completed: int = 0
    """Jobs that completed in the window."""
    retried: int = 0
    """Failed attempts that were retried in the window (not in `total`: the job goes on)."""
    window: float = 0.0
    """The window asked for, in seconds."""
    queue: str | None = None
    """The queue it was read for; None for every queue."""
    function: str | None = None
    """The function it was read for (`module:qualname`); None for every function."""


class ErrorPattern(msgspec.Struct, frozen=True, kw_only=True):
    """One kind of failure in a window: one error type raised in one place."""

    error_type: str
    """The exception's class, `module:qualname`."""
    fingerprint: str
    """The pattern's id (`FailureRecord.fingerprint`): a hash of the type and `where`."""
    where: str
    """Where it was raised: `file.py:function` of the innermost frame."""
    count: int
    """Failed attempts of this pattern in the window (retried ones included)."""
    share: float
    """count / the failed attempts of every pattern in the window."""
    first_seen: float | None
    """When it first happened, as far as the records go back (`NAQ_COUNTS_MAX_AGE`)."""
    last_seen: float | None
    """When it last happened."""
    trend: float | None
    """Its rate in the window over its rate in the window as long just before (2.0:
    twice as often); None when it did not happen before or that window is not kept."""
    sample_job_ids: tuple[str, ...] = ()
    """The latest jobs that failed so (at most 5, newest first)."""
    previous_count: int | None = None
    """Its count in the window before; None when that window is not kept."""
    queues: tuple[str, ...] = ()
    """The queues it happened in."""
    function: str = ""
    """The job function of the latest such failure."""
    message: str = ""
    """The head of the latest such failure's message."""


class BurnRate(msgspec.Struct, frozen=True, kw_only=True):
    """One multi-window burn-rate alert: it fires when both windows burn the error budget
    at least `threshold` times as fast as the target allows."""

    name: str
    """"fast" (page) or "slow" (ticket)."""
    long_window: float
    """Seconds: 3600 or 21600."""
    short_window: float
    """Seconds: 300 or 1800."""
    threshold: float
    """14.4 or 6."""
    long_burn: float
    """The long window's error rate over the error budget."""
    short_burn: float
    """The short window's error rate over the error budget."""
    fires: bool
    """Both burn rates are at or above the threshold."""


class BudgetStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where a success-rate target stands over a window, and how fast it is burning."""

    target: float
    """The target success rate (0.999)."""
    window: float
    """Seconds the budget is read over."""
    total: int
    """Jobs that ended in the window."""
    failed: int
    """Jobs that failed for good in the window."""
    error_rate: float
    """failed / total (0.0 without jobs)."""
    budget: float
    """The error budget: 1 - target."""
    remaining: float
    """The fraction of the budget left: 1 - error_rate / budget; negative once spent."""
    burn_rate: float
    """error_rate / budget over the window: 1.0 spends exactly the budget."""
    burn_rates: tuple[BurnRate, ...]
    """The SRE workbook's fast (1h and 5m, 14.4) and slow (6h and 30m, 6) alerts."""
    since: float
    """The window's start, as `ErrorRate.since`."""
    until: float
    """When it was read."""

    @property
    def spent(self) -> bool:
        """More errors than the budget allows."""
        return self.remaining < 0


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Span:
    """A window as the buckets that cover it: `[start, until]`, read at `resolution`."""

    start: int
    until: float
    resolution: int
    buckets: tuple[tuple[str, int], ...]
    """(tier, bucket index) pairs; the last may extend past `until` (it holds up to now)."""

    @property
    def length(self) -> float:
        return max(self.until - self.start, 1e-9)


def _cover(
    start: int, end: int, now: float, keep: Mapping[str, float], finest: int
) -> tuple[tuple[str, int], ...] | None:
    """`[start, end)` as aligned buckets, the largest that fit first; None when a bucket
    it needs is older than its tier keeps."""
    buckets: list[tuple[str, int]] = []
    at = start
    while at < end:
        fits = [(t, s) for t, s in _BY_SIZE if s >= finest and at % s == 0 and at + s <= end]
        if not fits:
            return None
        tier, size = fits[0]  # the largest
        if now - at >= keep[tier]:
            return None
        buckets.append((tier, at // size))
        at += size
    return tuple(buckets)


def plan(window: float, now: float, keep: Mapping[str, float]) -> Span:
    """The buckets to read for the last `window` seconds at `now`. `keep` is how long
    each tier's stream keeps its buckets; a window longer than they keep is refused."""
    target = max(min(TIER_SECONDS.values()), window / EDGE_PARTS)
    sizes = sorted(TIER_SECONDS.values())
    finest = max(size for size in sizes if size <= target)
    for size in sizes:
        if size < finest:
            continue
        tier = next(name for name, s in layout.COUNT_TIERS if s == size)
        start = math.floor((now - window) / size) * size
        if now - start < keep[tier]:
            finest = size
            break
    else:
        longest = max(keep.values())
        raise ValueError(
            f"a window of {window:g}s reaches further back than the outcome counters are "
            f"kept ({longest:g}s, NAQ_COUNTS_MAX_AGE); ask for a shorter one"
        )
    end = math.floor(now / finest) * finest + finest
    buckets = _cover(start, end, now, keep, finest)
    assert buckets is not None  # start and end are aligned to a tier kept long enough
    return Span(start, now, finest, buckets)


def previous(span: Span, now: float, keep: Mapping[str, float]) -> Span | None:
    """The window as long as `span` just before it; None when its buckets are not kept."""
    length = span.until - span.start
    resolution = span.resolution
    for tier, size in sorted(layout.COUNT_TIERS, key=lambda t: t[1]):
        if size < resolution:
            continue
        start = math.floor((span.start - length) / size) * size
        if now - start < keep[tier]:
            buckets = _cover(start, span.start, now, keep, resolution)
            if buckets is None:
                return None
            return Span(start, span.start, size, buckets)
    return None


def _window(value: float | timedelta, argument: str = "window") -> float:
    return seconds(value, argument, positive=True)


# --------------------------------------------------------------------------- reading


class _TooMany(Exception):
    """The server would answer more than `_MAX_SUBJECTS` messages to one multi_last."""


class _NoStream(Exception):
    """Nothing answered the direct get: the stream is gone (deleted under the client)."""


async def multi_last(
    nc: NatsClient, stream: str, filters: Sequence[str], timeout: float = _READ_TIMEOUT
) -> list[tuple[str, bytes]]:
    """The last message of every subject matching `filters`, in one batched direct get
    (`{"multi_last": [...]}` to `$JS.API.DIRECT.GET.<stream>`), as (subject, body)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()
    found: list[tuple[str, bytes]] = []

    async def on_message(msg: Msg) -> None:
        headers = msg.headers or {}
        if not msg.data and "Status" in headers:
            if not ended.done():
                ended.set_result(headers["Status"])
            return
        found.append((headers.get("Nats-Subject", ""), msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message, pending_msgs_limit=4 * _MAX_SUBJECTS)
    try:
        request = json.dumps({"multi_last": list(filters)}).encode()
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", request, reply=inbox)
        try:
            status = await asyncio.wait_for(ended, timeout)
        except TimeoutError:
            raise nats.errors.TimeoutError from None  # a nats-py error, as any request's
    finally:
        await sub.unsubscribe()
    if status in ("204", "404"):  # end of batch; no subject matched
        return found
    if status == "413":
        raise _TooMany(stream)
    if status == "503":
        raise _NoStream(stream)
    raise APIError(description=f"the direct get of {stream} answered status {status}")


async def read_last(
    nc: NatsClient, js: Any, stream: str, filters: Sequence[str]
) -> list[tuple[str, bytes]]:
    """`multi_last`, split in halves (asked at once) while the server says a request
    matches too many subjects; a filter that alone matches too many is read with a
    consumer."""
    if not filters:
        return []
    try:
        return await multi_last(nc, stream, filters)
    except _TooMany:
        pass
    if len(filters) == 1:
        return [(msg.subject, msg.data) for msg in await read_messages(js, stream, filters[0])]
    half = len(filters) // 2
    first, second = await asyncio.gather(
        read_last(nc, js, stream, filters[:half]), read_last(nc, js, stream, filters[half:])
    )
    return first + second


def _value(body: bytes) -> int:
    """A counter's total: the server stores `{"val":"<total>"}`. Anything else (a stream
    made by hand without `allow_msg_counter`, which stores the empty increments as they
    are) counts nothing rather than failing the read."""
    if body.startswith(b'{"val":"') and body.endswith(b'"}'):
        with contextlib.suppress(ValueError):
            return int(body[8:-2])
    try:
        return int(json.loads(body)["val"])
    except (ValueError, TypeError, KeyError):
        return 0


Counts = dict[tuple[str, int], list[tuple[tuple[str, ...], int]]]
"""The counters read, by (tier, bucket): each one's scope tokens and total."""


class Reader:
    """Error analytics over one client's connection."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def _keep(self) -> dict[str, float]:
        """How long each tier's stream keeps its buckets (as configured on the server,
        which an operator may have changed), read once per client."""
        cached: dict[str, float] | None = getattr(self._client, "_count_keep", None)
        if cached is not None:
            return cached
        js, _ = await self._client._ready()
        settings = self._client._storage or StorageSettings.from_env()
        keep: dict[str, float] = {}
        for tier, _size in layout.COUNT_TIERS:
            try:
                info = await js.stream_info(layout.count_stream(tier))
                keep[tier] = float(info.config.max_age or 0) or math.inf
            except NotFoundError:
                keep[tier] = count_tier_max_age(settings, tier)
        self._client._count_keep = keep
        return keep

    async def _counts(self, wanted: Iterable[tuple[str, int, str]]) -> Counts:
        """Read the counters of (tier, bucket, scope filter) triples, a request per tier."""
        js, _ = await self._client._ready()
        nc = self._client._nc
        assert nc is not None
        by_tier: dict[str, list[str]] = {}
        for tier, bucket, scope in dict.fromkeys(wanted):
            by_tier.setdefault(tier, []).append(layout.count_subject(tier, bucket, scope))
        tiers = list(by_tier)
        try:
            answers = await asyncio.gather(
                *(read_last(nc, js, layout.count_stream(t), by_tier[t]) for t in tiers)
            )
        except _NoStream:
            await self._client._recreate_layout()
            return {}
        counts: Counts = {}
        for found in answers:
            for subject, body in found:
                tokens = subject.split(".")  # naq.counts.<tier>.<bucket>.<scope...>
                if len(tokens) < 6:
                    continue
                key = (tokens[2], int(tokens[3]))
                counts.setdefault(key, []).append((tuple(tokens[4:]), _value(body)))
        return counts

    # ------------------------------------------------------------------ error rate
    async def error_rate(
        self,
        window: float | timedelta,
        *,
        queue: str | None = None,
        function: str | Callable[..., Any] | None = None,
    ) -> ErrorRate:
        length = _window(window)
        scope, name = _scope(queue, function)
        now = time.time()
        span = plan(length, now, await self._keep())
        counts = await self._counts((t, b, scope) for t, b in span.buckets)
        return _rate(span, counts, length, queue, name)

    # ------------------------------------------------------------------ patterns
    async def error_patterns(
        self, window: float | timedelta, *, queue: str | None = None, limit: int = 20
    ) -> list[ErrorPattern]:
        length = _window(window)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number >= 1, got {limit!r}")
        # Every queue's patterns are counted apart from each queue's: a read of the
        # fleet's reads one counter per pattern and bucket, however many queues.
        scope = "e.*" if queue is None else f"eq.{_queue(queue)}.*"
        now = time.time()
        keep = await self._keep()
        span = plan(length, now, keep)
        before = previous(span, now, keep)
        wanted = [(t, b, scope) for t, b in span.buckets]
        if before is not None:
            wanted += [(t, b, scope) for t, b in before.buckets]
        counts = await self._counts(wanted)
        current = _pattern_counts(span, counts)
        earlier = _pattern_counts(before, counts) if before is not None else None
        total = sum(current.values())
        top = sorted(current, key=lambda fp: (-current[fp], fp))[:limit]
        records = await self._pattern_records(top, queue, span.start)
        patterns = []
        for fingerprint in top:
            count = current[fingerprint]
            first, last, queues = records.get(fingerprint, (None, None, ()))
            prior = None if earlier is None else earlier.get(fingerprint, 0)
            trend = None
            if prior and before is not None:
                trend = (count / span.length) / (prior / before.length)
            latest = last or first
            patterns.append(
                ErrorPattern(
                    error_type=latest.error_type if latest else _unknown(fingerprint),
                    fingerprint=fingerprint,
                    where=latest.where if latest else "",
                    count=count,
                    share=count / total if total else 0.0,
                    first_seen=first.seen_at if first else None,
                    last_seen=last.seen_at if last else None,
                    trend=trend,
                    sample_job_ids=_samples(last, first, span.start),
                    previous_count=prior,
                    queues=queues if queue is None else (queue,),
                    function=latest.function if latest else "",
                    message=latest.message if latest else "",
                )
            )
        return patterns

    async def _pattern_records(
        self, fingerprints: Sequence[str], queue: str | None, since: float
    ) -> dict[str, tuple[PatternRecord | None, PatternRecord | None, tuple[str, ...]]]:
        """Each pattern's first record and latest record (over its queues), and the queues
        it was last seen in since `since`."""
        wanted = [f for f in fingerprints if f != OTHER_PATTERN]
        if not wanted:
            return {}
        js, _ = await self._client._ready()
        nc = self._client._nc
        assert nc is not None
        where = queue if queue is not None else "*"
        filters = [layout.pattern_subject(where, fp, "*") for fp in wanted]
        try:
            found = await read_last(nc, js, layout.PATTERN_STREAM, filters)
        except _NoStream:
            await self._client._recreate_layout()
            return {}
        firsts: dict[str, PatternRecord] = {}
        lasts: dict[str, PatternRecord] = {}
        queues: dict[str, set[str]] = {}
        for subject, body in found:
            try:
                record = _decode_pattern(body)
            except msgspec.DecodeError:
                continue
            if subject.endswith(".first"):
                kept = firsts.get(record.fingerprint)
                if kept is None or record.seen_at < kept.seen_at:
                    firsts[record.fingerprint] = record
            else:
                kept = lasts.get(record.fingerprint)
                if kept is None or record.seen_at > kept.seen_at:
                    lasts[record.fingerprint] = record
                if record.seen_at >= since:
                    queues.setdefault(record.fingerprint, set()).add(record.queue)
        return {
            fp: (firsts.get(fp), lasts.get(fp), tuple(sorted(queues.get(fp, ())))) for fp in wanted
        }

    # ------------------------------------------------------------------ budgets
    async def error_budget(
        self, target_success_rate: float = 0.999, window: float | timedelta = 86400.0
    ) -> BudgetStatus:
        target = target_success_rate
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < 1:
            raise ValueError(
                f"target_success_rate must be a number between 0 and 1 (exclusive), e.g. "
                f"0.999, got {target_success_rate!r}"
            )
        length = _window(window)
        now = time.time()
        keep = await self._keep()
        spans = [plan(length, now, keep)]
        for _, long_window, short_window, _ in BURN_ALERTS:
            spans += [plan(long_window, now, keep), plan(short_window, now, keep)]
        counts = await self._counts((t, b, "all.*") for s in spans for t, b in s.buckets)
        rates = [_rate(s, counts, s.until - s.start, None, None) for s in spans]
        budget = round(1.0 - target, 12)  # 0.001, not 0.0010000000000000009
        whole = rates[0]
        alerts = []
        for i, (name, long_window, short_window, threshold) in enumerate(BURN_ALERTS):
            long_burn = rates[1 + 2 * i].rate / budget
            short_burn = rates[2 + 2 * i].rate / budget
            alerts.append(
                BurnRate(
                    name=name, long_window=long_window, short_window=short_window,
                    threshold=threshold, long_burn=long_burn, short_burn=short_burn,
                    fires=long_burn >= threshold and short_burn >= threshold,
                )
            )  # fmt: skip
        return BudgetStatus(
            target=target,
            window=length,
            total=whole.total,
            failed=whole.failed,
            error_rate=whole.rate,
            budget=budget,
            remaining=1.0 - whole.rate / budget,
            burn_rate=whole.rate / budget,
            burn_rates=tuple(alerts),
            since=whole.since,
            until=whole.until,
        )


def _queue(queue: str) -> str:
    return layout.check_queue_name(queue, "queue")


def _scope(queue: str | None, function: str | Callable[..., Any] | None) -> tuple[str, str | None]:
    """The counters to read for a queue and a function (either may be None: every one)."""
    if function is None:
        return ("all.*" if queue is None else f"q.{_queue(queue)}.*"), None
    name = function if isinstance(function, str) else function_name(function)
    token = function_token(name)
    if token is None:
        raise ValueError(
            f"function must be a job function or its name as module:qualname (e.g. "
            f"'billing.jobs:charge'), got {function!r}"
        )
    return f"f.{_queue(queue) if queue is not None else '*'}.{token}.*", name


def _rate(
    span: Span, counts: Counts, window: float, queue: str | None, function: str | None
) -> ErrorRate:
    totals = dict.fromkeys(("completed", "failed", "retried"), 0)
    prefix = "all" if function is None and queue is None else ("q" if function is None else "f")
    for key in span.buckets:
        for scope, value in counts.get(key, ()):
            if scope[0] == prefix and scope[-1] in totals:
                totals[scope[-1]] += value
    completed, failed = totals["completed"], totals["failed"]
    total = completed + failed
    return ErrorRate(
        total=total,
        failed=failed,
        rate=failed / total if total else 0.0,
        since=float(span.start),
        until=span.until,
        completed=completed,
        retried=totals["retried"],
        window=window,
        queue=queue,
        function=function,
    )


def _pattern_counts(span: Span, counts: Counts) -> dict[str, int]:
    """Failed attempts per pattern in `span` (`e.<fp>` or `eq.<queue>.<fp>` counters)."""
    per_pattern: dict[str, int] = {}
    for key in span.buckets:
        for scope, value in counts.get(key, ()):
            if scope[0] in ("e", "eq"):
                per_pattern[scope[-1]] = per_pattern.get(scope[-1], 0) + value
    return per_pattern


def _samples(
    last: PatternRecord | None, first: PatternRecord | None, since: float
) -> tuple[str, ...]:
    """The latest jobs that failed so; the first record's too while they are in the window."""
    ids = list(last.job_ids) if last is not None else []
    if first is not None and first.seen_at >= since:
        ids += first.job_ids
    return tuple(dict.fromkeys(ids))[:5]


def _unknown(fingerprint: str) -> str:
    if fingerprint == OTHER_PATTERN:
        return "(other patterns: more than a worker counts apart in an hour)"
    return "(unknown: its record has aged out)"
