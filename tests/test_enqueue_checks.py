"""Enqueue binds each call to its function's signature and refuses what does not fit.

No server for the single enqueue (its checks run before connecting); `enqueue_many`
checks its calls once connected, so those tests use the test server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from naq_resilience import Client, enqueue_sync
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.signatures import CallShape, call_shape

import jobs_for_registry as jobs
import worker_jobs

OFFLINE = "nats://127.0.0.1:9"  # nothing listens there


def enqueue_offline(func: Any, *args: Any, **kwargs: Any) -> None:
    async def main() -> None:
        await Client(OFFLINE).enqueue(func, *args, **kwargs)

    asyncio.run(main())


# --------------------------------------------------------------------------- the call's shape


def test_a_misspelled_option_is_refused_naming_the_option_it_meant() -> None:
    with pytest.raises(TypeError) as caught:
        enqueue_offline(worker_jobs.sync_multiply, 6, 7, max_retry=5)
    assert str(caught.value) == (
        "cannot enqueue worker_jobs:sync_multiply: sync_multiply(a, b) takes "
        "no keyword argument 'max_retry' (every keyword that is not an enqueue option goes "
        "to the function); did you mean the enqueue option max_retries=? Nothing was enqueued"
    )


def test_the_module_level_enqueue_refuses_it_too() -> None:
    with pytest.raises(TypeError, match=r"did you mean the enqueue option dead_letter_queue=\?"):
        enqueue_sync(worker_jobs.sync_multiply, 6, 7, dead_leter_queue="x", nats_url=OFFLINE)


def test_a_misspelled_parameter_is_named_too() -> None:
    with pytest.raises(TypeError, match=r"takes no keyword argument 'tag'.* its parameter tags=\?"):
        enqueue_offline(jobs.typed, 1, "2026-01-01T00:00:00Z", (1, 2), {}, {}, tag={"a"})


def test_a_keyword_like_nothing_lists_the_options() -> None:
    with pytest.raises(TypeError, match=r"neither one of its parameters nor an enqueue option "
                       r"\(queue_name, max_retries, "):  # fmt: skip
        enqueue_offline(worker_jobs.sync_multiply, 6, 7, zzz=1)


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        ((1, 2, 3), {}, "too many positional arguments"),
        ((1,), {}, "missing a required argument: 'b'"),
        ((1, 2), {"a": 3}, "multiple values for argument 'a'"),
    ],
)
def test_a_call_that_does_not_bind_is_refused_with_the_reason(
    args: tuple[Any, ...], kwargs: dict[str, Any], why: str
) -> None:
    with pytest.raises(TypeError) as caught:
        enqueue_offline(worker_jobs.sync_multiply, *args, **kwargs)
    assert str(caught.value) == (
        "cannot enqueue worker_jobs:sync_multiply: sync_multiply(a, b) cannot be called "
        f"with these arguments ({why}), so a worker would fail the job with TypeError; "
        "nothing was enqueued"
    )


def test_a_parameter_named_like_an_option_is_explained() -> None:
    with pytest.raises(TypeError, match=r"\(missing a required argument: 'timeout'\) \(timeout: "
                       r"an enqueue option of the same name is kept by enqueue"):  # fmt: skip
        enqueue_offline(worker_jobs.wait_for, timeout=1)


def test_the_decorated_functions_own_signature_is_checked() -> None:
    """@retry's wrapper takes *args, **kwargs; the function under it does not."""
    with pytest.raises(TypeError, match=r"fails_twice\(key\) takes no keyword"):
        enqueue_offline(worker_jobs.fails_twice, "k", retries=2)


def test_a_classmethod_is_checked_without_its_class_argument() -> None:
    with pytest.raises(TypeError, match="too many positional arguments"):
        enqueue_offline(jobs.Mailer.create, "a", "b", "c")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, 2), {"anything": 3}),  # **labels takes any keyword
        ((), {}),
        ((1.5,) * 40, {}),  # *numbers takes any number
    ],
)
def test_variadic_functions_accept_what_they_accept(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    shape = call_shape(jobs.variadic)
    assert shape is not None
    shape.check("jobs_for_registry:variadic", args, kwargs, ())


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "fits"),
    [
        (jobs.untyped, (1,), {}, True),
        (jobs.untyped, (1,), {"b": 2}, True),
        (jobs.untyped, (), {"a": 1}, True),
        (jobs.untyped, (), {"b": 1}, False),
        (jobs.untyped, (1, 2, 3), {}, False),
        (jobs.typed, (1, 2, 3, 4, 5), {"tags": 1}, True),
        (jobs.typed, (1, 2, 3, 4), {"item": 5}, True),
        (jobs.typed, (1, 2, 3, 4), {}, False),
        (jobs.positional_only, (1, 2), {}, True),
        (jobs.positional_only, (1,), {"b": 2}, True),
        (jobs.positional_only, (), {"a": 1, "b": 2}, False),
    ],
)
def test_the_quick_check_agrees_with_bind(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], fits: bool
) -> None:
    shape = call_shape(func)
    assert isinstance(shape, CallShape)
    if fits:
        shape.check("m:f", args, kwargs, ())
    else:
        assert not shape.fits(args, kwargs)
        with pytest.raises(TypeError, match=r"^cannot enqueue m:f: "):
            shape.check("m:f", args, kwargs, ())


def test_a_shape_is_computed_once_per_function() -> None:
    assert call_shape(jobs.untyped) is call_shape(jobs.untyped)


@pytest.mark.usefixtures("clean_jetstream")
def test_enqueue_many_refuses_a_call_that_does_not_fit_and_enqueues_none(nats_url: str) -> None:
    async def main() -> int:
        async with Client(nats_url) as client:
            with pytest.raises(TypeError, match=r"missing a required argument: 'b'"):
                await client.enqueue_many(worker_jobs.sync_multiply, [(1, 2), (3,)])
            with pytest.raises(TypeError, match=r"did you mean the enqueue option timeout=\?"):
                await client.enqueue_many(
                    worker_jobs.sync_multiply, [(1,)], kwargs={"b": 2, "timout": 5}
                )
            nc = await nats.connect(nats_url)
            try:
                info = await nc.jetstream().stream_info(layout.JOB_STREAM)
            finally:
                await nc.close()
            return info.state.messages

    assert asyncio.run(main()) == 0
