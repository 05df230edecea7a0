"""Every stream and bucket has limits; a limit that refuses a write loses nothing silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy

from naq_resilience import Client, Worker
from naq_resilience.jetstream import layout, stores, worker
from naq_resilience.jetstream.publisher import StreamFullError
from naq_resilience.jetstream.streams import StorageSettings, ensure_layout, parse_size

import worker_jobs

pytestmark = pytest.mark.usefixtures("clean_jetstream")


@asynccontextmanager
async def working(url: str, **options: Any) -> AsyncIterator[Worker]:
    running = Worker("default", nats_url=url, imports=["worker_jobs"], **options)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await task


async def until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.05)


def test_sizes_and_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [parse_size(t) for t in ("65536", "64KiB", "512M", "1GiB", "-1")] == [
        65536, 65536, 512 * 1024**2, 1024**3, -1,
    ]  # fmt: skip
    monkeypatch.setenv("NAQ_REPLICAS", "3")
    monkeypatch.setenv("NAQ_DEAD_MAX_BYTES", "2GiB")
    monkeypatch.setenv("NAQ_FAILURES_MAX_AGE", "3600")
    settings = StorageSettings.from_env(jobs_max_bytes=-1)
    assert (settings.replicas, settings.dead_max_bytes, settings.failures_max_age) == (
        3, 2 * 1024**3, 3600.0,
    )  # fmt: skip
    assert settings.jobs_max_bytes == -1
    monkeypatch.setenv("NAQ_JOBS_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match=r"NAQ_JOBS_MAX_BYTES='lots' is not valid"):
        StorageSettings.from_env()
    with pytest.raises(ValueError, match="replicas must be 1 to 5"):
        StorageSettings(replicas=7)
    with pytest.raises(ValueError, match="dead_max_bytes must be a positive number or -1"):
        StorageSettings(dead_max_bytes=0)


def test_every_stream_and_bucket_is_created_with_its_limits(nats_url: str) -> None:
    settings = StorageSettings(jobs_max_bytes=10 * 1024**2, dead_max_age=3600.0)

    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_layout(js, settings)
            jobs = (await js.stream_info(layout.JOB_STREAM)).config
            assert (jobs.max_bytes, jobs.discard) == (10 * 1024**2, DiscardPolicy.NEW)
            failures = (await js.stream_info(layout.FAILURE_STREAM)).config
            assert failures.discard == DiscardPolicy.OLD  # history: the oldest goes first
            assert failures.max_bytes == settings.failures_max_bytes
            dead = (await js.stream_info(layout.DEAD_STREAM)).config
            assert (dead.max_age, dead.discard) == (3600.0, DiscardPolicy.NEW)
            assert dead.max_msgs_per_subject == 1  # one letter per job, a rewrite replaces it
            assert dead.subjects == [layout.DEAD_SUBJECTS, layout.ORIGINAL_SUBJECTS]
            for bucket in (layout.BREAKER_BUCKET, layout.SAGA_BUCKET, layout.RESULT_BUCKET,
                           layout.ATTEMPT_BUCKET):  # fmt: skip
                config = (await js.stream_info(f"KV_{bucket}")).config
                assert config.max_bytes is not None, bucket
                assert config.max_bytes > 0, bucket
        finally:
            await nc.close()

    asyncio.run(main())


def test_a_full_job_stream_refuses_the_enqueue_and_keeps_every_stored_job(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url, storage=StorageSettings(jobs_max_bytes=8 * 1024)) as client:
            stored = 0
            refusal: StreamFullError | None = None
            while refusal is None:
                try:
                    await client.enqueue(worker_jobs.add, stored, 1)
                    stored += 1
                except StreamFullError as exc:
                    refusal = exc
            assert "the job stream NAQ_JOBS is full" in str(refusal)
            assert stored > 10
            nc = await nats.connect(nats_url)
            info = await nc.jetstream().stream_info(layout.JOB_STREAM)
            await nc.close()
            assert info.state.messages == stored  # none discarded to make room

    asyncio.run(main())


def test_a_dead_letter_the_full_dead_letter_stream_refuses_is_not_acked_away(
    nats_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "FULL_RETRY_DELAY", 0.5)
    storage = StorageSettings(dead_max_bytes=16 * 1024)

    async def main() -> None:
        async with Client(nats_url, storage=storage) as client:
            await client.connect()
            nc = await nats.connect(nats_url)
            js = nc.jetstream()
            filler = 0
            while True:  # fill the dead-letter stream with something else
                try:
                    await js.publish(f"naq.dead.other.dead.f{filler}", b"x" * 1024)
                except nats.js.errors.APIError:
                    break
                filler += 1
            async with working(nats_url, storage=storage):
                job = await client.enqueue(worker_jobs.raises, "value", result_ttl=60)

                async def refused() -> bool:
                    return "is full" in caplog.text

                await until(refused)
                info = await js.stream_info(layout.JOB_STREAM)
                assert info.state.messages == 1  # still queued, not acked away
                await js.purge_stream(layout.DEAD_STREAM)  # an operator makes room

                async def dead() -> bool:
                    return str(await job.status()) == "failed"

                await until(dead)
            letters = await client.get_dead_letter_jobs("default.dead")
            assert [letter.job.id for letter in letters if letter.job] == [job.job_id]
            assert (await js.stream_info(layout.JOB_STREAM)).state.messages == 0
            await nc.close()

    with caplog.at_level(logging.ERROR, logger="naq_resilience"):
        asyncio.run(main())


def test_a_finished_sagas_purge_marker_expires(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            job = await client.enqueue(worker_jobs.order, "book", result_ttl=60)
            assert await job.result(timeout=30) == "book"
            nc = await nats.connect(nats_url)
            try:
                marker = await nc.jetstream().get_last_msg(
                    f"KV_{layout.SAGA_BUCKET}", f"$KV.{layout.SAGA_BUCKET}.{job.job_id}"
                )
            finally:
                await nc.close()
            assert marker.headers is not None
            assert marker.headers.get("KV-Operation") == "PURGE"
            assert marker.headers.get("Nats-TTL") == str(int(stores.PURGE_MARKER_TTL))

    asyncio.run(main())


def test_replicas_that_differ_from_an_existing_stream_are_reported(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_layout(js, StorageSettings())
            await ensure_layout(js, StorageSettings(replicas=3))  # existing: left as it is
            assert (await js.stream_info(layout.JOB_STREAM)).config.num_replicas == 1
        finally:
            await nc.close()

    with caplog.at_level(logging.WARNING, logger="naq_resilience"):
        asyncio.run(main())
    warned = [r.message for r in caplog.records if "replica" in r.message]
    expected = "stream NAQ_JOBS has 1 replica but the settings ask for 3"
    assert any(m.startswith(expected) for m in warned)
    assert any(m.startswith(f"bucket {layout.ATTEMPT_BUCKET} has 1 replica") for m in warned)


def test_a_dead_letter_stream_of_an_earlier_version_gets_what_the_layout_needs(
    nats_url: str,
) -> None:
    async def main() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            # As version 0.1 created it, with a letter written twice (an ack lost).
            await js.add_stream(
                name=layout.DEAD_STREAM, subjects=[layout.DEAD_SUBJECTS], allow_msg_ttl=True
            )
            for _ in range(2):
                await js.publish(layout.dead_subject("default.dead", "job-1"), b"{}")
            await ensure_layout(js, StorageSettings())
            dead = await js.stream_info(layout.DEAD_STREAM)
            assert dead.config.subjects == [layout.DEAD_SUBJECTS, layout.ORIGINAL_SUBJECTS]
            assert dead.config.max_msgs_per_subject == 1
            assert dead.state.messages == 1  # the older copy went with the new limit
            await js.publish(layout.dead_subject("default.dead", "job-1"), b"{}")
            assert (await js.stream_info(layout.DEAD_STREAM)).state.messages == 1
        finally:
            await nc.close()

    asyncio.run(main())
