"""naq dashboard under load: every page timed by the server itself.

Fills a fresh nats-server with 100,000 dead letters (bench_dead_letters.fill: three
dead-letter queues, ten functions, four common errors and a rare one) and 1,000,000
recorded job outcomes in the history, starts `naq dashboard` on it, and asks for each
page `--runs` times. The figure is the dashboard's own `Server-Timing: app;dur=` (the
time from the request reaching the app to its response starting), so the client's
own speed does not count. A page PASSes when its median is under 300 ms.

    python benchmarks/bench_dashboard.py [--letters 100000] [--outcomes 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import msgspec  # noqa: E402
import nats  # noqa: E402
from bench_dead_letters import fill  # noqa: E402

from naq_resilience import Client, JobRecord, JobStatus  # noqa: E402
from naq_resilience.jetstream import layout  # noqa: E402
from naq_resilience.jetstream.server import EmbeddedServer  # noqa: E402

import _machine  # noqa: E402
from dashboard_helpers import DashboardProcess, request  # noqa: E402

BUDGET_MS = 300.0


async def fill_history(url: str, count: int) -> None:
    """`count` finished jobs' records, as workers write them (one subject per job)."""
    async with Client(url):  # creates the streams
        pass
    nc = await nats.connect(url)
    js = nc.jetstream()
    encoder = msgspec.json.Encoder()
    now = time.time()
    for start in range(0, count, 1024):
        acks = []
        for n in range(start, min(start + 1024, count)):
            failed = n % 50 == 0
            record = JobRecord(
                job_id=f"h{n:031x}", queue=("billing", "mail", "reports")[n % 3],
                function=f"app.jobs:task_{n % 10}",
                status=JobStatus.FAILED if failed else JobStatus.COMPLETED,
                updated_at=now, enqueued_at=now, started_at=now, finished_at=now, attempts=1,
                error_type="builtins:ValueError" if failed else None,
            )  # fmt: skip
            acks.append(js.publish(layout.history_subject(record.job_id), encoder.encode(record)))
        await asyncio.gather(*acks)
    await nc.close()


def timed(url: str, runs: int) -> tuple[list[float], int]:
    durations = []
    code = 0
    for _ in range(runs + 1):
        code, headers, _ = request(url)
        match = re.search(r"app;dur=([\d.]+)", headers.get("server-timing", ""))
        assert match is not None, f"{url} has no Server-Timing"
        durations.append(float(match[1]))
    return durations[1:], code  # the first warms the dashboard's connection and caches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--letters", type=int, default=100_000)
    parser.add_argument("--outcomes", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    meta = _machine.environment()
    with (
        tempfile.TemporaryDirectory() as store,
        EmbeddedServer(host="127.0.0.1", port=None, store_dir=store) as server,
    ):
        started = time.monotonic()
        asyncio.run(fill(server.url, args.letters))
        asyncio.run(fill_history(server.url, args.outcomes))
        print(f"filled {args.letters} dead letters and {args.outcomes} outcomes in "
              f"{time.monotonic() - started:.0f} s", file=sys.stderr)  # fmt: skip
        board = DashboardProcess(server.url)
        try:
            last = f"{args.letters - 1:032x}"
            _, _, body = request(board.url + "/dead-letters?dead_letter_queue=mail.dead")
            deep = re.search(rb'after=(\d+)', body)
            pages = [
                ("overview", "/"),
                ("dead letters, first page", "/dead-letters"),
                ("dead letters, one queue, second page",
                 "/dead-letters?dead_letter_queue=mail.dead"
                 + (f"&after={deep[1].decode()}" if deep else "")),
                ("dead letters, function filter", "/dead-letters?function=app.jobs:task_3"),
                ("dead letters, rare error (1%)", "/dead-letters?error_type=SecurityError"),
                ("dead letters, text search", "/dead-letters?text=order%2099999"),
                ("dead letter with history", f"/dead-letters/{last}"),
                ("errors, last hour", "/errors?window=1h"),
                ("errors, last day", "/errors?window=24h"),
                ("worker logs", "/logs"),
                ("incidents", "/incidents"),
                ("schedules", "/schedules"),
                ("circuit breakers", "/breakers"),
                ("job page", f"/jobs/h{args.outcomes // 2:031x}"),
                ("API status", "/api/status"),
                ("API dead letters", "/api/dead-letters?limit=100"),
            ]  # fmt: skip
            rows = []
            for name, path in pages:
                durations, code = timed(board.url + path, args.runs)
                median = statistics.median(durations)
                verdict = "PASS" if median < BUDGET_MS and code == 200 else "MISS"
                rows.append((name, path, code, median, max(durations), verdict))
        finally:
            board.close()
    meta["loadavg_end"] = _machine.loadavg()
    print(f"naq dashboard, {args.letters:,} dead letters, {args.outcomes:,} recorded outcomes, "
          f"{args.runs} runs a page; server-side ms (Server-Timing)\n")  # fmt: skip
    print(f"machine: {meta}\n")
    print("| page | path | status | median ms | max ms | under 300 ms |")
    print("|---|---|---|---|---|---|")
    for name, path, code, median, worst, verdict in rows:
        print(f"| {name} | `{path}` | {code} | {median:.1f} | {worst:.1f} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
