"""Publishing to JetStream with acknowledgements, at a third of nats-py's client cost.

`js.publish_async` awaits a semaphore through `asyncio.wait_for`, draws a NUID and
random bytes and hooks a done-callback per message: about 58 us of client CPU per
message on this project's machine, more than a whole no-op job costs the worker. A
`Publisher` sends each message with a reply subject on one wildcard inbox of its own
and resolves a plain future when the ack arrives there: about 24 us. The guarantees
are JetStream's: a message is stored when its future resolves; an error reply, or no
stream for the subject, fails the future with the server's reason; an ack that never
comes (the connection dropped) fails it after `ack_timeout` seconds.

Size is checked here, headers included, before anything is written: the server
closes the connection of a client that sends a message over its `max_payload`, and
nats-py then closes it for good, so an oversized record must never reach the socket.
`store()` is the publish that waits for its ack and rides out a stream without a
leader (a cluster electing one after a node died) until its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

from naq_resilience.fitting import headers_size

__all__ = [
    "PayloadTooLargeError",
    "PublishTimeoutError",
    "Publisher",
    "StreamFullError",
    "is_stream_full",
]


class PublishTimeoutError(TimeoutError):
    """JetStream did not acknowledge a publish in time; it may or may not be stored."""


class PayloadTooLargeError(ValueError):
    """A message (payload plus headers) over the server's `max_payload`; nothing was sent."""

    def __init__(self, subject: str, size: int, limit: int) -> None:
        super().__init__(
            f"a message of {size:,} bytes (payload and headers) for {subject} is over the "
            f"NATS server's max_payload of {limit:,} bytes; nothing was sent"
        )
        self.subject = subject
        self.size = size
        self.limit = limit


class StreamFullError(APIError):
    """A stream refused a message because one of its limits is reached (max bytes,
    max messages, or the server's storage): nothing was stored, nothing was discarded."""


_FULL_DESCRIPTIONS = ("maximum bytes", "maximum messages", "insufficient resources")
_TRANSIENT_CODES = frozenset({10008})  # JSClusterNotAvailErr: a cluster between leaders
_RETRY_PAUSE = 0.05
_RETRY_PAUSE_MAX = 1.0


def is_stream_full(error: APIError) -> bool:
    """Whether JetStream refused a message because a limit was reached.

    The server answers a stream limit with err_code 10077 ("maximum bytes exceeded",
    "maximum messages exceeded") and storage it cannot reserve with 10047 or 10023.
    """
    text = (error.description or "").lower()
    return error.err_code in (10023, 10047) or (
        error.err_code == 10077 and any(d in text for d in _FULL_DESCRIPTIONS)
    )


