"""Error analytics on a busy fleet: an error rate and a day's error patterns out of
1,000,000 job outcomes, read from the workers' counters, next to the guide's way of
scanning the job history.

What is measured, on a nats-server this script starts (JetStream, file storage in a
fresh temporary directory):

* 1,000,000 outcomes (`--outcomes`) are recorded as workers record them: an
  `OutcomeRecorder`, the worker's own observer, is fed the job records and failure
  records of a fleet spread evenly over the last 24 hours (`--hours`): 4 queues, 20
  functions, 12 error patterns; 2% of the jobs fail for good, 5% fail one attempt and
  complete on the retry. It sends its counts every 10 simulated minutes instead of
  every second: what the counter streams hold in the end is the same (each counter
  keeps its running total), only the number of increments differs.
* `error_rate` over an hour (every queue, one queue, one function), over 24 hours,
  `error_patterns` over 24 hours (with its trend, which reads the 24 hours before too)
  and `error_budget(0.999)` over 24 hours with its four burn-rate windows, each timed
  from the call to the answer on a connected `Client`: the median of `--runs` calls
  after one unrecorded call, and the median CPU time this process spent on one (on a
  loaded machine the first waits for a CPU, the second does not; the server's CPU is
  in neither).
* **The naive way**, as NAQ's guide monitors errors: `get_jobs_in_timeframe(hours=1)`
  read whole and its failed records counted. The history holds as many job records as
  the fleet ends in an hour (1,000,000 / 24 = 41,667; `--naive-jobs`), written into
  `NAQ_HISTORY` as workers write them. The guide's day of patterns would read 24 times
  as many; that figure is extrapolated from the measured cost per record, and says so.

Printed as a Markdown table. No timing is asserted: it prints PASS or MISS against the
targets (`error_rate` over an hour and `error_patterns` over 24 hours each under 100 ms).

    python benchmarks/bench_monitoring.py [--outcomes 1000000] [--hours 24] [--runs 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from naq_resilience import Client, FailureRecord, JobRecord, JobStatus  # noqa: E402
from naq_resilience.jetstream import layout  # noqa: E402
from naq_resilience.jetstream.connection import ConnectionSettings, connect  # noqa: E402
from naq_resilience.jetstream.outcomes import OutcomeRecorder, fingerprint_of  # noqa: E402
from naq_resilience.jetstream.publisher import Publisher  # noqa: E402
from naq_resilience.jetstream.server import EmbeddedServer  # noqa: E402
from naq_resilience.jetstream.streams import ensure_layout  # noqa: E402

import _machine  # noqa: E402

QUEUES = ["billing", "mail", "reports", "default"]
FUNCTIONS = [f"app.{queue}:task_{n}" for queue in QUEUES for n in range(5)]
PATTERNS = [
    (error_type, f"app/{module}.py:{function}")
    for error_type, module, function in [
        ("builtins:ConnectionError", "billing", "charge"),
        ("builtins:ConnectionError", "mail", "send"),
        ("builtins:TimeoutError", "billing", "charge"),
        ("builtins:TimeoutError", "reports", "render"),
        ("builtins:ValueError", "billing", "parse_amount"),
        ("builtins:ValueError", "reports", "parse_row"),
        ("builtins:KeyError", "mail", "template"),
        ("builtins:KeyError", "default", "lookup"),
        ("naq_resilience:RateLimitError", "mail", "send"),
        ("naq_resilience:DataValidationError", "default", "validate"),
        ("builtins:PermissionError", "reports", "upload"),
        ("naq_resilience:SecurityError", "billing", "verify"),
    ]
]
SEND_EVERY = 600.0
"""Simulated seconds between two sends of the recorder's counts (a worker: 1)."""
TARGET_MS = 100.0


# --------------------------------------------------------------------------- writing


def _failure(
    job_id: str, at: float, function: str, queue: str, n: int, dead: bool
) -> FailureRecord:
    error_type, where = PATTERNS[n % len(PATTERNS)]
    return FailureRecord(
        job_id=job_id, function=function, queue=queue, attempt=1, max_attempts=2,
        error_type=error_type, message=f"{error_type.rpartition(':')[2]} in job {job_id}",
        classification="retryable", outcome="dead" if dead else "retry", failed_at=at,
        where=where, fingerprint=fingerprint_of(error_type, where),
    )  # fmt: skip


