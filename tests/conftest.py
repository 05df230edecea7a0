"""Shared test helpers. No test here sleeps for real: delays are injected or off."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from naq_resilience.policies import classify

from processes import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test, so a fixture can tell it failed (the
    browser tests take a screenshot then)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _fresh_error_defaults() -> Iterator[None]:
    """Tests that reconfigure the global classification must not leak into others."""
    yield
    classify.reset_errors()


class FakeClock:
    """A monotonic clock that moves only when told to (or when something 'sleeps')."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie waiting for init to reap it counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def trace(tmp_path: Path) -> Iterator[Path]:
    os.environ["NAQ_TEST_TRACE_DIR"] = str(tmp_path)
    yield tmp_path
    os.environ.pop("NAQ_TEST_TRACE_DIR", None)


@pytest.fixture
def workers(trace: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NaqServer:
    """`python -m naq_resilience.cli server ...`, its output read line by line by a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "naq_resilience.cli", "server", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read_until(self, marker: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.seen):
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert line is not None, f"naq server ended before {marker!r}: {self.seen}"
            self.seen.append(line)
        return "".join(self.seen)

    def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        code = self.process.wait(timeout)
        self.reader.join(timeout)
        while (line := self.lines.get_nowait()) is not None:
            self.seen.append(line)
        assert self.process.stderr is not None
        return code, "".join(self.seen), self.process.stderr.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def naq_servers() -> Iterator[list[NaqServer]]:
    started: list[NaqServer] = []
    yield started
    for server in started:
        server.close()


@pytest.fixture
def fleet(nats_url: str, trace: Path, clean_jetstream: str) -> Iterator[tuple[Any, Path]]:
    """The dashboard (a `naq dashboard` process) over a worker that dead-lettered jobs
    of several kinds, and schedules; with the worker's trace directory."""
    from dashboard_helpers import start_fleet

    board, worker = start_fleet(nats_url, trace)
    try:
        yield board, trace
    finally:
        board.close()
        worker.stop()
