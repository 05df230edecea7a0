"""One wrapper, however many decorators.

Each decorator contributes a `Stage`: an immutable policy (plain data a worker can
read) plus a `build_*` method that closes over the next stage's runner. Applying a
decorator to a function that already carries a pipeline does not wrap the wrapper: it
builds a new single wrapper around the original function with the new stage in front.
So `@retry @circuit_breaker @fallback(...) @chaos()` costs one `*args` unpacking and a
few closure calls, not four decorator layers, and the stage order is the decorator
order (outermost first).

Runners take `(args, kwargs)` as two positional values, which is cheaper than
re-packing `*args, **kwargs` at every stage. The innermost runner calls the function;
for `async def` functions it returns the coroutine for the stage above to await, which
saves one coroutine per call.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

from naq_resilience.policies.classify import report_if_critical

__all__ = [
    "AsyncRunner",
    "Pipeline",
    "Runner",
    "Stage",
    "apply_stage",
    "pipeline_of",
    "policies_of",
]

P = ParamSpec("P")
R = TypeVar("R")
Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Runner = Callable[[Args, Kwargs], Any]
AsyncRunner = Callable[[Args, Kwargs], Awaitable[Any]]

_ATTR = "__naq_pipeline__"


class Stage:
    """A decorator's contribution: `policy` (frozen data) and how to run it.

    Stage objects hold per-function runtime state (a breaker's counters, a chaos
    generator), so rebuilding a pipeline reuses them rather than resetting that state.
    """

    policy: object

    def check(self, func: Callable[..., Any], is_async: bool) -> None:
        """Refuse, at decoration time, a combination that cannot work."""

    def build_sync(self, inner: Runner, func: Callable[..., Any]) -> Runner:
        raise NotImplementedError

    def build_async(self, inner: AsyncRunner, func: Callable[..., Any]) -> AsyncRunner:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Pipeline:
    func: Callable[..., Any]
    stages: tuple[Stage, ...]
    is_async: bool
    wrapper: Callable[..., Any]

    @property
    def policies(self) -> tuple[object, ...]:
        return tuple(stage.policy for stage in self.stages)


def qualified_name(func: object) -> str:
    """`module:qualname`, the name jobs, breakers and records use; any callable works."""
    module = getattr(func, "__module__", None) or type(func).__module__
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}:{qualname}"


def pipeline_of(func: object) -> Pipeline | None:
    """The pipeline `func` runs, if `func` is one of our wrappers.

    The identity check matters: `functools.wraps` in a foreign decorator copies our
    attribute onto its own wrapper, which must not be mistaken for ours.
    """
    pipeline = getattr(func, _ATTR, None)
    if isinstance(pipeline, Pipeline) and pipeline.wrapper is func:
        return pipeline
    return None


def policies_of(func: object) -> tuple[object, ...]:
    """The policies attached to `func`, outermost first; empty for a plain function."""
    if isinstance(func, (classmethod, staticmethod)):
        func = func.__func__
    pipeline = pipeline_of(func) or pipeline_of(getattr(func, "__func__", None))
    return pipeline.policies if pipeline else ()


def apply_stage(func: Callable[P, R], stage: Stage, decorator: str) -> Callable[P, R]:
    """Put `stage` in front of `func`'s pipeline and return the one wrapper that runs it."""
    if isinstance(func, (classmethod, staticmethod)):
        inner = apply_stage(func.__func__, stage, decorator)
        return type(func)(inner)
    existing = pipeline_of(func)
    if existing is not None:
        original, stages = existing.func, (stage, *existing.stages)
    else:
        original, stages = _check_target(func, decorator), (stage,)
    is_async = inspect.iscoroutinefunction(original)
    stage.check(original, is_async)
    wrapper = _build(original, stages, is_async)
    functools.update_wrapper(wrapper, func)
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(wrapper, _ATTR, Pipeline(original, stages, is_async, wrapper))
    return cast(Callable[P, R], wrapper)


def rebuild_without(func: Callable[..., Any], drop: tuple[type[Stage], ...]) -> Callable[..., Any]:
    """`func`'s pipeline minus the stages of the `drop` types, as a new single wrapper.

    The job worker runs a job this way without its `RetryStage`: the broker schedules
    the retries, so no worker slot sleeps. Stage objects are shared with `func`, so a
    breaker's state is the same whichever wrapper ran the call.
    """
    pipeline = pipeline_of(func)
    if pipeline is None:
        return func
    stages = tuple(stage for stage in pipeline.stages if not isinstance(stage, drop))
    if not stages:
        return pipeline.func
    return _build(pipeline.func, stages, pipeline.is_async)


def _check_target(func: object, decorator: str) -> Callable[..., Any]:
    if not callable(func):
        raise TypeError(f"@{decorator} decorates a function, got {func!r}")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"@{decorator} cannot wrap generator function {func!r}: its body runs "
            "lazily, outside the call; decorate a function that consumes the generator"
        )
    return func


def _build(
    func: Callable[..., Any], stages: tuple[Stage, ...], is_async: bool
) -> Callable[..., Any]:
    def call(args: Args, kwargs: Kwargs) -> Any:
        return func(*args, **kwargs)

    if is_async:
        arun: AsyncRunner = call
        for stage in reversed(stages):
            arun = stage.build_async(arun, func)

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await arun(args, kwargs)
            except Exception as exc:
                report_if_critical(exc)
                raise

        return async_wrapper

    run: Runner = call
    for stage in reversed(stages):
        run = stage.build_sync(run, func)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(args, kwargs)
        except Exception as exc:
            report_if_critical(exc)
            raise

    return wrapper
