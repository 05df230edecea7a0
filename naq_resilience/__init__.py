"""naq-resilience: background jobs that survive the real world.

Decorators that stack into one wrapper (`retry`, `circuit_breaker`, `fallback`,
`compensate` with `saga`, `chaos`), the error taxonomy they classify with, and
(from the job layer) a NATS JetStream queue whose API follows NAQ's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from naq_resilience.policies import classify as _classify
from naq_resilience.policies.breaker import (
    BreakerPolicy,
    BreakerSnapshot,
    BreakerStore,
    CircuitBreaker,
    CircuitState,
    MemoryBreakerStore,
    circuit_breaker,
    get_breaker,
)
from naq_resilience.policies.chaos import ChaosMonkey, ChaosPolicy, ChaosSwitch, chaos, is_injected
from naq_resilience.policies.classify import (
    Classification,
    classify,
    configure_errors,
    context_of,
    error_context,
    on_critical,
    remove_critical_hook,
)
from naq_resilience.policies.compensate import (
    Action,
    ActionLog,
    ActionStatus,
    CompensatePolicy,
    MemoryActionLog,
    Saga,
    SagaPolicy,
    compensate,
    compensation_of,
    current_saga,
    saga,
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
from naq_resilience.policies.fallback import FallbackPolicy, fallback
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
    "Action",
    "ActionLog",
    "ActionStatus",
    "Attempt",
    "attempts_of",
    "AuthenticationError",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerStore",
    "chaos",
    "ChaosMonkey",
    "ChaosPolicy",
    "ChaosSwitch",
    "circuit_breaker",
    "CircuitBreaker",
    "CircuitBreakerOpenError",
    "CircuitState",
    "Classification",
    "classify",
    "compensate",
    "CompensatePolicy",
    "compensation_of",
    "CompensationError",
    "configure_errors",
    "context_of",
    "CorruptionError",
    "Critical",
    "CRITICAL_ERRORS",
    "current_saga",
    "DataCorruptionError",
    "DataValidationError",
    "DelaySchedule",
    "EnrichedError",
    "error_context",
    "fallback",
    "FallbackPolicy",
    "get_breaker",
    "is_injected",
    "MemoryActionLog",
    "MemoryBreakerStore",
    "NON_RETRYABLE_ERRORS",
    "NonRetryable",
    "on_critical",
    "policies_of",
    "ProcessingError",
    "RateLimitError",
    "remove_critical_hook",
    "retry",
    "Retryable",
    "RETRYABLE_ERRORS",
    "RetryPolicy",
    "RetryState",
    "Saga",
    "saga",
    "SagaPolicy",
    "SecurityError",
    "set_testing",
    "SystemFailureError",
    "TemporaryResourceError",
]
