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

from naq_resilience import circuit_breaker, fallback, job, retry

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

    @staticmethod
    def _private() -> str:
        """Private: jobs_for_registry:Mailer._private is refused."""
        return "private"


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


# --------------------------------------------------------------------------- private names


def _helper(x: Any) -> Any:
    """Private: refused unless registered explicitly."""
    return x


class _Private:
    @staticmethod
    def method() -> str:
        """Public name, private class: jobs_for_registry:_Private.method is refused."""
        return "private class"


# --------------------------------------------------------------------------- @job


@job
def marked(x: Any) -> Any:
    return x


@job()
async def marked_async(host: str) -> str:
    return f"pong from {host}"


@retry(max_retries=1, retry_delay=0)
@job
def marked_under_retry(x: int) -> int:
    return x


@job
@retry(max_retries=1, retry_delay=0)
@circuit_breaker(name="jobs_for_registry.marked_above_a_stack")
def marked_above_a_stack(x: int) -> int:
    return x


@retry(max_retries=1, retry_delay=0)
@job
@fallback(lambda *args, **kwargs: "fallback value")
async def marked_between_stages(x: int) -> str:
    raise ConnectionError("always")


@_foreign
@job
def marked_under_a_foreign_decorator(x: Any) -> Any:
    return x


class Tasks:
    @job
    @staticmethod
    def static_marked_outside(x: int) -> int:
        return x

    @staticmethod
    @job
    def static_marked_inside(x: int) -> int:
        return x

    @job
    @classmethod
    def class_marked_outside(cls, x: int) -> str:
        return f"{cls.__name__}({x})"

    @classmethod
    @retry(max_retries=1, retry_delay=0)
    @job
    def class_marked_inside(cls, x: int) -> str:
        return f"{cls.__name__}({x})"
