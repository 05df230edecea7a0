"""The fleet sampled every few seconds, once for every open page.

The overview's numbers and charts, and every live update the pages receive, come from
one `Client.fleet_status()` per tick, whatever the number of open pages: a dashboard
left open on ten screens must not cost the server ten times as much. Throughput is
derived from the workers' own counters (`WorkerInfo.processed` and `.failed`, which
each worker rewrites every few seconds with `seen_at`): the rate between two records
of the same worker, summed over the live workers; the error rate is the last minute's
`Client.error_rate`, read from the outcome counters. Nothing is read from the job
history, so the cost does not grow with the number of recorded outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from naq_resilience.jetstream.analytics import BudgetStatus
    from naq_resilience.jetstream.client import Client
    from naq_resilience.jetstream.status import FleetStatus

__all__ = ["Sample", "Sampler"]

log = logging.getLogger("naq_resilience.dashboard")
_BUDGET_EVERY = 15
"""The day's error budget moves slowly: read it every 15 ticks (30 s by default)."""


class Sample(msgspec.Struct, kw_only=True):
    """The fleet at one tick, as the charts draw it."""

    at: float
    """Unix time of the tick."""
    completed_per_second: float
    """Jobs completed per second, summed over the live workers."""
    failed_per_second: float
    """Failed attempts per second, summed over the live workers."""
    waiting: int
    """Jobs waiting in every queue."""
    in_flight: int
    """Jobs held by workers in every queue."""
    workers: int
    """Live workers."""
    dead_letters: int
    """Dead letters in every dead-letter queue."""
    error_rate: float | None = None
    """Jobs failed for good over jobs ended in the last minute (`Client.error_rate`),
    from the workers' outcome counters; None when they could not be read."""


class _Seen(msgspec.Struct):
    seen_at: float
    processed: int
    failed: int
    completed_rate: float = 0.0
    failed_rate: float = 0.0


class Sampler:
    """Reads the fleet every `every` seconds and keeps the last `keep` samples.

    `wait(after)` lets any number of live pages wake on the next tick together.
    """

    def __init__(self, client: Client, every: float = 2.0, keep: int = 450) -> None:
        self.client = client
        self.every = every
        self.samples: deque[Sample] = deque(maxlen=keep)
        self.latest: FleetStatus | None = None
        self.error: str | None = None
        """Why the last tick failed (the server unreachable...), shown on every page."""
        self.ticks = 0
        self.budget: BudgetStatus | None = None
        """`Client.error_budget(0.999, 1 day)`, read every `_BUDGET_EVERY` ticks."""
        self._seen: dict[str, _Seen] = {}
        self._tick = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="naq-dashboard-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def status(self) -> FleetStatus:
        """The freshest fleet status: the last tick's if it is recent, else read now."""
        latest = self.latest
        if latest is not None and time.time() - latest.at < self.every * 1.5:
            return latest
        return await self.sample()

    async def wait(self, after: int, timeout: float = 15.0) -> int:
        """Wait for a tick later than `after` (or `timeout`); the tick's number."""
        async with self._tick:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._tick.wait_for(lambda: self.ticks > after), timeout
                )
            return self.ticks

    async def sample(self) -> FleetStatus:
        status = await self.client.fleet_status()
        rate = await self._error_rate()
        if self.ticks % _BUDGET_EVERY == 0:
            with contextlib.suppress(Exception):
                self.budget = await self.client.error_budget(0.999, 86400.0)
        self._record(status, rate)
        async with self._tick:
            self.ticks += 1
            self._tick.notify_all()
        return status

    async def _error_rate(self) -> float | None:
        """The last minute's error rate; None when the counters cannot be read (the
        chart shows a gap rather than the page failing)."""
        try:
            found = await self.client.error_rate(60.0)
        except Exception as exc:
            log.debug("naq dashboard: error_rate failed: %s", exc)
            return None
        return found.rate

    def _record(self, status: FleetStatus, error_rate: float | None = None) -> None:
        completed = failed = 0.0
        seen: dict[str, _Seen] = {}
        for worker in status.workers:
            before = self._seen.get(worker.worker_id)
            now = _Seen(worker.seen_at, worker.processed, worker.failed)
            if before is not None:
                span = worker.seen_at - before.seen_at
                if span <= 0:  # the same record as last tick: the rate holds
                    now = before
                elif worker.processed >= before.processed and worker.failed >= before.failed:
                    now.completed_rate = (worker.processed - before.processed) / span
                    now.failed_rate = (worker.failed - before.failed) / span
            seen[worker.worker_id] = now
            completed += now.completed_rate
            failed += now.failed_rate
        self._seen = seen
        self.latest = status
        self.samples.append(
            Sample(
                at=status.at,
                completed_per_second=round(completed, 3),
                failed_per_second=round(failed, 3),
                waiting=sum(q.waiting for q in status.queues),
                in_flight=sum(q.in_flight for q in status.queues),
                workers=len(status.workers),
                dead_letters=status.dead_letters_total,
                error_rate=error_rate,
            )
        )

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
                self.error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the page says it; the next tick tries again
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("naq dashboard: reading the fleet failed: %s", self.error)
            await asyncio.sleep(self.every)
