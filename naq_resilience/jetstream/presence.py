"""Which workers are alive: each writes a `WorkerInfo` under its id every few seconds
in the `naq-workers` bucket, whose entries expire `WORKER_TTL` after the last write.

A worker that stops deletes its entry; one that dies leaves it to expire, so `naq
status` may show a dead worker for up to 30 s, never a live one as gone. The record
is written from the event loop: a loop blocked for longer than the TTL (a job holding
it) makes its worker disappear from the list, which is worth seeing too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import msgspec
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from naq_resilience.codec import decode
from naq_resilience.jetstream import layout
from naq_resilience.models import WorkerInfo

__all__ = ["EVERY", "announce", "live_workers", "worker_bucket"]

log = logging.getLogger("naq_resilience.worker")

EVERY = 5.0
"""Seconds between a worker's records: a sixth of the TTL, so five may be lost."""

_encode = msgspec.json.Encoder().encode


def _library() -> str:
    try:
        return version("naq-resilience")
    except PackageNotFoundError:
        return "unknown"


async def worker_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    try:
        return await js.key_value(layout.WORKER_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_key_value(
            KeyValueConfig(
                bucket=layout.WORKER_BUCKET,
                history=1,
                ttl=layout.WORKER_TTL,
                storage=StorageType.MEMORY,  # presence is now or never: nothing to keep
                replicas=replicas,
            )
        )


async def announce(
    js: JetStreamContext, replicas: int, snapshot: Callable[[], WorkerInfo], stopped: asyncio.Event
) -> None:
    """Write the worker's record every `EVERY` seconds until `stopped`, then delete it.

    Presence is for looking: a bucket that cannot be made yet (a cluster electing its
    leader, a server away) is asked for again next round, and never stops the worker.
    """
    info = snapshot()
    key = layout.kv_key(info.worker_id)
    kv: KeyValue | None = None
    try:
        while not stopped.is_set():
            try:
                if kv is None:
                    kv = await worker_bucket(js, replicas)
                await kv.put(key, _encode(snapshot()))
            except Exception as exc:  # the next round tries again
                log.debug("could not write the presence of %s: %r", info.worker_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), EVERY)
    finally:
        if kv is not None:
            with contextlib.suppress(Exception):
                await kv.delete(key)


async def live_workers(js: JetStreamContext) -> list[WorkerInfo]:
    """Every worker seen in the last `WORKER_TTL` seconds, by id."""
    try:
        kv = await js.key_value(layout.WORKER_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return []
    try:
        keys = await kv.keys()
    except Exception:  # nats-py raises NoKeysError for an empty bucket
        return []
    found: list[WorkerInfo] = []
    now = time.time()
    for key in keys:
        with contextlib.suppress(Exception):
            entry = await kv.get(key)
            if entry.value:
                info = decode(entry.value, WorkerInfo)
                if now - info.seen_at <= layout.WORKER_TTL:
                    found.append(info)
    return sorted(found, key=lambda w: w.worker_id)


LIBRARY_VERSION = _library()
