from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import naq_resilience
from naq_resilience.policies.chaos import (
    ChaosMonkey,
    ChaosPolicy,
    ChaosSwitch,
    chaos,
    is_injected,
    switch_from_env,
)
from naq_resilience.policies.errors import CompensationError, RateLimitError
from naq_resilience.policies.pipeline import policies_of
from naq_resilience.policies.retry import RetryPolicy, attempts_of, retry

ROOT = Path(naq_resilience.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _switch_off() -> Iterator[None]:
    saved = chaos.current()
    chaos.disable()
    yield
    chaos.restore(saved)


def outcomes(func: Callable[[], Any], calls: int) -> list[str]:
    """'ok' or the exception's class name, per call."""
    seen: list[str] = []
    for _ in range(calls):
        try:
            func()
        except Exception as exc:
            seen.append(type(exc).__name__)
        else:
            seen.append("ok")
    return seen


def async_outcomes(func: Callable[[], Any], calls: int) -> list[str]:
    async def main() -> list[str]:
        seen: list[str] = []
        for _ in range(calls):
            try:
                await func()
            except Exception as exc:
                seen.append(type(exc).__name__)
            else:
                seen.append("ok")
        return seen

    return asyncio.run(main())


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)

    async def wait(self, seconds: float) -> None:
        self.append(seconds)


# --------------------------------------------------------------------------- off by default


def test_off_by_default_nothing_is_injected_even_at_rate_one() -> None:
    sleeps = Sleeps()
    calls: list[int] = []

    @chaos(failure_rate=1.0, latency=5.0, sleep=sleeps)
    def job(x: int) -> int:
        calls.append(x)
        return x * 2

    assert not chaos.is_enabled()
    assert [job(i) for i in range(50)] == [i * 2 for i in range(50)]
    assert len(calls) == 50
    assert sleeps == []


def test_off_by_default_async_passes_the_coroutine_through() -> None:
    @chaos(failure_rate=1.0)
    async def job(x: int) -> int:
        return x + 1

    assert asyncio.run(job(1)) == 2


def _run_python(code: str, env: dict[str, str]) -> Any:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NAQ_CHAOS")}
    base["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


_SEQUENCE_SCRIPT = """
import json
import naq_resilience
from naq_resilience.policies.chaos import chaos

@chaos(failure_rate=0.5, name="seq")
def job():
    return "ok"

seen = []
for _ in range(40):
    try:
        seen.append(job())
    except ConnectionError:
        seen.append("ConnectionError")
print(json.dumps({"file": naq_resilience.__file__, "on": chaos.is_enabled(), "seen": seen}))
"""


def test_import_reads_the_environment_and_is_off_without_it() -> None:
    result = _run_python(_SEQUENCE_SCRIPT, {})
    assert result["file"].startswith(str(ROOT))
    assert result["on"] is False
    assert result["seen"] == ["ok"] * 40


def test_a_seeded_run_is_the_same_in_another_process() -> None:
    # Another hash seed too: the draws must not depend on str hashing.
    env = {"NAQ_CHAOS": "seq", "NAQ_CHAOS_SEED": "1234", "PYTHONHASHSEED": "987"}
    result = _run_python(_SEQUENCE_SCRIPT, env)
    assert result["on"] is True

    @chaos(failure_rate=0.5, name="seq")
    def job() -> str:
        return "ok"

    with chaos.enabled(names="seq", seed=1234):
        here = outcomes(job, 40)
    assert here == result["seen"]
    assert "ok" in here
    assert "ConnectionError" in here


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("0", None),
        ("off", None),
        ("False", None),
        (" no ", None),
        (",", None),
        ("1", ChaosSwitch()),
        ("true", ChaosSwitch()),
        ("ALL", ChaosSwitch()),
        ("*", ChaosSwitch()),
        ("app.jobs:send", ChaosSwitch(names=frozenset({"app.jobs:send"}))),
        (
            " app.jobs:send , app.jobs:charge,",
            ChaosSwitch(names=frozenset({"app.jobs:send", "app.jobs:charge"})),
        ),
    ],
)
def test_switch_from_env(value: str, expected: ChaosSwitch | None) -> None:
    assert switch_from_env({"NAQ_CHAOS": value}) == expected


