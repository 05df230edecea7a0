"""Cron expressions as nats-server's message scheduler reads them, checked at the call.

The server (ADR-51) takes six fields, seconds first: `sec min hour day-of-month month
day-of-week`, each a comma list of `*` (or `?`), `n`, `a-b`, with an optional `/step`
(`n/step` runs from n to the field's end); months and weekdays may be named (`jan`,
`mon`); day-of-week runs 0-6 from Sunday. When neither day field is `*`, a day matching
either runs (`0 0 9 1,15 * mon`: the 1st, the 15th and every Monday). `@yearly`,
`@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly` stand for their
cron. A five-field (minute-first) expression is refused by the server, so it is refused
here, with the six-field form to write instead.

The times themselves are computed here only for a counted schedule (`repeat=N`), whose
runs are stored as one-shot messages up front; a schedule that repeats until cancelled
is timed by the server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["CronError", "CronExpression", "parse_cron", "zone"]

_NAMED = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
# (name, lowest, highest, names) per field, in the server's order.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("seconds", 0, 59, {}),
    ("minutes", 0, 59, {}),
    ("hours", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)
_SEARCH_YEARS = 5  # the server gives up on a pattern with no time within five years


class CronError(ValueError):
    """A cron expression nats-server's scheduler would refuse."""


def _number(text: str, names: dict[str, int], expression: str, field: str) -> int:
    value = names.get(text.lower())
    if value is not None:
        return value
    if not text.isdigit():
        raise CronError(
            f"cron {expression!r}: {text!r} in the {field} field is not a number"
            + (f" or a name ({', '.join(names)})" if names else "")
        )
    return int(text)


def _field(text: str, index: int, expression: str) -> tuple[frozenset[int], bool]:
    """The values one field allows, and whether it was an unrestricted `*`."""
    name, low, high, names = _FIELDS[index]
    values: set[int] = set()
    star = False
    for item in text.split(","):
        if not item:
            raise CronError(f"cron {expression!r}: an empty item in the {name} field")
        span, _, step_text = item.partition("/")
        if span in ("*", "?"):
            start, end = low, high
            star = star or not step_text or step_text == "1"
        else:
            first, dash, last = span.partition("-")
            start = _number(first, names, expression, name)
            end = _number(last, names, expression, name) if dash else start
            if step_text and not dash:
                end = high  # "n/step" runs to the end of the field
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"cron {expression!r}: the step {step_text!r} must be a number > 0")
            step = int(step_text)
        if start < low or end > high:
            raise CronError(
                f"cron {expression!r}: {item!r} is outside the {name} field's {low}-{high}"
            )
        if start > end:
            raise CronError(f"cron {expression!r}: the range {item!r} runs backwards")
        values.update(range(start, end + 1, step))
    return frozenset(values), star


@dataclass(frozen=True)
class CronExpression:
    """A parsed six-field expression; `times(after, zone)` yields when it fires."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    either_day: bool
    """Both day fields restricted: a day matching either one runs (as crontab does)."""

    def _day_matches(self, day: dt.date) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays  # Sunday is 0
        return (in_month or in_week) if self.either_day else (in_month and in_week)

    def times(self, after: dt.datetime, time_zone: ZoneInfo | None = None) -> Iterator[dt.datetime]:
        """Every firing time strictly after `after` (aware), in UTC, for five years.

        A local time that a daylight-saving change skips is taken at the offset before
        the change; one it repeats, once.
        """
        zone_info = time_zone or dt.UTC
        local = after.astimezone(zone_info)
        day = local.date()
        last_day = day + dt.timedelta(days=366 * _SEARCH_YEARS)
        hours, minutes, seconds = sorted(self.hours), sorted(self.minutes), sorted(self.seconds)
        previous = after.astimezone(dt.UTC)
        while day <= last_day:
            if day.month in self.months and self._day_matches(day):
                for hour in hours:
                    for minute in minutes:
                        for second in seconds:
                            moment = dt.datetime(
                                day.year, day.month, day.day, hour, minute, second,
                                tzinfo=zone_info,
                            ).astimezone(dt.UTC)  # fmt: skip
                            if moment > previous:
                                previous = moment
                                yield moment
            day += dt.timedelta(days=1)

    def next_after(self, after: dt.datetime, time_zone: ZoneInfo | None = None) -> dt.datetime:
        for moment in self.times(after, time_zone):
            return moment
        raise CronError(f"cron {self.text!r} never fires in the next {_SEARCH_YEARS} years")


def parse_cron(expression: str) -> CronExpression:
    """The expression checked by the server's rules, or a `CronError` naming the fix."""
    if not isinstance(expression, str):
        raise CronError(f"cron must be a string like '0 */5 * * * *', got {expression!r}")
    text = _NAMED.get(expression.strip().lower(), expression)
    parts = text.split()
    if len(parts) == 5:
        raise CronError(
            f"cron {expression!r} has 5 fields; nats-server's scheduler reads 6, seconds "
            f"first: write '0 {text.strip()}' to run at second 0 of each matching minute"
        )
    if len(parts) != 6:
        raise CronError(
            f"cron {expression!r} must have 6 fields (seconds minutes hours day-of-month "
            f"month day-of-week, e.g. '0 */5 * * * *'), or be one of {', '.join(_NAMED)}; "
            f"it has {len(parts)}"
        )
    fields = [_field(part, i, expression) for i, part in enumerate(parts)]
    cron = CronExpression(
        text=expression,
        seconds=fields[0][0],
        minutes=fields[1][0],
        hours=fields[2][0],
        days=fields[3][0],
        months=fields[4][0],
        weekdays=fields[5][0],
        either_day=not (fields[3][1] or fields[5][1]),
    )
    cron.next_after(dt.datetime.now(dt.UTC))  # a pattern that never fires is refused too
    return cron


def zone(name: str | None) -> ZoneInfo | None:
    """The IANA time zone a cron is read in; fixed offsets are refused, as the server does."""
    if name is None:
        return None
    if not isinstance(name, str) or not name or name.startswith(("+", "-")) or name[0].isdigit():
        raise CronError(
            f"time_zone must be an IANA zone name like 'Europe/Amsterdam' or 'UTC', got "
            f"{name!r} (nats-server refuses fixed offsets)"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(
            f"time_zone {name!r} is not a known IANA zone; write e.g. 'Europe/Amsterdam' "
            "or 'America/New_York'"
        ) from None
