"""The one-wrapper pipeline: stacking folds stages into a single wrapper."""

from __future__ import annotations

import asyncio
import functools
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from naq_resilience import SecurityError, on_critical, policies_of, remove_critical_hook, retry
from naq_resilience.policies.pipeline import pipeline_of, qualified_name
from naq_resilience.policies.retry import RetryPolicy


def _wrapper_frames(exc: BaseException) -> list[str]:
    return [
        frame.name
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename.endswith("pipeline.py") and frame.name in ("wrapper", "async_wrapper")
    ]


def test_stacking_keeps_one_wrapper_around_the_original() -> None:
    def job(x: int) -> int:
        return x

    once = retry(max_retries=1, retry_delay=0)(job)
    twice = retry(max_retries=2, retry_delay=0)(once)
    pipeline = pipeline_of(twice)
    assert pipeline is not None
    assert pipeline.func is job
    assert twice.__wrapped__ is job  # type: ignore[attr-defined]
    assert [p.max_retries for p in policies_of(twice)] == [2, 1]  # type: ignore[attr-defined]
    assert all(isinstance(p, RetryPolicy) for p in policies_of(twice))
    assert policies_of(job) == ()


def test_stacked_calls_go_through_exactly_one_wrapper_frame() -> None:
    def fail() -> None:
        raise ConnectionError("down")

    stacked = retry(max_retries=0)(retry(max_retries=0)(retry(max_retries=0)(fail)))
    with pytest.raises(ConnectionError) as info:
        stacked()
    assert _wrapper_frames(info.value) == ["wrapper"]


def test_async_stacked_calls_go_through_exactly_one_wrapper_frame() -> None:
    async def fail() -> None:
        raise ConnectionError("down")

    stacked = retry(max_retries=0)(retry(max_retries=0)(fail))
    with pytest.raises(ConnectionError) as info:
        asyncio.run(stacked())
    assert _wrapper_frames(info.value) == ["async_wrapper"]


def test_stage_order_is_decorator_order() -> None:
    calls: list[str] = []

    def inner_retry_gives_up(state: object) -> None:
        calls.append("inner gave up")

    def outer_retries(state: object) -> None:
        calls.append("outer retry")

    @retry(max_retries=1, retry_delay=0, on_retry=outer_retries)
    @retry(max_retries=0, retry_delay=0, on_giveup=inner_retry_gives_up)
    def job() -> None:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        job()
    assert calls == ["inner gave up", "outer retry", "inner gave up"]


def test_foreign_wrapper_copying_our_attributes_is_not_mistaken_for_ours() -> None:
    calls: list[str] = []

    def logging_decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def logged(*args: Any, **kwargs: Any) -> Any:
            calls.append("logged")
            return func(*args, **kwargs)

        return logged

    @retry(retry_delay=0)
    @logging_decorator
    @retry(retry_delay=0)
    def job() -> int:
        return 1

    assert job() == 1
    assert calls == ["logged"]
    pipeline = pipeline_of(job)
    assert pipeline is not None
    assert len(pipeline.stages) == 1


def test_generators_and_non_callables_are_refused() -> None:
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        retry(gen)
    with pytest.raises(TypeError, match="decorates a function"):
        retry(42)  # type: ignore[call-overload]


def test_critical_error_escaping_any_stack_is_reported_once() -> None:
    seen: list[BaseException] = []
    hook = on_critical(seen.append)
    try:

        @retry(retry_delay=0)
        @retry(retry_delay=0)
        def job() -> None:
            raise SecurityError("tampered")

        with pytest.raises(SecurityError) as info:
            job()
        assert seen == [info.value]
    finally:
        remove_critical_hook(hook)


def test_qualified_name() -> None:
    def job() -> None:
        return None

    class CallableObject:
        def __call__(self) -> None:
            return None

    assert qualified_name(job) == f"{__name__}:test_qualified_name.<locals>.job"
    assert qualified_name(CallableObject()) == f"{__name__}:{CallableObject.__qualname__}"
