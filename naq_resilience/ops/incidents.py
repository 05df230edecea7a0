"""Incidents for code and people: the library form of the guide's `handle_critical_error`,
and listing, acknowledging and resolving incidents.

NAQ's guide writes `handle_critical_error(error, context)` by hand: make an id, log
CRITICAL, build a record with status OPEN, alert the incident team. Here it is one call
that does the same against JetStream, so the incident is the fleet's, not a process's:
the same error again (from this process or any worker) adds to the open incident instead
of opening another, and `naq incidents` sees it. The alert goes to the paging hooks
(`on_incident`) and to any `sinks` given, once, when the incident opens; a monitor with
an `IncidentRule` keeps paging until someone acknowledges it.

The async functions take a `Client`; the sync ones (the guide's style) use the shared
sync client of `nats_url` (or `NAQ_NATS_URL`), as `get_job` and the dead-letter
functions do.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from naq_resilience.jetstream.client import Client, _default_sync_client
from naq_resilience.jetstream.incidents import (
    IncidentBook,
    IncidentNotFoundError,
    where_of_exception,
)
from naq_resilience.models import Alert, Incident, IncidentStatus, Severity
from naq_resilience.ops.alerts import severity_of
from naq_resilience.ops.sinks import Sink
from naq_resilience.policies.classify import context_of
from naq_resilience.policies.pipeline import qualified_name

__all__ = [
    "IncidentNotFoundError",
    "acknowledge_incident",
    "acknowledge_incident_async",
    "get_incident",
    "get_incident_async",
    "handle_critical_error",
    "handle_critical_error_async",
    "list_incidents",
    "list_incidents_async",
    "resolve_incident",
    "resolve_incident_async",
]

log = logging.getLogger("naq_resilience.incidents")


def _jsonable(context: dict[str, Any]) -> dict[str, Any]:
    """Context values that are not JSON become their `repr`, as in failure records."""
    return msgspec.json.decode(msgspec.json.encode(context, enc_hook=repr))  # type: ignore[no-any-return]


def _source() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def handle_critical_error_async(
    client: Client,
    error: BaseException | str,
    context: dict[str, Any] | None = None,
    *,
    severity: Severity | str = Severity.CRITICAL,
    sinks: Sequence[Sink] = (),
    job_id: str | None = None,
) -> Incident:
    """Open an incident for `error` (or add to the open one of the same error) and, when
    it opens, alert: the `on_incident` hooks, then each of `sinks`. The incident.

    `error` is an exception (its class, message, where it was raised and its
    `error_context` are recorded; the class and the place make it the same incident) or
    a description (the same text makes it the same incident). `context` is added to the
    record.
    """
    same_as = None
    if isinstance(error, BaseException):
        error_type, message = qualified_name(type(error)), str(error)
        where = where_of_exception(error)
        merged = {**context_of(error), **(context or {})}
    else:
        error_type, message, where, merged = "message", str(error), "", dict(context or {})
        same_as = message
    book = await IncidentBook.of(client)
    incident, opened = await book.report(
        error_type=error_type,
        message=message,
        where=where,
        context=_jsonable(merged),
        severity=severity_of(severity),
        job_id=job_id,
        source=_source(),
        same_as=same_as,
    )
    if opened:
        alert = Alert(
            id=os.urandom(16).hex(),
            rule="handle_critical_error",
            severity=incident.severity,
            title=f"incident {incident.id}: {incident.error_type}",
            message=f"INCIDENT {incident.id}: {incident.error_type}: {incident.message[:300]}",
            fired_at=incident.opened_at,
            key=incident.id,
            value=1.0,
            details={"incident_id": incident.id, "where": incident.where,
                     "context": incident.context},
        )  # fmt: skip
        for sink in sinks:
            if not sink.wants(alert):
                continue
            try:
                await sink.open(client)
                await sink.send(alert)
            except Exception:
                log.exception("sink %s could not page incident %s", sink.name, incident.id)
    else:
        log.error(
            "INCIDENT %s: %s again (%d times): %s", incident.id, error_type, incident.count,
            message[:200], extra={"incident_id": incident.id},
        )  # fmt: skip
    return incident


def handle_critical_error(
    error: BaseException | str,
    context: dict[str, Any] | None = None,
    *,
    severity: Severity | str = Severity.CRITICAL,
    sinks: Sequence[Sink] = (),
    job_id: str | None = None,
    nats_url: str | None = None,
) -> str:
    """NAQ's guide's `handle_critical_error(error, context)`, for real: opens (or adds to)
    the incident in JetStream, logs it CRITICAL, alerts, and returns the incident's id."""
    sync = _default_sync_client(nats_url)
    incident: Incident = sync._runner.run(
        handle_critical_error_async(
            sync._client, error, context, severity=severity, sinks=sinks, job_id=job_id
        )
    )
    return incident.id


async def list_incidents_async(
    client: Client, status: Iterable[IncidentStatus | str] | None = None
) -> list[Incident]:
    """Every incident kept, newest first; only those of the given statuses if any."""
    return await (await IncidentBook.of(client)).list(status)


async def get_incident_async(client: Client, incident_id: str) -> Incident:
    return await (await IncidentBook.of(client)).get(incident_id)


async def acknowledge_incident_async(
    client: Client, incident_id: str, by: str, note: str | None = None
) -> Incident:
    return await (await IncidentBook.of(client)).acknowledge(incident_id, by, note)


async def resolve_incident_async(
    client: Client, incident_id: str, by: str | None = None, note: str | None = None
) -> Incident:
    return await (await IncidentBook.of(client)).resolve(incident_id, by, note)


def list_incidents(
    status: Iterable[IncidentStatus | str] | None = None, *, nats_url: str | None = None
) -> list[Incident]:
    sync = _default_sync_client(nats_url)
    found: list[Incident] = sync._runner.run(list_incidents_async(sync._client, status))
    return found


def get_incident(incident_id: str, *, nats_url: str | None = None) -> Incident:
    sync = _default_sync_client(nats_url)
    found: Incident = sync._runner.run(get_incident_async(sync._client, incident_id))
    return found


def acknowledge_incident(
    incident_id: str, by: str, note: str | None = None, *, nats_url: str | None = None
) -> Incident:
    sync = _default_sync_client(nats_url)
    done: Incident = sync._runner.run(
        acknowledge_incident_async(sync._client, incident_id, by, note)
    )
    return done


def resolve_incident(
    incident_id: str,
    by: str | None = None,
    note: str | None = None,
    *,
    nats_url: str | None = None,
) -> Incident:
    sync = _default_sync_client(nats_url)
    done: Incident = sync._runner.run(resolve_incident_async(sync._client, incident_id, by, note))
    return done
