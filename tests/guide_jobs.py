"""The job functions NAQ's error-handling guide enqueues but leaves to its reader.

tests/test_guide.py runs the guide's blocks against a worker that imports this module
(as `naq worker ... ` would, with `[tool.naq] imports = ["guide_jobs"]`). Each job
records what it received, so the test can check what the worker ran.
"""

from __future__ import annotations

from typing import Any

calls: list[tuple[str, Any]] = []


def flaky_api_call(data: dict[str, Any]) -> str:
    """Down the first time it is called for an endpoint, up after that."""
    calls.append(("flaky_api_call", data))
    if sum(1 for name, seen in calls if name == "flaky_api_call" and seen == data) == 1:
        raise ConnectionError(f"{data['endpoint']} refused the connection")
    return f"called {data['endpoint']}"


def unreliable_function(data: dict[str, Any]) -> None:
    """Never works: every attempt fails with a retryable error."""
    calls.append(("unreliable_function", data))
    raise ConnectionError(f"job {data['id']}: the service is unreachable")


def error_prone_job(scenario: str, error: BaseException) -> None:
    """Raises the error it was given, to see how each kind is handled."""
    calls.append(("error_prone_job", (scenario, error)))
    raise error


def succeeds(n: int) -> int:
    calls.append(("succeeds", n))
    return n


def fails(n: int) -> None:
    calls.append(("fails", n))
    raise ValueError(f"bad input {n}")
