"""A job enqueued by a service that is not Python: hand-written bytes on a plain NATS client.

Every envelope here is a literal, as a Go or Node service would write it following
docs/wire-format.md; it is published with nats-py's bare `js.publish`, never through
naq_resilience's client, and run by a `Worker` in this process that imports
`jobs_for_wire` (tests/jobs_for_wire.py). Waiting is by polling with a generous
deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import msgspec
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from naq_resilience.jetstream.client import Client
from naq_resilience.jetstream.worker import Worker
from naq_resilience.models import DeadLetter

import jobs_for_wire

T = TypeVar("T")
WAIT = 20.0
"""Seconds to wait for something that happens in milliseconds: only a bug takes longer."""


pytestmark = pytest.mark.usefixtures("clean_jetstream")


# --------------------------------------------------------------------------- a worker


@pytest.fixture(autouse=True)
def _no_calls_yet() -> None:
    jobs_for_wire.CALLS.clear()


class Harness:
    """A worker running in this event loop, and a plain NATS client beside it."""

    def __init__(self, url: str, worker: Worker, task: asyncio.Task[None], nc: NatsClient):
        self.url = url
        self.worker = worker
        self.task = task
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()

    async def eventually(self, probe: Callable[[], Awaitable[T | None]], what: str) -> T:
        """`probe()`'s first result that is not None; fails if the worker died or after WAIT."""
        deadline = time.monotonic() + WAIT
        while True:
            if self.task.done():
                self.task.result()  # raises the worker's error, if it had one
                raise AssertionError(f"the worker stopped while waiting for {what}")
            found = await probe()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}")
            await asyncio.sleep(0.02)

    async def consumer_info(self, queue: str = "default") -> Any:
        return await self.js.consumer_info("NAQ_JOBS", f"naq-worker-{queue}")

    async def all_acked(self, queue: str = "default") -> Any:
        """The consumer's info once every message was delivered and acked, else None."""
        info = await self.consumer_info(queue)
        return info if info.num_pending == 0 and info.num_ack_pending == 0 else None

    async def dead_letters(self, name: str, count: int) -> list[DeadLetter]:
        async def enough() -> list[DeadLetter] | None:
            async with Client(self.url) as client:
                letters = await client.get_dead_letter_jobs(name)
            return letters if len(letters) >= count else None

        return await self.eventually(enough, f"{count} dead letters in {name}")


@contextlib.asynccontextmanager
async def running_worker(
    url: str, queues: tuple[str, ...] = ("default",)
) -> AsyncIterator[Harness]:
    worker = Worker(list(queues), nats_url=url, imports=["jobs_for_wire"], fetch_timeout=0.2)
    task = asyncio.create_task(worker.run())
    nc = await nats.connect(url)
    harness = Harness(url, worker, task, nc)
    try:

        async def consuming(queue: str) -> bool | None:
            # The worker creates the streams and its consumer when it starts; a producer
            # in another language relies on a worker (or the CLI) having done that.
            with contextlib.suppress(NotFoundError):
                return bool(await harness.consumer_info(queue))
            return None

        for queue in queues:
            await harness.eventually(partial(consuming, queue), f"the worker to consume {queue}")
        yield harness
    finally:
        worker.stop()
        await task
        await nc.close()


Calls = list[tuple[tuple[Any, ...], dict[str, Any]]]


def calls_of(name: str) -> Callable[[], Awaitable[Calls | None]]:
    async def probe() -> Calls | None:
        return jobs_for_wire.calls_of(name) or None

    return probe


# --------------------------------------------------------------------------- the tests

INVOICE = (
    b'{"version":1,"id":"go-invoice-42","function":"jobs_for_wire:send_invoice",'
    b'"queue":"default","args":[42,"2025-01-02T03:04:05Z"],"kwargs":{"tags":["eu","b2b"]},'
    b'"enqueued_at":1735787045.5}'
)


