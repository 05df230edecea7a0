"""`naq dashboard` over HTTP, against a real nats-server and a real worker: the JSON API
and its OpenAPI description, the refusals (cross-site, no CSRF token, unknown host,
no sign-in), escaping, and the static files shipping inside the package."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from naq_resilience import Client

from dashboard_helpers import NASTY, ROOT, DashboardProcess, request

pytest.importorskip("starlette", reason="the dashboard extra installs starlette")

from naq_resilience.dashboard import create_app

Fleet = tuple[DashboardProcess, Path]


def get_json(url: str, **headers: str) -> Any:
    code, _, body = request(url, headers=headers)
    assert code == 200, body
    return json.loads(body)


def test_openapi_describes_every_api_route(fleet: Fleet) -> None:
    board, _ = fleet
    document = get_json(board.url + "/api/openapi.json")
    served = {
        (route.path, method.lower())
        for route in create_app().routes
        if route.path.startswith("/api/")  # type: ignore[attr-defined]
        for method in (route.methods or set()) - {"HEAD"}  # type: ignore[attr-defined]
    }
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served == described
    assert document["openapi"].startswith("3.1")
    listing = document["paths"]["/api/dead-letters"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert {"function", "error_type", "after", "limit"} <= names
    assert "DeadLetterRow" in document["components"]["schemas"]


def test_the_api_lists_filters_and_acts(fleet: Fleet, nats_url: str) -> None:
    board, _trace = fleet
    url = board.url
    page = get_json(url + "/api/dead-letters?limit=5")
    assert len(page["letters"]) == 5
    assert page["total"] == 8
    assert page["next_after"]
    rest = get_json(url + f"/api/dead-letters?after={page['next_after']}")
    assert len(rest["letters"]) == 3
    assert rest["next_after"] is None
    values = get_json(url + "/api/dead-letters?error_type=ValueError")
    assert [r["error_type"] for r in values["letters"]] == ["builtins:ValueError"] * 2
    assert values["total"] is None  # a filter read letter by letter: no total claimed
    assert get_json(url + "/api/dead-letters/count?error_type=ValueError") == {"count": 2}

    letter_id = values["letters"][0]["id"]
    detail = get_json(url + f"/api/dead-letters/{letter_id}")
    assert detail["analysis"] == "data_issue"
    assert len(detail["history"]) == 1
    assert "Traceback" in detail["history"][-1]["traceback"]

    code, _, body = request(url + f"/api/dead-letters/{letter_id}/replay", "POST", {})
    assert code == 200, body
    job = json.loads(body)
    assert job["queue"] == "default"
    code, _, body = request(url + f"/api/dead-letters/{letter_id}/replay", "POST", {})
    assert code == 409  # replayed before: force it, or not at all
    code, _, body = request(
        url + f"/api/dead-letters/{letter_id}/reschedule", "POST", {"delay": 3600, "force": True}
    )
    assert code == 200, body
    record = get_json(url + f"/api/jobs/{job['job_id']}")
    assert record["replay_of"] == letter_id

    code, _, body = request(url + "/api/dead-letters/discard", "POST", {"filter": {}})
    assert code == 400  # an empty filter would name every letter
    code, _, body = request(
        url + "/api/dead-letters/discard", "POST", {"filter": {"error_type": "TimeoutError"}}
    )
    assert json.loads(body)["done"] == 1
    code, _, body = request(url + "/api/dead-letters/missing-id")
    assert code == 404
    assert json.loads(body)["status"] == 404

    code, _, body = request(url + "/api/breakers/open", "POST", {"name": "payments-api"})
    assert json.loads(body)["state"] == "open"
    assert [b["name"] for b in get_json(url + "/api/breakers")] == ["payments-api"]
    code, _, body = request(url + "/api/schedules/pause", "POST", {"name": "hourly-sync"})
    assert json.loads(body) == {"ok": True}
    paused = {s["id"]: s.get("paused", False) for s in get_json(url + "/api/schedules")}
    assert paused["hourly-sync"] is True
    assert paused["nightly-report"] is False
    status = get_json(url + "/api/status")
    assert status["dead_letters_total"] == get_json(url + "/api/dead-letters/count")["count"]
    assert len(status["workers"]) == 1

    async def breaker() -> str:
        async with Client(nats_url) as client:
            return next(b.state for b in await client.list_breakers())

    assert asyncio.run(breaker()) == "open"  # the API acted through the library


def _post_routes() -> list[str]:
    paths = []
    for route in create_app().routes:
        if "POST" in (getattr(route, "methods", None) or set()):
            paths.append(route.path.replace("{letter_id}", "some-id"))  # type: ignore[attr-defined]
    return paths


def test_every_post_refuses_cross_site_requests(fleet: Fleet) -> None:
    board, _ = fleet
    posts = _post_routes()
    assert len(posts) >= 15
    for path in posts:
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                        {"Origin": "http://evil.example"}):  # fmt: skip
            code, _, body = request(board.url + path, "POST", form={"name": "x"}, headers=headers)
            assert code == 403, (path, headers, body)
        if path.startswith("/api/"):
            code, _, _ = request(board.url + path, "POST", form={"name": "x"})
            assert code == 415, path  # a form (which any site can send) is not JSON
        else:
            code, _, _ = request(board.url + path, "POST", form={"name": "x", "csrf": "guess"})
            assert code == 403, path  # no token of this session


def test_a_form_with_the_session_token_goes_through(fleet: Fleet) -> None:
    board, _ = fleet
    code, headers, body = request(board.url + "/dead-letters")
    cookie = headers["set-cookie"].split(";")[0]
    token = re.search(rb'name="csrf" value="([^"]+)"', body)
    assert code == 200
    assert token is not None
    code, _, body = request(
        board.url + "/breakers/open", "POST", form={"name": "search", "csrf": token[1].decode()},
        headers={"Cookie": cookie, "Origin": board.url, "Sec-Fetch-Site": "same-origin"},
    )  # fmt: skip
    assert code == 200, body
    assert b"Breaker opened" in body  # after the redirect


def test_an_unknown_host_is_refused(fleet: Fleet) -> None:
    board, _ = fleet
    code, _, _ = request(board.url + "/", headers={"Host": "attacker.example:8000"})
    assert code == 421  # DNS rebinding: a name that resolves here is not this site
    code, _, _ = request(board.url.replace("127.0.0.1", "localhost") + "/api/status")
    assert code == 200


def test_user_data_is_escaped(fleet: Fleet) -> None:
    board, _ = fleet
    code, headers, body = request(board.url + "/dead-letters?text=alert(1)")
    assert code == 200
    page = body.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;" in page
    assert NASTY not in page
    assert "script-src 'self'" in headers["content-security-policy"]
    letter_id = re.search(r'name="ids" value="([^"]+)"', page)
    assert letter_id is not None
    code, _, body = request(board.url + f"/dead-letters/{letter_id[1]}")
    assert code == 200
    assert NASTY not in body.decode()
    assert "&lt;script&gt;" in body.decode()


def test_binding_elsewhere_needs_sign_in(nats_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "naq_resilience.cli", "dashboard", "--host", "0.0.0.0",
         "--port", "0", "--nats-url", nats_url],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "will not listen on 0.0.0.0 without sign-in" in done.stderr


def test_a_token_or_user_and_password_is_asked_for(nats_url: str, clean_jetstream: str) -> None:
    board = DashboardProcess(nats_url, "--token", "s3cret")
    try:
        assert request(board.url + "/api/status")[0] == 401
        assert request(board.url + "/api/status", headers={"Authorization": "Bearer no"})[0] == 401
        ok = request(board.url + "/api/status", headers={"Authorization": "Bearer s3cret"})
        assert ok[0] == 200
        code, headers, body = request(board.url + "/login")
        assert code == 200
        assert b'name="token"' in body
        cookie = headers["set-cookie"].split(";")[0]
        token = re.search(rb'name="csrf" value="([^"]+)"', body)
        assert token is not None
        code, headers, _ = request(
            board.url + "/login", "POST", form={"token": "s3cret", "csrf": token[1].decode()},
            headers={"Cookie": cookie},
        )  # fmt: skip
        assert code == 200  # redirected to the overview, signed in by the session cookie
    finally:
        board.close()
    board = DashboardProcess(nats_url, "--user", "ops", "--password", "pw")
    try:
        basic = base64.b64encode(b"ops:pw").decode()
        assert request(board.url + "/api/status", headers={"Authorization": f"Basic {basic}"})[
            0
        ] == 200
        wrong = base64.b64encode(b"ops:nope").decode()
        assert request(board.url + "/api/status", headers={"Authorization": f"Basic {wrong}"})[
            0
        ] == 401
    finally:
        board.close()


def test_static_files_ship_inside_the_package(fleet: Fleet) -> None:
    board, _ = fleet
    static = resources.files("naq_resilience.dashboard") / "static"
    names = sorted(p.name for p in static.iterdir())
    assert {"dashboard.css", "dashboard.js", "favicon.svg"} <= set(names)
    for name in ("dashboard.css", "dashboard.js"):
        code, _headers, body = request(f"{board.url}/static/{name}")
        assert code == 200
        assert body == (static / name).read_bytes()
    code, _, page = request(board.url + "/")
    assert b"https://" not in page  # nothing from a CDN: it works offline
