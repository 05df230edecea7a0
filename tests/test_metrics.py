"""Prometheus metrics of a worker, scraped over HTTP from a real worker on a real server
and read with prometheus_client's own text parser (never string-matched)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

pytest.importorskip("prometheus_client")  # the dev extra has it: CI runs these

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from naq_resilience import Client, JobRecord, JobStatus, Worker, circuit_breaker
from naq_resilience.cli.worker import METRICS_HOST
from naq_resilience.models import BreakerRecord, FailureRecord
from naq_resilience.ops.metrics import DEFAULT_HOST, OTHER, JobCounters, WorkerMetrics

import worker_jobs
from conftest import ROOT
from processes import TESTS, WorkerProcess, enqueue

pytestmark = pytest.mark.usefixtures("clean_jetstream")

Families = dict[str, list[tuple[str, dict[str, str], float]]]


def scrape(url: str) -> Families:
    """A real GET of the endpoint, parsed by prometheus_client's text parser: samples by
    family name, each (sample name, labels, value)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        family.name: [(s.name, dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def value(families: Families, sample: str, **labels: str) -> float | None:
    """The one sample called `sample` with exactly these labels; None when there is none."""
    found = [
        v for samples in families.values() for name, have, v in samples
        if name == sample and have == labels
    ]  # fmt: skip
    assert len(found) <= 1, (sample, labels, found)
    return found[0] if found else None


async def scraped_until(
    url: str, ready: Callable[[Families], bool], what: str, rounds: int = 600
) -> Families:
    """Scrape (from a thread, as Prometheus would, never on the worker's loop) until the
    figures say `ready`: queue depths are read asynchronously, so they catch up."""
    families: Families = {}
    for _ in range(rounds):
        families = await asyncio.to_thread(scrape, url)
        if ready(families):
            return families
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} never scraped; last scrape:\n{families}")


async def until(condition: Callable[[], bool], what: str, rounds: int = 1500) -> None:
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} never happened")


class Settled:
    """The jobs whose final state the worker recorded (completed, or failed for good)."""

    def __init__(self) -> None:
        self.final: set[str] = set()

    def job_changed(self, record: JobRecord) -> None:
        if record.status in (JobStatus.COMPLETED, JobStatus.FAILED):
            self.final.add(record.job_id)

    def attempt_failed(self, failure: FailureRecord) -> None:
        pass


async def with_worker(
    worker: Worker, body: Callable[[WorkerMetrics], Awaitable[None]], refresh: float = 0.1
) -> None:
    """`body` runs against `worker` and its metrics, served on a free loopback port."""
    metrics = WorkerMetrics(worker, registry=CollectorRegistry(), refresh=refresh)
    metrics.serve(0, "127.0.0.1")
    task = asyncio.create_task(worker.run())
    try:
        await body(metrics)
    finally:
        worker.stop()
        await task
        metrics.close()


def test_a_scrape_counts_jobs_by_queue_function_and_error_type(nats_url: str) -> None:
    settled = Settled()
    worker = Worker("default", nats_url=nats_url, imports=["worker_jobs"], observers=[settled])

    async def body(metrics: WorkerMetrics) -> None:
        async with Client(nats_url) as client:
            ids = {
                (await client.enqueue(worker_jobs.add, 1, 2)).job_id,
                (await client.enqueue(worker_jobs.raises, "value")).job_id,
                (await client.enqueue(worker_jobs.fails_twice, "metrics-scrape")).job_id,
            }
        await until(lambda: settled.final >= ids, "three jobs settled")

        def settled_on_the_server(families: Families) -> bool:
            return (
                value(families, "naq_queue_depth", queue="default") == 0
                and value(families, "naq_queue_in_flight", queue="default") == 0
                and value(families, "naq_dead_letter_queue_depth", dead_letter_queue="default.dead")
                == 1
            )

        families = await scraped_until(metrics.url, settled_on_the_server, "settled depths")
        add = {"queue": "default", "function": "worker_jobs:add"}
        flaky = {"queue": "default", "function": "worker_jobs:fails_twice"}
        bad = {"queue": "default", "function": "worker_jobs:raises"}
        connection = {**flaky, "error_type": "builtins:ConnectionError"}
        value_error = {**bad, "error_type": "builtins:ValueError"}
        assert value(families, "naq_jobs_completed_total", **add) == 1
        assert value(families, "naq_jobs_completed_total", **flaky) == 1
        assert value(families, "naq_jobs_completed_total", **bad) is None
        assert value(families, "naq_job_failures_total", **connection) == 2
        assert value(families, "naq_jobs_retried_total", **connection) == 2
        assert value(families, "naq_job_failures_total", **value_error) == 1
        assert value(families, "naq_jobs_retried_total", **value_error) is None
        assert value(families, "naq_jobs_dead_lettered_total", **value_error) == 1
        assert value(families, "naq_jobs_dead_lettered_total", **connection) is None
        for labels, outcome, count in ((add, "completed", 1), (flaky, "failed", 2),
                                       (flaky, "completed", 1), (bad, "failed", 1)):  # fmt: skip
            timing = {**labels, "outcome": outcome}
            assert value(families, "naq_job_duration_seconds_count", **timing) == count
            assert value(families, "naq_job_duration_seconds_bucket", **timing, le="+Inf") == count
            assert value(families, "naq_job_duration_seconds_sum", **timing) >= 0  # type: ignore[operator]
        assert value(families, "naq_jobs_in_flight", queue="default") == 0
        assert value(families, "naq_worker_concurrency") == worker.concurrency

    asyncio.run(with_worker(worker, body))


