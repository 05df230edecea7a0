"""Every worker counts what becomes of its jobs, and adds the counts to fleet-wide counters.

Reading an error rate by scanning a day of job records costs a read per job: seconds
on a busy fleet. So the counting happens as the work does. An `OutcomeRecorder` (a
`JobObserver` every worker has) adds each completed, failed and retried job, and
each failed attempt's error pattern, to a dict in memory: no I/O per job. Once a
second it sends what it counted as increments (`Nats-Incr: +N`, ADR-49) to the
counter streams, one message per counter touched in that second, however many jobs
it counted: a busy worker sends the same handful of increments a second as an idle
one sends when a job ends. The server adds them up; a window's figure is then the sum
of a few dozen counters (`analytics.py`), whatever the number of jobs.

Each outcome is added to one time bucket of each tier (`layout.COUNT_TIERS`: a
minute, ten minutes, an hour, six hours), under three scopes: every queue, its
queue, its queue and function. Each failed attempt is also added, per tier, to its
error pattern (`e.<fingerprint>`, and `eq.<queue>.<fingerprint>` for a queue's), and
the pattern's record (what the error
is, where it was raised, the latest job ids) is written beside the counters, once as
its first and after every flush as its latest.

Precision: counted when the outcome happens (its own timestamp picks the bucket), sent
within `FLUSH_EVERY` seconds, so a window's figure lags the work by at most that much.
An increment whose ack never comes is sent again with the same `Nats-Msg-Id`, so it is
counted once; one the server refuses is lost and logged (once a minute). A worker
killed with SIGKILL loses at most its last second of counts. Cardinality is bounded
per worker and hour: past `MAX_FUNCTIONS` functions or `MAX_PATTERNS` patterns, the
rest are counted as `~other` / `other`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import sys
import time
from collections import deque
from types import CodeType
from typing import Final

import msgspec

from naq_resilience.jetstream import layout
from naq_resilience.jetstream.publisher import Publisher
from naq_resilience.models import FailureRecord, JobRecord, JobStatus, PatternRecord

__all__ = [
    "FLUSH_EVERY",
    "OTHER_FUNCTION",
    "OTHER_PATTERN",
    "OUTCOMES",
    "OutcomeRecorder",
    "fingerprint_of",
    "function_token",
    "where_of",
]

log = logging.getLogger("naq_resilience.outcomes")

FLUSH_EVERY: Final = 1.0
"""Seconds between two sends of a worker's counts: how far a window's figure lags."""
OUTCOMES: Final = ("completed", "failed", "retried")
"""A job completed, failed for good (a dead letter), or failed an attempt and waits
to be retried. An error rate is failed / (completed + failed)."""
MAX_FUNCTIONS: Final = 200
"""Distinct functions a worker counts apart per hour; the rest are `OTHER_FUNCTION`."""
MAX_PATTERNS: Final = 200
"""Distinct error patterns a worker counts apart per hour; the rest are `OTHER_PATTERN`."""
OTHER_FUNCTION: Final = "~other"
OTHER_PATTERN: Final = "other"
STOP_WAIT: Final = 5.0
"""Seconds `stop` waits for the last counts to be acknowledged."""
SAMPLE_IDS: Final = 5
"""Job ids a pattern record keeps: the latest that failed so."""
_LOG_EVERY = 60.0
_WRONG_LAST_SEQUENCE = 10071  # a pattern's `first` record exists already

_STATUS_OUTCOME = {
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.RETRYING: "retried",
}
_FUNCTION = re.compile(r"^[\w.:]{1,256}$")


# --------------------------------------------------------------------------- patterns


def _path_roots() -> list[str]:
    """`sys.path` entries, longest first, each ending in a separator."""
    roots = {os.path.join(os.path.abspath(entry or os.curdir), "") for entry in sys.path}
    return sorted(roots, key=len, reverse=True)


_roots: tuple[tuple[str, ...], list[str]] = ((), [])
_wheres: dict[CodeType, str] = {}
_WHERE_CACHE_SIZE = 4096


def _relative(filename: str) -> str:
    """A source file as imported: relative to the `sys.path` entry it was found in, so
    the same code gives the same name on every host, whatever its install directory."""
    global _roots
    if filename.startswith("<"):  # <string>, <stdin>, frozen modules
        return filename
    if _roots[0] != tuple(sys.path):
        _roots = (tuple(sys.path), _path_roots())
    for root in _roots[1]:
        if filename.startswith(root):
            return filename[len(root) :].replace(os.sep, "/")
    return os.path.basename(filename)


def where_of(exc: BaseException) -> str:
    """Where `exc` was raised: the innermost frame of its traceback as `file:function`
    (`billing/jobs.py:charge`), or "" without a traceback. No line number: an edit
    above the line must not make the same error a new pattern."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    where = _wheres.get(code)
    if where is None:
        if len(_wheres) >= _WHERE_CACHE_SIZE:
            _wheres.clear()
        where = _wheres[code] = f"{_relative(code.co_filename)}:{code.co_qualname}"
    return where


