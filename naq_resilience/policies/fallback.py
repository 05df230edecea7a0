"""`@fallback`: degrade to an alternative instead of failing the job.

The success path is one `try` around the next stage. Which errors are handled is
decided by the `except` clause itself (a tuple of classes), so an error fallback does
not handle leaves untouched, with its own traceback and context. The alternatives run
outside that `except` block: a failure there must not be chained to the primary's
error as if it happened while handling it, since `ProcessingError.failures` already
keeps every failure in order.

A degraded success is still a success, which would hide a critical error (say a
`SecurityError` from the primary) from the on-critical hooks; so every critical error
fallback handles is reported before the next alternative runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from naq_resilience.policies._calls import callable_name, is_async_callable
from naq_resilience.policies.classify import ExcTypes, exception_types, report_if_critical
from naq_resilience.policies.errors import ProcessingError
from naq_resilience.policies.pipeline import Args, AsyncRunner, Kwargs, Runner, Stage, apply_stage

__all__ = ["FallbackPolicy", "fallback"]

P = ParamSpec("P")
R = TypeVar("R")

ExhaustedHook = Callable[..., Any]

_ANY_EXCEPTION: ExcTypes = (Exception,)


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """What `@fallback` does, as plain data.

    In the mapping form `by_type` holds the `(exception class, alternative)` pairs,
    `on` their classes and `alternatives` their alternatives, in the mapping's order.
    """

    alternatives: tuple[Callable[..., Any], ...]
    on: ExcTypes
    by_type: tuple[tuple[type[BaseException], Callable[..., Any]], ...] | None
    on_exhausted: ExhaustedHook | None


class FallbackStage(Stage):
    policy: FallbackPolicy

    def __init__(self, policy: FallbackPolicy) -> None:
        self.policy = policy
        self._table = dict(policy.by_type) if policy.by_type is not None else None

    def check(self, func: Callable[..., Any], is_async: bool) -> None:
        if is_async:
            return
        hooks = [(alt, "alternative") for alt in self.policy.alternatives]
        if self.policy.on_exhausted is not None:
            hooks.append((self.policy.on_exhausted, "on_exhausted"))
        for hook, role in hooks:
            if is_async_callable(hook):
                raise TypeError(
                    f"@fallback on sync function {func.__qualname__} got async {role} "
                    f"{callable_name(hook)}: a sync call cannot await it; make the {role} sync "
                    "or the function async"
                )

    def _paths(self, exc: BaseException) -> tuple[Callable[..., Any], ...]:
        """The alternatives to try after the primary failed with `exc`, in order."""
        table = self._table
        if table is None:
            return self.policy.alternatives
        # `except` matched a key, and `except` ignores virtual subclasses, so one is here.
        return next((table[cls],) for cls in type(exc).__mro__ if cls in table)

    def _exhausted(
        self,
        func: Callable[..., Any],
        paths: tuple[Callable[..., Any], ...],
        failures: list[BaseException],
    ) -> ProcessingError:
        names = [func.__qualname__, *(callable_name(alt) for alt in paths)]
        summary = ", ".join(
            f"{name} raised {type(error).__name__}"
            for name, error in zip(names, failures, strict=True)
        )
        error = ProcessingError(
            f"{func.__qualname__} failed and so did every fallback: {summary}",
            failures=tuple(failures),
        )
        error.__cause__ = failures[-1]
        return error

    @staticmethod
    def _hook_failed(error: ProcessingError, hook: object, hook_error: BaseException) -> None:
        error.add_note(
            f"naq-resilience @fallback: on_exhausted {callable_name(hook)} failed: {hook_error!r}"
        )

    @staticmethod
    def _note_escape(error: BaseException, alt: object, failures: list[BaseException]) -> None:
        earlier = ", ".join(repr(f) for f in failures)
        error.add_note(
            f"naq-resilience @fallback: raised by alternative {callable_name(alt)}, "
            f"which it does not handle, after: {earlier}"
        )

    # ------------------------------------------------------------------ sync
    def build_sync(self, inner: Runner, func: Callable[..., Any]) -> Runner:
        catch = self.policy.on
        on_exhausted = self.policy.on_exhausted

        def failing(args: Args, kwargs: Kwargs, exc: BaseException) -> Any:
            report_if_critical(exc)
            failures = [exc]
            paths = self._paths(exc)
            for alt in paths:
                try:
                    return alt(*args, **kwargs)
                except catch as error:
                    failed: BaseException = error
                except Exception as error:
                    self._note_escape(error, alt, failures)
                    raise
                report_if_critical(failed)
                failures.append(failed)
            exhausted = self._exhausted(func, paths, failures)
            if on_exhausted is not None:
                try:
                    on_exhausted(tuple(failures), *args, **kwargs)
                except Exception as hook_error:
                    self._hook_failed(exhausted, on_exhausted, hook_error)
            raise exhausted

        def run(args: Args, kwargs: Kwargs) -> Any:
            try:
                return inner(args, kwargs)
            except catch as error:
                exc: BaseException = error
            return failing(args, kwargs, exc)

        return run

    # ------------------------------------------------------------------ async
    def build_async(self, inner: AsyncRunner, func: Callable[..., Any]) -> AsyncRunner:
        catch = self.policy.on
        on_exhausted = self.policy.on_exhausted

        async def failing(args: Args, kwargs: Kwargs, exc: BaseException) -> Any:
            report_if_critical(exc)
            failures = [exc]
            paths = self._paths(exc)
            for alt in paths:
                try:
                    result = alt(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                    return result
                except catch as error:
                    failed: BaseException = error
                except Exception as error:
                    self._note_escape(error, alt, failures)
                    raise
                report_if_critical(failed)
                failures.append(failed)
            exhausted = self._exhausted(func, paths, failures)
            if on_exhausted is not None:
                try:
                    outcome = on_exhausted(tuple(failures), *args, **kwargs)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception as hook_error:
                    self._hook_failed(exhausted, on_exhausted, hook_error)
            raise exhausted

        async def run(args: Args, kwargs: Kwargs) -> Any:
            try:
                return await inner(args, kwargs)
            except catch as error:
                exc: BaseException = error
            return await failing(args, kwargs, exc)

        return run


def _handled_types(value: object, argument: str) -> ExcTypes:
    types = exception_types(value, argument)
    for cls in types:
        if not issubclass(cls, Exception):
            raise TypeError(
                f"{argument} may only name Exception subclasses, got {cls.__name__}: "
                "@fallback never swallows cancellation, KeyboardInterrupt or SystemExit"
            )
    return types


def _alternative(value: object, where: str) -> Callable[..., Any]:
    if isinstance(value, type) and issubclass(value, BaseException):
        raise TypeError(
            f"{where} is the exception class {value.__name__}, not an alternative; "
            f"write @fallback(alternative, on={value.__name__}) to choose what to handle"
        )
    if not callable(value):
        raise TypeError(f"{where} must be callable, got {value!r}")
    return value


def make_fallback_policy(
    alternatives: tuple[object, ...],
    on: object = _ANY_EXCEPTION,
    on_exhausted: object = None,
) -> FallbackPolicy:
    """Validate `@fallback`'s arguments, so that mistakes fail at decoration time."""
    if on_exhausted is not None and not callable(on_exhausted):
        raise TypeError(f"on_exhausted must be callable or None, got {on_exhausted!r}")
    if not alternatives:
        raise ValueError(
            "@fallback needs at least one alternative: @fallback(cached_result) or "
            "@fallback({TimeoutError: cached_result})"
        )
    first = alternatives[0]
    if isinstance(first, Mapping):
        if len(alternatives) > 1:
            raise TypeError(
                "@fallback takes either one mapping {exception class: alternative} or "
                "alternatives as positional arguments, not both"
            )
        if on is not _ANY_EXCEPTION:
            raise TypeError(
                "@fallback({...}) already says which errors it handles (the mapping's "
                "keys); drop on=..."
            )
        if not first:
            raise ValueError("@fallback({}) needs at least one {exception class: alternative}")
        pairs: list[tuple[type[BaseException], Callable[..., Any]]] = []
        for key, value in first.items():
            if not (isinstance(key, type) and issubclass(key, BaseException)):
                raise TypeError(
                    f"@fallback mapping keys must be exception classes, got {key!r}; "
                    "write e.g. @fallback({TimeoutError: cached_result})"
                )
            (cls,) = _handled_types((key,), "@fallback mapping keys")
            pairs.append((cls, _alternative(value, f"@fallback mapping value for {cls.__name__}")))
        return FallbackPolicy(
            alternatives=tuple(alt for _, alt in pairs),
            on=tuple(cls for cls, _ in pairs),
            by_type=tuple(pairs),
            on_exhausted=on_exhausted,
        )
    checked: list[Callable[..., Any]] = []
    for index, alt in enumerate(alternatives, 1):
        if isinstance(alt, Mapping):
            raise TypeError(f"@fallback alternative #{index} is a mapping; pass it alone")
        checked.append(_alternative(alt, f"@fallback alternative #{index}"))
    types = _handled_types(on, "on")
    if not types:
        raise ValueError("on must name at least one exception class, e.g. on=(ConnectionError,)")
    return FallbackPolicy(
        alternatives=tuple(checked),
        on=types,
        by_type=None,
        on_exhausted=on_exhausted,
    )


