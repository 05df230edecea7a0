"""Job functions for tests/test_registry.py: plain, decorated, methods, annotated.

It also imports things (`os`, `dumps`, `Path`) that a job must not reach through it:
a worker allowed to run `jobs_for_registry:*` may run what is defined here, never
what this module merely imported.
"""

from __future__ import annotations

import functools
import os  # noqa: F401  (reached for by the security tests: jobs_for_registry:os.system)
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from json import dumps  # noqa: F401  (likewise: jobs_for_registry:dumps)
from pathlib import Path  # noqa: F401  (a class: jobs_for_registry:Path)
from typing import Any

import msgspec

from naq_resilience import fallback, retry

LIMIT = 10
"""Not callable: jobs_for_registry:LIMIT is refused."""


def plain(x: Any) -> Any:
    return x


@retry(max_retries=3, retry_delay=0)
def decorated(x: Any) -> Any:
    return x


def _foreign(func: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that is not ours: `functools.wraps`, as most are."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


@_foreign
def foreign_decorated(x: Any) -> Any:
    return x


class Mailer:
    @staticmethod
    def render(template: str) -> str:
        return f"<{template}>"

    @classmethod
    def create(cls, address: str) -> str:
        return f"{cls.__name__}({address})"

    @classmethod
    @retry(max_retries=2, retry_delay=0)
    def load(cls, key: int) -> str:
        """Fails on its first call, like `flaky_once`, but as a decorated classmethod."""
        LOAD_CALLS.append(key)
        if len(LOAD_CALLS) == 1:
            raise ConnectionError("first call fails")
        return f"{cls.__name__}[{key}]"

    def send(self, to: str) -> str:
        return f"sent to {to}"


LOAD_CALLS: list[int] = []


def make_local() -> Callable[[], None]:
    def local() -> None:
        pass

    return local


# --------------------------------------------------------------------------- conversion


@dataclass
class Point:
    x: int
    y: int


class Item(msgspec.Struct):
    sku: str
    quantity: int = 1


def typed(
    count: int,
    when: datetime,
    pair: tuple[int, int],
    point: Point,
    item: Item,
    *,
    tags: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    return {"count": count, "when": when, "pair": pair, "point": point, "item": item, "tags": tags}


def variadic(*numbers: float, **labels: int) -> tuple[tuple[float, ...], dict[str, int]]:
    return numbers, labels


def positional_only(a: int, /, b: int) -> int:
    return a + b


async def ping(host: str) -> str:
    return f"pong from {host}"


def untyped(a, b=None):  # type: ignore[no-untyped-def]
    return a, b


# --------------------------------------------------------------------------- the runner

FLAKY_CALLS: list[int] = []


@retry(max_retries=3, retry_delay=0)
def flaky_once(x: int) -> int:
    """Fails on its first call, then works: a @retry absorbs that; the worker's runner does not."""
    FLAKY_CALLS.append(x)
    if len(FLAKY_CALLS) == 1:
        raise ConnectionError("first call fails")
    return x * 2


@retry(max_retries=2, retry_delay=0)
@fallback(lambda *args, **kwargs: "fallback value")
def flaky_with_fallback(x: int) -> str:
    raise ConnectionError("always")
