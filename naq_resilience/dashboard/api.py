"""The JSON API: every page's data and every action, for scripts as for the pages.

Each handler is a thin call of one `Client` method: the dashboard adds no behaviour of
its own to the job layer. Described by `openapi.py` (`/api/openapi.json`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from naq_resilience.dashboard import schema
from naq_resilience.dashboard.context import Dashboard, dashboard
from naq_resilience.jetstream.deadletters import analyze_failure, letter_classification

__all__ = ["ROUTES", "json_response"]

T = TypeVar("T")
MAX_SCAN = 2000
"""Letters a filtered page reads at most: 25-40 us a letter on a quiet machine, up to
about 90 us on a loaded one, so a page stays well under 300 ms however rare the filter;
a page that stops short says so and links on from where it stopped."""


def json_response(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status, media_type="application/json")


async def body(request: Request, kind: type[T]) -> T:
    """The request's JSON body as `kind`: only `application/json` is taken, which a
    page of another site cannot send without a CORS preflight (never answered here)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "send JSON, with Content-Type: application/json")
    raw = await request.body()
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise HTTPException(400, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise HTTPException(400, f"not JSON: {exc}") from None


def query_filter(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if k in schema.FILTER_FIELDS}


async def status(request: Request) -> Response:
    """Read now, not the last sample: a script asking after an action sees its effect."""
    return json_response(await dashboard(request).client.fleet_status())


async def throughput(request: Request) -> Response:
    sampler = dashboard(request).sampler
    return json_response(schema.Throughput(every=sampler.every, samples=list(sampler.samples)))


def _limit(request: Request) -> tuple[int, int]:
    try:
        limit = int(request.query_params.get("limit", "50"))
        after = int(request.query_params.get("after", "0"))
    except ValueError:
        raise HTTPException(400, "limit and after are whole numbers") from None
    if not 1 <= limit <= 500 or after < 0:
        raise HTTPException(400, "limit is 1 to 500, after 0 or more")
    return limit, after


async def dead_letter_list(
    board: Dashboard, given: dict[str, Any], limit: int, after: int
) -> schema.DeadLetterList:
    """One page of letters, and their total when the server counts it in one request."""
    flt = schema.dead_letter_filter(given)
    client = board.client
    if flt.server_side:
        page, total = await asyncio.gather(
            client.list_dead_letters(flt, limit=limit, after=after),
            client.count_dead_letters(flt),
        )
    else:
        page = await client.list_dead_letters(flt, limit=limit, after=after, max_scan=MAX_SCAN)
        total = None
    return schema.DeadLetterList(
        letters=[schema.row(x, s) for x, s in zip(page.letters, page.sequences, strict=True)],
        next_after=page.next_after, scanned=page.scanned, total=total,
        stopped_short=page.exhausted,
    )  # fmt: skip


async def dead_letters(request: Request) -> Response:
    limit, after = _limit(request)
    found = await dead_letter_list(dashboard(request), query_filter(request), limit, after)
    return json_response(found)


async def dead_letter_count(request: Request) -> Response:
    flt = schema.dead_letter_filter(query_filter(request))
    count = await dashboard(request).client.count_dead_letters(flt)
    return json_response(schema.Count(count=count))


async def detail(board: Dashboard, letter_id: str) -> schema.DeadLetterDetail:
    letter = await board.client.get_dead_letter(letter_id)
    history = await board.client.get_failure_history(letter)
    return schema.DeadLetterDetail(
        letter=letter, classification=letter_classification(letter),
        analysis=analyze_failure(letter), history=history,
    )  # fmt: skip


async def dead_letter(request: Request) -> Response:
    return json_response(await detail(dashboard(request), request.path_params["letter_id"]))


async def replay(request: Request) -> Response:
    given = await body(request, schema.ReplayRequest)
    job = await dashboard(request).client.replay_dead_letter(
        request.path_params["letter_id"], force=given.force, queue_name=given.queue_name
    )
    return json_response(schema.JobRef(job_id=job.job_id, queue=job.queue))


async def reschedule(request: Request) -> Response:
    given = await body(request, schema.RescheduleRequest)
    job = await dashboard(request).client.reschedule_dead_letter(
        request.path_params["letter_id"], delay=given.delay, at=given.at, force=given.force
    )
    return json_response(schema.JobRef(job_id=job.job_id, queue=job.queue))


def bulk_filter(given: schema.BulkRequest) -> Any:
    if (given.ids is None) == (given.filter is None):
        raise HTTPException(400, "give ids, or a filter, one of them")
    if given.filter is None:
        return None
    flt = schema.dead_letter_filter(msgspec.structs.asdict(given.filter))
    if flt == schema.dead_letter_filter({}):
        raise HTTPException(400, "an empty filter names every letter; name at least one field")
    return flt


async def bulk_replay(board: Dashboard, given: schema.BulkRequest) -> schema.BulkResult:
    flt = bulk_filter(given)
    client = board.client
    if flt is not None:
        report = await client.replay_dead_letters(flt, force=given.force)
        return schema.BulkResult(
            done=len(report.replayed),
            jobs=[schema.JobRef(job_id=job, queue="") for _, job in report.replayed],
            skipped=[[i, why] for i, why in report.skipped],
        )
    result = schema.BulkResult(done=0)
    for letter_id in given.ids or []:
        try:
            job = await client.replay_dead_letter(letter_id, force=given.force)
        except (LookupError, ValueError) as exc:
            result.skipped.append([letter_id, str(exc)])
            continue
        result.done += 1
        result.jobs.append(schema.JobRef(job_id=job.job_id, queue=job.queue))
    return result


async def bulk_discard(board: Dashboard, given: schema.BulkRequest) -> schema.BulkResult:
    flt = bulk_filter(given)
    if flt is not None:
        return schema.BulkResult(done=await board.client.discard_dead_letters(filter=flt))
    return schema.BulkResult(done=await board.client.discard_dead_letters(ids=given.ids))


async def replay_many(request: Request) -> Response:
    given = await body(request, schema.BulkRequest)
    return json_response(await bulk_replay(dashboard(request), given))


async def discard_many(request: Request) -> Response:
    given = await body(request, schema.BulkRequest)
    return json_response(await bulk_discard(dashboard(request), given))


async def schedules(request: Request) -> Response:
    return json_response(await dashboard(request).client.list_schedules())


def _schedule_action(name: str) -> Callable[[Request], Awaitable[Response]]:
    async def act(request: Request) -> Response:
        client = dashboard(request).client
        call = {
            "cancel": client.cancel_scheduled_job,
            "pause": client.pause_scheduled_job,
            "resume": client.resume_scheduled_job,
        }[name]
        given = await body(request, schema.NameRequest)
        return json_response(schema.Done(ok=await call(given.name)))

    act.__name__ = f"schedule_{name}"
    act.__doc__ = f"{name.capitalize()} the schedule whose id is `name`."
    return act


async def breakers(request: Request) -> Response:
    return json_response(await dashboard(request).client.list_breakers())


def _breaker_action(name: str) -> Callable[[Request], Awaitable[Response]]:
    async def act(request: Request) -> Response:
        client = dashboard(request).client
        call = {
            "open": client.open_breaker,
            "close": client.close_breaker,
            "reset": client.reset_breaker,
        }[name]
        given = await body(request, schema.NameRequest)
        return json_response(await call(given.name))

    act.__name__ = f"breaker_{name}"
    return act


async def job(request: Request) -> Response:
    record = await dashboard(request).client.get_job(request.path_params["job_id"])
    if record is None:
        raise HTTPException(404, "no such job in the history")
    return json_response(record)


async def events(request: Request) -> Response:
    """Server-sent events: after each sample of the fleet, the page's fragments."""
    board = dashboard(request)
    view = request.query_params.get("view", "overview")
    if view not in board.views:
        raise HTTPException(400, f"view is one of {', '.join(board.views)}")
    key = request.query_params.get("id", "")
    csrf = request.scope["state"]["csrf"]

    async def stream() -> AsyncIterator[str]:
        tick = -1
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            tick = await board.sampler.wait(tick)
            fragments = await board.views[view](board, key, csrf)
            payload = {"tick": tick, "fragments": fragments}
            yield f"event: fragments\ndata: {json.dumps(payload)}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"cache-control": "no-store"}
    )


ROUTES: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
    ("/api/status", status, "GET"),
    ("/api/throughput", throughput, "GET"),
    ("/api/dead-letters", dead_letters, "GET"),
    ("/api/dead-letters/count", dead_letter_count, "GET"),
    ("/api/dead-letters/replay", replay_many, "POST"),
    ("/api/dead-letters/discard", discard_many, "POST"),
    ("/api/dead-letters/{letter_id}", dead_letter, "GET"),
    ("/api/dead-letters/{letter_id}/replay", replay, "POST"),
    ("/api/dead-letters/{letter_id}/reschedule", reschedule, "POST"),
    ("/api/schedules", schedules, "GET"),
    *((f"/api/schedules/{n}", _schedule_action(n), "POST") for n in ("cancel", "pause", "resume")),
    ("/api/breakers", breakers, "GET"),
    *((f"/api/breakers/{n}", _breaker_action(n), "POST") for n in ("open", "close", "reset")),
    ("/api/jobs/{job_id}", job, "GET"),
    ("/api/events", events, "GET"),
]
