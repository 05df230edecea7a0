"""Workers as real processes: kill -9, server crash and restart, SIGTERM, poison jobs,
breaker state shared between processes, and saga rollback after a crash."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from naq_resilience import Client, JobStatus
from naq_resilience.codec import decode
from naq_resilience.jetstream import layout
from naq_resilience.models import BreakerRecord, JobResult

import worker_jobs
from processes import WorkerProcess, enqueue, events, status, wait_until

pytestmark = pytest.mark.usefixtures("clean_jetstream")


def test_kill_9_of_a_worker_mid_run_loses_no_job(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    tags = [f"k{i}" for i in range(12)]
    enqueue(nats_url, worker_jobs.slow, [(0.4, tag) for tag in tags], max_retries=3)
    first = WorkerProcess(nats_url, trace, "--concurrency", "4", "--ack-wait", "2", name="a")
    workers.append(first)
    wait_until(lambda: sum(e.startswith("start") for e in events(trace)) >= 4, what="jobs start")
    first.kill()
    in_flight = {e.split()[1] for e in events(trace) if e.startswith("start")} - {
        e.split()[1] for e in events(trace) if e.startswith("done")
    }
    assert in_flight, "the kill should land while jobs run"
    workers.append(
        WorkerProcess(nats_url, trace, "--concurrency", "4", "--ack-wait", "2", name="b")
    )
    wait_until(
        lambda: {e.split()[1] for e in events(trace) if e.startswith("done")} == set(tags),
        what="every job done",
    )
    # The jobs killed mid-run ran again: at-least-once, never lost.
    started = [e.split()[1] for e in events(trace) if e.startswith("start")]
    assert all(started.count(tag) >= 2 for tag in in_flight)


def test_server_killed_and_restarted_mid_run_loses_no_job(
    fresh_nats_server: Any, trace: Path, workers: list[WorkerProcess]
) -> None:
    url = fresh_nats_server.url
    tags = [f"s{i}" for i in range(150)]
    enqueue(url, worker_jobs.slow, [(0.02, tag) for tag in tags], max_retries=5)
    workers.append(WorkerProcess(url, trace, "--concurrency", "4", name="w"))
    wait_until(lambda: sum(e.startswith("done") for e in events(trace)) >= 20, what="progress")
    fresh_nats_server.kill()
    time.sleep(0.5)
    fresh_nats_server.restart()
    wait_until(
        lambda: {e.split()[1] for e in events(trace) if e.startswith("done")} == set(tags),
        timeout=90,
        what="every job done after the restart",
    )
    assert workers[0].proc.poll() is None, "the worker must survive the server restart"


def test_sigterm_finishes_the_running_job_then_exits(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    (job_id,) = enqueue(nats_url, worker_jobs.slow, [(1.0, "g")])
    worker = WorkerProcess(nats_url, trace, "--concurrency", "2", name="g")
    workers.append(worker)
    wait_until(lambda: "start g" in events(trace), what="the job starts")
    assert worker.terminate() == 0
    assert events(trace) == ["start g", "done g"]
    assert status(nats_url, job_id) is JobStatus.COMPLETED
    assert "stopped" in worker.log()


@pytest.mark.parametrize("max_crashes", [2, 3])
def test_poison_job_ends_in_the_dead_letter_queue_after_max_crashes(
    nats_url: str, trace: Path, workers: list[WorkerProcess], max_crashes: int
) -> None:
    # Retries do not matter: crashes have their own limit, apart from attempts.
    (job_id,) = enqueue(nats_url, worker_jobs.crash, [("p",)], max_retries=5)
    options = ("--ack-wait", "1", "--max-crashes", str(max_crashes))
    for round_ in range(max_crashes):  # each delivery takes the worker down with it
        worker = WorkerProcess(nats_url, trace, *options, name=f"p{round_}")
        workers.append(worker)
        worker.proc.wait(30)
        assert worker.proc.returncode == 17
    survivor = WorkerProcess(nats_url, trace, *options, name="survivor")
    workers.append(survivor)
    wait_until(lambda: status(nats_url, job_id) is JobStatus.FAILED, what="dead letter")
    assert survivor.proc.poll() is None
    assert events(trace).count("crash p") == max_crashes

    async def letters() -> Any:
        async with Client(nats_url) as client:
            return await client.get_dead_letter_jobs("default.dead")

    (letter,) = asyncio.run(letters())
    assert "poison" in letter.reason
    assert f"during {max_crashes} deliveries" in letter.reason
    assert letter.failures == []  # it never failed: it crashed


def test_a_job_without_retries_survives_its_worker_being_killed(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    (job_id,) = enqueue(nats_url, worker_jobs.slow_sync, [(2.0, "once")], result_ttl=60)
    first = WorkerProcess(nats_url, trace, "--ack-wait", "1", name="first")
    workers.append(first)
    wait_until(lambda: "start once" in events(trace), what="the job starts")
    first.kill()
    second = WorkerProcess(nats_url, trace, "--ack-wait", "1", name="second")
    workers.append(second)
    wait_until(lambda: status(nats_url, job_id) is JobStatus.COMPLETED, what="completion")
    assert events(trace).count("start once") == 2


def test_open_breaker_is_shared_with_another_worker_process(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    enqueue(nats_url, worker_jobs.call_dependency, [(f"f{i}",) for i in range(3)], max_retries=0)
    first = WorkerProcess(nats_url, trace, "--concurrency", "1", name="a")
    workers.append(first)
    wait_until(lambda: events(trace).count("fail f0") + events(trace).count("fail f1")
               + events(trace).count("fail f2") == 3, what="three failures")  # fmt: skip

    async def breaker_state() -> str:
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value(layout.BREAKER_BUCKET)
            keys = await kv.keys()
            entry = await kv.get(keys[0])
            assert entry.value is not None
            return decode(entry.value, BreakerRecord).state
        finally:
            await nc.close()

    wait_until(lambda: asyncio.run(breaker_state()) == "open", what="breaker open in KV")
    assert first.terminate() == 0
    # A new worker learns the open state from the bucket: it must not call the
    # dependency, only defer, until the breaker may close.
    later = enqueue(nats_url, worker_jobs.call_dependency, [(f"l{i}",) for i in range(4)],
                    max_retries=0)  # fmt: skip
    workers.append(WorkerProcess(nats_url, trace, "--concurrency", "1", name="b"))
    time.sleep(0.5)
    assert not [e for e in events(trace) if e.startswith("fail l")]
    worker_jobs.flag_path().touch()
    wait_until(lambda: all(f"ok l{i}" in events(trace) for i in range(4)), what="jobs complete")
    assert not [e for e in events(trace) if e.startswith("fail l")]
    assert all(status(nats_url, job_id) is JobStatus.COMPLETED for job_id in later)


def test_saga_interrupted_by_a_crash_is_rolled_back_on_redelivery(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    enqueue(nats_url, worker_jobs.order, [("book", True)], max_retries=2)
    crashed = WorkerProcess(nats_url, trace, "--ack-wait", "1", name="crashed")
    workers.append(crashed)
    crashed.proc.wait(30)
    assert events(trace) == ["reserve book"]
    workers.append(WorkerProcess(nats_url, trace, "--ack-wait", "1", name="next"))
    wait_until(lambda: "ordered book" in events(trace), what="the job completes")
    assert events(trace) == ["reserve book", "undo reserve book", "reserve book", "ordered book"]


def test_a_job_whose_result_is_stored_is_not_run_again_when_its_ack_was_lost(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    (job_id,) = enqueue(nats_url, worker_jobs.slow_sync, [(30.0, "once")], result_ttl=60)
    first = WorkerProcess(nats_url, trace, "--ack-wait", "1", name="first")
    workers.append(first)
    wait_until(lambda: "start once" in events(trace), what="the job starts")

    async def result_stored_then_worker_killed() -> None:
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value(layout.RESULT_BUCKET)
            record = JobResult(job_id=job_id, status=JobStatus.COMPLETED, result="once")
            await kv.put(job_id, msgspec.json.encode(record))
        finally:
            await nc.close()

    asyncio.run(result_stored_then_worker_killed())
    first.kill()  # after its result, before its ack
    second = WorkerProcess(nats_url, trace, "--ack-wait", "1", name="second")
    workers.append(second)
    second.wait_for_log("had already ended (completed): acked")
    assert events(trace).count("start once") == 1
    assert status(nats_url, job_id) is JobStatus.COMPLETED
