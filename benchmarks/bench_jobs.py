"""Job functions of `bench_worker.py`, imported by the naq-resilience worker it starts.

The worker runs only functions from modules it was told to import, so these live in a
module of their own (on the worker's ``PYTHONPATH`` as ``bench_jobs``) that imports
nothing else: the worker's memory and start-up time are the library's, not the
benchmark's.
"""

from __future__ import annotations

__all__ = ["always_fails", "noop"]


async def noop(i: int) -> None:
    """Does nothing: what is left is the cost of the job layer itself."""
    return None


async def always_fails(i: int) -> None:
    """Raises `ValueError`, which is non-retryable: one attempt, then a dead letter."""
    raise ValueError(f"bench job {i} always fails")
