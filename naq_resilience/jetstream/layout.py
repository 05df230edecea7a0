"""Every stream, subject, consumer and KV bucket the job layer uses, named in one place.

A Go or Node service that wants to enqueue a job or read a dead letter needs nothing
but these names and docs/wire-format.md. Queue names become one subject token, so they
are restricted to letters, digits, `-` and `_`: a `.` would split the token and a `*`
or `>` would turn a publish into a wildcard.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ALERT_SUBJECT",
    "ATTEMPT_BUCKET",
    "WORKER_BUCKET",
    "BREAKER_BUCKET",
    "COUNT_TIERS",
    "DEAD_STREAM",
    "FAILURE_STREAM",
    "HISTORY_STREAM",
    "INCIDENT_BUCKET",
    "JOB_STREAM",
    "LOG_STREAM",

    "PATTERN_STREAM",
    "LEADER_KEY",
    "MONITOR_BUCKET",
    "RESULT_BUCKET",
    "SAGA_BUCKET",
    "SCHEDULE_STREAM",
    "check_dead_letter_queue",
    "check_queue_name",
    "count_stream",
    "count_subject",
    "dead_letter_queue_for",
    "dead_subject",
    "failure_subject",
    "history_subject",
    "incident_key",
    "kv_key",
    "job_subject",
    "log_filter",
    "log_level_token",
    "log_subject",
    "log_token",
    "open_incident_key",
    "original_subject",
    "pattern_subject",
    "queue_of_subject",
    "rule_state_key",
    "run_subject",
    "schedule_filter",
    "schedule_subject",
    "worker_consumer",
]

JOB_STREAM: Final = "NAQ_JOBS"
"""Work-queue retention: a job message is deleted when a worker acks it."""
JOB_SUBJECTS: Final = "naq.jobs.*"

FAILURE_STREAM: Final = "NAQ_FAILURES"
"""One failure record per failed attempt, for monitoring and dead-letter history."""
FAILURE_SUBJECTS: Final = "naq.failures.>"
FAILURE_MAX_AGE: Final = 7 * 24 * 3600.0

DEAD_STREAM: Final = "NAQ_DEAD"
"""Dead letters; per-message TTL (`dead_letter_ttl`) bounds how long one is kept."""
DEAD_SUBJECTS: Final = "naq.dead.>"
ORIGINAL_SUBJECTS: Final = "naq.originals.>"
"""Also in `NAQ_DEAD`: a job message too big to carry inside its dead letter, verbatim."""

HISTORY_STREAM: Final = "NAQ_HISTORY"
"""Every job's latest state (`JobRecord`), one message per job, for the history window."""
HISTORY_SUBJECTS: Final = "naq.history.*"
SCHEDULE_STREAM: Final = "NAQ_SCHEDULES"
"""Scheduled jobs (ADR-51 message schedules, `allow_msg_schedules`): the server fires each
schedule message into `naq.runs.<queue>` of this same stream (a schedule's target must
be in its own stream), and `NAQ_JOBS` sources those copies as `naq.jobs.<queue>`."""
SCHEDULE_SUBJECTS: Final = "naq.schedules.>"
RUN_SUBJECTS: Final = "naq.runs.*"
RUN_COPY_TTL: Final = 24 * 3600
"""Seconds a fired copy stays in `NAQ_SCHEDULES` (`Nats-Schedule-TTL`): long enough for
`NAQ_JOBS` to take it after an outage of its own, short enough not to pile up."""

LOG_STREAM: Final = "NAQ_LOGS"
"""Workers' log records (`LogRecord`), at each worker's level, rate-limited; the oldest
go first past the stream's age and size limits."""
LOG_SUBJECTS: Final = "naq.logs.>"
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
"""The level tokens of log subjects, lowest first."""
NO_TOKEN: Final = "-"
"""A log subject's queue and job tokens for a line logged outside a job."""