@overload
def fallback(
    by_type: Mapping[type[BaseException], Callable[..., Any]],
    /,
    *,
    on_exhausted: ExhaustedHook | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


@overload
def fallback(
    *alternatives: Callable[..., Any],
    on: type[BaseException] | tuple[type[BaseException], ...] = _ANY_EXCEPTION,
    on_exhausted: ExhaustedHook | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def fallback(
    *alternatives: Callable[..., Any] | Mapping[type[BaseException], Callable[..., Any]],
    on: type[BaseException] | tuple[type[BaseException], ...] = _ANY_EXCEPTION,
    on_exhausted: ExhaustedHook | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """When the function raises an error in `on`, call the alternatives in order.

    Each alternative gets the same arguments; the first to return gives the result,
    and one that raises an error in `on` passes on to the next. An error outside `on`
    propagates at once as itself; when an alternative raised it, a note on it names
    the failures before it, which would otherwise be lost.

    `@fallback({TimeoutError: cached, KeyError: default})` instead picks one
    alternative by the class of the function's error, the most specific class in its
    MRO winning (real subclasses only, as with `except`); an error of a class not in
    the mapping propagates unchanged. If that one alternative fails too, with an error
    of a class in the mapping, every path has failed.

    When every path failed, `on_exhausted(failures, *args, **kwargs)` runs (awaited
    if it returns an awaitable) so the job can be kept for manual review, then
    `ProcessingError` is raised with every failure in `.failures` and the last one as
    its `__cause__`. If `on_exhausted` itself fails, that is noted on the
    `ProcessingError` rather than raised, so the job's own failures stay in front.

    In an `async def` function, alternatives may be sync or async; in a sync one an
    async alternative could never be awaited, so it is refused at decoration time.
    """
    policy = make_fallback_policy(alternatives, on, on_exhausted)

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        return apply_stage(target, FallbackStage(policy), "fallback")

    return decorate
