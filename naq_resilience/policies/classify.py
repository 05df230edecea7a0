"""Deciding what a failure means: retry it, give up on it, or raise the alarm.

The rule is "most specific class wins": `classify` walks the exception's MRO and the
first class named in any set decides. So `class Flaky(Retryable, ValueError)` is
retryable although `ValueError` is not, and a user's `retry_on=(OSError,)` does not
make `PermissionError` retryable unless they name it (`PermissionError` sits before
`OSError` in its MRO and the defaults name it). Two overrides sit above that walk:
critical always wins, then `ignore_on`, then `retry_on`.

Results for the global defaults are cached per exception type; the cache is rebuilt
when the defaults change, so the failure path pays one dict lookup.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any

from naq_resilience.policies.errors import (
    AuthenticationError,
    CorruptionError,
    Critical,
    DataValidationError,
    EnrichedError,
    NonRetryable,
    RateLimitError,
    Retryable,
    SecurityError,
    SystemFailureError,
    TemporaryResourceError,
)

__all__ = [
    "Classification",
    "CRITICAL_ERRORS",
    "NON_RETRYABLE_ERRORS",
    "RETRYABLE_ERRORS",
    "classify",
    "classify_by_name",
    "configure_errors",
    "context_of",
    "error_context",
    "exception_types",
    "is_expected",
    "on_critical",
    "report_critical",
]

ExcTypes = tuple[type[BaseException], ...]


class Classification(enum.Enum):
    RETRYABLE = "retryable"
    NON_RETRYABLE = "non_retryable"
    CRITICAL = "critical"


DEFAULT_RETRYABLE: ExcTypes = (
    ConnectionError,
    TimeoutError,
    TemporaryResourceError,
    RateLimitError,
    Retryable,
)
DEFAULT_NON_RETRYABLE: ExcTypes = (
    ValueError,
    TypeError,
    PermissionError,
    AuthenticationError,
    DataValidationError,
    NonRetryable,
)
DEFAULT_CRITICAL: ExcTypes = (SecurityError, CorruptionError, SystemFailureError, Critical)

# The live configuration. Read them through the module (`classify.RETRYABLE_ERRORS` or
# `naq_resilience.RETRYABLE_ERRORS`): `configure_errors` rebinds them.
RETRYABLE_ERRORS: ExcTypes = DEFAULT_RETRYABLE
NON_RETRYABLE_ERRORS: ExcTypes = DEFAULT_NON_RETRYABLE
CRITICAL_ERRORS: ExcTypes = DEFAULT_CRITICAL
UNKNOWN_ERRORS: Classification = Classification.RETRYABLE

_R, _N, _C = Classification.RETRYABLE, Classification.NON_RETRYABLE, Classification.CRITICAL
_by_class: dict[type[BaseException], Classification] = {}
_critical_set: frozenset[type[BaseException]] = frozenset()
_cache: dict[type[BaseException], Classification] = {}


def exception_types(value: object, argument: str) -> ExcTypes:
    """Validate a user's exception-class argument (one class or an iterable of them)."""
    if value is None:
        return ()
    hint = f"write e.g. {argument}=(ConnectionError, TimeoutError)"
    if isinstance(value, str):
        raise TypeError(f"{argument} takes exception classes, not names: got {value!r}; {hint}")
    items: Iterable[object] = (value,) if isinstance(value, type) else value  # type: ignore[assignment]
    try:
        result = tuple(items)
    except TypeError:
        raise TypeError(
            f"{argument} must be an exception class or a tuple of them, got {value!r}; {hint}"
        ) from None
    for item in result:
        if isinstance(item, str):
            raise TypeError(f"{argument} takes exception classes, not names: got {item!r}; {hint}")
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{argument} must contain exception classes, got {item!r}; {hint}")
    return result  # type: ignore[return-value]


def _rebuild() -> None:
    global _critical_set
    table: dict[type[BaseException], Classification] = {}
    for kind, types in ((_R, RETRYABLE_ERRORS), (_N, NON_RETRYABLE_ERRORS), (_C, CRITICAL_ERRORS)):
        for t in types:
            table[t] = kind
    _by_class.clear()
    _by_class.update(table)
    _critical_set = frozenset(CRITICAL_ERRORS)
    _cache.clear()


_rebuild()


def configure_errors(
    *,
    retryable: Iterable[type[BaseException]] | None = None,
    non_retryable: Iterable[type[BaseException]] | None = None,
    critical: Iterable[type[BaseException]] | None = None,
    unknown: Classification | None = None,
) -> None:
    """Replace the process-wide defaults; an argument left out keeps its current value.

    Call it once at start-up: the marker bases (`Retryable`, ...) are always kept so
    user subclasses of them stay classified, whatever the lists say.
    """
    global RETRYABLE_ERRORS, NON_RETRYABLE_ERRORS, CRITICAL_ERRORS, UNKNOWN_ERRORS
    if retryable is not None:
        RETRYABLE_ERRORS = _with_marker(exception_types(retryable, "retryable"), Retryable)
    if non_retryable is not None:
        NON_RETRYABLE_ERRORS = _with_marker(
            exception_types(non_retryable, "non_retryable"), NonRetryable
        )
    if critical is not None:
        CRITICAL_ERRORS = _with_marker(exception_types(critical, "critical"), Critical)
    if unknown is not None:
        if not isinstance(unknown, Classification):
            raise TypeError(f"unknown must be a Classification member, got {unknown!r}")
        UNKNOWN_ERRORS = unknown
    _rebuild()


