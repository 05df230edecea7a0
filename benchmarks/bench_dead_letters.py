"""Dead-letter operations at scale: a filtered page out of 100,000 letters, and a bulk
replay of 10,000, next to the same work written plainly with nats-py in the same run.

What is measured, on a nats-server this script starts (JetStream, file storage in a
fresh temporary directory):

* 100,000 dead letters are written on their subjects as a worker writes them: each a
  `DeadLetter` with its job and one `FailureRecord` with a 12-line traceback (about
  1.6 KB), spread over 3 dead-letter queues, 10 functions and 5 error types, one of
  which is rare (1 letter in 100).
* *first page*: `Client.list_dead_letters(limit=50, ...)` with no filter, with each
  filter an operator uses (a dead-letter queue, an error type, a function and error
  type together, the rare error, a text), timed from the call to the page in hand.
  Beside it, **raw nats-py**: the same page as a script would get it with nats-py's
  documented API: an ordered consumer on the subjects (`js.subscribe(...,
  ordered_consumer=True)`), `next_msg()` and a decode per letter until 50 match.
* *count*: `count_dead_letters` with only a dead-letter queue (one request) and with an
  error type (reads the letters).
* *bulk replay*: `replay_dead_letters(dead_letter_queue=..., rate=None)` of 10,000
  letters: each becomes a stored job, linked to its letter, and the letter is rewritten
  with its replay; letters per second. Beside it, **raw nats-py**: the same two
  publishes per letter with `publish_async` (no history check, no guard against a
  second replayer, no link), the least any replay can do.

Statistic: the median of 7 runs for pages and counts (the first run of each is
dropped: it creates the server's per-subject state), one run for the replays (each
replay changes what it ran over). Printed as a Markdown table with the ratio
raw/naq-resilience (above 1: ours is faster). No timing is asserted: it prints PASS or
MISS against the targets (a first filtered page in under 100 ms, a bulk replay at 2,000
letters a second or more).

    python benchmarks/bench_dead_letters.py [--letters 100000] [--replay 10000] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
import nats  # noqa: E402

from naq_resilience import Client, DeadLetter, FailureRecord, JobEnvelope  # noqa: E402
from naq_resilience.jetstream import layout  # noqa: E402
from naq_resilience.jetstream.deadletters import DeadLetterFilter  # noqa: E402
from naq_resilience.jetstream.server import EmbeddedServer  # noqa: E402

import _machine  # noqa: E402

DLQS = ["billing.dead", "mail.dead", "reports.dead"]
ERRORS = [
    ("builtins:ConnectionError", "retryable", "connection refused by upstream"),
    ("builtins:TimeoutError", "retryable", "read timed out after 30s"),
    ("builtins:ValueError", "non_retryable", "amount must be positive"),
    ("builtins:KeyError", "non_retryable", "'customer_id'"),
]
RARE = ("naq_resilience:SecurityError", "critical", "signature mismatch on payload")
TRACEBACK = "".join(
    f'  File "/srv/app/billing/jobs.py", line {100 + i}, in step_{i}\n'
    f"    result = call_{i}(payload)\n"
    for i in range(12)
)


def make_letter(n: int) -> DeadLetter:
    error_type, classification, message = RARE if n % 100 == 99 else ERRORS[n % 4]
    dlq = DLQS[n % 3]
    queue = dlq.removesuffix(".dead")
    function = f"app.jobs:task_{n % 10}"
    job_id = f"{n:032x}"
    now = time.time()
    failure = FailureRecord(
        job_id=job_id, function=function, queue=queue, attempt=4, max_attempts=4,
        error_type=error_type, message=f"{message} (order {n})",
        traceback=f"Traceback (most recent call last):\n{TRACEBACK}{error_type}: {message}\n",
        classification=classification, outcome="dead", worker_id=f"host-1:{1000 + n % 7}:ab12",
        host="host-1", pid=1000 + n % 7, started_at=now, failed_at=now, duration=0.01,
    )  # fmt: skip
    return DeadLetter(
        reason=f"out of attempts (4 of 4): {error_type}", queue=queue, dead_letter_queue=dlq,
        dead_at=now, failures=[failure],
        job=JobEnvelope(
            id=job_id, function=function, queue=queue, args=[n, {"order": n, "cents": 1999}],
            enqueued_at=now, max_retries=3,
        ),
    )  # fmt: skip


async def fill(url: str, count: int, dlq_of: Callable[[int], str] | None = None) -> int:
    """Write `count` letters (pipelined, 512 in flight); their mean size in bytes."""
    async with Client(url):  # creates the streams
        pass
    nc = await nats.connect(url)
    js = nc.jetstream()
    encoder = msgspec.json.Encoder()
    size = 0
    for start in range(0, count, 512):
        acks = []
        for n in range(start, min(start + 512, count)):
            letter = make_letter(n)
            if dlq_of is not None:
                letter = msgspec.structs.replace(letter, dead_letter_queue=dlq_of(n))
            payload = encoder.encode(letter)
            size += len(payload)
            acks.append(
                js.publish(layout.dead_subject(letter.dead_letter_queue, letter.id), payload)
            )
        await asyncio.gather(*acks)
    await nc.close()
    return size // max(count, 1)


async def raw_first_page(url: str, subject: str, flt: DeadLetterFilter, limit: int) -> int:
    nc = await nats.connect(url)
    js = nc.jetstream()
    decoder = msgspec.json.Decoder(DeadLetter)
    found = 0
    sub = await js.subscribe(subject, ordered_consumer=True, stream=layout.DEAD_STREAM)
    try:
        while found < limit:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                break
            if flt.matches(decoder.decode(msg.data)):
                found += 1
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
        await nc.close()
    return found


async def timed(call: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, Any]:
    """Median seconds of `runs` calls after one unrecorded call; the last result."""
    result = await call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


async def measure(url: str, letters: int, replay: int, runs: int) -> dict[str, Any]:
    size = await fill(url, letters)
    out: dict[str, Any] = {"letters": letters, "letter_bytes": size, "pages": [], "counts": []}
    cases = [
        ("no filter", {}),
        ("dead-letter queue", {"dead_letter_queue": "mail.dead"}),
        ("error type (1 in 4)", {"error_type": "ValueError"}),
        ("function + error type (1 in 20)",
         {"function": "app.jobs:task_3", "error_type": "KeyError"}),
        ("rare error (1 in 100)", {"error_type": "SecurityError"}),
        ("text in the message", {"text": "order 777"}),
    ]  # fmt: skip
    async with Client(url) as client:
        for name, given in cases:
            flt = DeadLetterFilter(**given)
            ours, page = await timed(lambda flt=flt: client.list_dead_letters(flt, limit=50), runs)
            subject = layout.DEAD_SUBJECTS
            if flt.dead_letter_queue:
                subject = f"naq.dead.{flt.dead_letter_queue}.*"
            raw, found = await timed(
                lambda flt=flt, subject=subject: raw_first_page(url, subject, flt, 50), runs
            )
            assert found == len(page.letters), (name, found, len(page.letters))
            out["pages"].append({
                "case": name, "naq_ms": ours * 1e3, "raw_ms": raw * 1e3,
                "letters": len(page.letters), "scanned": page.scanned,
            })  # fmt: skip
        for name, given in [("dead-letter queue", {"dead_letter_queue": "billing.dead"}),
                            ("error type", {"error_type": "ValueError"})]:  # fmt: skip
            flt = DeadLetterFilter(**given)
            seconds, total = await timed(lambda flt=flt: client.count_dead_letters(flt), 3)
            out["counts"].append({"case": name, "naq_ms": seconds * 1e3, "count": total})

    # Bulk replay: its own dead-letter queue of `replay` letters beside the 100,000.
    await fill_replay(url, replay, "replay.dead")
    await fill_replay(url, replay, "rawreplay.dead")
    async with Client(url) as client:
        started = time.perf_counter()
        report = await client.replay_dead_letters(dead_letter_queue="replay.dead", rate=None)
        ours = time.perf_counter() - started
        assert len(report.replayed) == replay, (len(report.replayed), report.skipped[:3])
    raw = await raw_replay(url, "rawreplay.dead", replay)
    out["replay"] = {
        "letters": replay, "naq_per_s": replay / ours, "raw_per_s": replay / raw,
    }  # fmt: skip
    return out


async def fill_replay(url: str, count: int, dlq: str) -> None:
    offset = 10_000_000 if dlq.startswith("raw") else 20_000_000
    nc = await nats.connect(url)
    js = nc.jetstream()
    encoder = msgspec.json.Encoder()
    for start in range(0, count, 512):
        acks = []
        for n in range(start, min(start + 512, count)):
            letter = make_letter(offset + n)
            letter = msgspec.structs.replace(letter, dead_letter_queue=dlq)
            acks.append(js.publish(layout.dead_subject(dlq, letter.id), encoder.encode(letter)))
        await asyncio.gather(*acks)
    await nc.close()


async def raw_replay(url: str, dlq: str, count: int) -> float:
    """Read the letters, publish each one's job and rewrite the letter, with publish_async."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    decoder = msgspec.json.Decoder(DeadLetter)
    encoder = msgspec.json.Encoder()
    started = time.perf_counter()
    sub = await js.subscribe(f"naq.dead.{dlq}.*", ordered_consumer=True, stream=layout.DEAD_STREAM)
    done = 0
    while done < count:
        msg = await sub.next_msg(timeout=5.0)
        letter = decoder.decode(msg.data)
        assert letter.job is not None
        job = msgspec.structs.replace(letter.job, id=f"{letter.id}-r", replay_of=letter.id)
        await js.publish_async(layout.job_subject(job.queue), encoder.encode(job))
        await js.publish_async(msg.subject, encoder.encode(letter))
        done += 1
    await js.publish_async_completed()
    seconds = time.perf_counter() - started
    await sub.unsubscribe()
    await nc.close()
    return seconds