def test_switch_from_env_reads_the_seed_only_when_on() -> None:
    assert switch_from_env({"NAQ_CHAOS": "1", "NAQ_CHAOS_SEED": " 42 "}) == ChaosSwitch(seed=42)
    assert switch_from_env({"NAQ_CHAOS_SEED": "not a number"}) is None
    with pytest.raises(ValueError, match="NAQ_CHAOS_SEED must be a whole number"):
        switch_from_env({"NAQ_CHAOS": "1", "NAQ_CHAOS_SEED": "abc"})


def test_reload_env_applies_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    @chaos(failure_rate=1.0, name="env:target")
    def target() -> str:
        return "ok"

    @chaos(failure_rate=1.0, name="env:other")
    def other() -> str:
        return "ok"

    monkeypatch.setenv("NAQ_CHAOS", "env:target")
    monkeypatch.delenv("NAQ_CHAOS_SEED", raising=False)
    assert chaos.reload_env() == ChaosSwitch(names=frozenset({"env:target"}))
    assert chaos.is_enabled("env:target")
    assert not chaos.is_enabled("env:other")
    assert outcomes(target, 3) == ["ConnectionError"] * 3
    assert outcomes(other, 3) == ["ok"] * 3

    monkeypatch.setenv("NAQ_CHAOS", "0")
    assert chaos.reload_env() is None
    assert outcomes(target, 3) == ["ok"] * 3


def test_reload_env_accepts_a_mapping() -> None:
    assert chaos.reload_env({"NAQ_CHAOS": "1", "NAQ_CHAOS_SEED": "5"}) == ChaosSwitch(seed=5)
    assert chaos.current() == ChaosSwitch(seed=5)


# --------------------------------------------------------------------------- the switch


def test_enable_and_disable() -> None:
    @chaos(failure_rate=1.0)
    def job() -> str:
        return "ok"

    chaos.enable()
    assert chaos.is_enabled()
    assert chaos.is_enabled("anything")
    assert outcomes(job, 2) == ["ConnectionError"] * 2
    chaos.disable()
    assert not chaos.is_enabled()
    assert outcomes(job, 2) == ["ok"] * 2


def test_enable_replaces_the_previous_state() -> None:
    chaos.enable(names=["a"], failure_rate=0.5, seed=1)
    chaos.enable(latency_rate=0.25)
    assert chaos.current() == ChaosSwitch(latency_rate=0.25)


def test_enabled_nests_and_restores_each_previous_state() -> None:
    chaos.enable(names="outer")
    with chaos.enabled(failure_rate=1.0, seed=1):
        assert chaos.current() == ChaosSwitch(failure_rate=1.0, seed=1)
        with chaos.enabled(names=["inner"]):
            assert chaos.current() == ChaosSwitch(names=frozenset({"inner"}))
        assert chaos.current() == ChaosSwitch(failure_rate=1.0, seed=1)
    assert chaos.current() == ChaosSwitch(names=frozenset({"outer"}))
    chaos.disable()
    with chaos.enabled():
        assert chaos.is_enabled()
    assert chaos.current() is None


def test_enabled_restores_after_an_error() -> None:
    with pytest.raises(RuntimeError), chaos.enabled():
        raise RuntimeError("boom")
    assert not chaos.is_enabled()


def test_one_enabled_object_can_be_reentered() -> None:
    block = chaos.enabled(names="x")
    with block:
        chaos.disable()
        with block:
            assert chaos.is_enabled("x")
        assert not chaos.is_enabled()
    assert not chaos.is_enabled()


