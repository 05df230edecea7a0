from __future__ import annotations

import io
import json
import logging

import pytest

from naq_resilience import setup_logging


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
        logger.handlers.clear()
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
        assert len(logger.handlers) == 1
        logging.getLogger("naq_resilience").info("hidden")
        logging.getLogger("naq_resilience").warning("shown")
        assert "hidden" not in stream.getvalue()
        assert "shown" in stream.getvalue()
        with pytest.raises(ValueError, match="unknown log level"):
            setup_logging("LOUD")
    finally:
        logger.handlers.clear()
