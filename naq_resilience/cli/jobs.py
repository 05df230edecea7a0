"""`naq jobs list` and `naq jobs show JOB_ID`: the job history, for people and scripts.

The history (`NAQ_HISTORY`) keeps one record per job, its latest state. A window of it
("the jobs of the last hour") counts its records in one request and hands them out
oldest change first. People want the newest, so `list` prints the newest N first, and
reads about as many records as it prints, not the whole window:

1. The window is counted (one request): the footer's total.
2. A window of at most `max(2 * N, 1000)` records is read whole (1,000 is a page).
3. A bigger one is read from a later start: windows that start later are counted (a
   count reads no records), bisecting on time, until one holds about that many
   records, and only those are read. A burst of jobs does not fool it the way an
   even-rate estimate would.
4. When filters (`--status`, `--queue`, `--function`; the history is filtered here,
   its subjects name only the job) leave fewer than N matches, the start moves earlier
   again, to about four times the records read so far, and only the records not yet
   read are read; until N match or the window's start is reached. A filter that
   matches few jobs of a big window therefore reads most of it: narrow the window with
   `--hours` or `--since` instead.

Records go on changing while this runs. A change moves a job's record to the window's
end, past what was read: the listing shows the job as it was read, or, when its old
record went before it was read, not at all; the next listing has it. Records that
arrived meanwhile can make a step read a few records a later step read already: a job
is listed once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import math
import re
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from naq_resilience.cli._common import parse_time, table, utc

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from naq_resilience.jetstream.client import Client
    from naq_resilience.jetstream.history import JobWindow
    from naq_resilience.models import JobRecord

__all__ = ["add_jobs_command", "newest_jobs"]

_FIRST_READ = 1000
"""Records a listing reads at least, when the window holds more: one page."""
_SLACK = 4
"""A later start is good enough when its window holds target to `_SLACK` x target records."""
_GROWTH = 4
"""When filters left too few matches, read back to about this many times the records read."""
_PROBES = 10
"""Counts at most to find a later start (the window's own start, failing that)."""
_TIME_FIELDS = frozenset({"updated_at", "enqueued_at", "scheduled_for", "started_at",
                          "finished_at", "next_retry_at"})  # fmt: skip


def add_jobs_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "jobs",
        help="list recent jobs or show one, from the job history",
        description=(
            "Every job's latest state (queued, scheduled, running, retrying, completed, "
            "failed) is kept in the job history, NAQ_HISTORY, for a week after its last "
            "change by default (NAQ_HISTORY_MAX_AGE). These commands read it."
        ),
    )
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser(
        "list",
        help="the newest jobs whose latest change falls in a window of time",
        description=(
            "The jobs whose latest change falls in the window (the last hour unless told), "
            "newest first, at most --limit of them; the footer counts the whole window. "
            "Filters are applied to the records read, newest first, so a filter that "
            "matches few jobs of a big window reads most of it."
        ),
    )
    listing.add_argument(
        "--hours", metavar="H", default=None, help="the window: the last H hours (default 1)"
    )
    listing.add_argument(
        "--since",
        metavar="WHEN",
        default=None,
        help=(
            "the window: from this time on: 6h or 2d (that long ago), or an ISO time like "
            "2025-06-01T09:30 (UTC unless it has an offset)"
        ),
    )
    listing.add_argument(
        "--status",
        metavar="S",
        nargs="+",
        action="extend",
        default=None,
        help="only jobs in these states (queued, scheduled, running, retrying, completed, failed)",
    )
    listing.add_argument("--queue", metavar="Q", default=None, help="only this queue's jobs")
    listing.add_argument(
        "--function",
        metavar="F",
        default=None,
        help="only jobs of this function: module:qualname, the name alone, or a glob ('billing.*')",
    )
    listing.add_argument(
        "--limit", metavar="N", default="50", help="at most N jobs, the newest (default 50; 0: all)"
    )
    listing.add_argument(
        "--json", action="store_true", help="one JSON array of records, for scripts"
    )
    listing.add_argument("--nats-url", default=None, help="default: $NAQ_NATS_URL")
    listing.set_defaults(handler=_list)
    show = actions.add_parser("show", help="one job's latest record, every field")
    show.add_argument("job_id", metavar="JOB_ID", help="the job's id (job.job_id)")
    show.add_argument("--json", action="store_true", help="the record as JSON, for scripts")
    show.add_argument("--nats-url", default=None, help="default: $NAQ_NATS_URL")
    show.set_defaults(handler=_show)


