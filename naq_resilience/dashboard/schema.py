"""What the JSON API takes and answers, as msgspec structs: the same types encode the
responses, decode the requests and generate the OpenAPI schema, so the description
cannot drift from what is served."""

from __future__ import annotations

from typing import Any

import msgspec

from naq_resilience.dashboard.sampler import Sample
from naq_resilience.jetstream.deadletters import (
    CLASSIFICATIONS,
    DeadLetterFilter,
    letter_classification,
)
from naq_resilience.models import DeadLetter, FailureRecord

__all__ = [
    "FILTER_FIELDS",
    "BulkRequest",
    "BulkResult",
    "Count",
    "DeadLetterDetail",
    "DeadLetterList",
    "DeadLetterRow",
    "Done",
    "FilterBody",
    "JobRef",
    "NameRequest",
    "ReplayRequest",
    "RescheduleRequest",
    "Throughput",
    "dead_letter_filter",
    "filter_body",
    "row",
]

FILTER_FIELDS = (
    "dead_letter_queue", "queue", "function", "error_type", "classification", "text",
    "since", "until", "replayed",
)  # fmt: skip
"""The query parameters (and `filter` keys) naming dead letters: `DeadLetterFilter`'s."""


class FilterBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`DeadLetterFilter` as JSON; `since` and `until` are unix seconds."""

    dead_letter_queue: str | None = None
    queue: str | None = None
    function: str | None = None
    error_type: str | None = None
    classification: str | None = None
    text: str | None = None
    since: float | None = None
    until: float | None = None
    replayed: bool | None = None


def dead_letter_filter(given: dict[str, Any]) -> DeadLetterFilter:
    """A filter from query parameters or a `FilterBody`; empty values are no filter.

    Raises ValueError (with the library's own message) on a bad value.
    """
    values: dict[str, Any] = {}
    for name in FILTER_FIELDS:
        value = given.get(name)
        if value is None or value == "":
            continue
        if name in ("since", "until") and isinstance(value, str):
            from naq_resilience.cli._common import parse_time

            try:
                value = parse_time(value)
            except Exception as exc:
                raise ValueError(f"{name}: {exc}") from None
        if name == "replayed" and isinstance(value, str):
            if value not in ("true", "false", "yes", "no"):
                raise ValueError(f"replayed must be true or false, got {value!r}")
            value = value in ("true", "yes")
        values[name] = value
    if values.get("classification") not in (None, *CLASSIFICATIONS):
        raise ValueError(
            f"classification must be one of {', '.join(CLASSIFICATIONS)}, got "
            f"{values['classification']!r}"
        )
    return DeadLetterFilter(**values)


def filter_body(flt: DeadLetterFilter) -> FilterBody:
    """The filter as JSON, its times as unix seconds (a "2h" read once, not again)."""
    return FilterBody(
        dead_letter_queue=flt.dead_letter_queue, queue=flt.queue, function=flt.function,
        error_type=flt.error_type, classification=flt.classification, text=flt.text,
        since=flt._since, until=flt._until, replayed=flt.replayed,
    )  # fmt: skip


class DeadLetterRow(msgspec.Struct, kw_only=True):
    """A dead letter as a list shows it."""

    id: str
    sequence: int
    queue: str
    dead_letter_queue: str
    function: str
    error_type: str | None
    classification: str
    message: str
    dead_at: float
    attempts: int
    replays: int


def row(letter: DeadLetter, sequence: int) -> DeadLetterRow:
    last = letter.failures[-1] if letter.failures else None
    return DeadLetterRow(
        id=letter.id, sequence=sequence, queue=letter.queue,
        dead_letter_queue=letter.dead_letter_queue,
        function=letter.job.function if letter.job is not None else "",
        error_type=last.error_type if last is not None else letter.error_type,
        classification=letter_classification(letter),
        message=last.message if last is not None else letter.reason,
        dead_at=letter.dead_at, attempts=len(letter.failures) + letter.failures_left_out,
        replays=len(letter.replays),
    )  # fmt: skip


class DeadLetterList(msgspec.Struct, kw_only=True):
    """One page, oldest first. Pass `next_after` as `after` for the next (null: last)."""

    letters: list[DeadLetterRow]
    next_after: int | None
    scanned: int
    """Letters read to fill the page; the filters skipped the others."""
    total: int | None
    """How many letters the filter names, when the server counts them in one request
    (a filter on the dead-letter queue and `since` only); null otherwise."""
    stopped_short: bool = False
    """The page stopped after reading its share of letters (a rare filter), before
    it was full: `next_after` goes on from there."""


class DeadLetterDetail(msgspec.Struct, kw_only=True):
    """A dead letter, with every failed attempt of its job and a first opinion."""

    letter: DeadLetter
    classification: str
    analysis: str
    """`analyze_failure`: transient_error, data_issue, system_issue or unknown."""
    history: list[FailureRecord]


class ReplayRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    force: bool = False
    """Replay a letter replayed before."""
    queue_name: str | None = None
    """Run it on this queue instead of its own."""


class RescheduleRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    delay: float | None = None
    """Seconds from now; or give `at`."""
    at: float | None = None
    """Unix seconds."""
    force: bool = False


class BulkRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Letters by id, or every letter a filter names; one of them."""

    ids: list[str] | None = None
    filter: FilterBody | None = None
    force: bool = False
    """Replay letters replayed before (replay only)."""


class BulkResult(msgspec.Struct, kw_only=True):
    done: int
    """Letters replayed (or discarded)."""
    jobs: list[JobRef] = []
    """The new jobs (replay)."""
    skipped: list[list[str]] = []
    """[letter id, why] for each letter not replayed."""


class JobRef(msgspec.Struct, kw_only=True):
    job_id: str
    queue: str
    scheduled_for: float | None = None


class NameRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str


class Count(msgspec.Struct, kw_only=True):
    count: int


class Done(msgspec.Struct, kw_only=True):
    ok: bool
    """False when there was nothing by that name."""


class Throughput(msgspec.Struct, kw_only=True):
    every: float
    """Seconds between samples."""
    samples: list[Sample]
