"""`naq jobs list` and `naq jobs show`, on the suite's real nats-server; and how little
`list` reads of a big window, on a window of records kept in memory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import msgspec
import pytest

from naq_resilience import Client, JobRecord, JobStatus, Worker, cli
from naq_resilience.cli import jobs as cli_jobs

import worker_jobs
from conftest import ROOT, free_port

# --------------------------------------------------------------------------- helpers


def naq(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    """`naq jobs ARGS` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = cli.main(["jobs", *args, "--nats-url", url])
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> list[dict[str, Any]]:
    code, out, err = naq(capsys, url, "list", "--json", *args)
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["job_id"] for row in rows]


async def recorded(client: Client, job_id: str, *statuses: JobStatus) -> JobRecord:
    """The job's record once it says one of `statuses` (records are sent without an
    ack, so they may trail the enqueue or the run a moment)."""
    record = None
    for _ in range(1000):
        record = await client.get_job(job_id)
        if record is not None and record.status in statuses:
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}: {record}")


async def enqueue_in_order(client: Client, queue: str, count: int) -> list[str]:
    """`count` jobs on a queue no worker takes, one after the other: their records
    reach the history in this order."""
    jobs = [(await client.enqueue(worker_jobs.add, i, 1, queue_name=queue)).job_id
            for i in range(count)]  # fmt: skip
    for job_id in jobs:
        await recorded(client, job_id, JobStatus.QUEUED)
    return jobs


def block(text: str) -> dict[str, str]:
    """`naq jobs show`'s block as a dict of field to text."""
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


# --------------------------------------------------------------------------- on the server


