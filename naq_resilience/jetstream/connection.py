"""How naq-resilience connects to NATS: one settings object, and one clear failure.

Left to its defaults, nats-py retries an initial connect that is refused 60 times two
seconds apart (two minutes of silence), and forever with `max_reconnect_attempts=-1`,
which is exactly what a worker wants once it is connected. So the first connect here
runs under its own short policy (the least nats-py allows: two tries a quarter of a
second apart, no retry at all after the server rejected the handshake), and the
settings' reconnect policy is switched on only once connected. A server that cannot
be reached then surfaces as one `NatsUnavailableError` naming the URL and the fix,
instead of a traceback through nats-py's internals. A TLS failure gets TLS advice
(which of NAQ_NATS_TLS_CA / _CERT / _KEY to check) rather than "start a server".

nats-py uses TLS only when the server requires it, even when the client was given a
CA, a certificate or a `tls://` URL. A connection configured for TLS that came up in
plain text is therefore refused here, so nobody runs unencrypted believing otherwise.

JetStream that is off and JetStream that is not ready yet look alike to a client (no
answer, or a 503), but only the second is worth waiting for: a JetStream cluster
answers "temporarily unavailable" (10008), or nothing at all, for the seconds it takes
to elect a meta leader after a start. `is_transient_jetstream_error` tells them apart
and `while_jetstream_starts` waits the transient ones out; a server or account without
JetStream raises `JetStreamNotEnabledError` at once.

Secrets (password, token, credentials inside a URL) never reach a repr, a log line or
an error message.

nats-py reports through callbacks, which go to the `naq_resilience` logger at levels a
person can act on. A connection lost while running is a WARNING once it has been away
for `LOST_AFTER` seconds (a blip is only the INFO line of its reconnect), then at most
every `STILL_LOST_EVERY` seconds while it stays away, with the count of attempts;
each failed attempt (one every `reconnect_time_wait`, 2 s) is DEBUG. In a process with
several connections to the same servers (a worker has two), one outage is reported
once. A connection closed by its owner is DEBUG, also when the server went away first
(an application exiting after its embedded server stopped says nothing); one that
nats-py closed for good (reconnect attempts used up, reconnecting off) is a WARNING.
Other errors the server reports (a slow consumer, a permission denied) are WARNINGs,
one a minute per kind, counting the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field, fields, replace
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.errors import (
    AuthorizationError,
    NoRespondersError,
    NoServersError,
    StaleConnectionError,
    UnexpectedEOF,
)
from nats.errors import Error as NatsError
from nats.js.api import AccountInfo
from nats.js.errors import APIError, ServiceUnavailableError

from naq_resilience.policies.durations import SecondsField

__all__ = [
    "DEFAULT_JETSTREAM_TIMEOUT",
    "DEFAULT_URL",
    "ENV_VARS",
    "ConnectionSettings",
    "JetStreamNotEnabledError",
    "JetStreamUnavailableError",
    "NatsUnavailableError",
    "connect",
    "ensure_jetstream",
    "is_transient_jetstream_error",
    "while_jetstream_starts",
]

T = TypeVar("T")

DEFAULT_URL = "nats://127.0.0.1:4222"
ENV_VARS = {
    "url": "NAQ_NATS_URL",
    "user": "NAQ_NATS_USER",
    "password": "NAQ_NATS_PASSWORD",
    "token": "NAQ_NATS_TOKEN",
    "credentials_file": "NAQ_NATS_CREDS",
    "nkey_seed_file": "NAQ_NATS_NKEY",
    "tls_ca_file": "NAQ_NATS_TLS_CA",
    "tls_cert_file": "NAQ_NATS_TLS_CERT",
    "tls_key_file": "NAQ_NATS_TLS_KEY",
    "jetstream_timeout": "NAQ_JETSTREAM_TIMEOUT",
}
DEFAULT_JETSTREAM_TIMEOUT = 30.0
_SECONDS = frozenset({"jetstream_timeout"})
_SECRETS = frozenset({"password", "token"})
_HIDDEN = "***"
_FIRST_CONNECT_RETRY_WAIT = 0.25
_DISCARD_TIMEOUT = 0.5
_UNAVAILABLE_FIX = "start one with `naq server`, or set NAQ_NATS_URL"
_NKEYS_INSTALL = "pip install 'naq-resilience[nkeys]'"
_TLS_VARS = "NAQ_NATS_TLS_CA, NAQ_NATS_TLS_CERT and NAQ_NATS_TLS_KEY"

# JetStream API error codes (nats-server's server/jetstream_errors_generated.go), all
# sent with status 503. Not enabled: JSNotEnabledForAccountErr, JSNotEnabledErr.
_NOT_ENABLED_FOR_ACCOUNT = 10039
_NOT_ENABLED = 10076
# Worth waiting for: JSClusterNotAvailErr ("JetStream system temporarily unavailable"),
# JSClusterIncompleteErr, JSStreamExpectedLastSeqPerSubjectNotReady. Other 503s (an
# expected sequence that does not match, insufficient resources) are answers.
_TRANSIENT_CODES = frozenset({10008, 10004, 10163})
_FIRST_PAUSE = 0.1
_LONGEST_PAUSE = 1.0
LOST_AFTER = 5.0
"""Seconds a connection may be away before it is reported (a WARNING): a server
restart that takes less is only the INFO line of the reconnect."""
STILL_LOST_EVERY = 60.0
"""Seconds between two WARNINGs about a connection that stays away."""
_ERRORS_EVERY = 60.0
_reporting: dict[str, int] = {}
"""Servers (display URL) whose current outage a connection of this process reports,
and which connection (`id` of its callbacks): the others say it at DEBUG."""

# X509_V_ERR_* verify codes from OpenSSL's x509_vfy.h.
_CERT_NAME_MISMATCH = frozenset({62, 63, 64})  # host name, e-mail, IP address
_CERT_OUT_OF_DATE = frozenset({9, 10})  # not yet valid, expired

logger = logging.getLogger("naq_resilience")


class NatsUnavailableError(ConnectionError):
    """The NATS server could not be reached, or it refused us; the message says which."""


class JetStreamUnavailableError(ConnectionError):
    """The NATS server answers but JetStream does not: off, or not ready in time."""


class JetStreamNotEnabledError(JetStreamUnavailableError):
    """The server, or the account we are logged into, has no JetStream: waiting cannot help."""


def _url_from_env() -> str:
    return os.environ.get(ENV_VARS["url"]) or DEFAULT_URL


@dataclass(frozen=True, repr=False)
class ConnectionSettings:
    """Everything needed to reach the NATS server; plain data, safe to log.

    `url` may list several servers of a cluster, comma-separated, as NATS tools do.
    `max_reconnect_attempts=-1` (the default) reconnects forever, after an outage of
    any length; it applies once connected, never to the first connect. A finite number
    lets the connection close for good, after which a `Client` connects afresh on its
    next use and a worker exits for its supervisor to restart it. The durations
    (`connect_timeout`, `jetstream_timeout`, `reconnect_time_wait`) take seconds or a
    `timedelta` and read back as seconds.
    """

    url: str = field(default_factory=_url_from_env)
    _: KW_ONLY
    user: str | None = None
    password: str | None = None
    token: str | None = None
    credentials_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_context: ssl.SSLContext | None = None
    name: str | None = None
    connect_timeout: SecondsField = SecondsField(2.0, positive=True)
    jetstream_timeout: SecondsField = SecondsField(DEFAULT_JETSTREAM_TIMEOUT, positive=True)
    """How long start-up waits for JetStream to become ready (a cluster electing its
    leader), the default of `ensure_jetstream` and `while_jetstream_starts`."""
    allow_reconnect: bool = True
    max_reconnect_attempts: int = -1
    reconnect_time_wait: SecondsField = SecondsField(2.0)

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("url names no server")
        if self.max_reconnect_attempts == 0 or self.max_reconnect_attempts < -1:
            # nats-py reads 0 as "forever"; nobody writing 0 means that.
            raise ValueError(
                "max_reconnect_attempts must be -1 (forever) or at least 1, got "
                f"{self.max_reconnect_attempts!r}; to never reconnect, set allow_reconnect=False"
            )
        files = self.tls_ca_file or self.tls_cert_file or self.tls_key_file
        if self.tls_context is not None and files:
            raise ValueError("give either tls_context or TLS files (ca, cert, key), not both")
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file")

    @classmethod
    def from_env(cls, **overrides: Any) -> ConnectionSettings:
        """Settings from the variables in `ENV_VARS`; keyword arguments win over them."""
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            raw = os.environ.get(var)
            if not raw or name in overrides:
                continue
            values[name] = _seconds(var, raw) if name in _SECONDS else raw
        values.update(overrides)
        return cls(**values)

    @property
    def servers(self) -> list[str]:
        return [part.strip() for part in self.url.split(",") if part.strip()]

    def _tls_sources(self) -> list[str]:
        """What asked for TLS: a context, a CA or certificate file, a `tls://` URL."""
        sources = []
        if self.tls_context is not None:
            sources.append("tls_context")
        if self.tls_ca_file:
            sources.append(f"{ENV_VARS['tls_ca_file']}={self.tls_ca_file}")
        if self.tls_cert_file:
            sources.append(f"{ENV_VARS['tls_cert_file']}={self.tls_cert_file}")
        if any(server.lower().startswith("tls://") for server in self.servers):
            sources.append("a tls:// URL")
        return sources

    @property
    def display_url(self) -> str:
        """The URL with any user, password or token in it replaced by ***."""
        return ",".join(_redact_url(server) for server in self.servers)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context to connect with, built from the files if no context was given."""
        if self.tls_context is not None:
            return self.tls_context
        if not (self.tls_ca_file or self.tls_cert_file):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if self.tls_cert_file:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context

    def scrub(self, text: str) -> str:
        """`text` with this connection's secrets blanked, for messages built from others'."""
        for secret in (self.password, self.token):
            if secret:
                text = text.replace(secret, _HIDDEN)
        for server in self.servers:
            text = text.replace(server, _redact_url(server))
        return text

    def __repr__(self) -> str:
        shown = [f"url={self.display_url!r}"]
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "url" or value == _default(spec.name):
                continue
            if spec.name in _SECRETS:
                value = _HIDDEN
            shown.append(f"{spec.name}={value!r}")
        return f"ConnectionSettings({', '.join(shown)})"

    __str__ = __repr__


