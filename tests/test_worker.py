"""The worker against a real nats-server, in this process: outcomes, retries, dead letters."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import msgspec
import nats
import pytest
from nats.js.errors import NoKeysError, NotFoundError

from naq_resilience import (
    Client,
    DataValidationError,
    JobFailedError,
    JobStatus,
    SecurityError,
    Worker,
    on_critical,
    remove_critical_hook,
)
from naq_resilience.codec import decode
from naq_resilience.jetstream import layout
from naq_resilience.models import FailureRecord, JobEnvelope, Ledger

import worker_jobs

pytestmark = pytest.mark.usefixtures("clean_jetstream")
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def _fresh_job_module() -> None:
    worker_jobs.calls.clear()
    worker_jobs.undone.clear()
    worker_jobs._attempts.clear()


@asynccontextmanager
async def working(url: str, **options: Any) -> AsyncIterator[Worker]:
    options.setdefault("imports", ["worker_jobs"])
    worker = Worker(options.pop("queues", "default"), nats_url=url, **options)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def failure_records(url: str, job_id: str, queue: str = "default") -> list[FailureRecord]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            layout.failure_subject(queue, job_id), ordered_consumer=True,
            stream=layout.FAILURE_STREAM,
        )  # fmt: skip
        records: list[FailureRecord] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                return records
            records.append(decode(msg.data, FailureRecord))
            if msg.metadata.num_pending == 0:
                return records
    finally:
        await nc.close()


async def until(predicate: Callable[[], Any], timeout: float = 20.0) -> None:
    """Poll until `predicate()` (maybe async) is true; a generous bound, not a timing test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def test_async_and_sync_jobs_run_and_return_results(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            added = await client.enqueue(worker_jobs.add, 2, b=3, result_ttl=60)
            multiplied = await client.enqueue(worker_jobs.sync_multiply, 6, 7, result_ttl=60)
            assert await added.result(timeout=20) == 5
            assert await multiplied.result(timeout=20) == 42
            assert await added.status() is JobStatus.COMPLETED
        assert ("add", (2, 3)) in worker_jobs.calls
        assert ("sync_multiply", (6, 7)) in worker_jobs.calls

    run(main())


def test_arguments_are_converted_to_annotations(nats_url: str) -> None:
    when = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.typed, when, 3, ("a", "b"), result_ttl=60)
            assert await job.result(timeout=20) == "2026:3:a,b"
        ((_, (got_when, count, tags)),) = worker_jobs.calls
        assert got_when == when
        assert count == 3
        assert tags == ("a", "b")

    run(main())


def test_argument_that_does_not_match_is_a_dead_letter_at_once(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.typed, "not a date", 3, [], max_retries=5)
            await until(lambda: _is(job.status(), JobStatus.FAILED))
            (letter,) = await client.get_dead_letter_jobs("default.dead")
        assert "non-retryable" in letter.reason
        assert (
            letter.failures[0].error_type == f"{DataValidationError.__module__}:DataValidationError"
        )
        assert "'when'" in letter.failures[0].message
        assert worker_jobs.calls == []

    run(main())


async def _is(status: Coroutine[Any, Any, JobStatus], expected: JobStatus) -> bool:
    return await status is expected


def test_broker_scheduled_retries_then_success(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.fails_twice, "k1", result_ttl=60)
            assert await job.result(timeout=30) == "k1 ok after 3"
            records = await failure_records(nats_url, job.job_id)
        assert [(r.attempt, r.outcome, r.max_attempts) for r in records] == [
            (1, "retry", 4),
            (2, "retry", 4),
        ]
        for record in records:
            assert record.error_type == "builtins:ConnectionError"
            assert record.classification == "retryable"
            assert record.next_retry_at is not None
            assert record.next_retry_at - record.failed_at == pytest.approx(0.2)
            assert "Traceback" in record.traceback
            assert record.worker_id
        # The broker, not the worker, waited: the next attempt began after the delay.
        assert records[1].started_at >= records[0].next_retry_at - 0.01  # type: ignore[operator]

    run(main())


