"""`naq demo`: the library at work in under a minute, on a server it starts itself.

Two worker processes run a few hundred jobs through every decorator with chaos
switched on (seeded: two runs fail alike). What the fleet does is shown as it
happens, read from the server like any operator's tool would read it: retries from the
failure records, breaker trips from the shared breaker bucket, fallbacks and
compensations from the workers' log stream, dead letters from their stream. Then the
error rate, the error patterns and the error budget, from the outcome counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from naq_resilience.cli._common import colour, table

__all__ = ["add_demo_command"]

QUEUE = "demo"
JOBS_MODULE = "naq_resilience.ops.demo_jobs"


def add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="watch retries, breakers, fallbacks, compensations and dead letters happen",
        description=(
            "Start a NATS server and two workers, enqueue a few hundred jobs through every "
            "decorator with chaos switched on, show what happens as it happens, then the "
            "error rate, error patterns and error budget. Under a minute."
        ),
    )
    parser.add_argument(
        "--jobs", type=int, default=300, help="how many jobs to enqueue (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes to start (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="the chaos seed: the same seed, the same faults "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--nats-url", default=None,
        help="use this server instead of starting one (default: an embedded server)",
    )  # fmt: skip
    parser.set_defaults(handler=_run)


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from naq_resilience.jetstream.server import EmbeddedServer

    with (
        tempfile.TemporaryDirectory(prefix="naq-demo-") as store,
        EmbeddedServer(host="127.0.0.1", port=None, store_dir=store) as server,
    ):
        yield server.url


@contextlib.contextmanager
def _workers(url: str, count: int, seed: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, "NAQ_CHAOS": "1", "NAQ_CHAOS_SEED": str(seed), "NAQ_NATS_URL": url}
    command = [
        sys.executable, "-m", "naq_resilience.cli", "worker", QUEUE, "--import", JOBS_MODULE,
        "--concurrency", "16", "--log-level", "WARNING", "--shutdown-grace", "5",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _short(function: str) -> str:
    return function.rpartition(":")[2]


class _Feed:
    """What the fleet does, printed as it happens, and counted."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.ended: dict[str, str] = {}
        self.seen: Counter[str] = Counter()
        self._breakers: dict[str, str] = {}

    def say(self, kind: str, text: str, tint: str) -> None:
        self.seen[kind] += 1
        done = len(self.ended)
        print(f"{colour(f'{kind:<12}', tint)} {text}  {colour(f'[{done}/{self.total}]', 'dim')}")

    def failure(self, record: Any) -> None:
        if record.outcome != "retry":
            return
        injected = " (injected by @chaos)" if record.injected else ""
        attempt = f"attempt {record.attempt} of {record.max_attempts}"
        error = record.error_type.rpartition(":")[2]
        self.say("retry", f"{_short(record.function)} {attempt}: {error}{injected}", "yellow")

    def dead(self, letter: Any) -> None:
        function = letter.job.function if letter.job is not None else "?"
        self.say("dead letter", f"{_short(function)}: {letter.reason[:90]}", "red")

    def breaker(self, record: Any) -> None:
        if self._breakers.get(record.name) == record.state:
            return
        self._breakers[record.name] = record.state
        tint = {"open": "red", "half_open": "yellow"}.get(record.state, "green")
        self.say(f"breaker {record.state}", f"{record.name} (shared by every worker)", tint)

    def log(self, record: Any) -> None:
        if record.logger != "naq.demo":
            return
        kind = record.message.split(":", 1)[0]
        self.say(kind, record.message.split(": ", 1)[-1], "green")

    def history(self, record: Any) -> None:
        if record.status in ("completed", "failed") and record.queue == QUEUE:
            self.ended[record.job_id] = record.status


async def _watch(url: str, feed: _Feed) -> Any:
    import msgspec
    import nats

    from naq_resilience.codec import decode
    from naq_resilience.jetstream import layout
    from naq_resilience.models import BreakerRecord, DeadLetter, FailureRecord, JobRecord, LogRecord

    nc = await nats.connect(url)

    def handler(kind: type[Any], show: Any) -> Any:
        async def receive(msg: Any) -> None:
            if not msg.data:
                return
            with contextlib.suppress(msgspec.DecodeError):
                show(decode(msg.data, kind))

        return receive

    await nc.subscribe(f"naq.failures.{QUEUE}.>", cb=handler(FailureRecord, feed.failure))
    await nc.subscribe(layout.DEAD_SUBJECTS, cb=handler(DeadLetter, feed.dead))
    await nc.subscribe(f"$KV.{layout.BREAKER_BUCKET}.>", cb=handler(BreakerRecord, feed.breaker))
    await nc.subscribe("naq.logs.warning.>", cb=handler(LogRecord, feed.log))
    await nc.subscribe(layout.HISTORY_SUBJECTS, cb=handler(JobRecord, feed.history))
    return nc


