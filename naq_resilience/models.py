"""Everything that crosses a wire or a disk, as msgspec Structs.

These Structs are the schema: docs/wire-format.md is generated from them, and any
language with a JSON library can produce or read them. Every record carries `version`
so a reader can refuse what it does not understand instead of guessing. Fields that
are usually absent are omitted from the encoding (`omit_defaults`), which keeps a
no-option job envelope around 140 bytes.

Exception classes are named `module:qualname`; functions likewise. Nothing here is
ever pickled.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

import msgspec

from naq_resilience.policies.delays import STRATEGIES

__all__ = [
    "Alert",
    "BreakerRecord",
    "DeadLetter",
    "ENVELOPE_VERSION",
    "EXCEPTION_TAG",
    "EXCEPTION_TAG_FIELD",
    "ExceptionRecord",
    "FailureRecord",
    "Incident",
    "IncidentStatus",
    "JobEnvelope",
    "JobRecord",
    "JobResult",
    "JobStatus",
    "Ledger",
    "LogRecord",
    "MonitorLease",
    "PatternRecord",
    "ReplayRecord",
    "RuleState",
    "SagaLogRecord",
    "ScheduleRecord",
    "Severity",
    "WorkerInfo",
]

ENVELOPE_VERSION: Final = 1
EXCEPTION_TAG_FIELD: Final = "$naq"
EXCEPTION_TAG: Final = "exception"

# What a worker would choke on is refused when the envelope is decoded (it becomes a
# dead letter with the reason), not half-way through handling the job: an id or a
# dead-letter queue becomes NATS subject tokens, and the retry options build a schedule.
_TOKEN = "[A-Za-z0-9_-]{1,128}"
JobId = Annotated[str, msgspec.Meta(pattern=f"^{_TOKEN}$")]
DeadLetterQueueName = Annotated[str, msgspec.Meta(pattern=f"^{_TOKEN}([.]{_TOKEN})?$")]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
Delays = Annotated[list[Seconds], msgspec.Meta(min_length=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
StrategyName = Annotated[str, msgspec.Meta(pattern=f"^({'|'.join(STRATEGIES)})$")]


def _written(version: int) -> Any:
    """A `version` field that is always encoded, and read as `version` when absent.

    A plain default would be left out of every encoding by `omit_defaults`; then the
    day the default moved to 2, a version-2 record would reach a version-1 reader
    without a version, and be read as version 1.
    """
    return msgspec.field(default_factory=lambda: version)


class JobEnvelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A job on the wire: which registered function, with what, and its per-job policy.

    Published to `naq.jobs.<queue>`. The policy fields override the function's
    decorator policy for this one job; absent means "as decorated".
    """

    version: int = _written(ENVELOPE_VERSION)
    """Envelope format version. A worker dead-letters an envelope of a version it does
    not read (with the reason and the raw bytes) instead of guessing."""
    id: JobId
    """The job's id, unique per job (the Python client writes 32 hex digits). It
    becomes a subject token and a KV key (`naq.dead.<dead_letter_queue>.<id>`,
    `naq-results` key), hence 1-128 letters, digits, `-` or `_`."""
    function: str
    """The registered name of the function to run, `module:qualname` (e.g.
    `billing.jobs:charge`). A worker runs it only if it was told to import `module`
    (or registered the function itself), and imports nothing for it. A worker that
    does not import `module`, or whose version of it lacks `qualname`, hands the job
    back for another worker (not an attempt); when none took it for the worker's
    `unroutable_after` (300 s), it is dead-lettered as unroutable. A name no worker
    importing `module` would run (not `module:qualname`, private, not a function) is
    dead-lettered at once."""
    queue: str = "default"
    """The queue the job was published to. Informational: a worker takes the queue
    from the subject (`naq.jobs.<queue>`), which wins if the two differ."""
    args: list[Any] = []
    """Positional arguments as JSON values. The worker converts each to the type the
    function's parameter is annotated with (an RFC 3339 string to a `datetime`, an
    array to a `tuple`, an object to a dataclass or Struct); a value that does not
    convert fails the job as a non-retryable `DataValidationError`. An exception is
    sent as an `ExceptionRecord` (see `exceptions`)."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments, converted like `args`."""
    exceptions: bool = False
    """True when `args` or `kwargs` hold exceptions, each an `ExceptionRecord` (an
    object whose `$naq` is `"exception"`, at any depth). Only then does a worker look
    for them and rebuild each as its exception; otherwise every object is plain data."""
    enqueued_at: float = 0.0
    """When the job was enqueued, unix time in seconds; 0 when unknown."""
    max_retries: Count | None = None
    """Retries after the first attempt, so at most `max_retries + 1` attempts. Absent:
    the function's `@retry` policy, or no retry for a function without one."""
    retry_delay: Seconds | Delays | None = None
    """Base delay in seconds for `retry_strategy`, or the list of delays before retry
    1, 2, ... (the last one repeats). Absent: the function's `@retry` schedule (or
    1 s, exponential, full jitter, capped at 60 s)."""
    retry_strategy: StrategyName | Delays | None = None
    """How delays grow: "fixed", "linear", "exponential" or "fibonacci", or an
    explicit list of delays in seconds."""
    retry_on: list[str] | None = None
    """Exception types (`module:qualname`, e.g. `builtins:ConnectionError`) that are
    retried; any other failure is not. Matched against the error's class and its
    bases, by name: the worker imports nothing for it."""
    ignore_on: list[str] | None = None
    """Exception types (`module:qualname`) that are never retried, even if `retry_on`
    matches."""
    dead_letter_queue: DeadLetterQueueName | None = None
    """Where the job goes when it fails for good (a name with at most one `.`, like
    `emails.dead`); absent: `<queue>.dead`."""
    dead_letter_ttl: PositiveSeconds | None = None
    """Seconds its dead letter is kept (a NATS per-message TTL, rounded up to whole
    seconds); absent: kept until removed."""
    timeout: PositiveSeconds | None = None
    """Seconds one attempt may run before it fails with `TimeoutError` (retryable)."""
    result_ttl: PositiveSeconds | None = None
    """Keep a `JobResult` in the `naq-results` bucket for this many seconds (rounded up
    to whole seconds); absent: no result is kept."""
    replay_of: str | None = None
    """The id of the dead letter this job was replayed from (`naq dlq replay`); absent
    for a job enqueued afresh. The letter's `replays` names this job in return."""


