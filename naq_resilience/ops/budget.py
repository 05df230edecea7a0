"""`ErrorBudget`, as NAQ's guide writes it ("Error Budget Management"), on the workers' counters.

The guide's class reads every job of the timeframe (`get_jobs_in_timeframe`) and counts
the failed ones on each check; this one reads a few dozen counters per window
(`Client.error_budget`), so a check costs the same on an idle and a busy fleet, and
adds what the guide leaves out: how much of the budget is left, and the SRE
workbook's multi-window burn-rate alerts, which say early that the budget will run
out rather than once it has.

Its logs keep the guide's words and levels, on the `naq_resilience.budget` logger:
CRITICAL when the budget is spent, WARNING while less than a tenth of it is left.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from naq_resilience.jetstream.analytics import BudgetStatus, BurnRate
from naq_resilience.jetstream.client import _default_sync_client

__all__ = ["ErrorBudget"]

log = logging.getLogger("naq_resilience.budget")

LOW: float = 0.1
"""The fraction of the budget left under which `check_budget` warns (the guide's 10%)."""


class ErrorBudget:
    """A success-rate target and its error budget: `1 - target_success_rate` of the jobs
    that end may fail for good. Synchronous, on the shared connection to `nats_url`
    (or `NAQ_NATS_URL`); async code asks `Client.error_budget`."""

    def __init__(self, target_success_rate: float = 0.999, *, nats_url: str | None = None) -> None:
        if (
            isinstance(target_success_rate, bool)
            or not isinstance(target_success_rate, (int, float))
            or not 0 < target_success_rate < 1
        ):
            raise ValueError(
                f"target_success_rate must be a number between 0 and 1 (exclusive), e.g. "
                f"0.999, got {target_success_rate!r}"
            )
        self.target_success_rate = float(target_success_rate)
        self.error_budget = round(1 - self.target_success_rate, 12)
        self._nats_url = nats_url

    def __repr__(self) -> str:
        return f"ErrorBudget(target_success_rate={self.target_success_rate!r})"

    def status(self, timeframe_hours: float = 24) -> BudgetStatus:
        """The budget over the last `timeframe_hours`: jobs, failures, what is left, and
        the burn-rate alerts (which read their own windows: 1h/5m and 6h/30m)."""
        window = timedelta(hours=_hours(timeframe_hours))
        client = _default_sync_client(self._nats_url)
        return client.error_budget(self.target_success_rate, window)

    def check_budget(self, timeframe_hours: float = 24) -> bool:
        """False once the error rate over the timeframe exceeds the budget (logged at
        CRITICAL); True otherwise, with a WARNING while less than 10% of it is left.
        True when no job ended in the timeframe, as in the guide."""
        status = self.status(timeframe_hours)
        if status.total == 0:
            return True
        left = self.error_budget - status.error_rate  # the guide's budget_remaining
        if status.spent:
            log.critical(
                "Error budget exceeded! Current rate: %.3f%%, Budget: %.3f%% (%d of %d jobs "
                "failed in the last %gh)",
                status.error_rate * 100, self.error_budget * 100, status.failed, status.total,
                timeframe_hours,
            )  # fmt: skip
            return False
        if status.remaining < LOW:
            log.warning(
                "Error budget running low: %.3f%% remaining (%.1f%% of the budget; %d of %d "
                "jobs failed in the last %gh)",
                left * 100, status.remaining * 100, status.failed, status.total,
                timeframe_hours,
            )  # fmt: skip
        return True

    def burn_rates(self) -> tuple[BurnRate, ...]:
        """The fast (1h and 5m, 14.4x) and slow (6h and 30m, 6x) burn-rate alerts now."""
        return self.status(1).burn_rates


def _hours(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"timeframe_hours must be a number > 0, got {value!r}")
    return float(value)
