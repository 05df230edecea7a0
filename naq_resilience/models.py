"""Everything that crosses a wire or a disk, as msgspec Structs.

These Structs are the schema: docs/wire-format.md is generated from them, and any
language with a JSON library can produce or read them. Every record carries `version`
so a reader can refuse what it does not understand instead of guessing. Fields that
are usually absent are omitted from the encoding (`omit_defaults`), which keeps a
no-option job envelope around 120 bytes.

Exception classes are named `module:qualname`; functions likewise. Nothing here is
ever pickled.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import msgspec

__all__ = [
    "ENVELOPE_VERSION",
    "BreakerRecord",
    "DeadLetter",
    "FailureRecord",
    "JobEnvelope",
    "JobResult",
    "JobStatus",
    "SagaLogRecord",
]

ENVELOPE_VERSION: Final = 1


class JobEnvelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A job on the wire: which registered function, with what, and its per-job policy.

    The policy fields override the function's decorator policy for this one job;
    absent means "as decorated".
    """

    version: int = ENVELOPE_VERSION
    id: str
    function: str
    queue: str = "default"
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    enqueued_at: float = 0.0
    max_retries: int | None = None
    retry_delay: float | list[float] | None = None
    retry_strategy: str | list[float] | None = None
    retry_on: list[str] | None = None
    ignore_on: list[str] | None = None
    dead_letter_queue: str | None = None
    dead_letter_ttl: float | None = None
    timeout: float | None = None
    result_ttl: float | None = None


class FailureRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One failed attempt, as a person reads it and a program parses it."""

    version: int = 1
    job_id: str
    function: str
    queue: str
    attempt: int
    max_attempts: int
    error_type: str
    message: str
    traceback: str = ""
    classification: str
    outcome: str
    """What happens next: "retry", "dead" or "deferred"."""
    injected: bool = False
    worker_id: str = ""
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    failed_at: float = 0.0
    duration: float = 0.0
    context: dict[str, Any] = {}
    next_retry_at: float | None = None


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A job that will not be tried again, with everything needed to understand or replay it.

    `job` is absent when the message could not be decoded; `raw` then holds its
    bytes (base64 in JSON) so nothing is lost.
    """

    version: int = 1
    reason: str
    queue: str
    dead_letter_queue: str
    dead_at: float
    job: JobEnvelope | None = None
    raw: bytes | None = None
    failures: list[FailureRecord] = []


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    """In the job stream: waiting, running, or waiting for a scheduled retry."""
    COMPLETED = "completed"
    DEAD = "dead"
    """In its dead-letter queue: failed for good."""
    FINISHED = "finished"
    """Left the queue and is not a dead letter; completed, unless its dead letter
    already expired. Enqueue with `result_ttl` to know for sure."""


class JobResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a job with `result_ttl` left in the results bucket."""

    version: int = 1
    job_id: str
    status: JobStatus
    result: Any = None
    error: str | None = None
    finished_at: float = 0.0


class BreakerRecord(msgspec.Struct, kw_only=True):
    """A circuit breaker's shared state; `opened_at` is wall-clock (unix) time."""

    version: int = 1
    name: str
    state: str
    failures: int
    successes: int
    opened_at: float | None
    generation: int
    updated_by: str = ""


class SagaLogRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A running job's compensation log: the steps it completed, to undo after a crash."""

    version: int = 1
    job_id: str
    actions: list[dict[str, Any]] = []
