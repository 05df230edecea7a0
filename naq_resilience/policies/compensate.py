"""Sagas: when a job fails half-way, undo the steps it already completed.

A job is a saga boundary (`@saga`, `with saga():`, `async with saga():`); the steps it
calls are marked with `@compensate(undo)`. Each step that returns while a saga is
active records an `Action`; if the boundary then fails, the saga runs the undos in
reverse order and re-raises the job's own error. If it succeeds, the actions are
discarded: the saga committed.

The active saga lives in a `ContextVar`, so concurrent asyncio tasks and threads each
see their own saga without any locking on the success path. Tasks created inside a
saga (`asyncio.gather`, `asyncio.to_thread`) copy the context and so join it; a plain
`threading.Thread` or `ThreadPoolExecutor.submit` starts with an empty context, so
steps run there record nothing unless submitted with `contextvars.copy_context().run`.

The actions-taken log is an interface, `ActionLog`, because a worker that crashes
mid-job must still roll back when the message is redelivered: a log persisted per job
survives the crash, a closure does not. So an `Action` is plain data (the step's name
as `"module:qualname"`, its result, its arguments, a status) and a saga finds the undo
through a process-wide registry keyed by that name, which `@compensate` fills at
import time. An action recorded in this process also keeps the undo itself, so two
steps that share a qualified name (made by a factory, say) still undo correctly here;
only an action read back from storage depends on the registry. Give such steps a
unique `name=`; the name is also what keeps a stored log valid across a rename.

A step is recorded after it returns, so a crash between its side effect and the
record leaves nothing to undo: steps and their undos should tolerate that (idempotent
writes, undos that accept "already gone").
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from naq_resilience.policies._calls import callable_name, is_async_callable
from naq_resilience.policies.classify import report_critical
from naq_resilience.policies.errors import CompensationError
from naq_resilience.policies.pipeline import (
    Args,
    AsyncRunner,
    Kwargs,
    Runner,
    Stage,
    apply_stage,
    pipeline_of,
    qualified_name,
)

__all__ = [
    "Action",
    "ActionLog",
    "ActionStatus",
    "CompensatePolicy",
    "MemoryActionLog",
    "Saga",
    "SagaPolicy",
    "SagaScope",
    "compensate",
    "compensation_of",
    "current_saga",
    "saga",
    "step_name",
    "undo_for",
]

P = ParamSpec("P")
R = TypeVar("R")

_COMPENSATION = "__naq_compensation__"


class ActionStatus(enum.StrEnum):
    """A string enum, so a stored log holds plain strings."""

    PENDING = "pending"
    UNDONE = "undone"
    FAILED = "failed"


@dataclass(slots=True)
class Action:
    """One completed step, as data a log can store: what ran, with what, and what it returned.

    `status` moves from PENDING to UNDONE, or to FAILED (with `error`, the undo's
    failure as text) when its undo raised; a FAILED action is still pending, so a
    later rollback (after a redelivery, say) tries it again. `undo` is the in-process
    shortcut described in the module docstring; a stored log leaves it out.
    """

    step: str
    result: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    status: ActionStatus = ActionStatus.PENDING
    error: str | None = None
    undo: Callable[..., Any] | None = field(default=None, repr=False, compare=False)


class ActionLog(ABC):
    """Where a saga keeps the actions it may have to undo.

    An abstract class rather than a Protocol so that `saga(log=...)` can tell a log
    instance from a log factory (a class is callable and has the same methods).
    """

    @abstractmethod
    def record(self, action: Action) -> None:
        """Remember a completed step."""

    @abstractmethod
    def pending(self) -> Sequence[Action]:
        """The actions not yet undone (PENDING or FAILED), in the order recorded."""

    @abstractmethod
    def mark_undone(self, action: Action) -> None:
        """`action`'s undo succeeded."""

    @abstractmethod
    def mark_failed(self, action: Action, error: BaseException) -> None:
        """`action`'s undo raised `error`; it stays pending."""

    @abstractmethod
    def clear(self) -> None:
        """Forget every action: the saga committed, or everything was undone."""


