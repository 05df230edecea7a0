"""Who may use the dashboard, and which requests may change anything.

- Binding: loopback unless told otherwise; any other address needs a token, or a user
  and password (`check_bind`), since the dashboard can replay and discard jobs.
- Hosts: when bound to loopback, only requests naming a loopback host are served, so a
  web page cannot reach the dashboard through DNS rebinding.
- Sign-in (when credentials are set): `Authorization: Bearer <token>` or HTTP Basic
  for scripts, a sign-in form setting an HttpOnly session cookie for people.
- Cross-site requests: every POST is refused when the browser says it comes from
  another site (`Sec-Fetch-Site`, or an `Origin` that is not this one). A form POST
  must also carry the session's CSRF token (a random value in a SameSite=Strict
  cookie, repeated in a hidden field: double submit); a JSON POST must be
  `application/json`, which no page of another site can send here without a CORS
  preflight, and the dashboard answers no preflight.
- Responses carry a strict Content-Security-Policy: scripts and styles only from the
  dashboard itself, so even markup that escaped escaping could not run script.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSRF_COOKIE",
    "SESSION_COOKIE",
    "Credentials",
    "Guard",
    "check_bind",
    "csrf_ok",
    "cross_site",
    "is_loopback",
]

CSRF_COOKIE = "naq_csrf"
SESSION_COOKIE = "naq_session"
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_OPEN_PATHS = ("/login", "/static/")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credentials:
    """A token, or a user and password; none of them: no sign-in (loopback only)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    """Signs session cookies; new on each start, so a restart signs everyone out."""

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ValueError("give both a user and a password, or neither")
        if self.token is not None and self.user is not None:
            raise ValueError("give a token, or a user and password, not both")
        if self.token == "" or self.password == "":
            raise ValueError("an empty token or password protects nothing")

    @property
    def required(self) -> bool:
        return self.token is not None or self.user is not None

    def accepts(self, token: str | None = None, user: str | None = None,
                password: str | None = None) -> bool:  # fmt: skip
        """Whether what was given signs in; compared in constant time."""
        if self.token is not None:
            return token is not None and hmac.compare_digest(token.encode(), self.token.encode())
        if self.user is not None and self.password is not None:
            return (
                user is not None
                and password is not None
                and hmac.compare_digest(user.encode(), self.user.encode())
                & hmac.compare_digest(password.encode(), self.password.encode())
            )
        return True

    def accepts_header(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return self.token is not None and self.accepts(token=value.strip())
        if scheme.lower() == "basic" and self.user is not None:
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return self.accepts(user=user, password=password)
        return False

    def session(self, issued: int | None = None) -> str:
        """A session cookie's value: when it was issued, signed."""
        issued = int(time.time()) if issued is None else issued
        mac = hmac.new(self.secret, str(issued).encode(), hashlib.sha256).hexdigest()
        return f"{issued}.{mac}"

    def accepts_session(self, value: str | None, max_age: float = 12 * 3600) -> bool:
        if not value or "." not in value:
            return False
        issued, _, _ = value.partition(".")
        if not issued.isdigit() or time.time() - int(issued) > max_age:
            return False
        return hmac.compare_digest(value, self.session(int(issued)))


def check_bind(host: str, credentials: Credentials) -> None:
    """Refuse a non-loopback address without credentials."""
    if not is_loopback(host) and not credentials.required:
        raise ValueError(
            f"naq dashboard will not listen on {host} without sign-in: anyone who reaches "
            "it could replay and discard jobs. Pass --token T (or --user U --password P), "
            "or bind 127.0.0.1"
        )


def cross_site(headers: Headers, scheme: str) -> bool:
    """Whether the browser says this request comes from another site."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "")
        return origin != f"{scheme}://{host}"
    return False


class Guard:
    """ASGI middleware: host check, sign-in, cross-site refusal, security headers and
    the server's own time for each response (`Server-Timing: app;dur=<ms>`)."""

    def __init__(self, app: ASGIApp, credentials: Credentials, loopback_only: bool) -> None:
        self.app = app
        self.credentials = credentials
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        csrf = _cookie(headers, CSRF_COOKIE)
        new_csrf = None
        if not csrf or len(csrf) != 43:
            new_csrf = csrf = secrets.token_urlsafe(32)
        scope.setdefault("state", {})["csrf"] = csrf

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["content-security-policy"] = CSP
                out["x-content-type-options"] = "nosniff"
                out["referrer-policy"] = "same-origin"
                out["x-frame-options"] = "DENY"
                out["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
                if new_csrf is not None:
                    out.append(
                        "set-cookie",
                        f"{CSRF_COOKIE}={new_csrf}; Path=/; SameSite=Strict; HttpOnly",
                    )
            await send(message)

        await self.app(scope, receive, sending)

    def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        host = _hostname(headers.get("host", ""))
        if self.loopback_only and host not in _LOOPBACK_NAMES:
            return PlainTextResponse("unknown host: the dashboard answers on localhost", 421)
        path: str = scope["path"]
        if scope["method"] == "POST" and cross_site(headers, scope.get("scheme", "http")):
            return PlainTextResponse("cross-site request refused", 403)
        if self.credentials.required and not path.startswith(_OPEN_PATHS):
            signed_in = self.credentials.accepts_header(
                headers.get("authorization")
            ) or self.credentials.accepts_session(_cookie(headers, SESSION_COOKIE))
            if not signed_in:
                if path.startswith("/api/"):
                    return PlainTextResponse(
                        "sign in: Authorization: Bearer <token> (or HTTP Basic)", 401,
                        headers={"www-authenticate": "Bearer"},
                    )  # fmt: skip
                return RedirectResponse("/login", 303)
        return None


def _hostname(host: str) -> str:
    """`localhost:8000` -> `localhost`; `[::1]:8000` -> `[::1]`."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rsplit(":", 1)[0]


def _cookie(headers: Headers, name: str) -> str | None:
    for header in headers.getlist("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
    return None


def csrf_ok(scope: MutableMapping[str, Any], given: object) -> bool:
    """Whether a form's token is this session's (the cookie's, set by `Guard`)."""
    expected = scope.get("state", {}).get("csrf")
    return (
        isinstance(given, str)
        and isinstance(expected, str)
        and bool(given)
        and hmac.compare_digest(given.encode(), expected.encode())
    )

