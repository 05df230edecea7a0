"""Dead letters, as NAQ's error-handling guide handles them, in plain synchronous code.

    python examples/dead_letter_handling.py

Three jobs fail for good, each for a different reason, and land in the dead-letter
queue `failed_jobs` (kept 7 days). The guide's `process_dead_letter_queue()` then runs
as the guide writes it, with its helpers made real:

- a transient error (the rates API was down) is replayed with more retries;
- a data issue (a malformed row) is written to review.jsonl for a person;
- a system issue (rejected credentials) is replayed later, on a schedule the server
  keeps (the guide waits an hour; this example waits two seconds).

Uses NAQ_NATS_URL when a server answers there, else an embedded server. The same
operations are `naq dlq list|show|replay|reschedule|archive|discard` on the command line.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

import msgspec

from naq_resilience import (
    AuthenticationError,
    DeadLetter,
    Worker,
    analyze_failure,
    configured_or_embedded,
    discard_dead_letters,
    enqueue_sync,
    get_dead_letter_jobs,
    get_job,
    replay_dead_letter,
    reschedule_dead_letter,
)

logger = logging.getLogger("dead_letter_handling")
REVIEW = Path(__file__).with_name("review.jsonl")
_rates_calls = 0
_credentials_fixed = threading.Event()


# --------------------------------------------------------------------------- the jobs


def fetch_rates(currency: str) -> str:
    """The rates API is down for the first three calls."""
    global _rates_calls
    _rates_calls += 1
    if _rates_calls <= 3:
        raise ConnectionError("rates.example.com refused the connection")
    return f"{currency}: 1.0842"


def import_row(row: dict[str, str]) -> str:
    if "@" not in row["email"]:
        raise ValueError(f"row {row['id']}: {row['email']!r} is not an email address")
    return f"imported {row['id']}"


def charge(customer: str, cents: int) -> str:
    if not _credentials_fixed.is_set():
        raise AuthenticationError("payment gateway rejected the API key")
    return f"charged {customer} {cents} cents"


JOBS = [fetch_rates, import_row, charge]


# --------------------------------------------------------------------------- the guide's helpers


def retry_job_with_modifications(job: DeadLetter) -> None:
    new = replay_dead_letter(job, max_retries=5, retry_delay=0.1)
    print(f"  transient error: replayed {job.id} as {new.job_id} with max_retries=5")


def send_for_manual_review(job: DeadLetter) -> None:
    with REVIEW.open("ab") as review:
        review.write(msgspec.json.encode(job) + b"\n")
    discard_dead_letters([job.id])
    print(f"  data issue: {job.id} written to {REVIEW.name} for a person, and discarded")


def reschedule_after_delay(job: DeadLetter, delay: timedelta) -> None:
    new = reschedule_dead_letter(job, delay=delay)
    print(f"  system issue: {job.id} replayed in {delay.total_seconds():g}s as {new.job_id}")


def archive_failed_job(job: DeadLetter) -> None:
    with REVIEW.with_name("archive.jsonl").open("ab") as archive:
        archive.write(msgspec.json.encode(job) + b"\n")
    discard_dead_letters([job.id])
    print(f"  unknown: {job.id} archived")


# --------------------------------------------------------------------------- the guide's loop


def process_dead_letter_queue() -> None:
    """Process jobs from dead letter queue."""

    failed_jobs = get_dead_letter_jobs("failed_jobs")

    for job in failed_jobs:
        try:
            # Analyze failure reason
            failure_reason = analyze_failure(job)

            if failure_reason == "transient_error":
                # Retry with modified parameters
                retry_job_with_modifications(job)

            elif failure_reason == "data_issue":
                # Send for manual review
                send_for_manual_review(job)

            elif failure_reason == "system_issue":
                # Wait for system recovery (the guide: timedelta(hours=1))
                reschedule_after_delay(job, delay=timedelta(seconds=2))

            else:
                # Permanent failure - archive
                archive_failed_job(job)

        except Exception as e:
            logger.error(f"Error processing dead letter job {job.id}: {e}")


# --------------------------------------------------------------------------- running it


def wait_for(job_id: str, status: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        record = get_job(job_id)
        if record is not None and record.status == status:
            return
        time.sleep(0.05)
    raise SystemExit(f"job {job_id} did not reach {status!r} within {seconds:g}s")


def main() -> None:
    REVIEW.unlink(missing_ok=True)
    with configured_or_embedded() as url, Worker(
        ["default"], nats_url=url, functions=JOBS, concurrency=4
    ).running():
        import os

        os.environ["NAQ_NATS_URL"] = url
        dead = timedelta(days=7)
        jobs = [
            enqueue_sync(fetch_rates, "EUR", max_retries=1, retry_delay=0.1,
                         dead_letter_queue="failed_jobs", dead_letter_ttl=dead),
            enqueue_sync(import_row, {"id": "17", "email": "ada.example.com"},
                         dead_letter_queue="failed_jobs", dead_letter_ttl=dead),
            enqueue_sync(charge, "cus_42", 1999, max_retries=0,
                         dead_letter_queue="failed_jobs", dead_letter_ttl=dead),
        ]  # fmt: skip
        for job in jobs:
            wait_for(job.job_id, "failed")
        print("three jobs failed for good; the dead-letter queue says why:")
        for letter in get_dead_letter_jobs("failed_jobs"):
            print(f"  {letter.id} {letter.job.function if letter.job else '?'}: {letter.reason}")

        print("process_dead_letter_queue(), as the guide writes it:")
        process_dead_letter_queue()
        _credentials_fixed.set()  # the system issue is fixed before the replay runs

        for letter in get_dead_letter_jobs("failed_jobs"):
            for replay in letter.replays:
                wait_for(replay.job_id, "completed")
                record = get_job(replay.job_id)
                assert record is not None
                print(f"  {replay.job_id} completed (replay of {record.replay_of})")
        left = [(x.id, len(x.replays)) for x in get_dead_letter_jobs("failed_jobs")]
        print(f"left in failed_jobs, each marked replayed: {left}")
        print(f"{REVIEW.name} holds {len(REVIEW.read_text().splitlines())} letter for review")
    REVIEW.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
