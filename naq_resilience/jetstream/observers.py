"""What a worker tells the code watching it: each change of a job's state, each failed
attempt. Metrics, outcome counters and logs are observers; the worker knows none of them.

An observer is called on the worker's event loop, right after the history record or
failure record it is given was written, and must return at once: it buffers, counts or
schedules work of its own, never awaits or blocks. An observer that raises is logged
(once a minute per observer) and the job goes on: watching never changes an outcome.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from naq_resilience.models import FailureRecord, JobRecord

__all__ = ["JobObserver", "Observers"]

log = logging.getLogger("naq_resilience.worker")

_LOG_EVERY = 60.0


class JobObserver(Protocol):
    def job_changed(self, record: JobRecord) -> None:
        """A job's new state (running, retrying, completed, failed), as its history has it."""

    def attempt_failed(self, failure: FailureRecord) -> None:
        """One failed attempt, with its error, classification and traceback."""


class Observers:
    """The observers of one worker; calling through it costs nothing when there are none."""

    __slots__ = ("_last_error", "items")

    def __init__(self, observers: tuple[JobObserver, ...] = ()) -> None:
        self.items = observers
        self._last_error: dict[int, float] = {}

    def add(self, observer: JobObserver) -> None:
        self.items = (*self.items, observer)

    def job_changed(self, record: JobRecord) -> None:
        for observer in self.items:
            try:
                observer.job_changed(record)
            except Exception:
                self._failed(observer)

    def attempt_failed(self, failure: FailureRecord) -> None:
        for observer in self.items:
            try:
                observer.attempt_failed(failure)
            except Exception:
                self._failed(observer)

    def _failed(self, observer: JobObserver) -> None:
        now = time.monotonic()
        if now - self._last_error.get(id(observer), -_LOG_EVERY) >= _LOG_EVERY:
            self._last_error[id(observer)] = now
            log.exception("observer %r failed (the job goes on; logged once a minute)", observer)
