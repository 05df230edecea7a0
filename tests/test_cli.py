"""The `naq` command; `naq server` runs as a real subprocess with a real nats-server."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from naq_resilience import cli
from naq_resilience.jetstream.connection import connect, ensure_jetstream
from naq_resilience.jetstream.server import find_nats_server

from conftest import ROOT, NaqServer, free_port, wait_gone


async def use(url: str) -> int:
    nc = await connect(url=url)
    try:
        await ensure_jetstream(nc)
        js = nc.jetstream()
        await js.add_stream(name="CLI", subjects=["cli.>"])
        ack = await js.publish("cli.hello", b"hi")
        return ack.seq
    finally:
        await nc.close()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_naq_server_serves_jetstream_and_stops_on_a_signal(
    naq_servers: list[NaqServer], tmp_path: Path, stop_signal: signal.Signals
) -> None:
    port = free_port()
    server = NaqServer("--port", str(port), env={"XDG_DATA_HOME": str(tmp_path)})
    naq_servers.append(server)
    banner = server.read_until("stop with Ctrl-C")
    url = f"nats://127.0.0.1:{port}"
    match = re.search(r"NATS with JetStream at (\S+) \(nats-server pid (\d+)\)", banner)
    assert match is not None, banner
    assert match.group(1) == url
    pid = int(match.group(2))
    store = tmp_path / "naq-resilience" / "jetstream"
    assert f"store:   {store}" in banner
    assert f"NAQ_NATS_URL={url}" in banner

    assert asyncio.run(use(url)) == 1

    server.process.send_signal(stop_signal)
    code, out, err = server.finish()
    assert code == 0, err
    assert out.rstrip().endswith("naq server: stopped")
    assert wait_gone(pid)
    assert (store / "jetstream").is_dir()
    assert (store / "nats-server.log").is_file()


def test_naq_server_keeps_its_store_between_runs(
    naq_servers: list[NaqServer], tmp_path: Path
) -> None:
    port, store = free_port(), tmp_path / "store"
    for expected_seq in (1, 2):
        server = NaqServer("--port", str(port), "--store-dir", str(store))
        naq_servers.append(server)
        server.read_until("stop with Ctrl-C")
        assert asyncio.run(publish(f"nats://127.0.0.1:{port}", create=expected_seq == 1)) == (
            expected_seq
        )
        server.process.send_signal(signal.SIGTERM)
        assert server.finish()[0] == 0


async def publish(url: str, *, create: bool) -> int:
    nc = await connect(url=url)
    try:
        js = nc.jetstream()
        if create:
            await js.add_stream(name="KEEP", subjects=["keep.>"])
        return (await js.publish("keep.x", b"x")).seq
    finally:
        await nc.close()


def test_naq_server_on_a_taken_port_explains_and_exits_1(
    naq_servers: list[NaqServer], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = NaqServer("--port", str(port), "--store-dir", str(tmp_path / "s"))
        naq_servers.append(server)
        code, _, err = server.finish()
    assert code == 1
    # Said first, in one line, before any nats-server starts: not the last line of its log.
    assert err.startswith(f"naq server: the client port {port} on 127.0.0.1 is taken")
    assert f"NAQ_NATS_URL=nats://127.0.0.1:{port}" in err
    assert err.count("\n") == 1


def test_naq_server_refuses_one_port_for_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["server", "--port", "4333", "--monitor-port", "4333"]) == 1
    assert "port and monitor_port must differ" in capsys.readouterr().err


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main([])
    assert caught.value.code == 2


def test_subcommands_come_from_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    def add_hello(commands: cli.Subparsers[argparse.ArgumentParser]) -> None:
        parser = commands.add_parser("hello")
        parser.add_argument("--code", type=int, default=0)
        parser.set_defaults(handler=lambda args: args.code)

    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, add_hello))
    assert cli.main(["hello", "--code", "7"]) == 7
    assert "server" in cli.build_parser().format_help()


def test_naq_worker_accepts_strict() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["worker", "--strict", "--import", "jobs"]).strict is True
    assert parser.parse_args(["worker", "--import", "jobs"]).strict is False


@pytest.mark.parametrize(
    ("argv", "passed"), [(["--strict"], {"strict": True}), ([], {"strict": False})]
)
def test_naq_worker_hands_strict_to_the_worker(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], passed: dict[str, object]
) -> None:
    """The flag reaches the Worker (which also reads NAQ_STRICT: see the test below)."""
    from naq_resilience.jetstream import worker
    from naq_resilience.ops import logging as naq_logging

    built: list[dict[str, object]] = []

    class FakeWorker:
        has_jobs = True

        def __init__(self, queues: list[str], **options: object) -> None:
            built.append(options)

        def run_forever(self) -> None:
            pass

    monkeypatch.setattr(worker, "Worker", FakeWorker)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command puts the cwd on it
    monkeypatch.setattr(naq_logging, "setup_logging", lambda *args, **kwargs: None)
    assert cli.main(["worker", *argv]) == 0
    [options] = built
    assert {key: options[key] for key in options if key == "strict"} == passed


def test_naq_worker_hands_unroutable_after_to_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Absent, None: the Worker then reads NAQ_UNROUTABLE_AFTER (or takes 300 s)."""
    from naq_resilience.jetstream import worker
    from naq_resilience.ops import logging as naq_logging

    built: list[dict[str, object]] = []

    class FakeWorker:
        has_jobs = True

        def __init__(self, queues: list[str], **options: object) -> None:
            built.append(options)

        def run_forever(self) -> None:
            pass

    monkeypatch.setattr(worker, "Worker", FakeWorker)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(naq_logging, "setup_logging", lambda *args, **kwargs: None)
    assert cli.main(["worker", "--unroutable-after", "90"]) == 0
    assert cli.main(["worker"]) == 0
    assert [options["unroutable_after"] for options in built] == [90.0, None]


def test_naq_strict_turns_strict_mode_on_without_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from naq_resilience import Worker

    monkeypatch.setenv("NAQ_STRICT", "1")
    assert Worker("default", strict=False).registry.strict
    monkeypatch.setenv("NAQ_STRICT", "0")
    assert not Worker("default").registry.strict


def test_naq_worker_on_a_server_without_jetstream_explains_and_exits_1() -> None:
    port = free_port()
    server = subprocess.Popen(
        [find_nats_server(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "nats-server exited"
                assert time.monotonic() < deadline, "nats-server did not listen"
                time.sleep(0.01)
        done = subprocess.run(
            [sys.executable, "-m", "naq_resilience.cli", "worker", "--nats-url", url],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
    assert done.returncode == 1, done.stderr
    assert done.stderr.endswith(
        f"naq worker: the NATS server at {url} has no JetStream (nothing answers the JetStream "
        "API and the server does not announce it): start nats-server with -js, or use "
        "`naq server`\n"
    )
    assert "Traceback" not in done.stderr
