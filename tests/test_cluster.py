"""EmbeddedCluster and `naq server --cluster` against real 3-node nats-server clusters.

A cluster start costs about a second (several on kept stores, where the election waits
out nats-server's election timeout), so each test that needs one does all it can with
it, and nothing here asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import StreamInfo

from naq_resilience import cli
from naq_resilience.jetstream.cluster import EmbeddedCluster
from naq_resilience.jetstream.connection import connect
from naq_resilience.jetstream.server import EmbeddedServer, ServerStartError

from conftest import NaqServer, free_port, wait_gone

STREAM = "ORDERS"
T = TypeVar("T")


async def eventually(
    attempt: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str
) -> T:
    """Retry `attempt` until `done` says yes; a generous bound only so a bug cannot hang."""
    deadline = time.monotonic() + 60
    while True:
        try:
            value = await attempt()
        except (NatsError, TimeoutError):
            pass
        else:
            if done(value):
                return value
        assert time.monotonic() < deadline, f"never saw {what}"
        await asyncio.sleep(0.1)


async def store(nc: Client, payload: bytes) -> int:
    """Publish until acknowledged; the message id makes a retried publish count once."""
    js = nc.jetstream(timeout=2)

    async def publish() -> int:
        ack = await js.publish(
            f"{STREAM.lower()}.new", payload, headers={"Nats-Msg-Id": payload.decode()}
        )
        return ack.seq

    return await eventually(publish, lambda seq: seq > 0, f"{payload!r} stored")


async def stored(nc: Client) -> list[bytes]:
    js = nc.jetstream()
    info = await js.stream_info(STREAM)
    return [
        (await js.get_msg(STREAM, seq)).data or b"" for seq in range(1, info.state.messages + 1)
    ]


def all_replicas_current(info: StreamInfo) -> bool:
    cluster = info.cluster
    if cluster is None or cluster.leader is None:
        return False
    replicas = cluster.replicas or []
    return len(replicas) == 2 and all(r.current and not r.offline for r in replicas)


# --------------------------------------------------------------------------- the cluster


def test_a_replicated_stream_survives_its_leaders_death(nats_cluster: EmbeddedCluster) -> None:
    cluster = nats_cluster
    assert cluster.running
    assert cluster.size == len(cluster.nodes) == 3
    assert cluster.url == ",".join(cluster.urls)
    assert len(set(cluster.urls)) == 3
    assert [node.name for node in cluster.nodes] == [f"{cluster.name}-node-{i}" for i in (1, 2, 3)]
    assert cluster.nodes[cluster.meta_leader()].running
    killed_url = ""

    async def create_kill_and_publish_again() -> int:
        nonlocal killed_url
        async with contextlib.AsyncExitStack() as stack:
            # One client for the whole story, given every node: it must outlive the kill.
            nc = await connect(url=cluster.url, reconnect_time_wait=0.1)
            stack.push_async_callback(nc.close)
            js = nc.jetstream()
            info = await js.add_stream(name=STREAM, subjects=["orders.>"], num_replicas=3)
            assert info.config.num_replicas == 3
            assert await store(nc, b"before") == 1

            leader = await asyncio.to_thread(cluster.stream_leader, STREAM)
            killed_url = cluster.nodes[leader].url
            cluster.kill(leader)
            assert not cluster.nodes[leader].running
            new_leader = leader
            while new_leader == leader:
                new_leader = await asyncio.to_thread(cluster.stream_leader, STREAM)
            assert cluster.nodes[new_leader].running

            assert await store(nc, b"after") == 2
            assert await stored(nc) == [b"before", b"after"]
            return leader

    killed = asyncio.run(create_kill_and_publish_again())
    assert (cluster.store_dir / f"node-{killed + 1}" / "jetstream").is_dir()

    cluster.restart(killed)  # from the main thread, so the kernel guards this node too
    assert cluster.running
    assert cluster.nodes[killed].url == killed_url

    async def rejoined() -> list[bytes]:
        nc = await connect(url=cluster.url)
        try:
            js = nc.jetstream()
            await eventually(
                lambda: js.stream_info(STREAM), all_replicas_current, "3 current replicas"
            )
            return await stored(nc)
        finally:
            await nc.close()

    assert asyncio.run(rejoined()) == [b"before", b"after"]

    pids = [node.pid for node in cluster.nodes]
    cluster.close()
    assert all(pid is not None and wait_gone(pid) for pid in pids)
    assert not cluster.store_dir.exists()


def test_a_node_refuses_a_taken_route_port_in_the_servers_own_words() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = EmbeddedServer(
            cluster_name="lonely",
            cluster_port=port,
            routes=[f"nats-route://127.0.0.1:{port}"],  # never solicited: it exits first
            startup_timeout=5,
        )
        try:
            with pytest.raises(ServerStartError, match="address already in use") as caught:
                node.start()
        finally:
            node.close()
    assert caught.value.port_in_use == port


def test_what_a_cluster_refuses_before_starting_anything(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 nodes"):
        EmbeddedCluster(1)
    (tmp_path / "cluster-name").write_text("kept\n")
    assert EmbeddedCluster(store_dir=tmp_path).name == "kept"
    with pytest.raises(ValueError, match="holds cluster 'kept', not 'other'"):
        EmbeddedCluster(store_dir=tmp_path, name="other")
    with pytest.raises(ValueError, match="must differ"):
        EmbeddedCluster(port=4333, monitor_port=4333)
    with pytest.raises(ValueError, match="need a cluster_name"):
        EmbeddedServer(routes=["nats-route://127.0.0.1:6222"])
    cluster = EmbeddedCluster()
    try:
        with pytest.raises(RuntimeError, match="start the cluster first"):
            _ = cluster.url
        with pytest.raises(RuntimeError, match="start the cluster first"):
            cluster.kill(0)
        assert not cluster.running
    finally:
        cluster.close()
    with pytest.raises(RuntimeError, match="closed"):
        cluster.start()


# --------------------------------------------------------------------------- naq server


async def replicated(url: str, *, create: bool) -> tuple[int, int]:
    """Publish to an R3 stream through `url`: the sequence, and how many replicas follow."""
    nc = await connect(url=url)
    try:
        js = nc.jetstream()
        if create:
            await js.add_stream(name=STREAM, subjects=["orders.>"], num_replicas=3)
        seq = await store(nc, f"run-{'one' if create else 'two'}".encode())
        info = await js.stream_info(STREAM)
        assert info.cluster is not None
        return seq, len(info.cluster.replicas or [])
    finally:
        await nc.close()


def test_naq_server_cluster_serves_replicated_streams_and_keeps_them(
    naq_servers: list[NaqServer], tmp_path: Path
) -> None:
    port, store_dir = free_port(), tmp_path / "store"
    with socket.socket() as blocker:
        # Someone else's listener right above --port: the next nodes must skip it.
        with contextlib.suppress(OSError):
            blocker.bind(("127.0.0.1", port + 1))
            blocker.listen()
        for create in (True, False):
            server = NaqServer("--cluster", "3", "--port", str(port), "--store-dir", str(store_dir))
            naq_servers.append(server)
            banner = server.read_until("export NAQ_NATS_URL=", timeout=60)
            nodes = re.findall(r"node (\d): (\S+) \(nats-server pid (\d+)\)", banner)
            assert [number for number, _, _ in nodes] == ["1", "2", "3"], banner
            urls = [url for _, url, _ in nodes]
            assert urls[0] == f"nats://127.0.0.1:{port}"
            assert all(int(url.rsplit(":", 1)[1]) > port + 1 for url in urls[1:]), urls
            match = re.search(r"export NAQ_NATS_URL=(\S+)", banner)
            assert match is not None
            assert match.group(1) == ",".join(urls)

            seq, followers = asyncio.run(replicated(match.group(1), create=create))
            assert (seq, followers) == ((1, 2) if create else (2, 2))

            server.process.send_signal(signal.SIGTERM)
            code, out, err = server.finish()
            assert code == 0, err
            assert out.rstrip().endswith("naq server: stopped")
            assert all(wait_gone(int(pid)) for _, _, pid in nodes)
    for i in (1, 2, 3):
        assert (store_dir / f"node-{i}" / "jetstream").is_dir()
        assert (store_dir / f"node-{i}" / "nats-server.log").is_file()


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--cluster", "2"], "--cluster 2 is refused: JetStream needs a majority"),
        (["--cluster", "0"], "--cluster 0: the number of nodes must be at least 1"),
        (["--cluster", "-3"], "--cluster -3: the number of nodes must be at least 1"),
        (["--cluster", "3", "--log-file", "x.log"], "--log-file names one log"),
    ],
    ids=["two", "zero", "negative", "log-file"],
)
def test_naq_server_refuses_a_cluster_it_cannot_run_well(
    capsys: pytest.CaptureFixture[str], args: list[str], why: str
) -> None:
    assert cli.main(["server", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"naq server: {why}")
    assert captured.err.count("\n") == 1
