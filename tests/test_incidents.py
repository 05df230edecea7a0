"""Incidents on a real server: a critical error opens one, the same error adds to it, ack
and resolve move it on, and after a resolve the same error opens a new one. Workers open
them for jobs that fail with a critical error; `naq incidents` reads and changes them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from naq_resilience import Client, SecurityError, Worker, cli
from naq_resilience.jetstream.client import _close_sync_clients
from naq_resilience.jetstream.incidents import (
    IncidentBook,
    IncidentNotFoundError,
    fingerprint,
    on_incident,
    remove_incident_hook,
    where_of_exception,
    where_of_traceback,
)
from naq_resilience.models import Incident, IncidentStatus, Severity
from naq_resilience.ops.incidents import (
    acknowledge_incident_async,
    handle_critical_error,
    handle_critical_error_async,
    list_incidents_async,
    resolve_incident_async,
)
from naq_resilience.ops.sinks import CallbackSink

import worker_jobs

pytestmark = pytest.mark.usefixtures("clean_jetstream")


@pytest.fixture(autouse=True)
def _close_shared_clients() -> Iterator[None]:
    """The sync functions share a client per URL; closed after each test, so none is
    left connected when the session's server stops."""
    yield
    _close_sync_clients()


def corrupt(row: int) -> None:
    raise SecurityError(f"row {row} was tampered with")


def caught(row: int = 1) -> SecurityError:
    try:
        corrupt(row)
    except SecurityError as exc:
        return exc
    raise AssertionError("corrupt() did not raise")


def test_where_and_fingerprint_ignore_line_numbers_and_hosts() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/.venv/lib/naq/worker.py", line 900, in _run\n'
        "    await fn()\n"
        '  File "/home/ci/build/billing/jobs.py", line 31, in charge\n'
        "    raise SecurityError('x')\n"
    )
    moved = text.replace("line 31", "line 47").replace("/home/ci/build", "/opt/deploy")
    assert where_of_traceback(text) == "billing/jobs.py:charge"
    assert where_of_traceback(moved) == where_of_traceback(text)
    assert where_of_exception(caught()) == "tests/test_incidents.py:corrupt"
    assert fingerprint("a:B", "x.py:f") == fingerprint("a:B", "x.py:f") != fingerprint("a:B", "")