def test_a_hand_written_json_envelope_is_run_with_its_arguments_converted(
    nats_url: str,
) -> None:
    async def main() -> tuple[Any, Any, Any]:
        async with running_worker(nats_url) as h:
            headers = {"Nats-Msg-Id": "go-invoice-42"}
            first = await h.js.publish("naq.jobs.default", INVOICE, headers=headers)
            again = await h.js.publish("naq.jobs.default", INVOICE, headers=headers)
            calls = await h.eventually(calls_of("send_invoice"), "the invoice job to run")
            info = await h.eventually(h.all_acked, "the worker to ack the job")
        return first, again, (calls, info)

    first, again, (calls, info) = asyncio.run(main())
    # JSON has no datetime or tuple: the worker converted them to the annotations.
    assert calls == [((42, datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), ("eu", "b2b")), {})]
    # The same Nats-Msg-Id within the duplicate window is not stored a second time.
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    assert info.num_redelivered == 0


def test_a_hand_written_msgpack_envelope_is_run(nats_url: str) -> None:
    # A plain map from any MessagePack library: the worker sniffs the first byte.
    envelope = msgspec.msgpack.encode(
        {"version": 1, "id": "mp-1", "function": "jobs_for_wire:record", "args": [1, "two"]}
    )
    assert envelope[0] in range(0x80, 0x90)

    async def main() -> Any:
        async with running_worker(nats_url) as h:
            await h.js.publish("naq.jobs.default", envelope)
            return await h.eventually(calls_of("record"), "the msgpack job to run")

    assert asyncio.run(main()) == [((1, "two"), {})]


NOT_JSON = b"charge order 42, 19.99 EUR"
NEXT_VERSION = (
    b'{"version":2,"id":"go-v2","function":"jobs_for_wire:record","args":[1],"priority":"high"}'
)
GARBAGE_WITH_A_VERSION = b'{"version":7,"job":"jobs_for_wire:record(1)"}'
AFTER_THEM = b'{"version":1,"id":"go-after","function":"jobs_for_wire:record","args":["after"]}'


def test_unreadable_messages_become_dead_letters_with_their_bytes_and_the_worker_goes_on(
    nats_url: str,
) -> None:
    async def main() -> tuple[Any, list[DeadLetter], Any]:
        async with running_worker(nats_url) as h:
            for payload in (NOT_JSON, NEXT_VERSION, GARBAGE_WITH_A_VERSION, AFTER_THEM):
                await h.js.publish("naq.jobs.default", payload)
            calls = await h.eventually(calls_of("record"), "the valid job after them to run")
            letters = await h.dead_letters("default.dead", 3)
            info = await h.eventually(h.all_acked, "every message to be acked")
        return calls, letters, info

    calls, letters, info = asyncio.run(main())
    assert calls == [(("after",), {})]
    by_raw = {letter.raw: letter for letter in letters}
    assert set(by_raw) == {NOT_JSON, NEXT_VERSION, GARBAGE_WITH_A_VERSION}
    for letter in letters:
        assert letter.job is None
        assert letter.queue == "default"
        assert letter.dead_letter_queue == "default.dead"
        assert letter.failures == []
    assert by_raw[NOT_JSON].reason.startswith("message is not valid JSON")
    for raw, version in ((NEXT_VERSION, 2), (GARBAGE_WITH_A_VERSION, 7)):
        reason = by_raw[raw].reason
        assert f"job envelope version {version} is not supported" in reason
        assert "upgrade naq-resilience on the workers" in reason
    assert info.num_redelivered == 0


BAD_ENVELOPES = {
    b'{"version":1,"id":"order.42","function":"jobs_for_wire:always_down","args":["x"]}': "$.id",
    b'{"version":1,"id":"order 42","function":"jobs_for_wire:always_down","args":["x"]}': "$.id",
    b'{"version":1,"id":"","function":"jobs_for_wire:always_down","args":["x"]}': "$.id",
    (
        b'{"version":1,"id":"go-bogus","function":"jobs_for_wire:always_down","args":["x"],'
        b'"max_retries":1,"retry_strategy":"bogus"}'
    ): "$.retry_strategy",
    (
        b'{"version":1,"id":"go-dlq","function":"jobs_for_wire:always_down","args":["x"],'
        b'"dead_letter_queue":"dead letters"}'
    ): "$.dead_letter_queue",
}