class ExceptionRecord(
    msgspec.Struct,
    kw_only=True,
    omit_defaults=True,
    tag_field=EXCEPTION_TAG_FIELD,
    tag=EXCEPTION_TAG,
):
    """An exception passed as a job argument (`error=TimeoutError("Network timeout")`).

    Written by the client in place of the exception, wherever it is in `args` or
    `kwargs`, and the envelope's `exceptions` set. The worker rebuilds it as
    `type(*args)`, never by importing what a record names: the type must be a builtin
    exception (`builtins:TimeoutError`), one of naq-resilience's
    (`naq_resilience:RateLimitError`), or defined in a module the worker imports (its
    `--import` modules); any other record fails the job as a non-retryable
    `DataValidationError` saying why. Only `args` travel, so an exception whose other
    attributes `type(*args)` would not restore is refused at enqueue. Nothing is
    pickled.
    """

    version: int = _written(1)
    """Record format version."""
    type: str
    """The exception's class as `module:qualname`, e.g. `builtins:TimeoutError`."""
    args: list[Any] = []
    """What the class is called with (the exception's `args`): JSON values, or
    exception records themselves."""


class FailureRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One failed attempt, as a person reads it and a program parses it.

    Published to `naq.failures.<queue>.<job_id>` for every failed attempt. A deferral
    by an open circuit breaker is not a failure and writes no record. A record is at
    most 64 KiB: a longer message, traceback or context is cut, with a note in the text
    saying how much was left out, and named in `cut`.
    """

    version: int = _written(1)
    """Record format version."""
    job_id: str
    """The failed job's `JobEnvelope.id`."""
    function: str
    """The job's function, `module:qualname`."""
    queue: str
    """The queue the job was delivered from."""
    attempt: int
    """Which attempt failed, from 1. Only runs that ended in an error count: a delivery
    interrupted by a worker crash (`crashes`), a deferral by an open breaker, a job
    handed back at shutdown and one handed back by a worker that cannot route it (see
    `DeadLetter.error_type`) are not attempts."""
    max_attempts: int
    """The attempts this job has in all (`max_retries + 1`)."""
    error_type: str
    """The exception's class, `module:qualname` (e.g. `builtins:ConnectionError`)."""
    message: str
    """The exception's message (`str(exc)`)."""
    traceback: str = ""
    """The Python traceback, for people; do not parse it."""
    classification: str
    """How the error was classified: "retryable", "non_retryable" or "critical"."""
    outcome: str
    """What happens next: "retry" (redelivered at `next_retry_at`) or "dead" (this was
    the last attempt: a `DeadLetter` follows)."""
    injected: bool = False
    """True when the error was injected by `@chaos`, not a real fault."""
    worker_id: str = ""
    """The worker that ran the attempt (`host:pid:random` unless named)."""
    host: str = ""
    """The worker's host name."""
    pid: int = 0
    """The worker's process id."""
    started_at: float = 0.0
    """When the attempt started, unix time in seconds."""
    failed_at: float = 0.0
    """When the attempt failed, unix time in seconds."""
    duration: float = 0.0
    """Seconds the attempt ran."""
    context: dict[str, Any] = {}
    """Key/value context attached to the error (`error_context`, `EnrichedError`);
    values that are not JSON become their `repr`."""
    next_retry_at: float | None = None
    """When the job will be redelivered (unix time), if `outcome` is "retry"."""
    crashes: int = 0
    """Deliveries of this job so far that a worker crash interrupted (killed, out of
    memory, lost its connection) before the job ended."""
    cut: list[str] = []
    """Fields shortened to fit the record's size limit: "message", "traceback",
    "context"."""
    where: str = ""
    """Where the error was raised: the innermost frame of its traceback, as the file
    (relative to the `sys.path` entry it was imported from, `/`-separated) and the
    function's qualified name, e.g. `billing/jobs.py:charge`. No line number, so
    editing the file does not split an error pattern. Absent when the error has no
    traceback."""
    fingerprint: str = ""
    """The error pattern this failure belongs to: 16 hex digits of a BLAKE2b hash of
    `error_type` and `where`, so failures of one type raised in one place share it
    (`error_patterns` groups by it)."""


class ReplayRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One replay of a dead letter: the job it became."""

    job_id: str
    """The new job's id (its `replay_of` is the letter's id)."""
    queue: str
    """The queue the new job was put on."""
    replayed_at: float
    """When the new job was stored, unix time in seconds."""
    scheduled_for: float | None = None
    """When a rescheduled replay runs, unix time in seconds; absent: at once."""
    changed: list[str] = []
    """What the replay changed: "args", "kwargs", or the names of changed options."""


class PatternRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An error pattern as one worker saw it during one flush of its outcome counters.

    Published to `naq.patterns.<queue>.<fingerprint>.last` after every flush in which
    the worker saw the pattern (the stream keeps the latest), and once to
    `naq.patterns.<queue>.<fingerprint>.first` with `Nats-Expected-Last-Subject-Sequence:
    0`, so the first record written stays until it ages out. The counts themselves are
    in the counter streams (`e.<queue>.<fingerprint>` scopes).
    """

    version: int = _written(1)
    """Record format version."""
    fingerprint: str
    """The pattern, as in `FailureRecord.fingerprint`."""
    error_type: str
    """The exception's class, `module:qualname`."""
    where: str
    """Where it was raised, as in `FailureRecord.where`."""
    queue: str
    """The queue of the jobs that failed so."""
    function: str
    """The job function of the latest such failure, `module:qualname`."""
    message: str = ""
    """The head (at most 200 characters) of the latest such failure's message."""
    seen_at: float
    """When a failure of this pattern last happened (a `first` record: first
    happened) in the flush interval, unix time in seconds."""
    count: int = 0
    """Failed attempts of this pattern the worker counted in the interval."""
    job_ids: list[str] = []
    """Ids of the latest jobs (at most 5, newest first) that failed so in the interval."""


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A job that will not be tried again, with everything needed to understand or replay it.

    Published to `naq.dead.<dead_letter_queue>.<job_id>` (or `...seq-<n>`, after the
    stream sequence of a message that is not a readable job). The stream keeps one
    message per subject, so a job has one dead letter: a second write replaces it.
    `job` is absent when the message could not be decoded; `raw` then holds its bytes
    (base64 in JSON) so nothing is lost.

    A dead letter always fits the server's `max_payload`. When the job's message is too
    big to carry inside it, the message is kept verbatim, byte for byte, on
    `original_subject` (same stream, same TTL), `job` keeps the envelope without its
    `args` and `kwargs`, and `raw` is absent. When the failure history is too big, the
    oldest records are left out (`failures_left_out`; they stay in `NAQ_FAILURES` until
    it expires them). `cut` says, for a person, everything that was shortened.
    """

    version: int = _written(1)
    """Record format version."""
    reason: str
    """Why the job is dead, for a person: the last error, "out of attempts", or why the
    message could not be read or run. It starts with "unroutable:" when no worker that
    took the job could run its function within `unroutable_after` (see `error_type`)."""
    queue: str
    """The queue the job was delivered from."""
    dead_letter_queue: str
    """This dead-letter queue (e.g. `emails.dead`)."""
    dead_at: float
    """When the job was dead-lettered, unix time in seconds."""
    job: JobEnvelope | None = None
    """The job as it was enqueued; absent when the message was not a readable job."""
    raw: bytes | None = None
    """The message's bytes (base64 in JSON) when `job` is absent."""
    failures: list[FailureRecord] = []
    """Every failed attempt, oldest first (empty when the job never ran)."""
    failures_left_out: int = 0
    """How many of the oldest failure records were left out to fit `max_payload`."""
    original_subject: str | None = None
    """Where the job's message is kept verbatim when it did not fit in this record
    (`naq.originals.<dead_letter_queue>.<id>` in `NAQ_DEAD`); absent otherwise."""
    cut: list[str] = []
    """What was shortened or left out to fit `max_payload`, one sentence each."""
    letter_id: str = ""
    """The letter's id when `job` is absent: `seq-<n>` for a message that was not a
    readable job (after its sequence in the job stream, as in its subject), or the
    job's id in a last-resort letter. Absent otherwise: the job's id is the letter's."""
    replays: list[ReplayRecord] = []
    """Each time the letter was replayed (or rescheduled), oldest first. Written by
    rewriting the letter on its own subject once the new job is stored, so a letter
    with a replay was certainly replayed. Its TTL runs on from the first write."""

    error_type: str | None = None
    """What made the job dead, for a program, when a worker decided it rather than an
    error of the job: `naq_resilience:UnroutableJob` when every worker that took the job
    for `unroutable_after` seconds handed it back, unable to route it (its function's
    module not imported there, or without that function); `reason` then starts with
    "unroutable:" and names the function, the module and the fix, and `failures` holds
    the attempts it failed before, if any. Absent otherwise: the last of `failures`
    holds the error of a job that failed, and `reason` says why for any other letter."""

    @property
    def id(self) -> str:
        """The letter's id, as in its subject: the job's id, or `seq-<n>`."""
        return self.job.id if self.job is not None else self.letter_id


