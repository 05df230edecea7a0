"""Error rates, error patterns and error budgets, from the counters real workers keep, on
the suite's real nats-server; history older than the test is written as a worker
writes it (an `OutcomeRecorder` fed outcomes with past timestamps)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import analytics_jobs
import pytest

from naq_resilience import (
    Client,
    ErrorBudget,
    FailureRecord,
    JobRecord,
    JobStatus,
    SyncClient,
    Worker,
    cli,
    error_patterns,
    error_rate,
)
from naq_resilience.jetstream import client as client_module
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.analytics import TIER_SECONDS, plan, previous, read_last
from naq_resilience.jetstream.connection import ConnectionSettings, connect
from naq_resilience.jetstream.outcomes import OutcomeRecorder, fingerprint_of, where_of
from naq_resilience.jetstream.publisher import Publisher
from naq_resilience.jetstream.streams import ensure_layout

HOUR = 3600.0
KEEP = {"1m": 12 * HOUR, "10m": 72 * HOUR, "1h": 192 * HOUR, "6h": 192 * HOUR}


@pytest.fixture(autouse=True)
def _close_shared_clients() -> Iterator[None]:
    """The module-level functions share one connection per URL; close it after each test,
    so none is left reconnecting to the session's server once it has stopped."""
    yield
    shared = client_module._sync_clients
    for client in list(shared.values()):
        client.close()
    shared.clear()


# --------------------------------------------------------------------------- helpers


def run_jobs(
    url: str, queues: list[str], enqueue: Callable[[Client], Awaitable[list[Any]]]
) -> list[Any]:
    """A real worker runs what `enqueue` puts on its queues until every job has ended;
    then it stops, which sends its last counts: what a test reads after is complete."""

    async def main() -> list[Any]:
        worker = Worker(queues, nats_url=url, imports=["analytics_jobs"], concurrency=4)
        task = asyncio.create_task(worker.run())
        try:
            async with Client(url) as client:
                jobs = await enqueue(client)
                for _ in range(3000):
                    states = [await job.status() for job in jobs]
                    if all(s in (JobStatus.COMPLETED, JobStatus.FAILED) for s in states):
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError(f"jobs did not end: {states}")
        finally:
            worker.stop()
            await task
        return jobs

    return asyncio.run(main())


def write_history(
    url: str, records: Iterable[JobRecord] = (), failures: Iterable[FailureRecord] = ()
) -> None:
    """Counts for the past, written as a worker writes them."""

    async def main() -> None:
        nc = await connect(ConnectionSettings(url=url))
        try:
            await ensure_layout(nc.jetstream())
            publisher = Publisher(nc)
            await publisher.start()
            recorder = OutcomeRecorder()
            await recorder.start(publisher)
            for record in records:
                recorder.job_changed(record)
            for failure in failures:
                recorder.attempt_failed(failure)
            await recorder.stop()
            assert recorder.lost == 0
            await publisher.close()
        finally:
            await nc.close()

    asyncio.run(main())


def outcome(
    status: JobStatus, at: float, queue: str = "default", function: str = "app.jobs:work"
) -> JobRecord:
    return JobRecord(
        job_id=f"{status.value}-{random.getrandbits(64):x}", queue=queue, function=function,
        status=status, updated_at=at, started_at=at - 0.1,
        dead_letter_queue=f"{queue}.dead" if status is JobStatus.FAILED else None,
    )  # fmt: skip


def failure(
    job_id: str, at: float, where: str, error_type: str = "builtins:ValueError"
) -> FailureRecord:
    return FailureRecord(
        job_id=job_id, function="app.jobs:work", queue="default", attempt=1, max_attempts=1,
        error_type=error_type, message="bad", classification="non_retryable", outcome="dead",
        failed_at=at, where=where, fingerprint=fingerprint_of(error_type, where),
    )  # fmt: skip