def _seconds(var: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a number of seconds; set e.g. {var}=60") from None


def _default(name: str) -> object:
    spec = ConnectionSettings.__dataclass_fields__[name]
    return spec.default


def _redact_url(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if at and userinfo:
        rest = f"{_HIDDEN}@{host}"
    return f"{scheme}{separator}{rest}"


class _Callbacks:
    """nats-py's event callbacks, sent to the naq_resilience logger (see the module's
    docstring for what is said at which level).

    While the first connect runs, errors are only remembered (the last one becomes the
    reason in `NatsUnavailableError`); afterwards they are logged.
    """

    def __init__(self, settings: ConnectionSettings, client: Client) -> None:
        self.settings = settings
        self.client = client
        self.connected = False
        self.last_error: BaseException | None = None
        self.lost_since: float | None = None
        self.attempts = 0
        self.reported = False
        self.said_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._errors: dict[str, tuple[float, int]] = {}

    def _where(self) -> str:
        current = self.client.connected_url
        return _redact_url(current.geturl()) if current is not None else self.settings.display_url

    def _name(self) -> str:
        name = self.settings.name
        return f" ({name})" if name else ""

    async def error(self, error: Exception) -> None:
        if not self.connected:
            self.last_error = error
            logger.debug("NATS connect attempt to %s failed: %r", self.settings.display_url, error)
            return
        if self.client.is_closed:
            logger.debug("NATS error on a closed connection to %s: %r", self._where(), error)
            return
        if self.lost_since is not None or self.client.is_reconnecting or _is_lost(error):
            self.last_error = error
            if self.lost_since is not None:
                self.attempts += 1
            logger.debug(
                "NATS connection to %s%s: %s", self._where(), self._name(), self._said(error)
            )
            if self.reported and time.monotonic() - self.said_at >= STILL_LOST_EVERY:
                self._report_lost(still=True)
            return
        kind = type(error).__name__
        now = time.monotonic()
        last, held = self._errors.get(kind, (-_ERRORS_EVERY, 0))
        if now - last < _ERRORS_EVERY:
            self._errors[kind] = (last, held + 1)
            return
        self._errors[kind] = (now, 0)
        more = f" ({held} more since the last such line)" if held else ""
        logger.warning("NATS error on %s%s: %s%s", self._where(), self._name(),
                       self._said(error), more)  # fmt: skip

    async def disconnected(self) -> None:
        if not self.connected or self.client.is_closed:
            return  # our own close(), or a connect that never succeeded
        if self.lost_since is None:
            self.lost_since = time.monotonic()
            self.attempts = 0
            logger.debug(
                "disconnected from NATS at %s%s (%s); reconnecting", self._where(),
                self._name(), self._said(self.last_error),
            )  # fmt: skip
            self._timer = asyncio.get_running_loop().call_later(LOST_AFTER, self._report_lost)

    def _report_lost(self, still: bool = False) -> None:
        self._timer = None
        if self.lost_since is None or self.client.is_closed:
            return
        key = self.settings.display_url
        owner = _reporting.setdefault(key, id(self))
        self.reported = True
        self.said_at = time.monotonic()
        level = logging.WARNING if owner == id(self) else logging.DEBUG
        away = time.monotonic() - self.lost_since
        attempts = self.settings.max_reconnect_attempts
        logger.log(
            level,
            "%s NATS at %s%s for %.0f s (%d reconnect attempts so far, last error: %s); "
            "reconnecting every %g s%s",
            "still no connection to" if still else "lost the connection to",
            self.settings.display_url, self._name(), away, self.attempts,
            self._said(self.last_error), self.settings.reconnect_time_wait,
            "" if attempts < 0 else f", at most {attempts} times",
        )  # fmt: skip

    def _back(self) -> tuple[float, bool]:
        """The outage is over: how long it lasted, and whether this connection reported it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        away = 0.0 if self.lost_since is None else time.monotonic() - self.lost_since
        owned = _reporting.get(self.settings.display_url) == id(self)
        if owned:
            del _reporting[self.settings.display_url]
        reported = self.reported and owned
        self.lost_since = None
        self.reported = False
        return away, reported

    async def reconnected(self) -> None:
        away, reported = self._back()
        logger.log(
            logging.INFO if reported or away < LOST_AFTER else logging.DEBUG,
            "reconnected to NATS at %s%s after %.1f s away", self._where(), self._name(), away,
        )  # fmt: skip

    async def closed(self) -> None:
        _, _ = self._back()
        if not self.connected:
            return
        if _closed_by_nats(self.client):
            logger.warning(
                "the NATS connection to %s%s was closed for good (%s)",
                self.settings.display_url, self._name(),
                self._said(self.client.last_error or self.last_error),
            )  # fmt: skip
        else:
            logger.debug(
                "NATS connection to %s%s closed", self.settings.display_url, self._name()
            )

    def _said(self, error: BaseException | None) -> str:
        if error is None:
            return "no error given"
        if isinstance(error, NoServersError):
            return "no server left to try: the reconnect attempts are used up"
        return self.settings.scrub(_describe(error, self.settings))


def _is_lost(error: BaseException) -> bool:
    """An error that means the connection went (what a reconnect answers), not a complaint
    about what this client did."""
    return isinstance(error, (UnexpectedEOF, StaleConnectionError, OSError, TimeoutError))


def _closed_by_nats(client: Client) -> bool:
    """Whether nats-py closed the connection itself (its reconnect attempts used up, or
    reconnecting off), rather than its owner: it does so from a task of its own."""
    current = asyncio.current_task()
    own = (
        getattr(client, name, None)
        for name in ("_reconnection_task", "_reading_task", "_flusher_task", "_ping_interval_task")
    )
    return current is not None and any(task is current for task in own)


async def connect(settings: ConnectionSettings | None = None, **overrides: Any) -> Client:
    """A connected nats-py client, or `NatsUnavailableError` within a few seconds.

    Without `settings` they come from the environment (`ConnectionSettings.from_env`);
    keyword arguments override single fields either way.
    """
    if settings is None:
        settings = ConnectionSettings.from_env(**overrides)
    elif overrides:
        settings = replace(settings, **overrides)
    client = Client()
    callbacks = _Callbacks(settings, client)
    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": settings.name,
        "user": settings.user,
        "password": settings.password,
        "token": settings.token,
        "user_credentials": settings.credentials_file,
        "nkeys_seed": settings.nkey_seed_file,
        "tls": settings.ssl_context(),
        "connect_timeout": settings.connect_timeout,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": _FIRST_CONNECT_RETRY_WAIT,
        "error_cb": callbacks.error,
        "disconnected_cb": callbacks.disconnected,
        "reconnected_cb": callbacks.reconnected,
        "closed_cb": callbacks.closed,
    }
    try:
        await client.connect(**options)
    except ImportError as error:
        raise NatsUnavailableError(
            f"cannot connect to NATS at {settings.display_url}: credentials and nkey files "
            f"need the nkeys package ({error}); install it with `{_NKEYS_INSTALL}`"
        ) from None
    except (TimeoutError, OSError, NatsError) as error:
        await _discard(client)
        raise NatsUnavailableError(
            _unavailable_message(settings, callbacks, error, _server_info(client))
        ) from None
    tls_sources = settings._tls_sources()
    if tls_sources and not _uses_tls(client):
        where = _connected_where(client, settings)
        await _discard(client)
        raise NatsUnavailableError(
            f"TLS is configured ({', '.join(tls_sources)}) but the NATS server at "
            f"{where} does not require TLS, so this connection would be plain text (nats-py "
            "uses TLS only when the server requires it): require TLS on the server (a "
            "`tls { cert_file, key_file }` block, without allow_non_tls), or, if plain text "
            f"is intended, use a nats:// URL and unset {_TLS_VARS}"
        )
    client.options["allow_reconnect"] = settings.allow_reconnect
    client.options["max_reconnect_attempts"] = settings.max_reconnect_attempts
    client.options["reconnect_time_wait"] = settings.reconnect_time_wait
    callbacks.connected = True
    return client


def _unavailable_message(
    settings: ConnectionSettings,
    callbacks: _Callbacks,
    error: BaseException,
    server_info: dict[str, Any],
) -> str:
    reason = error
    if callbacks.last_error is not None and not _is_rejection(error):
        reason = callbacks.last_error
    tls_fix = _tls_fix(settings, reason, server_info)
    if tls_fix is not None:
        return (
            f"cannot connect to NATS at {settings.display_url} over TLS "
            f"({settings.scrub(_describe(reason, settings))}): {tls_fix}"
        )
    if _is_rejection(reason):
        return (
            f"NATS at {settings.display_url} rejected the credentials "
            f"({settings.scrub(_describe(reason, settings))}); check the user, password, token, "
            "credentials or nkey (NAQ_NATS_USER, NAQ_NATS_PASSWORD, NAQ_NATS_TOKEN, "
            "NAQ_NATS_CREDS, NAQ_NATS_NKEY)"
        )
    return (
        f"cannot connect to NATS at {settings.display_url} "
        f"({settings.scrub(_describe(reason, settings))}): {_UNAVAILABLE_FIX}"
    )


def _tls_fix(
    settings: ConnectionSettings, error: BaseException, server_info: dict[str, Any]
) -> str | None:
    """What to change when `error` is a failed TLS handshake; None for any other error.

    A server that wants a client certificate (`tls_verify` in its INFO) and does not
    like ours ends the handshake with an alert that the client may read (an SSLError)
    or not, having already written (a reset or broken pipe): measured, either happens.
    So that case is recognised from the server's INFO, not from the error.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        if error.verify_code in _CERT_NAME_MISMATCH:
            return (
                "the server's certificate does not name the host this client connected to: "
                "connect with a host name or address the certificate lists (check "
                "NAQ_NATS_URL), or reissue the certificate with that host in its "
                "subjectAltName"
            )
        if error.verify_code in _CERT_OUT_OF_DATE:
            return (
                "the server's certificate is not valid at this time: renew it, or check "
                "this machine's clock"
            )
        if settings.tls_ca_file:
            return (
                f"the server's certificate is not signed by the CA in {ENV_VARS['tls_ca_file']} "
                f"({settings.tls_ca_file}): point {ENV_VARS['tls_ca_file']} at the CA that "
                "signed the server's certificate"
            )
        if settings.tls_context is not None:
            return (
                "the server's certificate is not trusted by the tls_context given: load the "
                "CA that signed it into that context (SSLContext.load_verify_locations)"
            )
        return (
            "the server requires TLS and its certificate is not signed by a CA this machine "
            f"trusts: set {ENV_VARS['tls_ca_file']} to the CA file that signed it"
        )
    ended_by_server = isinstance(error, OSError) and not isinstance(error, TimeoutError)
    if server_info.get("tls_verify") and ended_by_server:
        if not settings.tls_cert_file and settings.tls_context is None:
            return (
                "the server requires a client certificate: set "
                f"{ENV_VARS['tls_cert_file']} and {ENV_VARS['tls_key_file']} to this "
                "client's certificate and key"
            )
        given = (
            f"{ENV_VARS['tls_cert_file']} ({settings.tls_cert_file})"
            if settings.tls_cert_file
            else "the tls_context given"
        )
        return (
            f"the server did not accept the client certificate in {given}: use one signed "
            "by a CA the server trusts (the ca_file of its tls block)"
        )
    if isinstance(error, ssl.SSLError):
        return (
            f"the TLS handshake failed: check {_TLS_VARS}, and that the URL names a "
            "server that speaks TLS on that port"
        )
    return None


def _uses_tls(client: Client) -> bool:
    current = client.connected_url
    if current is not None and current.scheme in ("ws", "wss"):
        return True  # TLS, if any, belongs to the websocket layer; not ours to judge.
    # nats-py upgrades to TLS exactly when the server's INFO says it is required.
    return bool(_server_info(client).get("tls_required"))


def _server_info(client: Client) -> dict[str, Any]:
    # nats-py keeps the server's INFO only in a private attribute.
    info = getattr(client, "_server_info", None)
    return info if isinstance(info, dict) else {}


def _connected_where(client: Client, settings: ConnectionSettings) -> str:
    current = client.connected_url
    return _redact_url(current.geturl()) if current is not None else settings.display_url


def _is_rejection(error: BaseException) -> bool:
    # nats-py raises a bare Error carrying the server's -ERR text for a failed handshake.
    text = str(error).lower()
    return (
        isinstance(error, AuthorizationError)
        or "authorization" in text
        or ("authentication" in text)
    )


def _describe(error: BaseException, settings: ConnectionSettings) -> str:
    text = str(error).strip()
    if not text and isinstance(error, asyncio.TimeoutError):
        text = f"no answer within {settings.connect_timeout:g} s"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _discard(client: Client) -> None:
    """Close a client whose connect failed, so no transport or task is left behind.

    Bounded: after a failed TLS handshake nats-py's close() waits forever for a stream
    that was detached from its (already closed) socket (nats-io/nats.py#718).
    """
    try:
        async with asyncio.timeout(_DISCARD_TIMEOUT):
            await client.close()
    except Exception as error:
        logger.debug("closing a NATS client that never connected: %r", error)


def is_transient_jetstream_error(error: BaseException) -> bool:
    """Whether `error` may pass if the same JetStream call is made again shortly.

    True for no answer in time (the request went nowhere while a cluster elects its
    leader), no responders, and the 503 errors that say "not now"
    (10008 JetStream system temporarily unavailable, 10004, 10163). False for every
    answer that will not change by waiting, including JetStream not enabled (10039,
    10076), which `ensure_jetstream` turns into `JetStreamNotEnabledError`.
    """
    if isinstance(error, JetStreamUnavailableError):
        return False
    if isinstance(error, APIError):
        if error.err_code is None:
            # nats-py turns "no responders" into a bare ServiceUnavailableError.
            return isinstance(error, ServiceUnavailableError) or error.code == 503
        return error.err_code in _TRANSIENT_CODES
    return isinstance(error, (TimeoutError, NoRespondersError))


async def while_jetstream_starts(
    operation: Callable[[], Awaitable[T]], *, timeout: float, what: str
) -> T:
    """`await operation()`, called again while it fails with a transient JetStream error.

    For start-up calls (account info, creating streams and buckets) made while a
    cluster may still be electing its leader. Pauses grow from 0.1 s to 1 s; the first
    wait is logged once at INFO. After `timeout` seconds the last transient error
    becomes a `JetStreamUnavailableError` naming `what` (a noun phrase: "stream
    NAQ_JOBS"), the wait and the fix; any other error propagates at once, unchanged.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    pause = _FIRST_PAUSE
    waiting = False
    while True:
        try:
            result = await operation()
        except Exception as error:
            if not is_transient_jetstream_error(error):
                raise
            last = error
        else:
            if waiting:
                logger.info("JetStream is ready: got %s after %.1f s", what, loop.time() - started)
            return result
        now = loop.time()
        if now >= deadline:
            raise JetStreamUnavailableError(
                f"waited {timeout:g} s for {what}, but JetStream stayed unavailable (last "
                f"error: {_describe_jetstream_error(last)}); in a cluster, check that a "
                "majority of the nodes are up and routed to each other; if it only needs "
                f"longer to start, raise {ENV_VARS['jetstream_timeout']}"
            ) from None
        if not waiting:
            waiting = True
            logger.info(
                "waiting up to %g s for %s: JetStream is not ready (%s); a JetStream cluster "
                "answers only once it has elected a leader",
                timeout, what, _describe_jetstream_error(last),
            )  # fmt: skip
        await asyncio.sleep(min(pause, deadline - now))
        pause = min(pause * 2, _LONGEST_PAUSE)


def _describe_jetstream_error(error: BaseException) -> str:
    if isinstance(error, APIError):
        if error.err_code is None and error.code is None:
            return "no responders: nothing answers the JetStream API"
        return f"{error.description} (status {error.code}, JetStream error {error.err_code})"
    if isinstance(error, NoRespondersError):
        return "no responders: nothing answers the JetStream API"
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return f"{type(error).__name__}: {error}"


async def ensure_jetstream(
    client: Client,
    timeout: float = DEFAULT_JETSTREAM_TIMEOUT,
    *,
    request_timeout: float = 2.0,
) -> AccountInfo:
    """The account's JetStream info, once JetStream answers; or why it will not.

    Asked of the server rather than read from its INFO, because JetStream may be on for
    the server yet off for the account we are logged into. A server or account without
    JetStream raises `JetStreamNotEnabledError` at once; JetStream that is starting (a
    cluster electing its leader) is waited for up to `timeout` seconds
    (`ConnectionSettings.jetstream_timeout` is the setting to pass), each request
    waiting at most `request_timeout`.
    """
    where = client.connected_url
    url = _redact_url(where.geturl()) if where is not None else "the server"
    js = client.jetstream(timeout=min(request_timeout, timeout))

    async def account_info() -> AccountInfo:
        try:
            return await js.account_info()
        except APIError as error:
            reason = _not_enabled(client, error, url)
            if reason is not None:
                raise JetStreamNotEnabledError(reason) from None
            raise

    return await while_jetstream_starts(
        account_info, timeout=timeout, what=f"the JetStream account info of {url}"
    )


def _not_enabled(client: Client, error: APIError, url: str) -> str | None:
    """The message for an answer that means "no JetStream here", else None."""
    if error.err_code == _NOT_ENABLED_FOR_ACCOUNT:
        return (
            f"the NATS server at {url} has JetStream, but not for the account this "
            "connection logged into (JetStream not enabled for account): enable it for "
            "that account in the server's configuration (`jetstream: enabled` in its "
            "accounts block), or connect as a user of an account that has it"
        )
    if error.err_code == _NOT_ENABLED:
        return (
            f"the NATS server at {url} has JetStream switched off (JetStream not enabled): "
            "start nats-server with -js, or use `naq server`, and check the server's log "
            "for why JetStream is off"
        )
    if error.err_code is None and not _server_info(client).get("jetstream"):
        return (
            f"the NATS server at {url} has no JetStream (nothing answers the JetStream API "
            "and the server does not announce it): start nats-server with -js, or use "
            "`naq server`"
        )
    return None
