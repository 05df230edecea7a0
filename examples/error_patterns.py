"""The error-handling patterns, each as a job on a real JetStream queue.

    python examples/error_patterns.py

1. selective retries: retry what may pass next time, not what never will;
2. a circuit breaker: stop hammering a service that is down, defer instead of fail;
3. rollback: undo the completed steps of a job that failed half-way;
4. graceful degradation: a lesser answer instead of none, chosen by the error;
5. dead letters: every job that fails for good is kept with its whole history.

Uses NAQ_NATS_URL when a server answers there, else an embedded server.
"""

from __future__ import annotations

import asyncio

from quickstart import nats_server

from naq_resilience import (
    Client,
    DataValidationError,
    RateLimitError,
    TemporaryResourceError,
    Worker,
    circuit_breaker,
    compensate,
    fallback,
    retry,
    saga,
)

events: list[str] = []
_calls: dict[str, int] = {}


def _count(key: str) -> int:
    _calls[key] = _calls.get(key, 0) + 1
    return _calls[key]


# 1. selective retries ------------------------------------------------------------


@retry(max_retries=4, retry_delay=0.05, retry_on=(TemporaryResourceError, RateLimitError),
       ignore_on=(DataValidationError,))  # fmt: skip
async def import_contacts(batch: str) -> str:
    attempt = _count(batch)
    if batch == "rate-limited" and attempt == 1:
        raise RateLimitError("CRM says slow down", retry_after=0.2)
    if batch == "busy" and attempt < 3:
        raise TemporaryResourceError("connection pool exhausted")
    if batch == "corrupt":
        raise DataValidationError("row 17: email is missing")
    return f"imported {batch} on attempt {attempt}"


# 2. circuit breaker --------------------------------------------------------------


@circuit_breaker(name="geocoder", failure_threshold=2, recovery_timeout=0.5)
async def geocode(address: str) -> str:
    """Down for its first two calls, which open the breaker; up again after that."""
    if _count("geocoder") <= 2:
        events.append(f"geocoder called for {address!r}: down")
        raise ConnectionError("geocoder unreachable")
    events.append(f"geocoder called for {address!r}: ok")
    return f"{address} -> (52.52, 13.40)"


# 3. rollback ---------------------------------------------------------------------


def release_seat(seat: str, flight: str) -> None:
    events.append(f"undo: released seat {seat} on {flight}")


def refund(payment: str, flight: str) -> None:
    events.append(f"undo: refunded {payment}")


@compensate(undo=release_seat)
def hold_seat(flight: str) -> str:
    events.append(f"held seat 14C on {flight}")
    return "14C"


@compensate(undo=refund)
def take_payment(flight: str) -> str:
    events.append(f"took payment for {flight}")
    return f"payment-{flight}"


def issue_ticket(flight: str) -> None:
    raise DataValidationError(f"airline rejected the ticket for {flight}: name mismatch")


@saga
def book_flight(flight: str) -> str:
    hold_seat(flight)
    take_payment(flight)
    issue_ticket(flight)
    return "booked"


# 4. graceful degradation ---------------------------------------------------------


def cached_recommendations(user_id: int) -> list[str]:
    return ["bestseller-1", "bestseller-2"]


def no_recommendations(user_id: int) -> list[str]:
    return []


@fallback({TimeoutError: cached_recommendations, ConnectionError: no_recommendations})
def recommendations(user_id: int) -> list[str]:
    if user_id % 2:
        raise TimeoutError("recommender timed out")
    raise ConnectionError("recommender is down")


JOBS = [import_contacts, geocode, book_flight, recommendations]


async def main() -> None:
    async with nats_server() as url:
        worker = Worker("patterns", nats_url=url, functions=JOBS, concurrency=4)
        running = asyncio.create_task(worker.run())
        async with Client(url) as client:

            async def show(title: str, jobs: list) -> None:  # type: ignore[type-arg]
                print(title)
                for job in jobs:
                    try:
                        print(f"  {await job.result(timeout=30)}")
                    except Exception as exc:
                        print(f"  failed for good: {exc}")

            options = {"queue_name": "patterns", "result_ttl": 300}
            await show("1. selective retries", [
                await client.enqueue(import_contacts, batch, **options)
                for batch in ("busy", "rate-limited", "corrupt")
            ])  # fmt: skip

            geo = [await client.enqueue(geocode, a, max_retries=0, **options)
                   for a in ("Alexanderplatz 1", "Unter den Linden 5")]  # fmt: skip
            await show("2. circuit breaker: two failures open it", geo)
            geo = [await client.enqueue(geocode, f"Friedrichstrasse {n}", max_retries=0,
                                        **options) for n in range(3)]  # fmt: skip
            await show("   while open, jobs are deferred (not failed) until it may close", geo)
            for line in events:
                print(f"   {line}")
            events.clear()

            await show("3. rollback", [await client.enqueue(book_flight, "LH123", **options)])
            for line in events:
                print(f"   {line}")

            await show("4. graceful degradation", [
                await client.enqueue(recommendations, user, **options) for user in (1, 2)
            ])  # fmt: skip

            print("5. the dead-letter queue keeps every job that failed for good")
            for letter in await client.get_dead_letter_jobs("patterns.dead", limit=1000):
                if letter.job is None:
                    continue
                attempts = ", ".join(f"#{f.attempt} {f.error_type}" for f in letter.failures)
                print(f"  {letter.job.function}{tuple(letter.job.args)}: {letter.reason}")
                print(f"    attempts: {attempts}")
        worker.stop()
        await running


if __name__ == "__main__":
    asyncio.run(main())
