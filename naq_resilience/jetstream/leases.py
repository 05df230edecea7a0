"""Compare-and-set writes with a per-key TTL, and a lease built on them.

nats-py's `KeyValue.update` (compare-and-set on the key's revision) takes no TTL, and
its `create` takes one only for the first write. A lease needs both at every renewal:
the holder rewrites the key at the revision it last wrote, with a TTL, so the key
expires (the server removes it) if the holder dies, and a rival that took over makes the
old holder's next renewal fail instead of silently overwriting. So `cas_write`
publishes to the key's subject itself, with the headers `KeyValue` would send.

The server removes an expired key a moment after its TTL (measured on nats-server 2.15:
about a second late), never early, and a holder counts its lease from before it sent
the write. So a holder that stops acting once its own clock passes `sent + ttl` cannot
overlap the rival that waited for the key to go, whatever the network did to the write.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from naq_resilience.codec import decode
from naq_resilience.models import MonitorLease

__all__ = ["Lease", "cas_write", "read_entry"]

log = logging.getLogger("naq_resilience.monitor")

_WRONG_LAST_SEQUENCE = (10071, 10164)
_encoder = msgspec.json.Encoder()


async def cas_write(
    js: JetStreamContext,
    bucket: str,
    key: str,
    value: bytes,
    *,
    last: int,
    ttl: float | None = None,
    purge: bool = False,
) -> int:
    """Write `key` only if its revision is `last` (0: only if absent); the new revision.

    `ttl` (seconds, rounded up to whole seconds, at least 1) makes this write expire.
    Raises `KeyWrongLastSequenceError` when someone else wrote first. A key removed by
    a TTL or a delete has a revision of its own (its marker) or none: `read_entry`
    says which. `purge` writes a purge marker instead of `value` (as `KeyValue.purge`
    does, but only at `last`); with a `ttl` the marker goes too.
    """
    headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
    if purge:
        headers.update({"KV-Operation": "PURGE", "Nats-Rollup": "sub"})
        value = b""
    try:
        ack = await js.publish(
            f"$KV.{bucket}.{key}",
            value,
            headers=headers,
            msg_ttl=None if ttl is None else max(1, math.ceil(ttl)),
        )
    except APIError as err:
        if err.err_code in _WRONG_LAST_SEQUENCE:
            raise KeyWrongLastSequenceError(description=err.description) from None
        raise
    return int(ack.seq)


async def read_entry(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """The key's value (None when absent or deleted) and the revision to write it at."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError as missing:
        # A delete or TTL marker is a revision of its own: a create must name it.
        marker = getattr(missing, "entry", None)
        revision = getattr(marker, "revision", None)
        return None, int(revision or 0)
    return entry.value or None, int(entry.revision or 0)


class Lease:
    """One key that at most one holder has at a time, for `ttl` seconds after each renewal.

    `await lease.keep()` takes the key when it is free and renews it when held; call it
    every third of `ttl` or so. `held` is True while this holder may act: it turns False
    when a renewal finds a rival's write, and also when no renewal succeeded for `ttl`
    seconds (a lost connection: the key may have expired and a rival taken it).
    """

    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        bucket: str,
        key: str,
        holder: str,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if ttl < 2:
            raise ValueError(f"a lease lasts at least 2 seconds, got ttl={ttl!r}")
        self._js = js
        self._kv = kv
        self._bucket = bucket
        self._key = key
        self.holder = holder
        self.ttl = float(math.ceil(ttl))
        self._clock = clock
        self._wall = wall
        self._revision: int | None = None
        self._until = 0.0
        self._acquired_at = 0.0

    @property
    def held(self) -> bool:
        return self._revision is not None and self._clock() < self._until

    async def keep(self) -> bool:
        """Take or renew the lease; whether this holder has it now."""
        sent = self._clock()
        now = self._wall()
        try:
            if self._revision is not None and self._clock() < self._until:
                record = MonitorLease(
                    holder=self.holder,
                    acquired_at=self._acquired_at,
                    renewed_at=now,
                    ttl=self.ttl,
                )
                self._revision = await cas_write(
                    self._js, self._bucket, self._key, _encoder.encode(record),
                    last=self._revision, ttl=self.ttl,
                )  # fmt: skip
            else:
                self._revision = None
                value, revision = await read_entry(self._kv, self._key)
                if value is not None:
                    return False  # someone holds it; it expires if they die
                record = MonitorLease(
                    holder=self.holder, acquired_at=now, renewed_at=now, ttl=self.ttl
                )
                self._revision = await cas_write(
                    self._js, self._bucket, self._key, _encoder.encode(record),
                    last=revision, ttl=self.ttl,
                )  # fmt: skip
                self._acquired_at = now
                log.info("%s took the lease %s (ttl %gs)", self.holder, self._key, self.ttl)
        except KeyWrongLastSequenceError:
            if self._revision is not None:
                log.warning("%s lost the lease %s to another holder", self.holder, self._key)
            self._revision = None
            return False
        except Exception as exc:
            # The write may or may not have been stored: keep the revision (a renewal at
            # it fails cleanly if it was), act only until the last confirmed deadline.
            log.warning("%s could not renew the lease %s: %r", self.holder, self._key, exc)
            return self.held
        self._until = sent + self.ttl
        return True

    async def release(self) -> None:
        """Give the lease up at once (a clean stop), so a standby need not wait for the TTL."""
        revision, self._revision = self._revision, None
        if revision is None:
            return
        try:
            await self._kv.delete(self._key, last=revision)
        except Exception as exc:  # a rival's already, or no server: the TTL ends it
            log.debug("could not release the lease %s: %r", self._key, exc)

    async def current(self) -> MonitorLease | None:
        """Who holds the lease now, as the bucket says."""
        value, _ = await read_entry(self._kv, self._key)
        return None if value is None else decode(value, MonitorLease)
