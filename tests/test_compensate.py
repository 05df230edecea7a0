from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from naq_resilience.policies.classify import on_critical, remove_critical_hook
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
    step_name,
    undo_for,
)
from naq_resilience.policies.errors import CompensationError, SecurityError
from naq_resilience.policies.pipeline import policies_of
from naq_resilience.policies.retry import RetryPolicy, retry


@pytest.fixture
def reported() -> Iterator[list[BaseException]]:
    seen: list[BaseException] = []
    hook = on_critical(seen.append)
    yield seen
    remove_critical_hook(hook)


# --------------------------------------------------------------------------- the seed example

journal: list[str] = []


def delete_record(record: dict[str, Any], data: str) -> None:
    journal.append(f"delete_record {record['id']}")


def cancel_api_call(call_id: str, record: dict[str, Any]) -> None:
    journal.append(f"cancel_api_call {call_id}")


def retract_notification(result: None, record: dict[str, Any]) -> None:
    journal.append("retract_notification")


@compensate(undo=delete_record)
def create_record(data: str) -> dict[str, Any]:
    journal.append("create_record")
    return {"id": f"rec-{data}"}


@compensate(undo=cancel_api_call)
def call_external_api(record: dict[str, Any]) -> str:
    journal.append("call_external_api")
    return f"call-for-{record['id']}"


notification_error = ConnectionError("mail server down")


@compensate(undo=retract_notification)
def send_notification(record: dict[str, Any]) -> None:
    journal.append("send_notification")
    raise notification_error


@saga
def transactional_job(data: str) -> None:
    record = create_record(data)
    call_external_api(record)
    send_notification(record)


def test_seed_example_undoes_completed_steps_in_reverse_order() -> None:
    journal.clear()
    with pytest.raises(ConnectionError) as info:
        transactional_job("x")
    assert info.value is notification_error
    assert journal == [
        "create_record",
        "call_external_api",
        "send_notification",
        "cancel_api_call call-for-rec-x",
        "delete_record rec-x",
    ]
    assert compensation_of(info.value) is None


# --------------------------------------------------------------------------- basics


