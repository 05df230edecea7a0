"""Delay schedules for retries, written here rather than taken from `backoff`.

`backoff` is archived and calls an API deprecated in Python 3.14; tenacity's wait
objects allocate per attempt. A schedule here is one frozen object computing a float
from the retry number, so the worker can compute the delay of any attempt of any job
(it needs that to schedule a redelivery) without replaying the earlier ones, except
for decorrelated jitter, which by definition depends on the previous delay.

Retry numbers start at 1 (the delay before the second attempt).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, get_args

from naq_resilience.policies.durations import Duration, seconds

__all__ = ["DelaySchedule", "Jitter", "Strategy", "fibonacci"]

Strategy = Literal["fixed", "linear", "exponential", "fibonacci"]
Jitter = Literal["full", "equal", "decorrelated"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
JITTERS: tuple[str, ...] = get_args(Jitter)

# Past this exponent 2**n times any sane base exceeds every cap; stops float overflow.
_MAX_EXPONENT = 1000


def fibonacci(n: int) -> int:
    """1, 2, 3, 5, 8, ... for n = 1, 2, 3, ... (no repeated first step)."""
    a, b = 1, 2
    for _ in range(n - 1):
        a, b = b, a + b
    return a


@dataclass(frozen=True, slots=True)
class DelaySchedule:
    """How long to wait before retry number n: base delay, strategy, cap, jitter.

    `delays`, when set, is an explicit list (NAQ's `retry_delay=[1, 5, 30]`): retry n
    waits `delays[n-1]`, and the last entry repeats. Such a list is used as given, with
    no jitter: whoever wrote the numbers meant them.
    """

    strategy: Strategy | Literal["explicit"] = "exponential"
    base: float = 1.0
    max_delay: float | None = 60.0
    jitter: Jitter | None = "full"
    delays: tuple[float, ...] = ()

    @classmethod
    def build(
        cls,
        retry_delay: Duration | Sequence[Duration],
        retry_strategy: str | Sequence[Duration],
        max_delay: Duration | None,
        jitter: str | None,
    ) -> DelaySchedule:
        """Validate user arguments into a schedule, with errors that name the fix.

        Every duration may be seconds or a `timedelta`; the schedule holds floats.
        """
        cap = None if max_delay is None else seconds(max_delay, "max_delay")
        if jitter is not None and jitter not in JITTERS:
            raise ValueError(f"unknown jitter {jitter!r}; use one of {', '.join(JITTERS)} or None")
        explicit: Sequence[Duration] | None = None
        if not isinstance(retry_delay, (int, float, timedelta)) and isinstance(
            retry_delay, Sequence
        ):
            explicit = retry_delay
        elif not isinstance(retry_strategy, str) and isinstance(retry_strategy, Sequence):
            explicit = retry_strategy  # type: ignore[assignment]
        if explicit is not None:
            delays = tuple(seconds(d, "each delay in the list") for d in explicit)
            if not delays:
                raise ValueError("an explicit delay list needs at least one delay, e.g. [1, 5, 30]")
            return cls("explicit", delays[0], cap, None, delays)
        if not isinstance(retry_strategy, str) or retry_strategy not in STRATEGIES:
            raise ValueError(
                f"unknown retry_strategy {retry_strategy!r}; use one of "
                f"{', '.join(STRATEGIES)} or a list of delays in seconds"
            )
        base = seconds(retry_delay, "retry_delay")
        return cls(retry_strategy, base, cap, jitter)  # type: ignore[arg-type]

    def base_delay(self, retry_number: int) -> float:
        """The delay before retry `retry_number`, capped, before jitter."""
        strategy = self.strategy
        if strategy == "fixed":
            delay = self.base
        elif strategy == "exponential":
            delay = math.ldexp(self.base, min(retry_number - 1, _MAX_EXPONENT))
        elif strategy == "linear":
            delay = self.base * retry_number
        elif strategy == "fibonacci":
            delay = self.base * fibonacci(min(retry_number, _MAX_EXPONENT))
        else:
            delays = self.delays
            delay = delays[retry_number - 1] if retry_number <= len(delays) else delays[-1]
        cap = self.max_delay
        return delay if cap is None or delay <= cap else cap

    def delay(
        self,
        retry_number: int,
        previous: float = 0.0,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """The delay before retry `retry_number`, jitter applied.

        `previous` is the delay actually used before the previous retry; only
        decorrelated jitter reads it (AWS's "decorrelated jitter": uniform between the
        base and three times the previous delay, capped).
        """
        return self.jittered(self.base_delay(retry_number), previous, rand)

    def jittered(
        self, delay: float, previous: float = 0.0, rand: Callable[[], float] = random.random
    ) -> float:
        """Apply this schedule's jitter to a base delay computed earlier (see `delay`)."""
        jitter = self.jitter
        if jitter is None or delay == 0.0:
            return delay
        if jitter == "full":
            return delay * rand()
        if jitter == "equal":
            return delay / 2 + delay / 2 * rand()
        low = self.base_delay(1)
        high = max(low, 3 * previous)
        value = low + (high - low) * rand()
        cap = self.max_delay
        return value if cap is None or value <= cap else cap