class MemoryActionLog(ActionLog):
    """The default log: a list, gone with the process."""

    __slots__ = ("_actions", "_lock")

    def __init__(self) -> None:
        self._actions: list[Action] = []
        self._lock = threading.Lock()

    def record(self, action: Action) -> None:
        with self._lock:
            self._actions.append(action)

    def pending(self) -> tuple[Action, ...]:
        with self._lock:
            return tuple(a for a in self._actions if a.status is not ActionStatus.UNDONE)

    def mark_undone(self, action: Action) -> None:
        action.status = ActionStatus.UNDONE
        action.error = None

    def mark_failed(self, action: Action, error: BaseException) -> None:
        action.status = ActionStatus.FAILED
        action.error = f"{type(error).__name__}: {error}"

    def clear(self) -> None:
        with self._lock:
            self._actions.clear()

    @property
    def actions(self) -> tuple[Action, ...]:
        """Every recorded action, undone ones included, for inspection."""
        with self._lock:
            return tuple(self._actions)


# --------------------------------------------------------------------------- registry

_undo_registry: dict[str, Callable[..., Any]] = {}


def step_name(func: object) -> str:
    """The name a step is recorded and looked up under: `"module:qualname"`."""
    if isinstance(func, (classmethod, staticmethod)):
        func = func.__func__
    return qualified_name(func)


def undo_for(step: str) -> Callable[..., Any]:
    """The undo `@compensate` registered for `step`, to roll back a log read from storage."""
    try:
        return _undo_registry[step]
    except KeyError:
        raise LookupError(
            f"no undo is registered for step {step!r}: the module defining it was not "
            "imported, or the step was renamed (pin it with @compensate(undo, name=...))"
        ) from None


# --------------------------------------------------------------------------- the saga

_active: ContextVar[Saga | None] = ContextVar("naq_resilience_saga", default=None)
_log_override: ContextVar[Callable[[], ActionLog] | None] = ContextVar(
    "naq_resilience_saga_log", default=None
)


def use_action_log(
    factory: Callable[[], ActionLog] | None,
) -> Token[Callable[[], ActionLog] | None]:
    """Make `@saga` jobs run in this context keep their log where `factory` says.

    The job worker uses it to persist each job's log in JetStream, so a crash mid-job
    can still be rolled back on redelivery; returns the token to `reset_action_log`.
    """
    return _log_override.set(factory)


def reset_action_log(token: Token[Callable[[], ActionLog] | None]) -> None:
    _log_override.reset(token)


def current_saga() -> Saga | None:
    """The saga the calling code runs in, if any."""
    return _active.get()


def compensation_of(exc: BaseException) -> CompensationError | None:
    """What a failed saga could not undo when `exc` passed through it (None if all undone)."""
    found = getattr(exc, _COMPENSATION, None)
    return found if isinstance(found, CompensationError) else None


