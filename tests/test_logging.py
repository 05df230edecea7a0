from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from naq_resilience import CorruptionError, error_context, setup_logging
from naq_resilience.jetstream.worker import _Budget
from naq_resilience.models import JobEnvelope
from naq_resilience.ops.logging import JsonFormatter, running_job, running_worker


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    library, root = logging.getLogger("naq_resilience"), logging.getLogger()
    saved = (library.level, library.propagate, root.level, list(root.handlers))
    yield
    for logger in (library, root):
        for handler in [h for h in logger.handlers if getattr(h, "_naq", False)]:
            logger.removeHandler(handler)
    library.setLevel(saved[0])
    library.propagate = saved[1]
    root.setLevel(saved[2])
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_the_guides_fields_extras_and_the_error() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", json=True, stream=stream)
    logging.getLogger("naq_resilience.worker").info("job done", extra={"job_id": "j1"})
    try:
        with error_context(order_id=42):
            raise CorruptionError("checksum mismatch")
    except CorruptionError:
        logging.getLogger("naq_resilience").exception("failed", extra={"context": {"batch": 7}})
    first, second = lines(stream)
    assert first["message"] == "job done"
    assert first["level"] == "INFO"
    assert first["logger"] == "naq_resilience.worker"
    assert first["timestamp"].endswith("Z")
    assert first["job_id"] == "j1"
    assert "error_type" not in first  # no error, no error fields
    assert second["level"] == "ERROR"
    assert second["error_type"] == "naq_resilience:CorruptionError"
    assert second["error_message"] == "checksum mismatch"
    assert second["context"] == {"order_id": 42, "batch": 7}
    assert "CorruptionError: checksum mismatch" in second["traceback"]


def test_calling_again_replaces_its_handler_and_bad_levels_are_refused() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=io.StringIO())
    logger = setup_logging("WARNING", stream=stream)
    ours = [h for h in logger.handlers if getattr(h, "_naq", False)]
    assert len(ours) == 1  # pytest's own capture handlers may sit beside it
    logging.getLogger("naq_resilience").info("hidden")
    logging.getLogger("naq_resilience").warning("shown")
    assert "hidden" not in stream.getvalue()
    assert "shown" in stream.getvalue()
    with pytest.raises(ValueError, match="unknown log level 'LOUD'; use DEBUG, INFO"):
        setup_logging("LOUD")


def test_the_whole_process_logs_in_one_format_with_the_running_job() -> None:
    """What `naq worker --log-level --log-json` sets up: the job's own logger, on a job
    thread as the worker runs it (in a copy of its context), carries the job."""
    stream = io.StringIO()
    setup_logging("DEBUG", json=True, stream=stream, process=True)
    env = JobEnvelope(id="job-7", function="shop.jobs:charge", queue="billing")
    job_token = running_job.set((env, 3))
    worker_token = running_worker.set("web-1:42:abc123")
    try:
        context = contextvars.copy_context()
    finally:
        running_job.reset(job_token)
        running_worker.reset(worker_token)

    def job() -> None:
        logging.getLogger("shop.jobs").debug("charging %s", 42, extra={"order": 42})

    thread = threading.Thread(target=context.run, args=(job,))
    thread.start()
    thread.join()
    logging.getLogger("elsewhere").info("outside any job")
    in_job, outside = lines(stream)
    assert in_job["message"] == "charging 42"
    assert in_job["level"] == "DEBUG"
    assert (in_job["job_id"], in_job["attempt"]) == ("job-7", 3)
    assert (in_job["function"], in_job["queue"]) == ("shop.jobs:charge", "billing")
    assert in_job["worker_id"] == "web-1:42:abc123"
    assert in_job["order"] == 42
    assert "job_id" not in outside
    assert "worker_id" not in outside


def test_text_lines_name_the_job_and_attempt() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream, process=True)
    token = running_job.set((JobEnvelope(id="job-8", function="m:f"), 2))
    try:
        logging.getLogger("m").info("working")
    finally:
        running_job.reset(token)
    assert stream.getvalue().rstrip().endswith("m: working [job job-8 attempt 2]")


def test_a_json_message_of_the_guides_structured_logger_becomes_fields() -> None:
    """NAQ's guide logs `json.dumps(entry)`; a JSON line holds its fields, not a string."""
    stream = io.StringIO()
    setup_logging("INFO", json=True, stream=stream, process=True)
    entry = {
        "timestamp": "2026-11-30T08:00:00", "level": "ERROR", "error_type": "ValueError",
        "error_message": "bad row", "context": {"row": 17},
    }  # fmt: skip
    logging.getLogger("guide").error(json.dumps(entry))
    (line,) = lines(stream)
    assert line["message"] == "bad row"
    assert line["error_type"] == "ValueError"
    assert line["context"] == {"row": 17}
    assert line["level"] == "ERROR"
    assert line["timestamp"].endswith("Z")  # ours, not the guide's naive one


def test_structlog_through_stdlib_comes_out_as_json_fields() -> None:
    structlog = pytest.importorskip("structlog")
    stream = io.StringIO()
    setup_logging("DEBUG", json=True, stream=stream, process=True)
    token = running_job.set((JobEnvelope(id="job-9", function="m:f"), 1))
    try:
        wrapped = structlog.wrap_logger(
            logging.getLogger("app.wrapped"),
            processors=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        wrapped.info("order placed", order=42, customer="ada")
        rendered = structlog.wrap_logger(
            logging.getLogger("app.rendered"),
            processors=[structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        try:
            raise ConnectionError("gateway down")
        except ConnectionError:
            rendered.error("charge failed", order=43, exc_info=True)
    finally:
        running_job.reset(token)
    first, second = lines(stream)
    assert first["message"] == "order placed"
    assert (first["order"], first["customer"]) == (42, "ada")
    assert first["level"] == "INFO"
    assert first["logger"] == "app.wrapped"
    assert (first["job_id"], first["attempt"]) == ("job-9", 1)
    assert second["message"] == "charge failed"
    assert second["order"] == 43
    assert second["level"] == "ERROR"
    assert "ConnectionError: gateway down" in second["traceback"]
    assert second["job_id"] == "job-9"


def test_values_that_are_not_json_become_their_repr() -> None:
    record = logging.makeLogRecord({"msg": "x", "levelname": "INFO", "thing": object()})
    assert json.loads(JsonFormatter().format(record))["thing"].startswith("<object object")


def test_failure_lines_come_in_a_burst_then_hold_back_counting() -> None:
    budget = _Budget(3, 60.0)  # refills one line every 20 s: not within this test
    assert [budget("f") for _ in range(5)] == [0, 0, 0, None, None]
    assert budget("g") == 0  # another function has its own budget
    assert budget.held == 2
