"""The codec: every record round-trips in both formats, and a bad message says what is wrong.

No server. `decode_envelope`'s reasons end up in dead letters, read by whoever has to
fix the producer, so the tests pin what they say, not only that they fail.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec
import pytest

from naq_resilience.codec import (
    Format,
    InvalidMessage,
    decode,
    decode_envelope,
    encode,
    encode_job_arguments,
)
from naq_resilience.jetstream.client import Client
from naq_resilience.models import (
    ENVELOPE_VERSION,
    BreakerRecord,
    DeadLetter,
    FailureRecord,
    JobEnvelope,
    JobResult,
    JobStatus,
    SagaLogRecord,
)

import jobs_for_registry as jobs

FORMATS: tuple[Format, ...] = ("json", "msgpack")

MINIMAL_ENVELOPE = JobEnvelope(id="job-1", function="billing.jobs:send_invoice")
FULL_ENVELOPE = JobEnvelope(
    id="0f8e3c2a9b1d4e5f8a7b6c5d4e3f2a1b",
    function="billing.jobs:send_invoice",
    queue="emails",
    args=[42, "EUR", 19.99, None, True, [1, 2], {"nested": ["x"]}],
    kwargs={"due": "2025-01-02T03:04:05Z", "copies": 2},
    enqueued_at=1735787045.25,
    max_retries=5,
    retry_delay=[1.0, 5.0, 30.0],
    retry_strategy="exponential",
    retry_on=["builtins:ConnectionError", "billing.errors:GatewayBusy"],
    ignore_on=["billing.errors:CardDeclined"],
    dead_letter_queue="emails.dead",
    dead_letter_ttl=86400.0,
    timeout=30.0,
    result_ttl=3600.0,
)
FAILURE = FailureRecord(
    job_id=FULL_ENVELOPE.id,
    function=FULL_ENVELOPE.function,
    queue="emails",
    attempt=2,
    max_attempts=6,
    error_type="builtins:ConnectionError",
    message="gateway unreachable",
    traceback="Traceback (most recent call last):\n  ...\nConnectionError: gateway unreachable\n",
    classification="retryable",
    outcome="retry",
    injected=True,
    worker_id="host-1:4242:a1b2c3",
    host="host-1",
    pid=4242,
    started_at=1735787046.0,
    failed_at=1735787046.5,
    duration=0.5,
    context={"order_id": 42, "gateway": "stripe"},
    next_retry_at=1735787051.5,
)
RECORDS: list[Any] = [
    MINIMAL_ENVELOPE,
    FULL_ENVELOPE,
    FAILURE,
    FailureRecord(
        job_id="job-1",
        function="m:f",
        queue="default",
        attempt=1,
        max_attempts=1,
        error_type="builtins:ValueError",
        message="bad",
        classification="non_retryable",
        outcome="dead",
    ),
    DeadLetter(
        reason="out of attempts (6 of 6): builtins:ConnectionError",
        queue="emails",
        dead_letter_queue="emails.dead",
        dead_at=1735787100.0,
        job=FULL_ENVELOPE,
        failures=[FAILURE, msgspec.structs.replace(FAILURE, attempt=6, outcome="dead")],
    ),
    DeadLetter(
        reason="message is not valid JSON: JSON is malformed: invalid character (byte 0)",
        queue="default",
        dead_letter_queue="default.dead",
        dead_at=1735787100.0,
        raw=b"charge order 42\x00\xff",  # any bytes: base64 in JSON
    ),
    JobResult(
        job_id="job-1",
        status=JobStatus.COMPLETED,
        result={"invoice": "INV-42", "lines": [1, 2.5, None]},
        finished_at=1735787047.0,
    ),
    JobResult(
        job_id="job-2",
        status=JobStatus.DEAD,
        error="builtins:ConnectionError: gateway unreachable",
        finished_at=1735787047.0,
    ),
    BreakerRecord(
        name="billing.jobs:charge",
        state="open",
        failures=5,
        successes=0,
        opened_at=1735787040.0,
        generation=3,
        updated_by="host-1:4242:a1b2c3",
    ),
    BreakerRecord(
        name="payments", state="closed", failures=0, successes=0, opened_at=None, generation=4
    ),
    SagaLogRecord(
        job_id="job-1",
        actions=[
            {
                "step": "billing.jobs:reserve_stock",
                "result": {"reservation": "R-1"},
                "args": [42],
                "kwargs": {},
                "status": "pending",
                "error": None,
            }
        ],
    ),
    SagaLogRecord(job_id="job-3"),
]


def _id(record: Any) -> str:
    return type(record).__name__


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("record", RECORDS, ids=_id)
def test_every_record_round_trips(record: Any, fmt: Format) -> None:
    data = encode(record, fmt)
    assert decode(data, type(record)) == record


@pytest.mark.parametrize("record", RECORDS, ids=_id)
def test_the_first_byte_tells_the_formats_apart(record: Any) -> None:
    """JSON records are objects (`{`); MessagePack records are maps (0x80-0x8f, 0xde, 0xdf)."""
    assert encode(record, "json")[:1] == b"{"
    first = encode(record, "msgpack")[0]
    assert 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("envelope", [MINIMAL_ENVELOPE, FULL_ENVELOPE], ids=["minimal", "full"])
def test_decode_envelope_reads_either_format(envelope: JobEnvelope, fmt: Format) -> None:
    assert decode_envelope(encode(envelope, fmt)) == envelope


def test_a_producer_writes_plain_json_and_plain_msgpack_maps() -> None:
    """What another language sends: an object with the fields, defaults left out."""
    fields = {"version": 1, "id": "go-1", "function": "billing.jobs:charge", "args": [42]}
    expected = JobEnvelope(id="go-1", function="billing.jobs:charge", args=[42])
    assert decode_envelope(msgspec.json.encode(fields)) == expected
    assert decode_envelope(msgspec.msgpack.encode(fields)) == expected  # a fixmap, 0x84
    assert decode_envelope(b' \n{"id": "go-1", "function": "billing.jobs:charge",\n "args": [42]}')
    assert decode_envelope(b'{"id":"go-1","function":"m:f","priority":"high"}').id == "go-1"


def test_defaults_are_left_out_of_the_encoding_but_the_version_is_not() -> None:
    assert encode(MINIMAL_ENVELOPE) == (
        b'{"version":1,"id":"job-1","function":"billing.jobs:send_invoice"}'
    )
    assert decode_envelope(encode(MINIMAL_ENVELOPE)).version == ENVELOPE_VERSION


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("record", RECORDS, ids=_id)
def test_every_record_says_its_version(record: Any, fmt: Format) -> None:
    """Found while writing this test: `omit_defaults` left `version` out of every record
    at version 1, so a reader could not tell a version-1 record from a newer one that
    dropped the field the same way."""
    data = encode(record, fmt)
    fields = msgspec.json.decode(data) if fmt == "json" else msgspec.msgpack.decode(data)
    assert fields["version"] == 1


def test_a_record_without_a_version_is_read_as_version_1() -> None:
    assert decode_envelope(b'{"id":"go-1","function":"m:f"}').version == 1
    assert decode(b'{"job_id":"go-1"}', SagaLogRecord).version == 1


def test_a_no_option_envelope_is_small() -> None:
    envelope = JobEnvelope(
        id=uuid.uuid4().hex,
        function="billing.jobs:send_invoice",
        args=[42],
        enqueued_at=time.time(),
    )
    assert len(encode(envelope, "json")) < 200
    assert len(encode(envelope, "msgpack")) < len(encode(envelope, "json"))


# --------------------------------------------------------------------------- bad messages

VERSION_HINT = "is not supported by this worker (it reads version 1); upgrade naq-resilience"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "message is not valid JSON: Input data was truncated"),
        (b"charge order 42", "message is not valid JSON: JSON is malformed"),
        (b'{"id": "a", "function": ', "message is not valid JSON: Input data was truncated"),
        (b"\x81\xc1", "message is not valid MessagePack"),
        (b'\xef\xbb\xbf{"id": "a", "function": "m:f"}', "message is not valid JSON"),  # a BOM
        (b"[1, 2]", "message is not a job envelope: Expected `object`, got `array`"),
        (b'"job"', "message is not a job envelope: Expected `object`, got `str`"),
        (b"null", "message is not a job envelope: Expected `object`, got `null`"),
        (
            b'{"version": 1, "function": "m:f"}',
            "message is not a job envelope: Object missing required field `id`",
        ),
        (b'{"id": "a"}', "message is not a job envelope: Object missing required field `function`"),
        (
            b'{"id": "a", "function": "m:f", "args": {"x": 1}}',
            "message is not a job envelope: Expected `array`, got `object` - at `$.args`",
        ),
        (
            b'{"version": "1", "id": "a", "function": "m:f"}',
            "message is not a job envelope: Expected `int`, got `str` - at `$.version`",
        ),
        (
            msgspec.msgpack.encode({"version": 1, "function": "m:f"}),
            "message is not a job envelope: Object missing required field `id`",
        ),
    ],
)
def test_an_unreadable_message_says_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_envelope(data)
    assert caught.value.reason.startswith(reason)
    assert str(caught.value) == caught.value.reason
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "data",
    [
        # A well-formed envelope of another version...
        b'{"version": 2, "id": "a", "function": "m:f"}',
        msgspec.msgpack.encode({"version": 2, "id": "a", "function": "m:f"}),
        # ...and one whose other fields make no sense to this version: the version is
        # still the reason given, since it is what the operator has to fix.
        b'{"version": 2, "job": {"name": "m:f"}}',
        b'{"version": 2}',
        msgspec.msgpack.encode({"version": 2, "args": "not a list"}),
    ],
)
def test_an_unknown_version_is_named_as_the_reason(data: bytes) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_envelope(data)
    assert caught.value.reason == f"job envelope version 2 {VERSION_HINT} on the workers"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("id", "order.42", "matching regex"),
        ("id", "order 42", "matching regex"),
        ("id", "", "matching regex"),
        ("id", "x" * 129, "matching regex"),
        ("dead_letter_queue", "emails.dead.old", "matching regex"),
        ("dead_letter_queue", "dead letters", "matching regex"),
        ("max_retries", -1, "`int` >= 0"),
        ("retry_delay", -1, "`float` >= 0.0"),
        ("retry_delay", [], "of length >= 1"),
        ("retry_strategy", "bogus", "matching regex '^(fixed|linear|exponential|fibonacci)$'"),
        ("retry_strategy", [1, -5], "`float` >= 0.0"),
        ("dead_letter_ttl", 0, "`float` > 0.0"),
        ("timeout", -3, "`float` > 0.0"),
        ("result_ttl", 0, "`float` > 0.0"),
    ],
)
def test_a_value_a_worker_cannot_use_is_refused_naming_the_field(
    field: str, value: object, expected: str
) -> None:
    data = msgspec.json.encode({"id": "job-1", "function": "m:f", field: value})
    with pytest.raises(InvalidMessage) as caught:
        decode_envelope(data)
    reason = caught.value.reason
    assert reason.startswith("message is not a job envelope: Expected ")
    assert expected in reason
    assert f"- at `$.{field}" in reason  # `$.retry_strategy[1]` for a list item


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "123e4567-e89b-12d3-a456-426614174000"),
        ("id", "01JH8X_ULID"),
        ("dead_letter_queue", "emails.dead"),
        ("dead_letter_queue", "graveyard"),
        ("max_retries", 0),
        ("retry_delay", 0),
        ("retry_delay", [0.5, 2]),
        ("retry_strategy", "fibonacci"),
        ("retry_strategy", [1, 5, 30]),
        ("timeout", 0.25),
    ],
)
def test_valid_options_pass(field: str, value: object) -> None:
    data = msgspec.json.encode({"id": "job-1", "function": "m:f", field: value})
    assert decode_envelope(data) is not None


# --------------------------------------------------------------------------- arguments


class Opaque:
    """Not data: no encoder knows it."""


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_job_arguments_names_a_bad_positional_argument_and_the_fix(fmt: Format) -> None:
    with pytest.raises(TypeError) as caught:
        encode_job_arguments("billing.jobs:charge", [42, Opaque()], {"currency": "EUR"}, fmt)
    message = str(caught.value)
    assert message.startswith(
        f"positional argument 1 of billing.jobs:charge cannot be sent as {fmt}: Opaque ("
    )
    assert "Pass plain data: str, int, float, bool, None, list, dict, datetime" in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_job_arguments_names_a_bad_keyword_argument(fmt: Format) -> None:
    with pytest.raises(TypeError) as caught:
        encode_job_arguments("billing.jobs:charge", [42], {"currency": "EUR", "db": Opaque()}, fmt)
    assert str(caught.value).startswith(
        f"keyword argument 'db' of billing.jobs:charge cannot be sent as {fmt}: Opaque ("
    )


def test_an_integer_msgpack_cannot_hold_is_named_too() -> None:
    encode_job_arguments("m:f", [2**70], {}, "json")  # JSON has no integer limit
    with pytest.raises(TypeError, match=r"^positional argument 0 of m:f cannot be sent as msgpack"):
        encode_job_arguments("m:f", [2**70], {}, "msgpack")


def test_encodable_arguments_pass() -> None:
    encode_job_arguments("m:f", [1, "x", [1.5], {"a": None}], {"k": uuid.uuid4()})  # no raise


def test_enqueue_refuses_an_unencodable_argument_before_connecting() -> None:
    """The client finds the argument only when encoding the envelope failed."""

    async def enqueue() -> None:
        client = Client("nats://127.0.0.1:9")  # nothing listens: it must not get that far
        await client.enqueue(jobs.plain, Opaque())

    with pytest.raises(TypeError, match=r"^positional argument 0 of jobs_for_registry:plain"):
        asyncio.run(enqueue())