def fingerprint_of(error_type: str, where: str) -> str:
    """A pattern's id: 16 hex digits of a hash of the error's type and where it was raised."""
    return hashlib.blake2b(f"{error_type}\n{where}".encode(), digest_size=8).hexdigest()


def function_token(function: str) -> str | None:
    """A job function's name as one subject token (`billing/jobs:charge`), or None for a
    name that is not `module:qualname` (a hand-written envelope's garbage)."""
    if not _FUNCTION.match(function) or ":" not in function:
        return None
    return function.replace(".", "/")


# --------------------------------------------------------------------------- the recorder


class _Seen:
    """A pattern as one worker saw it in one flush interval."""

    __slots__ = ("count", "error_type", "first_at", "function", "job_ids", "last_at", "message",
                 "where")  # fmt: skip

    def __init__(self, failure: FailureRecord) -> None:
        self.error_type = failure.error_type
        self.where = failure.where
        self.function = failure.function
        self.message = failure.message
        self.first_at = self.last_at = failure.failed_at
        self.count = 0
        self.job_ids: deque[str] = deque(maxlen=SAMPLE_IDS)


class OutcomeRecorder:
    """A `JobObserver` that counts outcomes and error patterns in memory and sends them
    to the counter streams every `interval` seconds (`start`), and once more at `stop`.

    Observing costs a dict update per job; nothing is awaited on a job's path. Outcomes
    observed before `start` wait for the first flush.
    """

    def __init__(self, interval: float = FLUSH_EVERY) -> None:
        self.interval = interval
        self._publisher: Publisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._outcomes: dict[tuple[int, str, str, str], int] = {}
        self._errors: dict[tuple[int, str, str], int] = {}
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._msg_ids = f"{os.urandom(6).hex()}-"
        self._sent = 0
        self._hour = -1
        self._functions: set[str] = set()
        self._patterns: set[str] = set()
        self._first_written: set[tuple[str, str]] = set()
        self._encode = msgspec.json.Encoder().encode
        self._last_warning = -_LOG_EVERY
        self.lost = 0
        """Increments the server refused or never acknowledged (logged once a minute)."""

    # ------------------------------------------------------------------ observing
    def job_changed(self, record: JobRecord) -> None:
        outcome = _STATUS_OUTCOME.get(record.status)
        if outcome is None:
            return
        if record.started_at is None and record.dead_letter_queue is None:
            # A redelivered job whose result says it had ended (its ack was lost): it
            # was counted when it ended.
            return
        key = (int(record.updated_at // 60), record.queue, record.function, outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1

    def attempt_failed(self, failure: FailureRecord) -> None:
        fingerprint = failure.fingerprint or fingerprint_of(failure.error_type, failure.where)
        key = (int(failure.failed_at // 60), failure.queue, fingerprint)
        self._errors[key] = self._errors.get(key, 0) + 1
        seen = self._seen.get((failure.queue, fingerprint))
        if seen is None:
            seen = self._seen[(failure.queue, fingerprint)] = _Seen(failure)
        elif failure.failed_at >= seen.last_at:
            seen.last_at = failure.failed_at
            seen.function = failure.function
            seen.message = failure.message
        else:
            seen.first_at = min(seen.first_at, failure.failed_at)
        seen.count += 1
        if failure.job_id not in seen.job_ids:
            seen.job_ids.appendleft(failure.job_id)

    # ------------------------------------------------------------------ sending
    async def start(self, publisher: Publisher) -> None:
        """Send the counts every `interval` seconds through `publisher`, from now on."""
        self._publisher = publisher
        self._stopping = asyncio.Event()  # a worker run again starts a new timer
        self._task = asyncio.create_task(self._run(), name="naq-outcomes")

    async def stop(self) -> None:
        """Send what is left (the last jobs a worker ran) and stop. A flush under way is
        finished, not cancelled half-sent; a server that does not answer is waited for
        `STOP_WAIT` seconds at most, so a worker's shutdown does not hang on it."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            try:
                await asyncio.wait_for(task, STOP_WAIT)
            except TimeoutError:
                self._warn(f"the last outcome counts were not sent within {STOP_WAIT:g}s")
        self._publisher = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            await self._flush_logged()
            if self._stopping.is_set():
                # `stop` may have come while that flush was sent: what was counted
                # meanwhile goes too.
                await self._flush_logged()
                return

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception as exc:  # counting must never stop the worker
            self._warn(f"outcome counts not sent ({exc!r}); trying again in {self.interval:g}s")

    async def flush(self) -> None:
        """Send everything counted since the last flush: one increment per counter."""
        publisher = self._publisher
        if publisher is None or not (self._outcomes or self._errors):
            return
        outcomes, self._outcomes = self._outcomes, {}
        errors, self._errors = self._errors, {}
        seen, self._seen = self._seen, {}
        increments: dict[str, int] = {}
        for (minute, queue, function, outcome), n in outcomes.items():
            token = self._function(function, minute)
            for scope in (f"all.{outcome}", f"q.{queue}.{outcome}", f"f.{queue}.{token}.{outcome}"):
                for tier, size in layout.COUNT_TIERS:
                    subject = layout.count_subject(tier, minute * 60 // size, scope)
                    increments[subject] = increments.get(subject, 0) + n
        kept: dict[tuple[str, str], _Seen] = {}
        for (minute, queue, fingerprint), n in errors.items():
            token = self._pattern(fingerprint, minute)
            if token != OTHER_PATTERN and (queue, fingerprint) in seen:
                kept[(queue, fingerprint)] = seen[(queue, fingerprint)]
            for scope in (f"e.{token}", f"eq.{queue}.{token}"):
                for tier, size in layout.COUNT_TIERS:
                    subject = layout.count_subject(tier, minute * 60 // size, scope)
                    increments[subject] = increments.get(subject, 0) + n
        sends: list[asyncio.Future[int]] = []
        for subject, n in increments.items():
            self._sent += 1
            headers = {"Nats-Incr": f"+{n}", "Nats-Msg-Id": f"{self._msg_ids}{self._sent}"}
            sends.append(await publisher.publish(subject, b"", headers, resend=True))
        firsts: list[asyncio.Future[int]] = []
        for (queue, fingerprint), pattern in kept.items():
            sends.append(
                await publisher.publish(
                    layout.pattern_subject(queue, fingerprint, "last"),
                    self._record(queue, fingerprint, pattern, pattern.last_at),
                    resend=True,
                )
            )
            if (queue, fingerprint) not in self._first_written:
                if len(self._first_written) >= 10 * MAX_PATTERNS:
                    self._first_written.clear()
                self._first_written.add((queue, fingerprint))
                firsts.append(
                    await publisher.publish(
                        layout.pattern_subject(queue, fingerprint, "first"),
                        self._record(queue, fingerprint, pattern, pattern.first_at),
                        {"Nats-Expected-Last-Subject-Sequence": "0"},
                    )
                )
        results = await asyncio.gather(*sends, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        first_results = await asyncio.gather(*firsts, return_exceptions=True)
        failed += [
            r
            for r in first_results
            if isinstance(r, BaseException)
            and getattr(r, "err_code", None) != _WRONG_LAST_SEQUENCE  # kept: the first stays
        ]
        if failed:
            self.lost += len(failed)
            self._warn(
                f"{len(failed)} of {len(results) + len(first_results)} outcome counter writes "
                f"failed ({failed[0]!r}); those counts are lost"
            )

    def _record(self, queue: str, fingerprint: str, seen: _Seen, at: float) -> bytes:
        return self._encode(
            PatternRecord(
                fingerprint=fingerprint,
                error_type=seen.error_type,
                where=seen.where,
                queue=queue,
                function=seen.function,
                message=seen.message[:200],
                seen_at=at,
                count=seen.count,
                job_ids=list(seen.job_ids),
            )
        )

    def _new_hour(self, minute: int) -> None:
        hour = minute // 60
        if hour > self._hour:
            self._hour = hour
            self._functions.clear()
            self._patterns.clear()

    def _function(self, function: str, minute: int) -> str:
        """The function's token, or `OTHER_FUNCTION` past this hour's `MAX_FUNCTIONS`."""
        self._new_hour(minute)
        token = function_token(function)
        if token is None:
            return OTHER_FUNCTION
        if token not in self._functions:
            if len(self._functions) >= MAX_FUNCTIONS:
                return OTHER_FUNCTION
            self._functions.add(token)
        return token

    def _pattern(self, fingerprint: str, minute: int) -> str:
        self._new_hour(minute)
        if fingerprint not in self._patterns:
            if len(self._patterns) >= MAX_PATTERNS:
                return OTHER_PATTERN
            self._patterns.add(fingerprint)
        return fingerprint

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            log.warning("%s (logged once a minute)", message)
