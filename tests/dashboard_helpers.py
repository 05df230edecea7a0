"""`naq dashboard` as a real subprocess, and a fleet with something to show: used by the
dashboard tests and by docs/gen_screenshots.py."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from naq_resilience import Client

import worker_jobs

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).parent
NASTY = "<img src=x onerror=alert(1)><script>alert(2)</script>"
"""A message from an arbitrary exception: the pages must show it as text."""


class DashboardProcess:
    """`python -m naq_resilience.cli dashboard --port 0 ...`; `url` once it serves."""

    def __init__(self, nats_url: str, *args: str, sample_every: float = 0.5) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "naq_resilience.cli", "dashboard", "--port", "0",
             "--nats-url", nats_url, "--sample-every", str(sample_every), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_url()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _wait_url(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            if line is None:
                raise AssertionError(f"naq dashboard ended: {''.join(self.output)}")
            self.output.append(line)
            if "serving http://" in line:
                return line.split("serving ", 1)[1].split()[0]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def request(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with the standard library; errors are answers, not exceptions."""
    data = None
    sent = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    req = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


async def until(check: Any, what: str, tries: int = 1200) -> Any:
    for _ in range(tries):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} never happened")


async def failing_jobs(client: Client, dependency_down: int = 2) -> None:
    """Jobs that end as dead letters of several kinds, once a worker runs them."""
    for kind in ("value", "value", "connection", "timeout", "security"):
        await client.enqueue(worker_jobs.raises, kind, max_retries=1)
    await client.enqueue(worker_jobs.raises, NASTY, max_retries=0)
    for n in range(dependency_down):  # fails until its flag file exists
        await client.enqueue(worker_jobs.call_dependency, f"dep-{n}", max_retries=0)


async def schedules(client: Client) -> None:
    await client.schedule(worker_jobs.add, 1, 2, cron="0 0 3 * * *", job_id="nightly-report")
    await client.schedule(worker_jobs.add, 2, 3, interval=3600, job_id="hourly-sync")
    await client.enqueue_in(7200, worker_jobs.add, 3, 4, job_id="one-off-later")


def start_fleet(nats_url: str, trace: Path) -> tuple[DashboardProcess, Any]:
    """A worker that has dead-lettered `failing_jobs`, the `schedules`, and the
    dashboard serving them; the caller closes the dashboard and stops the worker."""
    from processes import WorkerProcess

    worker = WorkerProcess(nats_url, trace)

    async def fill() -> None:
        async with Client(nats_url) as client:
            await failing_jobs(client)
            await schedules(client)

            async def eight() -> bool:
                return await client.count_dead_letters() >= 8

            await until(eight, "eight dead letters")

    try:
        asyncio.run(fill())
        return DashboardProcess(nats_url), worker
    except BaseException:
        worker.stop()
        raise
