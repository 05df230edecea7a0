"""The webhook sink against a real HTTP server on 127.0.0.1: the alert arrives as JSON,
5xx, 429 and refused connections are retried with `@retry`, other 4xx are not."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest

from naq_resilience.models import Alert, Severity
from naq_resilience.ops.sinks import WebhookRejectedError, WebhookSink, WebhookUnavailableError

from conftest import free_port

ALERT = Alert(
    id="0123456789abcdef0123456789abcdef",
    rule="dead-letters-emails.dead",
    severity=Severity.WARNING,
    title="120 dead letters in dead-letter queue emails.dead",
    message="more than 100",
    fired_at=1_800_000_000.0,
    key="emails.dead",
    value=120.0,
    threshold=100.0,
)


class Hook(ThreadingHTTPServer):
    """Answers each POST with the next of `statuses` (then 200), keeping what it got."""

    def __init__(self, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.statuses = list(statuses)
        self.extra_headers = headers or {}
        self.requests: list[tuple[dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/alerts?token=hidden"


class Handler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((dict(self.headers), body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        for name, value in self.server.extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(b"busy" if status >= 500 else b"")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads `requests`."""


def serve(statuses: list[int], headers: dict[str, str] | None = None) -> Iterator[Hook]:
    server = Hook(statuses, headers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def flaky_hook() -> Iterator[Hook]:
    yield from serve([503, 500, 200])


def sink(url: str, max_retries: int = 3) -> WebhookSink:
    return WebhookSink(url, headers={"X-Team": "ops"}, max_retries=max_retries, retry_delay=0)


def test_an_alert_is_posted_as_json_and_5xx_is_retried(flaky_hook: Hook) -> None:
    asyncio.run(sink(flaky_hook.url).send(ALERT))
    assert len(flaky_hook.requests) == 3
    headers, body = flaky_hook.requests[-1]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Team"] == "ops"
    assert msgspec.json.decode(body, type=Alert) == ALERT
    assert json.loads(body)["severity"] == "WARNING"


def test_a_4xx_is_not_retried() -> None:
    for hook in serve([400]):
        with pytest.raises(WebhookRejectedError, match="answered 400") as raised:
            asyncio.run(sink(hook.url).send(ALERT))
        assert len(hook.requests) == 1
        assert raised.value.status == 400
        assert "hidden" not in str(raised.value)  # the query (a token) is not logged


def test_429_with_retry_after_is_retried_and_retries_end() -> None:
    for hook in serve([429, 200], {"Retry-After": "0"}):
        asyncio.run(sink(hook.url).send(ALERT))
        assert len(hook.requests) == 2
    for hook in serve([502] * 5):
        with pytest.raises(WebhookUnavailableError, match="answered 502"):
            asyncio.run(sink(hook.url, max_retries=2).send(ALERT))
        assert len(hook.requests) == 3


def test_a_refused_connection_is_retried_then_raised() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(urllib.error.URLError):
        asyncio.run(sink(f"http://127.0.0.1:{port}/hook", max_retries=1).send(ALERT))