class JobStatus(enum.StrEnum):
    """Where a job is, as `Job.status()`, `get_job()` and the job history answer."""

    QUEUED = "queued"
    """Stored in the job stream, waiting for a worker."""
    SCHEDULED = "scheduled"
    """Waiting for its time (`enqueue_at`, `enqueue_in`, a schedule)."""
    RUNNING = "running"
    """A worker runs it (recorded once it has run for about a second)."""
    RETRYING = "retrying"
    """An attempt failed and the job waits to be delivered again at `next_retry_at`."""
    COMPLETED = "completed"
    """Ran and returned."""
    FAILED = "failed"
    """Failed for good: it is in its dead-letter queue."""
    DEAD = "dead"
    """What a `JobResult` of a job that failed for good says (its value since version
    1); `Job.status()` reports such a job as "failed"."""
    FINISHED = "finished"
    """Left the queue and is not a dead letter, and nothing else is recorded (its
    history expired, or it was enqueued by a producer that writes none): completed,
    unless its dead letter expired too."""


class JobRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A job's latest state, for its history: one per job, replaced at each change.

    Published to `naq.history.<job_id>` (stream `NAQ_HISTORY`, which keeps the newest
    record per job, for the history window): "queued" by the client once the job is
    stored, "running" by the worker once it has run for about a second, "retrying",
    "completed" or "failed" when the worker settles an attempt. Records are sent
    without waiting for an acknowledgement: history is for looking, not for deciding.
    """

    version: int = _written(1)
    """Record format version."""
    job_id: str
    """The job's `JobEnvelope.id`."""
    queue: str
    """The job's queue."""
    function: str
    """The job's function, `module:qualname`."""
    status: JobStatus
    """The job's state as of `updated_at`."""
    updated_at: float
    """When the job entered this state, unix time in seconds."""
    enqueued_at: float = 0.0
    """When the job was enqueued, unix time in seconds; 0 when unknown."""
    scheduled_for: float | None = None
    """When a scheduled job is due, unix time in seconds."""
    started_at: float | None = None
    """When its latest attempt started."""
    finished_at: float | None = None
    """When it completed or failed for good."""
    attempts: int = 0
    """Attempts run so far, the running one included; crashes, deferrals and hand-backs
    are not attempts."""
    worker_id: str = ""
    """The worker of the latest attempt."""
    error_type: str | None = None
    """The latest error's class, `module:qualname`, when an attempt failed;
    `naq_resilience:UnroutableJob` for a job dead-lettered as unroutable (no worker that
    took it could run its function)."""
    error: str | None = None
    """The head of the latest error's message (at most 512 characters)."""
    next_retry_at: float | None = None
    """When a retrying job will be delivered again, unix time in seconds."""
    dead_letter_queue: str | None = None
    """Where a failed job's dead letter is."""
    replay_of: str | None = None
    """The dead letter this job was replayed from, when it was."""


class JobResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a job with `result_ttl` left in the results bucket.

    The `naq-results` key is the job id; the entry expires after `result_ttl`.
    """

    version: int = _written(1)
    """Record format version."""
    job_id: str
    """The job's `JobEnvelope.id`."""
    status: JobStatus
    """"completed" or "dead" (failed for good)."""
    result: Any = None
    """The function's return value when completed (a value that cannot be encoded is
    not stored: `error` then says so)."""
    error: str | None = None
    """Why the job died, when dead: its last error as `module:qualname: message`, or
    the dead letter's reason when it never ran."""
    finished_at: float = 0.0
    """When the job completed or died, unix time in seconds."""


class BreakerRecord(msgspec.Struct, kw_only=True):
    """A circuit breaker's shared state, written at each transition by the worker making it.

    The `naq-breakers` key is the breaker's name with every character other than a
    letter, digit, `-`, `_`, `=` or `.` replaced by `_`.
    """

    version: int = _written(1)
    """Record format version."""
    name: str
    """The breaker's name: `name=` of `@circuit_breaker`, or the function's
    `module:qualname`."""
    state: str
    """"closed", "open" or "half_open"."""
    failures: int
    """The breaker's count of consecutive failures, as of this record."""
    successes: int
    """The breaker's count of successful half-open probes, as of this record."""
    opened_at: float | None
    """When the breaker opened, unix time in seconds; null unless open or half-open."""
    generation: int
    """Counts transitions; a reader ignores a record older than the state it has."""
    updated_by: str = ""
    """The worker id that wrote it (a worker ignores its own writes)."""


class WorkerInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A live worker, as `naq status` shows it: written by the worker every few seconds
    under its id in the `naq-workers` bucket, whose entries expire when they stop coming.
    """

    version: int = _written(1)
    """Record format version."""
    worker_id: str
    """The worker's id (`host:pid:random` unless named)."""
    host: str
    """The worker's host name."""
    pid: int
    """The worker's process id."""
    queues: list[str]
    """The queues it takes jobs from."""
    concurrency: int
    """How many jobs it runs at once at most."""
    started_at: float
    """When it started, unix time in seconds."""
    seen_at: float
    """When it wrote this record, unix time in seconds."""
    processed: int = 0
    """Jobs it completed since it started."""
    failed: int = 0
    """Attempts that failed since it started."""
    running: int = 0
    """Jobs running now."""
    library: str = ""
    """The naq-resilience version it runs."""
    stopping: bool = False
    """True once it was asked to stop and is finishing its jobs."""