def test_enabled_works_around_and_inside_async_code() -> None:
    @chaos(failure_rate=1.0)
    async def job() -> str:
        return "ok"

    with chaos.enabled():
        assert async_outcomes(job, 2) == ["ConnectionError"] * 2

    async def main() -> list[str]:
        seen = []
        async with chaos.enabled():
            try:
                await job()
            except ConnectionError:
                seen.append("injected")
        seen.append(await job())
        return seen

    assert asyncio.run(main()) == ["injected", "ok"]
    assert not chaos.is_enabled()


def test_current_and_restore_round_trip() -> None:
    chaos.enable(names="a,b", failure_rate=0.2, latency_rate=0.3, seed=9)
    saved = chaos.current()
    assert saved == ChaosSwitch(frozenset({"a", "b"}), 0.2, 0.3, 9)
    chaos.disable()
    chaos.restore(saved)
    assert chaos.current() == saved
    chaos.restore(None)
    assert chaos.current() is None
    with pytest.raises(TypeError, match="ChaosSwitch or None"):
        chaos.restore({"names": None})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- targeting


def test_names_target_only_those_chaos_points() -> None:
    @chaos(failure_rate=1.0, name="svc:a")
    def a() -> str:
        return "ok"

    @chaos(failure_rate=1.0, name="svc:b")
    def b() -> str:
        return "ok"

    with chaos.enabled(names="svc:a"):
        assert outcomes(a, 2) == ["ConnectionError"] * 2
        assert outcomes(b, 2) == ["ok"] * 2
    with chaos.enabled(names={"svc:a", "svc:b"}):
        assert outcomes(b, 1) == ["ConnectionError"]


def test_default_name_is_module_and_qualname() -> None:
    @chaos
    def job() -> None: ...

    class Jobs:
        @chaos()
        @classmethod
        def build(cls) -> str:
            return "ok"

    (policy,) = policies_of(job)
    assert isinstance(policy, ChaosPolicy)
    assert policy.name == f"{__name__}:{job.__qualname__}"
    assert policies_of(Jobs.build)[0].name == f"{__name__}:{Jobs.build.__qualname__}"  # type: ignore[attr-defined]


def test_bare_decorator_uses_the_defaults() -> None:
    @chaos
    def job() -> str:
        return "ok"

    (policy,) = policies_of(job)
    assert policy == ChaosPolicy(
        name=f"{__name__}:{job.__qualname__}",
        failure_rate=0.1,
        exceptions=(ConnectionError,),
        latency=None,
        latency_rate=0.0,
        seed=None,
    )


# --------------------------------------------------------------------------- determinism


def _job(**kwargs: Any) -> Callable[[], str]:
    @chaos(**kwargs)
    def job() -> str:
        return "ok"

    return job


def test_same_seed_same_sequence_different_seed_different_sequence() -> None:
    job = _job(failure_rate=0.5, name="det")
    with chaos.enabled(seed=7):
        first = outcomes(job, 64)
    with chaos.enabled(seed=7):
        second = outcomes(job, 64)
    with chaos.enabled(seed=8):
        third = outcomes(job, 64)
    assert first == second
    assert first != third
    assert 10 < first.count("ConnectionError") < 54


def test_every_switch_change_restarts_the_sequence() -> None:
    job = _job(failure_rate=0.5, name="restart")
    chaos.enable(seed=3)
    first = outcomes(job, 20)
    chaos.enable(seed=3)
    assert outcomes(job, 20) == first


def test_a_point_own_seed_is_used_when_the_switch_has_none() -> None:
    one = _job(failure_rate=0.5, name="own", seed=11)
    two = _job(failure_rate=0.5, name="own", seed=11)
    with chaos.enabled():
        assert outcomes(one, 40) == outcomes(two, 40)
    with chaos.enabled(seed=12):
        switch_seeded = outcomes(one, 40)
    with chaos.enabled():
        own_seeded = outcomes(one, 40)
    assert switch_seeded != own_seeded


