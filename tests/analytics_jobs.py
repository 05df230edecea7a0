"""Job functions for the error analytics tests: two places that raise the same error type,
and a job that fails its first attempt only. A worker imports this module by name."""

from __future__ import annotations

from naq_resilience import current_job

_attempted: set[str] = set()


async def ok(n: int) -> int:
    return n


async def import_csv(row: str) -> None:
    raise ValueError(f"not a CSV row: {row!r}")


async def import_json(doc: str) -> None:
    raise ValueError(f"not a JSON document: {doc!r}")


async def flaky(key: str) -> str:
    """Fails its first attempt (retryable), then completes."""
    job = current_job()
    job_id = job.id if job is not None else key
    if job_id not in _attempted:
        _attempted.add(job_id)
        raise ConnectionError("the upstream refused the first try")
    return key