class Ledger(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How a redelivered job's earlier deliveries ended, so a worker can tell a crash
    from a failure.

    The `naq-attempts` key is the job id. A worker writes it before every `nak` it
    sends (a retry, a deferral, a hand-back), so a redelivery it did not announce is a
    delivery a crash interrupted: JetStream's delivery count minus 1 minus `failed`,
    `deferred` and `handed_back`. Written only for jobs that are redelivered; expires
    after 7 days (each write starts the 7 days again).
    """

    version: int = _written(1)
    """Record format version."""
    failed: int = 0
    """Attempts that ended in an error and were retried."""
    deferred: int = 0
    """Deliveries deferred by an open circuit breaker (not attempts)."""
    handed_back: int = 0
    """Deliveries handed back unfinished: a worker shutting down, a full dead-letter
    stream, a worker that cannot route the job (`unroutable`) (not attempts)."""
    unroutable: int = 0
    """Of `handed_back`, the deliveries since `unroutable_since` that a worker handed
    back because it could not route the job: its function's module is not one the
    worker imports, or the worker's version of it has no such function."""
    unroutable_since: float | None = None
    """When a worker first handed the job back as unroutable, unix time in seconds;
    absent once a worker that can run it takes it. A worker that finds the job
    unroutable `unroutable_after` seconds (its own setting) after this dead-letters it
    as unroutable instead of handing it back again."""


class SagaLogRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A running job's compensation log: the steps it completed, to undo after a crash.

    The `naq-sagas` key is the job id; it is deleted when the job's saga ends.
    """

    version: int = _written(1)
    """Record format version."""
    job_id: str
    """The running job's `JobEnvelope.id`."""
    actions: list[dict[str, Any]] = []
    """The completed steps, oldest first, each an object with `step` (the step's
    `module:qualname` or `name=`), `args`, `kwargs`, `result` (values that are not
    JSON become their `repr`), `status` ("pending", "undone" or "failed") and
    `error` (why its undo failed, or null)."""


class ScheduleRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A scheduled job's definition, in the `Naq-Schedule` header of every schedule message.

    A schedule is one or more messages on `naq.schedules.<queue>.<id>.<run>` in
    `NAQ_SCHEDULES`, each a `JobEnvelope` with ADR-51 headers: run 0 carries a repeating
    schedule (`Nats-Schedule: @every ...` or a cron) or, without `Nats-Schedule`, a paused
    one; runs 1, 2, ... of a counted schedule each carry `@at <time>` and fire once. The
    server copies this header into every job it fires, so a worker or a monitor can tell
    which schedule a job came from.
    """

    version: int = _written(1)
    """Record format version."""
    id: JobId
    """The schedule's id (the `job_id` that `enqueue_at` and `schedule` return)."""
    queue: str
    """The queue its jobs are published to."""
    function: str
    """The job's function, `module:qualname`."""
    cron: str | None = None
    """A 6-field cron expression with seconds (`*/5 * * * * *`), or a name like
    `@hourly`; absent for an interval or a single run."""
    interval: PositiveSeconds | None = None
    """Seconds between runs; absent for a cron or a single run."""
    time_zone: str | None = None
    """The IANA zone the cron expression is read in (e.g. `Europe/Amsterdam`); absent: UTC."""
    run: Count = 0
    """The run this message fires: 1, 2, ... for a counted schedule (its job id is
    `<id>-r<run>`, or `<id>` for a single run), 0 for a schedule that repeats until
    cancelled (each job's id is `<id>-t<unix time of the run after it>`) or, paused,
    the next run it will fire."""
    last_run: Count | None = None
    """The number of a counted schedule's last run; absent: it repeats until cancelled."""
    at: float | None = None
    """When this message fires, unix time in seconds (counted schedules only)."""
    paused: bool = False
    """True for a paused schedule's message, which has no `Nats-Schedule` and fires nothing."""
    created_at: float = 0.0
    """When the schedule was created, unix time in seconds."""


class LogRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One log line of a worker process, as `naq worker-logs` shows it.

    Published by each worker, without waiting for an acknowledgement, to
    `naq.logs.<level>.<worker>.<queue>.<job_id>` (stream `NAQ_LOGS`, which keeps them
    for a day or 256 MiB by default, the oldest going first): `<level>` is `debug`,
    `info`, `warning`, `error` or `critical`, `<worker>` the `worker_id` with every
    character other than a letter, digit, `-`, `_`, `:` or `=` replaced by `_`, and
    `<queue>` and `<job_id>` are `-` for a line logged outside a job. So a reader
    filters by level, worker, queue or job on the server, with subject wildcards.

    A worker publishes the records that reach its process's root logger at the level
    it logs at, including those of the job code's own `logging` calls; at most 50 a
    second of DEBUG and INFO, and apart from those 50 a second of WARNING and above,
    in bursts of up to 500. What it sheds is counted in a record of its own (`dropped`).
    A message, traceback or field longer than a record takes is cut, saying so, and
    named in `cut`.
    """

    version: int = _written(1)
    """Record format version."""
    time: float
    """When the line was logged, unix time in seconds."""
    level: str
    """The level's name (`WARNING`; a custom level's own name)."""
    levelno: int
    """The level's number (10 DEBUG, 20 INFO, 30 WARNING, 40 ERROR, 50 CRITICAL)."""
    logger: str
    """The logger's name (`naq_resilience.worker`, `myapp.billing`)."""
    message: str
    """The message, its arguments filled in."""
    worker_id: str
    """The worker that published it (`host:pid:random` unless named)."""
    host: str = ""
    """The worker's host name."""
    pid: int = 0
    """The worker's process id."""
    job_id: str | None = None
    """The job the line was logged in (by the job's code or the worker about it)."""
    function: str | None = None
    """That job's function, `module:qualname`."""
    queue: str | None = None
    """That job's queue."""
    attempt: int | None = None
    """That job's attempt, from 1."""
    error_type: str | None = None
    """The error the line reports, `module:qualname`: its exception's, or the failed
    attempt's."""
    traceback: str | None = None
    """The exception's traceback, for people; do not parse it."""
    fields: dict[str, Any] = {}
    """Every other field of the record (`extra=`, structlog's key-values, the worker's
    `max_attempts`, `next_retry_at`, `error_message`, ...); values that are not JSON
    become their `repr`."""
    dropped: int = 0
    """In a record the worker adds itself: how many log records its rate limit shed
    since the last such record."""
    cut: list[str] = []
    """What was shortened to fit: "message", "traceback", "fields"."""