def test_enqueue_options_override_the_decorator(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            # retry_on names the only errors to retry: KeyError is retried up to 2 times.
            keys = await client.enqueue(
                worker_jobs.raises, "key", retry_on=[KeyError], max_retries=2, retry_delay=0
            )
            # ConnectionError is not in retry_on: dead after one attempt.
            down = await client.enqueue(worker_jobs.raises, "connection", retry_on=(KeyError,))
            # ignore_on beats the decorator's defaults: TimeoutError is not retried.
            slow = await client.enqueue(worker_jobs.raises, "timeout", ignore_on=TimeoutError)
            for job in (keys, down, slow):
                await until(lambda job=job: _is(job.status(), JobStatus.FAILED))
            letters = {d.job.id: d for d in await client.get_dead_letter_jobs("default.dead")}
        assert [f.attempt for f in letters[keys.job_id].failures] == [1, 2, 3]
        assert "out of attempts (3 of 3)" in letters[keys.job_id].reason
        assert [f.attempt for f in letters[down.job_id].failures] == [1]
        assert "non-retryable" in letters[down.job_id].reason
        assert [f.attempt for f in letters[slow.job_id].failures] == [1]

    run(main())


def test_critical_error_is_dead_at_once_and_reported(nats_url: str) -> None:
    seen: list[BaseException] = []
    hook = on_critical(seen.append)

    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.raises, "security", max_retries=5, result_ttl=60)
            with pytest.raises(JobFailedError, match="tampered"):
                await job.result(timeout=20)
            (letter,) = await client.get_dead_letter_jobs("default.dead")
        assert letter.reason.startswith("critical error")
        assert letter.failures[0].classification == "critical"
        assert len(seen) == 1
        assert isinstance(seen[0], SecurityError)

    try:
        run(main())
    finally:
        remove_critical_hook(hook)


