"""`naq worker-logs [--follow] [--worker ID] [--queue Q] [--job JOB_ID] [--level L]
[--since WHEN] [--json]`: the log lines workers published to `NAQ_LOGS`, from any
machine that reaches the NATS server.

The server filters by level, worker, queue and job (they are subject tokens, see
`jetstream.logstream`); a glob in `--worker`, `--queue` or `--job` is matched here
instead. Lines print oldest first, one per record: for people a line with the time
(UTC), level, worker, logger and message, the job it ran in, and the traceback
indented below (the level in colour on a terminal, unless `NO_COLOR` is set); with
`--json` one `LogRecord` per line, for scripts, also while following.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from naq_resilience.cli._common import Exit, exits, failures, parse_time, said, utc

if TYPE_CHECKING:
    from naq_resilience.models import LogRecord

__all__ = ["add_worker_logs_command", "format_record"]

DEFAULT_SINCE = timedelta(minutes=10)
_COLOURS = {"DEBUG": "2", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def add_worker_logs_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "worker-logs",
        help="show the log lines workers published, from any machine",
        description=(
            "Every worker publishes the log records of its process (at its --log-level, at "
            "most 50 a second of DEBUG and INFO and 50 of WARNING and above) to the NAQ_LOGS "
            "stream, kept a day by default (NAQ_LOGS_MAX_AGE, NAQ_LOGS_MAX_BYTES). This "
            "command prints them, oldest first."
        ),
    )
    parser.add_argument(
        "-f", "--follow", action="store_true",
        help="after the lines since --since, keep printing new ones until interrupted",
    )  # fmt: skip
    parser.add_argument(
        "--worker", metavar="ID",
        help="one worker's lines: its id (host:pid:random, as `naq jobs show` names it) or "
        "a glob ('web-1:*')",
    )  # fmt: skip
    parser.add_argument(
        "--queue", metavar="Q", help="lines logged in jobs of this queue (or a glob)"
    )
    parser.add_argument(
        "--job", metavar="JOB_ID", help="lines logged in this job, by its code or the worker"
    )
    parser.add_argument(
        "--level", default="DEBUG", metavar="L",
        help="lines at this level or above: DEBUG, INFO, WARNING, ERROR, CRITICAL "
        "(default: %(default)s, i.e. everything the workers published)",
    )  # fmt: skip
    parser.add_argument(
        "--since", default=None, metavar="WHEN",
        help="lines logged since WHEN: a duration ago (90s, 15m, 2h, 1d) or an ISO-8601 "
        "time, UTC unless it says (default: 10m)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON LogRecord per line")
    parser.add_argument("--nats-url", default=None, help="default: $NAQ_NATS_URL")
    parser.set_defaults(handler=exits(_run))


def _refuse(message: str) -> Exit:
    print(f"naq worker-logs: {message}", file=sys.stderr)
    return Exit(2)


def _since(text: str | None) -> float:
    if text is None:
        return time.time() - DEFAULT_SINCE.total_seconds()
    try:
        since = parse_time(text)
    except argparse.ArgumentTypeError:
        raise _refuse(
            f"--since {text!r} is neither a duration (15m, 2h: that long ago) nor an ISO-8601 "
            "time; write it like --since 15m or --since 2026-11-30T09:30 (UTC unless it has "
            "an offset)"
        ) from None
    if isinstance(since, timedelta):
        return max(time.time() - since.total_seconds(), 0.0)
    at = since.timestamp()
    if at > time.time():
        raise _refuse(
            f"--since {text!r} is in the future; write a time before now, like --since 15m "
            "(to see lines as they come, add --follow)"
        )
    return max(at, 0.0)


def _token(value: str | None, what: str) -> str | None:
    """A queue or job id as given: a subject token, or a glob of one."""
    if value is None:
        return None
    if not value or not set(value) <= _TOKEN_CHARS | set("*?[]!"):
        raise _refuse(
            f"--{what} {value!r} cannot be a {what} name: names are letters, digits, '-' and "
            "'_' (or a glob of them, like 'email*')"
        )
    return value


def _colour(level: str, text: str, on: bool) -> str:
    code = _COLOURS.get(level)
    return f"\033[{code}m{text}\033[0m" if on and code else text


def format_record(record: LogRecord, *, colour: bool = False) -> str:
    """A record as a person reads it: one line, and its traceback indented below."""
    when = datetime.fromtimestamp(record.time, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    line = (
        f"{when} {_colour(record.level, f'{record.level:<8}', colour)} {record.worker_id} "
        f"{record.logger}: {record.message}"
    )
    if record.job_id is not None and record.job_id not in record.message:
        line += f" [job {record.job_id}" + (
            f" attempt {record.attempt}]" if record.attempt else "]"
        )
    if record.traceback:
        indented = "\n".join(f"    {row}" for row in record.traceback.rstrip().splitlines())
        line += "\n" + (f"\033[2m{indented}\033[0m" if colour else indented)
    return line


def _run(args: argparse.Namespace) -> int:
    import logging

    import msgspec

    from naq_resilience.jetstream.connection import (
        ConnectionSettings,
        connect,
        ensure_jetstream,
        while_jetstream_starts,
    )
    from naq_resilience.jetstream.logstream import LogQuery, read_logs
    from naq_resilience.jetstream.streams import ensure_layout
    from naq_resilience.ops.logging import level_number

    try:
        level = level_number(args.level)
    except ValueError as exc:
        raise _refuse(f"--level: {exc}") from None
    query = LogQuery(
        since=_since(args.since),
        level=level,
        worker=args.worker,
        queue=_token(args.queue, "queue"),
        job_id=_token(args.job, "job"),
    )
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def show(record: LogRecord) -> None:
        text = (
            msgspec.json.encode(record).decode()
            if args.json
            else format_record(record, colour=colour)
        )
        print(text, flush=args.follow)

    async def main() -> int:
        settings = ConnectionSettings.from_env(**({"url": args.nats_url} if args.nats_url else {}))
        nc = await connect(settings)
        try:
            wait = settings.jetstream_timeout
            await ensure_jetstream(nc, wait)
            js = nc.jetstream()
            # Also before any worker ran, so --follow can wait for the first one.
            await while_jetstream_starts(
                lambda: ensure_layout(js), timeout=wait, what="the log stream"
            )
            return await read_logs(nc, query, show, follow=args.follow)
        finally:
            await nc.close()

    try:
        shown = asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except failures() as exc:
        print(f"naq worker-logs: {said(exc)}", file=sys.stderr)
        return 1
    if not args.json:
        what = f"at {logging.getLevelName(level)} or above, " if level > logging.DEBUG else ""
        print(
            f"{shown} log lines {what}since {utc(query.since)}"
            if shown
            else f"no log lines {what}since {utc(query.since)} match; workers publish theirs "
            "unless started with --no-publish-logs (or NAQ_PUBLISH_LOGS=0)",
            file=sys.stderr,
        )
    return 0