async def record_fleet(url: str, outcomes: int, hours: float) -> dict[str, int]:
    """Feed a fleet's outcomes, oldest first, to a worker's recorder; what was counted."""
    nc = await connect(ConnectionSettings(url=url))
    await ensure_layout(nc.jetstream())
    publisher = Publisher(nc, ack_timeout=60.0)
    await publisher.start()
    recorder = OutcomeRecorder(interval=3600.0)  # sent below, every 10 simulated minutes
    await recorder.start(publisher)
    now = time.time()
    start = now - hours * 3600
    step = hours * 3600 / outcomes
    next_send = start + SEND_EVERY
    counted = {"completed": 0, "failed": 0, "retried": 0}
    rng = random.Random(8)  # failures spread over queues, functions and patterns
    for n in range(outcomes):
        at = start + (n + 0.5) * step
        if at >= next_send:
            await recorder.flush()
            next_send += SEND_EVERY
        queue = QUEUES[n % 4]
        function = FUNCTIONS[(n % 4) * 5 + (n // 4) % 5]
        job_id = f"{n:032x}"
        roll = rng.random()
        if roll < 0.05:  # one failed attempt, then a retry that completes
            pattern = rng.randrange(len(PATTERNS))
            recorder.attempt_failed(_failure(job_id, at - 1, function, queue, pattern, False))
            recorder.job_changed(_record(job_id, queue, function, JobStatus.RETRYING, at - 1))
            counted["retried"] += 1
        if 0.05 <= roll < 0.07:  # failed for good
            pattern = rng.randrange(len(PATTERNS))
            recorder.attempt_failed(_failure(job_id, at, function, queue, pattern, True))
            recorder.job_changed(_record(job_id, queue, function, JobStatus.FAILED, at))
            counted["failed"] += 1
        else:
            recorder.job_changed(_record(job_id, queue, function, JobStatus.COMPLETED, at))
            counted["completed"] += 1
    await recorder.stop()
    assert recorder.lost == 0, f"{recorder.lost} counter writes failed"
    await publisher.close()
    await nc.close()
    return counted


def _record(job_id: str, queue: str, function: str, status: JobStatus, at: float) -> JobRecord:
    dead = f"{queue}.dead" if status is JobStatus.FAILED else None
    return JobRecord(
        job_id=job_id, queue=queue, function=function, status=status, updated_at=at,
        started_at=at - 0.05, dead_letter_queue=dead,
    )  # fmt: skip


async def write_history(url: str, count: int) -> None:
    """`count` job records in `NAQ_HISTORY`, 2% failed, as the worker writes them."""
    nc = await connect(ConnectionSettings(url=url))
    publisher = Publisher(nc, ack_timeout=60.0)
    await publisher.start()
    encode = msgspec.json.Encoder().encode
    now = time.time()
    for first in range(0, count, 1000):
        acks = []
        for n in range(first, min(first + 1000, count)):
            status = JobStatus.FAILED if n % 50 == 0 else JobStatus.COMPLETED
            record = _record(f"h{n:031x}", QUEUES[n % 4], FUNCTIONS[n % 20], status, now)
            if status is JobStatus.FAILED:
                record = msgspec.structs.replace(record, error_type=PATTERNS[n % 12][0])
            acks.append(
                await publisher.publish(layout.history_subject(record.job_id), encode(record))
            )
        await asyncio.gather(*acks)
    await publisher.close()
    await nc.close()


# --------------------------------------------------------------------------- reading


async def timed(
    call: Callable[[], Awaitable[Any]], runs: int, cpu: list[float] | None = None
) -> tuple[float, Any]:
    """Median seconds of `runs` calls after one unrecorded call; the last result. The
    median of this process's CPU seconds per call is appended to `cpu`: on a loaded
    machine the wall time waits for the CPU, the CPU time does not."""
    result = await call()
    times, used = [], []
    for _ in range(runs):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = await call()
        times.append(time.perf_counter() - started)
        used.append(time.process_time() - cpu_started)
    if cpu is not None:
        cpu.append(statistics.median(used))
    return statistics.median(times), result


async def naive_rate(client: Client) -> tuple[int, int]:
    """The guide's `monitor_error_rates`: every job of the hour read, the failed counted."""
    window = await client.get_jobs_in_timeframe(hours=1)
    total = failed = 0
    async for record in window:
        total += 1
        failed += record.status == JobStatus.FAILED
    return total, failed


async def measure(
    url: str, outcomes: int, hours: float, runs: int, naive_jobs: int
) -> dict[str, Any]:
    started = time.perf_counter()
    counted = await record_fleet(url, outcomes, hours)
    out: dict[str, Any] = {
        "outcomes": outcomes, "hours": hours, "counted": counted,
        "record_seconds": time.perf_counter() - started, "reads": [],
    }  # fmt: skip
    cases: list[tuple[str, Callable[[Client], Awaitable[Any]]]] = [
        ("error_rate(1h)", lambda c: c.error_rate(3600)),
        ("error_rate(1h, queue=)", lambda c: c.error_rate(3600, queue="billing")),
        ("error_rate(1h, function=)", lambda c: c.error_rate(3600, function=FUNCTIONS[7])),
        ("error_rate(24h)", lambda c: c.error_rate(86400)),
        ("error_patterns(24h)", lambda c: c.error_patterns(86400)),
        ("error_budget(0.999, 24h)", lambda c: c.error_budget(0.999, 86400)),
    ]
    async with Client(url) as client:
        await client.error_rate(60)  # the streams' retention, read once per client
        for name, call in cases:
            cpu: list[float] = []
            seconds, result = await timed(lambda call=call: call(client), runs, cpu)
            out["reads"].append({
                "case": name, "ms": seconds * 1e3, "cpu_ms": cpu[0] * 1e3,
                "answer": _summary(result),
            })  # fmt: skip
        await write_history(url, naive_jobs)
        seconds, (total, failed) = await timed(lambda: naive_rate(client), max(1, runs // 2))
        assert total >= naive_jobs, (total, naive_jobs)
        out["naive"] = {"jobs": total, "failed": failed, "ms": seconds * 1e3}
    return out


def _summary(result: Any) -> str:
    if isinstance(result, list):
        return (
            f"{len(result)} patterns, top {result[0].count:,} ({result[0].share:.0%})"
            if result
            else "none"
        )
    if hasattr(result, "remaining"):
        return (
            f"{result.failed:,}/{result.total:,} failed, {result.remaining:.0%} of the budget left"
        )
    covers = (result.until - result.since) / 60
    return f"{result.failed:,}/{result.total:,} failed ({result.rate:.2%}), {covers:.0f} min read"


def report(result: dict[str, Any], meta: dict[str, Any]) -> str:
    counted = result["counted"]
    reads = {row["case"]: row for row in result["reads"]}
    naive = result["naive"]
    per_record_us = naive["ms"] * 1e3 / max(naive["jobs"], 1)
    day_records = result["outcomes"] * min(24.0, result["hours"]) / result["hours"]
    naive_day_ms = per_record_us * day_records / 1e3
    lines = [
        f"{result['outcomes']:,} outcomes over {result['hours']:g}h ({counted['completed']:,} "
        f"completed, {counted['failed']:,} failed, {counted['retried']:,} retried), recorded in "
        f"{result['record_seconds']:.1f}s; {meta['cpu']}, {meta['usable_cores']} cores, Python "
        f"{meta['python']}; load {meta['loadavg_start']} -> {meta['loadavg_end']}",
        "",
        "| read | naq-resilience ms | client CPU ms | answer |",
        "|---|---:|---:|---|",
    ]
    for row in result["reads"]:
        ms, cpu = f"{row['ms']:.1f}", f"{row['cpu_ms']:.1f}"
        lines.append(f"| {row['case']} | {ms} | {cpu} | {row['answer']} |")
    rate_ms = reads["error_rate(1h)"]["ms"]
    patterns_ms = reads["error_patterns(24h)"]["ms"]
    lines += [
        "",
        "| the naive way (the guide's) | records read | ms | naive / counters |",
        "|---|---:|---:|---:|",
        f"| error rate over 1h: get_jobs_in_timeframe(hours=1), read whole | "
        f"{naive['jobs']:,} | {naive['ms']:.0f} | {naive['ms'] / rate_ms:.0f}x |",
        f"| patterns over 24h: the same scan of a day (extrapolated, "
        f"{per_record_us:.1f} us a record) | {day_records:,.0f} | {naive_day_ms:,.0f} | "
        f"{naive_day_ms / patterns_ms:.0f}x |",
        "",
        f"target: error_rate over an hour under {TARGET_MS:.0f} ms: "
        f"{'PASS' if rate_ms < TARGET_MS else 'MISS'} ({rate_ms:.1f} ms)",
        f"target: error_patterns over 24 hours under {TARGET_MS:.0f} ms: "
        f"{'PASS' if patterns_ms < TARGET_MS else 'MISS'} ({patterns_ms:.1f} ms)",
        *_machine.load_warning(meta),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outcomes", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=24.0, help="spread over (<= 190)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--naive-jobs", type=int, default=None,
        help="history records for the naive scan (default: the outcomes of one hour)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    naive_jobs = args.naive_jobs or max(1, round(args.outcomes / args.hours))
    meta = _machine.environment()
    with (
        tempfile.TemporaryDirectory() as store,
        EmbeddedServer(host="127.0.0.1", port=None, store_dir=store) as server,
    ):
        result = asyncio.run(measure(server.url, args.outcomes, args.hours, args.runs, naive_jobs))
    meta["loadavg_end"] = _machine.loadavg()
    print(report(result, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "result": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
