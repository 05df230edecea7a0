"""Durations: a number of seconds or a `timedelta`, wherever the API takes one.

NAQ's guide writes `dead_letter_ttl=timedelta(days=7)` next to `retry_delay=2`, so
every duration argument takes either. They are converted once, where the argument is
given (a decorator, an enqueue, a settings object), to a float of seconds: nothing
downstream, and no call of a decorated function, ever sees a `timedelta`.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TypeAlias, overload

__all__ = ["Duration", "SecondsField", "seconds"]

Duration: TypeAlias = float | timedelta
"""Seconds as a number (int or float), or a `datetime.timedelta`."""


def seconds(value: object, argument: str, *, positive: bool = False) -> float:
    """`value` as a float of seconds, or an error naming `argument` and the fix.

    Zero is allowed unless `positive`; negative, infinite and NaN never are (a wait
    "for ever" is never what a number means here). `bool` is refused although it is
    an `int`: `retry_delay=True` is a mistake, not one second.
    """
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            result = float(value)
        except OverflowError:
            result = math.inf
    else:
        raise TypeError(
            f"{argument} must be a number of seconds or a timedelta, got {value!r}; "
            "write e.g. 30 or timedelta(seconds=30)"
        )
    if not math.isfinite(result):
        raise ValueError(
            f"{argument} must be a finite number of seconds, got {value!r}; for a long "
            "pause give a large number (e.g. 3600) or a timedelta (timedelta(hours=1))"
        )
    if positive and result <= 0:
        raise ValueError(f"{argument} must be a positive number of seconds, got {value!r}")
    if result < 0:
        raise ValueError(f"{argument} must be >= 0 seconds, got {value!r}")
    return result


class SecondsField:
    """A dataclass field that takes a `Duration` and holds a float of seconds.

    A frozen dataclass cannot convert a field in `__post_init__` without
    `object.__setattr__`, and an annotation of `float | timedelta` would make every
    reader of the field handle a `timedelta` that is never there. A descriptor gives
    both sides their type: `__set__` takes a `Duration`, `__get__` returns a float,
    and type checkers read the dataclass's `__init__` from `__set__`.
    """

    def __init__(self, default: float, *, positive: bool = False) -> None:
        self._default = default
        self._positive = positive
        self._name = ""
        self._slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self._slot = f"_{name}_seconds"

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> float: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> float: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> float:
        if obj is None:  # what dataclasses read as the field's default
            return self._default
        value: float = obj.__dict__[self._slot]
        return value

    def __set__(self, obj: object, value: Duration) -> None:
        # Frozen dataclasses set fields with object.__setattr__, which lands here.
        obj.__dict__[self._slot] = seconds(value, self._name, positive=self._positive)

    def __repr__(self) -> str:
        return f"SecondsField({self._default!r}, positive={self._positive!r})"
