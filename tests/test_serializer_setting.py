"""`NAQ_JOB_SERIALIZER`, NAQ's setting: json and msgpack are written, pickle is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats
import pytest

from naq_resilience import Client, Worker
from naq_resilience.codec import serializer_from_env
from naq_resilience.jetstream import layout

import worker_jobs

OFFLINE = "nats://127.0.0.1:9"  # nothing listens there


def enqueue_offline(func: Any, *args: Any, **kwargs: Any) -> None:
    async def main() -> None:
        await Client(OFFLINE).enqueue(func, *args, **kwargs)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "json"), ("", "json"), ("json", "json"), (" JSON ", "json"), ("msgpack", "msgpack")],
)
def test_the_serializer_setting_is_honoured(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str
) -> None:
    if value is None:
        monkeypatch.delenv("NAQ_JOB_SERIALIZER", raising=False)
    else:
        monkeypatch.setenv("NAQ_JOB_SERIALIZER", value)
    assert serializer_from_env() == expected


def test_pickle_is_refused_at_the_first_enqueue_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NAQ_JOB_SERIALIZER", "pickle")
    client = Client(OFFLINE)  # constructing a client is not using it

    async def main() -> None:
        await client.enqueue(worker_jobs.sync_multiply, 6, 7)

    with pytest.raises(ValueError, match=r"^NAQ_JOB_SERIALIZER=pickle is refused: "
                       r"naq-resilience never pickles, because unpickling a message runs "
                       r"whatever code the message says, in the worker"):  # fmt: skip
        asyncio.run(main())


def test_anything_else_is_refused_naming_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAQ_JOB_SERIALIZER", "yaml")
    with pytest.raises(ValueError, match=r"^NAQ_JOB_SERIALIZER='yaml' is not a serializer this "
                       r"library writes: set it to json \(the default\) or msgpack"):  # fmt: skip
        enqueue_offline(worker_jobs.sync_multiply, 6, 7)


def test_a_worker_refuses_pickle_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAQ_JOB_SERIALIZER", "pickle")
    with pytest.raises(ValueError, match="NAQ_JOB_SERIALIZER=pickle is refused"):
        Worker("default", nats_url=OFFLINE, imports=["worker_jobs"])


@pytest.mark.usefixtures("clean_jetstream")
def test_msgpack_is_what_the_client_writes_when_asked_and_the_worker_runs_it(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAQ_JOB_SERIALIZER", "msgpack")

    async def main() -> tuple[bytes, Any]:
        worker = Worker("default", nats_url=nats_url, imports=["worker_jobs"])
        async with Client(nats_url) as client:
            job = await client.enqueue(worker_jobs.sync_multiply, 6, 7, result_ttl=60)
            nc = await nats.connect(nats_url)
            try:
                stored = await nc.jetstream().get_msg(layout.JOB_STREAM, job.sequence)
            finally:
                await nc.close()
            task = asyncio.create_task(worker.run())
            try:
                return stored.data or b"", await job.result(timeout=30)
            finally:
                worker.stop()
                await task

    data, result = asyncio.run(main())
    assert msgspec.msgpack.decode(data)["function"] == "worker_jobs:sync_multiply"
    assert result == 42
