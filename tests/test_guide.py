"""NAQ's error-handling guide runs against this library, changing only its import.

tests/data/naq-error-handling-README.md is a verbatim copy of NAQ's guide to error
handling (legout/naq, examples/03-production/03-error-handling/README.md), the file
this project was built from (shared/seed/naq-error-handling-README.md beside the
repository). It is copied because CI runs from a clean clone of this repository only.

Every ```python block of it that uses a name this library provides (or a name of NAQ's
it does not provide yet) runs here as a new user would run it: `from naq import` made
`from naq_resilience import`, the block's code the body of a plain `def` (the guide's
code is synchronous), the library's names as the user would import them, and the names
the guide leaves to its reader (`process_data`, `logger`, `send_alert`, the jobs it
enqueues...) supplied as simple real functions, never in place of a library name. A
driver per block then uses what the block defined, and where a block enqueues jobs, a
worker (importing tests/guide_jobs.py, as `[tool.naq] imports` would have it) runs them
on the test server and the outcome is checked.

Blocks that need what is not built yet are marked `xfail(strict=True)` with the reason,
so this file is the list of what is missing; once it is built, the mark must go.
"""

from __future__ import annotations

import asyncio
import builtins
import gc
import logging
import os
import subprocess
import symtable
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest

import naq_resilience
from naq_resilience import (
    AuthenticationError,
    CircuitBreakerOpenError,
    Classification,
    DataCorruptionError,
    EnrichedError,
    JobStatus,
    ProcessingError,
    RateLimitError,
    SyncClient,
    Worker,
    classify,
)
from naq_resilience.jetstream import layout

import guide_jobs
from conftest import ROOT
from processes import wait_until

GUIDE = Path(__file__).parent / "data" / "naq-error-handling-README.md"
SEED = ROOT.parent / "shared" / "seed" / GUIDE.name
LIBRARY = frozenset(naq_resilience.__all__)

NOT_BUILT: dict[str, str] = {}
"""NAQ's names the guide uses that this library does not provide yet."""

STDLIB = {"time": time, "timedelta": timedelta, "datetime": datetime}
"""What the guide uses without importing it: supplied as the reader would import it."""


@dataclass(frozen=True)
class Block:
    index: int
    heading: str
    code: str

    @property
    def source(self) -> str:
        """The block as the body of a plain function that returns what it defined."""
        code = self.code.replace("from naq import", "from naq_resilience import")
        return f"def guide_block():\n{textwrap.indent(code, '    ')}\n    return locals()\n"

    @property
    def free_names(self) -> frozenset[str]:
        """The names the block uses without defining or importing them."""
        names: set[str] = set()

        def walk(table: symtable.SymbolTable) -> None:
            for symbol in table.get_symbols():
                if symbol.is_referenced() and symbol.is_global() and table.get_type() != "module":
                    names.add(symbol.get_name())
            for child in table.get_children():
                walk(child)

        walk(symtable.symtable(self.source, GUIDE.name, "exec"))
        return frozenset(names - set(dir(builtins)))

    @property
    def uses_the_library(self) -> bool:
        imports = "from naq_resilience import" in self.source
        return imports or bool(self.free_names & (LIBRARY | NOT_BUILT.keys()))


