"""Fuzzing: the envelope decoder alone, and the worker's whole message path on a real server.

Whatever bytes arrive on a queue, a worker must settle them: a job it may run runs
once, anything else becomes exactly one dead letter with a reason, and nothing is
left to come back. The second test runs generated batches through one worker and
checks exactly that on the broker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

import msgspec
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from naq_resilience import Client, Worker
from naq_resilience.codec import InvalidMessage, decode_envelope, encode
from naq_resilience.jetstream import layout
from naq_resilience.models import JobEnvelope

import worker_jobs

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)  # what MessagePack can carry
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
envelope_fields = st.fixed_dictionaries(
    {"id": st.text(max_size=12), "function": st.text(max_size=20)},
    optional={
        "version": st.integers(-2, 3),
        "args": json_values,
        "kwargs": json_values,
        "max_retries": json_values,
        "retry_delay": json_values,
        "retry_strategy": json_values,
        "dead_letter_queue": st.text(max_size=12),
        "timeout": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        envelope_fields.map(msgspec.json.encode),
        envelope_fields.map(msgspec.msgpack.encode),
        json_values.map(msgspec.json.encode),
        json_values.map(msgspec.msgpack.encode),
    )
)
def test_the_decoder_returns_an_envelope_or_a_reason_and_nothing_else(data: bytes) -> None:
    try:
        envelope = decode_envelope(data)
    except InvalidMessage as exc:
        reason = exc.reason
    else:
        reason = ""
        assert decode_envelope(encode(envelope)) == envelope  # what it read, it can write
    assert reason or isinstance(envelope, JobEnvelope)


# --------------------------------------------------------------------------- the worker


def _job_id() -> str:
    return uuid.uuid4().hex  # unique: a job's dead letter is one per id


good_jobs = st.tuples(st.integers(-1000, 1000), st.integers(-1000, 1000), st.booleans()).map(
    lambda t: encode(
        JobEnvelope(id=_job_id(), function="worker_jobs:add", args=[t[0], t[1]]),
        "msgpack" if t[2] else "json",
    )
)
not_an_int = st.one_of(
    st.text(alphabet="abcxyz", min_size=1, max_size=5), st.none(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers()),
)  # fmt: skip
hostile_names = st.sampled_from(
    [
        "os:system", "builtins:eval", "subprocess:run", "worker_jobs:_attempts",
        "worker_jobs:os.system", "worker_jobs:trace.__globals__", "worker_jobs:Path",
        "never_heard_of:it", "worker_jobs", "worker_jobs:add.__code__",
    ]
)  # fmt: skip
bad_jobs = st.one_of(
    st.binary(max_size=64).filter(lambda b: not b.startswith((b"{", b" {"))),
    hostile_names.map(
        lambda name: msgspec.json.encode({"id": _job_id(), "function": name, "args": ["pwned"]})
    ),
    not_an_int.map(
        lambda value: msgspec.json.encode(
            {"id": _job_id(), "function": "worker_jobs:add", "args": [value, 1]}
        )
    ),
    st.integers(3, 6).map(
        lambda n: msgspec.json.encode(
            {"id": _job_id(), "function": "worker_jobs:add", "args": list(range(n))}
        )
    ),
    envelope_fields.filter(lambda f: f.get("function") != "worker_jobs:add").map(
        lambda fields: msgspec.json.encode({**fields, "id": _job_id()})
    ),
    json_values.filter(lambda v: not isinstance(v, dict)).map(msgspec.json.encode),
)


class BackgroundWorker:
    """A worker on a thread of its own, for the length of a test."""

    def __init__(self, url: str) -> None:
        # A job naming a module the worker does not import (`never_heard_of:it`) is handed
        # back, then dead-lettered as unroutable: after half a second here, not 300 s.
        self.worker = Worker(
            "default", nats_url=url, imports=["worker_jobs"], concurrency=8,
            unroutable_after=0.5,
        )  # fmt: skip
        self.thread = threading.Thread(target=lambda: asyncio.run(self.worker.run()))

    def __enter__(self) -> BackgroundWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(30)


async def _publish(url: str, messages: list[bytes]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for data in messages:
            await js.publish(layout.job_subject("default"), data)
    finally:
        await nc.close()


async def _counts(url: str) -> tuple[int, int]:
    """(messages still queued, dead letters stored)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        queued = (await js.stream_info(layout.JOB_STREAM)).state.messages
        dead = (await js.stream_info(layout.DEAD_STREAM)).state.messages
        return queued, dead
    finally:
        await nc.close()


@pytest.mark.usefixtures("clean_jetstream")
def test_every_message_the_worker_gets_ends_settled_once(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def layout_first() -> None:
        async with Client(nats_url) as client:
            await client.connect()

    asyncio.run(layout_first())
    worker_jobs.calls.clear()
    with caplog.at_level(logging.ERROR, logger="naq_resilience"), BackgroundWorker(nats_url):

        @settings(
            max_examples=25, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )  # fmt: skip
        @given(st.lists(good_jobs, max_size=6), st.lists(bad_jobs, min_size=1, max_size=6),
               st.randoms(use_true_random=False))  # fmt: skip
        def batch(good: list[bytes], bad: list[bytes], rnd: Any) -> None:
            messages = good + bad
            rnd.shuffle(messages)
            ran_before = len(worker_jobs.calls)
            _, dead_before = asyncio.run(_counts(nats_url))
            asyncio.run(_publish(nats_url, messages))
            deadline = time.monotonic() + 30
            while True:
                queued, dead = asyncio.run(_counts(nats_url))
                ran = len(worker_jobs.calls) - ran_before
                if queued == 0 and dead - dead_before == len(bad) and ran == len(good):
                    break
                assert time.monotonic() < deadline, (
                    f"not settled: {queued} queued, {dead - dead_before} of {len(bad)} dead "
                    f"letters, {ran} of {len(good)} jobs ran"
                )
                time.sleep(0.05)

        batch()
    assert "worker bug" not in caplog.text
    assert "worker error while handling" not in caplog.text
