"""`list_dead_letters(max_scan=)`: a rare filter's page reads a bounded number of
letters and says where to read on, so a page (the dashboard's) stays quick."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from naq_resilience import Client, DeadLetter, FailureRecord, JobEnvelope
from naq_resilience.jetstream import layout

pytestmark = pytest.mark.usefixtures("clean_jetstream")


def letter(n: int, rare: bool) -> DeadLetter:
    now = time.time()
    error = "builtins:LookupError" if rare else "builtins:ValueError"
    failure = FailureRecord(
        job_id=f"job-{n:04d}", function="app:task", queue="scan", attempt=1, max_attempts=1,
        error_type=error, message="x", classification="non_retryable", outcome="dead",
    )  # fmt: skip
    return DeadLetter(
        reason="non-retryable", queue="scan", dead_letter_queue="scan.dead", dead_at=now,
        failures=[failure],
        job=JobEnvelope(id=f"job-{n:04d}", function="app:task", queue="scan"),
    )  # fmt: skip


def test_a_rare_filter_reads_a_bounded_page_and_reads_on(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            js = client._nc.jetstream()  # type: ignore[union-attr]
            rare = {5, 700, 1190}
            for n in range(1200):
                data = msgspec.json.encode(letter(n, n in rare))
                await js.publish(layout.dead_subject("scan.dead", f"job-{n:04d}"), data)
            found: list[str] = []
            after, pages, stopped = 0, 0, 0
            while True:
                page = await client.list_dead_letters(
                    limit=10, after=after, max_scan=300, error_type="LookupError"
                )
                pages += 1
                assert page.scanned <= 300
                found += [x.id for x in page.letters]
                stopped += page.exhausted
                if page.next_after is None:
                    break
                after = page.next_after
            assert found == ["job-0005", "job-0700", "job-1190"]  # none lost, none twice
            assert stopped >= 2
            assert pages >= 3
            unbounded = await client.list_dead_letters(limit=10, error_type="LookupError")
            assert [x.id for x in unbounded.letters] == found
            assert unbounded.scanned == 1200
            assert not unbounded.exhausted

    asyncio.run(main())