class _Ack(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode


class _Pending:
    """A publish waiting for its ack; `resend` holds what to send again, if anything."""

    __slots__ = ("future", "resend", "sent", "sent_last")

    def __init__(
        self,
        future: asyncio.Future[int],
        sent: float,
        resend: tuple[str, bytes, dict[str, str] | None] | None,
    ) -> None:
        self.future = future
        self.sent = self.sent_last = sent
        self.resend = resend


class Publisher:
    """JetStream publishes whose acks come back on one inbox; `await publish(...)` then
    `await` the returned future for the stream sequence.

    A publish made with `resend=True` (a message whose effect is the same however often
    it is stored: one with a `Nats-Msg-Id`, a KV put, a dead letter on its job's
    subject) is sent again every `RESEND_AFTER` seconds while no ack came and the
    connection is up, until `ack_timeout`: a message sent to a stream leader that died
    before answering is otherwise waited for in vain.
    """

    RESEND_AFTER = 2.0
    RESEND_BATCH = 256

    def __init__(self, nc: NatsClient, ack_timeout: float = 10.0) -> None:
        self._nc = nc
        self.ack_timeout = ack_timeout
        self._prefix = ""
        self._cut = 0
        self._tokens = itertools.count()
        self._waiting: dict[str, _Pending] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._cut = len(self._prefix) + 1
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self._fail_all(PublishTimeoutError("the publisher closed before JetStream acknowledged"))

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        msg_ttl: float | None = None,
        *,
        resend: bool = False,
    ) -> asyncio.Future[int]:
        """Send now; the future resolves to the stream sequence once JetStream stored it.

        `msg_ttl` is a per-message TTL in whole seconds (rounded up: 0 is refused by
        the server, and nats-py would truncate 0.5 to it).
        """
        if msg_ttl is not None and math.isfinite(msg_ttl):
            headers = {**(headers or {}), "Nats-TTL": str(max(1, math.ceil(msg_ttl)))}
        size = len(payload) + (headers_size(headers) if headers else 0)
        if size > self._nc.max_payload:
            raise PayloadTooLargeError(subject, size, self._nc.max_payload)
        token = str(next(self._tokens))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[token] = _Pending(
            future, time.monotonic(), (subject, payload, headers) if resend else None
        )
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return future

    @property
    def max_payload(self) -> int:
        """The server's limit for one message, payload and headers together."""
        return self._nc.max_payload

    async def store(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        msg_ttl: float | None = None,
        timeout: float | None = None,
        *,
        resend: bool = False,
        on_no_stream: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Publish and wait until stored; the stream sequence.

        A stream that has no leader for a moment (no responders, or "JetStream
        cluster not available" while a cluster elects one) is asked again until
        `timeout` (default `ack_timeout`): such a message was certainly not stored;
        `on_no_stream` is awaited the first time (to recreate a deleted stream). A
        missing ack raises `PublishTimeoutError`: that message may be stored.
        """
        deadline = None  # computed only once a retry is needed: not on the common path
        pause = _RETRY_PAUSE
        while True:
            try:
                return await (
                    await self.publish(subject, payload, headers, msg_ttl, resend=resend)
                )
            except NoStreamResponseError:
                pass
            except APIError as error:
                if error.err_code not in _TRANSIENT_CODES:
                    raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + (self.ack_timeout if timeout is None else timeout)
            if now + pause >= deadline:
                raise PublishTimeoutError(
                    f"no JetStream stream stored {subject} within "
                    f"{self.ack_timeout if timeout is None else timeout:g}s: no stream leader "
                    "answered (in a cluster, check that a majority of the nodes are up)"
                )
            if on_no_stream is not None:
                await on_no_stream()
                on_no_stream = None
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RETRY_PAUSE_MAX)

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject[self._cut :], None)
        if entry is None or entry.future.done():
            return
        future = entry.future
        if not msg.data:
            status = (msg.headers or {}).get("Status", "")
            future.set_exception(
                NoStreamResponseError()
                if status == "503"
                else APIError(description=f"unexpected JetStream reply, status {status!r}")
            )
            return
        try:
            ack = _decode_ack(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(APIError(description=f"unreadable JetStream ack: {exc}"))
            return
        if ack.error is not None:
            error = APIError(
                code=ack.error.get("code"),
                err_code=ack.error.get("err_code"),
                description=ack.error.get("description"),
                stream=ack.stream or None,
            )
            if is_stream_full(error):
                error = StreamFullError(
                    code=error.code,
                    err_code=error.err_code,
                    description=error.description,
                    stream=error.stream,
                )
            future.set_exception(error)
        else:
            future.set_result(ack.seq)

    async def _sweep(self) -> None:
        period = max(0.05, min(0.5, self.ack_timeout / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            cutoff = now - self.ack_timeout
            late = [t for t, pending in self._waiting.items() if pending.sent < cutoff]
            for token in late:
                future = self._waiting.pop(token).future
                if not future.done():
                    future.set_exception(
                        PublishTimeoutError(
                            f"no JetStream ack within {self.ack_timeout:g}s; the message may "
                            "or may not be stored"
                        )
                    )
            if self._nc.is_connected:  # a message sent while away is in nats-py's buffer
                await self._resend(now)

    async def _resend(self, now: float) -> None:
        """The oldest unanswered messages, at most `RESEND_BATCH` a round: a message lost
        with a dying leader is sent again within a round or two, while a backlog whose
        acks are merely slow is not sent twice over, which would only slow it more."""
        due = now - self.RESEND_AFTER
        sent = 0
        for token, pending in list(self._waiting.items()):  # in the order they were sent
            if pending.resend is None or pending.sent_last > due or pending.future.done():
                continue
            subject, payload, headers = pending.resend
            pending.sent_last = now
            with contextlib.suppress(Exception):  # the next round tries again
                await self._nc.publish(
                    subject, payload, reply=f"{self._prefix}.{token}", headers=headers
                )
            sent += 1
            if sent >= self.RESEND_BATCH:
                return

    def _fail_all(self, error: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for pending in waiting.values():
            if not pending.future.done():
                pending.future.set_exception(error)
