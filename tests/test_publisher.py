"""The worker's and client's JetStream publisher, against a real server."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy
from nats.js.errors import NoStreamResponseError

from naq_resilience.fitting import headers_size
from naq_resilience.jetstream.publisher import (
    PayloadTooLargeError,
    Publisher,
    PublishTimeoutError,
    StreamFullError,
)

pytestmark = pytest.mark.usefixtures("clean_jetstream")


def test_acks_resolve_to_sequences_and_headers_reach_the_stream(nats_url: str) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name="PUBTEST", subjects=["pubtest.>"], allow_msg_ttl=True)
        publisher = Publisher(nc)
        await publisher.start()
        try:
            first = await publisher.publish("pubtest.a", b"one")
            second = await publisher.publish("pubtest.b", b"two", msg_ttl=0.4)
            assert await asyncio.gather(first, second) == [1, 2]
            stored = await js.get_msg("PUBTEST", 2)
            assert stored.data == b"two"
            assert stored.headers is not None
            assert stored.headers["Nats-TTL"] == "1"  # rounded up: the server refuses 0
            dup = [
                await publisher.publish("pubtest.c", b"x", headers={"Nats-Msg-Id": "k1"})
                for _ in range(2)
            ]
            assert await asyncio.gather(*dup) == [3, 3]  # the second was a duplicate
        finally:
            await publisher.close()
            await nc.close()

    asyncio.run(main())


def test_no_stream_and_no_ack_fail_the_future(nats_url: str) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url)
        publisher = Publisher(nc, ack_timeout=0.3)
        await publisher.start()
        silent = await nc.subscribe("plain.subject")  # a core subscriber never acks
        try:
            with pytest.raises(NoStreamResponseError):
                await (await publisher.publish("nobody.listens", b"x"))
            with pytest.raises(PublishTimeoutError, match="may or may not be stored"):
                await (await publisher.publish("plain.subject", b"x"))
        finally:
            await silent.unsubscribe()
            await publisher.close()
            await nc.close()

    asyncio.run(main())


def test_size_is_checked_with_headers_before_anything_is_sent(nats_url: str) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name="PUBTEST", subjects=["pubtest.>"], allow_msg_ttl=True)
        publisher = Publisher(nc)
        await publisher.start()
        try:
            headers = {"Nats-Msg-Id": "exactly-at-the-limit"}
            room = nc.max_payload - headers_size({**headers, "Nats-TTL": "60"})
            # The server counts payload and headers together; this is its limit exactly.
            seq = await publisher.store("pubtest.a", b"x" * room, headers, msg_ttl=60)
            assert seq == 1
            with pytest.raises(PayloadTooLargeError, match="over the NATS server's max_payload"):
                await publisher.publish("pubtest.b", b"x" * (room + 1), headers, msg_ttl=60)
            # Nothing reached the server, so it had no reason to close the connection.
            assert await publisher.store("pubtest.c", b"small") == 2
            assert nc.is_connected
        finally:
            await publisher.close()
            await nc.close()

    asyncio.run(main())


def test_a_full_stream_is_a_stream_full_error_and_keeps_what_it_has(nats_url: str) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(
            name="PUBFULL", subjects=["pubfull.>"], max_msgs=2, discard=DiscardPolicy.NEW
        )
        publisher = Publisher(nc)
        await publisher.start()
        try:
            stored = [await publisher.store("pubfull.a", data) for data in (b"1", b"2")]
            assert stored == [1, 2]
            with pytest.raises(StreamFullError, match="maximum messages"):
                await publisher.store("pubfull.a", b"3")
            assert (await js.stream_info("PUBFULL")).state.messages == 2
        finally:
            await publisher.close()
            await nc.close()

    asyncio.run(main())


def test_an_idempotent_publish_nobody_answered_is_sent_again_until_stored(
    nats_url: str,
) -> None:
    """A stream leader that died before answering: the first copy gets no ack at all."""

    async def main() -> None:
        nc = await nats.connect(nats_url)
        copies: list[bytes] = []

        async def leader_that_missed_the_first(msg: Msg) -> None:
            copies.append(msg.data)
            if len(copies) > 1:
                await nc.publish(msg.reply, b'{"stream":"JOBS","seq":7}')

        await nc.subscribe("resend.job", cb=leader_that_missed_the_first)
        publisher = Publisher(nc, ack_timeout=3.5)
        await publisher.start()
        try:
            seq = await publisher.store(
                "resend.job", b"job", {"Nats-Msg-Id": "job-1"}, resend=True
            )
            assert seq == 7
            assert copies == [b"job", b"job"]  # the same message, its id makes it safe
            copies.clear()
            with pytest.raises(PublishTimeoutError):  # not idempotent: sent once, then given up
                await publisher.store("resend.job", b"record")
            assert copies == [b"record"]
        finally:
            await publisher.close()
            await nc.close()

    asyncio.run(main())
