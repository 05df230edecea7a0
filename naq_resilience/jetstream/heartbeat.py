"""Heartbeats for running jobs, sent from a thread of their own, and a watch on the loop.

JetStream redelivers a message whose worker shows no sign of life within `ack_wait`.
The sign is an `in_progress` (`+WPI`) published to the message's reply subject. If
the worker's event loop sent it, an `async def` job that blocks the loop (a `time.sleep`,
a CPU-bound loop, a blocking client) would silence the heartbeats of every job on that
worker, and the broker would hand those jobs to another worker while they still run.
So heartbeats go out from this thread, on a connection of its own: any connection of
the account may publish to a reply subject.

The same thread watches the loop: the worker's loop stamps a time a few times a second,
and when the stamp goes stale the thread looks at the loop thread's stack for the job
being run (the `env` of the worker's per-job coroutine) and names it in a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable
from typing import Any

from nats.aio.client import Client as NatsClient

from naq_resilience.jetstream.connection import ConnectionSettings, connect

__all__ = ["Heartbeats"]

log = logging.getLogger("naq_resilience.worker")

_WPI = b"+WPI"
_TICK = 0.25
BLOCKED_AFTER = 2.0
"""Seconds without a loop stamp after which the loop counts as blocked."""

Running = Callable[[], Iterable[tuple[str, float]]]
"""(reply subject, unix start time) of every running job."""


class Heartbeats:
    """`in_progress` for jobs running longer than `period`, every `period`, from a thread."""

    def __init__(
        self,
        settings: ConnectionSettings,
        running: Running,
        period: float,
        job_code: types.CodeType,
        name: str,
    ) -> None:
        self._settings = settings
        self._running = running
        self.period = period
        self._job_code = job_code
        self._name = name
        self._loop_thread = threading.get_ident()
        self.stamp = time.monotonic()
        self._blocked_since: float | None = None
        self._beats: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="naq-heartbeats", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start the thread; returns once its connection is up (or raises why not)."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    async def stamp_loop(self) -> None:
        """Run on the worker's loop: proves the loop turns."""
        while True:
            self.stamp = time.monotonic()
            await asyncio.sleep(_TICK / 2)

    # ------------------------------------------------------------------ the thread
    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        try:
            nc = await connect(
                self._settings, name=self._name, max_reconnect_attempts=-1
            )
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                await asyncio.sleep(_TICK)
                self._watch_loop()
                await self._beat(nc)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _beat(self, nc: NatsClient) -> None:
        now = time.time()
        due = now - self.period
        beats = self._beats
        seen: set[str] = set()
        for reply, started in self._snapshot():
            seen.add(reply)
            if started <= due and beats.get(reply, started) <= due:
                try:
                    await nc.publish(reply, _WPI)
                except Exception as exc:  # reconnecting: the next tick tries again
                    log.debug("heartbeat for %s not sent: %r", reply, exc)
                    continue
                beats[reply] = now
        for reply in [r for r in beats if r not in seen]:
            del beats[reply]

    def _snapshot(self) -> list[tuple[str, float]]:
        # The worker changes its running set on its own thread; a copy taken while it
        # does may fail, and the next tick is soon.
        for _ in range(3):
            with contextlib.suppress(RuntimeError):
                return list(self._running())
        return []

    def _watch_loop(self) -> None:
        stalled = time.monotonic() - self.stamp
        if stalled < BLOCKED_AFTER:
            if self._blocked_since is not None:
                log.warning(
                    "the worker's event loop was blocked for %.1f s", time.monotonic() -
                    self._blocked_since,
                )  # fmt: skip
                self._blocked_since = None
            return
        if self._blocked_since is not None:
            return
        self._blocked_since = self.stamp
        log.warning(
            "the worker's event loop is blocked (%.1f s so far) by %s: an async def job must "
            "not block; await its I/O, move blocking calls to asyncio.to_thread(), or make it "
            "a plain def (run on a thread). Heartbeats go on, but no other async job runs",
            stalled, self._blocker(),
        )  # fmt: skip

    def _blocker(self) -> str:
        """The job whose code the loop thread is running, from the thread's stack."""
        frame: types.FrameType | None = sys._current_frames().get(self._loop_thread)
        while frame is not None:
            if frame.f_code is self._job_code:
                env: Any = frame.f_locals.get("env")
                job_id = getattr(env, "id", "?")
                return f"job {job_id} ({getattr(env, 'function', '?')})"
            frame = frame.f_back
        return "code outside any job (a hook, a callback or the library itself)"
