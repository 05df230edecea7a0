"""Trace context across the queue: a job's run joins the trace of the request that
enqueued it (OpenTelemetry, optional: `pip install 'naq-resilience[otel]'`).

Nothing here imports OpenTelemetry unless the application did. The client asks
`sys.modules` whether `opentelemetry.trace` was imported: a process that does not
trace cannot have a current span, so it pays one dict lookup per enqueue and its
messages carry no header. When a span is current, the job message carries its W3C
trace context as the `traceparent` header (and `tracestate`, when there is one),
written by OpenTelemetry's own propagator. Only W3C trace context travels: it is the
one header a Go or Node consumer reads the same way, and its size is bounded
(baggage is not carried).

The worker, when tracing is on (`Worker(tracing=...)`), runs each job in a span named
`naq.job <function>`, kind CONSUMER, parented to that header (a root span when there is
none). The span is made current for the job's code, so spans the job opens are its
children, on a job thread too (the worker copies the context there). What it learns
of the job (attempt, outcome, error type, the exception) comes from the records the
worker already builds, as a `JobObserver` that writes into the job's span: the failure
path is not formatted twice.
"""

from __future__ import annotations

import contextvars
import sys
from typing import TYPE_CHECKING, Any, Final

from naq_resilience.jetstream import layout
from naq_resilience.models import FailureRecord, JobEnvelope, JobRecord, JobStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "JobTracing",
    "job_tracing",
    "trace_headers",
]

TRACEPARENT: Final = "traceparent"
"""The W3C trace-context header a job message carries when it was enqueued in a span."""
TRACESTATE: Final = "tracestate"
"""Vendor trace state, beside `traceparent` when the enqueuing span has any."""
OTEL_EXTRA: Final = "pip install 'naq-resilience[otel]'"
TRACER_NAME: Final = "naq_resilience"

_OUTCOMES: Final = {
    JobStatus.COMPLETED: "completed",
    JobStatus.RETRYING: "retried",
    JobStatus.FAILED: "dead_lettered",
}
_propagator: Any = None


def _trace_context_propagator() -> Any:
    global _propagator
    if _propagator is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _propagator = TraceContextTextMapPropagator()
    return _propagator


def trace_headers() -> dict[str, str] | None:
    """The current span's W3C trace context as message headers; None when no span is
    current, or the process never imported OpenTelemetry (then nothing else is done)."""
    if sys.modules.get("opentelemetry.trace") is None:
        return None
    headers: dict[str, str] = {}
    _trace_context_propagator().inject(headers)
    return headers or None


def job_tracing(setting: bool | TracerProvider | None) -> JobTracing | None:
    """The worker's tracing, or None when it is off.

    `None` (the default) traces when the process has configured a tracer provider by
    the time the worker is built (`trace.set_tracer_provider`, or
    `opentelemetry-instrument`): without one every span would be a no-op that still
    costs about 5 us a job. `True` traces with the global provider whenever it is set,
    `False` never; a `TracerProvider` traces with that provider.
    """
    if setting is False:
        return None
    if setting is None:
        trace = sys.modules.get("opentelemetry.trace")
        if trace is None:
            return None  # never imported: no provider can have been configured
        provider = trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
        return JobTracing(provider.get_tracer(TRACER_NAME))
    try:
        from opentelemetry import trace as otel_trace
    except ImportError:
        raise ImportError(
            f"Worker(tracing=...) needs OpenTelemetry, which is not installed: {OTEL_EXTRA}"
        ) from None
    if setting is True:
        return JobTracing(otel_trace.get_tracer(TRACER_NAME))
    return JobTracing(setting.get_tracer(TRACER_NAME))


def _w3c_headers(headers: Mapping[str, str]) -> Mapping[str, str] | None:
    """The trace-context headers as the propagator reads them (lower case), or None.

    NATS header names are case-sensitive and W3C's are not: Go's `propagation.
    HeaderCarrier`, an `http.Header`, writes `Traceparent`, so that spelling is read too.
    """
    if TRACEPARENT in headers:
        return headers
    parent = headers.get("Traceparent")
    if parent is None:
        return None
    state = headers.get("Tracestate")
    return {TRACEPARENT: parent} if state is None else {TRACEPARENT: parent, TRACESTATE: state}


class JobTracing:
    """Each job's span, from its decoded envelope to its settlement (worker side).

    `start` makes the span current in the job's task and `end` (called by the worker
    once the message is settled, however that went) ends it. The span is found again
    through a context variable of its own, so a record written from another task (the
    "running" announcer) never lands in a job's span.
    """

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._tracer = tracer
        self._context = context
        self._trace = trace
        self._consumer = SpanKind.CONSUMER
        self._status = Status
        self._error = StatusCode.ERROR
        self._current: contextvars.ContextVar[tuple[Span, contextvars.Token[Context]] | None] = (
            contextvars.ContextVar("naq_job_span", default=None)
        )

    def start(self, env: JobEnvelope, queue: str, headers: Mapping[str, str] | None) -> None:
        """Open the job's span, parented to the message's trace context, and make it
        current for the job's code."""
        context = self._context
        carrier = _w3c_headers(headers) if headers else None
        parent = (
            _trace_context_propagator().extract(carrier)
            if carrier is not None
            else context.Context()  # a root span, not a child of whatever the task held
        )
        span = self._tracer.start_span(
            f"naq.job {env.function}",
            context=parent,
            kind=self._consumer,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": layout.job_subject(queue),
                "messaging.message.id": env.id,
                "naq.job.id": env.id,
                "naq.job.queue": queue,
                "naq.job.function": env.function,
            },
        )
        token = context.attach(self._trace.set_span_in_context(span, parent))
        self._current.set((span, token))

    def end(self) -> None:
        """End the job's span, if one was started in this task."""
        current = self._current.get()
        if current is None:
            return
        self._current.set(None)
        span, token = current
        self._context.detach(token)
        span.end()

    def outcome(self, outcome: str) -> None:
        """How the delivery ended when no record says so (deferred, handed back)."""
        current = self._current.get()
        if current is not None:
            current[0].set_attribute("naq.job.outcome", outcome)

    # JobObserver: the records the worker writes anyway describe the attempt.
    def job_changed(self, record: JobRecord) -> None:
        outcome = _OUTCOMES.get(record.status)
        current = self._current.get()
        if outcome is None or current is None:
            return
        span = current[0]
        span.set_attribute("naq.job.outcome", outcome)
        if record.attempts:
            span.set_attribute("naq.job.attempt", record.attempts)
        if record.error_type and outcome == "dead_lettered":
            span.set_attribute("error.type", record.error_type)

    def attempt_failed(self, failure: FailureRecord) -> None:
        current = self._current.get()
        if current is None:
            return
        span = current[0]
        module, _, qualname = failure.error_type.partition(":")
        python_name = qualname if module in ("builtins", "") else f"{module}.{qualname}"
        span.add_event(
            "exception",
            {
                # As `Span.record_exception` writes them, from the record the worker built.
                "exception.type": python_name,
                "exception.message": failure.message,
                "exception.stacktrace": failure.traceback,
                "exception.escaped": "False",
            },
        )
        span.set_attribute("error.type", failure.error_type)
        span.set_attribute("naq.job.attempt", failure.attempt)
        span.set_attribute("naq.job.classification", failure.classification)
        span.set_status(self._status(self._error, f"{failure.error_type}: {failure.message}"))
