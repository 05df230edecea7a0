"""Alert rules: what is worth telling a person, measured against the fleet's shared state.

A rule is any object with a `name`, a `severity`, a `cooldown` (seconds) and an async
`evaluate(client) -> list[Alert]` (`AlertRule`). It measures, compares and returns the
alerts that hold now; it does not remember what it said before and does not send
anything: the `Monitor` keeps the cooldowns (in JetStream, so they are the fleet's, not a
process's) and hands the alerts to the sinks. So a new rule is a small class, and a rule
can be evaluated anywhere, a test included, without a monitor.

`Rule` is a base with the three attributes and `alert(...)`, which fills in the
bookkeeping. Each alert has a `key` saying what it is about within its rule (a breaker,
a dead-letter queue, an incident), and the cooldown is kept per rule and key: one open
breaker does not silence another.

The rules that read error analytics (`ErrorRateRule`, `ErrorPatternRule`,
`BudgetBurnRule`) call `Client.error_rate`, `Client.error_patterns` and
`Client.error_budget` (jetstream/analytics.py). `RuleUnavailable` is for a rule that
needs something a deployment does not have; the monitor logs it once per rule.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from naq_resilience.jetstream.registry import function_name
from naq_resilience.models import Alert, IncidentStatus, Severity
from naq_resilience.policies.durations import Duration, seconds

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client

__all__ = [
    "AlertRule",
    "BreakerOpenRule",
    "BudgetBurnRule",
    "DeadLetterDepthRule",
    "ErrorPatternRule",
    "ErrorRateRule",
    "IncidentRule",
    "Rule",
    "RuleUnavailable",
    "severity_of",
]

DEFAULT_COOLDOWN = 900.0
"""Seconds a rule stays quiet about one thing after alerting on it (15 minutes)."""


class RuleUnavailable(RuntimeError):
    """The rule needs something this deployment does not have (error analytics)."""


@runtime_checkable
class AlertRule(Protocol):
    """What the monitor needs of a rule."""

    name: str
    severity: Severity
    cooldown: float

    async def evaluate(self, client: Client) -> list[Alert]:
        """The alerts that hold now (empty: all is well); never sends them itself."""
        ...


def severity_of(value: Severity | str) -> Severity:
    """`Severity.WARNING`, `"warning"` or `"WARNING"`; anything else is refused by name."""
    try:
        return Severity(str(value).upper())
    except ValueError:
        raise ValueError(
            f"severity must be one of {', '.join(s.value for s in Severity)}, got {value!r}"
        ) from None


class Rule:
    """Base for rules: a name, a severity, a cooldown, and `alert()` to build alerts."""

    def __init__(
        self,
        *,
        name: str,
        severity: Severity | str = Severity.WARNING,
        cooldown: Duration = DEFAULT_COOLDOWN,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a rule needs a name, got {name!r}")
        self.name = name
        self.severity = severity_of(severity)
        self.cooldown = seconds(cooldown, "cooldown")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    async def evaluate(self, client: Client) -> list[Alert]:
        raise NotImplementedError

    def alert(
        self,
        title: str,
        message: str,
        *,
        key: str = "",
        value: float | None = None,
        threshold: float | None = None,
        details: dict[str, Any] | None = None,
        severity: Severity | None = None,
    ) -> Alert:
        return Alert(
            id=os.urandom(16).hex(),
            rule=self.name,
            severity=self.severity if severity is None else severity,
            title=title,
            message=message,
            fired_at=time.time(),
            key=key,
            value=value,
            threshold=threshold,
            details=details or {},
        )


class DeadLetterDepthRule(Rule):
    """Alerts when a dead-letter queue holds more than `threshold` letters.

    `dead_letter_queue` is one name or several (a queue name means its `<queue>.dead`),
    each its own alert (key: the name); None counts every dead letter. One request per
    name (a consumer's pending count), however many letters there are.
    """

    def __init__(
        self,
        threshold: int = 0,
        *,
        dead_letter_queue: str | Sequence[str] | None = None,
        name: str | None = None,
        severity: Severity | str = Severity.WARNING,
        cooldown: Duration = DEFAULT_COOLDOWN,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ValueError(f"threshold must be a whole number >= 0, got {threshold!r}")
        queues: list[str | None]
        if dead_letter_queue is None:
            queues = [None]
        elif isinstance(dead_letter_queue, str):
            queues = [dead_letter_queue]
        else:
            queues = list(dead_letter_queue)
        self.threshold = threshold
        self.dead_letter_queues = queues
        described = ",".join(q for q in queues if q) or "all"
        super().__init__(
            name=name or f"dead-letters-{described}", severity=severity, cooldown=cooldown
        )

    async def evaluate(self, client: Client) -> list[Alert]:
        alerts = []
        for queue in self.dead_letter_queues:
            count = await client.count_dead_letters(dead_letter_queue=queue)
            if count > self.threshold:
                where = f"dead-letter queue {queue}" if queue else "the dead-letter queues"
                alerts.append(
                    self.alert(
                        f"{count} dead letters in {where}",
                        f"{where} holds {count} dead letters, more than {self.threshold}; "
                        f"see `naq dlq list{' --dlq ' + queue if queue else ''}`.",
                        key=queue or "",
                        value=float(count),
                        threshold=float(self.threshold),
                        details={"dead_letter_queue": queue},
                    )
                )
        return alerts


class BreakerOpenRule(Rule):
    """Alerts for each shared circuit breaker that is open (and half-open, if asked),
    as the workers wrote it to `naq-breakers`; key: the breaker's name.

    `breakers` are names or globs (`billing-*`); all by default.
    """

    def __init__(
        self,
        breakers: Sequence[str] = ("*",),
        *,
        include_half_open: bool = False,
        name: str = "breaker-open",
        severity: Severity | str = Severity.ERROR,
        cooldown: Duration = DEFAULT_COOLDOWN,
    ) -> None:
        if isinstance(breakers, str):
            breakers = [breakers]
        self.breakers = list(breakers)
        self.include_half_open = include_half_open
        super().__init__(name=name, severity=severity, cooldown=cooldown)

    async def evaluate(self, client: Client) -> list[Alert]:
        from naq_resilience.jetstream.stores import read_breakers

        states = {"open", "half_open"} if self.include_half_open else {"open"}
        _, buckets = await client._ready()
        alerts = []
        for record in await read_breakers(buckets.breakers):
            if record.state not in states:
                continue
            if not any(fnmatch.fnmatchcase(record.name, pattern) for pattern in self.breakers):
                continue
            since = ""
            if record.opened_at:
                opened = time.gmtime(record.opened_at)
                since = f" since {time.strftime('%Y-%m-%d %H:%M:%S UTC', opened)}"
            alerts.append(
                self.alert(
                    f"circuit breaker {record.name} is {record.state.replace('_', '-')}",
                    f"circuit breaker {record.name} is {record.state.replace('_', '-')}{since} "
                    f"after {record.failures} consecutive failures; its jobs are deferred "
                    "until it closes.",
                    key=record.name,
                    value=float(record.failures),
                    details={
                        "breaker": record.name,
                        "state": record.state,
                        "opened_at": record.opened_at,
                        "updated_by": record.updated_by,
                    },
                )
            )
        return alerts


class IncidentRule(Rule):
    """Pages for each open incident until someone acknowledges it: one alert per incident
    (key: its id) every `cooldown`, with the incident's own severity.

    `min_severity` leaves out less urgent incidents; `include_acknowledged` keeps paging
    after an acknowledgement (until it is resolved).
    """

    def __init__(
        self,
        *,
        min_severity: Severity | str = Severity.INFO,
        include_acknowledged: bool = False,
        name: str = "incidents",
        cooldown: Duration = DEFAULT_COOLDOWN,
    ) -> None:
        self.min_severity = severity_of(min_severity)
        self.include_acknowledged = include_acknowledged
        super().__init__(name=name, severity=Severity.CRITICAL, cooldown=cooldown)

    async def evaluate(self, client: Client) -> list[Alert]:
        from naq_resilience.jetstream.incidents import IncidentBook

        statuses = [IncidentStatus.OPEN]
        if self.include_acknowledged:
            statuses.append(IncidentStatus.ACKNOWLEDGED)
        book = await IncidentBook.of(client)
        alerts = []
        for incident in await book.list(statuses):
            if incident.severity.rank < self.min_severity.rank:
                continue
            alerts.append(
                self.alert(
                    f"incident {incident.id}: {incident.error_type}",
                    f"incident {incident.id} ({incident.status.value}, {incident.count} "
                    f"occurrence{'s' if incident.count != 1 else ''}): {incident.error_type}"
                    f"{' at ' + incident.where if incident.where else ''}: "
                    f"{incident.message[:300]}; `naq incidents ack {incident.id}` stops "
                    "the pages.",
                    key=incident.id,
                    value=float(incident.count),
                    severity=incident.severity,
                    details={
                        "incident_id": incident.id,
                        "error_type": incident.error_type,
                        "where": incident.where,
                        "status": incident.status.value,
                        "opened_at": incident.opened_at,
                        "job_ids": incident.job_ids,
                    },
                )
            )
        return alerts


# ----------------------------------------------------------------------------- analytics
# These read `Client.error_rate`, `Client.error_patterns` and `Client.error_budget`
# (jetstream/analytics.py): a few dozen counters per evaluation, however many jobs ran.


def _window(value: Duration) -> timedelta:
    return timedelta(seconds=seconds(value, "window", positive=True))


def _described(window: timedelta) -> str:
    total = window.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size and total % size == 0:
            return f"{int(total // size)}{unit}"
    return f"{total:g}s"


def _min_jobs(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"min_jobs must be a whole number >= 0, got {value!r}")
    return value


class ErrorRateRule(Rule):
    """Alerts when the share of failed jobs over `window` is above `threshold` (0.05 for
    5%), once at least `min_jobs` jobs ended in it, optionally for one queue and/or
    function (`module:qualname` or the function). "Failed" is failed for good (a dead
    letter); a retried attempt is not a failed job (`ErrorRate`)."""

    def __init__(
        self,
        threshold: float,
        window: Duration = 3600.0,
        *,
        queue: str | None = None,
        function: str | Callable[..., Any] | None = None,
        min_jobs: int = 10,
        name: str | None = None,
        severity: Severity | str = Severity.WARNING,
        cooldown: Duration = DEFAULT_COOLDOWN,
    ) -> None:
        if isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold is a share of jobs, 0 to 1, got {threshold!r}")
        self.threshold = float(threshold)
        self.window = _window(window)
        self.queue = queue
        if function is not None and not isinstance(function, str):
            function = function_name(function)
        self.function = function
        self.min_jobs = _min_jobs(min_jobs)
        self.scope = "/".join(s for s in (queue, self.function) if s)
        super().__init__(
            name=name or f"error-rate-{self.scope or 'all'}", severity=severity, cooldown=cooldown
        )

    async def evaluate(self, client: Client) -> list[Alert]:
        rate = await client.error_rate(self.window, queue=self.queue, function=self.function)
        if rate.total < self.min_jobs or rate.rate <= self.threshold:
            return []
        on = f" on {self.scope}" if self.scope else ""
        return [
            self.alert(
                f"error rate {rate.rate:.1%}{on} over {_described(self.window)}",
                f"{rate.failed} of {rate.total} jobs{on} failed in the last "
                f"{_described(self.window)} ({rate.rate:.2%}), above {self.threshold:.2%}.",
                key=self.scope,
                value=rate.rate,
                threshold=self.threshold,
                details={
                    "total": rate.total,
                    "failed": rate.failed,
                    "completed": rate.completed,
                    "retried": rate.retried,
                    "queue": rate.queue,
                    "function": rate.function,
                    "since": rate.since,
                    "until": rate.until,
                },
            )
        ]


class ErrorPatternRule(Rule):
    """Alerts for each error pattern (an error type raised at one place) that failed
    more than `count` attempts over `window` (retried attempts included, as
    `ErrorPattern.count`); key: the pattern's fingerprint, the same as the failure
    records' and the incidents' (`outcomes.fingerprint_of`)."""

    def __init__(
        self,
        count: int,
        window: Duration = 3600.0,
        *,
        queue: str | None = None,
        limit: int = 20,
        name: str | None = None,
        severity: Severity | str = Severity.WARNING,
        cooldown: Duration = DEFAULT_COOLDOWN,
    ) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a whole number >= 0, got {count!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number >= 1, got {limit!r}")
        self.count = count
        self.window = _window(window)
        self.queue = queue
        self.limit = limit
        super().__init__(
            name=name or f"error-patterns-{queue or 'all'}", severity=severity, cooldown=cooldown
        )

    async def evaluate(self, client: Client) -> list[Alert]:
        patterns = await client.error_patterns(self.window, queue=self.queue, limit=self.limit)
        alerts = []
        for pattern in patterns:
            if pattern.count <= self.count:
                continue
            at = f" at {pattern.where}" if pattern.where else ""
            trend = "" if pattern.trend is None else f", {pattern.trend:.1f}x the window before"
            alerts.append(
                self.alert(
                    f"{pattern.error_type}{at}: {pattern.count} in {_described(self.window)}",
                    f"{pattern.error_type}{at} failed {pattern.count} attempts in the last "
                    f"{_described(self.window)} ({pattern.share:.0%} of failures{trend}), "
                    f"more than {self.count}.",
                    key=pattern.fingerprint,
                    value=float(pattern.count),
                    threshold=float(self.count),
                    details={
                        "error_type": pattern.error_type,
                        "where": pattern.where,
                        "function": pattern.function,
                        "message": pattern.message,
                        "queues": list(pattern.queues),
                        "share": pattern.share,
                        "trend": pattern.trend,
                        "previous_count": pattern.previous_count,
                        "first_seen": pattern.first_seen,
                        "last_seen": pattern.last_seen,
                        "sample_job_ids": list(pattern.sample_job_ids),
                    },
                )
            )
        return alerts


class BudgetBurnRule(Rule):
    """Alerts when the error budget of `target_success_rate` (0.999: one job in a
    thousand may fail for good) burns too fast. Each of these is its own alert (key):

    - `"fast"` and `"slow"`: the SRE workbook's multi-window burn-rate alerts
      (`BudgetStatus.burn_rates`): the last hour and the last 5 minutes both burn the
      budget at least 14.4 times as fast as it allows; the last 6 hours and the last 30
      minutes both at least 6 times. Off with `multiwindow=False`.
    - `"window"`: the burn rate over `window` is above `burn_rate` (1.0: the budget of
      the window is spent by its end), when `burn_rate` is given.

    Quiet while fewer than `min_jobs` jobs ended in `window` (a first failure is not a
    burn). `window` can be no longer than the outcome counters are kept
    (`NAQ_COUNTS_MAX_AGE`, 8 days unless set).
    """

    def __init__(
        self,
        target_success_rate: float,
        window: Duration = 86400.0,
        *,
        burn_rate: float | None = None,
        multiwindow: bool = True,
        min_jobs: int = 10,
        name: str | None = None,
        severity: Severity | str = Severity.ERROR,
        cooldown: Duration = DEFAULT_COOLDOWN,
    ) -> None:
        if isinstance(target_success_rate, bool) or not 0 < target_success_rate < 1:
            raise ValueError(
                f"target_success_rate is a share below 1 (0.999), got {target_success_rate!r}"
            )
        if burn_rate is not None and (isinstance(burn_rate, bool) or not burn_rate > 0):
            raise ValueError(f"burn_rate must be > 0, got {burn_rate!r}")
        if burn_rate is None and not multiwindow:
            raise ValueError("give a burn_rate, or leave multiwindow on: nothing would alert")
        self.target_success_rate = float(target_success_rate)
        self.window = _window(window)
        self.burn_rate = None if burn_rate is None else float(burn_rate)
        self.multiwindow = bool(multiwindow)
        self.min_jobs = _min_jobs(min_jobs)
        super().__init__(
            name=name or f"budget-burn-{self.target_success_rate:g}",
            severity=severity,
            cooldown=cooldown,
        )

    async def evaluate(self, client: Client) -> list[Alert]:
        status = await client.error_budget(self.target_success_rate, self.window)
        if status.total < self.min_jobs:
            return []
        target = f"{self.target_success_rate:.3%}"
        details: dict[str, Any] = {
            "target_success_rate": status.target,
            "window": status.window,
            "total": status.total,
            "failed": status.failed,
            "error_rate": status.error_rate,
            "remaining": status.remaining,
            "burn_rate": status.burn_rate,
            "burn_rates": msgspec.to_builtins(status.burn_rates),
        }
        alerts = []
        if self.multiwindow:
            for alarm in status.burn_rates:
                if not alarm.fires:
                    continue
                burn = min(alarm.long_burn, alarm.short_burn)
                long, short = (
                    _described(timedelta(seconds=w))
                    for w in (alarm.long_window, alarm.short_window)
                )
                alerts.append(
                    self.alert(
                        f"error budget burning {burn:.1f}x ({alarm.name}, target {target})",
                        f"the last {long} and the last {short} burn the error budget of "
                        f"{target} success {alarm.long_burn:.1f} and {alarm.short_burn:.1f} "
                        f"times as fast as it allows, at or above {alarm.threshold:g}.",
                        key=alarm.name,
                        value=burn,
                        threshold=alarm.threshold,
                        details=details,
                    )
                )
        if self.burn_rate is not None and status.burn_rate > self.burn_rate:
            alerts.append(
                self.alert(
                    f"error budget burning {status.burn_rate:.1f}x over "
                    f"{_described(self.window)} (target {target})",
                    f"the error budget of {target} success over {_described(self.window)} "
                    f"is burning {status.burn_rate:.2f} times the sustainable pace, above "
                    f"{self.burn_rate:g}: {status.remaining:.0%} of it is left.",
                    key="window",
                    value=status.burn_rate,
                    threshold=self.burn_rate,
                    details=details,
                )
            )
        return alerts
