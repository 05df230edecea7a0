"""Error monitoring, as NAQ's error-handling guide does it, in plain synchronous code.

    python examples/error_monitoring.py

A small shop's jobs run on a worker: receipts go out, some card charges fail because
the payment gateway drops connections (retried, some for good), and an import of
rows fails in two places for two kinds of bad data. Then the guide's three pieces of
monitoring run as the guide writes them, each reading the counters the worker kept
as it ran the jobs instead of every job record:

- `monitor_error_rates()`: the error rate of the last hour, and an alert above 5%;
- `analyze_error_patterns()`: the last 24 hours' errors by type and by where they
  were raised, most common first, and an alert for each significant one;
- `ErrorBudget(target_success_rate=0.999).check_budget()`: False once the day's
  failures exceed 0.1% of the jobs (logged at CRITICAL), with the burn-rate alerts.

Uses NAQ_NATS_URL when a server answers there, else an embedded server. The same
figures are `naq errors rate|patterns|budget` on the command line.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta
from typing import Any

from naq_resilience import (
    ErrorBudget,
    Worker,
    configured_or_embedded,
    enqueue_sync,
    error_patterns,
    error_rate,
    get_job,
)

logger = logging.getLogger("error_monitoring")
_shown = logging.StreamHandler(sys.stdout)
_shown.setFormatter(logging.Formatter("  %(levelname)s %(message)s"))
for name in ("error_monitoring", "naq_resilience.budget"):  # the guide's logs, and the budget's
    logging.getLogger(name).addHandler(_shown)
    logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger(name).propagate = False
logging.getLogger("naq_resilience").setLevel(logging.ERROR)  # the embedded server going away

ERROR_RATE_THRESHOLD = 0.05
SIGNIFICANT_ERROR_COUNT = 3
alerts: list[tuple[str, str]] = []


# --------------------------------------------------------------------------- the jobs


def send_receipt(order_id: int) -> str:
    return f"receipt for order {order_id} sent"


def charge(order_id: int, attempts: dict[str, int] = {}) -> str:  # noqa: B006
    """The gateway drops every fourth order's connection for good, and every third
    order's first try only."""
    key = str(order_id)
    attempts[key] = attempts.get(key, 0) + 1
    if order_id % 4 == 0 or (order_id % 3 == 0 and attempts[key] == 1):
        raise ConnectionError("payment gateway closed the connection")
    return f"order {order_id} charged"


def parse_amount(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"amount {text!r} is not a whole number of cents")
    return int(text)


def import_row(row: dict[str, str]) -> str:
    if "@" not in row["email"]:
        raise ValueError(f"row {row['id']}: {row['email']!r} is not an email address")
    return f"row {row['id']}: {parse_amount(row['amount'])} cents"


JOBS = [send_receipt, charge, import_row]


# --------------------------------------------------------------------------- the guide's helpers


def send_alert(level: str, message: str, details: dict[str, Any]) -> None:
    alerts.append((level, message))
    print(f"  ALERT {level}: {message} {details}")


# --------------------------------------------------------------------------- the guide's code


def monitor_error_rates() -> None:
    """Monitor job error rates and send alerts."""

    # Get recent job statistics (the guide reads every job of the hour; the counters
    # the workers keep answer the same question in one read)
    recent = error_rate(timedelta(hours=1))

    total_jobs = recent.total
    failed_jobs = recent.failed

    if total_jobs > 0:
        error_rate_ = failed_jobs / total_jobs

        if error_rate_ > ERROR_RATE_THRESHOLD:
            send_alert(
                level="WARNING",
                message=f"High error rate: {error_rate_:.2%} ({failed_jobs}/{total_jobs})",
                details={
                    "error_rate": error_rate_,
                    "failed_jobs": failed_jobs,
                    "total_jobs": total_jobs,
                    "timeframe": "last_hour",
                },
            )


def analyze_error_patterns() -> None:
    """Analyze error patterns for insights."""

    # Grouped already: by error type and where it was raised, most common first
    patterns = error_patterns(timedelta(hours=24))

    # Report on most common errors
    for pattern in patterns:
        count = pattern.count
        percentage = pattern.share * 100

        logger.info(
            f"Error type '{pattern.error_type}' at {pattern.where}: {count} occurrences "
            f"({percentage:.1f}%), e.g. job {pattern.sample_job_ids[0]}"
        )

        # Alert on significant error patterns
        if count > SIGNIFICANT_ERROR_COUNT:
            send_alert(
                level="WARNING",
                message=f"Significant error pattern detected: {pattern.error_type}",
                details={
                    "error_type": pattern.error_type,
                    "where": pattern.where,
                    "count": count,
                    "percentage": round(percentage, 1),
                },
            )


# --------------------------------------------------------------------------- running it


def wait_until_ended(job_ids: list[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    for job_id in job_ids:
        while True:
            record = get_job(job_id)
            if record is not None and record.status in ("completed", "failed"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} did not end within {seconds:g}s")
            time.sleep(0.05)


def main() -> None:
    with configured_or_embedded() as url:
        os.environ["NAQ_NATS_URL"] = url
        # A worker on a thread; stopping it sends the last of its counts.
        with Worker(["default"], nats_url=url, functions=JOBS, concurrency=4).running():
            jobs = [enqueue_sync(send_receipt, n) for n in range(1, 21)]
            jobs += [enqueue_sync(charge, n, max_retries=1, retry_delay=0.1) for n in range(1, 13)]
            rows = [
                {"id": str(n), "email": "ada.example.com" if n % 5 == 0 else f"u{n}@example.com",
                 "amount": "12.50" if n % 3 == 0 else "1250"}
                for n in range(1, 16)
            ]  # fmt: skip
            jobs += [enqueue_sync(import_row, row) for row in rows]
            wait_until_ended([job.job_id for job in jobs])
        print(f"{len(jobs)} jobs ran; what the worker counted as it ran them:")

        print("monitor_error_rates(), as the guide writes it:")
        monitor_error_rates()
        hour = error_rate(timedelta(hours=1))
        print(
            f"  last hour: {hour.total} jobs ended, {hour.failed} failed for good, "
            f"{hour.retried} attempts retried ({hour.rate:.1%})"
        )

        print("analyze_error_patterns(), as the guide writes it:")
        analyze_error_patterns()

        print("ErrorBudget(target_success_rate=0.999).check_budget(), as the guide calls it:")
        budget = ErrorBudget(target_success_rate=0.999)
        within = budget.check_budget(timeframe_hours=24)
        status = budget.status(24)
        print(
            f"  within budget: {within}; {status.remaining:.0%} of the budget left, burning "
            f"{status.burn_rate:.0f}x as fast as 99.9% allows"
        )
        for alert in budget.burn_rates():
            print(
                f"  {alert.name} burn alert ({alert.long_window / 3600:g}h and "
                f"{alert.short_window / 60:g}m above {alert.threshold:g}x): "
                f"{'FIRES' if alert.fires else 'quiet'}"
            )
        assert not within
        assert any(level == "WARNING" for level, _ in alerts)


if __name__ == "__main__":
    main()