def report(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"{result['letters']:,} dead letters of {result['letter_bytes']:,} bytes each; "
        f"{meta['cpu']}, {meta['usable_cores']} cores, Python {meta['python']}; "
        f"load {meta['loadavg_start']} -> {meta['loadavg_end']}",
        "",
        "| first page of 50 | naq-resilience ms | raw nats-py ms | raw / ours | letters read |",
        "|---|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for row in result["pages"]:
        worst = max(worst, row["naq_ms"])
        lines.append(
            f"| {row['case']} | {row['naq_ms']:.1f} | {row['raw_ms']:.1f} | "
            f"{row['raw_ms'] / row['naq_ms']:.1f} | {row['scanned']:,} |"
        )
    lines += ["", "| count | naq-resilience ms | count |", "|---|---:|---:|"]
    for row in result["counts"]:
        lines.append(f"| {row['case']} | {row['naq_ms']:.1f} | {row['count']:,} |")
    replay = result["replay"]
    lines += [
        "",
        "| bulk replay | letters | naq-resilience letters/s | raw nats-py letters/s | ours / raw |",
        "|---|---:|---:|---:|---:|",
        f"| every letter of one dead-letter queue, rate=None | {replay['letters']:,} | "
        f"{replay['naq_per_s']:,.0f} | {replay['raw_per_s']:,.0f} | "
        f"{replay['naq_per_s'] / replay['raw_per_s']:.2f} |",
        "",
        f"target: every first page under 100 ms: {'PASS' if worst < 100 else 'MISS'} "
        f"(slowest {worst:.1f} ms)",
        f"target: bulk replay at 2,000 letters/s or more: "
        f"{'PASS' if replay['naq_per_s'] >= 2000 else 'MISS'} ({replay['naq_per_s']:,.0f}/s)",
        *_machine.load_warning(meta),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--letters", type=int, default=100_000)
    parser.add_argument("--replay", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    meta = _machine.environment()
    with (
        tempfile.TemporaryDirectory() as store,
        EmbeddedServer(host="127.0.0.1", port=None, store_dir=store) as server,
    ):
        result = asyncio.run(measure(server.url, args.letters, args.replay, args.runs))
    meta["loadavg_end"] = _machine.loadavg()
    print(report(result, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "result": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
