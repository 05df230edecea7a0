"""Every duration the API takes is seconds or a `timedelta`, converted where it is given."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from datetime import timedelta
from typing import Any

import pytest

from naq_resilience import (
    ChaosMonkey,
    CircuitBreakerOpenError,
    ConnectionSettings,
    RateLimitError,
    Worker,
    chaos,
    circuit_breaker,
    policies_of,
    retry,
)
from naq_resilience.jetstream.client import Client, _options
from naq_resilience.jetstream.streams import StorageSettings
from naq_resilience.policies.breaker import BreakerPolicy
from naq_resilience.policies.chaos import ChaosPolicy
from naq_resilience.policies.durations import seconds
from naq_resilience.policies.retry import RetryPolicy

import worker_jobs

MINUTE = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0.0), (2, 2.0), (1.5, 1.5), (timedelta(days=7), 604800.0), (timedelta(0), 0.0),
     (timedelta(milliseconds=250), 0.25)],
)  # fmt: skip
def test_seconds_takes_numbers_and_timedeltas(value: Any, expected: float) -> None:
    result = seconds(value, "x")
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("60", TypeError, "x must be a number of seconds or a timedelta, got '60'; write e.g."),
        (True, TypeError, "x must be a number of seconds or a timedelta, got True"),
        (None, TypeError, "x must be a number of seconds or a timedelta, got None"),
        (-1, ValueError, r"x must be >= 0 seconds, got -1"),
        (timedelta(seconds=-1), ValueError, r"x must be >= 0 seconds, got datetime.timedelta"),
        (math.inf, ValueError, r"x must be a finite number of seconds, got inf; for a long pause"),
        (math.nan, ValueError, r"x must be a finite number of seconds, got nan"),
        (10**400, ValueError, r"x must be a finite number of seconds"),
    ],
)
def test_anything_else_is_one_clear_error(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{message}"):
        seconds(value, "x")


def test_positive_refuses_zero() -> None:
    with pytest.raises(ValueError, match=r"^x must be a positive number of seconds, got datetime"):
        seconds(timedelta(0), "x", positive=True)


# --------------------------------------------------------------------------- the decorators


def test_retry_takes_timedeltas_for_every_duration() -> None:
    @retry(retry_delay=timedelta(seconds=2), max_delay=MINUTE, deadline=timedelta(hours=1))
    def f() -> None: ...

    @retry(retry_delay=[timedelta(seconds=1), 5, timedelta(seconds=30)])
    def g() -> None: ...

    [policy] = policies_of(f)
    assert isinstance(policy, RetryPolicy)
    assert (policy.schedule.base, policy.schedule.max_delay, policy.deadline) == (2.0, 60.0, 3600.0)
    [explicit] = policies_of(g)
    assert isinstance(explicit, RetryPolicy)
    assert explicit.schedule.delays == (1.0, 5.0, 30.0)


def test_circuit_breaker_takes_a_timedelta_recovery() -> None:
    @circuit_breaker(name="durations-test", recovery_timeout=MINUTE)
    def f() -> None: ...

    [policy] = policies_of(f)
    assert isinstance(policy, BreakerPolicy)
    assert policy.recovery_timeout == 60.0


def test_chaos_latency_takes_timedeltas() -> None:
    @chaos(latency=(timedelta(milliseconds=10), timedelta(milliseconds=20)))
    def f() -> None: ...

    [policy] = policies_of(f)
    assert isinstance(policy, ChaosPolicy)
    assert policy.latency == (0.01, 0.02)
    slept: list[float] = []
    monkey = ChaosMonkey(failure_rate=1.0, sleep=slept.append)
    with chaos.enabled(seed=1):
        assert 0 <= monkey.maybe_delay(timedelta(milliseconds=5)) <= 0.005


def test_errors_take_a_timedelta_retry_after() -> None:
    assert RateLimitError("slow", retry_after=MINUTE).retry_after == 60.0
    assert CircuitBreakerOpenError("open", timedelta(seconds=3)).retry_after == 3.0


# --------------------------------------------------------------------------- the job layer


def test_enqueue_options_take_timedeltas_and_travel_as_seconds() -> None:
    options = _options(
        "default", 3, [timedelta(seconds=1), 5], None, None, None, "failed_jobs",
        timedelta(days=7), timedelta(seconds=30), timedelta(hours=1),
    )  # fmt: skip
    assert (options.retry_delay, options.dead_letter_ttl, options.timeout, options.result_ttl) == (
        [1.0, 5.0],
        604800.0,
        30.0,
        3600.0,
    )
    assert _options("default", None, MINUTE, None, *[None] * 6).retry_delay == 60.0
    strategy = _options("default", None, None, [MINUTE], *[None] * 6).retry_strategy
    assert strategy == [60.0]


def test_a_bad_enqueue_duration_is_refused_naming_it() -> None:
    async def main() -> None:
        await Client("nats://127.0.0.1:9").enqueue(
            worker_jobs.sync_multiply, 1, 2, dead_letter_ttl=timedelta(0)
        )

    with pytest.raises(ValueError, match=r"^dead_letter_ttl must be a positive number of seconds"):
        asyncio.run(main())


def test_worker_durations_take_timedeltas() -> None:
    worker = Worker(
        "default",
        nats_url="nats://127.0.0.1:9",
        imports=["worker_jobs"],
        ack_wait=MINUTE,
        shutdown_grace=timedelta(seconds=5),
        fetch_timeout=timedelta(milliseconds=500),
    )
    assert (worker.ack_wait, worker.shutdown_grace, worker.fetch_timeout) == (60.0, 5.0, 0.5)
    with pytest.raises(ValueError, match=r"^ack_wait must be a positive number of seconds"):
        Worker("default", nats_url="nats://127.0.0.1:9", imports=["worker_jobs"], ack_wait=0)


def test_worker_unroutable_after_takes_a_timedelta_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def worker(**options: Any) -> Worker:
        return Worker("default", nats_url="nats://127.0.0.1:9", imports=["worker_jobs"], **options)

    monkeypatch.delenv("NAQ_UNROUTABLE_AFTER", raising=False)
    assert worker().unroutable_after == 300.0
    assert worker(unroutable_after=timedelta(minutes=2)).unroutable_after == 120.0
    assert worker(unroutable_after=0).unroutable_after == 0.0  # dead-letters at once
    with pytest.raises(ValueError, match=r"^unroutable_after must be >= 0 seconds"):
        worker(unroutable_after=-1)
    monkeypatch.setenv("NAQ_UNROUTABLE_AFTER", "45")
    assert worker().unroutable_after == 45.0
    assert worker(unroutable_after=MINUTE).unroutable_after == 60.0  # the argument wins
    monkeypatch.setenv("NAQ_UNROUTABLE_AFTER", "5m")
    with pytest.raises(ValueError, match=r"NAQ_UNROUTABLE_AFTER='5m' is not a number of sec"):
        worker()


def test_client_publish_timeout_takes_a_timedelta() -> None:
    assert Client("nats://127.0.0.1:9", publish_timeout=MINUTE).publish_timeout == 60.0


def test_settings_take_timedeltas_and_read_back_as_seconds() -> None:
    settings = ConnectionSettings(
        "nats://127.0.0.1:9",
        connect_timeout=timedelta(seconds=3),
        jetstream_timeout=MINUTE,
        reconnect_time_wait=timedelta(0),
    )
    assert (settings.connect_timeout, settings.jetstream_timeout) == (3.0, 60.0)
    assert settings.reconnect_time_wait == 0.0
    assert dataclasses.replace(settings, connect_timeout=5).connect_timeout == 5.0
    assert settings == ConnectionSettings(
        "nats://127.0.0.1:9", connect_timeout=3, jetstream_timeout=60, reconnect_time_wait=0
    )
    assert "connect_timeout=3.0" in repr(settings)
    assert "reconnect_time_wait" in repr(settings)  # 0.0 is not the default of 2.0
    with pytest.raises(ValueError, match=r"^connect_timeout must be a positive number of seconds"):
        ConnectionSettings(connect_timeout=timedelta(0))
    storage = StorageSettings(dead_max_age=timedelta(days=1), duplicate_window=MINUTE)
    assert (storage.dead_max_age, storage.duplicate_window) == (86400.0, 60.0)
    with pytest.raises(TypeError, match=r"^failures_max_age must be a number of seconds"):
        StorageSettings(failures_max_age="a week")  # type: ignore[arg-type]


@pytest.mark.usefixtures("clean_jetstream")
def test_job_result_waits_a_timedelta(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            job = await client.enqueue(worker_jobs.sync_multiply, 6, 7, result_ttl=MINUTE)
            with pytest.raises(TimeoutError, match=r"has no result after 0.1s"):
                await job.result(timeout=timedelta(milliseconds=100))

    asyncio.run(main())