class Undos:
    """Undo functions that log what they were given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, tuple[Any, ...], dict[str, Any]]] = []

    def logging(self, name: str) -> Callable[..., None]:
        def undo(result: object, *args: Any, **kwargs: Any) -> None:
            self.calls.append((name, result, args, kwargs))

        undo.__qualname__ = name
        return undo

    def failing(self, name: str, error: Exception) -> Callable[..., None]:
        def undo(result: object, *args: Any, **kwargs: Any) -> None:
            self.calls.append((name, result, args, kwargs))
            raise error

        undo.__qualname__ = name
        return undo

    def names(self) -> list[str]:
        return [name for name, _, _, _ in self.calls]


def test_undo_gets_result_and_the_step_arguments() -> None:
    undos = Undos()

    @compensate(undos.logging("undo_charge"))
    def charge(account: str, *, cents: int) -> str:
        return f"charge-{account}-{cents}"

    @saga
    def job() -> None:
        charge("acc", cents=500)
        raise RuntimeError("later step failed")

    with pytest.raises(RuntimeError, match="later step failed"):
        job()
    assert undos.calls == [("undo_charge", "charge-acc-500", ("acc",), {"cents": 500})]


def test_success_commits_and_runs_no_undo() -> None:
    undos = Undos()

    @compensate(undos.logging("undo"))
    def step(n: int) -> int:
        return n

    @saga
    def job() -> int:
        return step(1) + step(2)

    assert job() == 3
    with saga() as active:
        step(3)
        assert [a.result for a in active.actions] == [3]
    assert active.actions == ()
    assert undos.calls == []


def test_step_outside_a_saga_just_runs() -> None:
    undos = Undos()

    @compensate(undos.logging("undo"))
    def step(n: int) -> int:
        assert current_saga() is None
        return n * 2

    assert step(21) == 42
    assert undos.calls == []


def test_failed_step_itself_is_not_undone() -> None:
    undos = Undos()

    @compensate(undos.logging("undo_ok"))
    def ok() -> str:
        return "ok"

    @compensate(undos.logging("undo_broken"))
    def broken() -> str:
        raise TimeoutError()

    def block() -> None:
        with saga():
            ok()
            broken()

    with pytest.raises(TimeoutError):
        block()
    assert undos.names() == ["undo_ok"]


def test_saga_decorator_forms() -> None:
    undos = Undos()

    @compensate(undos.logging("undo"))
    def step() -> str:
        return "done"

    @saga()
    def called() -> None:
        step()
        raise KeyError("a")

    @saga(log=MemoryActionLog)
    def with_log() -> None:
        step()
        raise KeyError("b")

    for job in (called, with_log):
        with pytest.raises(KeyError):
            job()
    assert undos.names() == ["undo", "undo"]


def test_action_log_interface_is_what_the_saga_uses() -> None:
    events: list[str] = []
    made: list[ActionLog] = []

    class SpyLog(MemoryActionLog):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

        def record(self, action: Action) -> None:
            events.append(f"record {action.step.rsplit('.', 1)[-1]} {action.status.value}")
            super().record(action)

        def pending(self) -> tuple[Action, ...]:
            events.append("pending")
            return super().pending()

        def mark_undone(self, action: Action) -> None:
            events.append(f"undone {action.result}")
            super().mark_undone(action)

        def mark_failed(self, action: Action, error: BaseException) -> None:
            events.append(f"failed {action.result}")
            super().mark_failed(action, error)

        def clear(self) -> None:
            events.append("clear")
            super().clear()

    @compensate(lambda result, n: None)
    def step(n: int) -> int:
        return n

    @saga(log=SpyLog)
    def job(fail: bool) -> None:
        step(1)
        step(2)
        if fail:
            raise RuntimeError()

    job(False)
    assert events == ["record step pending", "record step pending", "clear"]
    events.clear()
    with pytest.raises(RuntimeError):
        job(True)
    assert events == [
        "record step pending",
        "record step pending",
        "pending",
        "undone 2",
        "undone 1",
        "clear",
    ]
    assert len(made) == 2


def test_a_run_that_records_nothing_makes_no_log() -> None:
    made: list[int] = []

    def factory() -> ActionLog:
        made.append(1)
        return MemoryActionLog()

    @saga(log=factory)
    def job() -> str:
        return "nothing to undo"

    assert job() == "nothing to undo"
    assert made == []


# --------------------------------------------------------------------------- undo failures


def test_failing_undo_reports_once_and_reraises_the_original(
    reported: list[BaseException],
) -> None:
    undos = Undos()
    undo_error = OSError("api unreachable")
    job_error = ValueError("bad row")

    @compensate(undos.logging("undo_first"))
    def first() -> str:
        return "r1"

    @compensate(undos.failing("undo_second", undo_error))
    def second() -> str:
        return "r2"

    @compensate(undos.logging("undo_third"))
    def third() -> str:
        return "r3"

    @saga
    def job() -> None:
        first()
        second()
        third()
        raise job_error

    with pytest.raises(ValueError, match="bad row") as info:
        job()

    assert info.value is job_error
    assert undos.names() == ["undo_third", "undo_second", "undo_first"]
    assert len(reported) == 1
    (compensation,) = reported
    assert isinstance(compensation, CompensationError)
    assert compensation.not_undone == (step_name(second),)
    assert compensation.errors == (undo_error,)
    assert step_name(second) in str(compensation)
    assert "api unreachable" in str(compensation)
    assert compensation_of(info.value) is compensation
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1
    assert step_name(second) in notes[0]
    assert step_name(first) not in notes[0]


def test_failed_undo_stays_pending_in_the_log() -> None:
    @compensate(Undos().failing("undo", OSError("nope")))
    def step() -> str:
        return "r"

    entered: list[Saga] = []

    def block() -> None:
        with saga() as active:
            entered.append(active)
            step()
            raise KeyError()

    with pytest.raises(KeyError):
        block()
    (action,) = entered[0].actions
    assert action.status is ActionStatus.FAILED
    assert action.error == "OSError: nope"


def test_failing_undo_in_async_saga(reported: list[BaseException]) -> None:
    undo_error = OSError("api unreachable")
    job_error = RuntimeError("boom")

    async def undo(result: str) -> None:
        raise undo_error

    @compensate(undo)
    async def step() -> str:
        return "r"

    @saga
    async def job() -> None:
        await step()
        raise job_error

    with pytest.raises(RuntimeError) as info:
        asyncio.run(job())
    assert info.value is job_error
    assert [type(e) for e in reported] == [CompensationError]
    compensation = compensation_of(info.value)
    assert compensation is reported[0]
    assert compensation.errors == (undo_error,)


def test_a_broken_log_still_reraises_the_original(reported: list[BaseException]) -> None:
    log_error = OSError("store down")

    class BrokenLog(MemoryActionLog):
        def pending(self) -> tuple[Action, ...]:
            raise log_error

    @compensate(lambda result: None)
    def step() -> None:
        pass

    job_error = KeyError("job")

    @saga(log=BrokenLog)
    def job() -> None:
        step()
        raise job_error

    with pytest.raises(KeyError) as info:
        job()
    assert info.value is job_error
    compensation = compensation_of(info.value)
    assert compensation is not None
    assert compensation.errors == (log_error,)
    assert reported == [compensation]


def test_critical_original_error_is_reported_once(reported: list[BaseException]) -> None:
    breach = SecurityError("forged")

    @compensate(lambda result: None)
    def step() -> None:
        pass

    @saga
    def job() -> None:
        step()
        raise breach

    with pytest.raises(SecurityError):
        job()
    assert reported == [breach]


# --------------------------------------------------------------------------- async


def test_async_job_with_sync_and_async_undos() -> None:
    order: list[str] = []

    async def undo_reserve(result: str, item: str) -> None:
        order.append(f"release {result}")

    def undo_charge(result: str, item: str) -> None:
        order.append(f"refund {result}")

    @compensate(undo_reserve)
    async def reserve(item: str) -> str:
        return f"res-{item}"

    @compensate(undo_charge)
    async def charge(item: str) -> str:
        return f"chg-{item}"

    @compensate(lambda result, item: order.append("sync step undone"))
    def note(item: str) -> str:
        return "noted"

    @saga
    async def job(item: str) -> None:
        await reserve(item)
        note(item)
        await charge(item)
        raise TimeoutError("shipping")

    with pytest.raises(TimeoutError, match="shipping"):
        asyncio.run(job("book"))
    assert order == ["refund chg-book", "sync step undone", "release res-book"]


def test_async_with_block_yields_the_saga() -> None:
    undone: list[int] = []

    @compensate(lambda result, *_: undone.append(result))
    async def step(n: int) -> int:
        return n

    async def main() -> tuple[int, ...]:
        async with saga() as active:
            await step(1)
            await step(2)
            recorded = tuple(a.result for a in active.actions)

        async def failing_block() -> None:
            async with saga():
                await step(3)
                raise LookupError()

        with pytest.raises(LookupError):
            await failing_block()
        return recorded

    assert asyncio.run(main()) == (1, 2)
    assert undone == [3]


def test_cancellation_rolls_back() -> None:
    undone: list[str] = []

    @compensate(lambda result, *_: undone.append(result))
    async def step() -> str:
        return "reserved"

    async def main() -> None:
        reached = asyncio.Event()

        @saga
        async def job() -> None:
            await step()
            reached.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(job())
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert undone == ["reserved"]


def test_tasks_gathered_inside_a_saga_join_it() -> None:
    undone: list[int] = []

    @compensate(lambda result, *_: undone.append(result))
    async def step(n: int) -> int:
        return n

    @saga
    async def job() -> None:
        await asyncio.gather(step(1), step(2))
        raise RuntimeError()

    with pytest.raises(RuntimeError):
        asyncio.run(job())
    assert sorted(undone) == [1, 2]


# --------------------------------------------------------------------------- isolation


def test_concurrent_tasks_have_separate_sagas() -> None:
    undone: list[str] = []
    seen: dict[str, list[str]] = {}

    @compensate(lambda result, who, n: undone.append(result))
    async def step(who: str, n: int) -> str:
        return f"{who}{n}"

    @saga
    async def job(who: str, mine: asyncio.Event, other: asyncio.Event, fail: bool) -> None:
        await step(who, 1)
        mine.set()
        await other.wait()
        await step(who, 2)
        active = current_saga()
        assert active is not None
        seen[who] = [a.result for a in active.actions]
        if fail:
            raise RuntimeError(who)

    async def main() -> tuple[BaseException | None, BaseException | None]:
        a_ready, b_ready = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(
            job("a", a_ready, b_ready, True),
            job("b", b_ready, a_ready, False),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert isinstance(results[0], RuntimeError)
    assert results[1] is None
    assert seen == {"a": ["a1", "a2"], "b": ["b1", "b2"]}
    assert undone == ["a2", "a1"]


def test_one_scope_shared_by_concurrent_tasks() -> None:
    undone: list[str] = []
    shared = saga()

    @compensate(lambda result, *_: undone.append(result))
    async def step(who: str) -> str:
        return who

    async def job(who: str, mine: asyncio.Event, other: asyncio.Event) -> list[str]:
        async with shared as active:
            await step(who)
            mine.set()
            await other.wait()
            recorded = [a.result for a in active.actions]
            if who == "a":
                raise RuntimeError(recorded)
        return recorded

    async def main() -> list[object]:
        a_ready, b_ready = asyncio.Event(), asyncio.Event()
        return list(
            await asyncio.gather(
                job("a", a_ready, b_ready), job("b", b_ready, a_ready), return_exceptions=True
            )
        )

    failed, succeeded = asyncio.run(main())
    assert isinstance(failed, RuntimeError)
    assert failed.args == (["a"],)
    assert succeeded == ["b"]
    assert undone == ["a"]


def test_threads_have_separate_sagas() -> None:
    barrier = threading.Barrier(2, timeout=60)  # only so a broken test fails, not hangs
    seen: dict[str, list[str]] = {}
    outer_seen_in_thread: list[Saga | None] = []

    @compensate(lambda result, who: None)
    def step(who: str) -> str:
        return who

    def worker(who: str) -> None:
        outer_seen_in_thread.append(current_saga())
        with saga() as active:
            step(who)
            barrier.wait()
            seen[who] = [a.result for a in active.actions]

    with saga() as outer:
        threads = [threading.Thread(target=worker, args=(w,)) for w in ("t1", "t2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outer.actions == ()
    assert seen == {"t1": ["t1"], "t2": ["t2"]}
    assert outer_seen_in_thread == [None, None]


# --------------------------------------------------------------------------- nesting


def test_inner_saga_success_joins_the_outer_one() -> None:
    undone: list[str] = []

    @compensate(lambda result, *_: undone.append(result))
    def step(name: str) -> str:
        return name

    @saga
    def inner() -> None:
        step("inner-1")
        step("inner-2")

    @saga
    def outer() -> None:
        step("outer-1")
        inner()
        step("outer-2")
        raise RuntimeError()

    with pytest.raises(RuntimeError):
        outer()
    assert undone == ["outer-2", "inner-2", "inner-1", "outer-1"]


def test_inner_saga_failure_undoes_only_its_own_steps() -> None:
    undone: list[str] = []

    @compensate(lambda result, *_: undone.append(result))
    def step(name: str) -> str:
        return name

    def inner_block() -> None:
        with saga():
            step("inner-1")
            raise KeyError()

    with saga() as outer:
        step("outer-1")
        with pytest.raises(KeyError):
            inner_block()
        assert undone == ["inner-1"]
        assert [a.result for a in outer.actions] == ["outer-1"]
    assert undone == ["inner-1"]


def test_undo_failures_of_nested_sagas_accumulate(reported: list[BaseException]) -> None:
    inner_error, outer_error = OSError("inner undo"), OSError("outer undo")

    def fail_inner(result: str) -> None:
        raise inner_error

    def fail_outer(result: str) -> None:
        raise outer_error

    @compensate(fail_inner)
    def inner_step() -> str:
        return "i"

    @compensate(fail_outer)
    def outer_step() -> str:
        return "o"

    job_error = RuntimeError("job")

    @saga
    def inner() -> None:
        inner_step()
        raise job_error

    @saga
    def outer() -> None:
        outer_step()
        inner()

    with pytest.raises(RuntimeError) as info:
        outer()
    assert info.value is job_error
    assert [c.errors for c in reported] == [(inner_error,), (outer_error,)]  # type: ignore[attr-defined]
    compensation = compensation_of(info.value)
    assert compensation is not None
    assert compensation.not_undone == (step_name(inner_step), step_name(outer_step))
    assert compensation.errors == (inner_error, outer_error)
    inner_note, outer_note = getattr(info.value, "__notes__", [])
    assert step_name(inner_step) in inner_note
    assert step_name(outer_step) not in inner_note
    assert step_name(outer_step) in outer_note
    assert step_name(inner_step) not in outer_note


def test_undo_that_calls_a_step_records_nothing() -> None:
    undone: list[str] = []

    @compensate(lambda result, *_: undone.append(f"undo {result}"))
    def cleanup(name: str) -> str:
        return name

    def undo_step(result: str) -> None:
        cleanup(f"after {result}")

    @compensate(undo_step)
    def step() -> str:
        return "s"

    def inner_block() -> None:
        with saga():
            step()
            raise KeyError()

    with saga() as outer:
        with pytest.raises(KeyError):
            inner_block()
        assert outer.actions == ()
    assert undone == []


# --------------------------------------------------------------------------- stacking


def test_retry_around_saga_makes_each_attempt_its_own_saga() -> None:
    undone: list[int] = []
    attempts: list[int] = []

    @compensate(lambda result, *_: undone.append(result))
    def step(n: int) -> int:
        return n

    @retry(max_retries=2, retry_delay=0, jitter=None)
    @saga
    def job() -> str:
        attempts.append(len(attempts) + 1)
        step(len(attempts))
        if len(attempts) < 3:
            raise ConnectionError("flaky")
        return "done"

    assert job() == "done"
    assert attempts == [1, 2, 3]
    assert undone == [1, 2]
    assert [type(p) for p in policies_of(job)] == [RetryPolicy, SagaPolicy]


def test_saga_around_retry_spans_every_attempt() -> None:
    undone: list[int] = []
    attempts: list[int] = []

    @compensate(lambda result, *_: undone.append(result))
    def step(n: int) -> int:
        return n

    @saga
    @retry(max_retries=1, sleep=lambda _: None)
    def job() -> None:
        attempts.append(1)
        step(len(attempts))
        raise ConnectionError("always")

    with pytest.raises(ConnectionError):
        job()
    assert undone == [2, 1]
    assert [type(p) for p in policies_of(job)] == [SagaPolicy, RetryPolicy]


def test_async_retry_around_saga() -> None:
    undone: list[int] = []
    attempts: list[int] = []

    @compensate(lambda result, *_: undone.append(result))
    async def step(n: int) -> int:
        return n

    async def no_sleep(_: float) -> None:
        pass

    @retry(max_retries=1, sleep=no_sleep)
    @saga
    async def job() -> str:
        attempts.append(1)
        await step(len(attempts))
        if len(attempts) == 1:
            raise ConnectionError()
        return "ok"

    assert asyncio.run(job()) == "ok"
    assert undone == [1]


def test_retry_on_a_step_records_once() -> None:
    calls: list[int] = []

    @compensate(lambda result: None)
    @retry(max_retries=2, retry_delay=0, jitter=None)
    def step() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError()
        return "ok"

    with saga() as active:
        step()
        assert [a.result for a in active.actions] == ["ok"]
    assert len(calls) == 2


# --------------------------------------------------------------------------- methods


def test_methods_as_steps_and_jobs() -> None:
    undone: list[tuple[str, str]] = []

    def release(result: str, repo: Repo, item: str) -> None:
        undone.append((result, repo.name))

    class Repo:
        name = "repo"

        @compensate(release)
        def reserve(self, item: str) -> str:
            return f"res-{item}"

        @saga
        def order(self, item: str) -> None:
            self.reserve(item)
            raise RuntimeError()

        @classmethod
        @saga
        def bulk(cls, items: Sequence[str]) -> None:
            repo = cls()
            for item in items:
                repo.reserve(item)
            raise RuntimeError()

    with pytest.raises(RuntimeError):
        Repo().order("a")
    assert undone == [("res-a", "repo")]
    with pytest.raises(RuntimeError):
        Repo.bulk(["b", "c"])
    assert undone == [("res-a", "repo"), ("res-c", "repo"), ("res-b", "repo")]
    assert step_name(Repo.reserve).endswith("test_methods_as_steps_and_jobs.<locals>.Repo.reserve")


# --------------------------------------------------------------------------- policy and registry


def test_policies() -> None:
    @compensate(delete_record)
    def step(data: str) -> dict[str, Any]:
        return {"id": data}

    @compensate(delete_record, name="billing:create")
    def pinned(data: str) -> dict[str, Any]:
        return {"id": data}

    @saga
    def job() -> None:
        pass

    assert policies_of(step) == (
        CompensatePolicy(delete_record, f"{__name__}:{step.__qualname__}"),
    )
    assert policies_of(pinned) == (CompensatePolicy(delete_record, "billing:create"),)
    assert policies_of(job) == (SagaPolicy(MemoryActionLog),)
    assert policies_of(create_record) == (
        CompensatePolicy(delete_record, f"{__name__}:create_record"),
    )


def test_registry_resolves_undo_by_step_name() -> None:
    assert undo_for(step_name(create_record)) is delete_record
    assert undo_for(f"{__name__}:call_external_api") is cancel_api_call
    with pytest.raises(LookupError, match="renamed"):
        undo_for("nowhere:missing")


def test_rollback_of_a_stored_log_goes_through_the_registry(
    reported: list[BaseException],
) -> None:
    journal.clear()
    stored = MemoryActionLog()
    record = {"id": "rec-9"}
    stored.record(Action(step_name(create_record), record, ("9",), {}))
    stored.record(Action(f"{__name__}:call_external_api", "call-9", (record,), {}))
    stored.record(Action("renamed_module:gone", None, (), {}))

    compensation = Saga(stored, name="job-9").rollback()

    assert journal == ["cancel_api_call call-9", "delete_record rec-9"]
    assert compensation is not None
    assert compensation.not_undone == ("renamed_module:gone",)
    assert isinstance(compensation.errors[0], LookupError)
    assert "job-9" in str(compensation)
    assert [a.step for a in stored.pending()] == ["renamed_module:gone"]
    assert reported == []


def test_saga_block_with_a_log_instance() -> None:
    log = MemoryActionLog()

    @compensate(lambda result: None)
    def step() -> str:
        return "kept"

    with saga(log=log) as active:
        step()
        assert active.log is log
        assert [a.result for a in log.pending()] == ["kept"]
    assert log.actions == ()


def test_async_undo_in_a_sync_saga_is_reported_not_awaited(
    reported: list[BaseException],
) -> None:
    async def undo(result: str) -> None:
        raise AssertionError("must not run")

    @compensate(undo)
    async def step() -> str:
        return "r"

    job_error = RuntimeError("job")

    def block() -> None:
        with saga():
            asyncio.run(step())
            raise job_error

    with pytest.raises(RuntimeError) as info:
        block()
    assert info.value is job_error
    compensation = compensation_of(info.value)
    assert compensation is not None
    (error,) = compensation.errors
    assert isinstance(error, TypeError)
    assert "cannot await" in str(error)
    assert reported == [compensation]


# --------------------------------------------------------------------------- decoration time


def test_sync_step_refuses_async_undo() -> None:
    async def undo(result: str) -> None:
        pass

    with pytest.raises(TypeError, match="sync sagas, which cannot await"):

        @compensate(undo)
        def step() -> str:
            return "r"


def test_one_undo_per_step() -> None:
    @compensate(lambda result: None)
    def step() -> str:
        return "r"

    with pytest.raises(TypeError, match="already has @compensate"):
        compensate(lambda result: None)(step)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: compensate("delete"), "callable undo"),  # type: ignore[arg-type]
        (lambda: compensate(MemoryActionLog), "saga\\(log=...\\)"),
        (lambda: compensate(print, name=""), "non-empty string"),
        (lambda: saga(log=3), "ActionLog or a callable"),  # type: ignore[call-overload]
        (lambda: saga(MemoryActionLog), "by keyword"),
        (lambda: saga(log=MemoryActionLog())(print), "needs a log factory"),
    ],
)
def test_bad_arguments_fail_at_decoration(make: Callable[[], object], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        make()


def test_saga_cannot_wrap_a_generator() -> None:
    with pytest.raises(TypeError, match="generator"):

        @saga
        def job() -> Iterator[int]:
            yield 1