class Saga:
    """One run of a saga boundary: the log of its actions and how to undo them.

    Created by `@saga` and `saga()` for each run. Construct one directly to finish a
    rollback from a stored log: `Saga(stored_log, name=job_id).rollback()`.

    Nested sagas behave like savepoints: an inner saga that fails undoes its own
    actions at once; one that succeeds hands its actions to the saga around it, so a
    later failure out there undoes them too.
    """

    __slots__ = ("_factory", "_log", "_token", "name", "parent")

    def __init__(
        self,
        log: ActionLog | Callable[[], ActionLog] = MemoryActionLog,
        *,
        name: str = "saga",
    ) -> None:
        # The log is made on first use: a run that records nothing allocates nothing.
        if isinstance(log, ActionLog):
            self._log: ActionLog | None = log
            self._factory: Callable[[], ActionLog] | None = None
        else:
            self._log, self._factory = None, log
        self.name = name
        self.parent: Saga | None = None
        self._token: Token[Saga | None] | None = None

    def __repr__(self) -> str:
        return f"<Saga {self.name!r} pending={len(self.actions)}>"

    @property
    def log(self) -> ActionLog:
        log = self._log
        if log is None:
            assert self._factory is not None
            log = self._log = self._factory()
        return log

    @property
    def actions(self) -> tuple[Action, ...]:
        """The actions a rollback would undo now, in the order they were recorded."""
        return () if self._log is None else tuple(self._log.pending())

    def record(self, action: Action) -> None:
        self.log.record(action)

    # ------------------------------------------------------------------ outcome
    def commit(self) -> None:
        """Keep what was done: hand the actions to the enclosing saga, or forget them."""
        log = self._log
        if log is None:
            return
        if self.parent is not None:
            for action in log.pending():
                self.parent.record(action)
        log.clear()

    def rollback(self) -> CompensationError | None:
        """Undo the pending actions, newest first; what could not be undone is returned.

        Every undo is tried even when an earlier one failed: leaving more in place
        because one undo failed would only make the manual clean-up bigger. A sync
        saga cannot await, so an async undo fails here with a TypeError that says so.
        """
        log = self._log
        if log is None:
            return None
        pending = tuple(log.pending())
        failed: list[tuple[Action, BaseException]] = []
        token = _active.set(None)  # an undo that calls steps must not record into us
        try:
            for action in reversed(pending):
                error = self._undo_sync(action)
                if error is None:
                    log.mark_undone(action)
                else:
                    log.mark_failed(action, error)
                    failed.append((action, error))
        finally:
            _active.reset(token)
        return self._settle(log, len(pending), failed)

    async def arollback(self) -> CompensationError | None:
        """`rollback` for async code: undos may be sync or async."""
        log = self._log
        if log is None:
            return None
        pending = tuple(log.pending())
        failed: list[tuple[Action, BaseException]] = []
        token = _active.set(None)
        try:
            for action in reversed(pending):
                error = await self._undo_async(action)
                if error is None:
                    log.mark_undone(action)
                else:
                    log.mark_failed(action, error)
                    failed.append((action, error))
        finally:
            _active.reset(token)
        return self._settle(log, len(pending), failed)

    def _undo_sync(self, action: Action) -> BaseException | None:
        try:
            undo = action.undo or undo_for(action.step)
            if is_async_callable(undo):
                return TypeError(
                    f"undo {callable_name(undo)} of {action.step} is async, but saga "
                    f"{self.name} runs in sync code and cannot await it; make the saga "
                    "boundary async or the undo sync"
                )
            outcome = undo(action.result, *action.args, **action.kwargs)
        except Exception as error:
            return error
        if inspect.isawaitable(outcome):
            if inspect.iscoroutine(outcome):
                outcome.close()
            return TypeError(
                f"undo {callable_name(undo)} of {action.step} returned an awaitable, but "
                f"saga {self.name} runs in sync code and cannot await it"
            )
        return None

    @staticmethod
    async def _undo_async(action: Action) -> BaseException | None:
        try:
            undo = action.undo or undo_for(action.step)
            outcome = undo(action.result, *action.args, **action.kwargs)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception as error:
            return error
        return None

    def _settle(
        self, log: ActionLog, total: int, failed: list[tuple[Action, BaseException]]
    ) -> CompensationError | None:
        if not failed:
            log.clear()
            return None
        details = "; ".join(
            f"{action.step} ({type(error).__name__}: {error})" for action, error in failed
        )
        return CompensationError(
            f"saga {self.name}: {len(failed)} of {total} completed steps could not be "
            f"undone and are still in effect: {details}",
            not_undone=tuple(action.step for action, _ in failed),
            errors=tuple(error for _, error in failed),
        )

    # ------------------------------------------------------------------ boundary
    def _open(self) -> None:
        self.parent = _active.get()
        self._token = _active.set(self)

    def _close(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            _active.reset(token)

    def _succeeded(self) -> None:
        self._close()
        self.commit()

    def _failed(self, exc: BaseException, compensation: CompensationError | None) -> None:
        if compensation is None:
            return
        report_critical(compensation)
        earlier = compensation_of(exc)
        attached = compensation if earlier is None else _merge(earlier, compensation)
        with contextlib.suppress(AttributeError):
            setattr(exc, _COMPENSATION, attached)
        exc.add_note(
            f"naq-resilience saga {self.name}: rolled back, but these steps could not be "
            f"undone and are still in effect: {', '.join(compensation.not_undone)} "
            "(details: compensation_of(error))"
        )

    def _fail_sync(self, exc: BaseException) -> None:
        self._close()
        try:
            compensation = self.rollback()
        except Exception as log_error:
            compensation = self._broken(log_error)
        self._failed(exc, compensation)

    async def _fail_async(self, exc: BaseException) -> None:
        self._close()
        try:
            compensation = await self.arollback()
        except Exception as log_error:
            compensation = self._broken(log_error)
        self._failed(exc, compensation)

    def _broken(self, log_error: BaseException) -> CompensationError:
        """The rollback itself failed (its log raised): say so instead of hiding the job's error."""
        return CompensationError(
            f"saga {self.name}: rollback stopped, its action log failed ({log_error!r}); "
            "steps not yet undone are still in effect",
            not_undone=("<unknown: the action log failed>",),
            errors=(log_error,),
        )


def _merge(earlier: CompensationError, later: CompensationError) -> CompensationError:
    """One error for every saga the job's error passed through (an inner one and outer)."""
    return CompensationError(
        f"{earlier}\n{later}",
        not_undone=(*earlier.not_undone, *later.not_undone),
        errors=(*earlier.errors, *later.errors),
    )


# --------------------------------------------------------------------------- @compensate


@dataclass(frozen=True, slots=True)
class CompensatePolicy:
    """`undo` reverses the step registered as `step` ("module:qualname" or `name=`)."""

    undo: Callable[..., Any]
    step: str


class CompensateStage(Stage):
    policy: CompensatePolicy

    def __init__(self, policy: CompensatePolicy) -> None:
        self.policy = policy

    def check(self, func: Callable[..., Any], is_async: bool) -> None:
        if not is_async and is_async_callable(self.policy.undo):
            raise TypeError(
                f"@compensate on sync function {func.__qualname__} got async undo "
                f"{callable_name(self.policy.undo)}: a sync step runs in sync sagas, which "
                "cannot await; make the undo sync or the step async"
            )

    def build_sync(self, inner: Runner, func: Callable[..., Any]) -> Runner:
        step, undo = self.policy.step, self.policy.undo

        def run(args: Args, kwargs: Kwargs) -> Any:
            result = inner(args, kwargs)
            active = _active.get()
            if active is not None:
                active.record(Action(step, result, args, kwargs, undo=undo))
            return result

        return run

    def build_async(self, inner: AsyncRunner, func: Callable[..., Any]) -> AsyncRunner:
        step, undo = self.policy.step, self.policy.undo

        async def run(args: Args, kwargs: Kwargs) -> Any:
            result = await inner(args, kwargs)
            active = _active.get()
            if active is not None:
                active.record(Action(step, result, args, kwargs, undo=undo))
            return result

        return run


def compensate(
    undo: Callable[..., Any], *, name: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a step of a saga: if the saga fails after the step returned, `undo` runs.

    `undo(result, *args, **kwargs)` gets the step's return value and the arguments
    the step was called with, so for a method `self` comes after `result`. Outside
    any saga the step simply runs and nothing is recorded, so a step can be called
    from code that needs no rollback.

    An async `undo` on a sync step is refused: a sync step is what sync jobs call,
    and a sync saga has no event loop to await the undo on. An async step may have a
    sync or an async undo.

    `name` replaces the "module:qualname" the step is recorded under; see the module
    docstring for when that matters.
    """
    if not callable(undo):
        raise TypeError(f"@compensate needs a callable undo, got {undo!r}")
    if _is_log(undo):
        raise TypeError("@compensate takes the undo function; the log belongs to saga(log=...)")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"name must be a non-empty string, got {name!r}")

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        existing = pipeline_of(
            target.__func__ if isinstance(target, (classmethod, staticmethod)) else target
        )
        if existing is not None and any(isinstance(s, CompensateStage) for s in existing.stages):
            raise TypeError(
                f"{existing.func.__qualname__} already has @compensate: one step, one undo "
                "(call both undos from one function)"
            )
        step = name or step_name(target)
        wrapped = apply_stage(target, CompensateStage(CompensatePolicy(undo, step)), "compensate")
        _undo_registry[step] = undo
        return wrapped

    return decorate


# --------------------------------------------------------------------------- @saga

LogSource = ActionLog | Callable[[], ActionLog]


@dataclass(frozen=True, slots=True)
class SagaPolicy:
    """`log()` makes the action log for each run of the job."""

    log: Callable[[], ActionLog]


class SagaStage(Stage):
    policy: SagaPolicy

    def __init__(self, policy: SagaPolicy) -> None:
        self.policy = policy

    def build_sync(self, inner: Runner, func: Callable[..., Any]) -> Runner:
        make_log, name = self.policy.log, func.__qualname__

        def run(args: Args, kwargs: Kwargs) -> Any:
            active = Saga(_log_override.get() or make_log, name=name)
            active._open()
            try:
                result = inner(args, kwargs)
            except BaseException as error:
                exc: BaseException = error
            else:
                active._succeeded()
                return result
            active._fail_sync(exc)
            raise exc

        return run

    def build_async(self, inner: AsyncRunner, func: Callable[..., Any]) -> AsyncRunner:
        make_log, name = self.policy.log, func.__qualname__

        async def run(args: Args, kwargs: Kwargs) -> Any:
            active = Saga(_log_override.get() or make_log, name=name)
            active._open()
            try:
                result = await inner(args, kwargs)
            except BaseException as error:
                exc: BaseException = error
            else:
                active._succeeded()
                return result
            await active._fail_async(exc)
            raise exc

        return run


class SagaScope:
    """What `saga(...)` returns: a decorator for a job, or a `with` / `async with` block.

    It keeps no state of its own (the running saga is in the context variable), so
    one scope may be shared by concurrent tasks and threads.
    """

    __slots__ = ("_log",)

    def __init__(self, log: LogSource) -> None:
        self._log = log

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        log = self._log
        if isinstance(log, ActionLog):
            raise TypeError(
                f"@saga(log=...) on {callable_name(func)} needs a log factory, called once "
                "per run (e.g. log=MemoryActionLog); a log instance would be shared by "
                "every run of the job. Instances are for `with saga(log=...)`"
            )
        return apply_stage(func, SagaStage(SagaPolicy(log)), "saga")

    def __enter__(self) -> Saga:
        active = Saga(self._log, name="saga block")
        active._open()
        return active

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        active = _entered()
        if exc is None:
            active._succeeded()
        else:
            active._fail_sync(exc)

    async def __aenter__(self) -> Saga:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        active = _entered()
        if exc is None:
            active._succeeded()
        else:
            await active._fail_async(exc)


def _entered() -> Saga:
    active = _active.get()
    if active is None or active._token is None:
        raise RuntimeError("saga block exited in a context where it was not entered")
    return active


def _is_log(value: object) -> bool:
    return isinstance(value, ActionLog) or (
        isinstance(value, type) and issubclass(value, ActionLog)
    )


def _log_source(log: object) -> LogSource:
    if isinstance(log, ActionLog):
        return log
    if not callable(log):
        raise TypeError(
            f"log must be an ActionLog or a callable returning one, got {log!r}; "
            "e.g. log=MemoryActionLog"
        )
    return log


@overload
def saga(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def saga(*, log: LogSource = MemoryActionLog) -> SagaScope: ...


def saga(
    func: Callable[P, R] | None = None,
    /,
    *,
    log: LogSource = MemoryActionLog,
) -> Callable[P, R] | SagaScope:
    """Make a job (or a block) all-or-nothing: if it fails, undo its completed steps.

    `@saga`, `@saga()` and `@saga(log=factory)` decorate a sync or async job; as a
    pipeline stage it stacks with the other decorators, and the order says what one
    saga spans: under `@retry` (`@retry @saga`) each attempt is its own saga and a
    failed attempt is undone before the next; above it (`@saga @retry`) one saga spans
    every attempt, and the steps a failed attempt completed are only undone if the
    whole job fails. `with saga() as s:` and `async with saga() as s:` do the same
    for a block and yield the `Saga`; there `log` may also be an `ActionLog` instance.

    Any exception rolls the saga back, cancellation and KeyboardInterrupt included:
    the job did not finish, so its partial work should not stay. The job's own error
    is always what propagates. When an undo fails too, the others still run, a
    `CompensationError` naming what is still in effect goes to the on-critical hooks,
    and it is attached to the job's error (`compensation_of(error)`, and a note).
    """
    if func is not None:
        if _is_log(func):
            raise TypeError("pass the action log by keyword: saga(log=...)")
        return SagaScope(MemoryActionLog)(func)
    return SagaScope(_log_source(log))
