"""Scheduled jobs, fired by real nats-server processes and run by real worker processes.

Nothing here asserts how long anything took: runs are checked for their count and
their order against the time they were due (with a generous bound), and a pause or a
cancel by what the stream holds (no message the server could fire) as well as by the
runs that did not come.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from nats.js.api import StreamConfig
from nats.js.errors import APIError

from naq_resilience import (
    Client,
    JobNotFoundError,
    JobStatus,
    Queue,
    ScheduledJob,
    enqueue_at_sync,
    list_schedules_sync,
    purge_queue_sync,
    schedule_sync,
)
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.cluster import EmbeddedCluster
from naq_resilience.jetstream.connection import connect
from naq_resilience.jetstream.cron import CronError, parse_cron
from naq_resilience.jetstream.schedules import SCHEDULE_HEADER, run_envelope
from naq_resilience.jetstream.server import EmbeddedServer
from naq_resilience.jetstream.streams import StorageSettings, ensure_layout
from naq_resilience.models import JobEnvelope

import worker_jobs
from conftest import ROOT
from processes import WorkerProcess, events, wait_until

T = TypeVar("T")
DUE_BOUND = 10.0
"""How late a run may start and still pass: a bound against a hung test, not a measure."""


def run(url: str, action: Callable[[Client], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        async with Client(url, **options) as client:
            return await action(client)

    return asyncio.run(main())


def ticks(trace: Path, tag: str) -> list[tuple[str, float]]:
    """(job id, start time) of every run of `tag`, in the order they started."""
    found = []
    for line in events(trace):
        parts = line.split()
        if parts[:2] == ["tick", tag]:
            found.append((parts[2], float(parts[3])))
    return sorted(found, key=lambda t: t[1])


def stream_messages(url: str, stream: str, subject: str) -> list[tuple[dict[str, str], bytes]]:
    async def main() -> list[tuple[dict[str, str], bytes]]:
        nc = await connect(url=url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream, subjects_filter=subject)
            if not info.state.subjects:
                return []
            sub = await js.subscribe(subject, ordered_consumer=True, stream=stream)
            found = []
            while True:
                msg = await sub.next_msg(timeout=5)
                found.append((dict(msg.headers or {}), msg.data))
                if msg.metadata.num_pending == 0:
                    return found
        finally:
            await nc.close()

    return asyncio.run(main())


def queue_drained(url: str, queue: str = "default") -> bool:
    """No job of `queue` waits or runs: a work-queue message goes when it is acked."""
    return not stream_messages(url, layout.JOB_STREAM, layout.job_subject(queue))


def no_schedule_left(url: str, job_id: str) -> bool:
    return not stream_messages(url, layout.SCHEDULE_STREAM, layout.schedule_filter(job_id))


def observe(seconds: float) -> None:
    """Let runs that should not come have the time to come."""
    time.sleep(seconds)


# --------------------------------------------------------------------------- one-shots


def test_a_job_enqueued_two_seconds_ahead_runs_once_at_its_time(
    clean_jetstream: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    url = clean_jetstream
    workers.append(WorkerProcess(url, trace))

    async def enqueue(client: Client) -> tuple[ScheduledJob, JobStatus]:
        job = await client.enqueue_in(timedelta(seconds=2), worker_jobs.tick, "soon")
        return job, await job.status()

    job, status = run(url, enqueue)
    assert status is JobStatus.QUEUED
    assert job.next_run is not None

    wait_until(lambda: ticks(trace, "soon"), timeout=30, what="the scheduled run")
    wait_until(lambda: no_schedule_left(url, job.job_id) and queue_drained(url), timeout=30)
    (job_id, started), *more = ticks(trace, "soon")
    assert not more, "a one-shot ran more than once"
    assert job_id == job.job_id  # the run of a one-shot is the job enqueue_in returned
    assert job.next_run <= started < job.next_run + DUE_BOUND


def test_a_scheduled_job_survives_a_server_killed_and_restarted(
    fresh_nats_server: EmbeddedServer, trace: Path, workers: list[WorkerProcess]
) -> None:
    server = fresh_nats_server
    job = run(server.url, lambda c: c.enqueue_in(2, worker_jobs.tick, "restart"))
    assert job.next_run is not None
    server.kill()  # SIGKILL: nothing flushed on the way out
    wait_until(lambda: time.time() > job.next_run + 0.5, timeout=30)  # type: ignore[operator]
    server.restart()  # the run fell due while the server was down

    workers.append(WorkerProcess(server.url, trace))
    wait_until(lambda: ticks(trace, "restart"), timeout=30, what="the run after the restart")
    wait_until(lambda: no_schedule_left(server.url, job.job_id) and queue_drained(server.url))
    assert [job_id for job_id, _ in ticks(trace, "restart")] == [job.job_id]


def test_a_schedule_with_three_replicas_survives_its_leader(
    nats_cluster: EmbeddedCluster, trace: Path, workers: list[WorkerProcess]
) -> None:
    cluster = nats_cluster
    storage = StorageSettings(replicas=3)
    job = run(
        cluster.url,
        lambda c: c.schedule(worker_jobs.tick, "replicated", interval=1, repeat=4),
        storage=storage,
    )
    leader = cluster.stream_leader(layout.SCHEDULE_STREAM)
    cluster.kill(leader)
    workers.append(WorkerProcess(cluster.url, trace, "--replicas", "3"))
    wait_until(lambda: len(ticks(trace, "replicated")) >= 1, timeout=60, what="a run")
    wait_until(lambda: no_schedule_left(cluster.url, job.job_id), timeout=60)
    wait_until(lambda: queue_drained(cluster.url), timeout=60)
    ids = [job_id for job_id, _ in ticks(trace, "replicated")]
    # Runs that fell due while no node led the stream fire once it has a leader again:
    # each of the four runs fires once at most, none is lost.
    assert sorted(ids) == [f"{job.job_id}-r{n}" for n in range(1, 5)]


# --------------------------------------------------------------------------- repeating


def test_an_interval_schedule_with_repeat_3_runs_three_times_and_stops(
    clean_jetstream: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    url = clean_jetstream
    workers.append(WorkerProcess(url, trace))
    job = run(url, lambda c: c.schedule(worker_jobs.tick, "three", interval=1, repeat=3))
    [info] = list_schedules_sync(nats_url=url)
    assert (info.id, info.kind, info.interval, info.runs_left) == (job.job_id, "interval", 1, 3)

    wait_until(lambda: no_schedule_left(url, job.job_id), timeout=30, what="the last run")
    wait_until(lambda: len(ticks(trace, "three")) == 3 and queue_drained(url), timeout=30)
    runs = ticks(trace, "three")
    assert [job_id for job_id, _ in runs] == [f"{job.job_id}-r{n}" for n in (1, 2, 3)]
    assert job.next_run is not None
    assert runs[0][1] >= job.next_run
    assert list_schedules_sync(nats_url=url) == []


def test_a_cron_schedule_fires_every_second(
    clean_jetstream: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    url = clean_jetstream
    workers.append(WorkerProcess(url, trace))
    job = run(url, lambda c: c.schedule(worker_jobs.tick, "cron", cron="* * * * * *"))
    wait_until(lambda: len(ticks(trace, "cron")) >= 2, timeout=30, what="two cron runs")
    assert run(url, lambda c: c.cancel_scheduled_job(job.job_id)) is True
    fired = stream_messages(url, layout.SCHEDULE_STREAM, layout.run_subject("default"))
    following = [headers["Nats-Schedule-Next"] for headers, _ in fired]
    assert len(set(following)) == len(following) >= 2  # each run names the one after it


def test_a_cron_in_a_time_zone_and_a_counted_cron(
    clean_jetstream: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    url = clean_jetstream
    workers.append(WorkerProcess(url, trace))
    zoned = run(url, lambda c: c.schedule(
        worker_jobs.tick, "zoned", cron="*/2 * * * * *", time_zone="Europe/Amsterdam",
    ))  # fmt: skip
    counted = run(
        url, lambda c: c.schedule(worker_jobs.tick, "counted", cron="* * * * * *", repeat=2)
    )
    wait_until(lambda: ticks(trace, "zoned"), timeout=30, what="the zoned cron's run")
    wait_until(lambda: no_schedule_left(url, counted.job_id) and queue_drained(url), timeout=30)
    assert [i for i, _ in ticks(trace, "counted")] == [
        f"{counted.job_id}-r1",
        f"{counted.job_id}-r2",
    ]
    run(url, lambda c: c.cancel_scheduled_job(zoned.job_id))
    [(headers, _)] = [
        m for m in stream_messages(url, layout.SCHEDULE_STREAM, layout.run_subject("default"))
        if m[0]["Nats-Scheduler"].startswith(f"naq.schedules.default.{zoned.job_id}.")
    ][:1]  # fmt: skip
    following = datetime.fromisoformat(headers["Nats-Schedule-Next"])
    assert following.utcoffset() == ZoneInfo("Europe/Amsterdam").utcoffset(following)


def test_pause_resume_modify_and_cancel(
    clean_jetstream: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    url = clean_jetstream
    workers.append(WorkerProcess(url, trace))
    job = run(url, lambda c: c.schedule(worker_jobs.tick, "life", interval=1))
    wait_until(lambda: ticks(trace, "life"), timeout=30, what="a first run")

    assert run(url, lambda c: c.pause_scheduled_job(job.job_id)) is True
    [(headers, _)] = stream_messages(
        url, layout.SCHEDULE_STREAM, layout.schedule_filter(job.job_id)
    )
    assert "Nats-Schedule" not in headers  # nothing left that the server could fire
    assert json.loads(headers[SCHEDULE_HEADER])["paused"] is True
    wait_until(lambda: queue_drained(url), timeout=30)
    paused_at = len(ticks(trace, "life"))
    observe(2.5)
    assert len(ticks(trace, "life")) == paused_at
    assert run(url, lambda c: c.pause_scheduled_job(job.job_id)) is True  # already paused

    assert run(url, lambda c: c.resume_scheduled_job(job.job_id)) is True
    wait_until(lambda: len(ticks(trace, "life")) > paused_at, timeout=30, what="a run after resume")

    assert run(url, lambda c: c.modify_scheduled_job(job.job_id, interval=timedelta(seconds=2)))
    [(headers, _)] = stream_messages(
        url, layout.SCHEDULE_STREAM, layout.schedule_filter(job.job_id)
    )
    assert headers["Nats-Schedule"] == "@every 2s"
    [info] = list_schedules_sync(nats_url=url)
    assert (info.interval, info.paused, info.runs_left) == (2.0, False, None)
    two_apart = lambda: [  # noqa: E731
        datetime.fromisoformat(h["Nats-Schedule-Next"]).timestamp()
        for h, _ in stream_messages(url, layout.SCHEDULE_STREAM, layout.run_subject("default"))
        if json.loads(h[SCHEDULE_HEADER]).get("interval") == 2.0
    ]
    wait_until(lambda: len(two_apart()) >= 2, timeout=30, what="two runs at the new interval")
    times = two_apart()
    assert {b - a for a, b in itertools.pairwise(times)} == {2.0}

    assert run(url, lambda c: c.modify_scheduled_job(job.job_id, repeat=2)) is True
    [info] = list_schedules_sync(nats_url=url)
    assert (info.kind, info.runs_left) == ("interval", 2)
    assert run(url, lambda c: c.cancel_scheduled_job(job.job_id)) is True
    assert no_schedule_left(url, job.job_id)
    assert run(url, lambda c: c.cancel_scheduled_job(job.job_id)) is False
    wait_until(lambda: queue_drained(url), timeout=30)
    cancelled_at = len(ticks(trace, "life"))
    observe(2.5)
    assert len(ticks(trace, "life")) == cancelled_at
    with pytest.raises(JobNotFoundError, match="no scheduled job"):
        run(url, lambda c: c.resume_scheduled_job(job.job_id))


def test_a_paused_one_shot_keeps_its_time_and_a_modified_one_moves(clean_jetstream: str) -> None:
    url = clean_jetstream
    later = datetime.now(UTC) + timedelta(hours=1)
    job = enqueue_at_sync(later, worker_jobs.tick, "later", nats_url=url)
    run(url, lambda c: c.pause_scheduled_job(job.job_id))
    [info] = list_schedules_sync(nats_url=url)
    assert (info.kind, info.paused) == ("once", True)
    run(url, lambda c: c.resume_scheduled_job(job.job_id))
    [info] = list_schedules_sync(nats_url=url)
    assert info.next_run == pytest.approx(later.timestamp())
    sooner = later - timedelta(minutes=30)
    run(
        url,
        lambda c: c.modify_scheduled_job(job.job_id, scheduled_timestamp_utc=sooner.timestamp()),
    )
    [info] = list_schedules_sync(nats_url=url)
    assert info.next_run == pytest.approx(sooner.timestamp())
    [(headers, body)] = stream_messages(
        url, layout.SCHEDULE_STREAM, layout.schedule_filter(job.job_id)
    )
    assert headers["Nats-Schedule"].startswith(f"@at {sooner.strftime('%Y-%m-%dT%H:%M:%S')}")
    assert json.loads(body)["id"] == job.job_id


# --------------------------------------------------------------------------- the rest of the API


def test_purge_queue_removes_waiting_jobs_and_says_how_many(clean_jetstream: str) -> None:
    url = clean_jetstream
    run(
        url,
        lambda c: c.enqueue_many(worker_jobs.tick, [("a",), ("b",), ("c",)], queue_name="purged"),
    )
    later = run(url, lambda c: c.enqueue_in(3600, worker_jobs.tick, "kept", queue_name="purged"))
    assert purge_queue_sync("purged", nats_url=url) == 3
    assert purge_queue_sync("purged", nats_url=url) == 0
    assert not no_schedule_left(url, later.job_id)  # schedules are not waiting jobs

    async def with_queue() -> int:
        queue = Queue("purged", nats_url=url)
        await queue.enqueue(worker_jobs.tick, "d")
        return await queue.purge()

    assert asyncio.run(with_queue()) == 1


def test_queue_and_sync_twins_follow_naq(clean_jetstream: str) -> None:
    url = clean_jetstream
    job = schedule_sync(worker_jobs.tick, "sync", interval=60, nats_url=url, queue_name="q1")
    assert job.queue == "q1"

    async def with_queue() -> list[str]:
        async with Queue("q2", nats_url=url) as queue:
            at = await queue.enqueue_at(
                datetime.now(UTC) + timedelta(hours=1), worker_jobs.tick, "a"
            )
            cron = await queue.schedule(worker_jobs.tick, "c", cron="@hourly", repeat=3)
            assert await queue.modify_scheduled_job(cron.job_id, cron="0 0 */2 * * *")
            assert await queue.pause_scheduled_job(at.job_id)
            assert await queue.resume_scheduled_job(at.job_id)
            assert await queue.cancel_scheduled_job(at.job_id)
            return [cron.job_id]

    [cron_id] = asyncio.run(with_queue())
    infos = {info.id: info for info in list_schedules_sync(nats_url=url)}
    assert infos[job.job_id].queue == "q1"
    assert (infos[cron_id].queue, infos[cron_id].cron, infos[cron_id].runs_left) == (
        "q2", "0 0 */2 * * *", 3,
    )  # fmt: skip
    assert [i.id for i in list_schedules_sync("q2", nats_url=url)] == [cron_id]


def test_an_existing_job_stream_is_given_the_scheduled_runs_source(clean_jetstream: str) -> None:
    async def main() -> list[str | None]:
        nc = await connect(url=clean_jetstream)
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=layout.JOB_STREAM, subjects=["naq.jobs.*"]))
            await ensure_layout(js)
            info = await js.stream_info(layout.JOB_STREAM)
            return [source.name for source in info.config.sources or []]
        finally:
            await nc.close()

    assert asyncio.run(main()) == [layout.SCHEDULE_STREAM]


def test_run_envelope_gives_each_run_of_a_repeating_schedule_its_own_id() -> None:
    env = JobEnvelope(id="sched1", function="m:f")
    fired = {"Nats-Scheduler": "naq.schedules.default.sched1.0"}
    first = run_envelope(env, {**fired, "Nats-Schedule-Next": "2026-11-30T07:14:45Z"})
    again = run_envelope(env, {**fired, "Nats-Schedule-Next": "2026-11-30T08:14:45+01:00"})
    second = run_envelope(env, {**fired, "Nats-Schedule-Next": "2026-11-30T07:14:46Z"})
    assert first.id == again.id == "sched1-t1796022885"  # the same run, stored twice
    assert second.id == "sched1-t1796022886"
    assert run_envelope(env, {**fired, "Nats-Schedule-Next": "purge"}) is env  # a one-shot
    assert run_envelope(env, None) is env
    assert run_envelope(env, {"Nats-Schedule-Next": "2026-11-30T07:14:45Z"}) is env


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.enqueue_at(datetime.now(UTC) - timedelta(seconds=5), worker_jobs.tick, "x"),
         "in the past"),
        (lambda c: c.enqueue_at(datetime.now() - timedelta(seconds=5), worker_jobs.tick, "x"),
         "naive datetime is local time"),
        (lambda c: c.enqueue_at("tomorrow", worker_jobs.tick, "x"), "must be a datetime"),
        (lambda c: c.enqueue_in(0, worker_jobs.tick, "x"), "use enqueue"),
        (lambda c: c.enqueue_in(timedelta(seconds=-1), worker_jobs.tick, "x"), "delta must be > 0"),
        (lambda c: c.schedule(worker_jobs.tick, "x"), "not neither"),
        (lambda c: c.schedule(worker_jobs.tick, "x", cron="* * * * * *", interval=5), "not both"),
        (lambda c: c.schedule(worker_jobs.tick, "x", interval=0), "interval must be > 0"),
        (lambda c: c.schedule(worker_jobs.tick, "x", interval=timedelta(0)), "must be > 0"),
        (lambda c: c.schedule(worker_jobs.tick, "x", interval=0.5), "at least 1 second"),
        (lambda c: c.schedule(worker_jobs.tick, "x", cron="*/5 * * * *"), "write '0 \\*/5"),
        (lambda c: c.schedule(worker_jobs.tick, "x", cron="61 * * * * *"), "outside the seconds"),
        (lambda c: c.schedule(worker_jobs.tick, "x", cron="0 0 0 30 2 *"), "never fires"),
        (lambda c: c.schedule(worker_jobs.tick, "x", cron="* * * * * *", time_zone="+02:00"),
         "fixed offsets"),
        (lambda c: c.schedule(worker_jobs.tick, "x", cron="* * * * * *", time_zone="Mars/Base"),
         "not a known IANA zone"),
        (lambda c: c.schedule(worker_jobs.tick, "x", interval=5, time_zone="UTC"),
         "time_zone applies to a cron"),
        (lambda c: c.schedule(worker_jobs.tick, "x", interval=5, repeat=0), "repeat must be"),
        (lambda c: c.schedule(worker_jobs.tick, "x", interval=5, repeat=10**6), "repeat must be"),
        (lambda c: c.schedule(worker_jobs.tick, "x", interval=5, queue_name="a.b"), "queue_name"),
        (lambda c: c.cancel_scheduled_job("*"), "job_id must be a schedule's id"),
        (lambda c: c.modify_scheduled_job("abc", function="other"), "cannot change function"),
        (lambda c: c.purge_queue(">"), "queue_name"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_with_the_fix(
    clean_jetstream: str, call: Callable[[Client], Awaitable[Any]], match: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        run(clean_jetstream, call)
    assert list_schedules_sync(nats_url=clean_jetstream) == []


def test_modify_refuses_what_cannot_be(clean_jetstream: str) -> None:
    url = clean_jetstream
    once = run(url, lambda c: c.enqueue_in(3600, worker_jobs.tick, "x"))
    forever = run(url, lambda c: c.schedule(worker_jobs.tick, "x", interval=60))
    with pytest.raises(ValueError, match="repeat needs cron= or interval="):
        run(url, lambda c: c.modify_scheduled_job(once.job_id, repeat=3))
    with pytest.raises(ValueError, match="the server keeps its phase"):
        run(
            url,
            lambda c: c.modify_scheduled_job(
                forever.job_id, scheduled_timestamp_utc=time.time() + 60
            ),
        )
    with pytest.raises(ValueError, match="in the past"):
        run(
            url,
            lambda c: c.modify_scheduled_job(once.job_id, scheduled_timestamp_utc=time.time() - 60),
        )
    with pytest.raises(JobNotFoundError):
        run(url, lambda c: c.pause_scheduled_job("never-scheduled"))


CRONS_REFUSED = [
    "* * * * *", "60 * * * * *", "* 60 * * * *", "* * 24 * * *", "* * * 0 * *",
    "* * * 32 * *", "* * * * 13 *", "* * * * * 7", "*/0 * * * * *", "5-1 * * * * *",
    "x * * * * *", "* * * * * * *", "every minute", "0 0 0 30 2 *",
]  # fmt: skip
CRONS_ACCEPTED = [
    "* * * * * *", "0 */5 * * * *", "0 30 9 * * mon-fri", "0 0 0 1,15 * sun", "@hourly",
    "@daily", "0 0 12 * jan-mar *", "15/10 * * * * *", "0 0 9 ? * *",
]  # fmt: skip


def test_cron_rules_are_the_servers(clean_jetstream: str) -> None:
    """What the parser refuses the server refuses (err 10189), and what it takes the server
    takes: both are asked for every expression."""

    async def server_takes(expressions: list[str]) -> list[bool | int | None]:
        nc = await connect(url=clean_jetstream)
        try:
            js = nc.jetstream()
            await ensure_layout(js)
            taken: list[bool | int | None] = []
            for i, expression in enumerate(expressions):
                try:
                    await js.publish(
                        layout.schedule_subject("probe", f"cron{i}", 0), b"",
                        headers={"Nats-Schedule": expression,
                                 "Nats-Schedule-Target": layout.run_subject("probe")},
                    )  # fmt: skip
                    taken.append(True)
                except APIError as exc:
                    taken.append(exc.err_code)  # 10189: "message schedules pattern is invalid"
            return taken
        finally:
            await nc.close()

    def parser_takes(expression: str) -> bool:
        try:
            parse_cron(expression)
        except CronError:
            return False
        return True

    expressions = CRONS_REFUSED + CRONS_ACCEPTED
    expected = [False] * len(CRONS_REFUSED) + [True] * len(CRONS_ACCEPTED)
    assert [parser_takes(e) for e in expressions] == expected
    assert asyncio.run(server_takes(expressions)) == [t or 10189 for t in expected]


def test_cron_times_follow_the_fields_and_the_zone() -> None:
    start = datetime(2026, 3, 28, 12, tzinfo=UTC)
    daily = parse_cron("0 30 2 * * *")
    amsterdam = list(itertools.islice(daily.times(start, ZoneInfo("Europe/Amsterdam")), 3))
    # 02:30 does not exist on 29 March 2026 in Amsterdam; it is taken at the old offset.
    assert [t.isoformat() for t in amsterdam] == [
        "2026-03-29T01:30:00+00:00", "2026-03-30T00:30:00+00:00", "2026-03-31T00:30:00+00:00",
    ]  # fmt: skip
    either = parse_cron("0 0 9 1,15 * mon")  # both day fields restricted: either day runs
    days = [t.day for t in itertools.islice(either.times(datetime(2026, 6, 1, tzinfo=UTC)), 6)]
    assert days == [1, 8, 15, 22, 29, 1]


# --------------------------------------------------------------------------- the command


def naq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "naq_resilience.cli", "schedule", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "NAQ_NATS_URL": url, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_naq_schedule_list_and_cancel(clean_jetstream: str) -> None:
    url = clean_jetstream
    assert naq(url, "list").stdout.strip() == "no scheduled jobs"
    once = run(url, lambda c: c.enqueue_in(3600, worker_jobs.tick, "x", job_id="report-once"))
    cron = run(url, lambda c: c.schedule(
        worker_jobs.tick, "y", cron="0 0 6 * * *", time_zone="Europe/Amsterdam",
        queue_name="mail", job_id="daily-mail",
    ))  # fmt: skip

    listed = naq(url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows["report-once"]["kind"] == "once"
    assert rows["report-once"]["next_run"] == pytest.approx(once.next_run)
    assert (rows["daily-mail"]["queue"], rows["daily-mail"]["cron"]) == ("mail", "0 0 6 * * *")
    assert rows["daily-mail"]["next_run"] == pytest.approx(cron.next_run)

    table = naq(url, "list", "--queue", "mail")
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()
    assert header.split()[:3] == ["ID", "QUEUE", "FUNCTION"]
    assert "daily-mail" in line
    assert "cron 0 0 6 * * * (Europe/Amsterdam)" in line
    assert "until cancelled" in line
    assert "report-once" not in table.stdout

    done = naq(url, "cancel", "daily-mail")
    assert (done.returncode, done.stdout.strip()) == (0, "cancelled daily-mail")
    again = naq(url, "cancel", "daily-mail")
    assert again.returncode == 1
    assert "no scheduled job 'daily-mail'" in again.stderr
    bad = naq(url, "cancel", "daily.*")
    assert bad.returncode == 2
    assert "job_id must be a schedule's id" in bad.stderr
    assert [row["id"] for row in json.loads(naq(url, "list", "--json").stdout)] == ["report-once"]
