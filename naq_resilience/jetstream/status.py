"""The fleet at a glance, for `naq status` and the dashboard: queues with their depth
and jobs in flight, live workers, breakers, dead letters.

Every figure is read from what the server already keeps (each queue's worker consumer,
the stream states, the presence and breaker buckets): a handful of requests whatever
the fleet's size, nothing scanned.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import NotFoundError

from naq_resilience.jetstream import layout
from naq_resilience.jetstream.presence import live_workers
from naq_resilience.jetstream.stores import read_breakers
from naq_resilience.models import BreakerRecord, WorkerInfo

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client

__all__ = ["DeadLetterDepth", "FleetStatus", "QueueStatus", "fleet_status"]

_CONSUMER_PREFIX = layout.worker_consumer("")


class QueueStatus(msgspec.Struct, kw_only=True):
    name: str
    waiting: int
    """Jobs stored and not yet delivered to a worker."""
    in_flight: int
    """Jobs delivered and not yet settled: running, or waiting out a retry's delay (a
    `nak` with a delay keeps the job unacknowledged until it is delivered again)."""
    workers_waiting: int
    """Pull requests waiting for jobs: idle capacity of the workers on this queue."""


class DeadLetterDepth(msgspec.Struct, kw_only=True):
    dead_letter_queue: str
    letters: int


class FleetStatus(msgspec.Struct, kw_only=True):
    at: float
    queues: list[QueueStatus]
    workers: list[WorkerInfo]
    breakers: list[BreakerRecord]
    dead_letters: list[DeadLetterDepth]
    """The default dead-letter queue (`<queue>.dead`) of every queue a worker consumes;
    a dead-letter queue of another name is counted only in `dead_letters_total` (its
    name is known only from its letters, and listing them all is not a glance)."""
    dead_letters_total: int
    scheduled: int
    """Schedule messages waiting to fire."""


async def _queues(client: Client) -> list[QueueStatus]:
    js, _ = await client._ready()
    found = []
    try:
        consumers = await js.consumers_info(layout.JOB_STREAM)
    except NotFoundError:
        return []
    for info in consumers:
        name = info.name or ""
        if not name.startswith(_CONSUMER_PREFIX):
            continue
        found.append(
            QueueStatus(
                name=name.removeprefix(_CONSUMER_PREFIX),
                waiting=info.num_pending or 0,
                in_flight=info.num_ack_pending or 0,
                workers_waiting=info.num_waiting or 0,
            )
        )
    return sorted(found, key=lambda q: q.name)


async def _dead_letters(client: Client, queues: list[str]) -> tuple[list[DeadLetterDepth], int]:
    """Per dead-letter queue: the stream's per-subject counts summed by queue token(s)."""
    js, _ = await client._ready()
    try:
        info = await js.stream_info(layout.DEAD_STREAM)
    except NotFoundError:
        return [], 0
    total = info.state.messages or 0
    depths: dict[str, int] = {layout.dead_letter_queue_for(q): 0 for q in queues}
    if total:
        reader_counts = await asyncio.gather(
            *(client.count_dead_letters(dead_letter_queue=name) for name in depths)
        )
        depths = dict(zip(depths, reader_counts, strict=True))
    found = [DeadLetterDepth(dead_letter_queue=k, letters=v) for k, v in depths.items()]
    return sorted(found, key=lambda d: d.dead_letter_queue), total


async def fleet_status(client: Client) -> FleetStatus:
    js, buckets = await client._ready()
    queues, workers, breakers = await asyncio.gather(
        _queues(client), live_workers(js), read_breakers(buckets.breakers)
    )
    dead, total = await _dead_letters(client, [q.name for q in queues])
    try:
        scheduled = (await js.stream_info(layout.SCHEDULE_STREAM)).state.messages or 0
    except NotFoundError:
        scheduled = 0
    return FleetStatus(
        at=time.time(), queues=queues, workers=workers, breakers=breakers,
        dead_letters=dead, dead_letters_total=total, scheduled=scheduled,
    )  # fmt: skip
