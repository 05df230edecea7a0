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
from naq_resilience.policies.marker import job
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
    from naq_resilience.jetstream.client import (
        Client,
        Job,
        JobFailedError,
        JobList,
        SyncClient,
        SyncJob,
        enqueue,
        enqueue_many,
        enqueue_sync,
        get_dead_letter_jobs,
        get_failed_jobs,
        get_job,
        get_jobs_in_timeframe,
    )
    from naq_resilience.jetstream.connection import (
        ConnectionSettings,
        JetStreamNotEnabledError,
        JetStreamUnavailableError,
        NatsUnavailableError,
    )
    from naq_resilience.jetstream.publisher import PublishTimeoutError, StreamFullError
    from naq_resilience.jetstream.registry import UnroutableJob
    from naq_resilience.jetstream.schedules import (
        JobNotFoundError,
        Queue,
        ScheduledJob,
        ScheduleInfo,
        cancel_scheduled_job,
        cancel_scheduled_job_sync,
        enqueue_at,
        enqueue_at_sync,
        enqueue_in,
        enqueue_in_sync,
        list_schedules,
        list_schedules_sync,
        modify_scheduled_job,
        modify_scheduled_job_sync,
        pause_scheduled_job,
        pause_scheduled_job_sync,
        purge_queue,
        purge_queue_sync,
        resume_scheduled_job,
        resume_scheduled_job_sync,
        schedule,
        schedule_sync,
    )
    from naq_resilience.jetstream.server import EmbeddedServer
    from naq_resilience.jetstream.streams import StorageSettings
    from naq_resilience.jetstream.worker import (
        ResultTooLargeError,
        Worker,
        WorkerConnectionLost,
        current_job,
    )
    from naq_resilience.models import (
        DeadLetter,
        FailureRecord,
        JobEnvelope,
        JobRecord,
        JobStatus,
    )
    from naq_resilience.ops.logging import setup_logging

_LIVE = frozenset({"RETRYABLE_ERRORS", "NON_RETRYABLE_ERRORS", "CRITICAL_ERRORS"})

# The job layer loads on first use: code that only decorates functions (and the
# pytest plugin, loaded in every test session) never imports nats-py.
_LAZY = {
    "Client": "naq_resilience.jetstream.client",
    "Job": "naq_resilience.jetstream.client",
    "JobFailedError": "naq_resilience.jetstream.client",
    "SyncClient": "naq_resilience.jetstream.client",
    "SyncJob": "naq_resilience.jetstream.client",
    "enqueue": "naq_resilience.jetstream.client",
    "enqueue_many": "naq_resilience.jetstream.client",
    "enqueue_sync": "naq_resilience.jetstream.client",
    "get_dead_letter_jobs": "naq_resilience.jetstream.client",
    "get_failed_jobs": "naq_resilience.jetstream.client",
    "get_job": "naq_resilience.jetstream.client",
    "get_jobs_in_timeframe": "naq_resilience.jetstream.client",
    "JobList": "naq_resilience.jetstream.client",
    "PublishTimeoutError": "naq_resilience.jetstream.publisher",
    "StreamFullError": "naq_resilience.jetstream.publisher",
    "UnroutableJob": "naq_resilience.jetstream.registry",
    "StorageSettings": "naq_resilience.jetstream.streams",
    "ResultTooLargeError": "naq_resilience.jetstream.worker",
    "WorkerConnectionLost": "naq_resilience.jetstream.worker",
    "JobRecord": "naq_resilience.models",
    "ConnectionSettings": "naq_resilience.jetstream.connection",
    "NatsUnavailableError": "naq_resilience.jetstream.connection",
    "JetStreamUnavailableError": "naq_resilience.jetstream.connection",
    "JetStreamNotEnabledError": "naq_resilience.jetstream.connection",
    "JobNotFoundError": "naq_resilience.jetstream.schedules",
    "Queue": "naq_resilience.jetstream.schedules",
    "ScheduleInfo": "naq_resilience.jetstream.schedules",
    "ScheduledJob": "naq_resilience.jetstream.schedules",
    "cancel_scheduled_job": "naq_resilience.jetstream.schedules",
    "cancel_scheduled_job_sync": "naq_resilience.jetstream.schedules",
    "enqueue_at": "naq_resilience.jetstream.schedules",
    "enqueue_at_sync": "naq_resilience.jetstream.schedules",
    "enqueue_in": "naq_resilience.jetstream.schedules",
    "enqueue_in_sync": "naq_resilience.jetstream.schedules",
    "list_schedules": "naq_resilience.jetstream.schedules",
    "list_schedules_sync": "naq_resilience.jetstream.schedules",
    "modify_scheduled_job": "naq_resilience.jetstream.schedules",
    "modify_scheduled_job_sync": "naq_resilience.jetstream.schedules",
    "pause_scheduled_job": "naq_resilience.jetstream.schedules",
    "pause_scheduled_job_sync": "naq_resilience.jetstream.schedules",
    "purge_queue": "naq_resilience.jetstream.schedules",
    "purge_queue_sync": "naq_resilience.jetstream.schedules",
    "resume_scheduled_job": "naq_resilience.jetstream.schedules",
    "resume_scheduled_job_sync": "naq_resilience.jetstream.schedules",
    "schedule": "naq_resilience.jetstream.schedules",
    "schedule_sync": "naq_resilience.jetstream.schedules",
    "EmbeddedServer": "naq_resilience.jetstream.server",
    "Worker": "naq_resilience.jetstream.worker",
    "current_job": "naq_resilience.jetstream.worker",
    "DeadLetter": "naq_resilience.models",
    "FailureRecord": "naq_resilience.models",
    "JobEnvelope": "naq_resilience.models",
    "JobStatus": "naq_resilience.models",
    "setup_logging": "naq_resilience.ops.logging",
}


