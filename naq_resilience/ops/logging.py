"""`setup_logging`, as in NAQ: one call to see what the library, the workers and the
jobs do.

The library logs under `naq_resilience`: never above DEBUG for a job that went well (a
log line costs more than a no-op job), a WARNING per failed attempt and an ERROR per
dead letter (both bounded per function), INFO for a worker's start and stop. By
default `setup_logging` touches only that logger, so an application's own logging
configuration stays as it is; `process=True` (what `naq worker --log-level` does)
configures the whole process instead, so a job's own `logging` calls come out at the
same level and in the same format as the worker's.

Every line logged while a job runs carries the job: `job_id`, `function`, `queue` and
`attempt`, from a context variable the worker sets (jobs on threads run in a copy of
the worker's context, so they see it too), and `worker_id` inside a worker. Nothing
has to pass them along. `json=True` writes one JSON object per line with the fields
of NAQ's error-handling guide (`timestamp`, `level`, `error_type`, `error_message`,
`context`, `traceback`), whether the line was logged with plain `logging` or through
structlog's stdlib integration.
"""

from __future__ import annotations

import contextvars
import json as _json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

from naq_resilience.policies.classify import context_of
from naq_resilience.policies.pipeline import qualified_name

if TYPE_CHECKING:
    from naq_resilience.models import JobEnvelope

__all__ = [
    "JOB_FIELDS",
    "JobContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "iso_time",
    "level_number",
    "record_fields",
    "running_job",
    "running_worker",
    "setup_logging",
]

running_job: contextvars.ContextVar[tuple[JobEnvelope, int] | None] = contextvars.ContextVar(
    "naq_running_job", default=None
)
"""The job (its envelope and attempt number) that the code reading it runs in."""
running_worker: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "naq_running_worker", default=None
)
"""The id of the worker whose task or job thread reads it."""

JOB_FIELDS: Final = ("job_id", "function", "queue", "attempt")
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_STRUCTLOG_PRIVATE: Final = frozenset({"_record", "_from_structlog", "_logger", "_name"})
_OURS: Final = frozenset({"timestamp", "level", "logger", "message"})
_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def level_number(level: int | str) -> int:
    """`"debug"`, `"WARNING"` or a number, as a level number; a name logging does not
    know is refused, naming the ones it does."""
    if isinstance(level, int):
        return level
    numeric = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use {', '.join(_LEVELS)}")
    return numeric


class JobContextFilter(logging.Filter):
    """Adds the running job (`job_id`, `function`, `queue`, `attempt`) and the worker
    (`worker_id`) to every record that passes a handler; never drops one.

    Set on handlers, not loggers: a logger's filters see only the records logged on
    that very logger, a handler's see every record that reaches it. Fields a caller
    passed with `extra=` are left as they are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        run = running_job.get()
        if run is not None and "job_id" not in fields:
            env, attempt = run
            fields["job_id"] = env.id
            fields["function"] = env.function
            fields["queue"] = env.queue
            fields["attempt"] = attempt
        if "worker_id" not in fields:
            worker = running_worker.get()
            if worker is not None:
                fields["worker_id"] = worker
        return True


def _structured_message(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The message and the fields a structured logger put in it.

    structlog routed through stdlib logging leaves its event dict as the record's `msg`
    (`ProcessorFormatter.wrap_for_formatter`) or renders it to a JSON string first
    (`JSONRenderer`); NAQ's guide logs `json.dumps(entry)`. Each becomes fields of
    the line instead of a JSON string inside the message.
    """
    msg = record.msg
    event: dict[str, Any] | None = None
    if isinstance(msg, dict):
        event = dict(msg)
    elif isinstance(msg, str) and msg.startswith("{") and not record.args:
        try:
            decoded = _json.loads(msg)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            event = decoded
    if event is None:
        return record.getMessage(), {}
    message = event.pop("event", None)
    if message is None:
        message = event.pop("message", None)
    if message is None:
        message = event.get("error_message", msg if isinstance(msg, str) else "")
    for key in _STRUCTLOG_PRIVATE | _OURS:
        event.pop(key, None)
    if "exception" in event and "traceback" not in event:
        event["traceback"] = event.pop("exception")
    exc_info = event.pop("exc_info", None)
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and exc_info[1] is not None and not record.exc_info:
        record.exc_info = exc_info
    return str(message), event


def record_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """A record's message, and every field a line about it carries besides the time,
    level and logger: the job and worker, the error (`error_type`, `error_message`,
    `traceback`, `context`) and the extras; fields whose value is None are left out."""
    message, fields = _structured_message(record)
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_") and key not in fields:
            fields[key] = value
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None:
        fields.setdefault("error_type", qualified_name(type(exc)))
        try:
            fields.setdefault("error_message", str(exc))
        except Exception:
            fields.setdefault("error_message", "<exception str() failed>")
        context = context_of(exc)
        if context:
            given = fields.get("context")
            fields["context"] = {**context, **given} if isinstance(given, dict) else context
    if record.exc_info and "traceback" not in fields:
        if not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        fields["traceback"] = record.exc_text
    elif record.stack_info and "stack" not in fields:
        fields["stack"] = record.stack_info
    return message, {k: v for k, v in fields.items() if v is not None}


def iso_time(created: float) -> str:
    """Unix time as ISO 8601 in UTC, to the millisecond: `2026-11-30T08:15:02.123Z`."""
    return (
        datetime.fromtimestamp(created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: `timestamp` (ISO 8601, UTC), `level`,
    `logger`, `message`; then the job (`job_id`, `function`, `queue`, `attempt`) and
    `worker_id` when there is one; `error_type`, `error_message`, `context` and
    `traceback` when the record carries an error; and every `extra=` field. Values
    that are not JSON become their `repr`."""

    def format(self, record: logging.LogRecord) -> str:
        message, fields = record_fields(record)
        entry: dict[str, Any] = {
            "timestamp": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        entry.update(fields)
        return _json.dumps(entry, default=repr)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [job <id> attempt <n>]`, and the traceback below."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        job_id = record.__dict__.get("job_id")
        if job_id is None or str(job_id) in line:  # the worker's lines about a job name it
            return line
        attempt = record.__dict__.get("attempt")
        return f"{line} [job {job_id}" + (f" attempt {attempt}]" if attempt else "]")


def setup_logging(
    level: int | str = "INFO",
    *,
    json: bool = False,
    stream: IO[str] | None = None,
    process: bool = False,
) -> logging.Logger:
    """Send logs to `stream` (stderr) at `level`, one JSON object per line if `json`;
    safe to call again (it replaces its own handler). Returns the logger it configured.

    By default only the `naq_resilience` logger is configured, and an application's own
    logging stays as it is. With `process=True` the root logger is: every logger of the
    process (the jobs', nats-py's, the library's) logs at `level` in this format, and
    Python's warnings go through logging too.
    """
    level = level_number(level)
    library = logging.getLogger("naq_resilience")
    for logger in (library, logging.getLogger()):
        for handler in [h for h in logger.handlers if getattr(h, "_naq", False)]:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._naq = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(JobContextFilter())
    if process:
        root = logging.getLogger()
        root.setLevel(level)
        root.addHandler(handler)
        library.setLevel(logging.NOTSET)
        library.propagate = True
        logging.captureWarnings(True)
        return root
    library.setLevel(level)
    library.addHandler(handler)
    library.propagate = False
    return library