COUNT_TIERS: Final = (("1m", 60), ("10m", 600), ("1h", 3600), ("6h", 21600))
"""The time buckets outcomes are counted in: a name and its length in seconds. Every
outcome is added to one bucket of each tier, so any window is the sum of a few dozen
aligned buckets, the larger the window the coarser its edges (docs/design.md)."""
COUNT_SUBJECTS: Final = "naq.counts.{tier}.>"
"""Each tier has its own counter stream (ADR-49 `allow_msg_counter`), `NAQ_COUNTS_<TIER>`,
so each keeps its buckets as long as the windows read from it need them."""

PATTERN_STREAM: Final = "NAQ_PATTERNS"
"""For each error pattern of each queue, the first and the latest `PatternRecord` (what
the error is, where it was raised, a few job ids), one message per subject."""
PATTERN_SUBJECTS: Final = "naq.patterns.>"

BREAKER_BUCKET: Final = "naq-breakers"
"""Circuit-breaker state shared by every worker: one key per breaker name."""
SAGA_BUCKET: Final = "naq-sagas"
"""Compensation logs of running jobs: one key per job id, deleted when the job ends."""
RESULT_BUCKET: Final = "naq-results"
"""Results of jobs enqueued with `result_ttl`: one key per job id, expiring after it."""
WORKER_BUCKET: Final = "naq-workers"
"""Live workers (`WorkerInfo`), one key per worker, each gone `WORKER_TTL` seconds after
its worker last wrote it."""
WORKER_TTL: Final = 30.0
ATTEMPT_BUCKET: Final = "naq-attempts"
"""How a redelivered job's earlier deliveries ended (`Ledger`), so a worker tells a crash
from a failed attempt, a breaker deferral or a hand-back."""

MONITOR_BUCKET: Final = "naq-monitor"
"""The alert monitors' election and memory: `leader` holds the lease of the one monitor
that evaluates the rules (a `MonitorLease` with a per-key TTL, so it goes when its holder
dies), and `rule.<rule>` each rule's `RuleState` (when it last fired, per alert key), so a
cooldown survives a change of leader."""
LEADER_KEY: Final = "leader"
INCIDENT_BUCKET: Final = "naq-incidents"
"""Incidents opened by critical errors: `inc.<id>` holds an `Incident`; `open.<fingerprint>`
holds the id of the incident still open for that error, so the same error again adds to
it. A resolved incident expires after `StorageSettings.incidents_max_age`."""
ALERT_SUBJECT: Final = "naq.alerts"
"""Where the NATS alert sink publishes each `Alert` unless told otherwise (plain NATS: a
subscriber sees it, nothing stores it unless a stream is made to)."""

QUEUE_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_queue_name(name: str, argument: str = "queue_name") -> str:
    if not isinstance(name, str) or not QUEUE_PATTERN.match(name):
        raise ValueError(
            f"{argument} must be 1-128 letters, digits, '-' or '_' (it becomes a NATS "
            f"subject token), got {name!r}; e.g. {argument}='emails'"
        )
    return name


def check_dead_letter_queue(name: str, argument: str = "dead_letter_queue") -> str:
    """A dead-letter queue is one or two name tokens: `emails.dead`, `ops-review`."""
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(QUEUE_PATTERN.match(p) for p in parts):
        raise ValueError(
            f"{argument} must be a name like 'emails.dead' (letters, digits, '-', '_' and "
            f"at most one '.'), got {name!r}"
        )
    return name


def job_subject(queue: str) -> str:
    return f"naq.jobs.{queue}"


def queue_of_subject(subject: str) -> str:
    """The queue a job message was published to (the last token of its subject)."""
    return subject.rsplit(".", 1)[-1]


def worker_consumer(queue: str) -> str:
    """The durable pull consumer every worker of `queue` shares."""
    return f"naq-worker-{queue}"


def failure_subject(queue: str, job_id: str) -> str:
    return f"naq.failures.{queue}.{job_id}"


def history_subject(job_id: str) -> str:
    """A job's record; by id alone, so a job is found without knowing its queue."""
    return f"naq.history.{job_id}"


def dead_letter_queue_for(queue: str) -> str:
    """The default dead-letter queue of `queue`."""
    return f"{queue}.dead"


