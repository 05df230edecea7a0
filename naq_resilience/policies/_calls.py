"""Small helpers shared by the stages that call user callbacks."""

from __future__ import annotations

import inspect

__all__ = ["callable_name", "is_async_callable"]


def is_async_callable(func: object) -> bool:
    """True for `async def` functions, partials of them and objects with `async def __call__`.

    Used at decoration time to refuse an async callback where nothing could await it.
    """
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - looking for `async def __call__`
    return inspect.iscoroutinefunction(call)


def callable_name(func: object) -> str:
    name = getattr(func, "__qualname__", None)
    return name if isinstance(name, str) else repr(func)
