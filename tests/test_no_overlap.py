"""Runs the user cannot prevent: two attempts of one job must never overlap.

Each case once ran a job twice at the same time (or twice in all) through no fault of
the user: a timed-out enqueue whose buffered publish was stored later, a sync job's
thread that outlived its timeout, a job handed back at shutdown while its thread ran
on, and an async job blocking the loop that sent everyone's heartbeats.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import nats
import pytest

from naq_resilience import Client, ConnectionSettings, JobStatus
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.publisher import PublishTimeoutError
from naq_resilience.jetstream.server import EmbeddedServer

import worker_jobs
from processes import WorkerProcess, dead_letters, enqueue, events, status, wait_until


def runs(trace: Path, tag: str) -> list[tuple[float, float]]:
    """(start, end) of every run of `timed(..., tag)`, from the trace."""
    starts = [float(e.split()[2]) for e in events(trace) if e.startswith(f"start {tag} ")]
    ends = [float(e.split()[2]) for e in events(trace) if e.startswith(f"done {tag} ")]
    return list(zip(sorted(starts), sorted(ends), strict=True))


def assert_one_at_a_time(spans: list[tuple[float, float]]) -> None:
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"a run started at {start} before the previous ended at {end}"


def test_an_enqueue_whose_ack_was_lost_is_retried_safely_with_its_job_id(
    fresh_nats_server: EmbeddedServer, trace: Path, workers: list[WorkerProcess]
) -> None:
    url = fresh_nats_server.url
    settings = ConnectionSettings(url, reconnect_time_wait=0.1)

    async def main() -> str:
        async with Client(settings=settings, publish_timeout=1.0) as client:
            await client.connect()
            fresh_nats_server.kill()
            with pytest.raises(PublishTimeoutError, match="job_id=") as caught:
                await client.enqueue(worker_jobs.slow, 0.01, "once")
            job_id = str(caught.value).split("job_id='")[1].split("'")[0]
            assert f"Job {job_id} " in str(caught.value)
            fresh_nats_server.restart()  # the buffered publish goes out on reconnect
            # What the error says to do: the same job again, under its id.
            again = await client.enqueue(worker_jobs.slow, 0.01, "once", job_id=job_id)
            assert again.job_id == job_id
            return job_id

    job_id = asyncio.run(main())

    async def stored() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().stream_info(layout.JOB_STREAM)).state.messages
        finally:
            await nc.close()

    assert asyncio.run(stored()) == 1  # two publishes, one job
    workers.append(WorkerProcess(url, trace, name="w"))
    wait_until(lambda: status(url, job_id) is JobStatus.COMPLETED, what="the job runs")
    time.sleep(0.5)
    assert events(trace).count("start once") == 1


def test_an_idempotency_key_returns_the_job_that_is_stored(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            first = await client.enqueue(worker_jobs.add, 1, 2, idempotency_key="order-42")
            second = await client.enqueue(worker_jobs.add, 1, 2, idempotency_key="order-42")
            assert (second.job_id, second.sequence) == (first.job_id, first.sequence)
            # What a PublishTimeoutError advises, for a job with a key: retry by its id.
            third = await client.enqueue(worker_jobs.add, 1, 2, job_id=first.job_id)
            assert third.sequence == first.sequence

    asyncio.run(main())


@pytest.mark.usefixtures("clean_jetstream")
def test_a_sync_job_past_its_timeout_never_overlaps_its_next_attempt(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    (job_id,) = enqueue(
        nats_url, worker_jobs.timed, [(1.5, "t")], timeout=0.3, max_retries=2, retry_delay=0
    )
    for name in ("a", "b"):  # a retry could go to either
        workers.append(WorkerProcess(nats_url, trace, "--ack-wait", "1", name=name))
    wait_until(lambda: status(nats_url, job_id) is JobStatus.FAILED, what="a dead letter")
    spans = runs(trace, "t")
    assert len(spans) == 3  # every attempt ran to its end, one after the other
    assert_one_at_a_time(spans)
    (letter,) = dead_letters(nats_url)
    assert letter.reason == "out of attempts (3 of 3): builtins:TimeoutError"
    assert all("ran past its timeout of 0.3s" in f.message for f in letter.failures)
    assert [f.crashes for f in letter.failures] == [0, 0, 0]


@pytest.mark.usefixtures("clean_jetstream")
def test_sigterm_waits_for_a_sync_job_instead_of_handing_it_back(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    (job_id,) = enqueue(nats_url, worker_jobs.timed, [(3.0, "s")], result_ttl=60)
    first = WorkerProcess(nats_url, trace, "--shutdown-grace", "0.5", "--ack-wait", "1", name="a")
    workers.append(first)
    wait_until(lambda: len([e for e in events(trace) if e.startswith("start s")]) == 1,
               what="the job starts")  # fmt: skip
    workers.append(WorkerProcess(nats_url, trace, "--ack-wait", "1", name="b"))
    assert first.terminate() == 0  # returns once the thread has ended and the job is settled
    assert status(nats_url, job_id) is JobStatus.COMPLETED
    assert len(runs(trace, "s")) == 1
    log = first.log()
    assert "sync ones run on threads Python cannot stop: the worker waits for them" in log
    time.sleep(1.5)  # longer than ack_wait: nothing was left to redeliver
    assert len([e for e in events(trace) if e.startswith("start s")]) == 1


@pytest.mark.usefixtures("clean_jetstream")
def test_an_async_job_cancelled_at_shutdown_is_handed_back_without_using_an_attempt(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    (job_id,) = enqueue(nats_url, worker_jobs.slow, [(3.0, "c")], result_ttl=60)  # no retries
    first = WorkerProcess(nats_url, trace, "--shutdown-grace", "0.5", name="a")
    workers.append(first)
    wait_until(lambda: events(trace).count("start c") == 1, what="the job starts")
    assert first.terminate() == 0
    assert "handed back" in first.log()
    workers.append(WorkerProcess(nats_url, trace, name="b"))
    wait_until(lambda: status(nats_url, job_id) is JobStatus.COMPLETED, what="it runs again")
    assert events(trace).count("start c") == 2
    assert events(trace).count("done c") == 1
    assert dead_letters(nats_url) == []


@pytest.mark.usefixtures("clean_jetstream")
def test_a_job_blocking_the_loop_does_not_silence_the_heartbeats_of_others(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    jobs = enqueue(nats_url, worker_jobs.slow, [(5.0, "long")], result_ttl=60)
    blocker = enqueue(nats_url, worker_jobs.blocks_the_loop, [(4.0, "blocker")])
    first = WorkerProcess(nats_url, trace, "--ack-wait", "1.5", name="a")
    workers.append(first)
    wait_until(lambda: {"start long", "start blocker"} <= set(events(trace)), what="both start")
    # Another worker is ready to take any job whose heartbeats stop.
    workers.append(WorkerProcess(nats_url, trace, "--ack-wait", "1.5", name="b"))
    wait_until(lambda: status(nats_url, jobs[0]) is JobStatus.COMPLETED, what="the long job")
    assert events(trace).count("start long") == 1
    assert events(trace).count("start blocker") == 1
    first.wait_for_log("is blocked (", timeout=10)
    assert f"by job {blocker[0]} (worker_jobs:blocks_the_loop)" in first.log()
