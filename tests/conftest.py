"""Shared test helpers. No test here sleeps for real: delays are injected or off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from naq_resilience.policies import classify


@pytest.fixture(autouse=True)
def _fresh_error_defaults() -> Iterator[None]:
    """Tests that reconfigure the global classification must not leak into others."""
    yield
    classify.reset_errors()


class FakeClock:
    """A monotonic clock that moves only when told to (or when something 'sleeps')."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