def __getattr__(name: str) -> Any:
    """Live error lists (so `configure_errors` shows through) and the lazy job layer."""
    if name in _LIVE:
        return getattr(_classify, name)
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
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
    "cancel_scheduled_job",
    "cancel_scheduled_job_sync",
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
    "Client",
    "compensate",
    "CompensatePolicy",
    "compensation_of",
    "CompensationError",
    "configure_errors",
    "ConnectionSettings",
    "context_of",
    "CorruptionError",
    "Critical",
    "CRITICAL_ERRORS",
    "current_job",
    "current_saga",
    "DataCorruptionError",
    "DataValidationError",
    "DeadLetter",
    "DelaySchedule",
    "EmbeddedServer",
    "enqueue",
    "enqueue_at",
    "enqueue_at_sync",
    "enqueue_in",
    "enqueue_in_sync",
    "enqueue_many",
    "enqueue_sync",
    "EnrichedError",
    "error_context",
    "FailureRecord",
    "fallback",
    "FallbackPolicy",
    "get_breaker",
    "get_dead_letter_jobs",
    "get_failed_jobs",
    "get_job",
    "get_jobs_in_timeframe",
    "is_injected",
    "JetStreamNotEnabledError",
    "JetStreamUnavailableError",
    "Job",
    "job",
    "JobEnvelope",
    "JobFailedError",
    "JobList",
    "JobRecord",
    "JobNotFoundError",
    "JobStatus",
    "list_schedules",
    "list_schedules_sync",
    "MemoryActionLog",
    "MemoryBreakerStore",
    "modify_scheduled_job",
    "modify_scheduled_job_sync",
    "NatsUnavailableError",
    "NON_RETRYABLE_ERRORS",
    "NonRetryable",
    "on_critical",
    "pause_scheduled_job",
    "pause_scheduled_job_sync",
    "policies_of",
    "ProcessingError",
    "PublishTimeoutError",
    "RateLimitError",
    "remove_critical_hook",
    "ResultTooLargeError",
    "purge_queue",
    "purge_queue_sync",
    "Queue",
    "resume_scheduled_job",
    "resume_scheduled_job_sync",
    "retry",
    "Retryable",
    "RETRYABLE_ERRORS",
    "RetryPolicy",
    "RetryState",
    "saga",
    "Saga",
    "SagaPolicy",
    "schedule",
    "schedule_sync",
    "ScheduledJob",
    "ScheduleInfo",
    "SecurityError",
    "set_testing",
    "setup_logging",
    "StorageSettings",
    "StreamFullError",
    "SyncClient",
    "SyncJob",
    "SystemFailureError",
    "TemporaryResourceError",
    "UnroutableJob",
    "Worker",
    "WorkerConnectionLost",
]
