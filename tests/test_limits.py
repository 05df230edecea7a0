"""Messages that could never be settled, and sizes at the server's limit.

Each case once made a message come back forever (every `ack_wait`), or closed the
connection for good; each runs here through a real `naq worker` process against a
real server. "Settled once" is checked on the broker: the job stream is empty, the
dead letter is there, and the job ran exactly as often as its policy says.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from naq_resilience import Client, JobFailedError, JobStatus
from naq_resilience.jetstream import layout
from naq_resilience.models import DeadLetter, JobEnvelope

import worker_jobs
from processes import WorkerProcess, dead_letters, enqueue, events, status, wait_until

pytestmark = pytest.mark.usefixtures("clean_jetstream")

MAX_PAYLOAD = 1024 * 1024  # the test server's, nats-server's default


def publish_raw(url: str, payloads: list[bytes]) -> None:
    async def main() -> None:
        async with Client(url) as client:  # creates the streams
            await client.connect()
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for payload in payloads:
                await js.publish(layout.job_subject("default"), payload)
        finally:
            await nc.close()

    asyncio.run(main())


def queued(url: str) -> int:
    """Messages still in the job stream: a settled job is gone from it."""

    async def main() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(layout.JOB_STREAM)
            return info.state.messages
        finally:
            await nc.close()

    return asyncio.run(main())


def stored_original(url: str, subject: str) -> bytes:
    async def main() -> bytes:
        nc = await nats.connect(url)
        try:
            msg = await nc.jetstream().get_last_msg(layout.DEAD_STREAM, subject)
            return msg.data or b""
        finally:
            await nc.close()

    return asyncio.run(main())


def nested_envelopes(depth: int) -> tuple[bytes, bytes]:
    """JSON and MessagePack envelopes whose `args` is an array `depth` deep (a few KB;
    no encoder writes them, so they are spliced by hand)."""
    head = {"version": 1, "id": "deep", "function": "worker_jobs:add", "args": 0}
    as_json = msgspec.json.encode(head)
    as_json = as_json[: -len(b"0}")] + b"[" * depth + b"]" * depth + b"}"
    as_msgpack = msgspec.msgpack.encode({**head, "id": "deep-msgpack"})
    as_msgpack = as_msgpack[:-1] + b"\x91" * (depth - 1) + b"\x90"  # args was 0x00
    return as_json, as_msgpack


def test_undecodable_messages_each_end_as_one_dead_letter(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    deep_json, deep_msgpack = nested_envelopes(1000)
    junk = b"\x00not a job " * (900 * 1024 // 11)  # 900 KB: base64 in a letter is > 1 MB
    assert len(deep_json) < 4096
    publish_raw(nats_url, [deep_json, deep_msgpack, junk])
    worker = WorkerProcess(nats_url, trace, "--ack-wait", "1", name="w")
    workers.append(worker)
    wait_until(lambda: len(dead_letters(nats_url)) == 3, what="three dead letters")
    letters = {len(letter.raw or b""): letter for letter in dead_letters(nats_url)}
    for data in (deep_json, deep_msgpack):
        letter = letters[len(data)]
        assert "nested too deep" in letter.reason
        assert letter.raw == data  # kept whole: nothing lost
    (big,) = [letter for letter in dead_letters(nats_url) if letter.original_subject]
    assert big.raw is None
    assert "kept verbatim" in big.cut[0]
    assert stored_original(nats_url, big.original_subject or "") == junk
    assert "not valid JSON" in big.reason
    # Settled for good: nothing is redelivered, and the worker carries on.
    assert queued(nats_url) == 0
    (job_id,) = enqueue(nats_url, worker_jobs.add, [(1, 2)], result_ttl=60)
    wait_until(lambda: status(nats_url, job_id) is JobStatus.COMPLETED, what="a normal job")
    assert len(dead_letters(nats_url)) == 3
    assert "worker bug" not in worker.log()


def test_failures_too_big_to_record_are_cut_and_end_once(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    (retried,) = enqueue(
        nats_url, worker_jobs.fail_with, [(30_000, "connection")], max_retries=40, retry_delay=0
    )
    (huge,) = enqueue(
        nats_url, worker_jobs.fail_with, [(2_000_000, "value")], max_retries=3, result_ttl=60
    )
    workers.append(WorkerProcess(nats_url, trace, "--ack-wait", "2", name="w"))
    wait_until(lambda: len(dead_letters(nats_url)) == 2, timeout=90, what="two dead letters")
    by_job = {letter.job.id: letter for letter in dead_letters(nats_url) if letter.job}
    # 41 attempts of a 30 KB message (1.2 MB of history as raised): each record keeps
    # the head of its message, so all 41 fit in the letter.
    letter = by_job[retried]
    assert letter.reason == "out of attempts (41 of 41): builtins:ConnectionError"
    assert events(trace).count("fail_with connection") == 41
    assert [f.attempt for f in letter.failures] == list(range(1, 42))
    assert all("message" in f.cut and len(f.message) < 4200 for f in letter.failures)
    # A non-retryable error with a 2 MB message ran once, and says what it was.
    letter = by_job[huge]
    assert events(trace).count("fail_with value") == 1
    assert letter.reason.startswith("non-retryable error builtins:ValueError: xxxx")
    assert "characters left out" in letter.reason
    (record,) = letter.failures
    assert record.error_type == "builtins:ValueError"
    assert record.message.startswith("x" * 4000)
    assert "of 2,000,000 characters left out" in record.message
    assert "Traceback (most recent call last)" in record.traceback
    assert queued(nats_url) == 0


@pytest.mark.parametrize("size", [2_000_000, MAX_PAYLOAD - 128])
def test_a_result_too_big_to_store_fails_the_job_once(
    nats_url: str, trace: Path, workers: list[WorkerProcess], size: int
) -> None:
    # MAX_PAYLOAD - 128 bytes fit the payload limit but not with the record and its
    # Nats-TTL header: sent as is, the server closed the worker's connection for good.
    async def main() -> None:
        async with Client(nats_url) as client:
            big = await client.enqueue(worker_jobs.big_result, size, max_retries=3, result_ttl=60)
            workers.append(WorkerProcess(nats_url, trace, "--ack-wait", "2", name="w"))
            with pytest.raises(JobFailedError, match=r"ResultTooLargeError.*over the"):
                await big.result(timeout=60)
            after = await client.enqueue(worker_jobs.add, 2, 3, result_ttl=60)
            assert await after.result(timeout=60) == 5  # the worker is connected and working

    asyncio.run(main())
    assert events(trace).count(f"big_result {size}") == 1
    (letter,) = dead_letters(nats_url)
    assert letter.reason.startswith("non-retryable error naq_resilience:")
    assert workers[0].proc.poll() is None


def test_a_value_that_does_not_convert_is_not_repeated_in_the_error(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    (job_id,) = enqueue(nats_url, worker_jobs.want_int, [("7" * 700_000 + "z",)], max_retries=3)
    workers.append(WorkerProcess(nats_url, trace, "--ack-wait", "2", name="w"))
    wait_until(lambda: status(nats_url, job_id) is JobStatus.FAILED, what="a dead letter")
    (letter,) = dead_letters(nats_url)
    assert letter.reason.startswith("non-retryable error naq_resilience:DataValidationError")
    assert "poison" not in letter.reason
    assert len(letter.reason) < 2000
    assert "want_int" not in events(trace)  # refused before it ran


def test_the_client_refuses_a_job_over_max_payload_and_stays_connected(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            # Within 30 bytes of the limit: the Nats-Msg-Id header pushes it over.
            data = "d" * (MAX_PAYLOAD - 150)
            with pytest.raises(ValueError, match="over the NATS server's max_payload"):
                await client.enqueue(worker_jobs.add, data, 1, idempotency_key="k" * 40)
            job = await client.enqueue(worker_jobs.add, 1, 2)
            assert await job.status() is JobStatus.QUEUED

    asyncio.run(main())
    assert queued(nats_url) == 1


def test_enqueue_many_with_one_oversized_call_stores_none(nats_url: str) -> None:
    calls: list[tuple[Any, ...]] = [(1, 2), (3, 4), ("x" * MAX_PAYLOAD, 5), (6, 7)]

    async def main() -> None:
        async with Client(nats_url) as client:
            with pytest.raises(ValueError, match="nothing was enqueued"):
                await client.enqueue_many(worker_jobs.add, calls)

    asyncio.run(main())
    assert queued(nats_url) == 0


def test_an_unreadable_dead_letter_is_skipped_and_reported(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = DeadLetter(
        reason="r", queue="default", dead_letter_queue="default.dead", dead_at=1.0,
        job=JobEnvelope(id="good", function="m:f"),
    )  # fmt: skip

    async def main() -> list[DeadLetter]:
        async with Client(nats_url) as client:
            await client.connect()
            nc = await nats.connect(nats_url)
            js = nc.jetstream()
            await js.publish(layout.dead_subject("default.dead", "bad"), b"{not json")
            await js.publish(layout.dead_subject("default.dead", "good"), msgspec.json.encode(good))
            await nc.close()
            return await client.get_dead_letter_jobs("default.dead")

    with caplog.at_level(logging.WARNING, logger="naq_resilience"):
        letters = asyncio.run(main())
    assert [letter.job for letter in letters] == [good.job]
    reported = [r.message for r in caplog.records]
    assert any("unreadable record on naq.dead.default.dead.bad" in m for m in reported)
