"""`naq errors rate|patterns|budget`: the fleet's error rate, its error patterns and an
error budget, read from the counters the workers keep. Tables for people, `--json`
for scripts; `naq errors budget --check` exits 1 when the budget is spent or a
burn-rate alert fires, for a cron job or a CI gate.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING

from naq_resilience.cli._common import exits, parse_duration, run_client, table, to_json, utc

if TYPE_CHECKING:
    from naq_resilience.jetstream.analytics import ErrorPattern, ErrorRate
    from naq_resilience.jetstream.client import Client

__all__ = ["add_errors_command"]

Parser = argparse.ArgumentParser
DEFAULT_WINDOWS = ("5m", "1h", "24h")


def _common(parser: Parser) -> None:
    parser.add_argument("--json", action="store_true", help="JSON, for scripts")
    parser.add_argument("--nats-url", default=None, help="the NATS server (default: $NAQ_NATS_URL)")


def add_errors_command(commands: argparse._SubParsersAction[Parser]) -> None:
    parser = commands.add_parser(
        "errors",
        help="error rates, error patterns and error budgets",
        description=(
            "Read from the counters every worker keeps as it works (counted as outcomes "
            "happen, sent once a second): a window's figure lags the work by about a second."
        ),
    )
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True

    rate = actions.add_parser("rate", help="jobs ended and failed for good, per window")
    rate.add_argument(
        "--window", type=parse_duration, action="append", default=None, metavar="DURATION",
        help="a window to read (5m, 1h, 24h, 7d); repeat for several (default: 5m 1h 24h)",
    )  # fmt: skip
    rate.add_argument("--queue", default=None, help="one queue (default: every queue)")
    rate.add_argument(
        "--function", default=None, help="one function, module:qualname (default: every one)"
    )
    _common(rate)
    rate.set_defaults(handler=_rate)

    patterns = actions.add_parser(
        "patterns", help="the most frequent errors: a type raised in one place"
    )
    patterns.add_argument(
        "--window", type=parse_duration, default=timedelta(hours=24), metavar="DURATION",
        help="the window (default: 24h); trends compare it with the one before",
    )  # fmt: skip
    patterns.add_argument("--queue", default=None, help="one queue (default: every queue)")
    patterns.add_argument("--limit", type=int, default=20, help="patterns (%(default)s)")
    _common(patterns)
    patterns.set_defaults(handler=_patterns)

    budget = actions.add_parser(
        "budget", help="an error budget: what is left, and the burn-rate alerts"
    )
    budget.add_argument(
        "--target", type=float, default=0.999, help="the target success rate (%(default)s)"
    )
    budget.add_argument(
        "--window", type=parse_duration, default=timedelta(hours=24), metavar="DURATION",
        help="the window the budget is read over (default: 24h)",
    )  # fmt: skip
    budget.add_argument(
        "--check", action="store_true",
        help="exit 1 when the budget is spent or a burn-rate alert fires",
    )  # fmt: skip
    _common(budget)
    budget.set_defaults(handler=_budget)


# --------------------------------------------------------------------------- formatting


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%"


def _duration(seconds: float) -> str:
    """`5m`, `24h`, `7d`: days only from two on, as people say a day's window."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= max(size, 2 * 86400 if unit == "d" else 0) and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _trend(trend: float | None, previous: int | None) -> str:
    if trend is not None:
        return f"x{trend:.2f}"
    return "new" if previous == 0 else "-"


def _rate_rows(rates: list[ErrorRate]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("WINDOW", "SINCE (UTC)", "JOBS", "COMPLETED", "FAILED", "RETRIED", "ERROR RATE")
    ]
    for rate in rates:
        rows.append((
            _duration(rate.window), utc(rate.since, ""), f"{rate.total:,}",
            f"{rate.completed:,}", f"{rate.failed:,}", f"{rate.retried:,}", _percent(rate.rate),
        ))  # fmt: skip
    return rows


