"""State shared through JetStream KV: circuit breakers and compensation logs.

Breakers. Every process keeps its breakers in memory (the decorator's fast path must
not do I/O), and `BreakerSync` shares their transitions: each local transition is
written to the `naq-breakers` bucket with compare-and-set on the key's revision, and
every worker watches the bucket and applies what the others wrote. The KV revision,
not a process's own transition count, is the order everyone agrees on; when our write
loses the race the winner's state is applied here instead. Failure counts between
transitions stay local (publishing each failure would cost a KV write per failing
call), so each worker trips on its own count and all of them see the trip. A
breaker's clock is the process's monotonic clock; on the wire `opened_at` is unix
time, converted at both ends.

Compensation logs. `KVActionLog` keeps a running `@saga` job's completed steps under
the job's id in `naq-sagas`, so a worker that crashes mid-job leaves a log the next
delivery rolls back before running the job again. A sync job (on a worker thread)
waits for each write; an async job runs on the event loop, which must not block, so
its writes are queued in order and may trail the step by a moment. Steps' results and
arguments must be JSON-encodable to survive a crash; anything else is stored as its
`repr` (the in-process rollback still gets the real objects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from naq_resilience.codec import decode
from naq_resilience.models import BreakerRecord, SagaLogRecord
from naq_resilience.policies.breaker import (
    BreakerSnapshot,
    CircuitState,
    MemoryBreakerStore,
    _default_store,
)
from naq_resilience.policies.compensate import Action, ActionLog, ActionStatus

__all__ = [
    "BreakerSync",
    "KVActionLog",
    "load_action_log",
    "read_breakers",
    "set_breaker",
]

log = logging.getLogger("naq_resilience.stores")
PURGE_MARKER_TTL = 60.0
"""Seconds the marker of a finished saga's purged log is kept (watchers see it go)."""
_encoder = msgspec.json.Encoder(enc_hook=repr)


def _wall_offset(clock_now: float) -> float:
    return time.time() - clock_now


