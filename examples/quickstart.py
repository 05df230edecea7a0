"""Quickstart: enqueue jobs on NATS JetStream, run a worker, see what became of each.

    python examples/quickstart.py

It uses the NATS server at NAQ_NATS_URL (default nats://127.0.0.1:4222) and, when none
answers, starts an embedded one of its own (`pip install 'naq-resilience[server]'`).
In production the worker is its own process: `naq worker default --import quickstart`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

from naq_resilience import (
    Client,
    ConnectionSettings,
    EmbeddedServer,
    NatsUnavailableError,
    Worker,
    retry,
)
from naq_resilience.jetstream.connection import connect

flaky = random.Random(4)


@retry(max_retries=4, retry_delay=0.05, retry_strategy="exponential")
async def send_welcome_email(user_id: int, email: str) -> str:
    """The mail server drops one connection in three; the broker retries the job."""
    if flaky.random() < 0.33:
        raise ConnectionError("mail server closed the connection")
    return f"welcome mail for user {user_id} sent to {email}"


def make_thumbnail(path: str, width: int) -> str:
    """A sync job: it runs on the worker's thread pool, not on its event loop."""
    return f"{path} -> {path.rsplit('.', 1)[0]}-{width}px.jpg"


async def charge_card(order_id: int, cents: int) -> str:
    """Bad input is not worth retrying: ValueError goes to the dead-letter queue at once."""
    if cents <= 0:
        raise ValueError(f"order {order_id}: cannot charge {cents} cents")
    return f"charged {cents} cents for order {order_id}"


@contextlib.asynccontextmanager
async def nats_server() -> AsyncIterator[str]:
    """The configured server if one answers, else an embedded one for this run."""
    settings = ConnectionSettings.from_env()
    try:
        nc = await connect(settings)
    except NatsUnavailableError:
        with EmbeddedServer() as server:
            print(f"no NATS server at {settings.url}; started one at {server.url}")
            yield server.url
        return
    await nc.close()
    yield settings.url


async def main() -> None:
    async with nats_server() as url:
        worker = Worker(
            "default", nats_url=url, functions=[send_welcome_email, make_thumbnail, charge_card]
        )
        running = asyncio.create_task(worker.run())
        async with Client(url) as client:
            jobs = [
                await client.enqueue(send_welcome_email, user, f"user{user}@example.com",
                                     result_ttl=300)
                for user in range(1, 6)
            ]  # fmt: skip
            jobs.append(await client.enqueue(make_thumbnail, "cat.png", width=128, result_ttl=300))
            jobs.append(await client.enqueue(charge_card, 7, -5, result_ttl=300))
            for job in jobs:
                try:
                    print(f"{job.function}: {await job.result(timeout=30)}")
                except Exception as exc:
                    print(f"{job.function}: FAILED: {exc}")
            ours = {job.job_id for job in jobs}
            for letter in await client.get_dead_letter_jobs("default.dead", limit=1000):
                if letter.job is not None and letter.job.id in ours:
                    print(f"dead letter {letter.job.id}: {letter.reason}")
        worker.stop()
        await running
        print(f"worker processed {worker.processed} jobs; {worker.failed} attempts failed")


if __name__ == "__main__":
    asyncio.run(main())
