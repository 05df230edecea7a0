"""Seeing failures: a worker's log lines, as its process writes them and as `naq
worker-logs` reads them back from the server, from another process.

Every line is parsed as JSON, never string-matched; nothing here measures time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import log_jobs
import pytest

from naq_resilience import Client
from naq_resilience.jetstream.logstream import LogPublisher, LogQuery, read_logs
from naq_resilience.jetstream.streams import ensure_layout
from naq_resilience.models import LogRecord
from naq_resilience.ops.logging import running_worker

from processes import WorkerProcess, wait_until

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def enqueue(url: str, *calls: tuple[Any, str]) -> list[str]:
    async def main() -> list[str]:
        async with Client(url) as client:
            return [(await client.enqueue(func, arg)).job_id for func, arg in calls]

    return asyncio.run(main())


def naq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "naq_resilience.cli", *args, "--nats-url", url],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
    )  # fmt: skip


@pytest.fixture
def worker(clean_jetstream: str, workers: list[WorkerProcess], trace: Path) -> WorkerProcess:
    process = WorkerProcess(
        clean_jetstream, trace, "--import", "log_jobs", "--log-json", "--log-level", "DEBUG"
    )
    workers.append(process)
    return process


def test_a_workers_lines_are_json_with_the_job_and_what_became_of_it(
    clean_jetstream: str, worker: WorkerProcess
) -> None:
    url = clean_jetstream
    charge, notify, flaky, unexpected, invalid, breach = enqueue(
        url,
        (log_jobs.charge, "o-1"), (log_jobs.notify, "o-2"), (log_jobs.flaky, "o-3"),
        (log_jobs.unexpected, "o-4"), (log_jobs.invalid, "o-5"), (log_jobs.breach, "o-6"),
    )  # fmt: skip

    def settled() -> bool:
        ends = [
            line for line in json_lines(worker.log())
            if line.get("outcome") == "dead" or line["message"].startswith("notifying")
        ]  # fmt: skip
        return len(ends) == 5

    wait_until(settled, what="every job's last line")
    assert worker.terminate() == 0
    lines = json_lines(worker.log())  # every line of the process is one JSON object
    assert all({"timestamp", "level", "logger", "message"} <= line.keys() for line in lines)
    by_job: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_job.setdefault(line.get("job_id", ""), []).append(line)

    info, debug = by_job[charge]  # the job's own logger, on a job thread
    assert (info["logger"], info["level"], info["message"]) == (
        "log_jobs", "INFO", "charging order o-1",
    )  # fmt: skip
    assert (info["attempt"], info["function"], info["queue"]) == (1, "log_jobs:charge", "default")
    assert info["order"] == "o-1"
    assert info["worker_id"]
    assert debug["level"] == "DEBUG"
    assert [line["attempt"] for line in by_job[notify]] == [1]  # an async job, on the loop

    first, retried, second, dead = (
        line for line in by_job[flaky] if line["level"] != "DEBUG"
    )  # fmt: skip
    assert (first["logger"], first["attempt"]) == ("log_jobs", 1)
    assert retried["level"] == "WARNING"
    assert (retried["attempt"], retried["max_attempts"]) == (1, 2)
    assert retried["error_type"] == "builtins:ConnectionError"
    assert retried["error_message"] == "rates API down for o-3"
    assert retried["outcome"] == "retry"
    assert retried["next_retry_at"] > retried["timestamp"]
    assert second["attempt"] == 2
    assert dead["level"] == "ERROR"
    assert (dead["attempt"], dead["outcome"]) == (2, "dead")
    assert dead["dead_letter_queue"] == "default.dead"
    assert "traceback" not in dead  # an error the classification names: expected

    (surprise,) = [line for line in by_job[unexpected] if line["level"] != "DEBUG"]
    assert surprise["level"] == "ERROR"
    assert surprise["error_type"] == "builtins:KeyError"
    assert "KeyError: 'no price for o-4'" in surprise["traceback"]
    (refused,) = [line for line in by_job[invalid] if line["level"] != "DEBUG"]
    assert (refused["level"], refused["classification"]) == ("ERROR", "non_retryable")
    assert "traceback" not in refused
    # The worker's CRITICAL line, and the incident it opened (its own CRITICAL line).
    (critical,) = [
        line for line in by_job[breach] if line["level"] != "DEBUG" and "incident_id" not in line
    ]
    assert any(line.get("incident_id") for line in lines)
    assert critical["level"] == "CRITICAL"
    assert critical["error_type"] == "naq_resilience:SecurityError"
    assert "revoked key" in critical["traceback"]

    (summary,) = [line for line in lines if " stopped: " in line["message"]]
    assert summary["message"].endswith(
        "stopped: 2 jobs completed, 5 attempts failed (1 retried), 4 dead-lettered (1 critical)"
    )

    # From another process, through the server: one job's lines, then only its warnings.
    shown = naq(url, "worker-logs", "--job", flaky, "--json")
    assert shown.returncode == 0, shown.stderr
    records = json_lines(shown.stdout)
    assert {r["job_id"] for r in records} == {flaky}
    assert [(r["levelno"], r["attempt"]) for r in records if r["levelno"] >= 20] == [
        (20, 1), (30, 1), (20, 2), (40, 2),
    ]  # fmt: skip
    warnings = naq(url, "worker-logs", "--job", flaky, "--level", "WARNING", "--json")
    warned = json_lines(warnings.stdout)
    assert [r["level"] for r in warned] == ["WARNING", "ERROR"]
    assert warned[0]["fields"]["next_retry_at"] == retried["next_retry_at"]
    # The worker's own lines, and the incident the critical error opened.
    every = json_lines(naq(url, "worker-logs", "--level", "error", "--json").stdout)
    assert sorted(r["level"] for r in every) == ["CRITICAL", "CRITICAL", "ERROR", "ERROR", "ERROR"]
    assert {r["worker_id"] for r in every} == {info["worker_id"]}
    people = naq(url, "worker-logs", "--worker", info["worker_id"], "--level", "CRITICAL")
    (line, *rest) = people.stdout.splitlines()
    assert f" CRITICAL {info['worker_id']} naq_resilience.worker: job {breach} " in line
    assert any(text.strip().endswith("revoked key") for text in rest)
    assert any(" INCIDENT " in text for text in rest)
    assert people.stderr.startswith("2 log lines at CRITICAL or above, since ")


class Lines:
    """A subprocess's stdout, read line by line by a thread, waited for with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, found: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert line is not None, "the command ended"
            record = json.loads(line)
            if found(record):
                return dict(record)