def test_dead_letter_holds_envelope_history_and_reason_in_its_queue(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(
                worker_jobs.raises, "connection", max_retries=1, retry_delay=0,
                dead_letter_queue="ops.review", dead_letter_ttl=3600,
            )  # fmt: skip
            await until(lambda: _is(job.status(), JobStatus.FAILED))
            assert await client.get_dead_letter_jobs("default.dead") == []
            (letter,) = await client.get_dead_letter_jobs("ops.review")
            nc = await nats.connect(nats_url)
            stored = await nc.jetstream().get_last_msg(
                layout.DEAD_STREAM, layout.dead_subject("ops.review", job.job_id)
            )
            await nc.close()
        assert letter.job is not None
        assert letter.job.id == job.job_id
        assert letter.job.args == ["connection"]
        assert letter.dead_letter_queue == "ops.review"
        assert [f.attempt for f in letter.failures] == [1, 2]
        assert [f.outcome for f in letter.failures] == ["retry", "dead"]
        assert stored.headers is not None
        assert stored.headers.get("Nats-TTL") == "3600"

    run(main())


async def read_ledger(url: str, job_id: str) -> Ledger | None:
    nc = await nats.connect(url)
    try:
        ledgers = await nc.jetstream().key_value(layout.ATTEMPT_BUCKET)
        try:
            entry = await ledgers.get(job_id)
        except NotFoundError:  # KeyNotFoundError, and the bucket not made yet
            return None
    finally:
        await nc.close()
    return decode(entry.value, Ledger) if entry.value else None


def test_unallowed_function_is_dead_lettered_as_unroutable_without_importing(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import json_helpers_never_imported_by_workers as forbidden  # a module on sys.path

    caplog.set_level(logging.WARNING, logger="naq_resilience.worker")

    async def main() -> None:
        async with Client(nats_url) as client:
            job = await client.enqueue(forbidden.anything, 1, result_ttl=60)
            sys.modules.pop(forbidden.__name__)
            async with working(nats_url, unroutable_after=0.5):
                await until(lambda: _is(job.status(), JobStatus.FAILED))
                follow_up = await client.enqueue(worker_jobs.add, 1, 1, result_ttl=60)
                assert await follow_up.result(timeout=20) == 2
            (letter,) = await client.get_dead_letter_jobs("default.dead")
            record = await client.get_job(job.job_id)
            (failed,) = [r async for r in await client.get_failed_jobs()]
            with pytest.raises(JobFailedError, match=r"failed: unroutable: "):
                await job.result(timeout=20)
        name = forbidden.__name__
        assert letter.reason.startswith(f"unroutable: no worker ran function {name}:anything")
        assert f"this worker does not import module {name}" in letter.reason
        for fix in (f"--import {name}", f"NAQ_IMPORTS={name}", "[tool.naq]"):
            assert fix in letter.reason
        assert letter.error_type == "naq_resilience:UnroutableJob"
        assert letter.failures == []  # it never ran: no attempt, no failure record
        assert record is not None
        assert (record.status, record.attempts) == (JobStatus.FAILED, 0)
        assert record.error_type == failed.error_type == "naq_resilience:UnroutableJob"
        assert name not in sys.modules
        levels = {
            r.levelno for r in caplog.records
            if r.name == "naq_resilience.worker" and f"{name}:anything" in r.getMessage()
        }  # fmt: skip
        assert levels == {logging.WARNING, logging.ERROR}  # handed back, then dead-lettered

    run(main())


def test_a_job_a_worker_cannot_route_is_handed_back_for_one_that_can(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling deploy, or a forgotten --import: the worker without the jobs' module
    hands them back, not as attempts, and a worker that imports it runs them."""
    caplog.set_level(logging.WARNING, logger="naq_resilience.worker")

    async def main() -> None:
        async with Client(nats_url) as client:
            added = await client.enqueue(worker_jobs.add, 2, b=3, result_ttl=60)
            flaky = await client.enqueue(worker_jobs.fails_twice, "handed", result_ttl=60)
            async with working(nats_url, imports=["jobs_for_registry"]):
                for job in (added, flaky):
                    await until(partial(read_ledger, nats_url, job.job_id))
                    handed = await read_ledger(nats_url, job.job_id)
                    assert handed is not None
                    assert handed.handed_back == handed.unroutable >= 1
                    assert handed.unroutable_since is not None
                    assert handed.failed == 0
                    record = await client.get_job(job.job_id)
                    assert record is not None
                    assert record.status is JobStatus.QUEUED  # not running, not retrying
                assert worker_jobs.calls == []
            async with working(nats_url):
                assert await added.result(timeout=30) == 5
                assert await flaky.result(timeout=30) == "handed ok after 3"
            done = await client.get_job(added.job_id)
            retried = await client.get_job(flaky.job_id)
            after = await read_ledger(nats_url, flaky.job_id)
            failures = await failure_records(nats_url, flaky.job_id)
        assert done is not None
        assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)  # no attempt counted
        assert retried is not None
        assert (retried.status, retried.attempts) == (JobStatus.COMPLETED, 3)
        assert [f.attempt for f in failures] == [1, 2]  # numbered from 1: no hand-back
        assert all(f.crashes == 0 for f in failures)  # hand-backs are not crashes either
        assert after is not None
        assert after.unroutable_since is None  # a worker that can run it took it
        assert after.failed == 2

    run(main())
    warnings = [
        r for r in caplog.records
        if r.name == "naq_resilience.worker" and "handed back for another worker" in r.getMessage()
    ]  # fmt: skip
    assert {r.levelno for r in warnings} == {logging.WARNING}
    texts = " ".join(r.getMessage() for r in warnings)
    assert "worker_jobs:add" in texts
    assert "worker_jobs:fails_twice" in texts
    assert "--import worker_jobs" in texts


def test_hand_backs_whose_ledger_cannot_be_written_still_end(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing loops: when the attempts bucket refuses the ledger, the wait for a capable
    worker cannot be measured, and each hand-back counts as a crash instead, so the job
    ends as a poison job after max_crashes rounds, not never."""

    async def refused(self: Worker, job_id: str, ledger: Ledger) -> None:
        return None

    monkeypatch.setattr(Worker, "_write_ledger", refused)

    async def main() -> None:
        async with Client(nats_url) as client:
            job = await client.enqueue(worker_jobs.add, 1, 2)
            async with working(
                nats_url, imports=["jobs_for_registry"], unroutable_after=3600, max_crashes=2
            ):
                await until(lambda: _is(job.status(), JobStatus.FAILED))
            (letter,) = await client.get_dead_letter_jobs("default.dead")
        assert "poison job" in letter.reason
        assert worker_jobs.calls == []

    run(main())


def test_a_name_no_worker_could_run_is_dead_lettered_at_once(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its module is imported, but the name is a value, not a function: every worker
    importing the module refuses it alike, so it is not handed around."""
    caplog.set_level(logging.WARNING, logger="naq_resilience.worker")

    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            async with working(nats_url, unroutable_after=3600), Client(nats_url) as client:
                envelope = JobEnvelope(id="not-a-function", function="worker_jobs:calls")
                await nc.jetstream().publish(
                    layout.job_subject("default"), msgspec.json.encode(envelope)
                )
                letters: list[Any] = []

                async def dead() -> bool:
                    letters[:] = await client.get_dead_letter_jobs("default.dead")
                    return bool(letters)

                await until(dead)
        finally:
            await nc.close()
        (letter,) = letters
        assert letter.reason == "worker_jobs:calls is not a function"
        assert letter.error_type is None
        assert await read_ledger(nats_url, "not-a-function") is None  # never handed back

    run(main())
    assert [r.levelno for r in caplog.records if "worker_jobs:calls" in r.getMessage()] == [
        logging.ERROR  # a dead letter
    ]


def test_unencodable_argument_fails_at_enqueue_naming_it(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            with pytest.raises(TypeError, match="keyword argument 'b' of worker_jobs:add"):
                await client.enqueue(worker_jobs.add, 1, b=object())

    run(main())


def test_bad_options_fail_at_enqueue(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            with pytest.raises(ValueError, match="queue_name"):
                await client.enqueue(worker_jobs.add, 1, 2, queue_name="a.b")
            with pytest.raises(ValueError, match="max_retries"):
                await client.enqueue(worker_jobs.add, 1, 2, max_retries=-1)
            with pytest.raises(ValueError, match="unknown retry_strategy"):
                await client.enqueue(worker_jobs.add, 1, 2, retry_strategy="soon")
            with pytest.raises(TypeError, match="exception classes"):
                await client.enqueue(worker_jobs.add, 1, 2, retry_on=[3])

    run(main())


def test_open_breaker_defers_without_using_attempts(nats_url: str, tmp_path: Any) -> None:
    import os

    os.environ["NAQ_TEST_TRACE_DIR"] = str(tmp_path)

    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url, concurrency=1):
            first = [
                await client.enqueue(worker_jobs.call_dependency, f"f{i}", max_retries=0)
                for i in range(3)
            ]
            for job in first:
                await until(lambda job=job: _is(job.status(), JobStatus.FAILED))
            # The breaker is open now: these are deferred, not failed.
            later = [
                await client.enqueue(worker_jobs.call_dependency, f"l{i}", max_retries=0,
                                     result_ttl=60)
                for i in range(3)
            ]  # fmt: skip
            await asyncio.sleep(0.3)
            worker_jobs.flag_path().touch()
            results = [await job.result(timeout=30) for job in later]
            for job in later:
                # deferred, never failed: no failure record, and not a dead letter
                assert await failure_records(nats_url, job.job_id) == []
            nc = await nats.connect(nats_url)
            ledgers = await nc.jetstream().key_value(layout.ATTEMPT_BUCKET)
            entry = await ledgers.get(later[0].job_id)
            await nc.close()
        assert results == ["l0", "l1", "l2"]
        assert entry.value is not None
        ledger = decode(entry.value, Ledger)
        assert ledger.deferred >= 1
        assert ledger.failed == 0

    try:
        run(main())
    finally:
        os.environ.pop("NAQ_TEST_TRACE_DIR", None)


def test_an_open_error_that_does_not_say_when_defers_the_job(nats_url: str) -> None:
    """A breaker of the user's own raises CircuitBreakerOpenError("...") without a
    retry_after: the job is deferred (the first time for 1 s), not failed."""
    worker_jobs._deferred_once.clear()

    async def main() -> Ledger:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(
                worker_jobs.guarded_by_my_own_breaker, "g1", max_retries=0, result_ttl=60
            )
            assert await job.result(timeout=30) == "g1"
            assert await failure_records(nats_url, job.job_id) == []
            nc = await nats.connect(nats_url)
            try:
                ledgers = await nc.jetstream().key_value(layout.ATTEMPT_BUCKET)
                entry = await ledgers.get(job.job_id)
            finally:
                await nc.close()
        assert entry.value is not None
        return decode(entry.value, Ledger)

    ledger = run(main())
    assert (ledger.deferred, ledger.failed) == (1, 0)
    assert worker_jobs.calls == [("guarded_by_my_own_breaker", "g1")]


def test_enqueue_sync_from_plain_code_and_from_a_running_loop(nats_url: str) -> None:
    from naq_resilience import SyncClient, enqueue_sync

    with SyncClient(nats_url) as client:
        first = client.enqueue(worker_jobs.add, 1, 1)
    second = enqueue_sync(worker_jobs.add, 2, 2, nats_url=nats_url)

    async def inside_a_loop() -> str:
        return enqueue_sync(worker_jobs.add, 3, 3, nats_url=nats_url).job_id

    third = run(inside_a_loop())
    assert len({first.job_id, second.job_id, third}) == 3

    async def drain() -> None:
        async with working(nats_url):
            await until(lambda: len(worker_jobs.calls) == 3)

    run(drain())
    assert sorted(args for _, args in worker_jobs.calls) == [(1, 1), (2, 2), (3, 3)]


def test_job_status_of_a_queued_job(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            job = await client.enqueue(worker_jobs.add, 1, 2)
            assert await job.status() is JobStatus.QUEUED
            with pytest.raises(ValueError, match="result_ttl"):
                await job.result()
            nc = await nats.connect(nats_url)
            with pytest.raises(NotFoundError):
                await nc.jetstream().get_last_msg(
                    layout.DEAD_STREAM, layout.dead_subject("default.dead", job.job_id)
                )
            await nc.close()

    run(main())


def test_job_timeout_is_a_failed_attempt(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.slow, 30.0, "t", timeout=0.2, max_retries=0)
            await until(lambda: _is(job.status(), JobStatus.FAILED))
            (letter,) = await client.get_dead_letter_jobs("default.dead")
        assert letter.failures[0].error_type == "builtins:TimeoutError"
        assert "ran past its timeout of 0.2s and was cancelled" in letter.failures[0].message

    run(main())


@pytest.mark.parametrize("func", [worker_jobs.own_timeout, worker_jobs.own_timeout_sync])
def test_a_jobs_own_timeout_error_is_not_taken_for_the_job_timeout(
    nats_url: str, func: Any
) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(func, "billing", timeout=30, max_retries=0)
            await until(lambda: _is(job.status(), JobStatus.FAILED))
            (letter,) = await client.get_dead_letter_jobs("default.dead")
        (record,) = letter.failures
        assert record.message == "the billing upstream timed out"

    run(main())


def test_long_job_keeps_its_message_with_heartbeats(nats_url: str) -> None:
    """ack_wait is 1 s and the job takes 2.5 s: without in_progress() it would be redelivered."""

    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url, ack_wait=1.0):
            job = await client.enqueue(worker_jobs.slow, 2.5, "long", result_ttl=60)
            assert await job.result(timeout=30) == "long"
            nc = await nats.connect(nats_url)
            info = await nc.jetstream().consumer_info(
                layout.JOB_STREAM, layout.worker_consumer("default")
            )
            await nc.close()
        assert info.num_redelivered == 0

    run(main())


def test_failed_saga_job_is_rolled_back_and_leaves_no_log(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.checkout, "lamp", result_ttl=60)
            with pytest.raises(JobFailedError, match="declined"):
                await job.result(timeout=20)
            nc = await nats.connect(nats_url)
            sagas = await nc.jetstream().key_value(layout.SAGA_BUCKET)
            try:
                keys = await sagas.keys()
            except NoKeysError:
                keys = []
            await nc.close()
        assert worker_jobs.undone == [("hold", "lamp")]
        assert job.job_id not in keys

    run(main())


def test_dead_letter_reads_refuse_bad_names(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            with pytest.raises(ValueError, match=r"emails\.dead"):
                await client.get_dead_letter_jobs("naq.>")
            with pytest.raises(ValueError, match="limit"):
                await client.get_dead_letter_jobs("default.dead", limit=0)
            with pytest.raises(ValueError, match="dead_letter_queue"):
                await client.enqueue(worker_jobs.add, 1, 2, dead_letter_queue="a.b.c")

    run(main())


def test_enqueue_many_with_a_bad_call_enqueues_nothing(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            with pytest.raises(TypeError, match="argument tuples"):
                await client.enqueue_many(worker_jobs.add, [(1, 2), "3, 4"])  # type: ignore[list-item]
            with pytest.raises(TypeError, match="positional argument 1"):
                await client.enqueue_many(worker_jobs.add, [(1, 2), (3, object())])
            nc = await nats.connect(nats_url)
            info = await nc.jetstream().stream_info(layout.JOB_STREAM)
            await nc.close()
        assert info.state.messages == 0

    run(main())


def test_module_level_enqueue_works_across_event_loops(nats_url: str) -> None:
    """Each `asyncio.run` is a new loop: the shared connection must not outlive its loop."""
    from naq_resilience import enqueue

    first = run(enqueue(worker_jobs.add, 1, 1, nats_url=nats_url))
    second = run(enqueue(worker_jobs.add, 2, 2, nats_url=nats_url))
    assert first.job_id != second.job_id
    assert second.sequence == first.sequence + 1


def test_a_worker_on_another_thread_stops_when_asked_from_this_one(nats_url: str) -> None:
    import threading

    worker = Worker("default", nats_url=nats_url, imports=["worker_jobs"])
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    thread.start()

    async def job_done() -> None:
        async with Client(nats_url) as client:
            job = await client.enqueue(worker_jobs.add, 4, 5, result_ttl=60)
            assert await job.result(timeout=20) == 9

    run(job_done())
    worker.stop()
    thread.join(30)
    assert not thread.is_alive()


def test_a_bug_while_settling_ends_in_a_dead_letter_that_says_so(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_failure_path(*args: Any) -> None:
        raise RuntimeError("a bug in the failure path")

    monkeypatch.setattr(Worker, "_failed", broken_failure_path)

    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.raises, "value")
            await until(lambda: _is(job.status(), JobStatus.FAILED))
            (letter,) = await client.get_dead_letter_jobs("default.dead")
        assert letter.reason == (
            "the worker failed while handling this message: builtins:RuntimeError: "
            "a bug in the failure path"
        )
        assert letter.job is not None
        assert letter.job.id == job.job_id

    run(main())


def test_when_even_the_dead_letter_fails_a_minimal_one_keeps_the_message_verbatim(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Worker, "_failed", broken)
    monkeypatch.setattr(Worker, "_dead", broken)

    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.raises, "value")
            await until(lambda: _is(job.status(), JobStatus.FAILED))
            (letter,) = await client.get_dead_letter_jobs("default.dead")
            nc = await nats.connect(nats_url)
            original = await nc.jetstream().get_last_msg(
                layout.DEAD_STREAM, letter.original_subject or ""
            )
            await nc.close()
        assert letter.reason.startswith("the worker failed while handling this message")
        assert letter.cut == [f"a last-resort letter: the job's message is kept verbatim at "
                              f"{letter.original_subject}"]  # fmt: skip
        assert decode(original.data or b"", JobEnvelope).id == job.job_id

    run(main())


def test_a_worker_runs_on_a_thread_for_a_block_of_plain_code(nats_url: str) -> None:
    """`with worker.running():` for synchronous programs: it works during the block and
    is stopped after it; an error that ended it is raised there."""
    from naq_resilience import SyncClient

    worker = Worker("default", nats_url=nats_url, imports=["worker_jobs"], shutdown_grace=1)
    with worker.running(), SyncClient(nats_url) as client:
        assert client.enqueue(worker_jobs.add, 2, 3, result_ttl=60).result(timeout=30) == 5
    assert worker._stopping.is_set()
    broken = Worker("default", nats_url="nats://127.0.0.1:9")
    with pytest.raises(Exception, match=r"127\.0\.0\.1:9"), broken.running(timeout=5):
        pass