def test_lifecycle_same_error_adds_ack_keeps_adding_resolve_then_new(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            first = await handle_critical_error_async(client, caught(1), {"order": 7})
            again = await handle_critical_error_async(client, caught(2), job_id="job-2")
            other = await handle_critical_error_async(client, "disk full on db-3")
            assert again.id == first.id
            assert (again.count, again.job_ids) == (2, ["job-2"])
            assert first.status is IncidentStatus.OPEN
            assert first.severity is Severity.CRITICAL
            assert first.context == {"order": 7}
            assert first.message == "row 1 was tampered with"  # the first error's
            assert first.error_type == "naq_resilience:SecurityError"
            assert other.id != first.id
            assert (await handle_critical_error_async(client, "disk full on db-3")).count == 2
            assert (await handle_critical_error_async(client, "db-4 is gone")).count == 1

            acked = await acknowledge_incident_async(client, first.id, "ada", "on it")
            assert (acked.status, acked.acknowledged_by, acked.note) == (
                IncidentStatus.ACKNOWLEDGED, "ada", "on it",
            )  # fmt: skip
            while_acked = await handle_critical_error_async(client, caught(3))
            assert (while_acked.id, while_acked.count) == (first.id, 3)
            assert while_acked.status is IncidentStatus.ACKNOWLEDGED

            resolved = await resolve_incident_async(client, first.id, "ada")
            assert resolved.status is IncidentStatus.RESOLVED
            assert resolved.resolved_at is not None
            assert (await resolve_incident_async(client, first.id)).resolved_by == "ada"
            with pytest.raises(ValueError, match="resolved already"):
                await acknowledge_incident_async(client, first.id, "bob")

            reopened = await handle_critical_error_async(client, caught(4))
            assert reopened.id != first.id
            assert reopened.count == 1

            listed = await list_incidents_async(client)
            assert len(listed) == 4
            assert {first.id, other.id, reopened.id} < {i.id for i in listed}
            open_now = await list_incidents_async(client, ["open"])
            assert {i.id for i in open_now} == {i.id for i in listed} - {first.id}
            book = await IncidentBook.of(client)
            with pytest.raises(IncidentNotFoundError):
                await book.get("20260101-000000")

    asyncio.run(main())


def test_reports_racing_from_many_tasks_land_in_one_incident(nats_url: str) -> None:
    async def main() -> list[Incident]:
        async with Client(nats_url) as client:
            books = [await IncidentBook.of(client) for _ in range(2)]
            reports = [
                books[n % 2].report(
                    error_type="app:Corrupt",
                    message="bad",
                    where="app/db.py:write",
                    job_id=f"job-{n}",
                )
                for n in range(12)
            ]
            results = await asyncio.gather(*reports)
            assert sum(opened for _, opened in results) == 1
            return await books[0].list()

    incidents = asyncio.run(main())
    assert len(incidents) == 1
    assert incidents[0].count == 12


def test_hooks_and_sinks_page_once_when_an_incident_opens(nats_url: str) -> None:
    paged: list[str] = []
    alerts: list[Any] = []

    async def async_hook(incident: Incident) -> None:
        paged.append(f"async {incident.id}")

    def sync_hook(incident: Incident) -> None:
        paged.append(f"sync {incident.id}")

    on_incident(async_hook)
    on_incident(sync_hook)
    try:
        first = handle_critical_error(
            caught(), {"job": 1}, nats_url=nats_url, sinks=[CallbackSink(alerts.append)]
        )
        second = handle_critical_error(caught(), nats_url=nats_url)
    finally:
        remove_incident_hook(async_hook)
        remove_incident_hook(sync_hook)
    assert first == second
    assert paged == [f"async {first}", f"sync {first}"]
    assert [(a.rule, a.key, a.severity) for a in alerts] == [
        ("handle_critical_error", first, Severity.CRITICAL)
    ]


def test_a_worker_opens_an_incident_for_a_critical_failure(nats_url: str) -> None:
    async def main() -> list[Incident]:
        worker = Worker("default", nats_url=nats_url, imports=["worker_jobs"])
        task = asyncio.create_task(worker.run())
        async with Client(nats_url) as client:
            jobs = [await client.enqueue(worker_jobs.raises, "security") for _ in range(2)]
            await client.enqueue(worker_jobs.raises, "value")  # not critical: no incident
            for _ in range(1500):
                incidents = await list_incidents_async(client)
                if incidents and incidents[0].count == 2:
                    break
                await asyncio.sleep(0.02)
            worker.stop()
            await task
            assert {j.job_id for j in jobs} <= set(incidents[0].job_ids)
            return incidents

    incidents = asyncio.run(main())
    assert len(incidents) == 1
    incident = incidents[0]
    assert incident.error_type == "naq_resilience:SecurityError"
    assert incident.where.endswith("worker_jobs.py:raises")
    assert incident.context["function"] == "worker_jobs:raises"
    assert incident.sources
    assert ":" in incident.sources[0]  # the worker's id


def naq(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "--nats-url", url])
    out, err = capsys.readouterr()
    return code, out, err


def test_naq_incidents_list_show_ack_resolve(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    incident_id = handle_critical_error(caught(), {"order": 9}, nats_url=nats_url)
    code, out, _ = naq(capsys, nats_url, "incidents", "list")
    header, row = out.splitlines()
    assert code == 0
    assert header.split()[:4] == ["ID", "STATUS", "SEVERITY", "COUNT"]
    assert row.split()[:4] == [incident_id, "OPEN", "CRITICAL", "1"]

    code, out, _ = naq(capsys, nats_url, "incidents", "show", incident_id)
    assert "where:" in out
    assert "tests/test_incidents.py:corrupt" in out
    code, out, _ = naq(capsys, nats_url, "incidents", "ack", incident_id, "--by", "ada")
    assert (code, out) == (0, f"incident {incident_id} acknowledged by ada\n")
    code, out, _ = naq(capsys, nats_url, "incidents", "list", "--status", "open")
    assert out == "no open incidents\n"
    code, out, _ = naq(capsys, nats_url, "incidents", "resolve", incident_id, "--json")
    assert json.loads(out)["status"] == "RESOLVED"
    code, out, _ = naq(capsys, nats_url, "incidents", "list", "--all", "--json")
    assert [i["id"] for i in json.loads(out)] == [incident_id]
    code, out, err = naq(capsys, nats_url, "incidents", "show", "nope")
    assert (code, out) == (1, "")
    assert err.startswith("naq incidents show: no incident nope")
