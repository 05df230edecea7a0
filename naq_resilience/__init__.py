"""naq-resilience: background jobs that survive the real world.

Decorators that stack into one wrapper (`retry`, `circuit_breaker`, `fallback`,
`compensate` with `saga`, `chaos`), the error taxonomy they classify with, and
(from the job layer) a NATS JetStream queue whose API follows NAQ's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from naq_resilience.policies import classify as _classify
from naq_resilience.policies.classify import (
    Classification,
    classify,
    configure_errors,
    context_of,
    error_context,
    on_critical,
    remove_critical_hook,
)
from naq_resilience.policies.delays import DelaySchedule
from naq_resilience.policies.errors import (
    AuthenticationError,
    CircuitBreakerOpenError,
    CompensationError,
    CorruptionError,
    Critical,
    DataCorruptionError,
    DataValidationError,
    EnrichedError,
    NonRetryable,
    ProcessingError,
    RateLimitError,
    Retryable,
    SecurityError,
    SystemFailureError,
    TemporaryResourceError,
)
from naq_resilience.policies.pipeline import policies_of
from naq_resilience.policies.retry import (
    Attempt,
    RetryPolicy,
    RetryState,
    attempts_of,
    retry,
    set_testing,
)

if TYPE_CHECKING:
    RETRYABLE_ERRORS: tuple[type[BaseException], ...]
    NON_RETRYABLE_ERRORS: tuple[type[BaseException], ...]
    CRITICAL_ERRORS: tuple[type[BaseException], ...]

_LIVE = frozenset({"RETRYABLE_ERRORS", "NON_RETRYABLE_ERRORS", "CRITICAL_ERRORS"})


def __getattr__(name: str) -> Any:
    """The error lists are read live, so `configure_errors` shows through the root."""
    if name in _LIVE:
        return getattr(_classify, name)
    raise AttributeError(f"module 'naq_resilience' has no attribute {name!r}")


__all__ = [
    "Attempt",
    "AuthenticationError",
    "CRITICAL_ERRORS",
    "CircuitBreakerOpenError",
    "Classification",
    "CompensationError",
    "CorruptionError",
    "Critical",
    "DataCorruptionError",
    "DataValidationError",
    "DelaySchedule",
    "EnrichedError",
    "NON_RETRYABLE_ERRORS",
    "NonRetryable",
    "ProcessingError",
    "RETRYABLE_ERRORS",
    "RateLimitError",
    "RetryPolicy",
    "RetryState",
    "Retryable",
    "SecurityError",
    "SystemFailureError",
    "TemporaryResourceError",
    "attempts_of",
    "classify",
    "configure_errors",
    "context_of",
    "error_context",
    "on_critical",
    "policies_of",
    "remove_critical_hook",
    "retry",
    "set_testing",
]
