"""Connections that die: a client connects again, a worker exits for its supervisor.

Before, a client whose connection nats-py had closed for good kept it cached (every
later `enqueue_sync` failed until the process restarted), and a worker whose fetch
loop met a closed connection stayed alive fetching nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from naq_resilience import Client, ConnectionSettings, JobStatus, enqueue_sync
from naq_resilience.jetstream.server import EmbeddedServer, find_nats_server

import worker_jobs
from conftest import free_port
from processes import WorkerProcess, events, wait_until


def test_reconnecting_forever_is_the_default() -> None:
    assert ConnectionSettings("nats://127.0.0.1:4222").max_reconnect_attempts == -1


def test_a_client_whose_connection_closed_for_good_connects_again_on_next_use(
    fresh_nats_server: EmbeddedServer,
) -> None:
    url = fresh_nats_server.url
    settings = ConnectionSettings(url, max_reconnect_attempts=1, reconnect_time_wait=0.1)

    async def main() -> None:
        client = Client(settings=settings)
        try:
            first = await client.enqueue(worker_jobs.add, 1, 2)
            connection = client._nc
            assert connection is not None
            fresh_nats_server.kill()
            for _ in range(200):  # nats-py gives up after its one reconnect attempt
                if connection.is_closed:
                    break
                await asyncio.sleep(0.05)
            assert connection.is_closed
            fresh_nats_server.restart()
            second = await client.enqueue(worker_jobs.add, 3, 4)
            assert client._nc is not connection
            assert await second.status() is JobStatus.QUEUED
            assert await first.status() is JobStatus.QUEUED  # the store survived the kill
        finally:
            await client.close()

    asyncio.run(main())


def test_enqueue_sync_works_again_after_an_outage(
    fresh_nats_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAQ_NATS_URL", fresh_nats_server.url)
    before = enqueue_sync(worker_jobs.add, 1, 2)
    fresh_nats_server.kill()
    time.sleep(3)  # an outage of several reconnect attempts
    fresh_nats_server.restart()
    after = enqueue_sync(worker_jobs.add, 3, 4)
    assert after.status() is JobStatus.QUEUED
    assert before.status() is JobStatus.QUEUED


class AuthServer:
    """A nats-server with one user, whose password a config reload can change."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.config = tmp / "server.conf"
        self.store = tmp / "store"
        self._write("one")
        self.proc = subprocess.Popen(
            [find_nats_server(), "-c", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def _write(self, password: str) -> None:
        self.config.write_text(
            f'port: {self.port}\nhttp_port: {self.http_port}\nhost: "127.0.0.1"\n'
            f'jetstream {{ store_dir: "{self.store}" }}\n'
            f'authorization {{ users = [ {{user: "w", password: "{password}"}} ] }}\n'
        )

    def url(self, password: str = "one") -> str:
        return f"nats://w:{password}@127.0.0.1:{self.port}"

    def revoke(self) -> None:
        """Change the password and reload: the server disconnects the old sessions."""
        self._write("two")
        os.kill(self.proc.pid, signal.SIGHUP)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[AuthServer]:
    server = AuthServer(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                asyncio.run(_ping(server.url()))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield server
    finally:
        server.close()


async def _ping(url: str) -> None:
    async with Client(url) as client:
        await client.connect()


def test_a_worker_whose_connection_is_closed_for_good_exits_non_zero(
    auth_server: AuthServer, trace: Path, workers: list[WorkerProcess]
) -> None:
    async def enqueue() -> None:
        async with Client(auth_server.url()) as client:
            await client.enqueue(worker_jobs.slow, 30.0, "held")

    asyncio.run(enqueue())
    worker = WorkerProcess(auth_server.url(), trace, name="w")
    workers.append(worker)
    wait_until(lambda: "start held" in events(trace), what="the job starts")
    auth_server.revoke()
    assert worker.proc.wait(30) == 3  # not idling alive: out, for a supervisor to restart
    log = worker.log()
    assert "closed for good" in log
    assert "exiting so a supervisor restarts it" in log
    assert "done held" not in events(trace)


def test_closing_a_client_while_its_server_is_away_closes_its_connection(
    fresh_nats_server: EmbeddedServer,
) -> None:
    async def main() -> None:
        client = Client(fresh_nats_server.url)
        await client.connect()
        connection = client._nc
        assert connection is not None
        fresh_nats_server.kill()
        for _ in range(200):
            if connection.is_reconnecting:
                break
            await asyncio.sleep(0.05)
        assert connection.is_reconnecting
        await client.close()
        assert connection.is_closed  # not left reconnecting for ever behind the client

    asyncio.run(main())
