"""Shared test helpers. No test here sleeps for real: delays are injected or off."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from naq_resilience.policies import classify

from processes import WorkerProcess


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
