"""Dead letters an operator can act on: find, count, show, replay, reschedule, archive,
discard, purge, and a first opinion on why each failed.

A dead letter is one message in `NAQ_DEAD` on `naq.dead.<dead_letter_queue>.<id>`, the
stream keeping one message per subject. Listing walks that stream, oldest first,
through an ephemeral consumer filtered by subject (the dead-letter queue) and started
at a time (`since`) or after a stream sequence (a page's `next_after`), so a page is
one request whatever the stream holds before it; the other filters are applied to
each letter as it arrives. A count with only the queue and time filters is one
request; with the others it reads the letters it counts.

Replaying writes a new job, then rewrites the letter on its own subject with a
`ReplayRecord` naming that job, guarded by the letter's stream sequence so two
replayers cannot both mark it. The new job's id is derived from the letter's id and
how many times it was replayed, so a replay retried after a crash stores the same job
(deduplicated by `Nats-Msg-Id`, and found in the job history after the duplicate
window), never a second one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import fnmatch
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from naq_resilience.codec import InvalidMessage, decode, decode_envelope, encode
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.arguments import encode_with_exceptions
from naq_resilience.jetstream.history import read_job
from naq_resilience.jetstream.puller import Puller
from naq_resilience.jetstream.streams import read_messages
from naq_resilience.models import DeadLetter, FailureRecord, JobEnvelope, ReplayRecord

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client, Job

__all__ = [
    "CLASSIFICATIONS",
    "FAILURE_KINDS",
    "AlreadyReplayedError",
    "DeadLetterFilter",
    "DeadLetterNotFoundError",
    "DeadLetterPage",
    "NotReplayableError",
    "ReplayReport",
    "analyze_failure",
    "letter_classification",
]

log = logging.getLogger("naq_resilience.deadletters")

CLASSIFICATIONS: Final = (
    "retryable",
    "non_retryable",
    "critical",
    "unreadable",
    "unroutable",
    "crashed",
    "worker_error",
    "unknown",
)
"""What `classification=` filters on (`letter_classification`): the last failed
attempt's classification, or why a letter has no attempt to classify."""

FAILURE_KINDS: Final = ("transient_error", "data_issue", "system_issue", "unknown")
"""What `analyze_failure` answers."""

_PAGE: Final = 1000
_LITERAL: Final = re.compile(r"^[A-Za-z0-9_.:]+$")
"""A function or error type with no glob characters: JSON writes it as it is."""
_PLAIN_TEXT: Final = re.compile(r'^[^"\\\x00-\x1f]+$')
"""Text JSON writes as it is (no quote, backslash or control character to escape)."""
_PAGE_MAX: Final = 4000
_PAGE_WAIT: Final = 0.5
_WRONG_LAST_SEQUENCE: Final = 10071
_SYSTEM_ERRORS: Final = frozenset({
    "builtins:PermissionError",
    "naq_resilience:AuthenticationError",
    "naq_resilience.policies.errors:AuthenticationError",
    "naq_resilience:CircuitBreakerOpenError",
    "naq_resilience.policies.errors:CircuitBreakerOpenError",
})  # fmt: skip
"""Failures a replay cannot fix until something outside the job is fixed: credentials,
permissions, a service its breaker holds open."""


class DeadLetterNotFoundError(LookupError):
    """No dead letter has this id (never dead-lettered, discarded, or past its TTL)."""


class NotReplayableError(ValueError):
    """The letter holds no job to run again: a message that was not a readable job."""


class AlreadyReplayedError(ValueError):
    """The letter was replayed before; replaying it again needs `force=True`."""


# --------------------------------------------------------------------------- what a letter says


def letter_classification(letter: DeadLetter) -> str:
    """One word for why the letter is dead, from `CLASSIFICATIONS`."""
    reason = letter.reason
    if letter.job is None and letter.raw is not None:
        return "unreadable"
    if reason.startswith("unroutable"):
        return "unroutable"
    if reason.startswith("a worker crashed"):
        return "crashed"
    if reason.startswith("the worker failed while handling"):
        return "worker_error"
    if letter.failures:
        return letter.failures[-1].classification
    return "unknown"