class BreakerSync:
    """Shares the transitions of this process's breakers through the `naq-breakers` bucket."""

    def __init__(self, kv: KeyValue, owner: str, store: MemoryBreakerStore | None = None) -> None:
        self._kv = kv
        self._owner = owner
        self._store = store if store is not None else _default_store
        self._revisions: dict[str, int] = {}
        self._outbox: asyncio.Queue[BreakerSnapshot] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        watcher = await self._kv.watchall()
        # Take on the current state before the worker fetches a job: a worker that
        # starts while a breaker is open must not call the dependency first.
        with contextlib.suppress(nats.errors.TimeoutError):
            while (entry := await watcher.updates(timeout=5.0)) is not None:  # type: ignore[no-untyped-call]
                self._receive(entry)
        self._tasks = [
            asyncio.create_task(self._watch(watcher)),
            asyncio.create_task(self._write()),
        ]
        self._store.subscribe(self._on_local)

    async def stop(self) -> None:
        self._store.unsubscribe(self._on_local)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_local(self, snapshot: BreakerSnapshot) -> None:
        """Called by a breaker, maybe on a job thread: hand the write to the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == getattr(loop, "_thread_id", None):
            self._outbox.put_nowait(snapshot)
        else:
            loop.call_soon_threadsafe(self._outbox.put_nowait, snapshot)

    async def _write(self) -> None:
        while True:
            snapshot = await self._outbox.get()
            breaker = self._store.get(snapshot.name)
            clock_now = breaker.clock() if breaker is not None else time.monotonic()
            record = BreakerRecord(
                name=snapshot.name,
                state=snapshot.state.value,
                failures=snapshot.failures,
                successes=snapshot.successes,
                opened_at=None
                if snapshot.opened_at is None
                else snapshot.opened_at + _wall_offset(clock_now),
                generation=snapshot.generation,
                updated_by=self._owner,
            )
            key = _key(snapshot.name)
            try:
                revision = await self._kv.update(
                    key, _encoder.encode(record), last=self._revisions.get(key, 0)
                )
            except KeyWrongLastSequenceError:
                await self._adopt_current(key)  # someone else wrote first: theirs stands
            except Exception as exc:
                log.warning("could not share breaker %s state: %r", snapshot.name, exc)
            else:
                self._revisions[key] = revision

    async def _adopt_current(self, key: str) -> None:
        with contextlib.suppress(KeyNotFoundError):
            entry = await self._kv.get(key)
            if entry.value and entry.revision is not None:
                self._revisions[key] = entry.revision
                self._apply(decode(entry.value, BreakerRecord))

    async def _watch(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is not None:
                self._receive(entry)

    def _receive(self, entry: Any) -> None:
        if not entry.value:
            return
        if entry.revision is not None:
            self._revisions[entry.key] = max(self._revisions.get(entry.key, 0), entry.revision)
        try:
            record = decode(entry.value, BreakerRecord)
        except msgspec.DecodeError:
            log.warning("ignoring an unreadable breaker record under %s", entry.key)
            return
        if record.updated_by != self._owner:
            self._apply(record)

    def _apply(self, record: BreakerRecord) -> None:
        breaker = self._store.get(record.name)
        if breaker is None:
            return  # no function here uses this breaker
        local_generation = breaker.snapshot().generation
        opened_at = (
            None if record.opened_at is None else record.opened_at - _wall_offset(breaker.clock())
        )
        self._store.apply(
            BreakerSnapshot(
                name=record.name,
                state=CircuitState(record.state),
                failures=record.failures,
                successes=record.successes,
                opened_at=opened_at,
                generation=max(record.generation, local_generation + 1),
            )
        )


async def read_breakers(kv: KeyValue) -> list[BreakerRecord]:
    """Every breaker the fleet has shared, by name."""
    try:
        keys = await kv.keys()
    except Exception:  # nats-py raises NoKeysError for an empty bucket
        return []
    found = []
    for key in keys:
        with contextlib.suppress(KeyNotFoundError, msgspec.DecodeError):
            entry = await kv.get(key)
            if entry.value:
                found.append(decode(entry.value, BreakerRecord))
    return sorted(found, key=lambda r: r.name)


async def set_breaker(
    kv: KeyValue, name: str, state: CircuitState, by: str, *, forget: bool = False
) -> BreakerRecord:
    """Open or close a breaker on every worker: a transition written as a worker writes
    one, a generation above the current, so each worker applies it. An open breaker
    probes again after its `recovery_timeout`, as if it had tripped. `forget` then
    removes it from the bucket (a reset: workers using it write it again at their next
    transition)."""
    key = _key(name)
    for _ in range(10):
        try:
            entry = await kv.get(key)
            current = decode(entry.value or b"", BreakerRecord) if entry.value else None
            revision = entry.revision or 0
        except KeyNotFoundError:
            current, revision = None, 0
        opened = state is not CircuitState.CLOSED
        record = BreakerRecord(
            name=current.name if current is not None else name,
            state=state.value,
            failures=current.failures if current is not None and opened else 0,
            successes=0,
            opened_at=time.time() if opened else None,
            generation=(current.generation if current is not None else 0) + 1,
            updated_by=by,
        )
        try:
            await kv.update(key, _encoder.encode(record), last=revision)
        except KeyWrongLastSequenceError:
            continue  # a worker wrote meanwhile: build on what it wrote
        if forget:
            await asyncio.sleep(0.5)  # the watchers apply the close before the key goes
            with contextlib.suppress(Exception):
                await kv.purge(key)
        return record
    raise RuntimeError(f"breaker {name}: the workers kept changing it; try again")


def _key(name: str) -> str:
    """Breaker names are `module:qualname`; KV keys allow `[-/_=.a-zA-Z0-9]`."""
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in name)


class KVActionLog(ActionLog):
    """A running job's compensation log, kept in the `naq-sagas` bucket under its id."""

    def __init__(
        self,
        kv: KeyValue,
        job_id: str,
        loop: asyncio.AbstractEventLoop,
        actions: Sequence[Action] = (),
    ) -> None:
        self._kv = kv
        self._job_id = job_id
        self._loop = loop
        self._actions: list[Action] = list(actions)
        self._lock = threading.Lock()
        self._pending_write: asyncio.Future[Any] | None = None

    def record(self, action: Action) -> None:
        with self._lock:
            self._actions.append(action)
        self._save()

    def pending(self) -> tuple[Action, ...]:
        with self._lock:
            return tuple(a for a in self._actions if a.status is not ActionStatus.UNDONE)

    def mark_undone(self, action: Action) -> None:
        action.status, action.error = ActionStatus.UNDONE, None
        self._save()

    def mark_failed(self, action: Action, error: BaseException) -> None:
        action.status, action.error = ActionStatus.FAILED, f"{type(error).__name__}: {error}"
        self._save()

    def clear(self) -> None:
        with self._lock:
            self._actions.clear()
        self._submit(self._delete())

    def _save(self) -> None:
        with self._lock:
            record = SagaLogRecord(
                job_id=self._job_id,
                actions=[
                    {
                        "step": a.step, "result": a.result, "args": list(a.args),
                        "kwargs": a.kwargs, "status": a.status.value, "error": a.error,
                    }
                    for a in self._actions
                ],
            )  # fmt: skip
        self._submit(self._kv.put(self._job_id, _encoder.encode(record)))

    async def _delete(self) -> None:
        # A purge leaves a marker; with a TTL it goes too, or every saga job that ever
        # ran would leave one behind for good.
        with contextlib.suppress(KeyNotFoundError):
            await self._kv.purge(self._job_id, msg_ttl=PURGE_MARKER_TTL)

    def _submit(self, coro: Any) -> None:
        """In order, and durably before returning when called off the loop's thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            previous = self._pending_write
            self._pending_write = asyncio.ensure_future(_after(previous, coro))
        else:
            asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def flush(self) -> None:
        """Wait for queued writes (the worker calls it before acking the job)."""
        if self._pending_write is not None:
            await self._pending_write


async def _after(previous: asyncio.Future[Any] | None, coro: Any) -> None:
    if previous is not None:
        with contextlib.suppress(Exception):
            await previous
    try:
        await coro
    except Exception as exc:
        log.warning("could not persist a saga log: %r", exc)


async def load_action_log(
    kv: KeyValue, job_id: str, loop: asyncio.AbstractEventLoop
) -> KVActionLog | None:
    """The log a crashed delivery of `job_id` left behind, if it has steps to undo."""
    try:
        entry = await kv.get(job_id)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    record = decode(entry.value, SagaLogRecord)
    actions = [
        Action(
            step=a["step"],
            result=a.get("result"),
            args=tuple(a.get("args") or ()),
            kwargs=dict(a.get("kwargs") or {}),
            status=ActionStatus(a.get("status", "pending")),
            error=a.get("error"),
        )
        for a in record.actions
    ]
    stored = KVActionLog(kv, job_id, loop, actions)
    return stored if stored.pending() else None
