"""Incidents: a critical error opens one, the same error again adds to it, a person
acknowledges and resolves it.

An incident lives in the `naq-incidents` bucket under `inc.<id>`. What makes two errors
"the same" is a fingerprint of the error's class and where it was raised (the innermost
frame, without its line number, so a deploy that moves a line does not open a new
incident). While an incident is open or acknowledged, `open.<fingerprint>` holds its
id; a report reads that key, then adds to the incident with compare-and-set on its
revision, so workers reporting the same error at once all land in one incident, and a
report racing a `resolve` either counts in the incident before it closes or opens the
next one. A resolved incident keeps its record (with a TTL, `incidents_max_age`) and
loses its `open.` key, so the same error afterwards opens a new incident.

The worker reports critical failures through `IncidentRecorder`, a `JobObserver`: the
observer only queues the record; a task on the worker's loop writes it, so a job's
outcome never waits for an incident. Paging hooks (`on_incident`) are called once, by the
process that opened the incident; a fleet-wide page with cooldowns is the monitor's
`IncidentRule`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from naq_resilience.codec import decode
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.leases import cas_write, read_entry
from naq_resilience.jetstream.streams import (
    StorageSettings,
    ensure_incident_bucket,
    read_messages,
)
from naq_resilience.models import FailureRecord, Incident, IncidentStatus, JobRecord, Severity

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client

__all__ = [
    "IncidentBook",
    "IncidentHook",
    "IncidentNotFoundError",
    "IncidentRecorder",
    "fingerprint",
    "on_incident",
    "remove_incident_hook",
    "where_of_exception",
    "where_of_traceback",
]

log = logging.getLogger("naq_resilience.incidents")

IncidentHook = Callable[[Incident], object]
"""`hook(incident)`, sync or async, called when an incident opens."""

MESSAGE_LIMIT = 4096
SAMPLE_LIMIT = 20
INDEX_MARKER_TTL = 60.0
"""Seconds the marker left by removing an `open.` key is kept (then it goes too)."""
_TRIES = 32
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+, in (?P<func>\S+)', re.M)
_encoder = msgspec.json.Encoder(enc_hook=repr)

_hooks: list[IncidentHook] = []
_hooks_lock = threading.Lock()


class IncidentNotFoundError(LookupError):
    """No incident has this id (never opened, or resolved longer ago than kept)."""


def on_incident(callback: IncidentHook) -> IncidentHook:
    """Register `callback(incident)` (sync or async), called in this process each time it
    opens an incident (not when the same error adds to one); usable as a decorator.

    For paging: a sync hook runs on a thread, so a slow pager does not hold up the
    worker; one that raises is logged and the others still run.
    """
    if not callable(callback):
        raise TypeError(f"on_incident needs a callable, got {callback!r}")
    with _hooks_lock:
        _hooks.append(callback)
    return callback


def remove_incident_hook(callback: IncidentHook) -> None:
    with _hooks_lock:
        if callback in _hooks:
            _hooks.remove(callback)


async def _call_hooks(incident: Incident) -> None:
    for hook in tuple(_hooks):
        try:
            if inspect.iscoroutinefunction(hook):
                await hook(incident)
            else:
                result = await asyncio.to_thread(hook, incident)
                if inspect.isawaitable(result):
                    await result
        except Exception:
            log.exception("incident hook %r failed for incident %s", hook, incident.id)


def _short(path: str) -> str:
    """A frame's file as `<dir>/<file>`: the same on every host and in every virtualenv."""
    parts = path.replace("\\", "/").rsplit("/", 2)
    return "/".join(parts[-2:])


def where_of_traceback(text: str) -> str:
    """`<dir>/<file>:<function>` of the innermost frame of a formatted traceback."""
    frames = _FRAME.findall(text)
    if not frames:
        return ""
    path, func = frames[-1]
    return f"{_short(path)}:{func}"


def where_of_exception(exc: BaseException) -> str:
    """`<dir>/<file>:<function>` of the frame that raised `exc`; empty if never raised."""
    tb: TracebackType | None = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{_short(code.co_filename)}:{code.co_name}"


def fingerprint(error_type: str, where: str) -> str:
    """16 hex digits naming "this error, raised there"; the same in every process."""
    return hashlib.blake2b(f"{error_type}|{where}".encode(), digest_size=8).hexdigest()


def _new_id(now: float) -> str:
    return f"{time.strftime('%Y%m%d', time.gmtime(now))}-{os.urandom(3).hex()}"


def _sample(items: list[str], item: str | None) -> list[str]:
    if not item or item in items or len(items) >= SAMPLE_LIMIT:
        return items
    return [*items, item]


