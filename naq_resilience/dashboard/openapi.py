"""`/api/openapi.json`: the JSON API described from the structs it encodes and decodes
(`msgspec.json.schema_components`), so the description is the code's own."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.routing import Route

from naq_resilience.dashboard import schema
from naq_resilience.dashboard.incidents import IncidentAction
from naq_resilience.dashboard.insight import ErrorsReport, LogsReport
from naq_resilience.jetstream.schedules import ScheduleInfo
from naq_resilience.jetstream.status import FleetStatus
from naq_resilience.models import BreakerRecord, Incident, JobRecord

__all__ = ["DESCRIBED", "openapi"]

_FILTER_PARAMS = [
    {"name": name, "in": "query", "required": False, "schema": {"type": "string"},
     "description": desc}
    for name, desc in (
        ("dead_letter_queue", "a dead-letter queue (emails.dead) or a queue (emails)"),
        ("queue", "the queue the job ran on"),
        ("function", "module:function, or a glob"),
        ("error_type", "module:Error, a bare Error, or a glob"),
        ("classification", "retryable, non_retryable, critical, unreadable, unroutable, ..."),
        ("text", "looked for in the reason and error messages, ignoring case"),
        ("since", "dead since: a duration ago (2h) or an ISO time"),
        ("until", "dead until: a duration ago (2h) or an ISO time"),
        ("replayed", "true or false"),
    )
]  # fmt: skip
_PAGE_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 50,
                                                 "minimum": 1, "maximum": 500}},
    {"name": "after", "in": "query", "schema": {"type": "integer", "default": 0},
     "description": "the previous page's next_after"},
]  # fmt: skip

# path -> method -> (summary, request type, response type, extra parameters)
DESCRIBED: dict[str, dict[str, tuple[str, Any, Any, list[dict[str, Any]]]]] = {
    "/api/status": {"get": ("Queues, live workers, breakers, dead-letter depths",
                            None, FleetStatus, [])},
    "/api/throughput": {"get": ("The sampled throughput and depth, oldest first",
                                None, schema.Throughput, [])},
    "/api/dead-letters": {"get": ("A page of dead letters, oldest first", None,
                                  schema.DeadLetterList, _FILTER_PARAMS + _PAGE_PARAMS)},
    "/api/dead-letters/count": {"get": ("How many dead letters the filter names", None,
                                        schema.Count, _FILTER_PARAMS)},
    "/api/dead-letters/replay": {"post": ("Replay letters by id, or every letter a filter "
                                          "names", schema.BulkRequest, schema.BulkResult, [])},
    "/api/dead-letters/discard": {"post": ("Discard letters by id, or every letter a filter "
                                           "names", schema.BulkRequest, schema.BulkResult, [])},
    "/api/dead-letters/{letter_id}": {"get": ("A dead letter with its full failure history",
                                              None, schema.DeadLetterDetail, [])},
    "/api/dead-letters/{letter_id}/replay": {"post": ("Run the letter's job again",
                                                      schema.ReplayRequest, schema.JobRef, [])},
    "/api/dead-letters/{letter_id}/reschedule": {
        "post": ("Run the letter's job again later", schema.RescheduleRequest, schema.JobRef, [])
    },
    "/api/schedules": {"get": ("Every schedule", None, list[ScheduleInfo], [])},
    "/api/schedules/cancel": {"post": ("Cancel a schedule", schema.NameRequest, schema.Done, [])},
    "/api/schedules/pause": {"post": ("Pause a schedule", schema.NameRequest, schema.Done, [])},
    "/api/schedules/resume": {"post": ("Resume a schedule", schema.NameRequest, schema.Done, [])},
    "/api/breakers": {"get": ("Every shared circuit breaker", None, list[BreakerRecord], [])},
    "/api/breakers/open": {"post": ("Force a breaker open on every worker", schema.NameRequest,
                                    BreakerRecord, [])},
    "/api/breakers/close": {"post": ("Force a breaker closed on every worker",
                                     schema.NameRequest, BreakerRecord, [])},
    "/api/breakers/reset": {"post": ("Close a breaker and forget it", schema.NameRequest,
                                     BreakerRecord, [])},
    "/api/jobs/{job_id}": {"get": ("A job's latest record from the history", None,
                                   JobRecord, [])},
    "/api/events": {"get": ("Server-sent events: a page's HTML fragments after each sample "
                            "(text/event-stream)", None, None,
                            [{"name": "view", "in": "query", "schema": {
                                "type": "string", "enum": ["overview", "breakers", "job", "logs"]}},
                             {"name": "id", "in": "query", "schema": {"type": "string"},
                              "description": "view=job: the job id; view=logs: the query"}])},
    "/api/errors": {"get": ("The window's error rate, error patterns, and the day's error "
                            "budget (99.9%)", None, ErrorsReport,
                            [{"name": "window", "in": "query", "schema": {
                                "type": "string", "enum": ["15m", "1h", "6h", "24h", "7d"],
                                "default": "1h"}}])},
    "/api/logs": {"get": ("The newest 200 worker log records the query names, newest first",
                          None, LogsReport,
                          [{"name": n, "in": "query", "schema": {"type": "string"},
                            "description": d} for n, d in (
                              ("level", "at least: debug, info (default), warning, ..."),
                              ("worker", "a worker id or glob"), ("queue", "a queue"),
                              ("job", "a job id"), ("since", "15m (default), 2h or ISO"))])},
    "/api/incidents": {"get": ("Incidents, newest first", None, list[Incident],
                               [{"name": "status", "in": "query", "schema": {
                                   "type": "string",
                                   "enum": ["OPEN", "ACKNOWLEDGED", "RESOLVED"]}}])},
    "/api/incidents/ack": {"post": ("Acknowledge an incident", IncidentAction, Incident, [])},
    "/api/incidents/resolve": {"post": ("Resolve an incident", IncidentAction, Incident, [])},
    "/api/openapi.json": {"get": ("This description", None, None, [])},
}  # fmt: skip


def openapi(app: Starlette) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every `/api/` route of `app`."""
    types = [
        kind
        for methods in DESCRIBED.values()
        for _, request, response, _ in methods.values()
        for kind in (request, response)
        if kind is not None
    ]
    shapes, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    shape_of = dict(zip(map(repr, types), shapes, strict=True))
    paths: dict[str, Any] = {}
    for route in app.routes:
        if not isinstance(route, Route) or not route.path.startswith("/api/"):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            summary, request, response, params = DESCRIBED[route.path][method.lower()]
            operation: dict[str, Any] = {"summary": summary, "parameters": list(params)}
            for name in route.param_convertors:
                operation["parameters"].append(
                    {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                )
            if request is not None:
                operation["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": shape_of[repr(request)]}}}  # fmt: skip
            content = (
                {"application/json": {"schema": shape_of[repr(response)]}}
                if response is not None
                else {"text/event-stream": {}}
                if route.path == "/api/events"
                else {"application/json": {}}
            )
            operation["responses"] = {
                "200": {"description": "OK", "content": content},
                "400": {"description": "a bad value; `{error, status}`"},
                "404": {"description": "nothing by that id"},
            }
            paths.setdefault(route.path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "naq dashboard", "version": "1",
                 "description": "The JSON API behind every page of `naq dashboard`. POSTs take "
                                "application/json; with sign-in on, send "
                                "`Authorization: Bearer <token>` (or HTTP Basic)."},
        "paths": paths,
        "components": {"schemas": components},
    }  # fmt: skip
