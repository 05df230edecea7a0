"""`naq status` and `naq breakers`: what the fleet shows of itself, on a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from naq_resilience import CircuitState, Client, Worker, cli, get_breaker

import worker_jobs

pytestmark = pytest.mark.usefixtures("clean_jetstream")
BREAKER = "tests:shared-dependency"  # worker_jobs.call_dependency's


@asynccontextmanager
async def working(url: str) -> AsyncIterator[Worker]:
    worker = Worker(
        "default", nats_url=url, imports=["worker_jobs"], concurrency=2, shutdown_grace=0.5
    )
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    for _ in range(600):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} never happened")


def test_status_shows_queues_workers_and_dead_letters(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            async with working(nats_url) as worker:
                await client.enqueue(worker_jobs.raises, "value")
                await until(lambda: client.count_dead_letters(), "the dead letter")
                for n in range(2):
                    await client.enqueue(worker_jobs.slow, 30, f"held-{n}")
                for n in range(3):
                    await client.enqueue(worker_jobs.add, n, n)

                async def busy() -> Any:
                    status = await client.fleet_status()
                    me = [w for w in status.workers if w.worker_id == worker.worker_id]
                    return status if me and me[0].running == 2 and status.queues else None

                status = await until(busy, "the worker running both slow jobs")
                [queue] = status.queues
                assert queue.name == "default"
                assert queue.in_flight == 2
                assert queue.waiting == 3
                [me] = [w for w in status.workers if w.worker_id == worker.worker_id]
                assert (me.queues, me.concurrency, me.stopping) == (["default"], 2, False)
                worker.stop()  # the slow jobs are handed back at the grace's end
            after = await client.fleet_status()
            assert worker.worker_id not in [w.worker_id for w in after.workers]
            dead = {d.dead_letter_queue: d.letters for d in after.dead_letters}
            assert dead == {"default.dead": 1}
            assert after.dead_letters_total == 1

    asyncio.run(main())


def test_breakers_open_and_close_on_every_worker(nats_url: str) -> None:
    local = get_breaker(BREAKER)

    async def main() -> None:
        async with Client(nats_url) as client, working(nats_url):
            assert await client.list_breakers() == []
            record = await client.open_breaker(BREAKER)
            assert record.state == "open"
            await until(lambda: _is(local.state, CircuitState.OPEN), "the worker's breaker open")
            [listed] = await client.list_breakers()
            assert (listed.name, listed.state, listed.updated_by) == (
                BREAKER,
                "open",
                "naq-operator",
            )
            await client.close_breaker(BREAKER)
            await until(lambda: _is(local.state, CircuitState.CLOSED), "the breaker closed")
            await client.reset_breaker(BREAKER)
            assert await client.list_breakers() == []

    asyncio.run(main())


async def _is(state: CircuitState, wanted: CircuitState) -> bool:
    return state is wanted


def test_the_commands_for_people_and_for_scripts(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--json", "--nats-url", nats_url]) == 0
    status = json.loads(capsys.readouterr().out)
    assert set(status) >= {"queues", "workers", "breakers", "dead_letters", "dead_letters_total"}
    assert cli.main(["status", "--nats-url", nats_url]) == 0
    out = capsys.readouterr().out
    assert "no live workers" in out
    assert "DEAD-LETTER QUEUE" in out
    assert cli.main(["breakers", "list", "--json", "--nats-url", nats_url]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["breakers", "open", "nope", "--nats-url", nats_url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("naq breakers open: no shared breaker 'nope'")
    assert err.count("\n") == 1
