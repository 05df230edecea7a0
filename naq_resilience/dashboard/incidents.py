"""The incidents page: `list_incidents_async`, `acknowledge_incident_async` and
`resolve_incident_async` (ops/incidents.py), as `naq incidents list|ack|resolve`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from naq_resilience.dashboard import api
from naq_resilience.dashboard.context import dashboard
from naq_resilience.models import Incident

__all__ = ["API_ROUTES", "PAGE_ROUTES", "IncidentAction"]

OPERATOR = "naq-dashboard"
"""Who acknowledged or resolved, as the incident records it (no user names without sign-in)."""


class IncidentAction(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    note: str | None = None


async def _list(request: Request) -> list[Incident]:
    from naq_resilience.ops.incidents import list_incidents_async

    wanted = (request.query_params.get("status") or "").upper()
    statuses = [wanted] if wanted in ("OPEN", "ACKNOWLEDGED", "RESOLVED") else None
    return await list_incidents_async(dashboard(request).client, statuses)


async def incidents_api(request: Request) -> Response:
    return api.json_response(await _list(request))


async def _act(request: Request, name: str, incident_id: str, note: str | None) -> Incident:
    from naq_resilience.ops import incidents

    call = {"ack": incidents.acknowledge_incident_async,
            "resolve": incidents.resolve_incident_async}[name]  # fmt: skip
    return await call(dashboard(request).client, incident_id, OPERATOR, note)


Endpoint = Callable[[Request], Awaitable[Response]]


def _api_action(name: str) -> Endpoint:
    async def act(request: Request) -> Response:
        given = await api.body(request, IncidentAction)
        return api.json_response(await _act(request, name, given.id, given.note))

    return act


async def incidents_page(request: Request) -> Response:
    from naq_resilience.dashboard.pages import render

    return render(request, "incidents.html", incidents=await _list(request), now=time.time(),
                  status=request.query_params.get("status", ""))  # fmt: skip


def _page_action(name: str, done: str) -> Endpoint:
    async def act(request: Request) -> Response:
        from naq_resilience.dashboard.pages import back, checked_form

        form = await checked_form(request)
        note = str(form.get("note") or "") or None
        await _act(request, name, str(form.get("id", "")), note)
        return back("/incidents", done)

    return act


API_ROUTES = [
    ("/api/incidents", incidents_api, "GET"),
    ("/api/incidents/ack", _api_action("ack"), "POST"),
    ("/api/incidents/resolve", _api_action("resolve"), "POST"),
]
PAGE_ROUTES = [
    ("/incidents", incidents_page, "GET"),
    ("/incidents/ack", _page_action("ack", "acknowledged"), "POST"),
    ("/incidents/resolve", _page_action("resolve", "resolved"), "POST"),
]
