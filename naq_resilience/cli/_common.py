"""What every `naq` command module shares: tables, times, durations, one-line errors,
confirmation and progress. Nothing here imports the job layer until a command runs."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client

__all__ = [
    "Exit",
    "ago",
    "colour",
    "watch",
    "Progress",
    "confirm",
    "exits",
    "failures",
    "parse_duration",
    "parse_time",
    "run_client",
    "said",
    "table",
    "to_json",
    "utc",
]

T = TypeVar("T")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `2h`, `7d`, `1w`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write a number and a unit: 90s, 15m, 2h, 7d, 1w"
        )
    return timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def parse_time(text: str) -> datetime | timedelta:
    """A duration meaning that long ago (`2h`), or an ISO-8601 time (UTC unless it says)."""
    if _DURATION.match(text.strip()):
        return parse_duration(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (2h, 7d: that long ago) nor an ISO time "
            "(2026-11-30T08:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def utc(at: float | None, suffix: str = " UTC") -> str:
    """A time for people: `2026-11-30 08:15:02 UTC`; `-` when unknown (None or 0)."""
    if not at:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S") + suffix


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as aligned columns, the first row the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def to_json(value: Any) -> str:
    import msgspec

    return msgspec.json.encode(value).decode()


def failures() -> tuple[type[Exception], ...]:
    """What a command reports in one line: no server, no JetStream, a request that
    failed (nats-py's errors: a timeout, a connection lost midway), a bad value."""
    import nats.errors

    from naq_resilience.jetstream.connection import (
        JetStreamUnavailableError,
        NatsUnavailableError,
    )

    return (
        NatsUnavailableError, JetStreamUnavailableError, nats.errors.Error, LookupError,
        ValueError, TypeError,
    )  # fmt: skip


def said(exc: Exception) -> str:
    import nats.errors

    if isinstance(exc, nats.errors.Error):
        return f"the NATS server did not answer as asked ({type(exc).__name__}: {exc})"
    return str(exc).strip("'\"") if isinstance(exc, KeyError) else str(exc)


class Exit(Exception):
    """Leave a command with this exit code (its message already printed)."""

    def __init__(self, code: int) -> None:
        self.code = code


def exits(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Exit as stop:
            return stop.code

    return run


def run_client(command: str, call: Callable[[Client], Awaitable[T]], url: str | None) -> T:
    """Run `call` with a client; an error a person can act on is one line and exit 1."""
    from naq_resilience.jetstream.client import Client

    async def main() -> T:
        async with Client(url) as client:
            return await call(client)

    try:
        return asyncio.run(main())
    except failures() as exc:
        print(f"naq {command}: {said(exc)}", file=sys.stderr)
        raise Exit(1) from None


def confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        print(f"{question} Not asked (no terminal): pass --yes to go ahead.", file=sys.stderr)
        return False
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


class Progress:
    """A bar on stderr when it is a terminal; silent otherwise (logs stay clean)."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._live = sys.stderr.isatty()
        self._shown = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self._live:
            return
        now = time.monotonic()
        if done < total and now - self._shown < 0.1:
            return
        self._shown = now
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "-" * (width - filled)
        end = "\n" if done >= total else ""
        print(f"\r{self._what} [{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)


_COLOURS = {"red": "31", "yellow": "33", "green": "32", "dim": "2", "bold": "1"}


def colour(text: str, name: str) -> str:
    """`text` in a colour when stdout is a terminal (and NO_COLOR is unset); as is otherwise."""
    import os

    if not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
        return text
    return f"\033[{_COLOURS[name]}m{text}\033[0m"


def ago(at: float | None, now: float) -> str:
    """`12s ago`, `3m ago`, `2h ago`; `-` when unknown."""
    if not at:
        return "-"
    seconds = max(0.0, now - at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def watch(render: Callable[[], str], every: float | None) -> int:
    """Print `render()` once, or every `every` seconds until Ctrl-C, redrawing a terminal."""
    if every is None:
        print(render())
        return 0
    try:
        while True:
            text = render()
            if sys.stdout.isatty():
                print("\033[H\033[J", end="")
            print(text, flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        return 0
