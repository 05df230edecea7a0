from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from naq_resilience import setup_logging


@pytest.fixture(autouse=True)
def _restore_library_logger() -> Iterator[None]:
    logger = logging.getLogger("naq_resilience")
    level, propagate = logger.level, logger.propagate
    yield
    logger.setLevel(level)
    logger.propagate = propagate


def test_json_lines_carry_extras_and_exceptions() -> None:
    stream = io.StringIO()
    logger = setup_logging("DEBUG", json=True, stream=stream)
    try:
        logging.getLogger("naq_resilience.worker").info("job done", extra={"job_id": "j1"})
        try:
            raise ConnectionError("down")
        except ConnectionError:
            logging.getLogger("naq_resilience").exception("failed")
        first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    finally:
        for handler in [h for h in logger.handlers if getattr(h, "_naq", False)]:
            logger.removeHandler(handler)
    assert first["message"] == "job done"
    assert first["level"] == "info"
    assert first["logger"] == "naq_resilience.worker"
    assert first["job_id"] == "j1"
    assert "ConnectionError: down" in second["exception"]


def test_calling_again_replaces_its_handler_and_bad_levels_are_refused() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=io.StringIO())
    logger = setup_logging("WARNING", stream=stream)
    try:
        ours = [h for h in logger.handlers if getattr(h, "_naq", False)]
        assert len(ours) == 1  # pytest's own capture handlers may sit beside it
        logging.getLogger("naq_resilience").info("hidden")
        logging.getLogger("naq_resilience").warning("shown")
        assert "hidden" not in stream.getvalue()
        assert "shown" in stream.getvalue()
        with pytest.raises(ValueError, match="unknown log level"):
            setup_logging("LOUD")
    finally:
        for handler in [h for h in logger.handlers if getattr(h, "_naq", False)]:
            logger.removeHandler(handler)
