"""Where alerts go: a log, a Python callback, an HTTP webhook, a NATS subject.

A sink is told each alert the monitor decided to send (cooldowns already applied) whose
severity is at least the sink's `min_severity`. A sink that fails is logged and does not
stop the others; an alert that no sink could deliver is not counted as sent, so the next
round tries it again instead of waiting out the cooldown.

The webhook posts the `Alert` as JSON with urllib (no HTTP dependency for one POST a
minute), on a thread so the monitor's loop (and its lease) never waits on a slow
server, and retries with this library's own `@retry`: connection errors, timeouts, 5xx
and 429 are retried (a `Retry-After` is honoured, capped), other 4xx are not, since the
same request would be refused again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from naq_resilience.jetstream import layout
from naq_resilience.models import Alert, Severity
from naq_resilience.ops.alerts import severity_of
from naq_resilience.policies.durations import Duration, seconds
from naq_resilience.policies.errors import NonRetryable, TemporaryResourceError
from naq_resilience.policies.retry import retry

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client

__all__ = [
    "CallbackSink",
    "LoggingSink",
    "NatsSink",
    "Sink",
    "WebhookRejectedError",
    "WebhookSink",
    "WebhookUnavailableError",
]

_encoder = msgspec.json.Encoder(enc_hook=repr)
_LEVELS = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
    Severity.CRITICAL: logging.CRITICAL,
}
RETRY_AFTER_CAP = 60.0
"""The longest `Retry-After` a webhook sink waits before its next try, in seconds."""


class Sink:
    """Base of sinks: a name, a minimum severity, and `send(alert)`.

    `open(client)` is called once before the first alert, with the monitor's client, and
    `close()` when the monitor stops; both do nothing unless a sink needs them.
    """

    def __init__(self, *, name: str, min_severity: Severity | str = Severity.INFO) -> None:
        self.name = name
        self.min_severity = severity_of(min_severity)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def wants(self, alert: Alert) -> bool:
        return alert.severity.rank >= self.min_severity.rank

    async def open(self, client: Client) -> None:
        """Get ready to send (connections, files); the default needs nothing."""

    async def close(self) -> None:
        """Let go of what `open` took."""

    async def send(self, alert: Alert) -> None:
        raise NotImplementedError


class LoggingSink(Sink):
    """Logs each alert on `logger` (`naq_resilience.alerts`) at its severity's level, with
    the alert's fields as `extra` (so `setup_logging(json=True)` writes them as JSON)."""

    def __init__(
        self,
        logger: str = "naq_resilience.alerts",
        *,
        name: str = "log",
        min_severity: Severity | str = Severity.INFO,
    ) -> None:
        super().__init__(name=name, min_severity=min_severity)
        self.logger = logging.getLogger(logger)

    async def send(self, alert: Alert) -> None:
        self.logger.log(
            _LEVELS[alert.severity],
            "ALERT [%s] %s: %s", alert.rule, alert.title, alert.message,
            extra={
                "alert_id": alert.id, "rule": alert.rule, "severity": alert.severity.value,
                "alert_key": alert.key, "value": alert.value, "threshold": alert.threshold,
            },
        )  # fmt: skip


class CallbackSink(Sink):
    """Calls `callback(alert)`: an `async def` is awaited, a plain function runs on a
    thread (a slow one must not hold up the monitor's lease)."""

    def __init__(
        self,
        callback: Callable[[Alert], Any],
        *,
        name: str | None = None,
        min_severity: Severity | str = Severity.INFO,
    ) -> None:
        if not callable(callback):
            raise TypeError(f"CallbackSink needs a callable, got {callback!r}")
        label = name or str(getattr(callback, "__qualname__", "callback"))
        super().__init__(name=label, min_severity=min_severity)
        self.callback = callback

    async def send(self, alert: Alert) -> None:
        if inspect.iscoroutinefunction(self.callback):
            await self.callback(alert)
            return
        result = await asyncio.to_thread(self.callback, alert)
        if inspect.isawaitable(result):
            await result


class WebhookUnavailableError(TemporaryResourceError):
    """The webhook answered 5xx or 429: worth trying again (after `retry_after`, if it said)."""

    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class WebhookRejectedError(NonRetryable):
    """The webhook answered 4xx (not 429): the same request would be refused again."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP)
    except ValueError:
        return None  # an HTTP date: fall back on the schedule


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        try:
            text = err.read(300).decode("utf-8", "replace").strip()
        finally:
            err.close()  # it holds the response's socket
        said = f"webhook {_safe(url)} answered {err.code} {err.reason}" + (
            f": {text}" if text else ""
        )
        if err.code >= 500 or err.code == 429:
            raise WebhookUnavailableError(
                said, err.code, _retry_after(err.headers.get("Retry-After"))
            ) from None
        raise WebhookRejectedError(said, err.code) from None


def _safe(url: str) -> str:
    """The URL without credentials or query (tokens often travel there), for logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WebhookSink(Sink):
    """POSTs each alert as JSON (`Content-Type: application/json`, the `Alert` record) to
    `url`, with `headers` added; at most `max_retries` retries, `retry_delay` seconds
    apart at first (exponential, jittered)."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: Duration = 10.0,
        max_retries: int = 3,
        retry_delay: Duration = 1.0,
        name: str = "webhook",
        min_severity: Severity | str = Severity.INFO,
    ) -> None:
        scheme = urllib.parse.urlsplit(url).scheme if isinstance(url, str) else ""
        if scheme not in ("http", "https"):
            raise ValueError(f"a webhook URL is http:// or https://, got {url!r}")
        super().__init__(name=name, min_severity=min_severity)
        self.url = url
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": "naq-resilience-monitor",
            **(headers or {}),
        }
        self.timeout = seconds(timeout, "timeout", positive=True)
        self._deliver = retry(
            max_retries=max_retries,
            retry_delay=retry_delay,
            retry_on=(WebhookUnavailableError, urllib.error.URLError, ConnectionError,
                      TimeoutError),
            ignore_on=(WebhookRejectedError,),
        )(self._post_once)  # fmt: skip

    def __repr__(self) -> str:
        return f"<WebhookSink {self.name!r} {_safe(self.url)}>"

    async def _post_once(self, body: bytes) -> int:
        return await asyncio.to_thread(_post, self.url, body, self.headers, self.timeout)

    async def send(self, alert: Alert) -> None:
        await self._deliver(_encoder.encode(alert))


class NatsSink(Sink):
    """Publishes each alert as JSON on `subject` (`naq.alerts`) over the monitor's own
    connection: any NATS client can subscribe, in any language; a stream on the subject
    keeps them."""

    def __init__(
        self,
        subject: str = layout.ALERT_SUBJECT,
        *,
        name: str = "nats",
        min_severity: Severity | str = Severity.INFO,
    ) -> None:
        if not subject or any(c in subject for c in " *>"):
            raise ValueError(f"a NATS alert subject has no spaces or wildcards, got {subject!r}")
        super().__init__(name=name, min_severity=min_severity)
        self.subject = subject
        self._client: Client | None = None

    async def open(self, client: Client) -> None:
        self._client = client

    async def send(self, alert: Alert) -> None:
        if self._client is None:
            raise RuntimeError("NatsSink.open(client) was not called")
        await self._client._ready()
        nc = self._client._nc
        assert nc is not None
        await nc.publish(self.subject, _encoder.encode(alert))
        await nc.flush(timeout=5)