@pytest.mark.usefixtures("clean_jetstream")
def test_list_shows_the_newest_first_as_json_and_as_a_table(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> list[str]:
        async with Client(nats_url) as client:
            return await enqueue_in_order(client, "idle", 6)

    jobs = asyncio.run(setup())
    newest_first = jobs[::-1]

    rows = listed(capsys, nats_url)
    assert ids(rows) == newest_first
    assert {(row["status"], row["queue"], row["function"]) for row in rows} == {
        ("queued", "idle", "worker_jobs:add")
    }
    assert all(row["enqueued_at"] > 0 for row in rows)
    assert ids(listed(capsys, nats_url, "--limit", "2")) == newest_first[:2]
    assert ids(listed(capsys, nats_url, "--limit", "0")) == newest_first
    assert ids(listed(capsys, nats_url, "--hours", "0.5")) == newest_first
    assert ids(listed(capsys, nats_url, "--hours", "1e9")) == newest_first  # from 1970 on
    assert ids(listed(capsys, nats_url, "--since", "2h")) == newest_first  # as naq dlq takes it
    assert ids(listed(capsys, nats_url, "--since", "1000-01-01")) == newest_first

    code, out, err = naq(capsys, nats_url, "list")
    assert code == 0, err
    header, *lines, footer = out.splitlines()
    assert header.split() == ["ID", "STATUS", "FUNCTION", "QUEUE", "ATTEMPTS", "UPDATED", "ERROR"]
    assert [line.split()[0] for line in lines] == newest_first
    assert all(line.split()[1:5] == ["queued", "worker_jobs:add", "idle", "0"] for line in lines)
    assert footer.startswith("6 jobs changed since ")

    code, out, err = naq(capsys, nats_url, "list", "--limit", "2")
    assert code == 0, err
    *_, footer = out.splitlines()
    assert footer.startswith("the newest 2 of the 6 jobs changed since ")
    assert jobs[0] not in out


@pytest.mark.usefixtures("clean_jetstream")
def test_list_filters_and_show_prints_every_field(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> tuple[list[str], list[str], str]:
        async with Client(nats_url) as client:
            good = [(await client.enqueue(worker_jobs.add, i, 1)).job_id for i in range(3)]
            bad = [(await client.enqueue(worker_jobs.fail_with, 10, "value")).job_id
                   for _ in range(2)]  # fmt: skip
            mail = (await client.enqueue(worker_jobs.add, 1, 1, queue_name="mail")).job_id
            worker = Worker("default", nats_url=nats_url, imports=["worker_jobs"])
            task = asyncio.create_task(worker.run())
            try:
                for job_id in good:
                    await recorded(client, job_id, JobStatus.COMPLETED)
                for job_id in bad:
                    await recorded(client, job_id, JobStatus.FAILED)
                await recorded(client, mail, JobStatus.QUEUED)
            finally:
                worker.stop()
                await task
            return good, bad, mail

    good, bad, mail = asyncio.run(setup())

    assert len(listed(capsys, nats_url)) == 6
    failed = listed(capsys, nats_url, "--status", "failed")
    assert sorted(ids(failed)) == sorted(bad)
    assert {(row["status"], row["error_type"]) for row in failed} == {
        ("failed", "builtins:ValueError")
    }
    either = listed(capsys, nats_url, "--status", "completed", "--status", "FAILED")
    assert sorted(ids(either)) == sorted(good + bad)
    assert ids(listed(capsys, nats_url, "--queue", "mail")) == [mail]
    assert sorted(ids(listed(capsys, nats_url, "--function", "fail_with"))) == sorted(bad)
    by_name = listed(capsys, nats_url, "--function", "worker_jobs:add", "--queue", "default")
    assert sorted(ids(by_name)) == sorted(good)
    assert listed(capsys, nats_url, "--function", "other:add") == []
    assert sorted(ids(listed(capsys, nats_url, "--function", "worker_jobs:fail_*"))) == sorted(bad)
    assert len(listed(capsys, nats_url, "--function", "*")) == 6
    assert listed(capsys, nats_url, "--status", "running") == []
    assert len(listed(capsys, nats_url, "--status", "completed", "--limit", "1")) == 1

    code, out, err = naq(capsys, nats_url, "list", "--status", "failed")
    assert code == 0, err
    assert all(job_id in out for job_id in bad)
    assert not any(job_id in out for job_id in [*good, mail])
    assert "builtins:ValueError" in out
    assert out.splitlines()[-1].startswith("2 jobs with status failed, newest first, of the 6 ")
    code, out, err = naq(capsys, nats_url, "list", "--status", "running")
    assert out.startswith("no jobs with status running among the 6 jobs changed since"), err

    code, out, err = naq(capsys, nats_url, "show", bad[0], "--json")
    assert code == 0, err
    record = json.loads(out)
    assert (record["job_id"], record["status"], record["queue"]) == (bad[0], "failed", "default")
    assert (record["error_type"], record["error"]) == ("builtins:ValueError", "x" * 10)
    assert (record["attempts"], record["dead_letter_queue"]) == (1, "default.dead")

    code, out, err = naq(capsys, nats_url, "show", bad[0])
    assert code == 0, err
    shown = block(out)
    assert next(iter(shown)) == "job_id"
    fields = msgspec.structs.fields(JobRecord)
    assert sorted(shown) == sorted(field.name for field in fields)  # unset ones too
    assert (shown["job_id"], shown["status"], shown["function"]) == (
        bad[0], "failed", "worker_jobs:fail_with",
    )  # fmt: skip
    assert (shown["attempts"], shown["error_type"]) == ("1", "builtins:ValueError")
    for name in ("updated_at", "enqueued_at", "started_at", "finished_at"):
        at = datetime.fromisoformat(shown[name])
        assert at.utcoffset() is not None
        assert at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        assert at.timestamp() == pytest.approx(record[name], abs=0.001)
    assert (shown["scheduled_for"], shown["next_retry_at"]) == ("-", "-")
    unset = [field.name for field in fields if field.default is None and field.name not in record]
    assert unset
    assert all(shown[name] == "-" for name in unset)


@pytest.mark.usefixtures("clean_jetstream")
def test_show_of_a_job_not_in_the_history_exits_1_naming_the_window(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = naq(capsys, nats_url, "list", "--since", "2025-06-01T09:30+02:00")
    assert (code, out) == (0, "no jobs changed since 2025-06-01 07:30:00 UTC\n"), err
    assert listed(capsys, nats_url) == []
    code, out, err = naq(capsys, nats_url, "show", "never-enqueued-1")
    assert (code, out) == (1, "")
    assert err.startswith("naq jobs show: no job 'never-enqueued-1' in the job history")
    assert "7 days after a job's last change" in err
    assert "history_max_age" in err
    assert err.count("\n") == 1


@pytest.mark.usefixtures("clean_jetstream")
def test_a_big_window_is_read_from_a_later_start(
    nats_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same answers when the window holds more than a listing reads at first (made
    small here): counted later starts, then earlier ones while the filters want more."""
    monkeypatch.setattr(cli_jobs, "_FIRST_READ", 4)

    async def setup() -> tuple[list[str], list[str]]:
        async with Client(nats_url) as client:
            return await enqueue_in_order(client, "early", 5), await enqueue_in_order(
                client, "late", 40
            )

    early, late = asyncio.run(setup())
    everything = (early + late)[::-1]
    assert ids(listed(capsys, nats_url, "--limit", "3")) == everything[:3]
    assert ids(listed(capsys, nats_url, "--limit", "30")) == everything[:30]
    assert ids(listed(capsys, nats_url, "--queue", "early", "--limit", "3")) == early[::-1][:3]
    assert ids(listed(capsys, nats_url, "--queue", "early")) == early[::-1]
    assert ids(listed(capsys, nats_url, "--limit", "0")) == everything


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["list", "--status", "nope"], "use one of queued, scheduled, running, retrying,"),
        (["list", "--status", "dead"], "a job that failed for good is recorded as failed"),
        (["list", "--hours", "0"], "write it like --hours 6 or --hours 0.5"),
        (["list", "--hours", "soon"], "write it like --hours 6 or --hours 0.5"),
        (["list", "--since", "yesterday"], "write it like --since 6h or --since 2025-06-01T09:30"),
        (["list", "--since", "2999-01-01"], "is in the future, and the history holds the past"),
        (["list", "--hours", "2", "--since", "2025-06-01"], "give --hours or --since, not both"),
        (["list", "--limit", "-3"], "write it like --limit 20 (0: all)"),
        (["show", "a.b"], "is not a job id"),
    ],
)
def test_bad_arguments_say_what_to_type_in_one_line(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before connecting: no server is needed, none is at this URL.
    code, out, err = naq(capsys, f"nats://127.0.0.1:{free_port()}", *args)
    assert (code, out) == (2, "")
    assert err.startswith(f"naq jobs {args[0]}: ")
    assert says in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("args", [["list"], ["show", "some-job"]], ids=["list", "show"])
def test_a_server_that_cannot_be_reached_is_one_line(args: list[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "naq_resilience.cli", "jobs", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "NAQ_NATS_URL": url},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"naq jobs {args[0]}: cannot connect to NATS at {url}")
    assert done.stderr.count("\n") == 1


# --------------------------------------------------------------------------- how much is read


class Store:
    """A history in memory: (time, record) in the order they changed, one per job."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[float, JobRecord]] = {}  # in the order they changed
        self.read = 0  # records handed out by windows
        self.after_read: Callable[[], None] = lambda: None

    def put(self, at: float, job_id: str, queue: str = "q", status: str = "completed") -> None:
        record = JobRecord(
            job_id=job_id, queue=queue, function="m:f", status=JobStatus(status), updated_at=at
        )
        self.jobs.pop(job_id, None)  # one record per job, the newest at the end
        self.jobs[job_id] = (at, record)

    async def get_jobs_in_timeframe(self, *, since: float) -> Window:
        return Window(self, since)


class Window:
    """A JobWindow of `Store`: counted once, paged 1,000 at a time in stream order."""

    def __init__(self, store: Store, since: float) -> None:
        self.store = store
        self.since = since
        self.total: int | None = None

    async def count(self) -> int:
        if self.total is None:
            self.total = sum(1 for at, _ in self.store.jobs.values() if at >= self.since)
        return self.total

    async def pages(self) -> AsyncIterator[list[JobRecord]]:
        total = await self.count()
        records = [record for at, record in self.store.jobs.values() if at >= self.since][:total]
        try:
            for start in range(0, len(records), 1000):
                page = records[start : start + 1000]
                self.store.read += len(page)
                yield page
        finally:
            self.store.after_read()


def newest(store: Store, since: float, limit: int | None, keep: Any = None) -> list[str]:
    found, _ = asyncio.run(
        cli_jobs.newest_jobs(store, since, limit, keep or (lambda record: True))  # type: ignore[arg-type]
    )
    return [record.job_id for record in found]


def test_a_listing_of_an_even_window_reads_about_a_page() -> None:
    store, now = Store(), time.time()
    for i in range(100_000):
        store.put(now - 3600 + i * 0.036, f"j{i}")
    assert newest(store, now - 3600, 50) == [f"j{i}" for i in range(99_999, 99_949, -1)]
    assert store.read <= 4000


def test_a_burst_of_new_jobs_is_not_read_whole() -> None:
    store, now = Store(), time.time()
    for i in range(1000):
        store.put(now - 3600 + i * 3, f"old{i}")
    for i in range(99_000):
        store.put(now - 10 + i * 1e-4, f"new{i}")
    assert newest(store, now - 3600, 20) == [f"new{i}" for i in range(98_999, 98_979, -1)]
    assert store.read <= 4000


def test_a_filter_reads_back_only_as_far_as_its_matches() -> None:
    store, now = Store(), time.time()
    for i in range(50_000):
        store.put(now - 3600 + i * 0.072, f"j{i}", queue="rare" if i % 1000 == 0 else "q")
    rare = newest(store, now - 3600, 5, lambda record: record.queue == "rare")
    assert rare == ["j49000", "j48000", "j47000", "j46000", "j45000"]
    assert store.read < 25_000
    store.read = 0
    everything = newest(store, now - 3600, None, lambda record: record.queue == "rare")
    assert everything == [f"j{i}" for i in range(49_000, -1, -1000)]
    assert store.read == 50_000


def number(record: JobRecord) -> int:
    return int(record.job_id[1:]) if record.job_id.startswith("j") else -1


def test_records_read_twice_while_others_arrive_are_listed_once() -> None:
    """Records arriving between a step's count and the next make the next step read a
    few records again: j3000 here, the first the first step read."""
    store, now = Store(), time.time()
    since = now - 5000
    for i in range(5000):
        store.put(since + i + 0.5, f"j{i}")
    arrivals = iter(range(1000))
    store.after_read = lambda: store.put(time.time(), f"new{next(arrivals)}")
    found = newest(store, since, 1000, lambda record: 0 <= number(record) <= 3000)
    assert found == [f"j{i}" for i in range(3000, 2000, -1)]


def test_a_job_that_changes_during_a_listing_is_listed_at_most_once() -> None:
    store, now = Store(), time.time()
    since = now - 5000
    for i in range(5000):
        store.put(since + i + 0.5, f"j{i}", status="queued" if i == 10 else "completed")
    moved = []

    def complete_j10() -> None:  # after the newest records were read
        if not moved:
            moved.append(True)
            store.put(time.time(), "j10", status="completed")

    store.after_read = complete_j10
    found = newest(store, since, 100, lambda record: number(record) % 100 == 10)
    assert found[:49] == [f"j{i}" for i in range(4910, 10, -100)]
    assert found[49:] in ([], ["j10"])
