"""The dashboard as an ASGI application: `create_app(...)`, served by `naq dashboard`.

One `Client` for the whole process, one `Sampler` reading the fleet for every page.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import jinja2
from markupsafe import escape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from naq_resilience.dashboard import api, incidents, insight, pages
from naq_resilience.dashboard.context import Dashboard
from naq_resilience.dashboard.openapi import openapi
from naq_resilience.dashboard.sampler import Sampler
from naq_resilience.dashboard.security import Credentials, Guard

__all__ = ["create_app", "templates"]

log = logging.getLogger("naq_resilience.dashboard")


def templates() -> jinja2.Environment:
    """The page templates, escaping every value unless marked safe in Python."""
    from naq_resilience.cli._common import ago, utc

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("naq_resilience.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = utc
    env.filters["ago"] = ago
    env.filters["pretty"] = _pretty
    env.filters["duration"] = _duration
    return env


def _pretty(value: Any) -> str:
    import msgspec

    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _duration(seconds: float) -> str:
    """`3600` -> `1h`, `90` -> `90s`: the units `naq` reads."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


async def _openapi(request: Request) -> Response:
    return api.json_response(openapi(request.app))


async def _error(request: Request, exc: Exception) -> Response:
    """An error as JSON for the API, as a page for people; its message escaped."""
    from naq_resilience.jetstream.deadletters import AlreadyReplayedError

    if isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    elif isinstance(exc, AlreadyReplayedError):
        status, message = 409, str(exc)
    elif isinstance(exc, LookupError):
        status, message = 404, str(exc).strip("'\"")
    elif isinstance(exc, (ValueError, TypeError)):
        status, message = 400, str(exc)
    elif isinstance(exc, _unreachable()):
        status, message = 502, f"the NATS server did not answer: {type(exc).__name__}: {exc}"
    else:
        log.error("naq dashboard: %s %s failed", request.method, request.url.path, exc_info=exc)
        status, message = 500, f"the dashboard failed: {type(exc).__name__}: {exc}"
    if request.url.path.startswith("/api/"):
        return api.json_response({"error": message, "status": status}, status)
    if "csrf" not in request.scope.get("state", {}):
        return HTMLResponse(str(escape(message)), status)
    return pages.render(request, "error.html", status, status=status, message=message)


def _unreachable() -> tuple[type[Exception], ...]:
    import nats.errors

    from naq_resilience.jetstream.connection import (
        JetStreamUnavailableError,
        NatsUnavailableError,
    )

    return (nats.errors.Error, NatsUnavailableError, JetStreamUnavailableError, OSError)


def create_app(
    nats_url: str | None = None,
    *,
    credentials: Credentials | None = None,
    loopback_only: bool = True,
    sample_every: float = 2.0,
) -> Starlette:
    """The dashboard for the NATS server at `nats_url` ($NAQ_NATS_URL by default).

    `loopback_only` answers only requests addressed to localhost (set it when bound
    to a loopback address); `credentials` (a token, or user and password) are asked
    of every request when given.
    """
    from naq_resilience.jetstream.client import Client

    credentials = credentials or Credentials()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = Client(nats_url)
        sampler = Sampler(client, every=sample_every)
        views = {**pages.VIEWS, **insight.VIEWS}
        app.state.dashboard = Dashboard(client, sampler, templates(), credentials, views)
        sampler.start()
        try:
            yield
        finally:
            await sampler.stop()
            await client.close()

    routes: list[Route | Mount] = [
        Route(path, handler, methods=[method])
        for path, handler, method in [*api.ROUTES, *insight.API_ROUTES, *incidents.API_ROUTES]
    ]
    routes.append(Route("/api/openapi.json", _openapi, methods=["GET"]))
    routes += [
        Route(path, handler, methods=[method])
        for path, handler, method in [*pages.ROUTES, *insight.PAGE_ROUTES, *incidents.PAGE_ROUTES]
    ]
    routes.append(Mount("/static", StaticFiles(packages=[("naq_resilience.dashboard", "static")]),
                        name="static"))  # fmt: skip
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            kind: _error for kind in (Exception, HTTPException, LookupError, ValueError, TypeError)
        },
    )
    app.add_middleware(Guard, credentials=credentials, loopback_only=loopback_only)
    return app