def outcomes(at: float, completed: int, failed: int) -> list[JobRecord]:
    return [outcome(JobStatus.COMPLETED, at) for _ in range(completed)] + [
        outcome(JobStatus.FAILED, at) for _ in range(failed)
    ]


# --------------------------------------------------------------------------- windows (no server)


@pytest.mark.parametrize("window", [60, 300, 1800, HOUR, 6 * HOUR, 24 * HOUR, 7 * 24 * HOUR])
def test_a_window_is_a_few_dozen_contiguous_buckets_covering_it(window: float) -> None:
    rng = random.Random(int(window))
    for _ in range(200):
        now = 1_796_000_000 + rng.uniform(0, 7 * 86400)
        span = plan(window, now, KEEP)
        at = span.start
        for tier, bucket in span.buckets:
            size = TIER_SECONDS[tier]
            assert bucket * size == at  # aligned, contiguous
            at += size
        assert at > now  # the last bucket holds "now"
        assert now - window - span.resolution < span.start <= now - window
        assert span.resolution <= max(60, window / 30)
        assert len(span.buckets) <= 45
        before = previous(span, now, KEEP)
        if 2 * window + HOUR > KEEP["6h"]:
            assert before is None  # not kept long enough for a trend
            continue
        assert before is not None
        assert before.until == span.start
        assert before.start <= span.start - (now - span.start)


def test_a_window_longer_than_the_counters_keep_is_refused() -> None:
    with pytest.raises(ValueError, match="NAQ_COUNTS_MAX_AGE"):
        plan(9 * 24 * HOUR, 1_796_000_000.0, KEEP)
    span = plan(5 * 24 * HOUR, 1_796_000_000.0, KEEP)
    assert previous(span, 1_796_000_000.0, KEEP) is None  # its trend would need 10 days


def raise_here() -> None:
    raise ValueError("one place")


def raise_there() -> None:
    raise ValueError("another place")


def caught(func: Callable[[], None]) -> BaseException:
    try:
        func()
    except ValueError as exc:
        return exc
    raise AssertionError("it did not raise")


def test_where_names_the_innermost_frame_without_its_line() -> None:
    first, again, other = caught(raise_here), caught(raise_here), caught(raise_there)
    assert where_of(first) == "test_error_analytics.py:raise_here" == where_of(again)
    assert where_of(other) == "test_error_analytics.py:raise_there"
    assert where_of(ValueError("never raised")) == ""
    assert fingerprint_of("builtins:ValueError", where_of(first)) != fingerprint_of(
        "builtins:ValueError", where_of(other)
    )


def test_every_worker_counts_outcomes_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Worker("default", nats_url="nats://127.0.0.1:9")
    assert isinstance(worker.outcomes, OutcomeRecorder)
    assert worker.outcomes in worker.observers.items
    assert Worker("default", nats_url="nats://127.0.0.1:9", record_outcomes=False).outcomes is None
    monkeypatch.setenv("NAQ_RECORD_OUTCOMES", "0")
    quiet = Worker("default", nats_url="nats://127.0.0.1:9")
    assert quiet.outcomes is None
    assert not any(isinstance(o, OutcomeRecorder) for o in quiet.observers.items)


# --------------------------------------------------------------------------- on a real server


