"""Dead letters an operator acts on: filters, pages, counts, replay with its links,
bulk replay, reschedule, archive, discard and purge, on a real server.

Letters for the filter and paging tests are written on their subjects as any producer
of the documented wire format could; the replay tests take letters a real worker wrote.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from naq_resilience import (
    AlreadyReplayedError,
    Client,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterNotFoundError,
    FailureRecord,
    JobEnvelope,
    JobStatus,
    NotReplayableError,
    Worker,
    analyze_failure,
    get_dead_letter_jobs,
    list_schedules_sync,
)
from naq_resilience.jetstream import layout

import worker_jobs

pytestmark = pytest.mark.usefixtures("clean_jetstream")

FUNCTIONS = ["billing:charge", "billing:refund", "mail:send"]
ERRORS = [
    ("builtins:ValueError", "non_retryable", "bad amount"),
    ("builtins:ConnectionError", "retryable", "connection refused"),
    ("naq_resilience:SecurityError", "critical", "tampered payload"),
]
QUEUES = [("billing", "billing.dead"), ("mail", "failed_jobs"), ("default", "default.dead")]
T0 = 1_700_000_000.0


def letter(n: int, **overrides: Any) -> DeadLetter:
    """The nth of a mix of letters: functions, errors and queues in turn."""
    function = FUNCTIONS[n % 3]
    error_type, classification, message = ERRORS[(n // 3) % 3]
    queue, dead_queue = QUEUES[n % 3]
    job_id = f"job-{n:05d}"
    failure = FailureRecord(
        job_id=job_id, function=function, queue=queue, attempt=1, max_attempts=1,
        error_type=error_type, message=f"{message} #{n}", classification=classification,
        outcome="dead", started_at=T0 + n, failed_at=T0 + n,
    )  # fmt: skip
    fields: dict[str, Any] = {
        "reason": f"{classification} error {error_type}: {message} #{n}",
        "queue": queue,
        "dead_letter_queue": dead_queue,
        "dead_at": T0 + n,
        "job": JobEnvelope(id=job_id, function=function, queue=queue, args=[n]),
        "failures": [failure],
    }
    fields.update(overrides)
    return DeadLetter(**fields)


async def write(url: str, letters: list[DeadLetter], ttl: int | None = None) -> None:
    async with Client(url):  # the streams
        pass
    nc = await nats.connect(url)
    js = nc.jetstream()
    headers = {"Nats-TTL": str(ttl)} if ttl else None
    acks = [
        js.publish(
            layout.dead_subject(item.dead_letter_queue, item.id),
            msgspec.json.encode(item),
            headers=headers,
        )
        for item in letters
    ]
    await asyncio.gather(*acks)
    await nc.close()


@asynccontextmanager
async def working(url: str, queues: list[str] | None = None) -> AsyncIterator[Worker]:
    worker = Worker(queues or ["default"], nats_url=url, imports=["worker_jobs"])
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


async def dead_letter_of(client: Client, job_id: str) -> DeadLetter:
    async def found() -> DeadLetter | None:
        try:
            return await client.get_dead_letter(job_id)
        except DeadLetterNotFoundError:
            return None

    result: DeadLetter = await until(found, f"the dead letter of {job_id}")
    return result


# --------------------------------------------------------------------------- finding letters


def test_every_filter_names_exactly_the_letters_it_says(nats_url: str) -> None:
    letters = [letter(n) for n in range(90)]
    expected_ids = {
        "all": [x.id for x in letters],
        "dlq billing.dead": [x.id for x in letters if x.dead_letter_queue == "billing.dead"],
        "queue mail": [x.id for x in letters if x.queue == "mail"],
        "function": [x.id for x in letters if x.job and x.job.function == "billing:refund"],
        "glob": [x.id for x in letters if x.job and x.job.function.startswith("billing:")],
        "error": [x.id for x in letters if "ValueError" in x.failures[0].error_type],
        "critical": [x.id for x in letters if x.failures[0].classification == "critical"],
        "time": [x.id for x in letters if T0 + 10 <= x.dead_at <= T0 + 20],
        "text": [x.id for x in letters if "REFUSED #4" in x.failures[0].message.upper()],
    }
    filters = {
        "all": {},
        "dlq billing.dead": {"dead_letter_queue": "billing.dead"},
        "queue mail": {"queue": "mail"},
        "function": {"function": "billing:refund"},
        "glob": {"function": "billing:*"},
        "error": {"error_type": "ValueError"},
        "critical": {"classification": "critical"},
        "time": {"since": T0 + 10, "until": datetime.fromtimestamp(T0 + 20, UTC)},
        "text": {"text": "Refused #4"},
    }

    async def main() -> None:
        await write(nats_url, letters)
        async with Client(nats_url) as client:
            for name, given in filters.items():
                page = await client.list_dead_letters(limit=1000, **given)
                assert [x.id for x in page.letters] == expected_ids[name], name
                assert page.next_after is None, name
                assert await client.count_dead_letters(**given) == len(expected_ids[name]), name
            both = await client.list_dead_letters(
                limit=1000, function="billing:*", classification="retryable"
            )
            assert {x.id for x in both.letters} == {
                x.id
                for x in letters
                if x.job
                and x.job.function.startswith("billing:")
                and x.failures[0].classification == "retryable"
            }

    asyncio.run(main())


def test_pages_cover_every_letter_once_in_order(nats_url: str) -> None:
    letters = [letter(n) for n in range(230)]

    async def main() -> None:
        await write(nats_url, letters)
        async with Client(nats_url) as client:
            for given in ({}, {"function": "mail:send"}):
                seen: list[str] = []
                after = 0
                pages = 0
                while True:
                    page = await client.list_dead_letters(limit=40, after=after, **given)
                    seen += [x.id for x in page.letters]
                    pages += 1
                    if page.next_after is None:
                        break
                    after = page.next_after
                want = [x.id for x in letters if not given or x.job.function == "mail:send"]  # type: ignore[union-attr]
                assert seen == want
                assert pages == -(-len(want) // 40) or pages == -(-len(want) // 40) + 1
                assert [x.id async for x in client.iter_dead_letters(**given)] == want

    asyncio.run(main())


def test_a_queue_name_means_its_dead_letter_queue(nats_url: str, monkeypatch: Any) -> None:
    """The guide passes "failed_jobs" (a dead-letter queue); a user passes "default" (a
    queue, whose letters are in "default.dead"). Both find what they mean, from sync code."""
    letters = [letter(n) for n in range(9)]
    asyncio.run(write(nats_url, letters))
    monkeypatch.setenv("NAQ_NATS_URL", nats_url)
    default = get_dead_letter_jobs("default")
    assert [x.id for x in default] == [x.id for x in letters if x.queue == "default"]
    assert {x.dead_letter_queue for x in default} == {"default.dead"}
    failed = get_dead_letter_jobs("failed_jobs")
    assert [x.id for x in failed] == [x.id for x in letters if x.dead_letter_queue == "failed_jobs"]
    assert get_dead_letter_jobs("nothing-here") == []
    with pytest.raises(ValueError, match=r"emails\.dead"):
        get_dead_letter_jobs("a.b.c")


def test_bad_filters_say_what_to_write(nats_url: str) -> None:
    with pytest.raises(TypeError, match="unknown dead-letter filter functon; the filters are"):
        DeadLetterFilter.of(functon="x")
    with pytest.raises(ValueError, match="classification must be one of retryable"):
        DeadLetterFilter(classification="transient")
    with pytest.raises(ValueError, match="timezone-aware"):
        DeadLetterFilter(since=datetime(2026, 1, 1))
    recent = DeadLetterFilter(since=timedelta(hours=1))
    assert recent.matches(letter(1, dead_at=time.time()))
    assert not recent.matches(letter(1, dead_at=time.time() - 7200))


def test_one_letter_with_its_whole_failure_history(nats_url: str) -> None:
    """A letter that left its oldest failures out to fit is shown with all of them,
    read back from the failures stream."""

    async def main() -> None:
        records = [
            FailureRecord(
                job_id="big-1",
                function="billing:charge",
                queue="billing",
                attempt=n,
                max_attempts=5,
                error_type="builtins:ConnectionError",
                message=f"try {n}",
                classification="retryable",
                outcome="retry" if n < 5 else "dead",
            )
            for n in range(1, 6)
        ]
        item = letter(0, failures=records[3:], failures_left_out=3)
        item = msgspec.structs.replace(
            item,
            job=msgspec.structs.replace(item.job, id="big-1"),
            dead_letter_queue="billing.dead",
        )
        await write(nats_url, [item])
        nc = await nats.connect(nats_url)
        for record in records:
            await nc.jetstream().publish(
                layout.failure_subject("billing", "big-1"), msgspec.json.encode(record)
            )
        await nc.close()
        async with Client(nats_url) as client:
            shown = await client.get_dead_letter("big-1")
            assert [f.attempt for f in shown.failures] == [4, 5]
            history = await client.get_failure_history(shown)
            assert [f.attempt for f in history] == [1, 2, 3, 4, 5]
            assert [f.message for f in history] == [f"try {n}" for n in range(1, 6)]
            with pytest.raises(DeadLetterNotFoundError, match="naq dlq list"):
                await client.get_dead_letter("no-such-letter")

    asyncio.run(main())


# --------------------------------------------------------------------------- replay


def test_replay_runs_the_job_again_linked_to_its_letter(nats_url: str) -> None:
    async def main() -> None:
        worker_jobs.calls.clear()
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.checks, "bad")
            dead = await dead_letter_of(client, job.job_id)
            assert analyze_failure(dead) == "data_issue"

            replayed = await client.replay_dead_letter(dead, args=["good"], max_retries=2)
            assert replayed.job_id == f"{job.job_id}-replay1"

            async def completed() -> Any:
                record = await client.get_job(replayed.job_id)
                return record if record and record.status is JobStatus.COMPLETED else None

            record = await until(completed, "the replayed job to complete")
            assert record.replay_of == job.job_id
            marked = await client.get_dead_letter(job.job_id)
            [replay] = marked.replays
            assert (replay.job_id, replay.queue) == (replayed.job_id, "default")
            assert replay.changed == ["max_retries", "args"]
            assert ("checks", "good") in worker_jobs.calls

            with pytest.raises(AlreadyReplayedError, match="force=True"):
                await client.replay_dead_letter(job.job_id)
            again = await client.replay_dead_letter(job.job_id, force=True)
            assert again.job_id == f"{job.job_id}-replay2"
            await until(lambda: client.get_job(again.job_id), "the second replay's record")
            marked = await client.get_dead_letter(job.job_id)
            assert [r.job_id for r in marked.replays] == [replayed.job_id, again.job_id]
            # The second replay ran with the letter's own arguments, and failed again:
            # its own letter, linked back.
            second = await dead_letter_of(client, again.job_id)
            assert second.job is not None
            assert second.job.replay_of == job.job_id
            assert second.job.args == ["bad"]

    asyncio.run(main())


def test_replay_to_another_queue_and_the_letter_keeps_its_ttl(nats_url: str) -> None:
    async def main() -> None:
        item = letter(0)  # billing:charge on billing, in billing.dead
        await write(nats_url, [item], ttl=3600)
        async with Client(nats_url) as client:
            job = await client.replay_dead_letter(item.id, queue_name="billing-slow")
            assert job.queue == "billing-slow"
            nc = await nats.connect(nats_url)
            js = nc.jetstream()
            stored = await js.get_last_msg(
                layout.DEAD_STREAM, layout.dead_subject("billing.dead", item.id)
            )
            queued = await js.get_last_msg(layout.JOB_STREAM, layout.job_subject("billing-slow"))
            await nc.close()
            ttl = int((stored.headers or {})["Nats-TTL"])
            assert 3590 <= ttl <= 3600  # what was left of it, not a fresh TTL
            envelope = msgspec.json.decode(queued.data, type=JobEnvelope)
            assert (envelope.id, envelope.replay_of, envelope.args) == (job.job_id, item.id, [0])

    asyncio.run(main())


def test_two_replayers_of_one_letter_make_one_job(nats_url: str) -> None:
    async def main() -> None:
        item = letter(3)
        await write(nats_url, [item])
        async with Client(nats_url) as one, Client(nats_url) as two:
            results = await asyncio.gather(
                one.replay_dead_letter(item.id), two.replay_dead_letter(item.id),
                return_exceptions=True,
            )  # fmt: skip
            ids = {r.job_id for r in results if not isinstance(r, BaseException)}
            assert ids == {f"{item.id}-replay1"}
            assert all(
                isinstance(r, AlreadyReplayedError) for r in results if isinstance(r, BaseException)
            )
            marked = await one.get_dead_letter(item.id)
            assert len(marked.replays) == 1
            info = await one._ready()
            state = await info[0].stream_info(layout.JOB_STREAM)
            assert state.state.messages == 1

    asyncio.run(main())


def test_a_letter_without_a_job_is_not_replayable(nats_url: str) -> None:
    async def main() -> None:
        raw = DeadLetter(
            reason="message is not valid JSON: truncated", queue="default",
            dead_letter_queue="default.dead", dead_at=T0, raw=b"{oops", letter_id="seq-7",
        )  # fmt: skip
        await write(nats_url, [raw])
        async with Client(nats_url) as client:
            shown = await client.get_dead_letter("seq-7")
            assert analyze_failure(shown) == "data_issue"
            with pytest.raises(NotReplayableError, match="archive or discard it"):
                await client.replay_dead_letter("seq-7")
            with pytest.raises(TypeError, match="replay cannot change max_retry"):
                await client.replay_dead_letter(letter(0).id, max_retry=3)

    asyncio.run(main())


def test_bulk_replay_replays_what_the_filter_names_and_skips_the_replayed(nats_url: str) -> None:
    letters = [letter(n) for n in range(120)]

    async def main() -> None:
        await write(nats_url, letters)
        chosen = [x.id for x in letters if x.queue == "billing"]
        seen: list[tuple[int, int]] = []
        async with Client(nats_url) as client:
            await client.replay_dead_letter(chosen[0])
            report = await client.replay_dead_letters(
                rate=None, queue="billing", progress=lambda done, total: seen.append((done, total))
            )
            assert [letter_id for letter_id, _ in report.replayed] == chosen[1:] or sorted(
                letter_id for letter_id, _ in report.replayed
            ) == sorted(chosen[1:])
            assert [letter_id for letter_id, _ in report.skipped] == [chosen[0]]
            assert seen[-1] == (len(chosen), len(chosen))
            info = await (await client._ready())[0].stream_info(layout.JOB_STREAM)
            assert info.state.messages == len(chosen)
            assert await client.count_dead_letters(replayed=True) == len(chosen)
            assert await client.count_dead_letters(replayed=False) == len(letters) - len(chosen)
            again = await client.replay_dead_letters(rate=500, queue="billing", force=True)
            assert len(again.replayed) == len(chosen)
            assert {job for _, job in again.replayed} == {f"{i}-replay2" for i in chosen}

    asyncio.run(main())


def test_reschedule_runs_the_job_later_from_a_server_schedule(
    nats_url: str, monkeypatch: Any
) -> None:
    async def main() -> None:
        worker_jobs.calls.clear()
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.checks, "bad")
            dead = await dead_letter_of(client, job.job_id)
            later = await client.reschedule_dead_letter(
                dead, delay=timedelta(seconds=1), args=["ok"]
            )
            marked = await client.get_dead_letter(job.job_id)
            [replay] = marked.replays
            assert replay.scheduled_for is not None
            assert replay.scheduled_for > replay.replayed_at
            monkeypatch.setenv("NAQ_NATS_URL", nats_url)
            assert [s.id for s in await asyncio.to_thread(list_schedules_sync)] == [later.job_id]

            async def completed() -> Any:
                record = await client.get_job(later.job_id)
                return record if record and record.status is JobStatus.COMPLETED else None

            record = await until(completed, "the rescheduled job")
            assert record.replay_of == job.job_id
            assert ("checks", "ok") in worker_jobs.calls
            with pytest.raises(ValueError, match=r"delay= .* or at="):
                await client.reschedule_dead_letter(dead, force=True)

    asyncio.run(main())


# ---------------------------------------------------------------------- archive, discard, purge


def test_archive_writes_json_lines_and_deletes_only_what_it_wrote(
    nats_url: str, tmp_path: Path
) -> None:
    letters = [letter(n) for n in range(30)]
    path = tmp_path / "dead.jsonl"

    async def main() -> None:
        await write(nats_url, letters)
        async with Client(nats_url) as client:
            count = await client.archive_dead_letters(path, function="mail:send", delete=True)
            named = [x for x in letters if x.job and x.job.function == "mail:send"]
            assert count == len(named)
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            assert [line["letter"]["job"]["id"] for line in lines] == [x.id for x in named]
            assert msgspec.convert(lines[0]["letter"], DeadLetter) == named[0]
            assert lines[0]["subject"] == layout.dead_subject(
                named[0].dead_letter_queue, named[0].id
            )
            left = [x.id async for x in client.iter_dead_letters()]
            assert left == [x.id for x in letters if x not in named]

    asyncio.run(main())


def test_discard_removes_exactly_what_it_names(nats_url: str) -> None:
    letters = [letter(n) for n in range(30)]

    async def main() -> None:
        await write(nats_url, letters)
        async with Client(nats_url) as client:
            assert await client.discard_dead_letters([letters[0].id, "not-there"]) == 1
            with pytest.raises(ValueError, match="purge_dead_letters"):
                await client.discard_dead_letters()
            gone = await client.discard_dead_letters(error_type="builtins:ConnectionError")
            expected = [
                x for x in letters[1:] if x.failures[0].error_type == "builtins:ConnectionError"
            ]
            assert gone == len(expected)
            left = {x.id async for x in client.iter_dead_letters()}
            assert left == {x.id for x in letters[1:]} - {x.id for x in expected}

    asyncio.run(main())


def test_purge_empties_one_dead_letter_queue_and_no_other(nats_url: str) -> None:
    async def main() -> None:
        mine = [letter(n, dead_letter_queue="emails.dead") for n in range(5)]
        other = [letter(n, dead_letter_queue="emails") for n in range(5, 8)]
        more = [letter(n, dead_letter_queue="emails.dead2") for n in range(8, 10)]
        await write(nats_url, mine + other + more)
        async with Client(nats_url) as client:
            assert await client.purge_dead_letters("emails.dead") == 5
            left = sorted([x.dead_letter_queue async for x in client.iter_dead_letters()])
            assert left == ["emails"] * 3 + ["emails.dead2"] * 2
            assert (
                await client.purge_dead_letters("emails") == 3
            )  # a queue of that name has letters
            assert await client.count_dead_letters() == 2

    asyncio.run(main())


# --------------------------------------------------------------------------- analyze_failure


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "transient_error"),  # letter(3): ConnectionError, retryable
        ({"reason": "unroutable: no worker imports billing"}, "system_issue"),
        ({"reason": "a worker crashed (was killed ...) during 3 deliveries"}, "system_issue"),
        ({"failures": []}, "unknown"),
    ],
)
def test_analyze_failure_reads_the_recorded_failures(
    overrides: dict[str, Any], expected: str
) -> None:
    assert analyze_failure(letter(3, **overrides)) == expected


def test_analyze_failure_by_error_kind() -> None:
    assert analyze_failure(letter(0)) == "data_issue"  # ValueError
    assert analyze_failure(letter(6)) == "system_issue"  # SecurityError, critical
    auth = letter(0)
    auth.failures[0].error_type = "naq_resilience:AuthenticationError"
    assert analyze_failure(auth) == "system_issue"


def test_reads_survive_the_stream_deleted_under_a_live_client(nats_url: str) -> None:
    """A development server given a fresh store, or an operator's delete: the next read
    finds nothing instead of failing, and the streams are there again."""

    async def main() -> None:
        await write(nats_url, [letter(0)])
        async with Client(nats_url) as client:
            assert await client.count_dead_letters() == 1
            nc = await nats.connect(nats_url)
            await nc.jetstream().delete_stream(layout.DEAD_STREAM)
            page = await client.list_dead_letters(function="billing:*")
            assert page.letters == []
            with pytest.raises(DeadLetterNotFoundError):
                await client.get_dead_letter(letter(0).id)
            assert (await nc.jetstream().stream_info(layout.DEAD_STREAM)).state.messages == 0
            await nc.close()

    asyncio.run(main())


def test_an_unroutable_letter_is_found_by_its_error_type_and_is_a_system_issue() -> None:
    unroutable = letter(
        3, failures=[], reason="unroutable: no worker imports billing in 300s",
        error_type="naq_resilience:UnroutableJob",
    )  # fmt: skip
    assert DeadLetterFilter(error_type="UnroutableJob").matches(unroutable)
    assert DeadLetterFilter(classification="unroutable").matches(unroutable)
    assert analyze_failure(unroutable) == "system_issue"


def test_bulk_replay_starts_are_spaced_by_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limiter's schedule, on a clock of the test's own: 4 letters a second start
    0.25 s apart, and a limiter that fell behind (a slow letter) does not burst."""
    from naq_resilience.jetstream import deadletters

    clock = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        clock[0] += seconds

    monkeypatch.setattr(deadletters.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(deadletters.asyncio, "sleep", sleep)

    async def main() -> list[float]:
        limiter = deadletters._Rate(4.0)
        starts = []
        for n in range(5):
            if n == 3:
                clock[0] += 2.0  # the third letter took two seconds
            await limiter.wait()
            starts.append(clock[0] - 100.0)
        return starts

    assert asyncio.run(main()) == [0.0, 0.25, 0.5, 2.5, 2.75]
    assert slept == [0.25, 0.25, 0.25]
    with pytest.raises(ValueError, match="rate must be"):
        deadletters._Rate(0)
