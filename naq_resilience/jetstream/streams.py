"""Create the streams and buckets of `layout` when they are missing.

Both the client and the worker call `ensure_layout` once per connection, so whichever
starts first on a new server sets it up; an existing stream is left as it is, so an
operator may tune limits or replicas without the library undoing it.
"""

from __future__ import annotations

import asyncio

from nats.js.api import (
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from naq_resilience.jetstream import layout

__all__ = ["Buckets", "ensure_layout"]

DUPLICATE_WINDOW = 120.0
"""Seconds an `idempotency_key` suppresses a second enqueue of the same job."""


def _streams() -> list[StreamConfig]:
    return [
        StreamConfig(
            name=layout.JOB_STREAM,
            subjects=[layout.JOB_SUBJECTS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
        ),
        StreamConfig(
            name=layout.FAILURE_STREAM,
            subjects=[layout.FAILURE_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=layout.FAILURE_MAX_AGE,
        ),
        StreamConfig(
            name=layout.DEAD_STREAM,
            subjects=[layout.DEAD_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            allow_msg_ttl=True,
        ),
    ]


class Buckets:
    """The KV buckets, opened once per connection."""

    def __init__(self, breakers: KeyValue, sagas: KeyValue, results: KeyValue, deferrals: KeyValue):
        self.breakers = breakers
        self.sagas = sagas
        self.results = results
        self.deferrals = deferrals


async def _bucket(js: JetStreamContext, name: str, *, per_key_ttl: bool) -> KeyValue:
    try:
        return await js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        config = KeyValueConfig(
            bucket=name,
            storage=StorageType.FILE,
            history=1,
            limit_marker_ttl=1.0 if per_key_ttl else None,
        )
        return await js.create_key_value(config)


async def ensure_layout(js: JetStreamContext) -> Buckets:
    for config in _streams():
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            await js.add_stream(config)
    breakers, sagas, results, deferrals = await asyncio.gather(
        _bucket(js, layout.BREAKER_BUCKET, per_key_ttl=False),
        _bucket(js, layout.SAGA_BUCKET, per_key_ttl=True),
        _bucket(js, layout.RESULT_BUCKET, per_key_ttl=True),
        _bucket(js, layout.DEFERRAL_BUCKET, per_key_ttl=True),
    )
    return Buckets(breakers, sagas, results, deferrals)