def error_type(letter: DeadLetter) -> str | None:
    """The last failed attempt's error type, `module:qualname` (or the letter's own,
    for a job that never ran: `naq_resilience:UnroutableJob`)."""
    return letter.failures[-1].error_type if letter.failures else letter.error_type


def analyze_failure(letter: DeadLetter) -> str:
    """A first opinion on what to do with a dead letter, as NAQ's guide asks for it:

    - "transient_error": it ran out of attempts on retryable errors (a network blip,
      a timeout, a rate limit): replaying it, perhaps with more retries, should work;
    - "data_issue": what it was given is wrong (a non-retryable error such as
      `ValueError` or `DataValidationError`, or a message that was not a readable
      job): a person should look at it before it runs again;
    - "system_issue": something outside the job must be fixed first (a critical error,
      credentials or permissions, a breaker held open, a worker that crashed on it,
      no worker able to run it): replay it once that is done;
    - "unknown": nothing recorded says (a letter without attempts or reason to go by).

    Built from the recorded classifications and error types only: nothing is imported.
    """
    kind = letter_classification(letter)
    if kind == "unreadable":
        return "data_issue"
    if kind in ("unroutable", "crashed", "worker_error", "critical"):
        return "system_issue"
    last = error_type(letter)
    if last in _SYSTEM_ERRORS:
        return "system_issue"
    if kind == "retryable":
        return "transient_error"
    if kind == "non_retryable":
        return "data_issue"
    return "unknown"


# --------------------------------------------------------------------------- filters