_release = threading.Event()


def held(tag: str) -> str:
    """Runs on a job thread until the test lets it go."""
    _release.wait(60)
    return tag


def test_in_flight_jobs_and_the_queue_behind_them(nats_url: str) -> None:
    """One slot, three jobs: one runs (in flight), two wait in the queue."""
    _release.clear()
    worker = Worker("held", nats_url=nats_url, functions=[held], concurrency=1)

    async def body(metrics: WorkerMetrics) -> None:
        try:
            async with Client(nats_url) as client:
                for tag in ("a", "b", "c"):
                    await client.enqueue(held, tag, queue_name="held")

            def one_running_two_waiting(families: Families) -> bool:
                return (
                    value(families, "naq_jobs_in_flight", queue="held") == 1
                    and value(families, "naq_queue_in_flight", queue="held") == 1
                    and value(families, "naq_queue_depth", queue="held") == 2
                )

            await scraped_until(metrics.url, one_running_two_waiting, "one running, two waiting")
        finally:
            _release.set()
        done = {"queue": "held", "function": "test_metrics:held"}

        def all_done(families: Families) -> bool:
            return (
                value(families, "naq_jobs_completed_total", **done) == 3
                and value(families, "naq_queue_depth", queue="held") == 0
                and value(families, "naq_queue_in_flight", queue="held") == 0
            )

        families = await scraped_until(metrics.url, all_done, "three jobs done")
        assert value(families, "naq_jobs_in_flight", queue="held") == 0
        assert value(families, "naq_dead_letter_queue_depth", dead_letter_queue="held.dead") == 0

    asyncio.run(with_worker(worker, body))


@circuit_breaker(name="metrics-tests:payments", failure_threshold=1, recovery_timeout=600)
async def charge(order: int) -> None:
    raise ConnectionError(f"payments down for order {order}")


@circuit_breaker(name="metrics-tests:idle")
async def never_called() -> None: ...


def test_breaker_states_come_from_the_shared_store(nats_url: str) -> None:
    """A breaker this worker trips, one another worker shares (only in the bucket), and
    one that never tripped (only in this process): each in its state."""
    worker = Worker("default", nats_url=nats_url, functions=[charge])

    async def body(metrics: WorkerMetrics) -> None:
        async with Client(nats_url) as client:
            await client.enqueue(charge, 1, max_retries=0)
            _, buckets = await client._ready()
            elsewhere = BreakerRecord(
                name="search:index", state="half_open", failures=0, successes=0,
                opened_at=None, generation=3, updated_by="another-worker",
            )  # fmt: skip
            await buckets.breakers.put("search_index", msgspec.json.encode(elsewhere))

        def states_shared(families: Families) -> bool:
            return (
                value(families, "naq_breaker_state", breaker="metrics-tests:payments",
                      state="open") == 1
                and value(families, "naq_breaker_state", breaker="search:index",
                          state="half_open") == 1
            )  # fmt: skip

        families = await scraped_until(metrics.url, states_shared, "the shared breaker states")
        for breaker, current in (
            ("metrics-tests:payments", "open"),
            ("search:index", "half_open"),
            ("metrics-tests:idle", "closed"),
        ):
            states = {
                state: value(families, "naq_breaker_state", breaker=breaker, state=state)
                for state in ("closed", "open", "half_open")
            }
            assert states == {s: (1.0 if s == current else 0.0) for s in states}, breaker

    asyncio.run(with_worker(worker, body))


def _completed(queue: str, function: str, seconds: float) -> JobRecord:
    return JobRecord(
        job_id="j", queue=queue, function=function, status=JobStatus.COMPLETED,
        updated_at=2.0, started_at=1.0, finished_at=1.0 + seconds,
    )  # fmt: skip