def test_sequences_are_independent_of_other_points_calls() -> None:
    job = _job(failure_rate=0.5, name="independent")
    noisy = _job(failure_rate=0.5, name="noisy")
    with chaos.enabled(seed=5):
        alone = outcomes(job, 30)
    with chaos.enabled(seed=5):
        interleaved = []
        for _ in range(30):
            outcomes(noisy, 3)
            interleaved += outcomes(job, 1)
    assert interleaved == alone


def test_same_seed_different_names_draw_differently() -> None:
    with chaos.enabled(seed=1):
        a = outcomes(_job(failure_rate=0.5, name="name-a"), 64)
        b = outcomes(_job(failure_rate=0.5, name="name-b"), 64)
    assert a != b


def test_failure_rate_is_honoured_statistically() -> None:
    job = _job(failure_rate=0.3, name="stats")
    with chaos.enabled(seed=2024):
        seen = outcomes(job, 4000)
    assert 0.27 < seen.count("ConnectionError") / len(seen) < 0.33


def test_one_of_several_exceptions_is_picked_at_random() -> None:
    job = _job(failure_rate=1.0, exceptions=(ConnectionError, TimeoutError, RateLimitError))
    with chaos.enabled(seed=4):
        seen = outcomes(job, 300)
    counts = {name: seen.count(name) for name in set(seen)}
    assert set(counts) == {"ConnectionError", "TimeoutError", "RateLimitError"}
    assert all(60 < count < 140 for count in counts.values())


# --------------------------------------------------------------------------- rate overrides


def test_switch_failure_rate_overrides_the_decorator() -> None:
    never = _job(failure_rate=0.0)
    always = _job(failure_rate=1.0)
    with chaos.enabled(failure_rate=1.0):
        assert outcomes(never, 3) == ["ConnectionError"] * 3
    with chaos.enabled(failure_rate=0.0):
        assert outcomes(always, 3) == ["ok"] * 3
    with chaos.enabled():
        assert outcomes(never, 3) == ["ok"] * 3
        assert outcomes(always, 3) == ["ConnectionError"] * 3


def test_switch_latency_rate_overrides_the_decorator() -> None:
    sleeps = Sleeps()
    job = _job(failure_rate=0.0, latency=0.5, latency_rate=0.0, sleep=sleeps)
    with chaos.enabled():
        outcomes(job, 3)
    assert sleeps == []
    with chaos.enabled(latency_rate=1.0):
        outcomes(job, 3)
    assert sleeps == [0.5] * 3


def test_points_without_exceptions_never_fail_even_under_override() -> None:
    job = _job(failure_rate=0.0, exceptions=(), latency=0.1, sleep=Sleeps())
    with chaos.enabled(failure_rate=1.0):
        assert outcomes(job, 3) == ["ok"] * 3


# --------------------------------------------------------------------------- latency


def test_fixed_latency_sleeps_before_every_call() -> None:
    sleeps = Sleeps()
    order: list[str] = []

    def sleep(seconds: float) -> None:
        order.append("sleep")
        sleeps(seconds)

    @chaos(failure_rate=0.0, latency=0.25, sleep=sleep)
    def job() -> str:
        order.append("call")
        return "ok"

    with chaos.enabled():
        assert outcomes(job, 3) == ["ok"] * 3
    assert sleeps == [0.25] * 3
    assert order == ["sleep", "call"] * 3


def test_latency_range_and_rate() -> None:
    sleeps = Sleeps()
    job = _job(failure_rate=0.0, latency=(0.1, 0.3), latency_rate=0.5, sleep=sleeps)
    with chaos.enabled(seed=6):
        outcomes(job, 400)
    assert 150 < len(sleeps) < 250
    assert all(0.1 <= s <= 0.3 for s in sleeps)
    assert len(set(sleeps)) > 100


def test_zero_latency_does_not_call_sleep() -> None:
    sleeps = Sleeps()
    job = _job(failure_rate=0.0, latency=0, sleep=sleeps)
    with chaos.enabled():
        outcomes(job, 3)
    assert sleeps == []


