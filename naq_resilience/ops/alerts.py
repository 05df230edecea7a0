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
`Client.error_budget`. They are looked up when the rule is evaluated, not imported, so
these classes import and construct on a version of the library without those methods;
evaluating one there raises `RuleUnavailable`, which the monitor logs once.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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
# These read `Client.error_rate`, `Client.error_patterns` and `Client.error_budget`,
# looked up when evaluated, so the classes exist before those methods do.


def _analytics(client: Client, method: str, rule: Rule) -> Callable[..., Awaitable[Any]]:
    found = getattr(client, method, None)
    if found is None:
        raise RuleUnavailable(
            f"rule {rule.name!r} needs Client.{method} (error analytics), which this "
            "version of naq-resilience does not have"
        )
    return found  # type: ignore[no-any-return]


def _window(value: Duration) -> timedelta:
    return timedelta(seconds=seconds(value, "window", positive=True))


def _described(window: timedelta) -> str:
    total = window.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size and total % size == 0:
            return f"{int(total // size)}{unit}"
    return f"{total:g}s"


class ErrorRateRule(Rule):
    """Alerts when the share of failed jobs over `window` is above `threshold` (0.05 for
    5%), once at least `min_jobs` jobs ran, optionally for one queue or function."""

    def __init__(
        self,
        threshold: float,
        window: Duration = 3600.0,
        *,
        queue: str | None = None,
        function: str | None = None,
        min_jobs: int = 10,
        name: str | None = None,
        severity: Severity | str = Severity.WARNING,
        cooldown: Duration = DEFAULT_COOLDOWN,
    ) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold is a share of jobs, 0 to 1, got {threshold!r}")
        self.threshold = float(threshold)
        self.window = _window(window)
        self.queue = queue
        self.function = function
        self.min_jobs = min_jobs
        scope = queue or function or "all"
        super().__init__(name=name or f"error-rate-{scope}", severity=severity, cooldown=cooldown)

    async def evaluate(self, client: Client) -> list[Alert]:
        error_rate = _analytics(client, "error_rate", self)
        rate = await error_rate(self.window, queue=self.queue, function=self.function)
        if rate.total < self.min_jobs or rate.rate <= self.threshold:
            return []
        scope = f" on {self.queue or self.function}" if self.queue or self.function else ""
        return [
            self.alert(
                f"error rate {rate.rate:.1%}{scope} over {_described(self.window)}",
                f"{rate.failed} of {rate.total} jobs{scope} failed in the last "
                f"{_described(self.window)} ({rate.rate:.2%}), above {self.threshold:.2%}.",
                key=self.queue or self.function or "",
                value=float(rate.rate),
                threshold=self.threshold,
                details={
                    "total": rate.total,
                    "failed": rate.failed,
                    "since": rate.since,
                    "until": rate.until,
                },
            )
        ]


class ErrorPatternRule(Rule):
    """Alerts for each error pattern (an error type raised at one place) seen more than
    `count` times over `window`; key: the pattern's fingerprint."""

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
        self.count = count
        self.window = _window(window)
        self.queue = queue
        self.limit = limit
        super().__init__(
            name=name or f"error-patterns-{queue or 'all'}", severity=severity, cooldown=cooldown
        )

    async def evaluate(self, client: Client) -> list[Alert]:
        error_patterns = _analytics(client, "error_patterns", self)
        patterns = await error_patterns(self.window, queue=self.queue, limit=self.limit)
        alerts = []
        for pattern in patterns:
            if pattern.count <= self.count:
                continue
            at = f" at {pattern.where}" if pattern.where else ""
            alerts.append(
                self.alert(
                    f"{pattern.error_type}{at}: {pattern.count} in {_described(self.window)}",
                    f"{pattern.error_type}{at} failed {pattern.count} jobs in the last "
                    f"{_described(self.window)} ({pattern.share:.0%} of failures, trend "
                    f"{pattern.trend}), more than {self.count}.",
                    key=pattern.fingerprint,
                    value=float(pattern.count),
                    threshold=float(self.count),
                    details={
                        "error_type": pattern.error_type,
                        "where": pattern.where,
                        "share": pattern.share,
                        "trend": pattern.trend,
                        "first_seen": pattern.first_seen,
                        "last_seen": pattern.last_seen,
                        "sample_job_ids": list(pattern.sample_job_ids),
                    },
                )
            )
        return alerts


class BudgetBurnRule(Rule):
    """Alerts when the error budget of `target_success_rate` over `window` burns faster
    than `burn_rate` times the sustainable pace (1.0 spends it exactly by the window's
    end; 14.4 over an hour is the usual page for a 30-day budget)."""

    def __init__(
        self,
        target_success_rate: float,
        window: Duration = 30 * 86400.0,
        *,
        burn_rate: float = 1.0,
        name: str | None = None,
        severity: Severity | str = Severity.ERROR,
        cooldown: Duration = DEFAULT_COOLDOWN,
    ) -> None:
        if not 0 < target_success_rate < 1:
            raise ValueError(
                f"target_success_rate is a share below 1 (0.999), got {target_success_rate!r}"
            )
        if burn_rate <= 0:
            raise ValueError(f"burn_rate must be > 0, got {burn_rate!r}")
        self.target_success_rate = float(target_success_rate)
        self.window = _window(window)
        self.burn_rate = float(burn_rate)
        super().__init__(
            name=name or f"budget-burn-{self.target_success_rate:g}",
            severity=severity,
            cooldown=cooldown,
        )

    async def evaluate(self, client: Client) -> list[Alert]:
        error_budget = _analytics(client, "error_budget", self)
        status = await error_budget(self.target_success_rate, self.window)
        burn = float(status.burn_rate)
        if burn <= self.burn_rate:
            return []
        rates = getattr(status, "burn_rates", None)
        if isinstance(rates, Mapping):  # keys may be windows (timedeltas): JSON wants text
            rates = {str(window): rate for window, rate in rates.items()}
        return [
            self.alert(
                f"error budget burning {burn:.1f}x (target {self.target_success_rate:.3%})",
                f"the error budget of {self.target_success_rate:.3%} success over "
                f"{_described(self.window)} is burning {burn:.2f} times the sustainable "
                f"pace, above {self.burn_rate:g}.",
                value=burn,
                threshold=self.burn_rate,
                details={
                    "target_success_rate": self.target_success_rate,
                    "window": self.window.total_seconds(),
                    "burn_rates": rates,
                },
            )
        ]
