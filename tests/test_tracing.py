"""A job's run joins the trace of the request that enqueued it: the W3C trace context
travels in the job message's headers, and the worker runs the job in a span parented
to it. Spans are read back with the OpenTelemetry SDK's in-memory exporter, from a real
worker on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")  # the dev extra has it: CI runs these

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

from naq_resilience import Client, FailureRecord, JobRecord, JobStatus, SyncClient, Worker
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.tracing import TRACEPARENT, TRACESTATE, job_tracing

import worker_jobs

pytestmark = pytest.mark.usefixtures("clean_jetstream")


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A provider of the test's own (the global one is never set: it can be set once)."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


_job_tracer: list[trace.Tracer] = []


async def opens_its_own_span(n: int) -> int:
    """An async job whose code traces too: its span is a child of the job's."""
    with _job_tracer[0].start_as_current_span("charge the card"):
        return n * 2


def opens_its_own_span_on_a_thread(n: int) -> int:
    """The same from a sync job, which the worker runs on a thread of its pool."""
    with _job_tracer[0].start_as_current_span("write the file"):
        return n * 3


class Settled:
    def __init__(self) -> None:
        self.final: set[str] = set()

    def job_changed(self, record: JobRecord) -> None:
        if record.status in (JobStatus.COMPLETED, JobStatus.FAILED):
            self.final.add(record.job_id)

    def attempt_failed(self, failure: FailureRecord) -> None:
        pass


def run_worker(
    url: str,
    provider: TracerProvider,
    enqueue: Callable[[Client], Any],
    functions: tuple[Callable[..., Any], ...] = (),
) -> list[str]:
    """Run a traced worker until every job `enqueue` returned has ended."""
    settled = Settled()

    async def main() -> list[str]:
        worker = Worker(
            "default", nats_url=url, imports=["worker_jobs"], functions=functions,
            observers=[settled], tracing=provider,
        )  # fmt: skip
        task = asyncio.create_task(worker.run())
        try:
            async with Client(url) as client:
                ids: list[str] = await enqueue(client)
            for _ in range(1500):
                if settled.final >= set(ids):
                    break
                await asyncio.sleep(0.02)
            assert settled.final >= set(ids), "the jobs did not end"
            return ids
        finally:
            worker.stop()
            await task

    return asyncio.run(main())


def job_spans(exporter: InMemorySpanExporter, job_id: str) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans()
        if s.attributes is not None and s.attributes.get("naq.job.id") == job_id
    ]  # fmt: skip


