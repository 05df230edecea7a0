"""The worker's pull requests against a real server: never more than asked, never stuck,
and a stream message is never taken for the server's word about the request."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from naq_resilience import Client
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.puller import Puller

from processes import WorkerProcess, dead_letters, wait_until

pytestmark = pytest.mark.usefixtures("clean_jetstream")


def test_a_pull_brings_at_most_the_batch_and_ends_when_the_queue_is_empty(nats_url: str) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name="PULL", subjects=["pull.>"])
        await js.add_consumer(
            "PULL", ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT)
        )
        for i in range(5):
            await js.publish("pull.x", str(i).encode())
        got: list[Msg] = []
        puller = Puller(nc, "PULL", "c", got.append, expires=0.5)
        await puller.start()
        try:
            await puller.pull(3)  # ends as soon as the third arrives
            assert [m.data for m in got] == [b"0", b"1", b"2"]
            started = time.monotonic()
            await puller.pull(10)  # two left: ends when the request expires
            assert [m.data for m in got[3:]] == [b"3", b"4"]
            assert time.monotonic() - started < 5  # a bound against hanging, not a timing
            await puller.pull(10)  # nothing left: an empty pull ends too
            assert len(got) == 5
            for m in got:
                await m.ack()
        finally:
            await puller.stop()
            await nc.close()

    asyncio.run(main())


def test_a_job_message_that_looks_like_a_status_is_still_a_job(
    nats_url: str, trace: Path, workers: list[WorkerProcess]
) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            # Create the layout the way a client would, then a hostile message: empty,
            # with the headers the server puts on "no messages".
            async with Client(nats_url) as client:
                await client.connect()
            await nc.jetstream().publish(
                layout.job_subject("default"), b"", headers={"Status": "404"}
            )
        finally:
            await nc.close()

    asyncio.run(main())
    workers.append(WorkerProcess(nats_url, trace, "--ack-wait", "1", name="w"))
    wait_until(lambda: len(dead_letters(nats_url)) == 1, what="a dead letter")
    (letter,) = dead_letters(nats_url)
    assert letter.raw == b""
    assert "not valid JSON" in letter.reason
