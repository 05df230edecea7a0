"""`naq schedule list [--queue Q] [--json]` and `naq schedule cancel ID`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from naq_resilience.cli._common import table, utc

if TYPE_CHECKING:
    from naq_resilience.jetstream.schedules import ScheduleInfo

__all__ = ["add_schedule_command"]


def add_schedule_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "schedule",
        help="list or cancel scheduled jobs",
        description=(
            "Scheduled jobs (enqueue_at, enqueue_in, schedule) are kept and fired by "
            "nats-server itself; these commands read and remove them."
        ),
    )
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="every schedule, as a table or as JSON")
    listing.add_argument("--queue", default=None, help="only this queue's schedules")
    listing.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    listing.add_argument("--nats-url", default=None, help="default: $NAQ_NATS_URL")
    listing.set_defaults(handler=_list)
    cancel = actions.add_parser("cancel", help="remove a schedule and every run still to come")
    cancel.add_argument("id", metavar="ID", help="the schedule's id (its job_id)")
    cancel.add_argument("--nats-url", default=None, help="default: $NAQ_NATS_URL")
    cancel.set_defaults(handler=_cancel)


def _when(info: ScheduleInfo) -> str:
    if info.cron:
        return f"cron {info.cron}" + (f" ({info.time_zone})" if info.time_zone else "")
    if info.interval:
        return f"every {info.interval:g}s"
    return "once"


def _table_of(infos: list[ScheduleInfo]) -> str:
    rows = [("ID", "QUEUE", "FUNCTION", "WHEN", "NEXT RUN", "RUNS LEFT", "STATE")]
    for info in infos:
        rows.append((
            info.id, info.queue, info.function, _when(info), utc(info.next_run),
            "until cancelled" if info.runs_left is None else str(info.runs_left),
            "paused" if info.paused else "active",
        ))  # fmt: skip
    return table(rows)


def _list(args: argparse.Namespace) -> int:
    import msgspec

    from naq_resilience.jetstream.client import Client
    from naq_resilience.jetstream.connection import (
        JetStreamUnavailableError,
        NatsUnavailableError,
    )

    async def main() -> list[ScheduleInfo]:
        async with Client(args.nats_url) as client:
            return await client.list_schedules(args.queue)

    try:
        infos = asyncio.run(main())
    except (NatsUnavailableError, JetStreamUnavailableError, ValueError) as exc:
        print(f"naq schedule list: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(infos).decode())
    elif infos:
        print(_table_of(infos))
    else:
        print("no scheduled jobs" + (f" on queue {args.queue}" if args.queue else ""))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from naq_resilience.jetstream.client import Client
    from naq_resilience.jetstream.connection import (
        JetStreamUnavailableError,
        NatsUnavailableError,
    )

    async def main() -> bool:
        async with Client(args.nats_url) as client:
            return await client.cancel_scheduled_job(args.id)

    try:
        cancelled = asyncio.run(main())
    except (NatsUnavailableError, JetStreamUnavailableError, ValueError) as exc:
        print(f"naq schedule cancel: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    if not cancelled:
        print(
            f"naq schedule cancel: no scheduled job {args.id!r} (see `naq schedule list`)",
            file=sys.stderr,
        )
        return 1
    print(f"cancelled {args.id}")
    return 0