def test_latency_then_fault_and_the_function_does_not_run() -> None:
    sleeps = Sleeps()
    calls: list[str] = []

    @chaos(failure_rate=1.0, latency=2.0, sleep=sleeps)
    def job() -> None:
        calls.append("ran")

    with chaos.enabled():
        assert outcomes(job, 2) == ["ConnectionError"] * 2
    assert sleeps == [2.0, 2.0]
    assert calls == []


def test_async_latency_uses_the_async_sleep() -> None:
    sleeps = Sleeps()

    @chaos(failure_rate=0.0, latency=(1.0, 2.0), sleep=sleeps.wait)
    async def job() -> str:
        return "ok"

    with chaos.enabled(seed=1):
        assert async_outcomes(job, 5) == ["ok"] * 5
    assert len(sleeps) == 5
    assert all(1.0 <= s <= 2.0 for s in sleeps)


def test_async_fault_after_latency() -> None:
    sleeps = Sleeps()
    calls: list[str] = []

    @chaos(failure_rate=1.0, exceptions=TimeoutError, latency=0.5, sleep=sleeps.wait)
    async def job() -> None:
        calls.append("ran")

    with chaos.enabled():
        assert async_outcomes(job, 2) == ["TimeoutError"] * 2
    assert sleeps == [0.5, 0.5]
    assert calls == []


def test_async_draws_happen_in_call_order() -> None:
    """Concurrent calls draw when called, not when their delays end."""
    sleeps = Sleeps()

    @chaos(failure_rate=0.5, latency=(0.0, 1.0), sleep=sleeps.wait, name="order")
    async def job(i: int) -> int:
        return i

    async def concurrently() -> list[str]:
        results = await asyncio.gather(*(job(i) for i in range(30)), return_exceptions=True)
        return ["ok" if isinstance(r, int) else type(r).__name__ for r in results]

    with chaos.enabled(seed=3):
        together = asyncio.run(concurrently())
    with chaos.enabled(seed=3):
        one_by_one = [
            "ok" if not isinstance(r, BaseException) else type(r).__name__
            for r in (_call(job, i) for i in range(30))
        ]
    assert together == one_by_one


def _call(job: Callable[[int], Any], i: int) -> object:
    try:
        return asyncio.run(job(i))
    except Exception as exc:
        return exc


# --------------------------------------------------------------------------- marking


def test_injected_errors_are_marked_and_named() -> None:
    @chaos(failure_rate=1.0, name="svc:pay")
    def job() -> None:
        raise ConnectionError("a real one")

    with chaos.enabled(), pytest.raises(ConnectionError) as caught:
        job()
    assert is_injected(caught.value)
    assert str(caught.value) == "chaos: injected ConnectionError into svc:pay"
    with pytest.raises(ConnectionError) as real:
        job()
    assert not is_injected(real.value)
    assert not is_injected(ValueError())


# --------------------------------------------------------------------------- stacking


def test_retry_retries_injected_connection_errors() -> None:
    calls: list[int] = []

    @retry(max_retries=10, retry_delay=0)
    @chaos(failure_rate=0.5, name="stack")
    def job() -> str:
        calls.append(1)
        return "done"

    assert [type(p) for p in policies_of(job)] == [RetryPolicy, ChaosPolicy]
    with chaos.enabled(seed=1):
        results = [job() for _ in range(20)]
    assert results == ["done"] * 20
    assert len(calls) == 20


def test_retry_gives_up_on_a_point_that_always_fails() -> None:
    calls: list[int] = []

    @retry(max_retries=3, retry_delay=0)
    @chaos(failure_rate=1.0)
    def job() -> None:
        calls.append(1)

    with chaos.enabled(), pytest.raises(ConnectionError) as caught:
        job()
    assert is_injected(caught.value)
    assert len(attempts_of(caught.value)) == 4
    assert calls == []


