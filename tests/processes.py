"""Real processes for the tests: `naq worker` subprocesses, and what their jobs traced.

A job in worker_jobs.py writes one line per event to `$NAQ_TEST_TRACE_DIR/<pid>.log`,
so a test counts what ran, and where, even across killed processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from naq_resilience import Client, JobStatus
from naq_resilience.models import DeadLetter

TESTS = Path(__file__).parent


class WorkerProcess:
    """`naq worker default --import worker_jobs ...` in its own process group."""

    def __init__(
        self,
        url: str,
        trace: Path,
        *options: str,
        name: str = "worker",
        queues: tuple[str, ...] = ("default",),
        wait: bool = True,
    ) -> None:
        env = dict(os.environ)
        env.update(
            NAQ_NATS_URL=url,
            NAQ_TEST_TRACE_DIR=str(trace),
            PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
        )
        self.log_path = trace / f"{name}.stderr"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "naq_resilience.cli", "worker", *queues,
             "--import", "worker_jobs", "--log-level", "INFO", *options],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        if wait:
            self.wait_for_log("started")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker never logged {text!r}:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


def events(trace: Path) -> list[str]:
    lines: list[str] = []
    for path in sorted(trace.glob("*.log")):
        lines += path.read_text().splitlines()
    return lines


def wait_until(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def enqueue(url: str, func: Any, calls: list[tuple[Any, ...]], **options: Any) -> list[str]:
    async def main() -> list[str]:
        async with Client(url) as client:
            jobs = await client.enqueue_many(func, calls, **options)
        return [job.job_id for job in jobs]

    return asyncio.run(main())


def status(url: str, job_id: str) -> JobStatus:
    async def main() -> JobStatus:
        async with Client(url) as client:
            return await client.job_status(job_id)

    return asyncio.run(main())


def dead_letters(url: str, name: str = "default.dead") -> list[DeadLetter]:
    async def main() -> list[DeadLetter]:
        async with Client(url) as client:
            return await client.get_dead_letter_jobs(name, limit=10_000)

    return asyncio.run(main())
