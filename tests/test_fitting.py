"""Records fitted to a byte budget: what is kept, what is cut, and that it always fits."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from naq_resilience.fitting import (
    MESSAGE_LIMIT,
    RECORD_LIMIT,
    cut_text,
    fit_dead_letter,
    fit_failure,
    headers_size,
)
from naq_resilience.models import DeadLetter, FailureRecord, JobEnvelope

encode = msgspec.json.Encoder(enc_hook=repr).encode
BUDGET = 1024 * 1024 - 100
ORIGINAL = "naq.originals.default.dead.job-1"


def failure(attempt: int, message: str = "boom", tb: str = "Traceback ...", **extra: Any) -> Any:
    return FailureRecord(
        job_id="job-1", function="m:f", queue="default", attempt=attempt, max_attempts=99,
        error_type="builtins:ValueError", message=message, traceback=tb,
        classification="retryable", outcome="retry", **extra,
    )  # fmt: skip


def letter(job: JobEnvelope | None = None, failures: Any = (), **extra: Any) -> DeadLetter:
    return DeadLetter(
        reason="out of attempts", queue="default", dead_letter_queue="default.dead",
        dead_at=1.0, job=job, failures=list(failures), **extra,
    )  # fmt: skip


def test_cut_text_keeps_short_text_as_the_same_object_and_says_what_it_cut() -> None:
    short = "fine"
    assert cut_text(short, 10) is short
    text = "a" * 50 + "b" * 50
    cut = cut_text(text, 20, tail=5)
    assert cut.startswith("a" * 15)
    assert cut.endswith("b" * 5)
    assert "[cut: 80 of 100 characters left out]" in cut


def test_headers_size_is_what_the_wire_carries() -> None:
    block = b"NATS/1.0\r\nNats-Msg-Id: abc\r\nNats-TTL: 60\r\n\r\n"
    assert headers_size({"Nats-Msg-Id": "abc", "Nats-TTL": "60"}) == len(block)
    assert headers_size(None) == 0


def test_a_failure_record_keeps_the_head_of_a_huge_message_and_the_tail_of_its_traceback() -> None:
    tb = "Traceback (most recent call last):\n" + "  frame\n" * 10_000 + "ValueError: last line\n"
    record, payload = fit_failure(failure(1, "m" * 2_000_000, tb), encode)
    assert len(payload) <= RECORD_LIMIT
    assert record.cut == ["message", "traceback"]
    assert record.message.startswith("m" * MESSAGE_LIMIT)
    assert "of 2,000,000 characters left out" in record.message
    assert record.traceback.startswith("Traceback (most recent call last):")
    assert record.traceback.endswith("ValueError: last line\n")
    assert msgspec.json.decode(payload, type=FailureRecord) == record


def test_a_context_no_encoder_takes_or_too_big_is_shrunk_to_reprs() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    deep: list[Any] = []
    for _ in range(2000):
        deep = [deep]
    for context in ({"deep": deep}, {"blob": "z" * 200_000}, {"obj": Opaque(), "n": 3}):
        record, payload = fit_failure(failure(1, context=context), encode)
        assert len(payload) <= RECORD_LIMIT
        assert set(record.context) == set(context)
    record, _ = fit_failure(failure(1, context={"blob": "z" * 200_000}), encode)
    assert record.cut == ["context"]
    assert record.context["blob"].startswith("z" * 200)


def test_a_letter_that_fits_is_left_as_it_is() -> None:
    original = letter(JobEnvelope(id="job-1", function="m:f", args=[1]), [failure(1)])
    payload, moved = fit_dead_letter(original, encode, BUDGET, b"{...}", ORIGINAL)
    assert not moved
    assert msgspec.json.decode(payload, type=DeadLetter) == original


def test_a_big_job_message_is_moved_out_whole_and_the_history_kept() -> None:
    job = JobEnvelope(id="job-1", function="m:f", args=["a" * 1_048_000], kwargs={"k": 1})
    raw = encode(job)
    history = [failure(i) for i in range(1, 4)]
    payload, moved = fit_dead_letter(letter(job, history), encode, BUDGET, raw, ORIGINAL)
    assert moved
    fitted = msgspec.json.decode(payload, type=DeadLetter)
    assert len(payload) <= BUDGET
    assert fitted.original_subject == ORIGINAL
    assert fitted.job is not None
    assert (fitted.job.args, fitted.job.kwargs, fitted.job.function) == ([], {}, "m:f")
    assert fitted.failures == history
    assert f"({len(raw):,} bytes)" in fitted.cut[0]


def test_a_long_history_keeps_its_newest_records_and_counts_the_others() -> None:
    history = [failure(i, "e" * 4000, "t" * 16_000) for i in range(1, 101)]  # ~2 MB
    job = JobEnvelope(id="job-1", function="m:f")
    payload, moved = fit_dead_letter(letter(job, history), encode, BUDGET, encode(job), ORIGINAL)
    fitted = msgspec.json.decode(payload, type=DeadLetter)
    assert not moved
    assert len(payload) <= BUDGET
    kept = [f.attempt for f in fitted.failures]
    assert kept == list(range(101 - len(kept), 101))  # the newest, in order
    assert fitted.failures_left_out == 100 - len(kept) > 0
    assert "oldest failure records were left out" in fitted.cut[-1]


def test_a_hostile_envelope_still_gets_a_minimal_letter_that_fits() -> None:
    job = JobEnvelope(id="job-1", function="f" * 2_000_000)  # no registry would take it
    raw = encode(job)
    reason = f"function {job.function} is not allowed"
    budget = 64 * 1024
    hostile = DeadLetter(
        reason=reason, queue="default", dead_letter_queue="default.dead", dead_at=1.0, job=job
    )
    payload, moved = fit_dead_letter(hostile, encode, budget, raw, ORIGINAL)
    fitted = msgspec.json.decode(payload, type=DeadLetter)
    assert len(payload) <= budget
    assert moved  # the message itself is kept whole beside it
    assert fitted.job is None
    assert fitted.reason.startswith("function ffff")
    assert "characters left out" in fitted.reason


@settings(max_examples=60, deadline=None)
@given(
    args=st.integers(0, 400_000),
    failures=st.lists(st.tuples(st.integers(0, 50_000), st.integers(0, 50_000)), max_size=60),
    reason=st.integers(0, 300_000),
    budget=st.integers(16 * 1024, 1024 * 1024),
)
def test_a_fitted_letter_always_fits_and_keeps_the_newest_failure(
    args: int, failures: list[tuple[int, int]], reason: int, budget: int
) -> None:
    job = JobEnvelope(id="job-1", function="m:f", args=["a" * args])
    history = [
        fit_failure(failure(i + 1, "m" * m, "t" * t), encode)[0]
        for i, (m, t) in enumerate(failures)
    ]
    full = DeadLetter(
        reason="r" * reason, queue="default", dead_letter_queue="default.dead", dead_at=1.0,
        job=job, failures=history,
    )  # fmt: skip
    payload, moved = fit_dead_letter(full, encode, budget, encode(job), ORIGINAL)
    assert len(payload) <= budget
    fitted = msgspec.json.decode(payload, type=DeadLetter)
    assert fitted.failures_left_out + len(fitted.failures) == len(history)
    if fitted.failures:
        assert fitted.failures[-1].attempt == len(history)
    assert moved == (fitted.original_subject == ORIGINAL)
