"""Every job's history: its latest state by id, and windows of jobs by time.

Each job has one `JobRecord` on `naq.history.<job_id>` in `NAQ_HISTORY`, replaced at
each change (the stream keeps one message per subject), so a job is found by id alone
in one request. The records are written without waiting for acknowledgements: the
client's "queued" once the job is stored, the worker's "running", "retrying",
"completed" and "failed". A record costs its writer one buffered publish.

A window ("the jobs of the last hour") is the records whose latest change falls in it,
in the order they changed. Its length is one request whatever it holds: an ephemeral
consumer started at the window's first moment reports how many messages it has
pending. Its records are read only when iterated, a page at a time, through the
same pull requests the worker uses. `len()` and iteration agree: both are fixed at
first use, so records that arrive later belong to the next window asked for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from naq_resilience.codec import decode
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.puller import Puller
from naq_resilience.models import DeadLetter, JobRecord, JobStatus

__all__ = ["JobWindow", "dead_letter_record", "failed_record", "history_record", "read_job"]

_PAGE = 1000
_PAGE_WAIT = 0.5
"""Seconds a page request waits for messages; a window's messages already exist, so
a page that comes back short is the end of the window."""


async def read_job(js: JetStreamContext, job_id: str) -> JobRecord | None:
    """The job's latest record, or None (never recorded, or out of the history window)."""
    try:
        msg = await js.get_last_msg(layout.HISTORY_STREAM, layout.history_subject(job_id))
    except NotFoundError:
        return None
    try:
        return decode(msg.data or b"", JobRecord)
    except msgspec.DecodeError:
        return None


def failed_record(letter: DeadLetter) -> JobRecord:
    """A dead letter as the record of a job that failed for good."""
    job = letter.job
    last = letter.failures[-1] if letter.failures else None
    return JobRecord(
        job_id=letter.id,
        queue=letter.queue,
        function=job.function if job is not None else "",
        status=JobStatus.FAILED,
        updated_at=letter.dead_at,
        enqueued_at=job.enqueued_at if job is not None else 0.0,
        started_at=last.started_at if last is not None else None,
        finished_at=letter.dead_at,
        attempts=last.attempt if last is not None else 0,
        worker_id=last.worker_id if last is not None else "",
        # A dead end the worker decided (unroutable) is named by the letter itself.
        error_type=letter.error_type or (last.error_type if last is not None else None),
        error=(
            last.message if last is not None and letter.error_type is None else letter.reason
        )[:512],
        dead_letter_queue=letter.dead_letter_queue,
    )


class JobWindow:
    """Records of one stream and subject filter from a moment on, counted and paged.

    `count()` is one request; `async for record in window` reads a page at a time.
    `convert` turns each message into the record handed out (a `JobRecord` from the
    history, a failed record from a dead letter).
    """

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        stream: str,
        subjects: str,
        since: float,
        convert: Callable[[bytes], JobRecord | None],
        restore: Callable[[NotFoundError], Awaitable[bool]] | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._stream = stream
        self._subjects = subjects
        self.since = since
        self._convert = convert
        self._restore = restore
        self._total: int | None = None

    async def count(self) -> int:
        """How many messages the window holds, fixed at the first call."""
        if self._total is None:
            name = await self._consumer()
            try:
                info = await self._js.consumer_info(self._stream, name)
                self._total = info.num_pending or 0
            finally:
                await self._delete(name)
        return self._total

    async def __aiter__(self) -> AsyncIterator[JobRecord]:
        async for page in self.pages():
            for record in page:
                yield record

    async def pages(self) -> AsyncIterator[list[JobRecord]]:
        """The window's records, a page (up to 1,000) at a time."""
        total = await self.count()
        if total == 0:
            return
        name = await self._consumer()
        got: list[Msg] = []
        puller = Puller(self._nc, self._stream, name, got.append, _PAGE_WAIT)
        await puller.start()
        seen = 0
        try:
            while seen < total:
                got.clear()
                await puller.pull(min(_PAGE, total - seen))
                if not got:
                    return  # the rest went (expired, or replaced by a newer record)
                seen += len(got)
                page = [self._convert(msg.data or b"") for msg in got]
                yield [record for record in page if record is not None]
        finally:
            await puller.stop()
            await self._delete(name)

    async def _consumer(self) -> str:
        start = dt.datetime.fromtimestamp(self.since, tz=dt.UTC)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start,
            filter_subject=self._subjects,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            max_waiting=1,
        )
        try:
            info = await self._js.add_consumer(self._stream, config)
        except NotFoundError as exc:
            if self._restore is None or not await self._restore(exc):
                raise
            info = await self._js.add_consumer(self._stream, config)
        return info.name

    async def _delete(self, name: str) -> None:
        try:
            await self._js.delete_consumer(self._stream, name)
        except Exception:  # it goes by itself after inactive_threshold
            await asyncio.sleep(0)


def history_record(data: bytes) -> JobRecord | None:
    try:
        return decode(data, JobRecord)
    except msgspec.DecodeError:
        return None


def dead_letter_record(data: bytes) -> JobRecord | None:
    try:
        return failed_record(decode(data, DeadLetter))
    except msgspec.DecodeError:
        return None