def test_a_job_run_joins_the_trace_that_enqueued_it(
    nats_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("the web app")
    _job_tracer[:] = [tracer]
    requests: dict[str, trace.SpanContext] = {}

    async def enqueue(client: Client) -> list[str]:
        with tracer.start_as_current_span("POST /orders") as request:
            requests["async"] = request.get_span_context()
            first = await client.enqueue(opens_its_own_span, 21)
        with tracer.start_as_current_span("POST /files") as request:
            requests["sync"] = request.get_span_context()
            second = await client.enqueue(opens_its_own_span_on_a_thread, 5)
        return [first.job_id, second.job_id]

    first, second = run_worker(
        nats_url, provider, enqueue, (opens_its_own_span, opens_its_own_span_on_a_thread)
    )
    for job_id, request, function, inner in (
        (first, requests["async"], "test_tracing:opens_its_own_span", "charge the card"),
        (second, requests["sync"], "test_tracing:opens_its_own_span_on_a_thread",
         "write the file"),
    ):  # fmt: skip
        (span,) = job_spans(exporter, job_id)
        assert span.name == f"naq.job {function}"
        assert span.kind is SpanKind.CONSUMER
        assert span.context is not None
        assert span.parent is not None
        assert span.context.trace_id == request.trace_id
        assert span.parent.span_id == request.span_id
        assert span.parent.is_remote  # it came over the wire, in the message's headers
        assert dict(span.attributes or {}) == {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": layout.job_subject("default"),
            "messaging.message.id": job_id,
            "naq.job.id": job_id,
            "naq.job.queue": "default",
            "naq.job.function": function,
            "naq.job.attempt": 1,
            "naq.job.outcome": "completed",
        }
        assert span.status.status_code is StatusCode.UNSET
        (child,) = [s for s in exporter.get_finished_spans() if s.name == inner]
        assert child.parent is not None
        assert child.parent.span_id == span.context.span_id


def test_failed_attempts_record_their_exception_and_outcome(
    nats_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("the web app")
    request: list[trace.SpanContext] = []

    async def enqueue(client: Client) -> list[str]:
        with tracer.start_as_current_span("POST /import") as span:
            request.append(span.get_span_context())
            flaky = await client.enqueue(worker_jobs.fails_twice, "tracing")
            bad = await client.enqueue(worker_jobs.raises, "value")
        return [flaky.job_id, bad.job_id]

    flaky, bad = run_worker(nats_url, provider, enqueue)
    attempts = sorted(job_spans(exporter, flaky), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {}).get("naq.job.outcome") for s in attempts] == [
        "retried", "retried", "completed",
    ]  # fmt: skip
    assert [(s.attributes or {}).get("naq.job.attempt") for s in attempts] == [1, 2, 3]
    for span in attempts:  # every attempt is a child of the request, redeliveries too
        assert span.parent is not None
        assert span.parent.span_id == request[0].span_id
    for span in attempts[:2]:
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "builtins:ConnectionError"
        (event,) = span.events
        assert event.name == "exception"
        assert (event.attributes or {})["exception.type"] == "ConnectionError"
    (dead,) = job_spans(exporter, bad)
    attributes = dict(dead.attributes or {})
    assert attributes["naq.job.outcome"] == "dead_lettered"
    assert attributes["error.type"] == "builtins:ValueError"
    assert attributes["naq.job.classification"] == "non_retryable"
    assert dead.status.status_code is StatusCode.ERROR
    assert dead.status.description == "builtins:ValueError: bad input"
    (event,) = dead.events
    event_attributes = dict(event.attributes or {})
    assert event_attributes["exception.type"] == "ValueError"
    assert event_attributes["exception.message"] == "bad input"
    assert str(event_attributes["exception.stacktrace"]).startswith("Traceback")
    assert "ValueError: bad input" in str(event_attributes["exception.stacktrace"])


def test_a_message_from_another_language_joins_its_trace(
    nats_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """A hand-written job published with bare nats-py, its trace context spelled as Go's
    `propagation.HeaderCarrier` (an `http.Header`) writes it: `Traceparent`."""
    provider, exporter = spans
    trace_id, span_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7

    async def enqueue(client: Client) -> list[str]:
        js, _ = await client._ready()
        body = b'{"version":1,"id":"from-go-1","function":"worker_jobs:add","args":[1,2]}'
        await js.publish(
            layout.job_subject("default"), body,
            headers={
                "Nats-Msg-Id": "from-go-1",
                "Traceparent": f"00-{trace_id:032x}-{span_id:016x}-01",
                "Tracestate": "rojo=00f067aa0ba902b7",
            },
        )  # fmt: skip
        return ["from-go-1"]

    run_worker(nats_url, provider, enqueue)
    (span,) = job_spans(exporter, "from-go-1")
    assert span.context is not None
    assert span.context.trace_id == trace_id
    assert span.parent is not None
    assert span.parent.span_id == span_id
    assert span.context.trace_state == TraceState([("rojo", "00f067aa0ba902b7")])


def stored_headers(url: str, send: Callable[[Client], Any], queue: str) -> list[dict[str, str]]:
    """The headers of the job messages `send` stores on a queue no worker takes."""

    async def main() -> list[dict[str, str]]:
        async with Client(url) as client:
            await send(client)
            js, _ = await client._ready()
            info = await js.stream_info(layout.JOB_STREAM)
            return [
                dict((await js.get_msg(layout.JOB_STREAM, seq)).headers or {})
                for seq in range(info.state.first_seq, info.state.last_seq + 1)
            ]

    return asyncio.run(main())


def test_the_trace_context_travels_in_the_message_headers(
    nats_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, _ = spans
    tracer = provider.get_tracer("the web app")
    contexts: list[trace.SpanContext] = []

    async def send(client: Client) -> None:
        await client.enqueue(worker_jobs.add, 0, 0, queue_name="traced")  # no span: no header
        with tracer.start_as_current_span("batch") as span:
            contexts.append(span.get_span_context())
            await client.enqueue_many(worker_jobs.add, [(1, 1), (2, 2)], queue_name="traced")
        vendor = SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331,
            is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=TraceState([("congo", "t61rcWkgMzE")]),
        )  # fmt: skip
        with trace.use_span(NonRecordingSpan(vendor)):
            await client.enqueue(worker_jobs.add, 3, 3, queue_name="traced")

    plain, first, second, vendor = stored_headers(nats_url, send, "traced")
    assert TRACEPARENT not in plain
    assert TRACESTATE not in plain
    batch = contexts[0]
    expected = f"00-{batch.trace_id:032x}-{batch.span_id:016x}-{batch.trace_flags:02x}"
    assert first[TRACEPARENT] == second[TRACEPARENT] == expected
    assert TRACESTATE not in first
    assert vendor[TRACEPARENT] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert vendor[TRACESTATE] == "congo=t61rcWkgMzE"
    assert all("Nats-Msg-Id" in h for h in (plain, first, second, vendor))


def test_the_sync_api_carries_the_callers_trace_context(
    nats_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """`SyncClient` runs the enqueue on a loop thread of its own: the caller's span
    goes with it (a sync web view enqueueing a job)."""
    provider, _ = spans
    tracer = provider.get_tracer("the web app")
    with SyncClient(nats_url) as client, tracer.start_as_current_span("GET /report") as span:
        client.enqueue(worker_jobs.add, 1, 1, queue_name="synced")
        context = span.get_span_context()

    async def headers() -> dict[str, str]:
        async with Client(nats_url) as reader:
            js, _ = await reader._ready()
            stored = await js.get_last_msg(layout.JOB_STREAM, layout.job_subject("synced"))
            return dict(stored.headers or {})

    expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert asyncio.run(headers())[TRACEPARENT] == expected


def test_the_size_check_counts_the_trace_headers(
    nats_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """A job that fits without its trace headers but not with them is refused in a span,
    before it is sent (the server would close the connection), and stored outside one."""
    provider, _ = spans
    tracer = provider.get_tracer("the web app")

    async def main() -> None:
        async with Client(nats_url) as client:
            await client._ready()
            assert client._publisher is not None
            limit = client._publisher.max_payload
            with tracer.start_as_current_span("probe"):
                probe = await client.enqueue(worker_jobs.echo, "", queue_name="sized")
            # The probe's message, headers and all: an enqueued_at of any length fits in
            # the 40 bytes of room below, and the trace headers take 70 more.
            js, _ = await client._ready()
            stored = await js.get_last_msg(layout.JOB_STREAM, layout.job_subject("sized"))
            assert stored.headers is not None
            assert TRACEPARENT in stored.headers
            trace_bytes = len(TRACEPARENT) + 4 + len(stored.headers[TRACEPARENT])
            assert trace_bytes == 70
            base = len(stored.data or b"") + 12 + len("Nats-Msg-Id") + 4 + len(probe.job_id)
            fill = "x" * (limit - base - 40)
            with tracer.start_as_current_span("too big"), pytest.raises(
                ValueError, match="with its headers, over the NATS server's max_payload"
            ):
                await client.enqueue(worker_jobs.echo, fill, queue_name="sized")
            with tracer.start_as_current_span("too big"), pytest.raises(
                ValueError, match="with its headers, over the NATS server's max_payload"
            ):
                await client.enqueue_many(worker_jobs.echo, [(fill,)], queue_name="sized")
            stored_outside = await client.enqueue(worker_jobs.echo, fill, queue_name="sized")
            assert stored_outside.job_id

    asyncio.run(main())


def test_a_one_shot_schedule_carries_the_trace_to_its_run(
    nats_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """The server copies the header into the job it fires: the run joins the trace."""
    provider, exporter = spans
    tracer = provider.get_tracer("the web app")
    request: list[trace.SpanContext] = []

    async def enqueue(client: Client) -> list[str]:
        with tracer.start_as_current_span("POST /reminders") as span:
            request.append(span.get_span_context())
            job = await client.enqueue_in(timedelta(seconds=1), worker_jobs.add, 4, 5)
        return [job.job_id]

    (job_id,) = run_worker(nats_url, provider, enqueue)
    (span,) = job_spans(exporter, job_id)
    assert span.parent is not None
    assert span.parent.span_id == request[0].span_id
    assert (span.attributes or {})["naq.job.outcome"] == "completed"


def test_tracing_is_off_unless_a_provider_is_configured() -> None:
    """The API alone, with no provider set, would make no-op spans that still cost
    about 5 us a job: the worker does not trace then, unless told to."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert job_tracing(None) is None
    assert job_tracing(False) is None
    assert job_tracing(True) is not None
    assert job_tracing(TracerProvider()) is not None
