"""Pieces of the worker's hot and failure paths that have a cheaper twin of a stdlib call."""

from __future__ import annotations

import re
import traceback
from types import SimpleNamespace
from typing import Any

from naq_resilience.jetstream.worker import _delivered, _format_traceback, _stream_sequence


def _without_carets(text: str) -> str:
    return "".join(
        line for line in text.splitlines(True) if not re.fullmatch(r"\s*[\^~]+\s*", line)
    )


def _fail(x: int) -> None:
    raise ValueError(f"bad {x}")


def _caught(func: Any, *args: Any) -> BaseException:
    try:
        func(*args)
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def test_traceback_text_matches_the_stdlib_without_carets_even_when_cached() -> None:
    for x in (1, 2):  # the second time the stack text comes from the cache
        exc = _caught(_fail, x)
        exc.add_note(f"note {x}")
        expected = _without_carets("".join(traceback.format_exception(exc)))
        assert _format_traceback(exc) == expected
        assert f"ValueError: bad {x}\nnote {x}\n" in _format_traceback(exc)


def test_chained_errors_keep_their_causes() -> None:
    def chained() -> None:
        try:
            _fail(3)
        except ValueError as exc:
            raise RuntimeError("wrapped") from exc

    text = _format_traceback(_caught(chained))
    assert "ValueError: bad 3" in text
    assert "direct cause" in text
    assert text.rstrip().endswith("RuntimeError: wrapped")


def test_delivery_count_and_stream_sequence_from_both_reply_subject_forms() -> None:
    short = SimpleNamespace(reply="$JS.ACK.NAQ_JOBS.naq-worker-default.3.10.7.1700000000.0")
    long = SimpleNamespace(
        reply="$JS.ACK.hub.ACCHASH.NAQ_JOBS.naq-worker-default.5.11.7.1700000000.0.token"
    )
    assert _delivered(short) == 3  # type: ignore[arg-type]
    assert _delivered(long) == 5  # type: ignore[arg-type]
    assert _stream_sequence(short) == 10  # type: ignore[arg-type]
    assert _stream_sequence(long) == 11  # type: ignore[arg-type]


def test_exception_line_matches_the_stdlib() -> None:
    from naq_resilience import DataValidationError
    from naq_resilience.jetstream.worker import _exception_only

    class Local(Exception):
        pass

    empty = KeyError()
    noted = DataValidationError("row 3")
    noted.add_note("first note")
    noted.add_note("second\nnote")
    for exc in (ValueError("bad"), empty, noted, Local("x"), SyntaxError("bad syntax")):
        assert _exception_only(exc) == "".join(traceback.format_exception_only(exc))