class Severity(enum.StrEnum):
    """How urgent an alert or an incident is; the names of Python's logging levels, as
    NAQ's guide writes them (`level="WARNING"`, `"severity": "CRITICAL"`)."""

    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        """For comparing: INFO 0 < WARNING 1 < ERROR 2 < CRITICAL 3."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK: Final = {s: i for i, s in enumerate(Severity)}


class Alert(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What an alert rule found, as every sink receives it.

    Sent by the one monitor that holds the `naq-monitor` lease: the JSON body of a
    webhook POST, the payload of the NATS sink (`naq.alerts` unless configured), the
    argument of a callback sink, a log line. A rule fires at most once per `key` in its
    cooldown, fleet-wide.
    """

    version: int = _written(1)
    """Record format version."""
    id: str
    """Unique per alert (32 hex digits)."""
    rule: str
    """The name of the rule that fired."""
    severity: Severity
    """How urgent: "INFO", "WARNING", "ERROR" or "CRITICAL"."""
    title: str
    """One line for a person (a chat message, a page's subject)."""
    message: str
    """What was found and what it was compared with, in a sentence or two."""
    fired_at: float
    """When the rule fired, unix time in seconds."""
    key: str = ""
    """What the alert is about within its rule (a breaker's name, a dead-letter queue, an
    incident id); the cooldown is kept per rule and key. Empty for a rule about one thing."""
    value: float | None = None
    """The measured value (a count, a rate), when the rule measures one."""
    threshold: float | None = None
    """The value it was compared with, when there is one."""
    details: dict[str, Any] = {}
    """Rule-specific facts as JSON values (e.g. a breaker's `opened_at`, an incident's
    `error_type`)."""
    monitor: str = ""
    """The monitor that sent it (`host:pid:random` unless named)."""