@pytest.fixture
def follower(clean_jetstream: str) -> Iterator[Lines]:
    process = subprocess.Popen(
        [sys.executable, "-m", "naq_resilience.cli", "worker-logs", "--follow", "--json",
         "--level", "INFO", "--nats-url", clean_jetstream],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
    )  # fmt: skip
    try:
        yield Lines(process)
    finally:
        process.terminate()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_follow_prints_lines_logged_after_it_started(
    clean_jetstream: str, worker: WorkerProcess, follower: Lines
) -> None:
    (before,) = enqueue(clean_jetstream, (log_jobs.charge, "before"))
    follower.until(lambda r: r.get("job_id") == before)  # it is reading, and caught up
    (after,) = enqueue(clean_jetstream, (log_jobs.charge, "after"))  # logged after that
    seen = follower.until(lambda r: r.get("job_id") == after)
    assert seen["message"] == "charging order after"
    assert (seen["level"], seen["attempt"]) == ("INFO", 1)


def test_a_flood_is_shed_and_counted_not_published_whole(clean_jetstream: str) -> None:
    """A worker's publisher lets a burst through, then counts what it sheds in a record
    of its own; nats-py's own loggers are never published (a report about publishing
    must not become a record to publish)."""

    async def main() -> list[LogRecord]:
        async with Client(clean_jetstream) as client:
            assert client._nc is not None
            nc = client._nc
            await ensure_layout(nc.jetstream())
            since = time.time() - 1
            publisher = LogPublisher("flood:1:abc", "flood", 1, rate=0.001, burst=5)
            token = running_worker.set("flood:1:abc")
            try:
                publisher.start(nc)
                log = logging.getLogger("flooding")
                for n in range(20):
                    log.warning("line %d", n)
                logging.getLogger("nats.aio.client").error("nats-py's own line")
                await publisher.stop()
            finally:
                running_worker.reset(token)
            got: list[LogRecord] = []
            query = LogQuery(since=since, worker="flood:1:abc")
            await read_logs(nc, query, got.append)
            return got

    records = asyncio.run(main())
    assert [r.message for r in records[:5]] == [f"line {n}" for n in range(5)]
    (shed,) = records[5:]  # and nothing of nats-py's
    assert shed.dropped == 15
    assert shed.logger == "naq_resilience.logs"
    assert "were not published" in shed.message