# --------------------------------------------------------------------------- the listing


async def newest_jobs(
    client: Client, since: float, limit: int | None, keep: Callable[[JobRecord], bool]
) -> tuple[list[JobRecord], int]:
    """The newest `limit` (None: all) records changed since `since` that `keep` accepts,
    newest first, and how many records the window holds (before `keep`)."""
    window = await client.get_jobs_in_timeframe(since=since)
    total = await window.count()
    found: list[JobRecord] = []
    if total == 0:
        return found, total
    now = time.time()
    whole = now - since
    target = total if limit is None else max(2 * limit, _FIRST_READ)
    newer: set[str] = set()  # jobs read already, in later records
    counted = 0  # records from the last start on, when it was counted
    step, held, span = window, total, whole
    if target < total:
        step, held, span = await _start_holding(
            client, since, now, target, total, 0.0, whole * target / total
        )
    while True:
        if held > counted:
            # The first `held - counted` records from this start are the ones not read
            # yet, and a few more if records arrived meanwhile (read again, and skipped).
            need = None if limit is None else limit - len(found)
            matches, ids = await _read_first(step, held - counted, newer, keep, need)
            found += matches
            newer |= ids
        counted = held
        if span >= whole or (limit is not None and len(found) >= limit):
            return found[:limit], total
        step, held, span = await _start_holding(
            client, since, now, _GROWTH * counted, total, span, _GROWTH * span
        )


async def _start_holding(
    client: Client,
    since: float,
    now: float,
    target: int,
    total: int,
    short: float,
    guess: float,
) -> tuple[JobWindow, int, float]:
    """A window that starts `span` seconds before `now` and holds `target` to `_SLACK` x
    `target` records, with its count and `span`: found by counting windows, reading none.
    `total` is what the whole window held, `short` a span known to hold fewer than
    `target`. Failing that, the shortest span found to hold more, or the whole window."""
    low, high = short, now - since
    best: tuple[JobWindow, int, float] | None = None
    span = guess
    for _ in range(_PROBES if target < total else 0):
        if not low < span < high:
            span = math.sqrt(low * high) if low > 0 else high / _GROWTH
        window = await client.get_jobs_in_timeframe(since=now - span)
        held = await window.count()
        if held < target:
            low = span
        elif held > _SLACK * target:
            high, best = span, (window, held, span)
        else:
            return window, held, span
        span = math.sqrt(low * high) if low > 0 else high / _GROWTH
        if high - low < 1e-3:  # a millisecond: a burst JetStream's start times cannot split
            break
    if best is not None:
        return best
    window = await client.get_jobs_in_timeframe(since=since)
    return window, await window.count(), now - since


async def _read_first(
    window: JobWindow,
    count: int,
    newer: set[str],
    keep: Callable[[JobRecord], bool],
    need: int | None,
) -> tuple[list[JobRecord], set[str]]:
    """The newest `need` (None: all) records among the window's first `count` that
    `keep` accepts and whose job is not in `newer`, newest first; and every job read."""
    matches: dict[str, JobRecord] = {}  # in the order read, a job at its newest record
    ids: set[str] = set()
    read = 0
    # JobWindow.pages is an async generator: closed at once, its consumer goes with it.
    pages = cast(AsyncGenerator[list["JobRecord"], None], window.pages())
    async with contextlib.aclosing(pages):
        async for page in pages:
            for record in page[: count - read]:
                job = record.job_id
                if job in newer:
                    continue
                ids.add(job)
                matches.pop(job, None)
                if keep(record):
                    matches[job] = record
                    if need is not None and len(matches) > need:
                        del matches[next(iter(matches))]
            read += len(page)
            if read >= count:
                break
    return list(reversed(matches.values())), ids


# --------------------------------------------------------------------------- arguments


class _Refused(Exception):
    """An argument that cannot be used; the message says what to type instead."""