def test_envelopes_a_worker_cannot_route_are_dead_letters_not_endless_redeliveries(
    nats_url: str,
) -> None:
    """Found while writing this test: when such a job failed, an id that is not a subject
    token or a bad retry option made the worker itself fail before acking, so the job
    ran again every ack_wait, for ever; and an id with a `.` hid its dead letter from
    `get_dead_letter_jobs`. Now they are refused before running."""

    async def main() -> tuple[list[DeadLetter], Any]:
        async with running_worker(nats_url) as h:
            for payload in BAD_ENVELOPES:
                await h.js.publish("naq.jobs.default", payload)
            await h.js.publish("naq.jobs.default", AFTER_THEM)
            letters = await h.dead_letters("default.dead", len(BAD_ENVELOPES))
            info = await h.eventually(h.all_acked, "every message to be acked")
        return letters, info

    letters, info = asyncio.run(main())
    assert {letter.raw for letter in letters} == set(BAD_ENVELOPES)
    for letter in letters:
        assert letter.raw is not None
        assert letter.job is None
        assert letter.reason.startswith("message is not a job envelope")
        assert f"at `{BAD_ENVELOPES[letter.raw]}`" in letter.reason
    assert jobs_for_wire.calls_of("always_down") == []
    assert jobs_for_wire.calls_of("record") == [(("after",), {})]
    assert info.num_redelivered == 0


def test_the_subject_names_the_queue_when_the_envelope_does_not(nats_url: str) -> None:
    """Found while writing this test: the failure history of a job whose envelope left
    out `queue` was read from the default queue's failures, so its dead letter kept
    only the last attempt."""
    envelope = (
        b'{"version":1,"id":"go-charge-7","function":"jobs_for_wire:always_down",'
        b'"args":["charge-7"],"max_retries":2,"retry_delay":0,"retry_strategy":"fixed"}'
    )

    async def main() -> list[DeadLetter]:
        async with running_worker(nats_url, ("emails",)) as h:
            await h.js.publish("naq.jobs.emails", envelope)
            return await h.dead_letters("emails.dead", 1)

    [letter] = asyncio.run(main())
    assert letter.queue == "emails"
    assert letter.job is not None
    assert letter.job.queue == "emails"
    assert letter.reason == "out of attempts (3 of 3): builtins:ConnectionError"
    assert [f.attempt for f in letter.failures] == [1, 2, 3]
    assert [f.outcome for f in letter.failures] == ["retry", "retry", "dead"]
    assert {f.queue for f in letter.failures} == {"emails"}
    assert len(jobs_for_wire.calls_of("always_down")) == 3


def test_fractional_ttls_are_kept_for_whole_seconds_not_refused(nats_url: str) -> None:
    """Found while writing this test: NATS per-message TTLs are whole seconds and nats-py
    truncates, so `result_ttl` or `dead_letter_ttl` below 1 s sent a TTL of 0, which the
    server refuses: the finished job was never acked and ran again after ack_wait."""
    with_result = (
        b'{"version":1,"id":"go-result","function":"jobs_for_wire:record","args":["r"],'
        b'"result_ttl":0.5}'
    )
    dead_briefly = (
        b'{"version":1,"id":"go-brief","function":"jobs_for_wire:always_down","args":["d"],'
        b'"dead_letter_ttl":0.5}'
    )

    async def main() -> Any:
        async with running_worker(nats_url) as h:
            await h.js.publish("naq.jobs.default", with_result)
            await h.js.publish("naq.jobs.default", dead_briefly)
            await h.eventually(calls_of("always_down"), "the failing job to run")
            return await h.eventually(h.all_acked, "both jobs to be acked")

    info = asyncio.run(main())
    assert info.num_redelivered == 0
    assert jobs_for_wire.calls_of("record") == [(("r",), {})]
