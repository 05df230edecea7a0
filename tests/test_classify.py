from __future__ import annotations

import asyncio

import pytest

import naq_resilience.policies.classify as classify_module
from naq_resilience.policies.classify import (
    Classification,
    classify,
    configure_errors,
    context_of,
    error_context,
    on_critical,
    remove_critical_hook,
    report_critical,
)
from naq_resilience.policies.errors import (
    AuthenticationError,
    CircuitBreakerOpenError,
    CorruptionError,
    Critical,
    DataCorruptionError,
    DataValidationError,
    EnrichedError,
    NonRetryable,
    RateLimitError,
    Retryable,
    SecurityError,
    SystemFailureError,
    TemporaryResourceError,
)

R, N, C = Classification.RETRYABLE, Classification.NON_RETRYABLE, Classification.CRITICAL


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionError("x"), R),
        (ConnectionRefusedError("x"), R),
        (TimeoutError("x"), R),
        (TemporaryResourceError("x"), R),
        (RateLimitError("x", retry_after=3), R),
        (CircuitBreakerOpenError("b", 1.0), R),
        (ValueError("x"), N),
        (TypeError("x"), N),
        (PermissionError("x"), N),
        (AuthenticationError("x"), N),
        (DataValidationError("x"), N),
        (SecurityError("x"), C),
        (CorruptionError("x"), C),
        (SystemFailureError("x"), C),
        (KeyError("unknown to every list"), R),
    ],
)
def test_defaults(exc: BaseException, expected: Classification) -> None:
    assert classify(exc) is expected


def test_corruption_alias() -> None:
    assert DataCorruptionError is CorruptionError


def test_most_specific_class_wins() -> None:
    class FlakyValue(Retryable, ValueError):
        pass

    class StrictConnection(NonRetryable, ConnectionError):
        pass

    assert classify(FlakyValue()) is R
    assert classify(StrictConnection()) is N


def test_critical_beats_everything() -> None:
    class Sneaky(ConnectionError, Critical):
        pass

    assert classify(Sneaky(), retry_on=(Sneaky,)) is C
    assert classify(SecurityError(), retry_on=(SecurityError,), ignore_on=()) is C


def test_ignore_on_beats_retry_on() -> None:
    assert classify(ConnectionError(), retry_on=(ConnectionError,), ignore_on=(OSError,)) is N


def test_retry_on_is_the_complete_list() -> None:
    assert classify(ValueError(), retry_on=(ValueError,)) is R
    assert classify(ConnectionError(), retry_on=(ValueError,)) is N
    assert classify(ConnectionResetError(), retry_on=(ConnectionError,)) is R


def test_configure_changes_defaults_and_keeps_markers() -> None:
    class Mine(Exception):
        pass

    class MyRetryable(Retryable):
        pass

    assert classify(Mine()) is R
    configure_errors(non_retryable=[Mine], unknown=Classification.NON_RETRYABLE)
    assert classify(Mine()) is N
    assert classify(KeyError()) is N
    assert classify(ValueError()) is N
    assert classify(MyRetryable()) is R
    assert Mine in classify_module.NON_RETRYABLE_ERRORS
    assert NonRetryable in classify_module.NON_RETRYABLE_ERRORS


def test_configure_is_readable_from_package_root() -> None:
    import naq_resilience

    class Mine(Exception):
        pass

    configure_errors(critical=[Mine])
    assert Mine in naq_resilience.CRITICAL_ERRORS
    assert classify(Mine()) is C


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retryable": ["ConnectionError"]}, "not names"),
        ({"retryable": [int]}, "exception classes"),
        ({"critical": 5}, "exception class or a tuple"),
        ({"unknown": "retryable"}, "Classification member"),
    ],
)
def test_configure_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        configure_errors(**kwargs)  # type: ignore[arg-type]


def test_rate_limit_validates_retry_after() -> None:
    assert RateLimitError("slow", retry_after=2.5).retry_after == 2.5
    with pytest.raises(ValueError, match="retry_after"):
        RateLimitError("slow", retry_after=-1)


def test_critical_hooks_run_once_per_error() -> None:
    seen: list[BaseException] = []
    hook = on_critical(seen.append)
    try:
        err = SecurityError("intrusion")
        assert report_critical(err) is True
        assert report_critical(err) is False
        assert seen == [err]
    finally:
        remove_critical_hook(hook)


def test_failing_hook_does_not_hide_the_error() -> None:
    def broken(exc: BaseException) -> None:
        raise RuntimeError("hook bug")

    on_critical(broken)
    try:
        err = CorruptionError("bad page")
        report_critical(err)
        assert any("hook bug" in note for note in err.__notes__)
    finally:
        remove_critical_hook(broken)


def test_on_critical_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        on_critical("not a function")  # type: ignore[arg-type]


def test_error_context_keeps_type_and_merges() -> None:
    with (
        pytest.raises(KeyError) as info,
        error_context(job="outer", user=7),
        error_context(job="inner"),
    ):
        raise KeyError("missing")
    assert context_of(info.value) == {"job": "inner", "user": 7}


def test_error_context_async() -> None:
    async def main() -> None:
        async with error_context(order=42):
            raise ConnectionError("down")

    with pytest.raises(ConnectionError) as info:
        asyncio.run(main())
    assert context_of(info.value) == {"order": 42}


def test_error_context_passes_success_through() -> None:
    with error_context(a=1):
        value = 1 + 1
    assert value == 2


def test_enriched_error_context() -> None:
    err = EnrichedError("failed to charge", context={"order": 9})
    assert err.context == {"order": 9}
    assert "order=9" in str(err)
    with pytest.raises(EnrichedError) as info, error_context(user=3):
        raise err
    assert context_of(info.value) == {"order": 9, "user": 3}
