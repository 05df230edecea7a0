"""`setup_logging`, as in NAQ: one call to see what the library and the workers do.

The library logs under `naq_resilience`, never above DEBUG per job (a log line costs
more than a no-op job), INFO for a worker's start and stop, WARNING and ERROR for what
a person should look at. `json=True` writes one JSON object per line, which log
pipelines parse without regexes; fields passed with `extra=` are kept.
"""

from __future__ import annotations

import json as _json
import logging
import sys
from typing import IO, Any

__all__ = ["JsonFormatter", "setup_logging"]

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _json.dumps(entry, default=repr)


def setup_logging(
    level: int | str = "INFO", *, json: bool = False, stream: IO[str] | None = None
) -> logging.Logger:
    """Send the library's logs to `stream` (stderr) at `level`; safe to call again.

    Only the `naq_resilience` logger is touched, so an application's own logging
    configuration stays as it is.
    """
    logger = logging.getLogger("naq_resilience")
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
        level = numeric
    logger.setLevel(level)
    for handler in [h for h in logger.handlers if getattr(h, "_naq", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._naq = True  # type: ignore[attr-defined]
    handler.setFormatter(
        JsonFormatter()
        if json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger.addHandler(handler)
    logger.propagate = False
    return logger