def _window_start(args: argparse.Namespace) -> float:
    if args.hours is not None and args.since is not None:
        raise _Refused("give --hours or --since, not both")
    if args.since is not None:
        try:
            since = parse_time(args.since)
        except argparse.ArgumentTypeError:
            raise _Refused(
                f"--since {args.since!r} is neither a duration (6h, 2d: that long ago) nor an "
                "ISO-8601 time; write it like --since 6h or --since 2025-06-01T09:30 (UTC "
                "unless it has an offset)"
            ) from None
        if isinstance(since, timedelta):
            return max(time.time() - since.total_seconds(), 0.0)
        at = since.timestamp()
        if at > time.time():
            raise _Refused(
                f"--since {args.since!r} is in the future, and the history holds the past; "
                "write a time before now, like --since 2025-06-01T09:30 (UTC)"
            )
        return max(at, 0.0)  # nothing changed before 1970, and the server misreads before 1677
    hours = 1.0 if args.hours is None else _number(args.hours)
    if hours is None or not 0 < hours < math.inf:
        raise _Refused(
            f"--hours {args.hours!r} is not a number of hours above 0; write it like "
            "--hours 6 or --hours 0.5"
        )
    return max(time.time() - hours * 3600, 0.0)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _limit(text: str) -> int | None:
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise _Refused(f"--limit {text!r} is not a count; write it like --limit 20 (0: all)")
    return limit or None


def _statuses(names: list[str] | None) -> frozenset[str] | None:
    from naq_resilience.models import JobStatus

    if names is None:
        return None
    # "dead" and "finished" are JobStatus values a record never carries.
    recorded = [status.value for status in JobStatus if status.value not in ("dead", "finished")]
    use = f"use one of {', '.join(recorded)}"
    for name in names:
        if name.lower() == "dead":
            raise _Refused(
                f"--status dead: a job that failed for good is recorded as failed; {use}"
            )
        if name.lower() not in recorded:
            raise _Refused(f"--status {name!r} is not a job's state; {use}")
    return frozenset(name.lower() for name in names)


def _keep(args: argparse.Namespace) -> Callable[[JobRecord], bool]:
    statuses = _statuses(args.status)
    queue: str | None = args.queue
    function = None
    if args.function is not None:  # a glob, as `naq dlq --function` takes it
        pattern = fnmatch.translate(args.function)
        if ":" not in args.function:  # a bare name matches it in any module
            pattern = r"(?:.*:)?" + pattern
        function = re.compile(pattern).match

    def keep(record: JobRecord) -> bool:
        if statuses is not None and record.status.value not in statuses:
            return False
        if queue is not None and record.queue != queue:
            return False
        return function is None or function(record.function) is not None

    return keep


def _filters(args: argparse.Namespace) -> str:
    said = []
    if args.status:
        said.append("status " + "/".join(name.lower() for name in args.status))
    if args.queue is not None:
        said.append(f"queue {args.queue}")
    if args.function is not None:
        said.append(f"function {args.function}")
    return ", ".join(said)


# --------------------------------------------------------------------------- output


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _table(records: list[JobRecord]) -> str:
    rows = [("ID", "STATUS", "FUNCTION", "QUEUE", "ATTEMPTS", "UPDATED", "ERROR")]
    for record in records:
        rows.append((
            record.job_id, record.status.value, record.function, record.queue,
            str(record.attempts), utc(record.updated_at), record.error_type or "-",
        ))  # fmt: skip
    return table(rows)


def _jobs(count: int) -> str:
    return f"{count:,} job{'' if count == 1 else 's'}"


def _footer(shown: int, total: int, since: float, filters: str, limit: int | None) -> str:
    """The line under the table: how many are shown, of how many in the window."""
    window = f"{_jobs(total)} changed since {utc(since)}"
    if not filters:
        if not shown:
            return f"no jobs changed since {utc(since)}"
        if shown == limit and shown < total:
            return f"the newest {shown:,} of the {window}; --limit N shows more"
        return f"{window}, newest first"
    if not shown:
        return f"no jobs with {filters} among the {window}"
    if shown == limit:
        return f"the newest {_jobs(shown)} with {filters}, of the {window}; --limit N may show more"
    return f"{_jobs(shown)} with {filters}, newest first, of the {window}"


