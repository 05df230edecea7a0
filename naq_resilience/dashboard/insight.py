"""The pages over error analytics (`Client.error_rate`, `error_patterns`,
`error_budget`) and over the workers' published logs (`logstream.read_logs`): the
errors page, with each pattern's jobs one click away from their failure records and
tracebacks, and the live worker logs."""

from __future__ import annotations

import collections
import time
import urllib.parse
from datetime import timedelta
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from naq_resilience.dashboard import api
from naq_resilience.dashboard.context import Dashboard, dashboard
from naq_resilience.jetstream.analytics import BudgetStatus, ErrorPattern, ErrorRate
from naq_resilience.models import LogRecord

__all__ = ["API_ROUTES", "PAGE_ROUTES", "VIEWS", "ErrorsReport", "LogsReport"]

WINDOWS = {"15m": 900.0, "1h": 3600.0, "6h": 21600.0, "24h": 86400.0, "7d": 604800.0}
LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_LIMIT = 200
"""Records a logs page shows, the newest; older ones are for `naq worker-logs`."""


class ErrorsReport(msgspec.Struct, kw_only=True):
    """The errors page's data: the window's error rate, its patterns, the day's budget."""

    window: float
    rate: ErrorRate
    patterns: list[ErrorPattern]
    budget: BudgetStatus


class LogsReport(msgspec.Struct, kw_only=True):
    """The newest records (at most 200) the query names, newest first."""

    records: list[LogRecord]
    shown: int
    matched: int
    """Records the query named; only the newest `shown` are here."""


def _window(request: Request) -> tuple[str, float]:
    name = request.query_params.get("window", "1h")
    if name not in WINDOWS:
        raise HTTPException(400, f"window is one of {', '.join(WINDOWS)}")
    return name, WINDOWS[name]


async def errors_report(board: Dashboard, window: float) -> ErrorsReport:
    client = board.client
    rate = await client.error_rate(window)
    patterns = await client.error_patterns(window, limit=30)
    budget = await client.error_budget(0.999, 86400.0)
    return ErrorsReport(window=window, rate=rate, patterns=patterns, budget=budget)


async def errors_api(request: Request) -> Response:
    _, window = _window(request)
    return api.json_response(await errors_report(dashboard(request), window))


async def errors_page(request: Request) -> Response:
    from naq_resilience.dashboard.pages import render

    name, window = _window(request)
    report = await errors_report(dashboard(request), window)
    return render(request, "errors.html", report=report, window=name, windows=list(WINDOWS),
                  now=time.time())  # fmt: skip


# --------------------------------------------------------------------------- logs


def _log_query(params: dict[str, str]) -> Any:
    from naq_resilience.cli._common import parse_time
    from naq_resilience.jetstream.logstream import LogQuery
    from naq_resilience.ops.logging import level_number

    since_text = params.get("since") or "15m"
    since = parse_time(since_text)
    start = time.time() - since.total_seconds() if isinstance(since, timedelta) else (
        since.timestamp()
    )
    return LogQuery(
        since=start,
        level=level_number(params.get("level") or "info"),
        worker=params.get("worker") or None,
        queue=params.get("queue") or None,
        job_id=params.get("job") or None,
    )


async def logs_report(board: Dashboard, params: dict[str, str]) -> LogsReport:
    """The newest records the query names: read from the log stream, the last kept."""
    import argparse

    from naq_resilience.jetstream.logstream import read_logs

    try:
        query = _log_query(params)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise HTTPException(400, str(exc)) from None
    await board.client._ready()
    nc = board.client._nc
    assert nc is not None
    newest: collections.deque[LogRecord] = collections.deque(maxlen=LOG_LIMIT)
    matched = await read_logs(nc, query, newest.append)
    records = list(reversed(newest))
    return LogsReport(records=records, shown=len(records), matched=matched)


_LOG_PARAMS = ("level", "worker", "queue", "job", "since")


def _params(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if k in _LOG_PARAMS}


async def logs_api(request: Request) -> Response:
    return api.json_response(await logs_report(dashboard(request), _params(request)))


async def logs_fragments(board: Dashboard, key: str, _: str) -> dict[str, str]:
    params = dict(urllib.parse.parse_qsl(key))
    report = await logs_report(board, {k: v for k, v in params.items() if k in _LOG_PARAMS})
    html = board.templates.get_template("_logs.html").render(report=report)
    return {"logs": html}


async def logs_page(request: Request) -> Response:
    from naq_resilience.dashboard.pages import render

    params = _params(request)
    key = urllib.parse.urlencode(params)
    fragments = await logs_fragments(dashboard(request), key, "")
    given = {k: params.get(k, "") for k in _LOG_PARAMS}
    return render(request, "logs.html", fragments=fragments, given=given, key=key,
                  levels=LEVELS)  # fmt: skip


VIEWS = {"logs": logs_fragments}
API_ROUTES = [("/api/errors", errors_api, "GET"), ("/api/logs", logs_api, "GET")]
PAGE_ROUTES = [("/errors", errors_page, "GET"), ("/logs", logs_page, "GET")]
