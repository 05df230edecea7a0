"""The exception taxonomy.

Three marker bases say how a failure should be treated (`Retryable`, `NonRetryable`,
`Critical`); the named errors are the ones job code raises most. Users may subclass
any of them, and classification follows the subclass (see `classify`).
"""

from __future__ import annotations

from typing import Any

from naq_resilience.policies.durations import Duration, seconds

__all__ = [
    "AuthenticationError",
    "CircuitBreakerOpenError",
    "CompensationError",
    "CorruptionError",
    "Critical",
    "DataCorruptionError",
    "DataValidationError",
    "EnrichedError",
    "NonRetryable",
    "ProcessingError",
    "RateLimitError",
    "Retryable",
    "SecurityError",
    "SystemFailureError",
    "TemporaryResourceError",
]


class Retryable(Exception):
    """A failure that may go away if the same call is tried again later."""


class NonRetryable(Exception):
    """A failure that will happen again on every attempt: retrying only wastes time."""


class Critical(Exception):
    """A failure that must stop the job at once and wake a person (hooks, dead letter)."""


class TemporaryResourceError(Retryable):
    """A dependency is briefly unavailable (pool exhausted, lock held, 503)."""


class RateLimitError(Retryable):
    """The callee asked us to slow down; `retry_after` (seconds or a `timedelta`, held as
    seconds) is honoured by `@retry` and by the worker's retry delay."""

    def __init__(self, message: str = "rate limited", retry_after: Duration | None = None) -> None:
        super().__init__(message)
        self.retry_after = None if retry_after is None else seconds(retry_after, "retry_after")


class AuthenticationError(NonRetryable):
    """Credentials were refused; the same credentials will be refused again."""


class DataValidationError(NonRetryable):
    """The job's input is invalid; fix the data, not the timing."""


class ProcessingError(Exception):
    """A job could not be processed; `failures` holds every underlying error in order.

    Raised by `@fallback` when the primary and every alternative failed. Its
    `__cause__` is the last failure, so a traceback shows the whole chain.
    """

    def __init__(self, message: str, failures: tuple[BaseException, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures


class SecurityError(Critical):
    """Something looks like an attack or a breach of policy."""


class CorruptionError(Critical):
    """Data is corrupt; continuing could spread the damage."""


DataCorruptionError = CorruptionError


class SystemFailureError(Critical):
    """The system is in a state it cannot recover from on its own."""


class CompensationError(Critical):
    """Undo steps of a failed saga failed too: `not_undone` names what is left in place.

    Reported through the critical hooks; the saga still re-raises the job's original
    error, with this one attached to it as `__naq_compensation__`.
    """

    def __init__(
        self, message: str, not_undone: tuple[str, ...], errors: tuple[BaseException, ...]
    ) -> None:
        super().__init__(message)
        self.not_undone = not_undone
        self.errors = errors


class CircuitBreakerOpenError(Retryable):
    """A call was refused without running because its circuit breaker is open.

    `retry_after` is how many seconds remain until the breaker lets a probe through,
    so `@retry` above a breaker waits exactly that long instead of burning attempts.
    `@circuit_breaker` always says; a breaker of your own may not know
    (`CircuitBreakerOpenError("Circuit breaker is open")`, as in NAQ's guide), and then
    `retry_after` is None: `@retry` waits as its schedule says, and a worker defers
    the job 1 s, doubling with each deferral of that job up to 60 s. `name` is the
    breaker's name, when one raised it.
    """

    def __init__(
        self,
        message: str = "circuit breaker is open",
        retry_after: Duration | None = None,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.name = name
        self.retry_after = None if retry_after is None else seconds(retry_after, "retry_after")


class EnrichedError(Exception):
    """An error that carries structured context (ids, inputs) for the failure record."""

    def __init__(self, message: str, context: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.context: dict[str, Any] = dict(context or {})

    def __str__(self) -> str:
        base = super().__str__()
        if not self.context:
            return base
        details = ", ".join(f"{k}={v!r}" for k, v in self.context.items())
        return f"{base} [{details}]"


# Errors are named `module:qualname` on the wire (failure records, `retry_on=` names):
# name them after the package users import them from, not after this private module,
# so those names stay stable however the package is organised inside.
for _name in __all__:
    globals()[_name].__module__ = "naq_resilience"
del _name