async def _enqueue(url: str, total: int) -> float:
    """The jobs, a tenth of a second apart in small batches, so the feed reads as a story."""
    from naq_resilience.jetstream.client import Client
    from naq_resilience.ops import demo_jobs as jobs

    started = time.time()
    async with Client(url) as client:
        for n in range(total):
            kind = n % 5
            if kind == 0:
                await client.enqueue(
                    jobs.fetch_rates, ["EUR", "USD", "GBP"][n % 3], queue_name=QUEUE
                )
            elif kind == 1:
                await client.enqueue(jobs.geocode, f"Unter den Linden {n}", queue_name=QUEUE)
            elif kind == 2:
                await client.enqueue(jobs.recommend, n, queue_name=QUEUE)
            elif kind == 3:
                await client.enqueue(jobs.book_trip, f"T{n}", queue_name=QUEUE)
            else:
                await client.enqueue(jobs.import_row, n, queue_name=QUEUE, max_retries=0)
            if n % 10 == 9:
                await asyncio.sleep(0.1)
    return started


async def _summary(url: str, since: float, feed: _Feed) -> str:
    from naq_resilience.cli.errors import _pattern_rows, _percent
    from naq_resilience.jetstream.client import Client

    window = time.time() - since + 5
    async with Client(url) as client:
        await asyncio.sleep(2.0)  # the workers send their counts once a second
        rate = await client.error_rate(window, queue=QUEUE)
        patterns = await client.error_patterns(window, queue=QUEUE, limit=6)
        budget = await client.error_budget(0.99, window)
    lines = [
        "",
        colour("What happened", "bold"),
        f"  {feed.seen['retry']} retries, {feed.seen['breaker open']} breaker trips, "
        f"{feed.seen['fallback']} fallbacks, {feed.seen['compensation']} compensations, "
        f"{feed.seen['dead letter']} dead letters",
        "",
        colour("Error rate", "bold") + f" (naq errors rate --queue {QUEUE})",
        f"  {rate.failed} of {rate.total} jobs failed for good: {_percent(rate.rate)}; "
        f"{rate.retried} attempts were retried and then passed or failed",
    ]
    if patterns:
        lines += ["", colour("Error patterns", "bold") + " (naq errors patterns)"]
        lines += ["  " + row for row in table(_pattern_rows(patterns)).splitlines()]
    state = colour("SPENT", "red") if budget.spent else colour("within budget", "green")
    lines += [
        "",
        colour("Error budget", "bold") + " for a 99% success target (naq errors budget)",
        f"  error rate {_percent(budget.error_rate)} of a {_percent(budget.budget)} budget: "
        f"burn rate {budget.burn_rate:.1f}, {state}",
        "",
        "Next: naq dlq list --queue demo, naq status, naq worker-logs --level WARNING "
        "(with --nats-url to a server of your own, it is all still there).",
    ]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    if args.jobs < 1 or args.workers < 1:
        print("naq demo: --jobs and --workers take a number >= 1", file=sys.stderr)
        return 2
    try:
        with _server(args.nats_url) as url:
            print(f"naq demo: NATS at {url}; {args.workers} workers; chaos seed {args.seed}\n")
            with _workers(url, args.workers, args.seed):
                return asyncio.run(_main(url, args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, not a traceback: a demo that fails says why
        print(f"naq demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _main(url: str, args: argparse.Namespace) -> int:
    feed = _Feed(args.jobs)
    nc = await _watch(url, feed)
    try:
        since = await _enqueue(url, args.jobs)
        for _ in range(250):  # 50 s at most
            if len(feed.ended) >= args.jobs:
                break
            await asyncio.sleep(0.2)
        print(await _summary(url, since, feed))
    finally:
        await nc.close()
    if len(feed.ended) < args.jobs:
        print(
            f"naq demo: {args.jobs - len(feed.ended)} jobs had not ended in time "
            "(a slow machine?): the figures above count those that had",
            file=sys.stderr,
        )
    return 0
