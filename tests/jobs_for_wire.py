"""Job functions for tests/test_handwritten_envelope.py.

The worker there imports this module by name (`imports=["jobs_for_wire"]`), exactly
as a worker started with `--import jobs_for_wire` would; the functions record what
they were called with in `CALLS`, which the test reads (the worker runs in-process).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
_lock = threading.Lock()


def _note(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with _lock:
        CALLS.append((name, args, kwargs))


def calls_of(name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    with _lock:
        return [(args, kwargs) for called, args, kwargs in CALLS if called == name]


def send_invoice(order_id: int, due: datetime, tags: tuple[str, ...] = ()) -> str:
    """Annotated: the worker converts the JSON values ("2025-01-02T03:04:05Z" -> datetime)."""
    _note("send_invoice", (order_id, due, tags), {})
    return f"invoice-{order_id}"


def record(*args: Any, **kwargs: Any) -> str:
    _note("record", args, kwargs)
    return "recorded"


def always_down(label: str) -> None:
    _note("always_down", (label,), {})
    raise ConnectionError(f"{label}: the payment service is down")
