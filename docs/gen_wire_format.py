"""Generate docs/wire-format.md from the code, so the document cannot drift from it.

    python docs/gen_wire_format.py           # rewrite docs/wire-format.md
    python docs/gen_wire_format.py --check   # exit 1 if it is stale

Nothing here restates what the code already says. Subjects come from
`jetstream.layout`'s functions; streams and buckets are the very configs
`streams.ensure_layout` creates, and the worker's consumer the one `Worker` adds
(both captured by running them against a recording stand-in for JetStream); record
schemas are `msgspec.json.schema_components` of the Structs in `models.py`, with each
field's meaning taken from its docstring there; examples are real Structs encoded by
the real codec (and decoded back, so an example that stopped being valid fails here).
What is written here is the prose that ties them together.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import dataclasses
import enum
import inspect
import json
import sys
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "wire-format.md"
sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy

import msgspec  # noqa: E402
from nats.js.api import ConsumerConfig, KeyValueConfig, StreamConfig  # noqa: E402
from nats.js.client import JetStreamContext  # noqa: E402
from nats.js.errors import BucketNotFoundError, NotFoundError  # noqa: E402

from naq_resilience import codec, models  # noqa: E402
from naq_resilience.jetstream import layout, streams  # noqa: E402
from naq_resilience.jetstream.outcomes import fingerprint_of  # noqa: E402
from naq_resilience.jetstream.registry import UnroutableJob  # noqa: E402
from naq_resilience.jetstream.stores import _key as breaker_key  # noqa: E402
from naq_resilience.jetstream.tracing import TRACEPARENT, TRACESTATE  # noqa: E402
from naq_resilience.jetstream.worker import (  # noqa: E402
    DEFAULT_UNROUTABLE_AFTER,
    MAX_FETCH,
    UNROUTABLE_DELAY,
    UNROUTABLE_ERROR,
    Worker,
    unroutable_reason,
)
from naq_resilience.models import (  # noqa: E402
    ENVELOPE_VERSION,
    Alert,
    BreakerRecord,
    DeadLetter,
    ExceptionRecord,
    FailureRecord,
    Incident,
    IncidentStatus,
    JobEnvelope,
    JobRecord,
    JobResult,
    JobStatus,
    Ledger,
    LogRecord,
    MonitorLease,
    PatternRecord,
    ReplayRecord,
    RuleState,
    SagaLogRecord,
    ScheduleRecord,
    Severity,
    WorkerInfo,
)

Doc = dict[str, str]


# --------------------------------------------------------------------------- reading the code


def attribute_docs(module: object) -> dict[str, Doc]:
    """Docstrings written under assignments, by class (`""` for module level) and name.

    Python keeps no such docstrings at runtime; they are read from the source, as
    Sphinx does.
    """
    tree = ast.parse(inspect.getsource(cast(Any, module)))
    found: dict[str, Doc] = {}

    def scan(owner: str, body: list[ast.stmt]) -> None:
        docs = found.setdefault(owner, {})
        for stmt, after in zip(body, [*body[1:], None], strict=True):
            target: ast.expr | None = None
            if isinstance(stmt, ast.AnnAssign):
                target = stmt.target
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target = stmt.targets[0]
            if (
                isinstance(target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[target.id] = inspect.cleandoc(after.value.value)
            if isinstance(stmt, ast.ClassDef):
                scan(stmt.name, stmt.body)

    scan("", tree.body)
    return found


def record_types() -> list[type[msgspec.Struct]]:
    """Every Struct defined in models.py, in source order."""
    return [
        obj
        for obj in vars(models).values()
        if isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ == models.__name__
    ]


class RecordingJetStream:
    """Stands in for a JetStreamContext on an empty server and keeps what is created."""

    def __init__(self) -> None:
        self.streams: list[StreamConfig] = []
        self.buckets: list[KeyValueConfig] = []
        self.consumers: list[tuple[str, ConsumerConfig]] = []

    async def stream_info(self, name: str) -> None:
        raise NotFoundError

    async def add_stream(self, config: StreamConfig) -> None:
        self.streams.append(config)

    async def key_value(self, bucket: str) -> None:
        raise BucketNotFoundError

    async def create_key_value(self, config: KeyValueConfig) -> None:
        self.buckets.append(config)

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> None:
        self.consumers.append((stream, config))


def created_layout() -> RecordingJetStream:
    """Run `ensure_layout` and a worker's subscription against the recorder."""
    recorder = RecordingJetStream()
    js = cast(JetStreamContext, recorder)

    async def create() -> None:
        await streams.ensure_layout(js)
        # The operations floor's buckets, which their users create when first needed.
        await streams.ensure_monitor_bucket(js)
        await streams.ensure_incident_bucket(js)
        worker = Worker("default")  # the consumer it creates for each queue, without a server
        await js.add_consumer(layout.JOB_STREAM, worker._consumer_config("<queue>"))

    asyncio.run(create())
    return recorder


# --------------------------------------------------------------------------- formatting


def one_line(text: str) -> str:
    return " ".join(text.split())


def cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return one_line(text).replace("|", "\\|")


