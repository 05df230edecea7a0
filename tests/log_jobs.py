"""Job functions for the logging tests: each logs through plain `logging`, as job code
does, and fails in the ways the worker logs differently."""

from __future__ import annotations

import asyncio
import logging

from naq_resilience import SecurityError, retry

log = logging.getLogger("log_jobs")


def charge(order: str) -> str:
    """A sync job (it runs on a thread) that logs at INFO and DEBUG."""
    log.info("charging order %s", order, extra={"order": order})
    log.debug("order %s charged", order)
    return order


async def notify(order: str) -> str:
    """An async job (it runs on the event loop) that logs."""
    await asyncio.sleep(0)
    log.info("notifying about order %s", order)
    return order


@retry(max_retries=1, retry_delay=0.2, retry_strategy="fixed", jitter=None)
def flaky(order: str) -> None:
    """Retried once, then out of attempts: an expected error (no traceback logged)."""
    log.info("calling the rates API for %s", order)
    raise ConnectionError(f"rates API down for {order}")


def unexpected(order: str) -> None:
    """An error the classification does not name: its dead letter is logged with the
    traceback."""
    raise KeyError(f"no price for {order}")


def invalid(order: str) -> None:
    """Not retryable, and expected: dead-lettered, logged without a traceback."""
    raise ValueError(f"order {order} has no lines")


def breach(order: str) -> None:
    """A critical error."""
    raise SecurityError(f"order {order} was signed with a revoked key")