def _pattern_rows(patterns: list[ErrorPattern]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("COUNT", "SHARE", "TREND", "ERROR TYPE", "WHERE", "FIRST SEEN (UTC)", "LAST SEEN (UTC)",
         "SAMPLE JOB")
    ]  # fmt: skip
    for p in patterns:
        rows.append((
            f"{p.count:,}", f"{p.share * 100:.1f}%", _trend(p.trend, p.previous_count),
            p.error_type, p.where or "-", utc(p.first_seen, ""), utc(p.last_seen, ""),
            p.sample_job_ids[0] if p.sample_job_ids else "-",
        ))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- the actions


@exits
def _rate(args: argparse.Namespace) -> int:
    windows: list[timedelta] = args.window or [parse_duration(w) for w in DEFAULT_WINDOWS]

    async def read(client: Client) -> list[ErrorRate]:
        return [
            await client.error_rate(w, queue=args.queue, function=args.function) for w in windows
        ]

    rates = run_client("errors rate", read, args.nats_url)
    if args.json:
        print(to_json(rates))
        return 0
    scope = ", ".join(
        part
        for part in (
            f"queue {args.queue}" if args.queue else "",
            f"function {args.function}" if args.function else "",
        )
        if part
    )
    print(table(_rate_rows(rates)))
    print(f"\n{scope or 'every queue'}; jobs = completed + failed for good; retried attempts apart")
    return 0


@exits
def _patterns(args: argparse.Namespace) -> int:
    window: timedelta = args.window
    found = run_client(
        "errors patterns",
        lambda c: c.error_patterns(window, queue=args.queue, limit=args.limit),
        args.nats_url,
    )
    if args.json:
        print(to_json(found))
        return 0
    if not found:
        print(f"no failed attempts in the last {_duration(window.total_seconds())}")
        return 0
    print(table(_pattern_rows(found)))
    total = round(found[0].count / found[0].share) if found[0].share else 0
    print(
        f"\n{total:,} failed attempts in the last {_duration(window.total_seconds())}"
        f"{f' on queue {args.queue}' if args.queue else ''}; trend: the rate against the "
        "window before (new: not seen then)"
    )
    return 0


@exits
def _budget(args: argparse.Namespace) -> int:
    window: timedelta = args.window
    status = run_client(
        "errors budget", lambda c: c.error_budget(args.target, window), args.nats_url
    )
    alerting = [rate for rate in status.burn_rates if rate.fires]
    failing = args.check and (status.spent or bool(alerting))
    if args.json:
        print(to_json({**_builtins(status), "spent": status.spent}))
        return 1 if failing else 0
    state = "spent" if status.spent else "low" if status.remaining < 0.1 else "ok"
    print(
        "\n".join([
            f"target:      {_percent(status.target)} of jobs succeed, over "
            f"{_duration(status.window)} (since {utc(status.since)})",
            f"jobs:        {status.total:,} ended, {status.failed:,} failed for good "
            f"(error rate {_percent(status.error_rate)})",
            f"budget:      {_percent(status.budget)} of jobs may fail; "
            f"{status.remaining * 100:.1f}% of it left ({state}); burn rate "
            f"{status.burn_rate:.2f}x",
            "",
        ])
    )  # fmt: skip
    rows: list[tuple[str, ...]] = [
        ("ALERT", "WINDOWS", "THRESHOLD", "LONG BURN", "SHORT BURN", "FIRES")
    ]
    for rate in status.burn_rates:
        rows.append((
            f"{rate.name} ({'page' if rate.name == 'fast' else 'ticket'})",
            f"{_duration(rate.long_window)}+{_duration(rate.short_window)}",
            f"{rate.threshold:g}x", f"{rate.long_burn:.2f}x", f"{rate.short_burn:.2f}x",
            "YES" if rate.fires else "no",
        ))  # fmt: skip
    print(table(rows))
    return 1 if failing else 0


def _builtins(value: object) -> dict[str, object]:
    import msgspec

    data: dict[str, object] = msgspec.to_builtins(value)
    return data
