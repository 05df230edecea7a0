"""The HTML pages: each renders what the JSON API answers (the same functions), and
each form posts to an action that calls the same `Client` method the API calls.

Every page works without JavaScript; `static/dashboard.js` adds the live updates
(server-sent events replacing fragments) and nothing else.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from naq_resilience.dashboard import api, schema
from naq_resilience.dashboard.charts import line_chart
from naq_resilience.dashboard.context import Dashboard, View, dashboard
from naq_resilience.dashboard.security import SESSION_COOKIE, csrf_ok
from naq_resilience.jetstream.deadletters import CLASSIFICATIONS

__all__ = ["ROUTES", "VIEWS", "render"]

NOTES = {
    "replayed": "Replayed as a new job.",
    "rescheduled": "Rescheduled: the server will run it at the time shown.",
    "discarded": "Discarded.",
    "opened": "Breaker opened on every worker.",
    "closed": "Breaker closed on every worker.",
    "reset": "Breaker reset and forgotten.",
    "cancelled": "Schedule cancelled.",
    "paused": "Schedule paused.",
    "resumed": "Schedule resumed.",
    "missing": "Nothing by that name (already gone?).",
    "acknowledged": "Incident acknowledged.",
    "resolved": "Incident resolved.",
}
"""Messages shown after an action, by key: a link can pick one, never write one."""


def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
    board = dashboard(request)
    note = NOTES.get(request.query_params.get("done", ""))
    html = board.templates.get_template(name).render(
        csrf=request.scope["state"]["csrf"], path=request.url.path, note=note,
        sampler_error=board.sampler.error, signed_in=board.credentials.required,
        **context,
    )  # fmt: skip
    return HTMLResponse(html, code)


def fragment(board: Dashboard, name: str, **context: Any) -> str:
    return board.templates.get_template(name).render(**context)


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token is this session's.

    The pages post URL-encoded forms only (no uploads), read here with the standard
    library rather than with python-multipart, one dependency fewer."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "post the page's form (application/x-www-form-urlencoded)")
    raw = await request.body()
    pairs: list[tuple[str, str | UploadFile]] = list(
        urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
    )
    form = FormData(pairs)
    if not csrf_ok(request.scope, form.get("csrf")):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page")
    return form


def back(path: str, done: str, **query: str) -> RedirectResponse:
    """Post/redirect/get: a reload never repeats an action."""
    return RedirectResponse(f"{path}?{urllib.parse.urlencode({'done': done, **query})}", 303)


# --------------------------------------------------------------------------- overview


def throughput_chart(board: Dashboard) -> str:
    samples = list(board.sampler.samples)
    times = [s.at for s in samples]
    rated = [s for s in samples if s.error_rate is not None]  # a gap where unread
    return str(
        line_chart(
            "Throughput (jobs/s)", times,
            [("completed", [s.completed_per_second for s in samples], "ok"),
             ("failed attempts", [s.failed_per_second for s in samples], "bad")],
            unit="/s",
        )
    ) + str(
        line_chart(
            "Error rate, last minute (%)", [s.at for s in rated],
            [("failed for good", [100 * (s.error_rate or 0.0) for s in rated], "bad")],
            unit="%",
        )
    ) + str(
        line_chart(
            "Queue depth", times,
            [("waiting", [float(s.waiting) for s in samples], "wait"),
             ("in flight", [float(s.in_flight) for s in samples], "busy")],
        )
    )  # fmt: skip


async def overview_fragments(board: Dashboard, _: str, csrf: str) -> dict[str, str]:
    status = await board.sampler.status()
    now = time.time()
    return {
        "fleet": fragment(board, "_fleet.html", status=status, now=now,
                          budget=board.sampler.budget),
        "charts": throughput_chart(board),
    }


async def overview(request: Request) -> Response:
    board = dashboard(request)
    fragments = await overview_fragments(board, "", request.scope["state"]["csrf"])
    return render(request, "overview.html", fragments=fragments)


# --------------------------------------------------------------------------- dead letters


async def dead_letters(request: Request) -> Response:
    board = dashboard(request)
    given = api.query_filter(request)
    try:
        limit, after = api._limit(request)
        found = await api.dead_letter_list(board, given, limit, after)
        error = None
    except ValueError as exc:
        found, error = None, str(exc)
    status = await board.sampler.status()
    query = {k: v for k, v in given.items() if v}
    every_field = {k: given.get(k, "") for k in schema.FILTER_FIELDS}
    return render(
        request, "dead_letters.html", 400 if error else 200, found=found, error=error,
        given=every_field, query=query, after=after if error is None else 0,
        classifications=CLASSIFICATIONS, queues=[d.dead_letter_queue for d in status.dead_letters],
        next_link=None if found is None or found.next_after is None
        else "?" + urllib.parse.urlencode({**query, "after": found.next_after}),
        first_link="?" + urllib.parse.urlencode(query),
    )  # fmt: skip


async def dead_letter(request: Request) -> Response:
    letter_id = request.path_params["letter_id"]
    found = await api.detail(dashboard(request), letter_id)
    return render(request, "dead_letter.html", d=found, letter=found.letter)


async def replay(request: Request) -> Response:
    form = await checked_form(request)
    job = await dashboard(request).client.replay_dead_letter(
        request.path_params["letter_id"], force=form.get("force") == "on"
    )
    return back(f"/jobs/{urllib.parse.quote(job.job_id)}", "replayed")


async def reschedule(request: Request) -> Response:
    from naq_resilience.cli._common import parse_duration

    form = await checked_form(request)
    letter_id = request.path_params["letter_id"]
    try:
        delay = parse_duration(str(form.get("delay", "")))
    except Exception as exc:
        raise HTTPException(400, str(exc)) from None
    await dashboard(request).client.reschedule_dead_letter(
        letter_id, delay=delay, force=form.get("force") == "on"
    )
    return back(f"/dead-letters/{urllib.parse.quote(letter_id)}", "rescheduled")


async def discard(request: Request) -> Response:
    await checked_form(request)
    await dashboard(request).client.discard_dead_letters(ids=[request.path_params["letter_id"]])
    return back("/dead-letters", "discarded")


def _bulk_request(form: FormData) -> tuple[str, schema.BulkRequest]:
    action = form.get("action")
    if action not in ("replay", "discard"):
        raise HTTPException(400, "action is replay or discard")
    if form.get("scope") == "filter":
        given = {k: v for k, v in form.items() if k in schema.FILTER_FIELDS and v}
        if not given:
            raise HTTPException(400, "set a filter first: an empty one names every letter")
        flt = schema.filter_body(schema.dead_letter_filter(given))
        request = schema.BulkRequest(filter=flt, force=form.get("force") == "on")
    else:
        ids = [str(i) for i in form.getlist("ids")]
        if not ids:
            raise HTTPException(400, "select letters first")
        request = schema.BulkRequest(ids=ids, force=form.get("force") == "on")
    return str(action), request


async def bulk(request: Request) -> Response:
    """The confirmation page: what would be done, and a button to do it. Nothing yet."""
    form = await checked_form(request)
    action, given = _bulk_request(form)
    board = dashboard(request)
    count = len(given.ids) if given.ids is not None else None
    if given.filter is not None:
        flt = schema.dead_letter_filter(msgspec_dict(given.filter))
        count = await board.client.count_dead_letters(flt)
    hidden = [(k, str(v)) for k, v in form.multi_items() if k not in ("csrf",)]
    return render(request, "confirm.html", action=action, count=count, hidden=hidden,
                  ids=given.ids or [], filter=given.filter)  # fmt: skip


async def bulk_confirmed(request: Request) -> Response:
    form = await checked_form(request)
    action, given = _bulk_request(form)
    board = dashboard(request)
    if action == "replay":
        result = await api.bulk_replay(board, given)
    else:
        result = await api.bulk_discard(board, given)
    return render(request, "bulk_done.html", action=action, result=result)


def msgspec_dict(value: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(value)


# --------------------------------------------------------------------------- schedules


async def schedules(request: Request) -> Response:
    found = await dashboard(request).client.list_schedules()
    return render(request, "schedules.html", schedules=found, now=time.time())


def schedule_action(name: str, done: str) -> Callable[[Request], Awaitable[Response]]:
    async def act(request: Request) -> Response:
        form = await checked_form(request)
        client = dashboard(request).client
        call = {
            "cancel": client.cancel_scheduled_job,
            "pause": client.pause_scheduled_job,
            "resume": client.resume_scheduled_job,
        }[name]
        ok = await call(str(form.get("name", "")))
        return back("/schedules", done if ok else "missing")

    return act


# --------------------------------------------------------------------------- breakers


async def breakers_fragments(board: Dashboard, _: str, csrf: str) -> dict[str, str]:
    status = await board.sampler.status()
    return {"breakers": fragment(board, "_breakers.html", breakers=status.breakers,
                                 now=time.time(), csrf=csrf)}  # fmt: skip


async def breakers(request: Request) -> Response:
    board = dashboard(request)
    fragments = await breakers_fragments(board, "", request.scope["state"]["csrf"])
    return render(request, "breakers.html", fragments=fragments)


def breaker_action(name: str, done: str) -> Callable[[Request], Awaitable[Response]]:
    async def act(request: Request) -> Response:
        form = await checked_form(request)
        client = dashboard(request).client
        call = {
            "open": client.open_breaker,
            "close": client.close_breaker,
            "reset": client.reset_breaker,
        }[name]
        await call(str(form.get("name", "")))
        await dashboard(request).sampler.sample()  # the page shows the new state at once
        return back("/breakers", done)

    return act


# --------------------------------------------------------------------------- jobs


async def job_fragments(board: Dashboard, job_id: str, csrf: str) -> dict[str, str]:
    record = await board.client.get_job(job_id)
    return {"job": fragment(board, "_job.html", job=record, job_id=job_id)}


async def job(request: Request) -> Response:
    board = dashboard(request)
    job_id = request.path_params["job_id"]
    return render(request, "job.html", job_id=job_id,
                  fragments=await job_fragments(board, job_id, ""))  # fmt: skip


# --------------------------------------------------------------------------- sign-in


async def login(request: Request) -> Response:
    board = dashboard(request)
    if request.method == "GET":
        return render(request, "login.html", token=board.credentials.token is not None)
    form = await checked_form(request)
    ok = board.credentials.accepts(
        token=_text(form.get("token")), user=_text(form.get("user")),
        password=_text(form.get("password")),
    )  # fmt: skip
    if not ok:
        return render(request, "login.html", 401, token=board.credentials.token is not None,
                      failed=True)  # fmt: skip
    response = RedirectResponse("/", 303)
    response.set_cookie(SESSION_COOKIE, board.credentials.session(), max_age=12 * 3600,
                        httponly=True, samesite="strict", path="/")  # fmt: skip
    return response


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


async def logout(request: Request) -> Response:
    await checked_form(request)
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


VIEWS: dict[str, View] = {
    "overview": overview_fragments,
    "breakers": breakers_fragments,
    "job": job_fragments,
}

ROUTES: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
    ("/", overview, "GET"),
    ("/dead-letters", dead_letters, "GET"),
    ("/dead-letters/bulk", bulk, "POST"),
    ("/dead-letters/bulk/confirm", bulk_confirmed, "POST"),
    ("/dead-letters/{letter_id}", dead_letter, "GET"),
    ("/dead-letters/{letter_id}/replay", replay, "POST"),
    ("/dead-letters/{letter_id}/reschedule", reschedule, "POST"),
    ("/dead-letters/{letter_id}/discard", discard, "POST"),
    ("/schedules", schedules, "GET"),
    ("/schedules/cancel", schedule_action("cancel", "cancelled"), "POST"),
    ("/schedules/pause", schedule_action("pause", "paused"), "POST"),
    ("/schedules/resume", schedule_action("resume", "resumed"), "POST"),
    ("/breakers", breakers, "GET"),
    ("/breakers/open", breaker_action("open", "opened"), "POST"),
    ("/breakers/close", breaker_action("close", "closed"), "POST"),
    ("/breakers/reset", breaker_action("reset", "reset"), "POST"),
    ("/jobs/{job_id}", job, "GET"),
    ("/login", login, "GET"),
    ("/login", login, "POST"),
    ("/logout", logout, "POST"),
]