def test_retry_retries_injected_errors_async() -> None:
    calls: list[int] = []

    @retry(max_retries=10, retry_delay=0)
    @chaos(failure_rate=0.5, name="stack-async")
    async def job() -> str:
        calls.append(1)
        return "done"

    async def main() -> list[str]:
        return [await job() for _ in range(20)]

    with chaos.enabled(seed=2):
        assert asyncio.run(main()) == ["done"] * 20
    assert len(calls) == 20


def test_chaos_above_retry_is_not_retried() -> None:
    calls: list[int] = []

    @chaos(failure_rate=1.0)
    @retry(max_retries=3, retry_delay=0)
    def job() -> None:
        calls.append(1)

    with chaos.enabled(), pytest.raises(ConnectionError):
        job()
    assert calls == []


# --------------------------------------------------------------------------- ChaosMonkey


def test_monkey_is_inert_while_off() -> None:
    sleeps = Sleeps()
    monkey = ChaosMonkey(failure_rate=1.0, sleep=sleeps, async_sleep=sleeps.wait)
    for _ in range(20):
        monkey.maybe_fail(RuntimeError)
        assert monkey.maybe_delay(5.0) == 0.0
    assert asyncio.run(monkey.maybe_delay_async(5.0)) == 0.0
    assert sleeps == []


def test_monkey_fails_with_the_given_type_and_message_marked() -> None:
    monkey = ChaosMonkey(failure_rate=1.0)
    with chaos.enabled():
        with pytest.raises(Exception, match="Chaos monkey strike!") as default:
            monkey.maybe_fail()
        with pytest.raises(TimeoutError, match="slow disk") as custom:
            monkey.maybe_fail(TimeoutError, "slow disk")
    assert type(default.value) is Exception
    assert is_injected(default.value)
    assert is_injected(custom.value)


def test_monkey_is_seeded_and_overridden_by_the_switch() -> None:
    def strikes(monkey: ChaosMonkey) -> list[str]:
        return outcomes(monkey.maybe_fail, 60)

    with chaos.enabled():
        first = strikes(ChaosMonkey(failure_rate=0.5, seed=3))
        second = strikes(ChaosMonkey(failure_rate=0.5, seed=3))
    assert first == second
    assert 10 < first.count("Exception") < 50
    with chaos.enabled(failure_rate=0.0):
        assert strikes(ChaosMonkey(failure_rate=1.0)) == ["ok"] * 60


def test_monkey_delays() -> None:
    sleeps = Sleeps()
    monkey = ChaosMonkey(failure_rate=0.5, seed=8, sleep=sleeps, async_sleep=sleeps.wait)
    with chaos.enabled():
        slept = [monkey.maybe_delay(2.0) for _ in range(100)]
    assert [s for s in slept if s] == sleeps
    assert 25 < len(sleeps) < 75
    assert all(0.0 <= s <= 2.0 for s in sleeps)

    sleeps.clear()
    with chaos.enabled(latency_rate=1.0):
        slept = [asyncio.run(monkey.maybe_delay_async(0.5)) for _ in range(10)]
    assert slept == sleeps
    assert len(sleeps) == 10


def test_monkey_honours_names() -> None:
    monkey = ChaosMonkey(failure_rate=1.0, name="billing-monkey")
    with chaos.enabled(names="someone-else"):
        monkey.maybe_fail()
    with chaos.enabled(names="billing-monkey"), pytest.raises(Exception, match="strike"):
        monkey.maybe_fail()