class IncidentBook:
    """Opens, adds to, lists, acknowledges and resolves incidents in `naq-incidents`."""

    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        *,
        resolved_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._kv = kv
        self._resolved_ttl = (
            resolved_ttl if resolved_ttl is not None else StorageSettings().incidents_max_age
        )
        self._clock = clock

    @classmethod
    async def of(cls, client: Client, **options: Any) -> IncidentBook:
        """The book on `client`'s connection (the bucket created when missing)."""
        js, _ = await client._ready()
        storage = client._storage if client._storage is not None else StorageSettings.from_env()
        kv = await ensure_incident_bucket(js, storage)
        return cls(js, kv, resolved_ttl=storage.incidents_max_age, **options)

    async def _write(self, incident: Incident, last: int, ttl: float | None = None) -> int:
        return await cas_write(
            self._js, layout.INCIDENT_BUCKET, layout.incident_key(incident.id),
            _encoder.encode(incident), last=last, ttl=ttl,
        )  # fmt: skip

    async def _read(self, incident_id: str) -> tuple[Incident | None, int]:
        value, revision = await read_entry(self._kv, layout.incident_key(incident_id))
        return (None if value is None else decode(value, Incident)), revision

    async def report(
        self,
        *,
        error_type: str,
        message: str,
        where: str = "",
        context: dict[str, Any] | None = None,
        severity: Severity = Severity.CRITICAL,
        job_id: str | None = None,
        source: str = "",
        same_as: str | None = None,
    ) -> tuple[Incident, bool]:
        """Add this error to its open incident, or open one; the incident and whether it
        was opened now (the paging hooks have run then). Errors are the same incident
        when their `error_type` and `where` are, or, when given, their `same_as`."""
        fp = fingerprint(error_type, where if same_as is None else same_as)
        index = layout.open_incident_key(fp)
        for _ in range(_TRIES):
            now = self._clock()
            value, index_revision = await read_entry(self._kv, index)
            if value is not None:
                incident, revision = await self._read(value.decode())
                if incident is not None and incident.status is not IncidentStatus.RESOLVED:
                    added = msgspec.structs.replace(
                        incident,
                        count=incident.count + 1,
                        last_seen=max(now, incident.last_seen),
                        job_ids=_sample(incident.job_ids, job_id),
                        sources=_sample(incident.sources, source),
                        severity=max(incident.severity, severity, key=lambda s: s.rank),
                    )
                    try:
                        await self._write(added, revision)
                    except KeyWrongLastSequenceError:
                        continue  # someone else added to it (or resolved it): read again
                    return added, False
                # The index outlived its incident (a resolve stopped half-way): drop it.
                with contextlib.suppress(KeyWrongLastSequenceError):
                    await self._drop_index(index, index_revision)
                continue
            incident = Incident(
                id=_new_id(now),
                status=IncidentStatus.OPEN,
                severity=severity,
                error_type=error_type,
                message=message[:MESSAGE_LIMIT],
                fingerprint=fp,
                where=where,
                opened_at=now,
                last_seen=now,
                context=dict(context or {}),
                job_ids=[job_id] if job_id else [],
                sources=[source] if source else [],
            )
            try:
                await self._write(incident, 0)
            except KeyWrongLastSequenceError:
                continue  # an id taken already: draw another
            try:
                await cas_write(
                    self._js, layout.INCIDENT_BUCKET, index, incident.id.encode(),
                    last=index_revision,
                )  # fmt: skip
            except KeyWrongLastSequenceError:
                # Another process opened this error's incident first: ours never was.
                with contextlib.suppress(Exception):
                    await self._kv.purge(layout.incident_key(incident.id), msg_ttl=INDEX_MARKER_TTL)
                continue
            log.critical(
                "INCIDENT %s opened: %s: %s", incident.id, error_type, message[:200],
                extra={"incident_id": incident.id, "fingerprint": fp},
            )  # fmt: skip
            await _call_hooks(incident)
            return incident, True
        raise RuntimeError(
            f"could not record the incident of {error_type} after {_TRIES} tries: every "
            "write met another's (is something rewriting naq-incidents in a loop?)"
        )

    async def _drop_index(self, index: str, revision: int) -> None:
        await cas_write(
            self._js, layout.INCIDENT_BUCKET, index, b"", last=revision,
            ttl=INDEX_MARKER_TTL, purge=True,
        )  # fmt: skip

    async def get(self, incident_id: str) -> Incident:
        incident, _ = await self._read(incident_id)
        if incident is None:
            raise IncidentNotFoundError(
                f"no incident {incident_id} (see `naq incidents list`; resolved incidents "
                "are kept for incidents_max_age)"
            )
        return incident

    async def list(self, status: Iterable[IncidentStatus | str] | None = None) -> list[Incident]:
        """Every incident kept, newest first; only those of the given statuses if any."""
        wanted = None if status is None else {IncidentStatus(str(s).upper()) for s in status}
        stream = f"KV_{layout.INCIDENT_BUCKET}"
        messages = await read_messages(
            self._js, stream, f"$KV.{layout.INCIDENT_BUCKET}.{layout.incident_key('*')}"
        )
        found = []
        for msg in messages:
            if not msg.data:
                continue  # a purged one
            try:
                incident = decode(msg.data, Incident)
            except msgspec.DecodeError:
                log.warning("ignoring an unreadable incident on %s", msg.subject)
                continue
            if wanted is None or incident.status in wanted:
                found.append(incident)
        found.sort(key=lambda i: i.opened_at, reverse=True)
        return found

    async def _change(
        self, incident_id: str, change: Callable[[Incident, float], Incident | None]
    ) -> Incident:
        for _ in range(_TRIES):
            incident, revision = await self._read(incident_id)
            if incident is None:
                await self.get(incident_id)  # raises the error that says so
            assert incident is not None
            changed = change(incident, self._clock())
            if changed is None:
                return incident
            resolved = changed.status is IncidentStatus.RESOLVED
            try:
                await self._write(changed, revision, self._resolved_ttl if resolved else None)
            except KeyWrongLastSequenceError:
                continue
            if resolved:
                await self._unindex(changed)
            return changed
        raise RuntimeError(f"incident {incident_id} changed {_TRIES} times while we wrote it")

    async def _unindex(self, incident: Incident) -> None:
        index = layout.open_incident_key(incident.fingerprint)
        value, revision = await read_entry(self._kv, index)
        if value is not None and value.decode() == incident.id:
            with contextlib.suppress(KeyWrongLastSequenceError):
                await self._drop_index(index, revision)

    async def acknowledge(self, incident_id: str, by: str, note: str | None = None) -> Incident:
        """Mark it ACKNOWLEDGED by `by`; the same error still adds to it. Acknowledging a
        resolved incident is refused (ValueError); again, it changes nothing."""

        def ack(incident: Incident, now: float) -> Incident | None:
            if incident.status is IncidentStatus.RESOLVED:
                raise ValueError(f"incident {incident_id} is resolved already")
            if incident.status is IncidentStatus.ACKNOWLEDGED:
                return None
            return msgspec.structs.replace(
                incident,
                status=IncidentStatus.ACKNOWLEDGED,
                acknowledged_by=by,
                acknowledged_at=now,
                note=note if note is not None else incident.note,
            )

        return await self._change(incident_id, ack)

    async def resolve(
        self, incident_id: str, by: str | None = None, note: str | None = None
    ) -> Incident:
        """Mark it RESOLVED: the same error afterwards opens a new incident. Resolving a
        resolved incident changes nothing."""

        def resolve(incident: Incident, now: float) -> Incident | None:
            if incident.status is IncidentStatus.RESOLVED:
                return None
            return msgspec.structs.replace(
                incident,
                status=IncidentStatus.RESOLVED,
                resolved_by=by,
                resolved_at=now,
                note=note if note is not None else incident.note,
            )

        return await self._change(incident_id, resolve)