def reset_errors() -> None:
    """Restore the shipped defaults (for tests)."""
    global RETRYABLE_ERRORS, NON_RETRYABLE_ERRORS, CRITICAL_ERRORS, UNKNOWN_ERRORS
    RETRYABLE_ERRORS, NON_RETRYABLE_ERRORS, CRITICAL_ERRORS = (
        DEFAULT_RETRYABLE,
        DEFAULT_NON_RETRYABLE,
        DEFAULT_CRITICAL,
    )
    UNKNOWN_ERRORS = Classification.RETRYABLE
    _rebuild()


def _with_marker(types: ExcTypes, marker: type[BaseException]) -> ExcTypes:
    return types if marker in types else (*types, marker)


def _default_kind(cls: type[BaseException]) -> Classification:
    kind = _cache.get(cls)
    if kind is None:
        kind = UNKNOWN_ERRORS
        for base in cls.__mro__:
            found = _by_class.get(base)
            if found is not None:
                kind = found
                break
        if any(issubclass(cls, c) for c in _critical_set):
            kind = _C
        _cache[cls] = kind
    return kind


def classify(
    exc: BaseException,
    retry_on: ExcTypes | None = None,
    ignore_on: ExcTypes | None = None,
) -> Classification:
    """Say what `exc` means. `retry_on`, when given, is the complete list of what to retry."""
    cls = type(exc)
    kind = _default_kind(cls)
    if kind is _C:
        return kind
    if ignore_on and issubclass(cls, ignore_on):
        return _N
    if retry_on is not None:
        return _R if issubclass(cls, retry_on) else _N
    return kind


def is_expected(exc: BaseException) -> bool:
    """Whether the configured errors name `exc`'s class or a base of it: an error the
    code was written to meet (a timeout, bad input), whose traceback tells a person
    little. Any other (a `KeyError`, a bug) is unexpected, and its traceback is what
    to read first: the worker logs it with the dead letter."""
    return any(base in _by_class for base in type(exc).__mro__)


def classify_by_name(
    exc: BaseException,
    retry_on: frozenset[str] | None = None,
    ignore_on: frozenset[str] = frozenset(),
) -> Classification:
    """`classify` with `retry_on` / `ignore_on` given as `module:qualname` names.

    That is how a job's enqueue-time options reach a worker. Subclass semantics come
    from the error's MRO, so matching never imports the named classes: a message
    cannot make a worker import anything.
    """
    cls = type(exc)
    kind = _default_kind(cls)
    if kind is _C or (not ignore_on and retry_on is None):
        return kind
    names = {f"{base.__module__}:{base.__qualname__}" for base in cls.__mro__}
    if not names.isdisjoint(ignore_on):
        return _N
    if retry_on is not None:
        return _R if not names.isdisjoint(retry_on) else _N
    return kind


# --------------------------------------------------------------------------- critical hooks

CriticalHook = Callable[[BaseException], object]
_hooks: list[CriticalHook] = []
_hooks_lock = threading.Lock()
_REPORTED = "__naq_critical_reported__"


def on_critical(callback: CriticalHook) -> CriticalHook:
    """Register `callback(exc)`; usable as a decorator. Each critical error is reported once."""
    if not callable(callback):
        raise TypeError(f"on_critical needs a callable, got {callback!r}")
    with _hooks_lock:
        _hooks.append(callback)
    return callback


def remove_critical_hook(callback: CriticalHook) -> None:
    with _hooks_lock:
        if callback in _hooks:
            _hooks.remove(callback)


def report_critical(exc: BaseException) -> bool:
    """Call the hooks for `exc` unless it was reported already; True if they ran now.

    A hook that raises must not hide the job's own error, so its failure is attached
    to `exc` as a note instead of propagating.
    """
    if getattr(exc, _REPORTED, False):
        return False
    with contextlib.suppress(AttributeError):  # exceptions with __slots__, no __dict__
        setattr(exc, _REPORTED, True)
    for hook in tuple(_hooks):
        try:
            hook(exc)
        except Exception as hook_error:
            exc.add_note(f"naq-resilience: critical hook {hook!r} failed: {hook_error!r}")
    return True


def report_if_critical(exc: BaseException) -> None:
    if _default_kind(type(exc)) is _C:
        report_critical(exc)


# --------------------------------------------------------------------------- error context

_CONTEXT = "__naq_context__"


def context_of(exc: BaseException) -> dict[str, Any]:
    """The context attached to `exc` by `error_context` and `EnrichedError`, merged."""
    merged: dict[str, Any] = {}
    if isinstance(exc, EnrichedError):
        merged.update(exc.context)
    attached = getattr(exc, _CONTEXT, None)
    if attached:
        for key, value in attached.items():
            merged.setdefault(key, value)
    return merged


class error_context(AbstractContextManager[None], AbstractAsyncContextManager[None]):  # noqa: N801
    """Attach `**context` to any exception raised inside, keeping its type.

    Nested blocks merge; the innermost value of a key wins because it is the most
    precise about where the failure happened.
    """

    __slots__ = ("_context",)

    def __init__(self, **context: Any) -> None:
        self._context = context

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            _attach(exc, self._context)

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            _attach(exc, self._context)


def _attach(exc: BaseException, context: dict[str, Any]) -> None:
    existing = getattr(exc, _CONTEXT, None)
    if existing is None:
        try:
            setattr(exc, _CONTEXT, dict(context))
        except AttributeError:
            exc.add_note(f"context: {context!r}")
        return
    for key, value in context.items():
        existing.setdefault(key, value)