def test_monkey_argument_errors() -> None:
    with pytest.raises(ValueError, match="failure_rate must be between 0 and 1"):
        ChaosMonkey(failure_rate=2)
    with pytest.raises(TypeError, match="seed must be a whole number"):
        ChaosMonkey(seed="x")  # type: ignore[arg-type]
    monkey = ChaosMonkey(failure_rate=1.0)
    with chaos.enabled():
        with pytest.raises(TypeError, match="cannot be built from one message"):
            monkey.maybe_fail(CompensationError)
        with pytest.raises(ValueError, match="max_delay must be >= 0"):
            monkey.maybe_delay(-1)


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"failure_rate": 1.5}, ValueError, "failure_rate must be between 0 and 1"),
        ({"failure_rate": -0.1}, ValueError, "failure_rate must be between 0 and 1"),
        ({"failure_rate": 10}, ValueError, r"write failure_rate=0\.1 for 10%"),
        ({"failure_rate": float("nan")}, ValueError, "failure_rate must be between"),
        ({"failure_rate": "0.1"}, TypeError, "failure_rate must be a probability"),
        ({"failure_rate": True}, TypeError, "failure_rate must be a probability"),
        ({"exceptions": (int,)}, TypeError, "must contain exception classes"),
        ({"exceptions": "ConnectionError"}, TypeError, "not names"),
        ({"exceptions": (KeyboardInterrupt,)}, TypeError, "Exception subclasses"),
        ({"exceptions": CompensationError}, TypeError, "one message argument"),
        ({"exceptions": ()}, ValueError, "needs an exception class to inject"),
        ({"latency": -1}, ValueError, "latency must be >= 0"),
        ({"latency": "1s"}, TypeError, "latency must be a number of seconds or a timedelta"),
        ({"latency": (2, 1)}, ValueError, r"min > max; write latency=\(1, 2\)"),
        ({"latency": (1, 2, 3)}, TypeError, r"\(min, max\) pair"),
        ({"latency": (-1, 2)}, ValueError, "latency min must be >= 0"),
        ({"latency_rate": 0.5}, ValueError, "no effect without latency"),
        ({"latency": 1, "latency_rate": 2}, ValueError, "latency_rate must be between"),
        ({"seed": "abc"}, TypeError, "seed must be a whole number"),
        ({"seed": 1.5}, TypeError, "seed must be a whole number"),
        ({"name": ""}, TypeError, "name must be a non-empty string"),
        ({"name": "a,b"}, ValueError, "must not contain ','"),
        ({"name": " a"}, ValueError, "surrounding spaces"),
        ({"sleep": 3}, TypeError, "sleep must be callable"),
    ],
)
def test_decoration_time_errors(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        chaos(**kwargs)


def test_sleep_must_match_the_function_kind() -> None:
    async def async_sleep(seconds: float) -> None: ...

    def sync_sleep(seconds: float) -> None: ...

    with pytest.raises(TypeError, match="on a sync function needs a sync sleep"):

        @chaos(sleep=async_sleep)
        def job() -> None: ...

    with pytest.raises(TypeError, match="on an async function needs an async sleep"):

        @chaos(sleep=sync_sleep)
        async def ajob() -> None: ...


def test_latency_only_point_is_allowed() -> None:
    (policy,) = policies_of(_job(failure_rate=0, exceptions=(), latency=(0, 1)))
    assert isinstance(policy, ChaosPolicy)
    assert policy.exceptions == ()
    assert policy.latency == (0.0, 1.0)
    assert policy.latency_rate == 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"names": []}, ValueError, "targets nothing|target nothing"),
        ({"names": ","}, ValueError, "target nothing"),
        ({"names": 5}, TypeError, "names must be"),
        ({"names": ["a,b"]}, ValueError, "must not contain ','"),
        ({"failure_rate": 2}, ValueError, "failure_rate must be between"),
        ({"latency_rate": -1}, ValueError, "latency_rate must be between"),
        ({"seed": "x"}, TypeError, "seed must be a whole number"),
    ],
)
def test_switch_argument_errors(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        chaos.enable(**kwargs)
    with pytest.raises(error, match=message):
        chaos.enabled(**kwargs)
    assert chaos.current() is None


def test_monkey_settings_are_read_only() -> None:
    monkey = ChaosMonkey(failure_rate=0.2, seed=1, name="m")
    assert (monkey.failure_rate, monkey.seed, monkey.name) == (0.2, 1, "m")
    assert repr(monkey) == "ChaosMonkey(failure_rate=0.2, seed=1, name='m')"
    with pytest.raises(AttributeError):
        monkey.failure_rate = 0.5  # type: ignore[misc]
