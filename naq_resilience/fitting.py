"""Records cut to fit: a failure path must never fail because of its own size.

A NATS server refuses a message (headers included) above its `max_payload`, 1 MiB by
default, and refusing it closes the connection. The records of a failure path carry
what the failing code produced: an error message of 2 MB, a traceback through a
recursion, a job whose arguments were already close to the limit, forty retries of
history. So every record is bounded before it is encoded for the wire:

- a failure record keeps the head of the message (4 KiB), the head and tail of the
  traceback (16 KiB: the tail holds the frame that raised), and at most 64 KiB in all;
- a dead letter keeps, in this order of sacrifice, the newest failure records (older
  ones stay in `NAQ_FAILURES`), the job's message (moved verbatim to a message of its
  own when it is what makes the letter too big), then shorter texts, then a last
  minimal letter that always fits;
- a text that was cut says so inside itself, and how long it was.

The common case pays one `len()` comparison per record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

from naq_resilience.models import DeadLetter, FailureRecord

__all__ = [
    "MESSAGE_LIMIT",
    "RECORD_LIMIT",
    "TRACEBACK_LIMIT",
    "cut_text",
    "fit_dead_letter",
    "fit_failure",
    "headers_size",
]

MESSAGE_LIMIT: Final = 4096
"""Characters of an error message kept in a failure record, a result or a reason."""
TRACEBACK_LIMIT: Final = 16384
"""Characters of a traceback kept in a failure record (a quarter head, the rest tail)."""
RECORD_LIMIT: Final = 64 * 1024
"""Bytes a failure record may take once encoded."""
_SHORT_MESSAGE: Final = 512
_SHORT_TRACEBACK: Final = 2048
_CONTEXT_VALUE_LIMIT: Final = 256
_MINIMAL_REASON: Final = 1024
_MINIMAL_JOB: Final = 4096

Encode = Callable[[Any], bytes]


def cut_text(text: str, limit: int, *, tail: int = 0) -> str:
    """`text`, or its first characters (and its last `tail`) with a note of the cut.

    The result is at most `limit` characters plus the note (under 80).
    """
    size = len(text)
    if size <= limit:
        return text
    tail = min(tail, limit)
    head = limit - tail
    note = f"\n... [cut: {size - limit:,} of {size:,} characters left out] ...\n"
    return f"{text[:head]}{note}{text[size - tail :] if tail else ''}"


def headers_size(headers: dict[str, str] | None) -> int:
    """Bytes the headers take on the wire (`NATS/1.0` block), as the server counts them.

    On every publish with headers, so a plain loop: ASCII (every header we write) is
    one byte a character, and only other text is encoded to be counted.
    """
    if not headers:
        return 0
    size = 12  # "NATS/1.0\r\n" before the headers, "\r\n" after them
    for key, value in headers.items():
        size += 4  # ": " and "\r\n"
        size += len(key) if key.isascii() else len(key.encode())
        size += len(value) if value.isascii() else len(value.encode())
    return size


def fit_failure(
    record: FailureRecord, encode: Encode, limit: int = RECORD_LIMIT
) -> tuple[FailureRecord, bytes]:
    """The record as kept and encoded within `limit` bytes: texts cut, then its context.

    The common case, nothing too long, costs one encode and two length checks.
    """
    cut: list[str] = []
    message, tb = record.message, record.traceback
    if len(message) > MESSAGE_LIMIT:
        message = cut_text(message, MESSAGE_LIMIT)
        cut.append("message")
    if len(tb) > TRACEBACK_LIMIT:
        tb = cut_text(tb, TRACEBACK_LIMIT, tail=TRACEBACK_LIMIT * 3 // 4)
        cut.append("traceback")
    if cut:
        record = msgspec.structs.replace(record, message=message, traceback=tb, cut=cut)
    payload = _encoded(record, encode)
    if payload is not None and len(payload) <= limit:
        return record, payload
    record = _shrink_context(record)
    payload = encode(record)
    if len(payload) <= limit:
        return record, payload
    record = _shorten(record)
    return record, encode(record)


def _encoded(record: FailureRecord, encode: Encode) -> bytes | None:
    try:
        return encode(record)
    except (TypeError, msgspec.EncodeError, OverflowError, RecursionError, ValueError):
        return None  # a context value no encoder takes, or one nested a thousand deep


def _shrink_context(record: FailureRecord) -> FailureRecord:
    context = {
        cut_text(str(key), _CONTEXT_VALUE_LIMIT): _short_value(value)
        for key, value in list(record.context.items())[:64]
    }
    return msgspec.structs.replace(record, context=context, cut=[*record.cut, "context"])


def _short_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else _safe_repr(value)
    return cut_text(text, _CONTEXT_VALUE_LIMIT)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a repr that raises must not fail the failure path
        return f"<{type(value).__name__}: repr() raised {type(exc).__name__}>"


def _shorten(record: FailureRecord) -> FailureRecord:
    """A record small enough to keep many of in one dead letter."""
    cut = list(dict.fromkeys([*record.cut, "message", "traceback"]))
    return msgspec.structs.replace(
        record,
        message=cut_text(record.message, _SHORT_MESSAGE),
        traceback=cut_text(record.traceback, _SHORT_TRACEBACK, tail=_SHORT_TRACEBACK * 3 // 4),
        context={} if len(record.context) > 16 else record.context,
        cut=cut,
    )


def fit_dead_letter(
    letter: DeadLetter,
    encode: Encode,
    budget: int,
    original: bytes | None,
    original_subject: str,
) -> tuple[bytes, bool]:
    """The letter encoded within `budget` bytes, and whether `original` must be kept
    verbatim on `original_subject` (then the letter points there).

    `original` is the job message's bytes: what `job` or `raw` carries in decoded form.
    """
    payload = encode(letter)
    if len(payload) <= budget:
        return payload, False
    moved = False
    cut = list(letter.cut)
    # The job's message is moved out first when it is a big part of the problem: it is
    # kept whole that way, while history is only ever trimmed.
    if original is not None and len(original) > budget // 4:
        letter, moved = _move_original(letter, original, original_subject, cut), True
        payload = encode(letter)
        if len(payload) <= budget:
            return payload, moved
    letter, payload = _drop_old_failures(letter, encode, budget, cut)
    if len(payload) <= budget:
        return payload, moved
    if original is not None and not moved:
        letter, moved = _move_original(letter, original, original_subject, cut), True
        payload = encode(letter)
        if len(payload) <= budget:
            return payload, moved
    letter = msgspec.structs.replace(
        letter,
        reason=cut_text(letter.reason, MESSAGE_LIMIT),
        failures=[_shorten(f) for f in letter.failures],
        cut=[*cut, "the failure records' messages and tracebacks were shortened"],
    )
    payload = encode(letter)
    if len(payload) <= budget:
        return payload, moved
    return encode(_minimal(letter, encode, original, original_subject, moved)), moved


def _move_original(
    letter: DeadLetter, original: bytes, subject: str, cut: list[str]
) -> DeadLetter:
    cut.append(
        f"the job's message ({len(original):,} bytes) did not fit in this record; it is "
        f"kept verbatim at {subject}"
    )
    job = letter.job
    if job is not None:
        job = msgspec.structs.replace(job, args=[], kwargs={})
    return msgspec.structs.replace(
        letter, job=job, raw=None, original_subject=subject, cut=list(cut)
    )


def _drop_old_failures(
    letter: DeadLetter, encode: Encode, budget: int, cut: list[str]
) -> tuple[DeadLetter, bytes]:
    """Keep the newest failure records that fit (always the last one)."""
    failures = letter.failures
    if len(failures) <= 1:
        return letter, encode(letter)
    sizes = [len(encode(f)) + 1 for f in failures]
    base = len(encode(msgspec.structs.replace(letter, failures=[failures[-1]])))
    room = budget - base - 200  # the note and the count
    keep = 1
    for size in reversed(sizes[:-1]):
        if size > room:
            break
        room -= size
        keep += 1
    dropped = len(failures) - keep
    if dropped:
        cut.append(
            f"the {dropped} oldest failure records were left out (they stay in NAQ_FAILURES "
            "until it expires them)"
        )
    letter = msgspec.structs.replace(
        letter,
        failures=failures[len(failures) - keep :],
        failures_left_out=letter.failures_left_out + dropped,
        cut=list(cut),
    )
    return letter, encode(letter)


def _minimal(
    letter: DeadLetter, encode: Encode, original: bytes | None, subject: str, moved: bool
) -> DeadLetter:
    """The last resort: why, where, which job; always a few kilobytes at most."""
    job = letter.job
    if job is not None:
        job = msgspec.structs.replace(job, args=[], kwargs={}, retry_on=None, ignore_on=None)
        if len(encode(job)) > _MINIMAL_JOB:  # a hostile envelope: a huge function name
            job = None
    return DeadLetter(
        reason=cut_text(letter.reason, _MINIMAL_REASON),
        queue=letter.queue,
        dead_letter_queue=letter.dead_letter_queue,
        dead_at=letter.dead_at,
        job=job,
        failures_left_out=letter.failures_left_out + len(letter.failures),
        original_subject=subject if moved else None,
        cut=[
            "everything but the reason and the job's identity was left out to fit "
            f"max_payload ({len(original or b''):,} bytes of job message"
            f"{', kept verbatim at ' + subject if moved else ''})"
        ],
    )