def read_blocks() -> list[Block]:
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    heading = ""
    i = 0
    while i < len(lines):
        if lines[i].startswith("### "):
            heading = lines[i][4:].strip()
        elif lines[i].strip() == "```python":
            end = lines.index("```", i + 1)
            blocks.append(Block(len(blocks), heading, "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return blocks


BLOCKS = {block.heading: block for block in read_blocks()}


# --------------------------------------------------------------------------- the reader's code


class ExternalServiceError(Exception):
    pass


class PrimaryServiceError(Exception):
    pass


class SecondaryServiceError(Exception):
    pass


@dataclass
class Reader:
    """What the guide leaves to its reader, as simple real functions, and what they saw."""

    alerts: list[tuple[str, str]] = field(default_factory=list)
    reviews: list[Any] = field(default_factory=list)
    handled: list[tuple[str, Any]] = field(default_factory=list)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("naq_guide"))

    def helpers(self) -> dict[str, Any]:
        def process_data(data: dict[str, Any]) -> dict[str, Any]:
            payload = data["payload"]
            if payload == "corrupt":
                raise DataCorruptionError(f"checksum mismatch in {data['id']}")
            if payload == "down":
                raise ExternalServiceError("the enrichment service is down")
            if payload == "boom":
                raise RuntimeError("boom")
            return {"id": data["id"], "result": f"processed {payload}"}

        def primary_processor(data: dict[str, Any]) -> str:
            if data.get("primary") == "down":
                raise PrimaryServiceError("primary down")
            if data.get("primary") == "crash":
                raise RuntimeError("primary crashed")
            return "primary"

        def secondary_processor(data: dict[str, Any]) -> str:
            if data.get("secondary") == "down":
                raise SecondaryServiceError("secondary down")
            return "secondary"

        def process_job_data(data: dict[str, Any]) -> dict[str, Any]:
            if data.get("fail"):
                raise KeyError("customer")
            return data

        def send_alert(level: str, message: str, details: dict[str, Any]) -> None:
            self.alerts.append((level, message))

        def handler(name: str) -> Callable[..., None]:
            return lambda job, **options: self.handled.append((name, job))

        helpers = {
            "logger": self.logger,
            "process_data": process_data,
            "validate_result": lambda result: "result" in result,
            "send_critical_alert": lambda message: self.alerts.append(("CRITICAL", message)),
            "ExternalServiceError": ExternalServiceError,
            "PrimaryServiceError": PrimaryServiceError,
            "SecondaryServiceError": SecondaryServiceError,
            "primary_processor": primary_processor,
            "secondary_processor": secondary_processor,
            "local_fallback_processor": lambda data: "local",
            "store_for_manual_review": self.reviews.append,
            "process_job_data": process_job_data,
            "send_alert": send_alert,
            "ERROR_RATE_THRESHOLD": 0.1,
            "SIGNIFICANT_ERROR_COUNT": 0,
            "retry_job_with_modifications": handler("retry"),
            "send_for_manual_review": handler("review"),
            "reschedule_after_delay": handler("reschedule"),
            "archive_failed_job": handler("archive"),
            # The jobs the guide enqueues: module-level functions a worker can import.
            "flaky_api_call": guide_jobs.flaky_api_call,
            "unreliable_function": guide_jobs.unreliable_function,
            "error_prone_job": guide_jobs.error_prone_job,
        }
        assert not helpers.keys() & LIBRARY, "a helper would replace a library name"
        return helpers

    def run(self, block: Block) -> dict[str, Any]:
        """Run the block's function; what it defined and assigned, by name."""
        helpers = self.helpers()
        namespace: dict[str, Any] = {"__name__": "naq_guide"}
        for name in block.free_names:
            if name in LIBRARY:
                namespace[name] = getattr(naq_resilience, name)
            elif name in helpers:
                namespace[name] = helpers[name]
            elif name in STDLIB:
                namespace[name] = STDLIB[name]
        where = f"{GUIDE.name}, block {block.index} ({block.heading})"
        exec(compile(block.source, where, "exec"), namespace)
        defined: dict[str, Any] = namespace["guide_block"]()
        return defined


@contextmanager
def worker_running(url: str) -> Iterator[Worker]:
    """The guide's `naq worker default error_queue dlq_queue`, on a thread of its own."""
    worker = Worker(["default", "error_queue", "dlq_queue"], nats_url=url, imports=["guide_jobs"])
    failed: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(worker.run())
        except BaseException as error:
            failed.append(error)

    thread = threading.Thread(target=main, name="guide-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        wait_until(lambda: worker._loop is not None or not thread.is_alive(), 30, "worker start")
        worker.stop()
        thread.join(60)
    assert not failed, failed


def guarded(func: Callable[[], Any]) -> Any:
    """Call a block's function that may fail on what is not built yet, turning its error
    into a plain one once everything it held is gone: a coroutine the guide's sync code
    never awaited must be collected here, where its warning is expected."""
    failure = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return func()
        except Exception as error:
            failure = f"{type(error).__name__}: {error}"
        finally:
            gc.collect()
    raise AssertionError(f"the guide's code failed: {failure}")


def seed_outcomes(url: str) -> dict[str, str]:
    """One job that completes and one that ends as a dead letter, for history to report."""
    from naq_resilience import enqueue_sync

    with worker_running(url):
        done = enqueue_sync(guide_jobs.succeeds, 1, result_ttl=60)
        dead = enqueue_sync(guide_jobs.fails, 2, dead_letter_queue="failed_jobs")
        wait_until(lambda: done.status() is JobStatus.COMPLETED, 60, "a completed job")
        wait_until(lambda: dead.status() is JobStatus.FAILED, 60, "a dead letter")
    return {"completed": done.job_id, "dead": dead.job_id}


# --------------------------------------------------------------------------- one driver per block


def exception_classification(reader: Reader, block: Block, url: str | None) -> None:
    names = reader.run(block)
    for group, expected in [
        ("RETRYABLE_ERRORS", Classification.RETRYABLE),
        ("NON_RETRYABLE_ERRORS", Classification.NON_RETRYABLE),
        ("CRITICAL_ERRORS", Classification.CRITICAL),
    ]:
        for cls in names[group]:
            assert classify(cls("x")) is expected, (group, cls)  # the library agrees


def defensive_programming(reader: Reader, block: Block, url: str | None) -> None:
    job = reader.run(block)["robust_job_function"]
    assert job({"id": 1, "type": "t", "payload": "ok"}) == {"id": 1, "result": "processed ok"}
    with pytest.raises(ValueError, match=r"Missing required fields: \['type', 'payload'\]"):
        job({"id": 1})
    with pytest.raises(DataCorruptionError):
        job({"id": 2, "type": "t", "payload": "corrupt"})
    assert reader.alerts == [("CRITICAL", "Data corruption in job 2")]
    with pytest.raises(ExternalServiceError):
        job({"id": 3, "type": "t", "payload": "down"})
    with pytest.raises(ProcessingError, match="Unexpected error: boom") as caught:
        job({"id": 4, "type": "t", "payload": "boom"})
    assert isinstance(caught.value.__cause__, RuntimeError)


def retry_with_backoff(reader: Reader, block: Block, url: str | None) -> None:
    assert url is not None
    guide_jobs.calls.clear()
    with worker_running(url):
        job = reader.run(block)["job"]
        wait_until(lambda: job.status() is JobStatus.COMPLETED, 60, "the job to complete")
    data = {"endpoint": "/api/users"}
    # It failed once with ConnectionError (retry_on), and the retry ran it.
    assert guide_jobs.calls == [("flaky_api_call", data), ("flaky_api_call", data)]


def circuit_breaker_pattern(reader: Reader, block: Block, url: str | None) -> None:
    breaker = reader.run(block)["CircuitBreaker"](failure_threshold=2, recovery_timeout=60)

    def down() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(down)
    assert breaker.state == "OPEN"
    with pytest.raises(CircuitBreakerOpenError) as caught:
        breaker.call(down)
    assert str(caught.value) == "Circuit breaker is open"
    assert caught.value.retry_after is None  # unknown: @retry and the worker handle None
    assert classify(caught.value) is Classification.RETRYABLE
    breaker.last_failure_time -= 61
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state == "CLOSED"


def fallback_mechanisms(reader: Reader, block: Block, url: str | None) -> None:
    process = reader.run(block)["process_with_fallback"]
    assert process({}) == "primary"
    assert process({"primary": "down"}) == "secondary"
    assert process({"primary": "down", "secondary": "down"}) == "local"
    with pytest.raises(ProcessingError, match="All fallback methods exhausted"):
        process({"primary": "crash"})
    assert reader.reviews == [{"primary": "crash"}]


def dead_letter_configuration(reader: Reader, block: Block, url: str | None) -> None:
    assert url is not None
    guide_jobs.calls.clear()
    with worker_running(url):
        job = reader.run(block)["job"]
        wait_until(lambda: job.status() is JobStatus.FAILED, 60, "the job's dead letter")
    with SyncClient(url) as client:
        [letter] = client.get_dead_letter_jobs("failed_jobs")
    assert letter.job is not None
    assert letter.job.dead_letter_ttl == timedelta(days=7).total_seconds()
    assert letter.reason == "out of attempts (4 of 4): builtins:ConnectionError"
    assert [f.attempt for f in letter.failures] == [1, 2, 3, 4]
    assert len(guide_jobs.calls) == 4

    async def ttl_header() -> str | None:
        nc = await nats.connect(url)
        try:
            subject = layout.dead_subject("failed_jobs", job.job_id)
            stored = await nc.jetstream().get_last_msg(layout.DEAD_STREAM, subject)
        finally:
            await nc.close()
        return (stored.headers or {}).get("Nats-TTL")

    assert asyncio.run(ttl_header()) == "604800"  # kept for 7 days, by the server


def dead_letter_processing(reader: Reader, block: Block, url: str | None) -> None:
    assert url is not None
    seeded = seed_outcomes(url)
    guarded(reader.run(block)["process_dead_letter_queue"])
    # guide_jobs.fails raised ValueError: a data issue, sent for review by analyze_failure.
    assert [(name, job.id) for name, job in reader.handled] == [("review", seeded["dead"])]


def error_rate_monitoring(reader: Reader, block: Block, url: str | None) -> None:
    assert url is not None
    seed_outcomes(url)
    guarded(reader.run(block)["monitor_error_rates"])
    assert reader.alerts == [("WARNING", "High error rate: 50.00% (1/2)")]


def error_pattern_analysis(reader: Reader, block: Block, url: str | None) -> None:
    assert url is not None
    seed_outcomes(url)
    guarded(reader.run(block)["analyze_error_patterns"])
    [(level, message)] = reader.alerts
    assert level == "WARNING"
    assert message.startswith("Significant error pattern detected: ")
    assert "ValueError" in message


def error_context_preservation(reader: Reader, block: Block, url: str | None) -> None:
    job = reader.run(block)["job_with_error_context"]
    assert job("job-1", {"a": 1}) == {"a": 1}
    with pytest.raises(EnrichedError) as caught:
        job("job-2", {"fail": True})
    assert caught.value.context["job_id"] == "job-2"
    assert caught.value.context["input_data_keys"] == ["fail"]
    assert isinstance(caught.value.__cause__, KeyError)
    assert "job_id='job-2'" in str(caught.value)


def error_simulation(reader: Reader, block: Block, url: str | None) -> None:
    assert url is not None
    guide_jobs.calls.clear()
    scenarios = {
        "network_timeout": (TimeoutError, "Network timeout"),
        "invalid_data": (ValueError, "Invalid input data"),
        "auth_failure": (AuthenticationError, "Authentication failed"),
        "rate_limit": (RateLimitError, "Rate limit exceeded"),
        "system_overload": (SystemError, "System overloaded"),
    }
    with worker_running(url):
        reader.run(block)["simulate_error_scenarios"]()
        wait_until(
            lambda: {s for _, (s, _) in guide_jobs.calls} == scenarios.keys(), 60, "every run"
        )
    received = {scenario: error for _, (scenario, error) in guide_jobs.calls}
    for scenario, (cls, message) in scenarios.items():
        error = received[scenario]
        assert type(error) is cls, scenario  # rebuilt by the worker, as itself
        assert error.args == (message,)


def error_budget_management(reader: Reader, block: Block, url: str | None) -> None:
    assert url is not None
    seed_outcomes(url)
    budget = reader.run(block)["ErrorBudget"](target_success_rate=0.999)
    assert guarded(budget.check_budget) is False


Driver = Callable[[Reader, Block, "str | None"], None]


@dataclass(frozen=True)
class Run:
    driver: Driver
    server: bool = False
    missing: tuple[str, ...] = ()
    """What the block needs that is not built yet: it is expected to fail (strict)."""


RUNS: dict[str, Run] = {
    "Exception Classification": Run(exception_classification),
    "Defensive Programming": Run(defensive_programming),
    "Retry with Backoff": Run(retry_with_backoff, server=True),
    "Circuit Breaker Pattern": Run(circuit_breaker_pattern),
    "Fallback Mechanisms": Run(fallback_mechanisms),
    "Dead Letter Configuration": Run(dead_letter_configuration, server=True),
    "Dead Letter Processing": Run(dead_letter_processing, server=True),
    "Error Rate Monitoring": Run(error_rate_monitoring, server=True),
    "Error Pattern Analysis": Run(error_pattern_analysis, server=True),
    "Error Context Preservation": Run(error_context_preservation),
    "Error Simulation": Run(error_simulation, server=True),
    "Error Budget Management": Run(error_budget_management, server=True),
}

NOT_OURS = {
    "Structured Logging",
    "Graceful Degradation",
    "Compensating Actions",
    "Chaos Engineering",  # defines its own ChaosMonkey; uses nothing of ours
    "Incident Response",
}
"""Blocks that use no name of this library (nor of NAQ's): the reader's code alone."""


def _cases() -> list[Any]:
    cases = []
    for heading, planned in RUNS.items():
        marks = []
        if planned.missing:
            marks.append(pytest.mark.xfail(strict=True, reason="; ".join(planned.missing)))
        cases.append(pytest.param(heading, marks=marks, id=heading.lower().replace(" ", "-")))
    return cases


@pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")
@pytest.mark.parametrize("heading", _cases())
def test_the_guides_block_runs(
    heading: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned = RUNS[heading]
    url = None
    if planned.server:
        url = request.getfixturevalue("clean_jetstream")
        monkeypatch.setenv("NAQ_NATS_URL", url)
    monkeypatch.setenv("NAQ_JOB_SERIALIZER", "json")  # the guide's "secure configuration"
    planned.driver(Reader(), BLOCKS[heading], url)


def test_every_block_that_uses_the_library_is_run() -> None:
    ours = {heading for heading, block in BLOCKS.items() if block.uses_the_library}
    assert ours == RUNS.keys()
    assert set(BLOCKS) - ours == NOT_OURS


def test_the_blocks_are_read_whole() -> None:
    assert len(BLOCKS) == 17
    assert BLOCKS["Retry with Backoff"].source.startswith(
        "def guide_block():\n    from naq_resilience import enqueue_sync\n"
    )


@pytest.mark.skipif(not SEED.exists(), reason="the seed is beside the repository, not in it")
def test_the_copy_is_the_seed() -> None:
    assert GUIDE.read_bytes() == SEED.read_bytes()


# --------------------------------------------------------------------------- the guide's command


@pytest.mark.usefixtures("clean_jetstream")
def test_the_guides_worker_command_runs_a_projects_jobs(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`naq worker default error_queue dlq_queue --log-level DEBUG`, no --import: the
    project names its job modules once, in pyproject.toml."""
    project = tmp_path / "myapp"
    (project / ".git").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "myapp"\n\n[tool.naq]\nimports = ["myapp_jobs"]\n'
    )
    (project / "myapp_jobs.py").write_text(
        "def send_report(name: str) -> str:\n    return f'report {name} sent'\n"
    )
    (project / "scripts").mkdir()
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if k != "NAQ_IMPORTS"}
    env.update(NAQ_NATS_URL=nats_url, NAQ_JOB_SERIALIZER="json", PYTHONPATH=str(ROOT))
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "naq_resilience.cli", "worker", "default", "error_queue",
             "dlq_queue", "--log-level", "DEBUG"],
            cwd=project / "scripts", env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until(lambda: "started" in log.read_text() or worker.poll() is not None, 60)
            assert worker.poll() is None, log.read_text()
            monkeypatch.syspath_prepend(str(project))
            import myapp_jobs  # type: ignore[import-not-found]

            with SyncClient(nats_url) as client:
                job = client.enqueue(myapp_jobs.send_report, "weekly", result_ttl=60)
                assert job.result(timeout=60) == "report weekly sent"
        finally:
            worker.terminate()
            worker.wait(60)
    output = log.read_text()
    assert f"modules=myapp_jobs (from {project}/pyproject.toml [tool.naq])" in output
    assert "no job modules" not in output
