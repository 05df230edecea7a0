"""The jobs `naq demo` runs: every decorator, with chaos switched on by the demo's workers.

Imported by the demo's worker processes (`--import naq_resilience.ops.demo_jobs`). Each
job stands for a kind of work that fails in its own way: a flaky rates API (retried), a
geocoder that goes down (behind a breaker), a recommender with a cached fallback, a
trip booking that compensates its steps when the ticket is refused, and a row import
that meets bad data (a dead letter, as it should be). The faults are injected by
`@chaos`, seeded, so two runs of the demo fail alike; the bad rows are real.

The fallback and the compensations log a WARNING from the job's own code, as the
guide's examples do: that is what the demo shows of them (through the workers' log
stream), since they happen inside a job and leave no other trace.
"""

from __future__ import annotations

import asyncio
import logging

from naq_resilience.policies.breaker import circuit_breaker
from naq_resilience.policies.chaos import chaos
from naq_resilience.policies.compensate import compensate, saga
from naq_resilience.policies.errors import DataValidationError
from naq_resilience.policies.fallback import fallback
from naq_resilience.policies.retry import retry

__all__ = ["book_trip", "fetch_rates", "geocode", "import_row", "recommend"]

log = logging.getLogger("naq.demo")


@retry(max_retries=4, retry_delay=0.05, retry_strategy="exponential", jitter=None)
@chaos(name="demo.rates", failure_rate=0.35, exceptions=(ConnectionError,))
async def fetch_rates(currency: str) -> str:
    await asyncio.sleep(0.01)
    return f"{currency}: 1.08"


@retry(max_retries=6, retry_delay=0.2, retry_strategy="fixed", jitter=None)
@circuit_breaker(name="demo.geocoder", failure_threshold=4, recovery_timeout=1.0)
@chaos(name="demo.geocoder", failure_rate=0.5, exceptions=(TimeoutError,))
async def geocode(address: str) -> str:
    await asyncio.sleep(0.01)
    return f"{address} -> (52.52, 13.40)"


def cached_recommendations(user_id: int) -> list[str]:
    log.warning("fallback: the recommender is down, user %d gets the cached bestsellers", user_id)
    return ["bestseller-1", "bestseller-2"]


@fallback(cached_recommendations, on=(ConnectionError,))
@chaos(name="demo.recommender", failure_rate=0.4, exceptions=(ConnectionError,))
async def recommend(user_id: int) -> list[str]:
    await asyncio.sleep(0.01)
    return [f"pick-{user_id}-1", f"pick-{user_id}-2"]


def release_seat(seat: str, trip: str) -> None:
    log.warning("compensation: released seat %s of trip %s", seat, trip)


def refund(payment: str, trip: str) -> None:
    log.warning("compensation: refunded %s of trip %s", payment, trip)


@compensate(undo=release_seat)
def hold_seat(trip: str) -> str:
    return f"seat-14C-{trip}"


@compensate(undo=refund)
def take_payment(trip: str) -> str:
    return f"payment-{trip}"


@chaos(name="demo.tickets", failure_rate=0.3, exceptions=(DataValidationError,))
def issue_ticket(trip: str) -> str:
    return f"ticket-{trip}"


@saga
def book_trip(trip: str) -> str:
    hold_seat(trip)
    take_payment(trip)
    return issue_ticket(trip)


def import_row(row: int) -> str:
    if row % 20 == 19:
        raise DataValidationError(f"row {row}: the email column is empty")
    return f"imported row {row}"