def dead_subject(dead_letter_queue: str, job_id: str) -> str:
    """`dead_letter_queue` may contain one '.' (`emails.dead`): it spans two tokens."""
    return f"naq.dead.{dead_letter_queue}.{job_id}"


def original_subject(dead_letter_queue: str, job_id: str) -> str:
    """Where a dead letter's job message is kept verbatim when it did not fit inside it."""
    return f"naq.originals.{dead_letter_queue}.{job_id}"


def schedule_subject(queue: str, schedule_id: str, run: int | str) -> str:
    """One message of a schedule: run 0 repeats until cancelled (or holds a paused
    schedule); runs 1, 2, ... of a counted schedule each fire once."""
    return f"naq.schedules.{queue}.{schedule_id}.{run}"


def schedule_filter(schedule_id: str, queue: str = "*") -> str:
    """Every message of a schedule, on any queue unless `queue` is given."""
    return f"naq.schedules.{queue}.{schedule_id}.*"


def run_subject(queue: str) -> str:
    """Where the server puts a schedule's fired copies; `NAQ_JOBS` sources them."""
    return f"naq.runs.{queue}"


_UNSAFE = re.compile(r"[^A-Za-z0-9_:=-]")


def log_token(text: str) -> str:
    """`text` as one subject token: a worker id's host may hold dots (`web-1.example`)."""
    return _UNSAFE.sub("_", text) or NO_TOKEN


def log_level_token(levelno: int) -> str:
    """The level token of a record: its standard level, or the one just below a custom one."""
    if levelno >= 50:
        return "critical"
    if levelno >= 40:
        return "error"
    if levelno >= 30:
        return "warning"
    if levelno >= 20:
        return "info"
    return "debug"


def log_subject(level: str, worker: str, queue: str | None, job_id: str | None) -> str:
    """Where a worker publishes a log record: level, worker, queue and job are tokens, so
    readers filter on the server. (A queue or job id is a token already, unless a caller
    put another value in a record's `extra=`.)"""
    queue_token = NO_TOKEN if queue is None else log_token(queue)
    job_token = NO_TOKEN if job_id is None else log_token(job_id)
    return f"naq.logs.{level}.{log_token(worker)}.{queue_token}.{job_token}"


def log_filter(
    level: str = "*", worker: str = "*", queue: str = "*", job_id: str = "*"
) -> str:
    """A filter on log subjects; `*` matches any token."""
    return f"naq.logs.{level}.{worker}.{queue}.{job_id}"
def count_stream(tier: str) -> str:
    """The counter stream of one tier of time buckets: `NAQ_COUNTS_1M`, `NAQ_COUNTS_6H`..."""
    return f"NAQ_COUNTS_{tier.upper()}"


def count_subject(tier: str, bucket: int | str, scope: str) -> str:
    """One counter: the outcomes of `scope` in bucket `bucket` (unix time // the tier's
    seconds) of `tier`. Scopes: `all.<outcome>` (every queue), `q.<queue>.<outcome>`,
    `f.<queue>.<function token>.<outcome>`; failed attempts of one error pattern,
    `e.<fingerprint>` (every queue) and `eq.<queue>.<fingerprint>`; outcomes
    `completed`, `failed` (for good) and `retried`. A
    read asks for the same with wildcards in `scope`."""
    return f"naq.counts.{tier}.{bucket}.{scope}"


def pattern_subject(queue: str, fingerprint: str, which: str) -> str:
    """The first (`first`) or latest (`last`) `PatternRecord` of a pattern of `queue`."""
    return f"naq.patterns.{queue}.{fingerprint}.{which}"


def kv_key(name: str) -> str:
    """`name` as a KV key token: every character but `[-_=a-zA-Z0-9]` becomes `_`."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_=") else "_" for c in name)


def rule_state_key(rule: str) -> str:
    """A rule's `RuleState` in `naq-monitor`."""
    return f"rule.{kv_key(rule)}"


def incident_key(incident_id: str) -> str:
    """An `Incident` in `naq-incidents`."""
    return f"inc.{incident_id}"


def open_incident_key(fingerprint: str) -> str:
    """The id of the open incident of an error fingerprint, in `naq-incidents`."""
    return f"open.{fingerprint}"