def _block(record: JobRecord) -> str:
    import msgspec

    lines = []
    # The id first and the format version last; the rest as JobRecord declares them.
    names = sorted(
        msgspec.structs.fields(type(record)),
        key=lambda field: {"job_id": 0, "version": 2}.get(field.name, 1),
    )
    width = max(len(field.name) for field in names) + 1
    for field in names:
        value = getattr(record, field.name)
        if field.name in _TIME_FIELDS:
            text = _iso(value) if value else "-"  # an enqueued_at of 0: unknown
        elif value is None or value == "":
            text = "-"
        else:
            text = str(value)
        text = text.replace("\n", "\n" + " " * (width + 1))
        lines.append(f"{field.name + ':':<{width}} {text}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size, 1)
            return f"{count:g} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} seconds"


# --------------------------------------------------------------------------- handlers


def _list(args: argparse.Namespace) -> int:
    import msgspec

    from naq_resilience.jetstream.client import Client

    try:
        since = _window_start(args)
        limit = _limit(args.limit)
        keep = _keep(args)
    except _Refused as refusal:
        print(f"naq jobs list: {refusal}", file=sys.stderr)
        return 2

    async def main() -> tuple[list[JobRecord], int]:
        async with Client(args.nats_url) as client:
            return await newest_jobs(client, since, limit, keep)

    failures = _failures()
    try:
        records, total = asyncio.run(main())
    except failures as exc:
        print(f"naq jobs list: {_said(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(records).decode())
        return 0
    if records:
        print(_table(records))
    print(_footer(len(records), total, since, _filters(args), limit))
    return 0


def _show(args: argparse.Namespace) -> int:
    import msgspec

    from naq_resilience.models import JobId

    try:
        job_id = msgspec.convert(args.job_id, JobId)
    except msgspec.ValidationError:
        print(
            f"naq jobs show: {args.job_id!r} is not a job id (1-128 letters, digits, '-' or "
            "'_', as job.job_id prints it; `naq jobs list` shows recent ones)",
            file=sys.stderr,
        )
        return 2

    async def main() -> tuple[JobRecord | None, str]:
        async with _connected(args.nats_url) as (client, nc):
            record = await client.get_job(job_id)
            return record, ("" if record is not None else await _kept(nc))

    failures = _failures()
    try:
        record, kept = asyncio.run(main())
    except failures as exc:
        print(f"naq jobs show: {_said(exc)}", file=sys.stderr)
        return 1
    if record is None:
        print(
            f"naq jobs show: no job {job_id!r} in the job history: it was never enqueued, "
            f"or its last change is older than the history keeps: {kept}",
            file=sys.stderr,
        )
        return 1
    print(msgspec.json.encode(record).decode() if args.json else _block(record))
    return 0


@contextlib.asynccontextmanager
async def _connected(nats_url: str | None) -> AsyncIterator[tuple[Client, NatsClient]]:
    """A client on a connection of our own, to read the history stream's limits too."""
    from naq_resilience.jetstream.client import Client
    from naq_resilience.jetstream.connection import ConnectionSettings, connect

    settings = ConnectionSettings.from_env(**({"url": nats_url} if nats_url else {}))
    nc = await connect(settings)
    try:
        async with Client(settings=settings, connection=nc) as client:
            yield client, nc
    finally:
        await nc.close()


async def _kept(nc: NatsClient) -> str:
    """How long and how many jobs the history keeps: its stream's limits, which are the
    settings it was created with; the current settings if it cannot be read."""
    from naq_resilience.jetstream import layout
    from naq_resilience.jetstream.streams import StorageSettings

    try:
        config = (await nc.jetstream().stream_info(layout.HISTORY_STREAM)).config
        max_age, max_jobs = config.max_age or 0.0, config.max_msgs or -1
    except Exception:
        settings = StorageSettings.from_env()
        max_age, max_jobs = settings.history_max_age, settings.history_max_jobs
    age = f"{_duration(max_age)} after a job's last change" if max_age > 0 else "for ever"
    said = f"records are kept {age} (StorageSettings.history_max_age, NAQ_HISTORY_MAX_AGE)"
    if max_jobs > 0:
        said += f", for the newest {max_jobs:,} jobs at most (history_max_jobs)"
    return said


def _failures() -> tuple[type[Exception], ...]:
    """What a command reports in one line: no server, no JetStream, a request that
    failed (nats-py's errors: a timeout, a connection lost midway), bad NAQ_* settings."""
    import nats.errors

    from naq_resilience.jetstream.connection import (
        JetStreamUnavailableError,
        NatsUnavailableError,
    )

    return NatsUnavailableError, JetStreamUnavailableError, nats.errors.Error, ValueError


def _said(exc: Exception) -> str:
    import nats.errors

    if isinstance(exc, nats.errors.Error):
        return f"the NATS server did not answer as asked ({type(exc).__name__}: {exc})"
    return str(exc)