def test_label_sets_are_capped_and_the_rest_counted_as_other() -> None:
    """A function name comes from the message: garbage must not grow the metrics."""
    counters = JobCounters(max_label_sets=2)
    for function in ("m:a", "m:b", "m:c", "m:d", "m:a", "m:d"):
        counters.job_changed(_completed("q", function, 0.5))
    counters.job_changed(_completed("q", "m:b", 0.005))  # on a bound: in its bucket
    families = {family.name: family for family in counters.families()}
    completed = {
        sample.labels["function"]: sample.value for sample in families["naq_jobs_completed"].samples
    }
    assert completed == {"m:a": 2, "m:b": 2, OTHER: 3}
    buckets = {
        sample.labels["le"]: sample.value
        for sample in families["naq_job_duration_seconds"].samples
        if sample.name.endswith("_bucket") and sample.labels["function"] == "m:b"
    }
    assert buckets["0.005"] == 1
    assert buckets["0.25"] == 1
    assert buckets["0.5"] == 2
    assert buckets["+Inf"] == 2
    # And the whole exposition is valid text, read back by the strict parser.
    registry = CollectorRegistry()

    class Collector:
        def collect(self) -> Any:
            return counters.families()

    registry.register(Collector())
    parsed = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert parsed == {
        "naq_jobs_completed", "naq_job_failures", "naq_jobs_retried",
        "naq_jobs_dead_lettered", "naq_job_duration_seconds",
    }  # fmt: skip


def test_the_command_line_default_host_is_the_library_default() -> None:
    assert METRICS_HOST == DEFAULT_HOST


def test_naq_worker_serves_metrics_from_the_command_line(nats_url: str, trace: Path) -> None:
    """`naq worker --metrics-port 0`: the port it took is logged; the default registry
    also serves the process metrics."""
    worker = WorkerProcess(nats_url, trace, "--metrics-port", "0", "--metrics-host", "127.0.0.1")
    try:
        worker.wait_for_log("serving metrics at")
        match = re.search(r"serving metrics at (http://127\.0\.0\.1:\d+/metrics)", worker.log())
        assert match is not None, worker.log()
        enqueue(nats_url, worker_jobs.add, [(2, 3)])

        async def completed() -> Families:
            return await scraped_until(
                match.group(1),
                lambda f: value(f, "naq_jobs_completed_total", queue="default",
                                function="worker_jobs:add") == 1,
                "a completed job",
            )  # fmt: skip

        families = asyncio.run(completed())
        assert "process_cpu_seconds" in families
        assert worker.terminate() == 0
    finally:
        worker.stop()


def test_naq_worker_metrics_without_prometheus_client_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['prometheus_client'] = None\n"
         "from naq_resilience.cli import main\n"
         "sys.exit(main(['worker', '--metrics-port', '9100']))"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "naq worker: --metrics-port needs prometheus_client, which is not installed: "
        "pip install 'naq-resilience[metrics]'\n"
    )


RUN_WITHOUT_EXTRAS = """
import asyncio, sys
for name in ("prometheus_client", "opentelemetry", "opentelemetry.trace"):
    sys.modules[name] = None  # as if not installed: importing them fails

import naq_resilience.cli
from naq_resilience import Client, JobStatus, Worker
from naq_resilience.jetstream.tracing import job_tracing, trace_headers

import worker_jobs

assert trace_headers() is None and job_tracing(None) is None
try:
    job_tracing(True)
except ImportError as exc:
    assert "pip install 'naq-resilience[otel]'" in str(exc), exc
else:
    raise AssertionError("tracing=True without OpenTelemetry")

class Done:
    def __init__(self): self.ids = set()
    def job_changed(self, record):
        if record.status is JobStatus.COMPLETED: self.ids.add(record.job_id)
    def attempt_failed(self, failure): pass

async def main(url):
    done = Done()
    worker = Worker("default", nats_url=url, imports=["worker_jobs"], observers=[done])
    task = asyncio.create_task(worker.run())
    async with Client(url) as client:
        job = await client.enqueue(worker_jobs.add, 2, 2)
    for _ in range(1500):
        if job.job_id in done.ids:
            break
        await asyncio.sleep(0.02)
    worker.stop()
    await task
    assert job.job_id in done.ids
    assert not any(m and m.startswith(("prometheus_client", "opentelemetry"))
                   for m, mod in sys.modules.items() if mod is not None)
    print("ran without the extras")

asyncio.run(main(sys.argv[1]))
"""


def test_the_core_runs_jobs_without_the_metrics_and_otel_extras(nats_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_EXTRAS, nats_url],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran without the extras"

