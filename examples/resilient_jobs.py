"""A tour of the decorators on one small order-processing job, with chaos switched on.

Run it: `python examples/resilient_jobs.py`. Nothing here needs a server: the
decorators work on any function. Chaos makes the payment API fail one call in three
(seeded, so every run prints the same story), and the policies absorb it:

- `@retry` retries the transient failures with exponential backoff;
- `@circuit_breaker` stops calling the inventory service once it keeps failing;
- `@fallback` degrades to a cached price list when the pricing service is down;
- `@saga` with `@compensate` steps undoes a half-finished order.
"""

from __future__ import annotations

import asyncio

from naq_resilience import (
    CircuitBreakerOpenError,
    DataValidationError,
    RetryState,
    attempts_of,
    chaos,
    circuit_breaker,
    compensate,
    fallback,
    is_injected,
    on_critical,
    retry,
    saga,
)

ledger: list[str] = []
absorbed: list[str] = []


def note_retry(state: RetryState) -> None:
    injected = " (injected)" if state.error is not None and is_injected(state.error) else ""
    absorbed.append(f"attempt {state.attempt} failed with {state.error!r}{injected}")


# --------------------------------------------------------------------------- retry + chaos


@retry(max_retries=5, retry_delay=0.01, retry_strategy="exponential", on_retry=note_retry)
@chaos(failure_rate=0.3, exceptions=(ConnectionError, TimeoutError), name="payments")
async def charge_card(order_id: int, cents: int) -> str:
    """A payment API call; chaos stands in for the network."""
    await asyncio.sleep(0)
    return f"charge-{order_id}-{cents}"


# --------------------------------------------------------------------------- breaker


inventory_calls = 0


@circuit_breaker(name="inventory", failure_threshold=3, recovery_timeout=30)
def reserve_stock(sku: str) -> str:
    """An inventory service that is down for this whole run."""
    global inventory_calls
    inventory_calls += 1
    raise ConnectionError("inventory service unreachable")


# --------------------------------------------------------------------------- fallback


def cached_price(sku: str) -> int:
    return {"book": 1200, "pen": 150}.get(sku, 999)


@fallback(cached_price, on=(ConnectionError, TimeoutError))
def live_price(sku: str) -> int:
    raise TimeoutError("pricing service timed out")


# --------------------------------------------------------------------------- saga


def delete_order(order_id: int, *_: object) -> None:
    ledger.append(f"undo: deleted order {order_id}")


def refund(charge_id: str, *_: object) -> None:
    ledger.append(f"undo: refunded {charge_id}")


@compensate(undo=delete_order)
def create_order(order_id: int) -> int:
    ledger.append(f"created order {order_id}")
    return order_id


@compensate(undo=refund)
def capture_payment(order_id: int) -> str:
    ledger.append(f"captured payment for {order_id}")
    return f"charge-{order_id}"


def send_confirmation(order_id: int, email: str) -> None:
    if "@" not in email:
        raise DataValidationError(f"cannot send confirmation: bad email {email!r}")
    ledger.append(f"confirmed {order_id} to {email}")


@saga
def place_order(order_id: int, email: str) -> None:
    create_order(order_id)
    capture_payment(order_id)
    send_confirmation(order_id, email)


# --------------------------------------------------------------------------- the tour


async def main() -> None:
    on_critical(lambda exc: print(f"  ALERT (critical): {exc!r}"))

    print("1. retry absorbs injected payment failures (chaos on, seed 7)")
    with chaos.enabled(seed=7, names=["payments"]):
        for order_id in range(1, 6):
            print(f"  order {order_id}: {await charge_card(order_id, 1200)}")
    print(f"  {len(absorbed)} failures absorbed on the way:")
    for line in absorbed:
        print(f"    {line}")

    print("2. the circuit breaker opens after 3 failures and stops calling inventory")
    for attempt in range(1, 6):
        try:
            reserve_stock("book")
        except CircuitBreakerOpenError as exc:
            print(f"  call {attempt}: refused, breaker open (retry in {exc.retry_after:.0f}s)")
        except ConnectionError as exc:
            print(f"  call {attempt}: failed: {exc}")
    print(f"  the inventory service was called {inventory_calls} times, not 5")

    print("3. fallback serves a cached price when pricing times out")
    print(f"  price of a book: {live_price('book')} cents")

    print("4. a saga undoes a half-finished order, newest step first")
    place_order(41, "ada@example.com")
    try:
        place_order(42, "not-an-email")
    except DataValidationError as exc:
        print(f"  order 42 failed: {exc}")
    for line in ledger:
        print(f"  {line}")

    print("5. when retries run out, the original error comes back with its history")

    @retry(max_retries=2, retry_delay=0)
    def always_down() -> None:
        raise ConnectionError("still down")

    try:
        always_down()
    except ConnectionError as exc:
        print(f"  {exc!r} after {len(attempts_of(exc))} attempts")


if __name__ == "__main__":
    asyncio.run(main())
