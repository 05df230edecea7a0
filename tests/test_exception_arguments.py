"""Exceptions as job arguments: an `ExceptionRecord` on the wire, rebuilt by the worker.

The client side needs no server (the envelope is encoded before connecting); the
worker side is `JobFunction.convert`, then a real worker on the test server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from naq_resilience import (
    AuthenticationError,
    Client,
    CompensationError,
    DataValidationError,
    JobStatus,
    RateLimitError,
    Worker,
)
from naq_resilience.codec import decode_envelope
from naq_resilience.jetstream.arguments import exception_record, rebuild_exceptions
from naq_resilience.jetstream.client import _Options
from naq_resilience.jetstream.registry import FunctionRegistry
from naq_resilience.models import ExceptionRecord

import worker_jobs

OFFLINE = "nats://127.0.0.1:9"  # nothing listens: the checks run before connecting


class _Hidden(Exception):
    pass


def envelope_of(*args: Any, **kwargs: Any) -> tuple[bool, dict[str, Any]]:
    client = Client(OFFLINE)
    envelope, payload = client._envelope("worker_jobs:receives", _Options(), args, kwargs)
    data = msgspec.json.decode(payload)
    assert envelope.exceptions == data.get("exceptions", False)
    return envelope.exceptions, data


# --------------------------------------------------------------------------- the client


@pytest.mark.parametrize(
    ("error", "record"),
    [
        (TimeoutError("Network timeout"), ("builtins:TimeoutError", ["Network timeout"])),
        (FileNotFoundError(2, "gone"), ("builtins:FileNotFoundError", [2, "gone"])),
        (AuthenticationError("no"), ("naq_resilience:AuthenticationError", ["no"])),
        (
            RateLimitError("Rate limit exceeded"),
            ("naq_resilience:RateLimitError", ["Rate limit exceeded"]),
        ),
        (worker_jobs.JobError("mine", 3), ("worker_jobs:JobError", ["mine", 3])),
    ],
    ids=["builtin", "oserror", "ours", "rate-limit", "module"],
)
def test_an_exception_becomes_a_record_of_its_type_and_args(
    error: BaseException, record: tuple[str, list[Any]]
) -> None:
    name, args = record
    assert exception_record(error) == ExceptionRecord(type=name, args=args)


def test_a_job_without_exceptions_is_encoded_as_before() -> None:
    exceptions, data = envelope_of(1, note="x")
    assert not exceptions
    assert "exceptions" not in data


def test_an_exception_argument_is_sent_as_a_tagged_record() -> None:
    exceptions, data = envelope_of(
        TimeoutError("Network timeout"), note=[{"plain": "dict"}, ValueError("inner")]
    )
    assert exceptions
    assert data["args"] == [
        {"$naq": "exception", "version": 1, "type": "builtins:TimeoutError",
         "args": ["Network timeout"]},
    ]  # fmt: skip
    assert data["kwargs"]["note"] == [
        {"plain": "dict"},
        {"$naq": "exception", "version": 1, "type": "builtins:ValueError", "args": ["inner"]},
    ]


def test_an_exception_inside_an_exceptions_args_is_a_record_too() -> None:
    group = ExceptionGroup("two", [ValueError("a"), KeyError("b")])
    _, data = envelope_of(group)
    [record] = data["args"]
    assert record["type"] == "builtins:ExceptionGroup"
    assert [r["type"] for r in record["args"][1]] == ["builtins:ValueError", "builtins:KeyError"]


def local_error() -> Exception:
    class Local(Exception):
        pass

    return Local("x")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            local_error(),
            r"local_error\.<locals>\.Local is defined inside a function, so no worker can "
            r"rebuild it",
        ),
        (_Hidden("x"), r"_Hidden is private \('_Hidden' starts with '_'\)"),
        (
            CompensationError("undo failed", ("a",), ()),
            r"CompensationError\('undo failed'\) cannot be rebuilt as CompensationError\(\*args\)",
        ),
        (
            RateLimitError("slow", retry_after=3),
            r"RateLimitError\('slow'\) has retry_after=3.0, which RateLimitError\(\*args\) "
            r"would not restore",
        ),
        (TimeoutError(object()), r"TimeoutError\(<object object at .*>\) has arguments that are "),
    ],
    ids=["local", "private", "not-rebuildable", "attribute-lost", "not-plain"],
)
def test_an_exception_no_worker_could_rebuild_is_refused_at_enqueue_naming_it(
    error: BaseException, message: str
) -> None:
    async def enqueue() -> None:
        await Client(OFFLINE).enqueue(worker_jobs.receives, error, note="n")

    expected = r"^positional argument 0 of worker_jobs:receives cannot be sent: (test_\w+\.)?"
    with pytest.raises(TypeError, match=expected + message):
        asyncio.run(enqueue())


# --------------------------------------------------------------------------- the worker


def rebuild(value: Any) -> Any:
    fn = FunctionRegistry(["worker_jobs"]).resolve("worker_jobs:echo")
    args, _ = fn.convert([value], {}, exceptions=True)
    return args[0]


def record(type_: str, *args: Any) -> dict[str, Any]:
    return msgspec.to_builtins(ExceptionRecord(type=type_, args=list(args)))  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (record("builtins:TimeoutError", "Network timeout"), TimeoutError("Network timeout")),
        (record("naq_resilience:AuthenticationError", "no"), AuthenticationError("no")),
        (record("worker_jobs:JobError", "mine", 3), worker_jobs.JobError("mine", 3)),
    ],
    ids=["builtin", "ours", "imported-module"],
)
def test_the_worker_rebuilds_what_it_may(data: dict[str, Any], expected: BaseException) -> None:
    rebuilt = rebuild(data)
    assert type(rebuilt) is type(expected)
    assert rebuilt.args == expected.args


def test_records_are_rebuilt_at_any_depth_and_plain_dicts_stay_dicts() -> None:
    value = {"plain": {"a": 1}, "errors": [record("builtins:KeyError", "k")]}
    rebuilt = rebuild(value)
    assert rebuilt["plain"] == {"a": 1}
    [error] = rebuilt["errors"]
    assert isinstance(error, KeyError)
    assert error.args == ("k",)


def test_without_the_envelopes_mark_a_record_is_plain_data() -> None:
    fn = FunctionRegistry(["worker_jobs"]).resolve("worker_jobs:echo")
    data = record("builtins:TimeoutError", "x")
    assert fn.convert([data], {}) == ([data], {})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            record("never_imported_for_registry:Boom", "x"),
            r"is of type never_imported_for_registry:Boom, from a module this worker did "
            r"not import; .* Start the worker with --import never_imported_for_registry",
        ),
        (record("worker_jobs:trace"), r"is of type worker_jobs:trace, which is not an exception"),
        (record("worker_jobs:_attempts"), r"names the private type worker_jobs:_attempts"),
        (record("builtins:OSError.__subclasses__"), r"names the private type"),
        (record("builtins:Warning.with_traceback"), r"not an exception class defined there"),
        (record("TimeoutError"), r"names its type 'TimeoutError', not as 'module:qualname'"),
        (record("builtins:UnicodeDecodeError", "x"), r"cannot be rebuilt as builtins:Unicode"),
        ({"$naq": "exception", "type": 3}, r"is not a valid ExceptionRecord"),
        ({"$naq": "exception", "version": 2, "type": "builtins:KeyError"}, r"of version 2"),
    ],
    ids=["not-imported", "not-a-class", "private", "dunder", "attribute", "no-module",
         "bad-args", "invalid", "version"],
)  # fmt: skip
def test_a_record_the_worker_may_not_rebuild_is_a_data_validation_error(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(DataValidationError, match=rf"^positional argument 0 of "
                       rf"worker_jobs:echo is an exception that (.*){message}"):  # fmt: skip
        rebuild(data)


def test_nothing_a_record_names_is_imported() -> None:
    """The module is on sys.path and raises when imported (tests/never_imported_...)."""
    with pytest.raises(DataValidationError, match="from a module this worker did not import"):
        rebuild_exceptions([record("never_imported_for_registry:Boom")], {}, {}, "m:f")


# --------------------------------------------------------------------------- end to end


@pytest.mark.usefixtures("clean_jetstream")
def test_a_worker_runs_a_job_with_exception_arguments(nats_url: str) -> None:
    worker_jobs.calls.clear()

    async def main() -> None:
        worker = Worker("default", nats_url=nats_url, imports=["worker_jobs"])
        task = asyncio.create_task(worker.run())
        try:
            async with Client(nats_url) as client:
                builtin = await client.enqueue(
                    worker_jobs.receives, TimeoutError("Network timeout"), result_ttl=60
                )
                ours = await client.enqueue(
                    worker_jobs.receives, error=RateLimitError("Rate limit exceeded"),
                    note="!", result_ttl=60,
                )  # fmt: skip
                typed = await client.enqueue(
                    worker_jobs.receives_typed, TimeoutError("t"),
                    [worker_jobs.JobError("j"), AuthenticationError("a")], result_ttl=60,
                )  # fmt: skip
                assert await builtin.result(timeout=30) == (
                    "builtins:TimeoutError('Network timeout',)"
                )
                assert await ours.result(timeout=30) == (
                    "naq_resilience:RateLimitError('Rate limit exceeded',)!"
                )
                assert await typed.result(timeout=30) == "TimeoutError,JobError,AuthenticationError"
        finally:
            worker.stop()
            await task

    asyncio.run(main())


@pytest.mark.usefixtures("clean_jetstream")
def test_a_record_of_a_type_the_worker_does_not_import_is_a_dead_letter(nats_url: str) -> None:
    """As another language's producer could send it: the job fails at once, unretried."""

    async def main() -> None:
        worker = Worker("default", nats_url=nats_url, imports=["worker_jobs"])
        task = asyncio.create_task(worker.run())
        try:
            async with Client(nats_url) as client:
                await client.connect()  # the streams exist: a raw publish is stored
                bad = record("billing.errors:CardDeclined", "no")
                raw = msgspec.json.encode(
                    {"id": "foreign-1", "function": "worker_jobs:receives", "args": [bad],
                     "exceptions": True, "max_retries": 5}
                )  # fmt: skip
                assert decode_envelope(raw).exceptions
                assert client._nc is not None
                await client._nc.jetstream().publish("naq.jobs.default", raw)
                for _ in range(600):
                    if await client.job_status("foreign-1") is JobStatus.DEAD:
                        break
                    await asyncio.sleep(0.05)
                [letter] = await client.get_dead_letter_jobs("default.dead")
        finally:
            worker.stop()
            await task
        assert letter.reason.startswith("non-retryable error naq_resilience:DataValidationError")
        assert len(letter.failures) == 1
        assert "billing.errors:CardDeclined, from a module this worker did not import" in (
            letter.failures[0].message
        )

    asyncio.run(main())