@pytest.mark.usefixtures("clean_jetstream")
def test_error_rate_counts_a_real_workers_outcomes_per_queue_and_function(nats_url: str) -> None:
    async def enqueue(client: Client) -> list[Any]:
        jobs = [await client.enqueue(analytics_jobs.ok, i) for i in range(4)]
        jobs += [await client.enqueue(analytics_jobs.import_csv, f"r{i}") for i in range(3)]
        jobs += [
            await client.enqueue(analytics_jobs.flaky, f"k{i}", max_retries=1, retry_delay=0)
            for i in range(2)
        ]
        jobs += [await client.enqueue(analytics_jobs.ok, i, queue_name="reports") for i in range(2)]
        return jobs

    run_jobs(nats_url, ["default", "reports"], enqueue)
    before = time.time()
    every = error_rate(HOUR, nats_url=nats_url)
    assert (every.total, every.completed, every.failed, every.retried) == (11, 8, 3, 2)
    assert every.rate == 3 / 11
    assert before - HOUR - 60 < every.since <= before - HOUR < every.until
    default = error_rate(HOUR, queue="default", nats_url=nats_url)
    assert (default.total, default.failed, default.retried) == (9, 3, 2)
    reports = error_rate(HOUR, queue="reports", nats_url=nats_url)
    assert (reports.total, reports.failed, reports.rate) == (2, 0, 0.0)
    csv = error_rate(300, function=analytics_jobs.import_csv, nats_url=nats_url)
    assert (csv.total, csv.failed, csv.rate, csv.function) == (
        3,
        3,
        1.0,
        "analytics_jobs:import_csv",
    )
    ok_reports = error_rate(HOUR, queue="reports", function="analytics_jobs:ok", nats_url=nats_url)
    assert (ok_reports.total, ok_reports.failed) == (2, 0)
    assert error_rate(HOUR, queue="nobody", nats_url=nats_url).total == 0


@pytest.mark.usefixtures("clean_jetstream")
def test_patterns_tell_two_places_of_one_error_type_apart(nats_url: str) -> None:
    async def enqueue(client: Client) -> list[Any]:
        jobs = [await client.enqueue(analytics_jobs.import_csv, f"r{i}") for i in range(3)]
        return [*jobs, await client.enqueue(analytics_jobs.import_json, "{")]

    jobs = run_jobs(nats_url, ["default"], enqueue)
    csv_ids, json_ids = {job.job_id for job in jobs[:3]}, {jobs[3].job_id}
    found = error_patterns(HOUR, nats_url=nats_url)
    assert [(p.error_type, p.where, p.count, p.share) for p in found] == [
        ("builtins:ValueError", "analytics_jobs.py:import_csv", 3, 0.75),
        ("builtins:ValueError", "analytics_jobs.py:import_json", 1, 0.25),
    ]
    csv, doc = found
    assert set(csv.sample_job_ids) == csv_ids
    assert set(doc.sample_job_ids) == json_ids
    assert csv.fingerprint != doc.fingerprint
    assert csv.function == "analytics_jobs:import_csv"
    assert csv.queues == ("default",)
    assert csv.message.startswith("not a CSV row")
    assert csv.first_seen is not None
    assert csv.last_seen is not None
    assert csv.first_seen <= csv.last_seen
    assert (csv.trend, csv.previous_count) == (None, 0)  # nothing in the hour before
    assert error_patterns(HOUR, queue="reports", nats_url=nats_url) == []
    assert [p.count for p in error_patterns(HOUR, queue="default", nats_url=nats_url)] == [3, 1]
    with SyncClient(nats_url) as client:  # the failure record says it too, for any reader
        [record] = client.get_dead_letter(jobs[0].job_id).failures
    assert (record.where, record.fingerprint) == (csv.where, csv.fingerprint)
    assert [p.count for p in error_patterns(HOUR, limit=1, nats_url=nats_url)] == [3]