def seconds(value: float) -> str:
    whole = f"{value:g} s"
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if value >= size and value % size == 0:
            count = int(value // size)
            return f"{whole} ({count} {unit[:-1] if count == 1 else unit})"
    return whole


SECONDS_FIELDS = {"max_age", "duplicate_window", "ack_wait", "ttl", "limit_marker_ttl"}


def settings(config: Any, skip: tuple[str, ...], all_set: bool = False) -> str:
    """The fields of a nats-py config that are set (`all_set`) or differ from its defaults."""
    out = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in skip or value is None or (value == field.default and not all_set):
            continue
        if isinstance(value, enum.Enum):
            shown = f"`{value.value}`"
        elif field.name in SECONDS_FIELDS:
            shown = seconds(value)
        elif value == -1:
            shown = "-1 (unlimited)"
        elif isinstance(value, str):
            shown = f"`{value}`"
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            shown = f"`{json.dumps([item.as_dict() for item in value])}`"  # sources
        else:
            shown = f"`{json.dumps(value)}`"
        out.append(f"{field.name}: {shown}")
    return "<br>".join(out)


def anchor(name: str) -> str:
    return f"[{name}](#{name.lower()})"


def schema_type(schema: dict[str, Any]) -> str:
    """A JSON Schema, in words, for the field tables."""
    if "$ref" in schema:
        return anchor(schema["$ref"].rsplit("/", 1)[-1])
    if "anyOf" in schema:
        return " or ".join(schema_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind is None:
        return "any JSON value"
    text = str(kind)
    if kind == "array":
        items = schema.get("items")
        text = f"array of {schema_type(items)}" if items else "array"
        if "minItems" in schema:
            text += f" (at least {schema['minItems']})"
    elif kind == "string":
        if schema.get("contentEncoding") == "base64":
            text = "string (base64)"
        if "pattern" in schema:
            text += f" matching `{schema['pattern']}`"
    elif kind in ("integer", "number"):
        if "minimum" in schema:
            text += f" ≥ {schema['minimum']}"
        if "exclusiveMinimum" in schema:
            text += f" > {schema['exclusiveMinimum']}"
    return text


def pretty(data: bytes) -> str:
    return msgspec.json.format(data, indent=2).decode()


def code(language: str, text: str) -> str:
    return f"```{language}\n{text.rstrip()}\n```"


# --------------------------------------------------------------------------- examples

JOB_ID = "5f0c6b1e2d3a4b5c8d9e0f1a2b3c4d5e"
T0 = 1767261600.0  # 2026-01-01 10:00:00 UTC

MINIMAL_JOB = JobEnvelope(
    id="go-invoice-42",
    function="billing.jobs:send_invoice",
    queue="emails",
    args=[42, "2026-01-01T10:00:00Z"],
)
FULL_JOB = JobEnvelope(
    id=JOB_ID,
    function="billing.jobs:send_invoice",
    queue="emails",
    args=[42],
    kwargs={"due": "2026-01-31", "copies": 2},
    enqueued_at=T0,
    max_retries=5,
    retry_delay=2.0,
    retry_strategy="exponential",
    retry_on=["builtins:ConnectionError", "billing.errors:GatewayBusy"],
    ignore_on=["billing.errors:CardDeclined"],
    dead_letter_queue="emails.dead",
    dead_letter_ttl=7 * 86400.0,
    timeout=30.0,
    result_ttl=3600.0,
)
FAILURE = FailureRecord(
    job_id=JOB_ID,
    function="billing.jobs:send_invoice",
    queue="emails",
    attempt=1,
    max_attempts=6,
    error_type="builtins:ConnectionError",
    message="smtp.example.com:587 refused the connection",
    traceback=(
        "Traceback (most recent call last):\n"
        '  File "billing/jobs.py", line 31, in send_invoice\n'
        "    smtp.send(message)\n"
        "ConnectionError: smtp.example.com:587 refused the connection\n"
    ),
    classification="retryable",
    outcome="retry",
    worker_id="worker-7:4242:a1b2c3",
    host="worker-7",
    pid=4242,
    started_at=T0 + 0.5,
    failed_at=T0 + 0.75,
    duration=0.25,
    context={"order_id": 42},
    next_retry_at=T0 + 2.75,
    where="billing/jobs.py:send_invoice",
    fingerprint=fingerprint_of("builtins:ConnectionError", "billing/jobs.py:send_invoice"),
)
LAST_FAILURE = msgspec.structs.replace(
    FAILURE,
    attempt=6,
    outcome="dead",
    started_at=T0 + 61.0,
    failed_at=T0 + 61.25,
    next_retry_at=None,
)
TIMEOUT = ExceptionRecord(type="builtins:TimeoutError", args=["Network timeout"])
JOB_WITH_EXCEPTION = JobEnvelope(
    id="sim-network-timeout",
    function="ops.jobs:error_prone_job",
    kwargs={"scenario": "network_timeout", "error": msgspec.to_builtins(TIMEOUT)},
    exceptions=True,
    max_retries=3,
)
UNREADABLE = b"send invoice 42 please"


def reason_for(data: bytes) -> str:
    """The reason a worker gives for a message it cannot read."""
    try:
        codec.decode_envelope(data)
    except codec.InvalidMessage as exc:
        return exc.reason
    raise AssertionError(f"{data!r} is a readable envelope")


REPLAY = ReplayRecord(
    job_id=f"{JOB_ID}-replay1",
    queue="emails",
    replayed_at=T0 + 3600.0,
    changed=["max_retries"],
)


UNROUTABLE_REASON = unroutable_reason(
    MINIMAL_JOB,
    "emails",
    UnroutableJob("", function=MINIMAL_JOB.function, module="billing.jobs", imported=False),
    waited=300.4,
    handed=23,
    unroutable_after=DEFAULT_UNROUTABLE_AFTER,
    modules=["shop.orders"],
)
"""What a worker that imports only `shop.orders` writes when it gives up on a job."""


EXAMPLES: dict[type[msgspec.Struct], list[tuple[str, Any]]] = {
    JobEnvelope: [
        ("What another service typically sends: defaults left out.", MINIMAL_JOB),
        ("Every field set.", FULL_JOB),
        (
            'A job with an exception argument (`error=TimeoutError("Network timeout")`).',
            JOB_WITH_EXCEPTION,
        ),
    ],
    ExceptionRecord: [('`TimeoutError("Network timeout")`, as an argument.', TIMEOUT)],
    FailureRecord: [("The first of six attempts failed; it will be retried.", FAILURE)],
    ReplayRecord: [("One replay of a dead letter, with more retries.", REPLAY)],
    PatternRecord: [
        (
            "The latest of a pattern: three failed attempts in one second of one worker.",
            PatternRecord(
                fingerprint=FAILURE.fingerprint,
                error_type=FAILURE.error_type,
                where=FAILURE.where,
                queue="emails",
                function=FAILURE.function,
                message=FAILURE.message,
                seen_at=T0 + 0.75,
                count=3,
                job_ids=[JOB_ID, "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "go-invoice-41"],
            ),
        )
    ],
    DeadLetter: [
        (
            "A job out of attempts, with its whole history (attempts 2 to 5 elided here).",
            DeadLetter(
                reason="out of attempts (6 of 6): builtins:ConnectionError",
                queue="emails",
                dead_letter_queue="emails.dead",
                dead_at=T0 + 61.3,
                job=FULL_JOB,
                failures=[FAILURE, LAST_FAILURE],
            ),
        ),
        (
            "A letter replayed once with more retries: the new job's `replay_of` is its id.",
            DeadLetter(
                reason="out of attempts (6 of 6): builtins:ConnectionError",
                queue="emails",
                dead_letter_queue="emails.dead",
                dead_at=T0 + 61.3,
                job=FULL_JOB,
                failures=[FAILURE, LAST_FAILURE],
                replays=[REPLAY],
            ),
        ),
        (
            "A job no worker could route: the workers that took it for `unroutable_after` "
            "did not import its module.",
            DeadLetter(
                reason=UNROUTABLE_REASON,
                queue="emails",
                dead_letter_queue="emails.dead",
                dead_at=T0 + 300.4,
                job=MINIMAL_JOB,
                error_type=UNROUTABLE_ERROR,
            ),
        ),
        (
            "A message that was not a readable job: its bytes, base64-encoded.",
            DeadLetter(
                reason=reason_for(UNREADABLE),
                queue="emails",
                dead_letter_queue="emails.dead",
                dead_at=T0,
                raw=UNREADABLE,
            ),
        ),
    ],
    JobResult: [
        (
            "A completed job's return value.",
            JobResult(
                job_id=JOB_ID,
                status=JobStatus.COMPLETED,
                result={"invoice": "INV-2026-0042", "pages": 2},
                finished_at=T0 + 1.0,
            ),
        )
    ],
    BreakerRecord: [
        (
            "A breaker that opened.",
            BreakerRecord(
                name="billing.jobs:charge",
                state="open",
                failures=5,
                successes=0,
                opened_at=T0,
                generation=3,
                updated_by="worker-7:4242:a1b2c3",
            ),
        )
    ],
    WorkerInfo: [
        (
            "A worker on two queues, running three jobs.",
            WorkerInfo(
                worker_id="worker-7:4242:a1b2c3",
                host="worker-7",
                pid=4242,
                queues=["emails", "default"],
                concurrency=10,
                started_at=T0,
                seen_at=T0 + 3600.0,
                processed=51234,
                failed=17,
                running=3,
                library="0.1.0",
            ),
        )
    ],
    Ledger: [
        (
            "A job that failed twice and was deferred once by an open breaker.",
            Ledger(failed=2, deferred=1),
        ),
        (
            "A job handed back three times by workers that do not import its module.",
            Ledger(handed_back=3, unroutable=3, unroutable_since=T0 + 2.5),
        ),
    ],
    JobRecord: [
        (
            "A job waiting for its third attempt.",
            JobRecord(
                job_id=JOB_ID,
                queue="emails",
                function="billing.jobs:send_invoice",
                status=JobStatus.RETRYING,
                updated_at=T0 + 4.2,
                enqueued_at=T0,
                started_at=T0 + 4.0,
                attempts=2,
                worker_id="worker-7:4242:a1b2c3",
                error_type="builtins:ConnectionError",
                error="SMTP server closed the connection",
                next_retry_at=T0 + 8.2,
            ),
        )
    ],
    SagaLogRecord: [
        (
            "A job that reserved stock, then crashed before charging.",
            SagaLogRecord(
                job_id=JOB_ID,
                actions=[
                    {
                        "step": "shop.orders:reserve_stock",
                        "result": {"reservation": "R-981"},
                        "args": [42],
                        "kwargs": {"quantity": 2},
                        "status": "pending",
                        "error": None,
                    }
                ],
            ),
        )
    ],
}


EXAMPLES[LogRecord] = [
    (
        "A line a job's own code logged (`log.info(\"charging order %s\", 42, "
        'extra={"order": 42})`), on '
        f"`{layout.log_subject('info', FAILURE.worker_id, 'emails', JOB_ID)}`.",
        LogRecord(
            time=T0 + 0.6,
            level="INFO",
            levelno=20,
            logger="billing.jobs",
            message="charging order 42",
            worker_id=FAILURE.worker_id,
            host=FAILURE.host,
            pid=FAILURE.pid,
            job_id=JOB_ID,
            function=FAILURE.function,
            queue="emails",
            attempt=1,
            fields={"order": 42},
        ),
    ),
    (
        "The worker's line about the failed attempt of the FailureRecord above.",
        LogRecord(
            time=FAILURE.failed_at,
            level="WARNING",
            levelno=30,
            logger="naq_resilience.worker",
            message=(
                f"job {JOB_ID} (billing.jobs:send_invoice) attempt 1 of 6 failed: "
                "builtins:ConnectionError: smtp.example.com:587 refused the connection; it "
                "runs again in 2s, at 2026-01-01T10:00:02.750Z"
            ),
            worker_id=FAILURE.worker_id,
            host=FAILURE.host,
            pid=FAILURE.pid,
            job_id=JOB_ID,
            function=FAILURE.function,
            queue="emails",
            attempt=1,
            error_type=FAILURE.error_type,
            fields={
                "max_attempts": 6,
                "error_message": FAILURE.message,
                "classification": "retryable",
                "outcome": "retry",
                "next_retry_at": "2026-01-01T10:00:02.750Z",
                "context": {"order_id": 42},
            },
        ),
    ),
]


EXAMPLES[ScheduleRecord] = [
    (
        "Run 2 of 3 of `schedule(report, interval=3600, repeat=3)`: the message on "
        f"`{layout.schedule_subject('default', 'a1b2c3', 2)}` with `Nats-Schedule: @at "
        "2026-11-30T10:00:00.000000Z`, whose body is the envelope of job `a1b2c3-r2`.",
        ScheduleRecord(
            id="a1b2c3",
            queue="default",
            function="billing.jobs:report",
            interval=3600.0,
            run=2,
            last_run=3,
            at=1796032800.0,
            created_at=1796025600.0,
        ),
    ),
    (
        "A cron schedule that runs until cancelled (`Nats-Schedule: 0 0 6 * * *`, "
        "`Nats-Schedule-Time-Zone: Europe/Amsterdam`).",
        ScheduleRecord(
            id="daily-mail",
            queue="mail",
            function="shop.mail:digest",
            cron="0 0 6 * * *",
            time_zone="Europe/Amsterdam",
            created_at=1796025600.0,
        ),
    ),
]


INCIDENT = Incident(
    id="20260101-4f9a2c",
    status=IncidentStatus.ACKNOWLEDGED,
    severity=Severity.CRITICAL,
    error_type="naq_resilience:DataCorruptionError",
    message="ledger row 9812 checksum mismatch",
    fingerprint="9c1d0a7e5b3f2468",
    where="billing/ledger.py:post_entry",
    opened_at=T0 + 120.0,
    last_seen=T0 + 900.0,
    count=3,
    context={"queue": "billing", "function": "billing.jobs:post", "account": 42},
    job_ids=[JOB_ID, "a1b2c3d4e5f60718293a4b5c6d7e8f90"],
    sources=["worker-7:4242:a1b2c3"],
    acknowledged_by="ada",
    acknowledged_at=T0 + 300.0,
    note="restoring row 9812 from last night's backup",
)
EXAMPLES[Alert] = [
    (
        "A dead-letter queue over its threshold, as a webhook receives it.",
        Alert(
            id="0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            rule="dead-letters-emails.dead",
            severity=Severity.WARNING,
            title="120 dead letters in dead-letter queue emails.dead",
            message=(
                "dead-letter queue emails.dead holds 120 dead letters, more than 100; see "
                "`naq dlq list --dlq emails.dead`."
            ),
            fired_at=T0 + 60.0,
            key="emails.dead",
            value=120.0,
            threshold=100.0,
            details={"dead_letter_queue": "emails.dead"},
            monitor="ops-1:812:9a8b7c",
        ),
    )
]
EXAMPLES[MonitorLease] = [
    (
        "The lease of the monitor that evaluates the rules (the key expires 15 s after "
        "`renewed_at` unless renewed).",
        MonitorLease(
            holder="ops-1:812:9a8b7c", acquired_at=T0, renewed_at=T0 + 3600.0, ttl=15.0
        ),
    )
]
EXAMPLES[RuleState] = [
    (
        "A breaker rule that alerted on two breakers.",
        RuleState(
            rule="breaker-open", fired={"billing-api": T0 + 60.0, "search": T0 + 300.0}
        ),
    )
]
EXAMPLES[Incident] = [
    ("A critical error seen three times, acknowledged by the on-call.", INCIDENT)
]


def checked_example(record: Any) -> bytes:
    """The record as the codec writes it; it must read back as itself."""
    data = codec.encode(record)
    if type(record) is JobEnvelope:
        assert codec.decode_envelope(data) == record, record
    assert codec.decode(data, type(record)) == record, record
    return data


# --------------------------------------------------------------------------- the document


def subject_matches(pattern: str, subject: str) -> bool:
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def stream_of(subject: str, configs: list[StreamConfig]) -> str:
    if subject.startswith("naq.counts.<tier>."):
        tiers = ", ".join(f"`{layout.count_stream(tier)}`" for tier, _ in layout.COUNT_TIERS)
        return f"`NAQ_COUNTS_<TIER>`: {tiers}"
    for config in configs:
        if any(subject_matches(p, subject) for p in config.subjects or ()):
            return f"`{config.name}`"
    if subject.startswith("$KV."):
        return f"`KV_{subject.split('.')[1]}`"
    raise ValueError(f"no stream stores {subject}")


QUEUE, JOB, DEAD_QUEUE = "<queue>", "<job_id>", "<dead_letter_queue>"


@dataclasses.dataclass(frozen=True)
class Code:
    """What the document is generated from, read once."""

    created: RecordingJetStream
    model_docs: dict[str, Doc]
    layout_docs: Doc
    records: list[type[msgspec.Struct]]
    components: dict[str, Any]

    @property
    def constant_of(self) -> dict[str, str]:
        """layout's constant names by value: `NAQ_JOBS` -> `JOB_STREAM`."""
        return {
            getattr(layout, name): name
            for name in self.layout_docs
            if isinstance(getattr(layout, name), str)
        }


def read_code() -> Code:
    model_docs = attribute_docs(models)
    records = record_types()
    missing = [r.__name__ for r in records if r not in EXAMPLES]
    if missing:
        raise SystemExit(f"add an example of {', '.join(missing)} to docs/gen_wire_format.py")
    _, components = msgspec.json.schema_components(records, ref_template="#/$defs/{name}")
    for name, component in components.items():
        owner = getattr(models, name)
        if owner.__doc__:
            component["description"] = inspect.cleandoc(owner.__doc__)
        for field, prop in component.get("properties", {}).items():
            if field in model_docs.get(name, {}):
                prop["description"] = one_line(model_docs[name][field])
        config = getattr(owner, "__struct_config__", None)
        if config is not None and config.tag_field is not None:
            component["properties"][config.tag_field]["description"] = (
                f'Always `"{config.tag}"`: what tells this record from a plain object.'
            )
    return Code(created_layout(), model_docs, attribute_docs(layout)[""], records, components)


def section_intro(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    records = c.records
    add("# Wire format")
    add(
        "<!-- Generated by docs/gen_wire_format.py from the code; do not edit by hand. After "
        "changing models.py, jetstream/layout.py, jetstream/streams.py or the worker, run "
        "`python docs/gen_wire_format.py`; tests/test_wire_format.py fails while this file "
        "is stale. -->"
    )
    add(
        "Everything naq-resilience puts on NATS is one of the records below, encoded as "
        "JSON (MessagePack if a producer prefers; never pickle). Each carries a `version`. "
        "So a service in any language can enqueue a job, or read why one failed, with "
        "nothing but a NATS client: this page is all it needs to know."
    )
    add(
        "Contents: [enqueueing from another language](#enqueueing-from-another-language), "
        "[subjects](#subjects), [streams](#streams), [consumers](#consumers), "
        "[key-value buckets](#key-value-buckets), [records](#records) ("
        + ", ".join(anchor(r.__name__) for r in records)
        + "), [how a worker handles a message](#how-a-worker-handles-a-message), "
        "[versioning](#versioning), [MessagePack](#messagepack)."
    )
    return out


def section_producers(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    job_subject = layout.job_subject(QUEUE)
    minimal = checked_example(MINIMAL_JOB)
    add("## Enqueueing from another language")
    add(
        f"Publish a JSON {anchor('JobEnvelope')} to `{job_subject}` with a JetStream publish "
        f"(a request: the reply is JetStream's publish ack, "
        f'`{{"stream":"{layout.JOB_STREAM}","seq":7}}`, once the job is stored). This is '
        "a complete job for a worker of the `emails` queue:"
    )
    add(code("json", minimal.decode()))
    add(
        "\n".join(
            [
                f"- **Subject.** `{layout.job_subject('emails')}`: the queue is the last "
                "subject token, 1-128 letters, digits, `-` or `_` "
                f"(`{layout.QUEUE_PATTERN.pattern}`). The envelope's `queue` field is "
                "informational; the subject decides.",
                "- **Streams first.** The streams and buckets are created by the first "
                "worker or Python client that connects. Publishing before any did fails "
                'with "no responders": no stream listens on the subject yet.',
                "- **`id`.** Unique per job, 1-128 letters, digits, `-` or `_`: it becomes a "
                "subject token and a key. A UUID or ULID will do.",
                "- **`function`.** The registered name `module:qualname` of a function "
                "defined in a module the workers of that queue import "
                "(`Worker(imports=[...])`, the `NAQ_IMPORTS` environment variable, or "
                "`[tool.naq] imports` in the project's pyproject.toml). A "
                "name with a part starting with `_` is private and runs only if the worker "
                "registered that function explicitly; a strict worker (`--strict`, "
                "`NAQ_STRICT=1`) runs only functions marked `@job`. A worker never imports "
                "anything a message names; any other name is dead-lettered.",
                "- **Arguments.** `args` and `kwargs` are plain JSON. The worker converts "
                "each to the type of the parameter it is passed to: an RFC 3339 string "
                "to a `datetime`, an array to a `tuple`, an object to a dataclass or "
                'Struct, a numeric string like `"5"` to an `int`. A value that does not '
                "convert fails the job at once (non-retryable `DataValidationError`). "
                f"An exception is an {anchor('ExceptionRecord')} in place of the value, "
                "with `exceptions: true` on the envelope; the worker rebuilds builtin "
                "exceptions, naq-resilience's and those defined in the modules it imports, "
                "and fails the job (`DataValidationError`) for any other.",
                "- **Idempotency.** Send the header `Nats-Msg-Id: <job id>`. Within the job "
                "stream's duplicate window "
                f"({streams.StorageSettings().duplicate_window:g} s by default, "
                "`NAQ_DUPLICATE_WINDOW`) a second publish with the same id is not "
                'stored; its ack says `"duplicate": true`. So a publish whose ack never '
                "came can be sent again safely, as the same message. (The Python client "
                "sends every job's id this way; with `idempotency_key=`, the job id is "
                "derived from the key, so the same key gives the same id.)",
                f"- **Trace context (optional).** A job may carry the W3C trace-context "
                f"headers `{TRACEPARENT}` (`00-<trace id>-<parent span id>-<flags>`) and "
                f"`{TRACESTATE}` of the request that enqueued it; a worker with "
                "OpenTelemetry tracing on runs the job in a span that is a child of it "
                "(`naq.job <function>`), so the job's run joins that request's trace. The "
                "Python client writes them whenever the caller is in an OpenTelemetry "
                "span, for an enqueue and a one-shot schedule (whose fired job keeps them); "
                "another language writes them with its OpenTelemetry propagator (Go: "
                "`otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(msg.Header))`"
                ", whose `Traceparent` and `Tracestate` spellings a worker reads too: NATS "
                "header names are case-sensitive). Without them the job's span starts a "
                "trace of its own. Only W3C trace context is read: baggage and other "
                "propagators' headers are ignored.",
                "- **Size.** The message, headers included, must fit the server's "
                "`max_payload` (1 MiB unless configured): a server closes the connection "
                "of a client that sends more.",
                "- **Options.** Everything else in the envelope is optional and overrides "
                "the function's decorator policy for this job; leave out what you do not "
                "set. An envelope the worker cannot use is not retried: it becomes a dead "
                "letter saying what is wrong.",
            ]
        )
    )
    add("For example, with Go's `nats.go/jetstream` and Node's `nats`:")
    add(
        code(
            "go",
            f'ack, err := js.Publish(ctx, "{layout.job_subject("emails")}",\n'
            f"    []byte(`{minimal.decode()}`),\n"
            f'    jetstream.WithMsgID("{MINIMAL_JOB.id}"))',
        )
    )
    add(
        code(
            "js",
            f'const ack = await js.publish("{layout.job_subject("emails")}",\n'
            f"  JSON.stringify({minimal.decode()}),\n"
            f'  {{ msgID: "{MINIMAL_JOB.id}" }});',
        )
    )
    add(
        f"To read dead letters, consume `{layout.DEAD_STREAM}` with a filter of "
        f"`{layout.dead_subject(DEAD_QUEUE, '*')}` (an ephemeral or ordered consumer) and "
        f"decode each message as a {anchor('DeadLetter')}; the dead letter of one job is "
        f"the last message on `{layout.dead_subject(DEAD_QUEUE, JOB)}`."
    )
    return out


def section_subjects(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    created = c.created
    job_subject = layout.job_subject(QUEUE)
    rows = [
        (job_subject, "JobEnvelope", "producers", f"the workers of `{QUEUE}`"),
        (
            layout.failure_subject(QUEUE, JOB),
            "FailureRecord",
            "the worker, per failed attempt",
            "monitoring; the worker, for a job's history",
        ),
        (
            layout.dead_subject(DEAD_QUEUE, JOB),
            "DeadLetter",
            "the worker, once per dead job",
            "operators, `get_dead_letter_jobs`",
        ),
        (
            layout.dead_subject(layout.dead_letter_queue_for(QUEUE), "seq-<n>"),
            "DeadLetter",
            "the worker, for a message that is not a readable job (`n` is its "
            f"`{layout.JOB_STREAM}` sequence)",
            "as above",
        ),
        (
            f"$KV.{layout.BREAKER_BUCKET}.<breaker key>",
            "BreakerRecord",
            "a worker whose breaker changed state",
            "every worker",
        ),
        (f"$KV.{layout.SAGA_BUCKET}.{JOB}", "SagaLogRecord", "the worker", "the worker"),
        (
            f"$KV.{layout.RESULT_BUCKET}.{JOB}",
            "JobResult",
            "the worker, for jobs with `result_ttl`",
            "`Job.result()`, `Job.status()`",
        ),
        (
            layout.original_subject(DEAD_QUEUE, JOB),
            "",
            "the worker, when a job's message is too big to fit inside its dead letter",
            "operators (the DeadLetter's `original_subject` points here)",
        ),
        (
            layout.history_subject(JOB),
            "JobRecord",
            "the client (queued) and the worker (running, retrying, completed, failed), "
            "without waiting for an ack",
            "`Job.status()`, `get_job`, `get_jobs_in_timeframe`",
        ),
        (
            layout.schedule_subject(QUEUE, "<schedule_id>", "<run>"),
            "JobEnvelope",
            "`enqueue_at`, `enqueue_in`, `schedule` (the `ScheduleRecord` is in its "
            "`Naq-Schedule` header; ADR-51 `Nats-Schedule*` headers say when it fires)",
            f"nats-server, which fires it into `{layout.run_subject(QUEUE)}`",
        ),
        (
            layout.run_subject(QUEUE),
            "JobEnvelope",
            "nats-server, when a schedule fires (with `Nats-Scheduler` and "
            "`Nats-Schedule-Next` headers)",
            f"`{layout.JOB_STREAM}`, which sources it as `{job_subject}`",
        ),
        (
            f"$KV.{layout.WORKER_BUCKET}.<worker id, `:` as `_`>",
            "WorkerInfo",
            f"every worker, every 5 s (bucket `{layout.WORKER_BUCKET}`, in memory, entries "
            f"expire after {layout.WORKER_TTL:g} s; created by the first worker)",
            "`naq status`, `Client.fleet_status()`",
        ),
        (
            layout.log_filter("<level>", "<worker>", QUEUE, JOB),
            "LogRecord",
            "every worker, for the log records of its process (`<queue>` and `<job_id>` are "
            "`-` outside a job), without waiting for an ack",
            "`naq worker-logs`",
        ),
        (
            f"$KV.{layout.ATTEMPT_BUCKET}.{JOB}",
            "Ledger",
            "the worker, before each `nak` (retry, breaker deferral, hand-back)",
            "the worker, when the job is delivered again",
        ),
        (
            layout.count_subject("<tier>", "<bucket>", "<scope>"),
            "an ADR-49 counter: the server stores `{\"val\":\"<total>\"}`; each write is an "
            "empty message with `Nats-Incr: +<n>` (and a `Nats-Msg-Id`)",
            "every worker, once a second, one increment per counter it touched: `<tier>` is "
            f"{', '.join(f'`{t}`' for t, _ in layout.COUNT_TIERS)}, `<bucket>` the unix time "
            "divided by the tier's seconds, `<scope>` `all.<outcome>`, "
            "`q.<queue>.<outcome>`, `f.<queue>.<function>.<outcome>` (the function's `.` "
            "written `/`: `billing/jobs:charge`), `e.<fingerprint>` or "
            "`eq.<queue>.<fingerprint>` (failed attempts of one error pattern, in every "
            "queue or in one); `<outcome>` is `completed`, `failed` or "
            "`retried`",
            "`error_rate`, `error_patterns`, `error_budget`, `naq errors` (batched direct "
            "gets, `multi_last`)",
        ),
        (
            layout.pattern_subject(QUEUE, "<fingerprint>", "last"),
            "PatternRecord",
            "every worker, after each flush in which it saw the pattern (and once to "
            "`.first`, with `Nats-Expected-Last-Subject-Sequence: 0`, so the first stays)",
            "`error_patterns`, for what a pattern is, when it was first and last seen, "
            "and sample job ids",
        ),
        (
            f"$KV.{layout.MONITOR_BUCKET}.{layout.LEADER_KEY}",
            "MonitorLease",
            "the monitor that leads (compare-and-set, a per-message TTL of `ttl` seconds)",
            "every monitor (`naq monitor`, `naq worker --monitor`), `naq monitor --status`",
        ),
        (
            f"$KV.{layout.MONITOR_BUCKET}.{layout.rule_state_key('x')[:-1]}<rule>",
            "RuleState",
            "the monitor about to send a rule's alerts (compare-and-set, before sending)",
            "every monitor, for the rule's cooldowns",
        ),
        (
            f"$KV.{layout.INCIDENT_BUCKET}.{layout.incident_key('<incident_id>')}",
            "Incident",
            "workers (a job failed with a critical error), `handle_critical_error`, "
            "`naq incidents ack|resolve` (compare-and-set)",
            "`naq incidents`, the monitor's incident rule",
        ),
        (
            f"$KV.{layout.INCIDENT_BUCKET}.{layout.open_incident_key('<fingerprint>')}",
            "",
            "whoever opens an incident (the incident's id, as text); removed when it is "
            "resolved",
            "whoever reports an error, to add to its open incident",
        ),
    ]
    add("## Subjects")
    add(
        f"Every name comes from `naq_resilience/jetstream/layout.py`. `{DEAD_QUEUE}` is "
        f"the job's `dead_letter_queue`, by default `{layout.dead_letter_queue_for(QUEUE)}`, "
        "so it spans two tokens."
    )
    table = ["| Subject | Stream | Message | Written by | Read by |", "|---|---|---|---|---|"]
    for subject, record_name, writer, reader in rows:
        message = (
            "the job's message, byte for byte as it was in the job stream"
            if not record_name
            else record_name
            if " " in record_name
            else anchor(record_name)
        )
        if record_name:
            message = anchor(record_name)
        elif subject.startswith("$KV."):
            message = "an incident id, as text"
        else:
            message = "the job's message, byte for byte as it was in the job stream"
        table.append(
            f"| `{subject}` | {stream_of(subject, created.streams)} | {message} | "
            f"{cell(writer)} | {cell(reader)} |"
        )
    add("\n".join(table))
    add(
        f"Alerts are also published, as {anchor('Alert')} JSON, on the subject a monitor's "
        f"NATS sink names (`{layout.ALERT_SUBJECT}` unless configured): plain NATS, no "
        "stream stores them unless you make one on that subject. A webhook sink POSTs the "
        "same JSON."
    )
    return out


def section_streams(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    created = c.created
    layout_docs = c.layout_docs
    constant_of = c.constant_of
    add("## Streams")
    add(
        "As `naq_resilience/jetstream/streams.py` creates them when they are missing (an "
        "existing stream is left as it is, so an operator may change its limits or "
        "replicas). Settings not shown are the server's defaults."
    )
    table = ["| Stream | Subjects | Settings | Holds |", "|---|---|---|---|"]
    for config in created.streams:
        name = config.name or ""
        table.append(
            f"| `{name}` | {', '.join(f'`{s}`' for s in config.subjects or ())} | "
            f"{settings(config, ('name', 'subjects'))} | "
            f"{cell(layout_docs.get(constant_of.get(name, 'COUNT_SUBJECTS'), ''))} |"
        )
    add("\n".join(table))
    return out


def section_consumers(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    consumer_stream, consumer = c.created.consumers[0]
    add("## Consumers")
    add(
        f"Each queue has one durable pull consumer on `{consumer_stream}`, shared by all its "
        f"workers, which `Worker` creates as below (`ack_wait` is `Worker(ack_wait=...)`). "
        "`max_deliver` is unlimited because the worker counts attempts itself and "
        "dead-letters a job that used them up, including one whose deliveries kept "
        "crashing workers. Readers of failures and dead letters use ephemeral ordered "
        "consumers."
    )
    add(
        "| Consumer | Stream | Settings |\n|---|---|---|\n"
        f"| `{consumer.durable_name}` | `{consumer_stream}` | "
        f"{settings(consumer, ('durable_name',), all_set=True)} |"
    )
    return out


def section_buckets(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    created = c.created
    layout_docs = c.layout_docs
    constant_of = c.constant_of
    keys = {
        layout.BREAKER_BUCKET: (
            "the breaker's name with every character other than a letter, digit, `-`, "
            f"`_`, `=` or `.` replaced by `_` (`billing.jobs:charge` is "
            f"`{breaker_key('billing.jobs:charge')}`)",
            anchor("BreakerRecord"),
        ),
        layout.SAGA_BUCKET: ("the job id", anchor("SagaLogRecord")),
        layout.RESULT_BUCKET: (
            "the job id; each entry expires after the job's `result_ttl` (a per-message "
            "TTL, whole seconds, rounded up)",
            anchor("JobResult"),
        ),
        layout.ATTEMPT_BUCKET: (
            "the job id; each entry expires after 7 days (a per-message TTL)",
            anchor("Ledger"),
        ),
        layout.MONITOR_BUCKET: (
            f"`{layout.LEADER_KEY}`; `{layout.rule_state_key('x')[:-1]}<rule>` (the rule's name "
            "with every character other than a letter, digit, `-`, `_` or `=` replaced by "
            "`_`), expiring 60 s after the rule's cooldown",
            f"{anchor('MonitorLease')}, {anchor('RuleState')}",
        ),
        layout.INCIDENT_BUCKET: (
            f"`{layout.incident_key('<incident_id>')}`; "
            f"`{layout.open_incident_key('<fingerprint>')}` while it is open; a resolved "
            "incident expires after `incidents_max_age` (90 days)",
            f"{anchor('Incident')}; the open incident's id as text",
        ),
    }
    add("## Key-value buckets")
    add(
        "JetStream KV buckets (stream `KV_<bucket>`, subjects `$KV.<bucket>.<key>`), created "
        "by `streams.py` like the streams. Every bucket accepts per-message TTLs; where "
        "`limit_marker_ttl` is set, an entry that expires leaves a delete marker for that "
        "long, so watchers see it go."
    )
    table = ["| Bucket | Settings | Key | Value | Holds |", "|---|---|---|---|---|"]
    for bucket in created.buckets:
        key, value = keys[bucket.bucket]
        table.append(
            f"| `{bucket.bucket}` | {settings(bucket, ('bucket',))} | {cell(key)} | "
            f"{cell(value)} | {cell(layout_docs.get(constant_of[bucket.bucket], ''))} |"
        )
    add("\n".join(table))
    return out


def section_records(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    model_docs = c.model_docs
    records = c.records
    components = c.components
    add("## Records")
    add(
        "Each record is a JSON object (a map in MessagePack). Fields at their default "
        "(except `version`) are left out when written, and must be accepted when absent; "
        "fields a reader does "
        "not know are ignored. Times are unix seconds (floats); exception classes and "
        "functions are `module:qualname`. The schemas are JSON Schema 2020-12, generated "
        "by msgspec from the same Structs the Python code uses (`naq_resilience.models`); "
        'a `"$ref": "#/$defs/X"` is record X\'s schema, so put the schemas under one '
        "document's `$defs` to validate with them."
    )
    for record in records:
        name = record.__name__
        component = components[name]
        required = set(component.get("required", ()))
        field_defaults = {f.name: f for f in msgspec.structs.fields(record)}
        add(f"### {name}")
        add(inspect.cleandoc(record.__doc__ or ""))
        table = ["| Field | Type | Required | Meaning |", "|---|---|---|---|"]
        for field, prop in component["properties"].items():
            info = field_defaults.get(field)
            if field in required or info is None:
                needed = "yes"
            elif info.default is None:
                needed = "no"
            else:
                default = (
                    info.default_factory() if info.default is msgspec.NODEFAULT else info.default
                )
                needed = f"no, default `{json.dumps(default)}`"
            table.append(
                f"| `{field}` | {cell(schema_type(prop))} | {needed} | "
                f"{cell(prop.get('description', ''))} |"
            )
        add("\n".join(table))
        for caption, example in EXAMPLES[record]:
            add(f"{caption}")
            add(code("json", pretty(checked_example(example))))
        add("<details><summary>JSON Schema</summary>")
        add(code("json", json.dumps(component, indent=2, ensure_ascii=False)))
        add("</details>")
    status_docs = model_docs.get("JobStatus", {})
    add("### JobStatus")
    add(inspect.cleandoc(JobStatus.__doc__ or ""))
    table = ["| Value | Meaning |", "|---|---|"]
    for status in JobStatus:
        table.append(f"| `{status.value}` | {cell(status_docs.get(status.name, ''))} |")
    add("\n".join(table))
    incident_docs = model_docs.get("IncidentStatus", {})
    add("### IncidentStatus")
    add(inspect.cleandoc(IncidentStatus.__doc__ or ""))
    table = ["| Value | Meaning |", "|---|---|"]
    for incident_status in IncidentStatus:
        meaning = incident_docs.get(incident_status.name, "")
        table.append(f"| `{incident_status.value}` | {cell(meaning)} |")
    add("\n".join(table))
    add("### Severity")
    add(inspect.cleandoc(Severity.__doc__ or ""))
    add(", ".join(f"`{severity.value}`" for severity in Severity) + ", least urgent first.")
    return out


def section_protocol(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    _, consumer = c.created.consumers[0]
    dead_default = layout.dead_letter_queue_for(QUEUE)
    add("## How a worker handles a message")
    add(
        f"A worker fetches up to as many messages as it has free slots (at most {MAX_FETCH}) "
        f"from `{consumer.durable_name}` and settles each exactly once: `ack` after "
        "everything about the job is stored, or `nak` to have it delivered again. In order:"
    )
    add(
        "\n".join(
            [
                "1. **Decode.** JSON or MessagePack, told apart by the first byte. A "
                "message that is neither, is not an envelope, has a field a worker cannot "
                "use or another `version`: a DeadLetter with the `reason` and the `raw` "
                f"bytes to `{layout.dead_subject(dead_default, 'seq-<n>')}`, then `ack`.",
                f"2. **Queue.** The job's queue is the subject's last token (`{QUEUE}`).",
                "3. **Resolve** `function` among the functions of the modules the worker "
                "imported (on a redelivery with `result_ttl`, a job whose JobResult is "
                "already stored is only acked). A name no worker importing its module would "
                "run (not `module:qualname`, private, not a function, defined in another "
                "module, not `@job` on a strict worker): a DeadLetter with the `job` to "
                f"`{layout.dead_subject(DEAD_QUEUE, JOB)}` (and a `dead` JobResult if "
                "`result_ttl`), then `ack`. A function in a module this worker does not "
                "import, or missing from its version of the module, is *unroutable* here: "
                "another worker may run it. Unless the Ledger's `unroutable_since` is "
                f"`unroutable_after` ({DEFAULT_UNROUTABLE_AFTER:g} s by default) ago or "
                "more, the worker writes the Ledger with `handed_back` and `unroutable` "
                "incremented and `unroutable_since` set (to now, if absent), then `nak`s "
                f"with a delay ({UNROUTABLE_DELAY[0]:g} s, doubling per hand-back, at most "
                f"{UNROUTABLE_DELAY[1]:g} s and a tenth of `unroutable_after`): not an "
                f"attempt. Past it: a DeadLetter whose `error_type` is `{UNROUTABLE_ERROR}` "
                'and whose `reason` starts with "unroutable:", then `ack`. A worker that '
                "resolves the function removes `unroutable` and `unroutable_since` from the "
                "Ledger before it runs the job.",
                "4. **Crashes.** On a redelivery, the job's Ledger in "
                f"`{layout.ATTEMPT_BUCKET}` counts the deliveries a worker ended on purpose "
                "(failed attempts, breaker deferrals, hand-backs); the rest of JetStream's "
                "delivery count, minus the first, are deliveries a crash interrupted. At "
                "the worker's `max_crashes` (3 by default): a DeadLetter (\"poison job\") "
                "with the failure history, then `ack`; a worker that cannot route the job "
                "checks this too before handing it back. The attempt number is the Ledger's "
                "`failed` + 1: crashes and hand-backs are not attempts.",
                "5. **Roll back** the steps a crashed delivery of a `@saga` job logged in "
                f"`{layout.SAGA_BUCKET}` before running it again.",
                "6. **Run** it, converting the arguments to the parameters' types (each "
                "ExceptionRecord rebuilt first, when `exceptions` is set), within "
                "`timeout` if set. While it runs, every `ack_wait / 3` the worker sends "
                "`in_progress` (`+WPI`), from a thread of its own, so JetStream does not hand "
                "it to another worker. A sync job past its `timeout` fails with "
                "`TimeoutError`, but keeps its message (and heartbeats) until its thread "
                "has ended: two attempts of one job never run at once.",
                "7. **History.** Whatever follows ends with the job's new JobRecord on "
                f"`{layout.history_subject(JOB)}` (sent without waiting for an ack): "
                "`completed`, `retrying` or `failed`; a job that runs longer than a "
                "second gets a `running` record first.",
                "8. **Returned:** a `completed` JobResult to "
                f"`$KV.{layout.RESULT_BUCKET}.{JOB}` if `result_ttl`, then `ack`. A result "
                "bigger than the server's `max_payload` fails the job as a non-retryable "
                "`naq_resilience:ResultTooLargeError` instead.",
                "9. **A circuit breaker is open:** the Ledger's `deferred` is incremented and "
                "the message is `nak`ed with a delay of the breaker's `retry_after`. No "
                "failure record: a deferral is not an attempt.",
                "10. **Raised,** retryable, attempts left: a FailureRecord (`outcome: "
                f'"retry"`) to `{layout.failure_subject(QUEUE, JOB)}`, acknowledged by '
                "JetStream, then `nak` with a "
                "delay: the error's `retry_after` if it has one, else the retry schedule's "
                "delay for this attempt. JetStream redelivers it then; no worker waits.",
                "11. **Raised,** not retryable, critical, or the last attempt: a "
                '`FailureRecord` (`outcome: "dead"`, published without waiting for its '
                "acknowledgement), then a DeadLetter with every failure "
                f"of the job (read back from `{layout.FAILURE_STREAM}`, this one included) "
                f"to `{layout.dead_subject(DEAD_QUEUE, JOB)}`, kept `dead_letter_ttl` "
                "seconds if set (a per-message TTL), then a `dead` JobResult if "
                "`result_ttl`; once JetStream has acknowledged those, `ack`. The "
                "dead-letter stream keeps one message per subject, so a letter written "
                "again (the job's `ack` was lost) replaces the first. If the dead-letter "
                "stream is full, the job is handed back (Ledger `handed_back`) and comes "
                "back a minute later: nothing is acked away.",
                "12. **Shutdown:** a job still running after the grace period is handed "
                "back (Ledger `handed_back`, then `nak` without delay) once it has stopped: "
                "an async job is cancelled; a sync job's thread cannot be stopped, so the "
                "worker waits for it and settles it as usual.",
            ]
        )
    )
    add(
        "Every record is fitted to the server's `max_payload` (headers included) before it "
        "is sent: a FailureRecord keeps at most 4 KiB of message and 16 KiB of traceback "
        "(64 KiB in all), a DeadLetter drops its oldest failure records and moves a big "
        f"job message verbatim to `{layout.original_subject(DEAD_QUEUE, JOB)}`; `cut` "
        "says what was shortened. If the worker fails while handling or settling a "
        "message anyway, the message becomes a DeadLetter that says so; if even that "
        "cannot be stored, a minimal one; if nothing can be stored (NATS unreachable, "
        "say), the message is `nak`ed to come back in 30 s, and that delivery counts as "
        "a crash, so it ends as a dead letter after `max_crashes` rounds at most."
    )
    add(
        "Retry delays are computed per job (from `retry_delay`, `retry_strategy` and the "
        "decorator's cap and jitter), never with a consumer `backoff` list, so per-job "
        "options work on one shared consumer."
    )
    return out


def section_versioning(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    add("## Versioning")
    add(
        "\n".join(
            [
                "- Every record has a `version`, and every record naq-resilience writes "
                f"includes it; all are at 1 (`ENVELOPE_VERSION = {ENVELOPE_VERSION}`). "
                "Producers should send it too; a record without one is read as version 1.",
                "- Within a version, a field may be added only if it is optional and its "
                "absence means what it meant before. Readers ignore fields they do not "
                "know, so old workers keep reading new envelopes and old producers keep "
                "working with new workers.",
                "- Anything else (removing or renaming a field, changing its type or its "
                "meaning, a new required field) is a new version.",
                "- A worker reads exactly its version of the envelope. Another version "
                'becomes a dead letter whose reason says "upgrade naq-resilience on the '
                "workers\", with the message's bytes, so nothing is lost: it can be "
                "published again once the workers understand it. Roll out workers before "
                "producers.",
                "- Readers of the other records should check `version` the same way.",
            ]
        )
    )
    return out


def section_msgpack(c: Code) -> list[str]:
    out: list[str] = []
    add = out.append
    minimal = checked_example(MINIMAL_JOB)
    packed = codec.encode(MINIMAL_JOB, "msgpack")
    add("## MessagePack")
    add(
        "A producer may publish the same envelope as a MessagePack map instead of a JSON "
        "object (fewer bytes, native binary). There is no header: a reader looks at the "
        "first byte. A JSON record starts with `{` (after optional whitespace; no byte "
        "order mark); a MessagePack map starts with `0x80`-`0x8f` (fixmap), `0xde` (map 16) "
        "or `0xdf` (map 32), none of which can start JSON. Field names and values are the "
        "same; `bytes` fields are binary instead of base64, and msgspec writes a "
        "`datetime` as the MessagePack timestamp extension. The envelope above as "
        f"MessagePack ({len(packed)} bytes, against {len(minimal)} in JSON):"
    )
    add(code("text", " ".join(f"{b:02x}" for b in packed)))
    add(
        'The Python client writes MessagePack when created with `format="msgpack"`, and '
        "a worker so configured stores results that way; failure records, dead letters, "
        "breaker records and saga logs are always JSON, for whoever reads them."
    )
    return out


def render() -> str:
    c = read_code()
    blocks = [
        *section_intro(c),
        *section_producers(c),
        *section_subjects(c),
        *section_streams(c),
        *section_consumers(c),
        *section_buckets(c),
        *section_records(c),
        *section_protocol(c),
        *section_versioning(c),
        *section_msgpack(c),
    ]
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    check = parser.parse_args(argv).check
    text = render()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else None
    if check:
        if current != text:
            print(
                f"{OUTPUT.relative_to(ROOT)} is stale: run `python docs/gen_wire_format.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    if current != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
