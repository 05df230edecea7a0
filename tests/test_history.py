"""Every job's history: by id, by time window, from async and plain code, on a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import nats
import pytest

from naq_resilience import (
    Client,
    JobRecord,
    JobStatus,
    StorageSettings,
    Worker,
    enqueue_sync,
    get_failed_jobs,
    get_job,
    get_jobs_in_timeframe,
)

import worker_jobs

pytestmark = pytest.mark.usefixtures("clean_jetstream")


@asynccontextmanager
async def working(url: str, **options: Any) -> AsyncIterator[Worker]:
    worker = Worker("default", nats_url=url, imports=["worker_jobs"], **options)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def until_status(client: Client, job_id: str, status: JobStatus) -> JobRecord:
    for _ in range(1000):
        record = await client.get_job(job_id)
        if record is not None and record.status is status:
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {status}: {record}")


def test_a_late_queued_record_never_hides_what_the_worker_wrote(nats_url: str) -> None:
    """The client's "queued" is sent without an ack; a fast worker can record the job
    first. The late "queued" must not replace it, or a finished job reads as queued."""

    async def main() -> None:
        nc = await nats.connect(nats_url)
        async with Client(nats_url) as client:
            first = JobRecord(
                job_id="early-1", queue="default", function="worker_jobs:add",
                status=JobStatus.RUNNING, updated_at=time.time(), enqueued_at=time.time(),
            )  # fmt: skip
            await nc.jetstream().publish("naq.history.early-1", msgspec.json.encode(first))
            await client.enqueue(worker_jobs.add, 1, 1, job_id="early-1")
            await asyncio.sleep(0.3)  # the "queued" record, had it been let through
            record = await client.get_job("early-1")
            assert record is not None
            assert record.status is JobStatus.RUNNING
        await nc.close()

    asyncio.run(main())


def test_a_job_is_recorded_from_queued_to_completed(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            job = await client.enqueue(worker_jobs.add, 2, 3)
            # Sent without waiting for an ack, the record may trail the enqueue a moment.
            queued = await until_status(client, job.job_id, JobStatus.QUEUED)
            assert (queued.status, queued.queue, queued.function) == (
                JobStatus.QUEUED, "default", "worker_jobs:add",
            )  # fmt: skip
            assert queued.enqueued_at > 0
            async with working(nats_url) as worker:
                done = await until_status(client, job.job_id, JobStatus.COMPLETED)
            assert done.attempts == 1
            assert done.worker_id == worker.worker_id
            assert done.started_at is not None
            assert done.finished_at is not None
            assert done.enqueued_at <= done.started_at <= done.finished_at
            assert await job.status() is JobStatus.COMPLETED  # no result_ttl needed

    asyncio.run(main())


def test_retrying_running_and_failed_are_recorded_with_their_errors(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url, ack_wait=3):
            flaky = await client.enqueue(
                worker_jobs.fail_with, 10, "connection", max_retries=1, retry_delay=30
            )
            retrying = await until_status(client, flaky.job_id, JobStatus.RETRYING)
            assert retrying.error_type == "builtins:ConnectionError"
            assert retrying.attempts == 1
            assert retrying.next_retry_at is not None
            assert retrying.next_retry_at > retrying.updated_at
            slow = await client.enqueue(worker_jobs.slow, 3.0, "long")
            running = await until_status(client, slow.job_id, JobStatus.RUNNING)
            assert running.started_at is not None
            await until_status(client, slow.job_id, JobStatus.COMPLETED)
            bad = await client.enqueue(worker_jobs.fail_with, 10, "value")
            failed = await until_status(client, bad.job_id, JobStatus.FAILED)
            assert failed.error_type == "builtins:ValueError"
            assert failed.dead_letter_queue == "default.dead"
            assert await bad.status() is JobStatus.FAILED

    asyncio.run(main())


def test_a_window_counts_in_one_request_and_pages_through_its_jobs(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            before = await client.enqueue_many(worker_jobs.add, [(i, 1) for i in range(30)])
            await asyncio.sleep(1.1)  # JetStream's start times are to the second or better
            cut = time.time()
            after = await client.enqueue_many(worker_jobs.add, [(i, 2) for i in range(2500)])
            # Records are sent without waiting for acks: a read may run ahead of them
            # for a moment. A window is fixed at first use, so ask for new ones.
            for _ in range(500):
                window = await client.get_jobs_in_timeframe(since=cut)
                if await window.count() == len(after):
                    break
                await asyncio.sleep(0.01)
            assert await window.count() == len(after)
            ids = [record.job_id async for record in window]
            assert sorted(ids) == sorted(job.job_id for job in after)
            everything = await client.get_jobs_in_timeframe(hours=1)
            assert await everything.count() == len(before) + len(after)

    asyncio.run(main())


def test_the_guides_names_work_from_plain_code(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAQ_NATS_URL", nats_url)
    good = [enqueue_sync(worker_jobs.add, i, 1) for i in range(3)]
    bad = enqueue_sync(worker_jobs.fail_with, 10, "value")

    async def run_them() -> None:
        async with Client(nats_url) as client, working(nats_url):
            for job in [*good, bad]:
                await until_status(client, job.job_id, (
                    JobStatus.FAILED if job is bad else JobStatus.COMPLETED
                ))  # fmt: skip

    asyncio.run(run_them())
    recent_jobs = get_jobs_in_timeframe(hours=1)  # as the guide writes it
    total_jobs = len(recent_jobs)
    failed_jobs = len([j for j in recent_jobs if j.status == "failed"])
    assert (total_jobs, failed_jobs) == (4, 1)
    assert recent_jobs[0].job_id in {job.job_id for job in [*good, bad]}
    failed = get_failed_jobs(hours=24)
    assert len(failed) == 1
    (only,) = list(failed)
    assert (only.job_id, only.status, only.error_type) == (
        bad.job_id, JobStatus.FAILED, "builtins:ValueError",
    )  # fmt: skip
    record = get_job(good[0].job_id)
    assert record is not None
    assert record.status is JobStatus.COMPLETED


def test_history_keeps_the_newest_jobs_within_its_limit(nats_url: str) -> None:
    async def main() -> None:
        storage = StorageSettings(history_max_jobs=5)
        async with Client(nats_url, storage=storage) as client:
            jobs = [await client.enqueue(worker_jobs.add, i, 1) for i in range(8)]
            assert await client.get_job(jobs[0].job_id) is None  # beyond the limit: gone
            kept = await client.get_job(jobs[-1].job_id)
            assert kept is not None
            assert kept.status is JobStatus.QUEUED
            # Without its record, a Job still knows where it is from the broker's state.
            assert await jobs[0].status() is JobStatus.QUEUED

    asyncio.run(main())


def test_a_job_leaves_the_history_with_its_retention_window(nats_url: str) -> None:
    """The window is the stream's max_age (7 days unless told): the server drops a
    record older than that, so get_job and the windows stop reporting the job."""

    async def main() -> None:
        async with Client(nats_url) as client:
            js, _ = await client._ready()
            info = await js.stream_info("NAQ_HISTORY")
            assert info.config.max_age == 7 * 24 * 3600
        await asyncio.to_thread(_delete_streams, nats_url)
        async with Client(nats_url, storage=StorageSettings(history_max_age=1)) as client:
            job = await client.enqueue(worker_jobs.add, 1, 2)
            assert await until_status(client, job.job_id, JobStatus.QUEUED)
            for _ in range(300):
                if await client.get_job(job.job_id) is None:
                    break
                await asyncio.sleep(0.05)
            assert await client.get_job(job.job_id) is None
            assert await (await client.get_jobs_in_timeframe(hours=1)).count() == 0

    asyncio.run(main())


def _delete_streams(url: str) -> None:
    from naq_resilience.testing.nats import _delete_every_stream

    asyncio.run(_delete_every_stream(url))