@pytest.mark.usefixtures("clean_jetstream")
def test_a_patterns_trend_compares_it_with_the_window_before(nats_url: str) -> None:
    now = time.time()
    growing = [failure(f"g{i}", now - 5400 + i, "app/jobs.py:charge") for i in range(2)]
    growing += [failure(f"g{i}", now - 600 + i, "app/jobs.py:charge") for i in range(2, 6)]
    fading = [failure(f"f{i}", now - 5000, "app/jobs.py:refund") for i in range(4)]
    fading += [failure("f9", now - 300, "app/jobs.py:refund")]
    fresh = [failure("n1", now - 30, "app/jobs.py:ship", "builtins:KeyError")]
    write_history(nats_url, failures=growing + fading + fresh)

    found = {p.where: p for p in error_patterns(HOUR, nats_url=nats_url)}
    charge, refund, ship = (
        found["app/jobs.py:charge"],
        found["app/jobs.py:refund"],
        found["app/jobs.py:ship"],
    )
    assert (charge.count, charge.previous_count) == (4, 2)
    assert charge.trend == pytest.approx(2.0, rel=0.05)  # windows of nearly equal length
    assert (refund.count, refund.previous_count) == (1, 4)
    assert refund.trend == pytest.approx(0.25, rel=0.05)
    assert (ship.count, ship.trend, ship.error_type) == (1, None, "builtins:KeyError")
    assert charge.first_seen is not None
    assert charge.first_seen == pytest.approx(now - 5400)
    assert charge.last_seen == pytest.approx(now - 600 + 5)
    assert charge.sample_job_ids[0] == "g5"  # the latest first
    assert sum(p.share for p in found.values()) == pytest.approx(1.0)


@pytest.mark.usefixtures("clean_jetstream")
@pytest.mark.parametrize(
    ("failed", "expected", "level"),
    [(5, True, None), (10, True, logging.WARNING), (21, False, logging.CRITICAL)],
    ids=["within", "low", "spent"],
)
def test_check_budget_as_the_guide_writes_it(
    nats_url: str, caplog: pytest.LogCaptureFixture, failed: int, expected: bool, level: int | None
) -> None:
    write_history(nats_url, outcomes(time.time() - 120, 1000, failed))
    budget = ErrorBudget(target_success_rate=0.99, nats_url=nats_url)
    with caplog.at_level(logging.INFO, logger="naq_resilience.budget"):
        assert budget.check_budget(timeframe_hours=1) is expected
    levels = [r.levelno for r in caplog.records if r.name == "naq_resilience.budget"]
    assert levels == ([] if level is None else [level])
    status = budget.status(1)
    assert (status.total, status.failed, status.budget) == (1000 + failed, failed, 0.01)
    assert status.remaining == pytest.approx(1 - failed / (1000 + failed) / 0.01)
    if level == logging.CRITICAL:
        assert caplog.records[-1].getMessage().startswith("Error budget exceeded! Current rate: ")


@pytest.mark.usefixtures("clean_jetstream")
def test_an_empty_window_keeps_the_budget(nats_url: str) -> None:
    assert ErrorBudget(nats_url=nats_url).check_budget() is True
    status = ErrorBudget(nats_url=nats_url).status()
    assert (status.total, status.remaining, status.burn_rate) == (0, 1.0, 0.0)
    assert [r.fires for r in status.burn_rates] == [False, False]


@pytest.mark.usefixtures("clean_jetstream")
def test_burn_rate_alerts_fire_while_the_short_window_burns_too(nats_url: str) -> None:
    now = time.time()
    write_history(nats_url, outcomes(now - 2400, 100, 50) + outcomes(now - 60, 100, 0))
    calm = {r.name: r for r in ErrorBudget(0.999, nats_url=nats_url).burn_rates()}
    # 50 of 250 failed in the last hour: 200 times the budget's pace, but not lately.
    assert calm["fast"].long_burn == pytest.approx(0.2 / 0.001)
    assert calm["fast"].short_burn == 0.0
    assert not calm["fast"].fires
    assert not calm["slow"].fires

    write_history(nats_url, outcomes(now - 30, 0, 10))
    burning = {r.name: r for r in ErrorBudget(0.999, nats_url=nats_url).burn_rates()}
    assert burning["fast"].fires
    assert burning["slow"].fires
    assert (burning["fast"].threshold, burning["slow"].threshold) == (14.4, 6.0)
    assert (burning["fast"].long_window, burning["fast"].short_window) == (3600, 300)
    assert (burning["slow"].long_window, burning["slow"].short_window) == (21600, 1800)