class MonitorLease(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Which monitor evaluates the alert rules now: the `leader` key of `naq-monitor`.

    Created with compare-and-set (only when the key is absent) and renewed with
    compare-and-set on its revision, every third of `ttl`, each write carrying a
    per-message TTL of `ttl` seconds: when the holder dies the key expires and a standby
    monitor creates it.
    """

    version: int = _written(1)
    """Record format version."""
    holder: str
    """The monitor holding the lease (`host:pid:random` unless named)."""
    acquired_at: float
    """When it took the lease, unix time in seconds."""
    renewed_at: float
    """When it last renewed the lease, unix time in seconds."""
    ttl: float
    """Seconds the lease lasts after each renewal unless renewed again."""


class RuleState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """When an alert rule last fired, per alert key: the `rule.<rule>` key of `naq-monitor`.

    Written with compare-and-set by the monitor about to send the alerts, before it
    sends them, so two monitors never both send one alert and a new leader keeps the
    cooldowns of the old one. Entries older than the rule's cooldown whose condition is
    gone are dropped; the key expires once no entry can matter.
    """

    version: int = _written(1)
    """Record format version."""
    rule: str
    """The rule's name."""
    fired: dict[str, float] = {}
    """Alert key (see `Alert.key`) to when it last fired, unix time in seconds."""


class IncidentStatus(enum.StrEnum):
    """Where an incident is in its life, as NAQ's guide writes it (`"status": "OPEN"`)."""

    OPEN = "OPEN"
    """Opened by a critical error; nobody has said they are on it."""
    ACKNOWLEDGED = "ACKNOWLEDGED"
    """Someone is on it (`naq incidents ack`). The same error still adds to it."""
    RESOLVED = "RESOLVED"
    """Over (`naq incidents resolve`): the same error again opens a new incident."""


class Incident(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A critical error that needs a person: the `inc.<id>` key of `naq-incidents`.

    Opened by a worker when a job fails with a critical error, or by
    `handle_critical_error`. While it is open (or acknowledged), the same error (same
    `fingerprint`) adds to it, with compare-and-set on its revision, instead of opening
    another: `open.<fingerprint>` holds its id until it is resolved.
    """

    version: int = _written(1)
    """Record format version."""
    id: str
    """The incident's id: the day it opened and 6 hex digits (`20261130-4f9a2c`)."""
    status: IncidentStatus
    """"OPEN", "ACKNOWLEDGED" or "RESOLVED"."""
    severity: Severity
    """How urgent: "CRITICAL" for a critical error unless the caller says otherwise."""
    error_type: str
    """The error's class, `module:qualname`."""
    message: str
    """The first error's message (at most 4 KiB)."""
    fingerprint: str
    """What makes two errors the same incident: 16 hex digits of a hash of `error_type`
    and `where`."""
    opened_at: float
    """When it opened, unix time in seconds."""
    last_seen: float
    """When the error last happened, unix time in seconds."""
    where: str = ""
    """Where the error was raised: the innermost frame of its traceback as
    `<dir>/<file>:<function>` (no line number, so a deploy does not change it); empty
    when there was no traceback."""
    count: int = 1
    """How many times the error happened while the incident was open."""
    context: dict[str, Any] = {}
    """The first error's context (`error_context`, the caller's `context`, the job's
    queue and function); values that are not JSON become their `repr`."""
    job_ids: list[str] = []
    """The first jobs that failed with it (at most 20), when jobs did."""
    sources: list[str] = []
    """Who reported it (worker ids, `handle_critical_error` callers), the first 20."""
    acknowledged_by: str | None = None
    """Who acknowledged it, as they said (`naq incidents ack --by NAME`)."""
    acknowledged_at: float | None = None
    """When it was acknowledged, unix time in seconds."""
    resolved_by: str | None = None
    """Who resolved it."""
    resolved_at: float | None = None
    """When it was resolved, unix time in seconds."""
    note: str | None = None
    """What the person who acknowledged or resolved it wrote."""
