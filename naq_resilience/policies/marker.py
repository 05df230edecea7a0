"""`@job`: mark a function as meant to be run by a job message.

A worker started with `--strict` (or `NAQ_STRICT=1`) runs only marked functions, so
importing a module no longer exposes every public function in it to whoever can
publish on the queue.

It is a marker, not a wrapper: it sets one attribute and returns the very object it
was given, so a marked function costs nothing more per call. The mark survives
stacking in any order because the library's decorators (and foreign ones written
with `functools.wraps`) copy a function's attributes onto the wrapper they build, so
it reaches whichever object ends up in the module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

__all__ = ["is_job", "job"]

F = TypeVar("F")

_MARK = "__naq_job__"


def _target(func: object) -> Any:
    # A class- or staticmethod object is not what a class attribute lookup returns:
    # the function inside it is, so that is where the mark has to be.
    if isinstance(func, (classmethod, staticmethod)):
        return func.__func__
    return func


def _mark(func: F) -> F:
    target = _target(func)
    if isinstance(target, type) or not callable(target):
        raise TypeError(f"@job marks a function (or a static or class method), got {target!r}")
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"@job cannot mark generator function {target.__qualname__}: a worker would get "
            "a generator back and never run its body; mark a function that consumes it"
        )
    try:
        setattr(target, _MARK, True)
    except (AttributeError, TypeError):
        raise TypeError(
            f"@job cannot mark {target!r}: it takes no attributes; mark a function "
            "defined with `def` instead"
        ) from None
    return func


@overload
def job(func: F, /) -> F: ...


@overload
def job() -> Callable[[F], F]: ...


def job(func: Any = None, /) -> Any:
    """Mark `func` as a job function; `@job` and `@job()` both work.

    Under a strict worker only marked functions (and those registered explicitly) may
    be named by a job message. The function object is returned unchanged.
    """
    if func is None:
        return _mark
    return _mark(func)


def is_job(func: object) -> bool:
    """Whether `func` carries the `@job` mark (through any stack of our decorators)."""
    return getattr(_target(func), _MARK, False) is True