@pytest.mark.usefixtures("clean_jetstream")
def test_naq_errors_prints_tables_and_json(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    write_history(
        nats_url,
        outcomes(now - 60, 90, 10),
        [failure(f"j{i}", now - 60, "app/jobs.py:charge") for i in range(10)],
    )

    def naq(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = cli.main(["errors", *argv, "--nats-url", nats_url])
        return code, capsys.readouterr().out

    code, out = naq("rate", "--window", "1h", "--window", "5m", "--json")
    rates = json.loads(out)
    assert code == 0
    assert [(r["window"], r["total"], r["failed"]) for r in rates] == [
        (3600.0, 100, 10),
        (300.0, 100, 10),
    ]
    code, out = naq("rate")
    assert code == 0
    assert "ERROR RATE" in out
    assert "10.00%" in out

    code, out = naq("patterns", "--window", "1h", "--json")
    [pattern] = json.loads(out)
    assert (pattern["where"], pattern["count"], pattern["share"]) == ("app/jobs.py:charge", 10, 1.0)
    code, out = naq("patterns")
    assert "app/jobs.py:charge" in out
    assert "10 failed attempts in the last 24h" in out

    code, out = naq("budget", "--target", "0.99", "--window", "1h", "--json")
    status = json.loads(out)
    assert code == 0
    assert status["spent"] is True
    assert status["error_rate"] == 0.1
    assert [a["fires"] for a in status["burn_rates"]] == [False, True]  # 10x: slow, not fast
    code, out = naq("budget", "--target", "0.99", "--check")
    assert code == 1
    assert "spent" in out
    assert "fast (page)" in out


@pytest.mark.usefixtures("clean_jetstream")
def test_a_read_that_matches_too_many_counters_for_one_request_is_split(nats_url: str) -> None:
    """The server answers one batched direct get with at most 1,024 subjects; a worker
    counts at most 200 patterns apart an hour, so 1,100 take a fleet of six."""
    now = time.time()
    for first in range(0, 1100, 200):
        write_history(
            nats_url,
            failures=[
                failure(f"j{i}", now - 30, f"app/jobs.py:f{i}")
                for i in range(first, min(first + 200, 1100))
            ],
        )

    async def main() -> int:
        nc = await connect(ConnectionSettings(url=nats_url))
        try:
            bucket = int(now - 30) // 60
            found = await read_last(
                nc, nc.jetstream(), layout.count_stream("1m"), [f"naq.counts.1m.{bucket}.e.*"]
            )
        finally:
            await nc.close()
        return len(found)

    assert asyncio.run(main()) == 1100
    found = error_patterns(HOUR, limit=2000, nats_url=nats_url)
    assert sum(p.count for p in found) == 1100
    assert len(found) == 1100
    assert math.isclose(sum(p.share for p in found), 1.0)


@pytest.mark.usefixtures("clean_jetstream")
def test_past_its_cap_a_worker_counts_the_rest_as_other(nats_url: str) -> None:
    now = time.time()
    write_history(
        nats_url, failures=[failure(f"j{i}", now - 30, f"app/jobs.py:f{i}") for i in range(205)]
    )
    found = error_patterns(HOUR, limit=500, nats_url=nats_url)
    assert len(found) == 201
    assert sum(p.count for p in found) == 205
    [other] = [p for p in found if p.fingerprint == "other"]
    assert other.count == 5
    assert other.error_type.startswith("(other patterns")


def test_naq_errors_says_in_one_line_what_it_cannot_do(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["errors", "rate", "--nats-url", "nats://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err.startswith("naq errors rate: ")
    assert cli.main(["errors", "budget", "--window", "30d", "--nats-url", nats_url]) == 1
    err = capsys.readouterr().err.strip()
    assert "NAQ_COUNTS_MAX_AGE" in err
    assert len(err.splitlines()) == 1