def _timestamp(value: object, argument: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(
                f"{argument} must be timezone-aware (e.g. datetime.now(UTC) - timedelta(hours=1)), "
                f"got the naive {value!r}"
            )
        return value.timestamp()
    if isinstance(value, dt.timedelta):
        return time.time() - value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise TypeError(
        f"{argument} must be a timezone-aware datetime, a timedelta (that long ago) or unix "
        f"seconds, got {value!r}"
    )


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to; every field given must match.

    `dead_letter_queue` takes a dead-letter queue (`emails.dead`, `failed_jobs`) or a
    queue (`emails`, meaning its default `emails.dead`): a one-word name with no
    letters of its own is read as a queue. `function` and `error_type` take a name or
    a glob (`billing.jobs:*`); an error type without its module (`ValueError`) matches
    it in any module. `since` and `until` bound when the job was dead-lettered (a
    timezone-aware datetime, a timedelta meaning that long ago, or unix seconds).
    `text` is looked for, ignoring case, in the reason and every recorded error
    message. `replayed` keeps only letters replayed (True) or not (False).
    """

    dead_letter_queue: str | None = None
    queue: str | None = None
    function: str | None = None
    error_type: str | None = None
    classification: str | None = None
    since: dt.datetime | dt.timedelta | float | None = None
    until: dt.datetime | dt.timedelta | float | None = None
    text: str | None = None
    replayed: bool | None = None
    _since: float | None = field(init=False, repr=False, compare=False)
    _until: float | None = field(init=False, repr=False, compare=False)
    _function: Callable[[str], object] | None = field(init=False, repr=False, compare=False)
    _error: Callable[[str], object] | None = field(init=False, repr=False, compare=False)
    _text: str | None = field(init=False, repr=False, compare=False)
    _needles: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _lower_needle: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dead_letter_queue is not None:
            layout.check_dead_letter_queue(self.dead_letter_queue)
        if self.queue is not None:
            layout.check_queue_name(self.queue, "queue")
        if self.classification is not None and self.classification not in CLASSIFICATIONS:
            raise ValueError(
                f"classification must be one of {', '.join(CLASSIFICATIONS)}, got "
                f"{self.classification!r}"
            )
        for name in ("function", "error_type", "text"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if self.replayed is not None and not isinstance(self.replayed, bool):
            raise TypeError(f"replayed must be True, False or None, got {self.replayed!r}")
        object.__setattr__(self, "_since", _timestamp(self.since, "since"))
        object.__setattr__(self, "_until", _timestamp(self.until, "until"))
        # Compiled once: a filter is matched against every letter a scan reads.
        function = None
        if self.function is not None:
            function = re.compile(fnmatch.translate(self.function)).match
        error = None
        if self.error_type is not None:
            pattern = fnmatch.translate(self.error_type)
            if ":" not in self.error_type:  # a bare name matches it in any module
                pattern = r"(?:.*:)?" + pattern
            error = re.compile(pattern).match
        object.__setattr__(self, "_function", function)
        object.__setattr__(self, "_error", error)
        object.__setattr__(self, "_text", None if self.text is None else self.text.casefold())
        # Words a letter's JSON must contain to match: most letters a rare filter skips
        # are skipped on a byte search, before any decoding.
        needles = []
        if self.function is not None and _LITERAL.match(self.function):
            needles.append(self.function.encode())
        if self.error_type is not None and _LITERAL.match(self.error_type):
            needles.append(self.error_type.rpartition(":")[2].encode())
        object.__setattr__(self, "_needles", tuple(needles))
        lower = None
        if self.text is not None and self.text.isascii() and _PLAIN_TEXT.match(self.text):
            lower = self.text.lower().encode()
        object.__setattr__(self, "_lower_needle", lower)

    @classmethod
    def of(cls, filter: DeadLetterFilter | None = None, **given: Any) -> DeadLetterFilter:
        """A filter from keywords (or the one given), with a clear error for a misspelled one."""
        names = [f.name for f in fields(cls) if f.init]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise TypeError(
                f"unknown dead-letter filter {', '.join(unknown)}; the filters are "
                f"{', '.join(names)}"
            )
        if filter is not None:
            given = {**{n: getattr(filter, n) for n in names}, **given}
        return cls(**given)

    @property
    def server_side(self) -> bool:
        """Only the queue and `since` are set: the server alone counts the letters."""
        return (
            self.queue is None
            and self.function is None
            and self.error_type is None
            and self.classification is None
            and self._until is None
            and self.text is None
            and self.replayed is None
        )

    def matches(self, letter: DeadLetter) -> bool:
        if self._since is not None and letter.dead_at < self._since:
            return False
        if self._until is not None and letter.dead_at > self._until:
            return False
        if self.queue is not None and letter.queue != self.queue:
            return False
        if self.replayed is not None and bool(letter.replays) is not self.replayed:
            return False
        function = letter.job.function if letter.job is not None else ""
        if self._function is not None and not self._function(function):
            return False
        if self._error is not None and not self._error(error_type(letter) or ""):
            return False
        if self.classification is not None and letter_classification(letter) != self.classification:
            return False
        if self._text is not None:
            needle = self._text
            texts = [letter.reason, *(f.message for f in letter.failures)]
            if not any(needle in t.casefold() for t in texts):
                return False
        return True


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A dead letter as stored: its subject, stream sequence and when it was written."""

    letter: DeadLetter
    subject: str
    sequence: int
    stored_at: float
    ttl: int | None = None
    """The letter's `Nats-TTL` in seconds, when it has one."""


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """One page of a listing, oldest first; pass `next_after` as `after=` for the next
    page (None: this was the last)."""

    letters: list[DeadLetter]
    sequences: list[int]
    next_after: int | None
    scanned: int
    """How many letters were read to fill the page (the filters skipped the rest)."""
    exhausted: bool = False
    """True when the page stopped at `max_scan` letters read rather than full: it may
    hold fewer than `limit` letters (none, even) with more to read after `next_after`."""


def _decode_letter(data: bytes) -> DeadLetter | None:
    try:
        return decode(data, DeadLetter)
    except (msgspec.DecodeError, RecursionError):
        return None  # anyone may publish on a dead-letter subject: skip what is not one


class _JobSummary(msgspec.Struct):
    function: str = ""


class _FailureSummary(msgspec.Struct):
    error_type: str = ""
    classification: str = ""
    message: str = ""


class _LetterSummary(msgspec.Struct):
    """What the filters read of a letter; the rest of it is skipped unparsed."""

    reason: str = ""
    queue: str = ""
    dead_at: float = 0.0
    job: _JobSummary | None = None
    raw: msgspec.Raw | None = None
    error_type: str | None = None
    failures: list[_FailureSummary] = []
    replays: list[msgspec.Raw] = []


_summary_json = msgspec.json.Decoder(_LetterSummary)


def _summary_matches(data: bytes, flt: DeadLetterFilter) -> bool:
    """False only when the letter certainly does not match (a MessagePack letter, or
    one this cannot read, is left to the full decode)."""
    if not data or data[:1] != b"{":
        return True
    for needle in flt._needles:
        if needle not in data:
            return False
    if flt._lower_needle is not None and flt._lower_needle not in data.lower():
        return False
    try:
        summary = _summary_json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return True
    return flt.matches(summary)  # type: ignore[arg-type]


def _ttl_of(headers: dict[str, str] | None) -> int | None:
    value = (headers or {}).get("Nats-TTL")
    if value is None:
        return None
    try:
        return int(value.rstrip("s"))
    except ValueError:
        return None


class Reader:
    """Dead letters of one client's connection."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def subject_filter(self, name: str | None) -> str:
        """The subject filter of dead-letter queue `name` (or the queue `name`'s)."""
        if name is None:
            return layout.DEAD_SUBJECTS
        if "." in name:
            return f"naq.dead.{name}.*"
        js, _ = await self._client._ready()
        try:
            await js.get_last_msg(layout.DEAD_STREAM, f"naq.dead.{name}.*")
        except NotFoundError as exc:
            await self._client._stream_missing(exc)
            return f"naq.dead.{layout.dead_letter_queue_for(name)}.*"
        return f"naq.dead.{name}.*"

    async def _consumer(self, subject: str, after: int, since: float | None) -> tuple[str, int]:
        """A new ephemeral consumer, and how many messages it has to deliver (the
        server counts them as it creates it: no second request)."""
        js, _ = await self._client._ready()
        config = ConsumerConfig(
            filter_subject=subject,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            max_waiting=1,
        )
        if after > 0:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = after + 1
        elif since is not None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = dt.datetime.fromtimestamp(since, tz=dt.UTC)
        try:
            info = await js.add_consumer(layout.DEAD_STREAM, config)
        except NotFoundError as exc:
            if not await self._client._stream_missing(exc):
                raise
            info = await js.add_consumer(layout.DEAD_STREAM, config)
        return info.name, info.num_pending or 0

    async def _delete(self, name: str) -> None:
        """Asked without waiting for the answer: a consumer left behind goes by itself
        after `inactive_threshold`."""
        nc = self._client._nc
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.publish(f"$JS.API.CONSUMER.DELETE.{layout.DEAD_STREAM}.{name}", b"")

    async def pending(self, flt: DeadLetterFilter, after: int = 0) -> int:
        """How many messages the filter's subjects hold from its start: one request."""
        subject = await self.subject_filter(flt.dead_letter_queue)
        name, pending = await self._consumer(subject, after, flt._since)
        await self._delete(name)
        return pending

    async def scan(
        self,
        flt: DeadLetterFilter,
        after: int = 0,
        page: int = _PAGE,
        read_to: list[int] | None = None,
        max_read: int | None = None,
    ) -> AsyncIterator[tuple[int, list[StoredLetter]]]:
        """The letters matching `flt` after stream sequence `after`, oldest first, in
        batches as they are read, each with how many letters were read so far; the
        stream's end is fixed when the scan starts. `read_to`, when given, holds the
        stream sequence of the last letter read (matching or not) after each batch;
        `max_read` stops the scan once that many letters were read."""
        await self._client._ready()
        nc = self._client._nc
        assert nc is not None
        subject = await self.subject_filter(flt.dead_letter_queue)
        name, total = await self._consumer(subject, after, flt._since)
        try:
            if total == 0:
                return
            got: list[Msg] = []
            puller = Puller(nc, layout.DEAD_STREAM, name, got.append, _PAGE_WAIT)
            await puller.start()
            seen = 0
            sifted = not flt.server_side
            end = total if max_read is None else min(total, max_read)
            try:
                while seen < end:
                    got.clear()
                    await puller.pull(min(page, end - seen))
                    if not got:
                        return  # the rest went meanwhile (discarded, expired, replayed)
                    seen += len(got)
                    if read_to is not None:
                        read_to[:] = [got[-1].metadata.sequence.stream]
                    page = min(page * 2, _PAGE_MAX)  # a long scan: fewer, bigger requests
                    batch = []
                    for msg in got:
                        # Filters read a summary that skips tracebacks and arguments;
                        # only a letter that matches is decoded whole.
                        if sifted and not _summary_matches(msg.data, flt):
                            continue
                        letter = _decode_letter(msg.data)
                        if letter is None:
                            # Anyone may publish on a dead-letter subject: one bad
                            # record must not hide the others, nor go unsaid.
                            log.warning(
                                "skipping an unreadable record on %s (stream sequence %d)",
                                msg.subject, msg.metadata.sequence.stream,
                            )  # fmt: skip
                            continue
                        if not flt.matches(letter):
                            continue
                        meta = msg.metadata
                        batch.append(StoredLetter(
                            letter, msg.subject, meta.sequence.stream,
                            meta.timestamp.timestamp() if meta.timestamp else 0.0,
                            _ttl_of(msg.headers),
                        ))  # fmt: skip
                    yield seen, batch
            finally:
                await puller.stop()
        finally:
            await self._delete(name)

    async def page(
        self, flt: DeadLetterFilter, limit: int, after: int, max_scan: int | None = None
    ) -> DeadLetterPage:
        _check_limit(limit)
        if max_scan is not None:
            _check_limit(max_scan)
        letters: list[DeadLetter] = []
        sequences: list[int] = []
        scanned = 0
        last_seen = after
        more = stopped = False
        size = limit + 1 if flt.server_side else max(limit * 2, 100)
        if max_scan is not None:
            size = min(size, max_scan)
        read_to: list[int] = []
        scan = self.scan(flt, after, size, read_to, max_scan)
        try:
            async for seen, batch in scan:
                scanned = seen
                for stored in batch:
                    if len(letters) == limit:
                        more = True
                        break
                    letters.append(stored.letter)
                    sequences.append(stored.sequence)
                    last_seen = stored.sequence
                if more:
                    break
                if max_scan is not None and seen >= max_scan:
                    # Read as much as allowed: the next page goes on from the last
                    # letter read, whether this one is full or not.
                    more = bool(read_to) and await self.pending(flt, read_to[0]) > 0
                    last_seen = read_to[0] if read_to else last_seen
                    stopped = more
                    break
        finally:
            await scan.aclose()  # type: ignore[attr-defined]
        return DeadLetterPage(
            letters, sequences, last_seen if more else None, scanned, exhausted=stopped
        )

    async def count(self, flt: DeadLetterFilter) -> int:
        if flt.server_side:
            return await self.pending(flt)
        total = 0
        async for _, batch in self.scan(flt):
            total += len(batch)
        return total

    async def find(self, letter_id: str, dead_letter_queue: str | None = None) -> StoredLetter:
        """The letter with this id (in `dead_letter_queue`, if given), as stored now."""
        if not isinstance(letter_id, str) or not layout.QUEUE_PATTERN.match(letter_id):
            raise ValueError(
                f"a dead letter's id is 1-128 letters, digits, '-' or '_' (a job id, or "
                f"seq-<n>), got {letter_id!r}"
            )
        js, _ = await self._client._ready()
        if dead_letter_queue is not None:
            subjects = [(await self.subject_filter(dead_letter_queue))[:-1] + letter_id]
        else:
            subjects = [f"naq.dead.*.{letter_id}", f"naq.dead.*.*.{letter_id}"]
        for subject in subjects:
            try:
                raw = await js.get_last_msg(layout.DEAD_STREAM, subject)
            except NotFoundError as exc:
                await self._client._stream_missing(exc)
                continue
            letter = _decode_letter(raw.data or b"")
            if letter is None:
                continue
            return StoredLetter(
                letter, raw.subject or subject, raw.seq or 0,
                raw.time.timestamp() if isinstance(raw.time, dt.datetime) else time.time(),
                _ttl_of(dict(raw.headers or {})),
            )  # fmt: skip
        where = f" in {dead_letter_queue}" if dead_letter_queue else ""
        raise DeadLetterNotFoundError(
            f"no dead letter {letter_id}{where}: it was never dead-lettered, was discarded, "
            "or its dead_letter_ttl ran out (`naq dlq list` shows what there is)"
        )

    async def original(self, letter: DeadLetter) -> bytes:
        """The job's message verbatim, from beside a letter too small to hold it."""
        assert letter.original_subject is not None
        js, _ = await self._client._ready()
        try:
            raw = await js.get_last_msg(layout.DEAD_STREAM, letter.original_subject)
        except NotFoundError:
            raise NotReplayableError(
                f"letter {letter.id}: its job's message was kept at {letter.original_subject}, "
                "which is gone (expired or purged); the letter cannot be replayed"
            ) from None
        return raw.data or b""

    async def failure_history(self, letter: DeadLetter) -> list[FailureRecord]:
        """The letter's failed attempts, with those left out of it read back from
        `NAQ_FAILURES` (while it keeps them), oldest first."""
        if not letter.failures_left_out or letter.job is None:
            return list(letter.failures)
        js, _ = await self._client._ready()
        subject = layout.failure_subject(letter.queue, letter.id)
        by_attempt = {f.attempt: f for f in letter.failures}
        for msg in await read_messages(js, layout.FAILURE_STREAM, subject):
            try:
                record = decode(msg.data, FailureRecord)
            except (msgspec.DecodeError, RecursionError):
                continue
            by_attempt.setdefault(record.attempt, record)
        return [by_attempt[a] for a in sorted(by_attempt)]


def _check_limit(limit: object) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a whole number >= 1, got {limit!r}")


# --------------------------------------------------------------------------- replaying


_OPTION_NAMES: Final[tuple[str, ...]] = (
    "max_retries",
    "retry_delay",
    "retry_strategy",
    "retry_on",
    "ignore_on",
    "dead_letter_queue",
    "dead_letter_ttl",
    "timeout",
    "result_ttl",
)


def check_options(options: dict[str, Any]) -> None:
    """Refused before any letter is read: a misspelled option is a mistake, not a wish."""
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"replay cannot change {', '.join(unknown)}; it takes args=, kwargs=, "
            f"queue_name= and {', '.join(_OPTION_NAMES)}"
        )


def replay_id(letter_id: str, number: int) -> str:
    """The id of the `number`th replay of a letter: readable while it fits a job id."""
    readable = f"{letter_id}-replay{number}"
    if len(readable) <= 128:
        return readable
    digest = hashlib.blake2b(f"{letter_id}:{number}".encode(), digest_size=16).hexdigest()
    return f"replay-{digest}"


@dataclass(slots=True)
class ReplayReport:
    """What a bulk replay did: each replayed letter's new job, and why others were not."""

    replayed: list[tuple[str, str]] = field(default_factory=list)
    """(letter id, new job id), in the order they were stored."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(letter id, why it was not replayed)."""
    seconds: float = 0.0


class Replayer:
    """Turns dead letters back into jobs, and marks each letter once its job is stored."""

    def __init__(self, client: Client, reader: Reader) -> None:
        self._client = client
        self._reader = reader

    async def envelope(
        self,
        stored: StoredLetter,
        *,
        queue_name: str | None,
        args: Sequence[Any] | None,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
        force: bool,
    ) -> tuple[JobEnvelope, list[str]]:
        letter = stored.letter
        if letter.job is None and letter.original_subject is None:
            raise NotReplayableError(
                f"letter {letter.id} holds no job to run again ({letter.reason}); its bytes "
                "are kept in `raw`: archive or discard it"
            )
        if letter.replays and not force:
            last = letter.replays[-1]
            when = dt.datetime.fromtimestamp(last.replayed_at, dt.UTC).isoformat(timespec="seconds")
            raise AlreadyReplayedError(
                f"letter {letter.id} was replayed as job {last.job_id} on {last.queue} at "
                f"{when}; pass force=True (`naq dlq replay --force`) to replay it again"
            )
        if letter.job is not None and letter.original_subject is None:
            base = letter.job
        else:
            try:
                base = decode_envelope(await self._reader.original(letter))
            except InvalidMessage as exc:
                raise NotReplayableError(
                    f"letter {letter.id}: its job's message is not readable ({exc.reason})"
                ) from None
        check_options(options)
        from naq_resilience.jetstream.client import _options

        queue = queue_name if queue_name is not None else base.queue
        merged = {name: getattr(base, name) for name in _OPTION_NAMES}
        merged.update(options)
        checked = _options(queue, *(merged[name] for name in _OPTION_NAMES))
        changed = [name for name in _OPTION_NAMES if name in options]
        updates: dict[str, Any] = {name: getattr(checked, name) for name in _OPTION_NAMES}
        if args is not None:
            updates["args"] = list(args)
            changed.append("args")
        if kwargs is not None:
            updates["kwargs"] = dict(kwargs)
            changed.append("kwargs")
        if queue != base.queue:
            changed.append("queue")
        envelope = msgspec.structs.replace(
            base,
            id=replay_id(letter.id, len(letter.replays) + 1),
            queue=queue,
            enqueued_at=time.time(),
            replay_of=letter.id,
            **updates,
        )
        return envelope, changed

    def payload(self, envelope: JobEnvelope) -> tuple[JobEnvelope, bytes]:
        fmt = self._client._job_format()
        try:
            return envelope, encode(envelope, fmt)
        except (TypeError, msgspec.EncodeError, OverflowError):
            envelope = msgspec.structs.replace(envelope, exceptions=True)
            return envelope, encode_with_exceptions(envelope, fmt)

    async def replay(
        self,
        stored: StoredLetter,
        *,
        queue_name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        at: float | None = None,
        force: bool = False,
        **options: Any,
    ) -> Job:
        envelope, changed = await self.envelope(
            stored, queue_name=queue_name, args=args, kwargs=kwargs, options=options, force=force
        )
        envelope, payload = self.payload(envelope)
        js, _ = await self._client._ready()
        if await read_job(js, envelope.id) is None:
            job = await self._store(envelope, payload, at)
        else:  # stored by a replay that died before it marked the letter: mark it now
            job = self._client._job(envelope, 0)
        await self._mark(stored, ReplayRecord(
            job_id=envelope.id, queue=envelope.queue, replayed_at=time.time(),
            scheduled_for=at, changed=changed,
        ))  # fmt: skip
        return job

    async def _store(self, envelope: JobEnvelope, payload: bytes, at: float | None) -> Job:
        if at is not None:
            from naq_resilience.jetstream.schedules import schedule_envelope

            return await schedule_envelope(self._client, envelope, payload, at)
        return await self._client._store_envelope(envelope, payload)

    async def _mark(self, stored: StoredLetter, replay: ReplayRecord) -> None:
        """Rewrite the letter with `replay`, only over the version that was read; a
        letter changed meanwhile is read again and marked if the replay is not there."""
        await self._client._ready()
        publisher = self._client._publisher
        assert publisher is not None
        for _ in range(5):
            letter = stored.letter
            if any(r.job_id == replay.job_id for r in letter.replays):
                return
            marked = msgspec.structs.replace(letter, replays=[*letter.replays, replay])
            payload = _fitted(marked, publisher.max_payload - 96)
            headers = {"Nats-Expected-Last-Subject-Sequence": str(stored.sequence)}
            ttl = None
            if stored.ttl is not None:
                ttl = stored.ttl - (time.time() - stored.stored_at)
                if ttl < 1:
                    return  # it expires now anyway: the new job is stored, which is what counts
            try:
                await publisher.store(stored.subject, payload, headers, ttl)
                return
            except APIError as exc:
                if exc.err_code != _WRONG_LAST_SEQUENCE:
                    raise
            try:
                stored = await self._reader.find(stored.letter.id, stored.letter.dead_letter_queue)
            except DeadLetterNotFoundError:
                return  # discarded meanwhile: nothing left to mark


def _fitted(letter: DeadLetter, budget: int) -> bytes:
    """The letter with its replays, its oldest failures left out if it no longer fits."""
    payload = encode(letter)
    while len(payload) > budget and letter.failures:
        letter = msgspec.structs.replace(
            letter,
            failures=letter.failures[1:],
            failures_left_out=letter.failures_left_out + 1,
            cut=sorted({*letter.cut, "oldest failure records left out to record a replay"}),
        )
        payload = encode(letter)
    return payload


class _Rate:
    """At most `per_second` starts a second, evenly spaced (None: no limit)."""

    def __init__(self, per_second: float | None) -> None:
        if per_second is not None and (
            isinstance(per_second, bool)
            or not isinstance(per_second, (int, float))
            or not per_second > 0
        ):
            raise ValueError(
                f"rate must be a number of letters a second > 0, or None, got {per_second!r}"
            )
        self._gap = 0.0 if per_second is None else 1.0 / per_second
        self._next = time.monotonic()

    async def wait(self) -> None:
        if not self._gap:
            return
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(self._next, now) + self._gap


Progress = Callable[[int, int], None]


async def replay_many(
    reader: Reader,
    replayer: Replayer,
    flt: DeadLetterFilter,
    *,
    rate: float | None,
    concurrency: int,
    progress: Progress | None,
    force: bool,
    queue_name: str | None,
    options: dict[str, Any],
) -> ReplayReport:
    """Replay every letter `flt` names, at most `rate` a second, `concurrency` at a time."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
    check_options(options)
    report = ReplayReport()
    started = time.monotonic()
    limiter = _Rate(rate)
    slots = asyncio.Semaphore(concurrency)
    total = await reader.count(flt) if progress is not None else 0
    done = 0
    failures: list[BaseException] = []

    async def one(stored: StoredLetter) -> None:
        nonlocal done
        try:
            job = await replayer.replay(stored, queue_name=queue_name, force=force, **options)
            report.replayed.append((stored.letter.id, job.job_id))
        except (NotReplayableError, AlreadyReplayedError) as exc:
            report.skipped.append((stored.letter.id, str(exc)))
        except Exception as exc:
            failures.append(exc)
        finally:
            slots.release()
            done += 1
            if progress is not None:
                progress(done, max(total, done))

    tasks: set[asyncio.Task[None]] = set()
    async for _, batch in reader.scan(flt):
        for stored in batch:
            if failures:
                break
            await slots.acquire()
            await limiter.wait()
            task = asyncio.create_task(one(stored))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if failures:
            break
    if tasks:
        await asyncio.gather(*tasks)
    report.seconds = time.monotonic() - started
    if failures:
        raise RuntimeError(
            f"bulk replay stopped after {len(report.replayed)} letters: {failures[0]!r} "
            "(the letters replayed so far are marked; run it again to go on)"
        ) from failures[0]
    return report


# --------------------------------------------------------------------- archive, discard, purge


def archive_line(stored: StoredLetter, original: bytes | None) -> bytes:
    """One line of an archive: the letter as stored, where it was, and its job's
    message when that was kept beside it (base64)."""
    line: dict[str, Any] = {
        "subject": stored.subject,
        "sequence": stored.sequence,
        "stored_at": stored.stored_at,
        "letter": msgspec.to_builtins(stored.letter),
    }
    if original is not None:
        line["original"] = base64.b64encode(original).decode()
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


async def remove(client: Client, letters: Iterable[StoredLetter], concurrency: int = 64) -> int:
    """Delete exactly these stored letters (by stream sequence: a letter rewritten since
    it was read is left), and the job messages kept beside them."""
    from naq_resilience.jetstream.schedules import purge_messages

    js, _ = await client._ready()
    slots = asyncio.Semaphore(concurrency)

    async def one(stored: StoredLetter) -> int:
        async with slots:
            try:
                await js.delete_msg(layout.DEAD_STREAM, stored.sequence)
            except (NotFoundError, APIError):
                return 0  # gone already, or rewritten (replayed) since it was read
            if stored.letter.original_subject:
                await purge_messages(client, layout.DEAD_STREAM, stored.letter.original_subject)
            return 1

    return sum(await asyncio.gather(*(one(s) for s in letters)))


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...


async def write_archive(
    reader: Reader, flt: DeadLetterFilter, out: Writable, progress: Progress | None
) -> list[StoredLetter]:
    """Every letter `flt` names as JSON Lines into `out`; the letters written."""
    total = await reader.count(flt) if progress is not None else 0
    written: list[StoredLetter] = []
    async for _, batch in reader.scan(flt):
        for stored in batch:
            original = None
            if stored.letter.original_subject:
                try:
                    original = await reader.original(stored.letter)
                except NotReplayableError:
                    original = None
            out.write(archive_line(stored, original))
            written.append(stored)
        out.flush()
        if progress is not None:
            progress(len(written), max(total, len(written)))
    return written