class IncidentRecorder:
    """The worker's observer that turns critical failures into incidents.

    `attempt_failed` only queues the record (an observer must not block); one task on
    the worker's loop writes them in order. Errors injected by `@chaos` are rehearsals
    and open no incident unless `include_injected`.
    """

    def __init__(
        self,
        source: str,
        storage: StorageSettings | None = None,
        *,
        include_injected: bool = False,
    ) -> None:
        self.source = source
        self._storage = storage
        self._include_injected = include_injected
        self._js: JetStreamContext | None = None
        self._book: IncidentBook | None = None
        self._queue: asyncio.Queue[FailureRecord] | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self, js: JetStreamContext) -> None:
        """Write through this connection (the worker's), from now on."""
        self._js = js
        self._book = None

    def job_changed(self, record: JobRecord) -> None:
        """Not needed: the failure record carries everything an incident does."""

    def attempt_failed(self, failure: FailureRecord) -> None:
        if failure.classification != "critical":
            return
        if failure.injected and not self._include_injected:
            return
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._queue.put_nowait(failure)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(self._queue))

    async def _drain(self, queue: asyncio.Queue[FailureRecord]) -> None:
        while not queue.empty():
            failure = queue.get_nowait()
            try:
                await self.record(failure)
            except Exception:
                log.exception(
                    "could not record the incident of job %s (%s)",
                    failure.job_id, failure.error_type,
                )  # fmt: skip
            finally:
                queue.task_done()

    async def record(self, failure: FailureRecord) -> tuple[Incident, bool]:
        """Report one critical failure now."""
        if self._book is None:
            if self._js is None:
                raise RuntimeError("IncidentRecorder.bind(js) was not called")
            storage = self._storage if self._storage is not None else StorageSettings.from_env()
            kv = await ensure_incident_bucket(self._js, storage)
            self._book = IncidentBook(self._js, kv, resolved_ttl=storage.incidents_max_age)
        context = {**failure.context, "queue": failure.queue, "function": failure.function}
        return await self._book.report(
            error_type=failure.error_type,
            message=failure.message,
            where=where_of_traceback(failure.traceback),
            context=context,
            job_id=failure.job_id,
            source=failure.worker_id or self.source,
        )

    async def close(self, timeout: float = 10.0) -> None:
        """Wait (at most `timeout` seconds) for the incidents still queued."""
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            log.warning("incidents still queued at shutdown were not recorded")
