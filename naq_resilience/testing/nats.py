"""pytest fixtures for tests against a real NATS JetStream server.

Registered by the naq-resilience pytest plugin. Importing this module starts nothing
and imports neither nats-py nor the server module: the plugin loads in every pytest
session of every project that installed us, and only a test that asks for one of
these fixtures should pay for a server.

- `nats_server` (session): an `EmbeddedServer` with a temporary file store, started
  the first time a test asks for it. `nats_server.kill()` (SIGKILL, a crashed broker)
  and `nats_server.restart()` (same port, same store) work mid-test; a test that kills
  it should restart it in a `finally`, or better use `fresh_nats_server`. When
  `NAQ_TEST_NATS_URL` is set, it is an `ExternalNatsServer` for that URL instead, and
  kill, stop and restart skip the test (an external server is not ours to kill).
- `nats_url` (session): the server's URL, for tests and for workers started as
  subprocesses.
- `nats_client` (function): a `NatsClientFactory`. pytest-asyncio is not a dependency,
  and a nats-py client belongs to the event loop that created it, so a fixture cannot
  hand a test a live connection: the test opens one in its own loop, inside
  `asyncio.run`, with `async with nats_client() as nc:`. It works the same under
  pytest-asyncio or anyio.
- `clean_jetstream` (function): deletes every stream on the server before the test (KV
  buckets and object stores are streams too), so tests do not see each other's data;
  its value is the URL. It also restarts the session server if an earlier test killed
  it and left it down. With `NAQ_TEST_NATS_URL` it wipes that server: point it at a
  server you can wipe.
- `fresh_nats_server` (function): an `EmbeddedServer` of the test's own, for tests
  that kill, restart or fill the server, so the session server stays intact for the
  others; closed (store removed) at teardown. Skips under `NAQ_TEST_NATS_URL`.
- `nats_cluster` (function): a fresh 3-node `EmbeddedCluster` of the test's own,
  already serving JetStream (meta leader elected), for replicated streams and
  failover: `nats_cluster.url` lists every node for a client, `kill(i)`, `stop(i)`
  and `restart(i)` act on node `i`, and `stream_leader(name)` / `meta_leader()` say
  which node to kill. Closed (stores removed) at teardown; a start costs about a
  second, so only tests that need a cluster should ask. Skips under
  `NAQ_TEST_NATS_URL`.

Example::

    def test_roundtrip(nats_client, clean_jetstream):
        async def main():
            async with nats_client() as nc:
                js = nc.jetstream()
                await js.add_stream(name="T", subjects=["t.>"])
                await js.publish("t.1", b"x")

        asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar

import pytest

if TYPE_CHECKING:
    from nats.aio.client import Client

    from naq_resilience.jetstream.cluster import EmbeddedCluster
    from naq_resilience.jetstream.server import EmbeddedServer

__all__ = ["TEST_URL_ENV", "ExternalNatsServer", "NatsClientFactory", "NatsTestServer"]

TEST_URL_ENV = "NAQ_TEST_NATS_URL"

NatsTestServer: TypeAlias = "EmbeddedServer | ExternalNatsServer"
_Startable = TypeVar("_Startable", "EmbeddedServer", "EmbeddedCluster")


class ExternalNatsServer:
    """The server named by `NAQ_TEST_NATS_URL`: usable, but not ours to kill or restart."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def running(self) -> bool:
        return True

    def _unavailable(self, action: str) -> NoReturn:
        pytest.skip(
            f"cannot {action} the NATS server: {TEST_URL_ENV} points the tests at an "
            "external server; unset it to run this test against an embedded one"
        )

    def start(self) -> None:
        self._unavailable("start")

    def stop(self, timeout: float = 5.0) -> None:
        self._unavailable("stop")

    def kill(self) -> None:
        self._unavailable("kill")

    def restart(self) -> None:
        self._unavailable("restart")

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        from naq_resilience.jetstream.connection import ConnectionSettings

        return f"<ExternalNatsServer {ConnectionSettings(self.url).display_url}>"


class NatsClientFactory:
    """Opens nats-py connections to the test server, each closed when its block ends.

    `overrides` are `ConnectionSettings` fields; reconnects are quick by default so a
    test that restarts the server does not wait nats-py's usual two seconds.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, **overrides: Any) -> AbstractAsyncContextManager[Client]:
        return self._open({"reconnect_time_wait": 0.1, **overrides, "url": self.url})

    @asynccontextmanager
    async def _open(self, options: dict[str, Any]) -> AsyncIterator[Client]:
        from naq_resilience.jetstream.connection import connect

        client = await connect(**options)
        try:
            yield client
        finally:
            await client.close()

    def __repr__(self) -> str:
        return f"<NatsClientFactory {self.url}>"


async def _delete_every_stream(url: str) -> None:
    from naq_resilience.jetstream.connection import connect

    client = await connect(url=url, allow_reconnect=False, name="naq-resilience clean_jetstream")
    try:
        js = client.jetstream()
        while names := [info.config.name for info in await js.streams_info()]:
            for name in names:
                if name:
                    await js.delete_stream(name)
    finally:
        await client.close()


def _embedded_server() -> EmbeddedServer:
    from naq_resilience.jetstream.server import EmbeddedServer

    return _started(EmbeddedServer())


def _started(server: _Startable) -> _Startable:
    """`server` started, or closed and the test failed with the fix if there is no binary."""
    from naq_resilience.jetstream.server import NatsServerNotFoundError

    try:
        server.start()
    except NatsServerNotFoundError as error:
        server.close()
        pytest.fail(f"{error}; or set {TEST_URL_ENV} to use a running server", pytrace=False)
    except BaseException:
        server.close()
        raise
    return server


def _skip_under_external_server(fixture: str, what: str) -> None:
    if os.environ.get(TEST_URL_ENV):
        pytest.skip(
            f"{fixture} starts {what} to kill or restart, and {TEST_URL_ENV} "
            "points the tests at an external server; unset it to run this test"
        )


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsTestServer]:
    """The session's NATS server (see the module docstring for kill and restart)."""
    external = os.environ.get(TEST_URL_ENV)
    if external:
        yield ExternalNatsServer(external)
        return
    server = _embedded_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsTestServer) -> str:
    """The session server's URL."""
    return nats_server.url


@pytest.fixture
def nats_client(nats_url: str) -> NatsClientFactory:
    """`async with nats_client() as nc:` inside the test's own event loop."""
    return NatsClientFactory(nats_url)


@pytest.fixture
def clean_jetstream(nats_server: NatsTestServer) -> str:
    """Delete every stream, KV bucket and object store before the test; the server's URL."""
    if not nats_server.running:
        nats_server.restart()
    asyncio.run(_delete_every_stream(nats_server.url))
    return nats_server.url


@pytest.fixture
def fresh_nats_server() -> Iterator[EmbeddedServer]:
    """A server of the test's own, to kill and restart without harming the others."""
    _skip_under_external_server("fresh_nats_server", "a server")
    server = _embedded_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def nats_cluster() -> Iterator[EmbeddedCluster]:
    """A 3-node JetStream cluster of the test's own, serving, closed at teardown."""
    _skip_under_external_server("nats_cluster", "a 3-node cluster")
    from naq_resilience.jetstream.cluster import EmbeddedCluster

    cluster = _started(EmbeddedCluster(3))
    try:
        yield cluster
    finally:
        cluster.close()
