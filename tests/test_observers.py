"""A worker tells its observers every change of a job's state and every failed attempt,
on a real server; an observer that fails changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from naq_resilience import Client, FailureRecord, JobRecord, JobStatus, Worker
from naq_resilience.jetstream.observers import JobObserver

import worker_jobs

pytestmark = pytest.mark.usefixtures("clean_jetstream")


class Seen:
    def __init__(self) -> None:
        self.records: list[JobRecord] = []
        self.failures: list[FailureRecord] = []

    def job_changed(self, record: JobRecord) -> None:
        self.records.append(record)

    def attempt_failed(self, failure: FailureRecord) -> None:
        self.failures.append(failure)


class Broken:
    def job_changed(self, record: JobRecord) -> None:
        raise RuntimeError("observer bug")

    def attempt_failed(self, failure: FailureRecord) -> None:
        raise RuntimeError("observer bug")


def run_jobs(url: str, observers: list[JobObserver], enqueue: Any, until: Any) -> None:
    async def main() -> None:
        worker = Worker("default", nats_url=url, imports=["worker_jobs"], observers=observers)
        task = asyncio.create_task(worker.run())
        async with Client(url) as client:
            await enqueue(client)
            for _ in range(1500):
                if until():
                    break
                await asyncio.sleep(0.02)
        worker.stop()
        await task

    asyncio.run(main())


def test_observers_see_every_state_and_failed_attempt(nats_url: str) -> None:
    seen = Seen()
    ids: dict[str, str] = {}

    async def enqueue(client: Client) -> None:
        ids["ok"] = (await client.enqueue(worker_jobs.add, 1, 2)).job_id
        ids["bad"] = (await client.enqueue(worker_jobs.raises, "value")).job_id
        ids["flaky"] = (await client.enqueue(worker_jobs.fails_twice, "obs")).job_id

    def done() -> bool:
        final = {
            r.job_id for r in seen.records if r.status in (JobStatus.COMPLETED, JobStatus.FAILED)
        }
        return len(ids) == 3 and final >= set(ids.values())

    run_jobs(nats_url, [Broken(), seen], enqueue, done)
    by_job: dict[str, list[JobStatus]] = {}
    for record in seen.records:
        by_job.setdefault(record.job_id, []).append(record.status)
    assert by_job[ids["ok"]] == [JobStatus.COMPLETED]
    assert by_job[ids["bad"]] == [JobStatus.FAILED]
    assert by_job[ids["flaky"]] == [JobStatus.RETRYING, JobStatus.RETRYING, JobStatus.COMPLETED]
    assert sorted((f.job_id, f.attempt, f.outcome) for f in seen.failures) == sorted([
        (ids["bad"], 1, "dead"), (ids["flaky"], 1, "retry"), (ids["flaky"], 2, "retry"),
    ])  # fmt: skip
    assert {f.error_type for f in seen.failures} == {
        "builtins:ValueError",
        "builtins:ConnectionError",
    }
