"""connect(), ConnectionSettings and ensure_jetstream against real nats-server processes."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import AccountInfo
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from naq_resilience.jetstream.connection import (
    DEFAULT_URL,
    ENV_VARS,
    ConnectionSettings,
    JetStreamNotEnabledError,
    JetStreamUnavailableError,
    NatsUnavailableError,
    connect,
    ensure_jetstream,
    is_transient_jetstream_error,
    while_jetstream_starts,
)
from naq_resilience.jetstream.server import EmbeddedServer, find_nats_server

FIX = "start one with `naq server`, or set NAQ_NATS_URL"


@pytest.fixture(autouse=True)
def _no_nats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nats_server(port: int, *options: str) -> subprocess.Popen[bytes]:
    """nats-server on `port` with `options`, once it accepts connections."""
    process = subprocess.Popen(
        [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(10)
                raise AssertionError("nats-server exited or did not listen") from None
            time.sleep(0.01)


@contextmanager
def plain_server(*options: str) -> Iterator[str]:
    """A nats-server started by hand with `options` (no JetStream unless asked)."""
    port = free_port()
    process = start_nats_server(port, *options)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


# --------------------------------------------------------------------------- settings


def test_defaults_without_environment() -> None:
    settings = ConnectionSettings()
    assert settings.url == DEFAULT_URL == "nats://127.0.0.1:4222"
    assert settings.servers == [DEFAULT_URL]
    assert settings.ssl_context() is None
    assert ConnectionSettings.from_env() == settings


def test_url_default_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAQ_NATS_URL", "nats://broker:4333")
    assert ConnectionSettings().url == "nats://broker:4333"
    assert ConnectionSettings("nats://given:1").url == "nats://given:1"


def test_from_env_reads_every_variable_and_overrides_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {
        "NAQ_NATS_URL": "nats://a:1,nats://b:2",
        "NAQ_NATS_USER": "alice",
        "NAQ_NATS_PASSWORD": "pw-from-env",
        "NAQ_NATS_TOKEN": "token-from-env",
        "NAQ_NATS_CREDS": "/etc/nats/user.creds",
        "NAQ_NATS_NKEY": "/etc/nats/user.nk",
        "NAQ_NATS_TLS_CA": "/etc/nats/ca.pem",
        "NAQ_NATS_TLS_CERT": "/etc/nats/cert.pem",
        "NAQ_NATS_TLS_KEY": "/etc/nats/key.pem",
        "NAQ_JETSTREAM_TIMEOUT": "12.5",
    }
    for var, value in values.items():
        monkeypatch.setenv(var, value)
    settings = ConnectionSettings.from_env(user="bob", name="svc")
    assert settings.servers == ["nats://a:1", "nats://b:2"]
    assert settings.user == "bob"
    assert settings.name == "svc"
    assert settings.password == "pw-from-env"
    assert settings.token == "token-from-env"
    assert settings.credentials_file == "/etc/nats/user.creds"
    assert settings.nkey_seed_file == "/etc/nats/user.nk"
    assert (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) == (
        "/etc/nats/ca.pem",
        "/etc/nats/cert.pem",
        "/etc/nats/key.pem",
    )
    assert settings.jetstream_timeout == 12.5


def test_jetstream_timeout_defaults_to_30_s_and_refuses_what_is_not_a_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ConnectionSettings().jetstream_timeout == 30.0
    monkeypatch.setenv("NAQ_JETSTREAM_TIMEOUT", "half a minute")
    with pytest.raises(ValueError, match=r"^NAQ_JETSTREAM_TIMEOUT=") as caught:
        ConnectionSettings.from_env()
    assert str(caught.value) == (
        "NAQ_JETSTREAM_TIMEOUT='half a minute' is not a number of seconds; set e.g. "
        "NAQ_JETSTREAM_TIMEOUT=60"
    )
    assert ConnectionSettings.from_env(jetstream_timeout=5).jetstream_timeout == 5


def test_secrets_never_appear_in_repr() -> None:
    settings = ConnectionSettings(
        "nats://carol:url-secret@broker:4222,nats://url-token@other:4222",
        user="carol",
        password="pass-secret",
        token="token-secret",
        connect_timeout=1.5,
    )
    shown = repr(settings)
    for secret in ("url-secret", "pass-secret", "token-secret", "url-token"):
        assert secret not in shown
        assert secret not in str(settings)
    assert "nats://***@broker:4222,nats://***@other:4222" in shown
    assert "user='carol'" in shown
    assert "password='***'" in shown
    assert "connect_timeout=1.5" in shown


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_reconnect_attempts": 0}, "allow_reconnect=False"),
        ({"max_reconnect_attempts": -2}, "-1"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"url": " , "}, "no server"),
        ({"tls_context": ssl.create_default_context(), "tls_ca_file": "ca.pem"}, "not both"),
        ({"tls_key_file": "key.pem"}, "tls_cert_file"),
        ({"jetstream_timeout": 0}, "jetstream_timeout must be a positive number of seconds"),
        ({"jetstream_timeout": float("nan")}, "jetstream_timeout must be a finite number"),
    ],
)
def test_inconsistent_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConnectionSettings(**options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- connecting


def test_connect_from_the_environment_with_jetstream(
    monkeypatch: pytest.MonkeyPatch, nats_url: str
) -> None:
    monkeypatch.setenv("NAQ_NATS_URL", nats_url)

    async def main() -> tuple[bool, int, int]:
        nc = await connect(max_reconnect_attempts=-1, name="test-connection")
        try:
            info = await ensure_jetstream(nc)
            return nc.is_connected, info.limits.max_streams, nc.options["max_reconnect_attempts"]
        finally:
            await nc.close()

    connected, max_streams, attempts = asyncio.run(main())
    assert connected
    assert max_streams == -1
    assert attempts == -1


def test_unreachable_server_is_one_clear_error_without_credentials() -> None:
    port = free_port()
    url = f"nats://dave:url-secret@127.0.0.1:{port}"

    async def main() -> None:
        await connect(url=url, password="pass-secret", max_reconnect_attempts=-1)

    with pytest.raises(NatsUnavailableError) as caught:
        asyncio.run(main())
    error = caught.value
    message = str(error)
    assert isinstance(error, ConnectionError)
    assert f"nats://***@127.0.0.1:{port}" in message
    assert FIX in message
    assert "ConnectionRefusedError" in message
    assert "url-secret" not in message
    assert "pass-secret" not in message
    assert error.__cause__ is None
    assert error.__suppress_context__


def test_rejected_credentials_say_so_without_the_password() -> None:
    with plain_server("--user", "erin", "--pass", "right-secret") as url:

        async def attempt(password: str) -> bool:
            nc = await connect(url=url, user="erin", password=password)
            try:
                return nc.is_connected
            finally:
                await nc.close()

        with pytest.raises(NatsUnavailableError) as caught:
            asyncio.run(attempt("wrong-secret"))
        assert asyncio.run(attempt("right-secret"))
    message = str(caught.value)
    assert "rejected the credentials" in message
    assert "Authorization Violation" in message
    assert "wrong-secret" not in message
    assert "right-secret" not in message


def test_token_is_passed_through() -> None:
    with plain_server("--auth", "the-token") as url:

        async def main() -> bool:
            nc = await connect(url=url, token="the-token")
            try:
                return nc.is_connected
            finally:
                await nc.close()

        assert asyncio.run(main())


async def ensure_jetstream_at(url: str, **options: object) -> AccountInfo:
    nc = await connect(url=url)
    try:
        return await ensure_jetstream(nc, **options)  # type: ignore[arg-type]
    finally:
        await nc.close()


def waits_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting up to")]


def test_ensure_jetstream_names_the_fix_on_a_server_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Measured: a server without -js has nothing on $JS.API.INFO (no responders) and
    announces no `jetstream` in its INFO. That is an answer, so nothing is waited for."""
    caplog.set_level(logging.INFO, logger="naq_resilience")
    with plain_server() as url, pytest.raises(JetStreamNotEnabledError) as caught:
        asyncio.run(ensure_jetstream_at(url))
    assert isinstance(caught.value, JetStreamUnavailableError)  # old `except`s still match
    assert str(caught.value) == (
        f"the NATS server at {url} has no JetStream (nothing answers the JetStream API and "
        "the server does not announce it): start nats-server with -js, or use `naq server`"
    )
    assert waits_logged(caplog) == []


def test_ensure_jetstream_names_an_account_without_jetstream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Measured: the server has JetStream, the account not: 503, err_code 10039."""
    config = tmp_path / "accounts.conf"
    config.write_text(
        f"""
        jetstream {{ store_dir: "{tmp_path / "js"}" }}
        accounts {{
          JOBS: {{ jetstream: enabled, users: [{{ user: jobs, password: jobs-secret }}] }}
          PLAIN: {{ users: [{{ user: plain, password: plain-secret }}] }}
        }}
        """
    )
    caplog.set_level(logging.INFO, logger="naq_resilience")
    with plain_server("-c", str(config)) as url:
        host = url.removeprefix("nats://")
        asyncio.run(ensure_jetstream_at(f"nats://jobs:jobs-secret@{host}"))
        with pytest.raises(JetStreamNotEnabledError) as caught:
            asyncio.run(ensure_jetstream_at(f"nats://plain:plain-secret@{host}"))
    assert str(caught.value) == (
        f"the NATS server at nats://***@{host} has JetStream, but not for the account this "
        "connection logged into (JetStream not enabled for account): enable it for that "
        "account in the server's configuration (`jetstream: enabled` in its accounts block), "
        "or connect as a user of an account that has it"
    )
    assert waits_logged(caplog) == []


def test_ensure_jetstream_names_jetstream_switched_off() -> None:
    """10076 ("JetStream not enabled") is not one this suite can make a real server send,
    so a responder on a real server gives the answer nats-server gives."""
    answer = (
        b'{"type":"io.nats.jetstream.api.v1.account_info_response",'
        b'"error":{"code":503,"err_code":10076,"description":"JetStream not enabled"}}'
    )

    async def main(url: str) -> None:
        responder = await connect(url=url)
        try:

            async def respond(msg: Msg) -> None:
                await msg.respond(answer)

            await responder.subscribe("$JS.API.INFO", cb=respond)
            await responder.flush()
            await ensure_jetstream_at(url)
        finally:
            await responder.close()

    with plain_server() as url, pytest.raises(JetStreamNotEnabledError) as caught:
        asyncio.run(main(url))
    assert str(caught.value) == (
        f"the NATS server at {url} has JetStream switched off (JetStream not enabled): start "
        "nats-server with -js, or use `naq server`, and check the server's log for why "
        "JetStream is off"
    )


# --------------------------------------------------------------------------- waiting for JetStream


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (nats.errors.TimeoutError(), True),
        (TimeoutError(), True),  # asyncio.TimeoutError since 3.11
        (nats.errors.NoRespondersError(), True),
        (ServiceUnavailableError(), True),  # nats-py's translation of no responders
        (ServiceUnavailableError(code=503, err_code=10008), True),
        (APIError(code=503, err_code=10008), True),
        (ServiceUnavailableError(code=503, err_code=10039), False),  # not for the account
        (ServiceUnavailableError(code=503, err_code=10076), False),  # not enabled
        (ServiceUnavailableError(code=503, err_code=10063), False),  # sequence mismatch
        (NotFoundError(code=404, err_code=10059), False),
        (JetStreamNotEnabledError("no"), False),
        (JetStreamUnavailableError("gave up"), False),
        (ValueError("x"), False),
    ],
)
def test_which_jetstream_errors_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient_jetstream_error(error) is transient


def test_a_failure_that_waiting_cannot_fix_propagates_at_once(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="naq_resilience")

    async def main() -> None:
        nc = await connect(url=nats_url)
        try:
            js = nc.jetstream()
            await while_jetstream_starts(
                lambda: js.stream_info("NO_SUCH_STREAM"), timeout=30, what="stream NO_SUCH_STREAM"
            )
        finally:
            await nc.close()

    with pytest.raises(NotFoundError):
        asyncio.run(main())
    assert waits_logged(caplog) == []


def test_while_jetstream_starts_refuses_a_timeout_that_is_not_positive() -> None:
    async def never() -> None:
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got 0"):
        asyncio.run(while_jetstream_starts(never, timeout=0, what="nothing"))


class Cluster:
    """Three JetStream nodes routed to each other, which a test starts one at a time.

    With one node up there is no majority, so no meta leader: measured, JetStream then
    drops requests (timeouts) for a few seconds and answers 503 / 10008 "JetStream system
    temporarily unavailable" after that, until a majority is up and a leader elected.
    """

    def __init__(self, store: Path) -> None:
        self.store = store
        self.ports = [free_port() for _ in range(3)]
        self.route_ports = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def url(self, node: int) -> str:
        return f"nats://127.0.0.1:{self.ports[node]}"

    def start(self, node: int) -> None:
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in self.route_ports)
        options = [
            "-js", "-sd", str(self.store / f"n{node}"), "-n", f"naq-test-n{node}",
            "--cluster_name", "naq-test", "--cluster",
            f"nats://127.0.0.1:{self.route_ports[node]}", "--routes", routes,
        ]  # fmt: skip
        self.processes.append(start_nats_server(self.ports[node], *options))

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()


def test_a_wait_for_a_cluster_without_a_leader_times_out_naming_the_fix(
    cluster: Cluster,
) -> None:
    cluster.start(0)
    with pytest.raises(JetStreamUnavailableError) as caught:
        asyncio.run(ensure_jetstream_at(cluster.url(0), timeout=1))
    error = caught.value
    assert not isinstance(error, JetStreamNotEnabledError)
    message = str(error)
    assert message.startswith(
        f"waited 1 s for the JetStream account info of {cluster.url(0)}, but JetStream stayed "
        "unavailable (last error: "
    )
    assert "in a cluster, check that a majority of the nodes are up" in message
    assert "raise NAQ_JETSTREAM_TIMEOUT" in message


def test_the_wait_lasts_until_the_cluster_elects_a_leader(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="naq_resilience")
    seen: list[BaseException] = []

    async def main() -> AccountInfo:
        nc = await connect(url=cluster.url(0))
        try:
            js = nc.jetstream(timeout=1)

            async def account_info() -> AccountInfo:
                try:
                    return await js.account_info()
                except Exception as error:
                    seen.append(error)
                    raise

            waiting = asyncio.create_task(
                while_jetstream_starts(account_info, timeout=120, what="the account info")
            )
            for _ in range(2000):  # until it has failed once and is waiting
                if waits_logged(caplog) or waiting.done():
                    break
                await asyncio.sleep(0.01)
            assert not waiting.done(), "JetStream answered with one node of three up"
            await asyncio.to_thread(cluster.start, 1)
            await asyncio.to_thread(cluster.start, 2)
            info = await waiting
            await ensure_jetstream(nc)  # and the same through ensure_jetstream, at once
            return info
        finally:
            await nc.close()

    cluster.start(0)
    assert isinstance(asyncio.run(main()), AccountInfo)
    assert seen
    assert all(is_transient_jetstream_error(error) for error in seen)
    [waiting] = waits_logged(caplog)  # logged once, however many tries
    assert waiting.startswith("waiting up to 120 s for the account info: JetStream is not ready")
    assert any(
        m.startswith("JetStream is ready: got the account info after")
        for m in (r.getMessage() for r in caplog.records)
    )


@pytest.mark.skipif(importlib.util.find_spec("nkeys") is not None, reason="nkeys is installed")
def test_credentials_without_nkeys_name_the_missing_package(nats_url: str) -> None:
    with pytest.raises(NatsUnavailableError, match=r"pip install 'naq-resilience\[nkeys\]'"):
        asyncio.run(connect(url=nats_url, credentials_file="user.creds"))


@pytest.mark.skipif(importlib.util.find_spec("nkeys") is None, reason="needs the nkeys extra")
def test_an_nkey_seed_file_logs_in(tmp_path: Path) -> None:
    import nkeys  # type: ignore[import-not-found,unused-ignore]

    def user(name: str) -> tuple[Path, str]:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        path = tmp_path / f"{name}.nk"
        path.write_bytes(seed)
        return path, nkeys.from_seed(bytearray(seed)).public_key.decode()

    allowed, public = user("allowed")
    stranger, _ = user("stranger")
    config = tmp_path / "nkeys.conf"
    config.write_text(f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n")
    with plain_server("-c", str(config)) as url:

        async def main(seed: Path) -> bool:
            nc = await connect(url=url, nkey_seed_file=str(seed))
            try:
                return nc.is_connected
            finally:
                await nc.close()

        assert asyncio.run(main(allowed))
        with pytest.raises(NatsUnavailableError, match="rejected the credentials"):
            asyncio.run(main(stranger))


needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs openssl to make a cert"
)
NO_CA_FIX = (
    "the server requires TLS and its certificate is not signed by a CA this machine trusts: "
    "set NAQ_NATS_TLS_CA to the CA file that signed it"
)


def self_signed(directory: Path, name: str, san: str = "IP:127.0.0.1") -> tuple[str, str]:
    """A certificate valid for `san` that is its own CA, and its key."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName={san}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


async def connects(settings: ConnectionSettings) -> bool:
    nc = await connect(settings)
    try:
        return nc.is_connected
    finally:
        await nc.close()


def refusal(settings: ConnectionSettings) -> str:
    with pytest.raises(NatsUnavailableError) as caught:
        asyncio.run(connects(settings))
    message = str(caught.value)
    assert FIX not in message  # no server to start: TLS is what needs fixing
    return message


@needs_openssl
def test_tls_with_a_ca_file(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "server")
    with plain_server("--tls", "--tlscert", cert, "--tlskey", key) as url:
        assert asyncio.run(connects(ConnectionSettings(url, tls_ca_file=cert)))
        message = refusal(ConnectionSettings(url, connect_timeout=1))
    assert message.startswith(f"cannot connect to NATS at {url} over TLS (")
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert message.endswith(NO_CA_FIX)


@needs_openssl
def test_tls_names_the_ca_file_that_did_not_sign_the_server_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "server")
    other, _ = self_signed(tmp_path, "other")
    with plain_server("--tls", "--tlscert", cert, "--tlskey", key) as url:
        message = refusal(ConnectionSettings(url, tls_ca_file=other, connect_timeout=1))
    assert message.endswith(
        f"the server's certificate is not signed by the CA in NAQ_NATS_TLS_CA ({other}): point "
        "NAQ_NATS_TLS_CA at the CA that signed the server's certificate"
    )


@needs_openssl
def test_tls_says_when_the_certificate_is_for_another_host(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "elsewhere", san="DNS:nats.elsewhere.invalid")
    with plain_server("--tls", "--tlscert", cert, "--tlskey", key) as url:
        message = refusal(ConnectionSettings(url, tls_ca_file=cert, connect_timeout=1))
    assert "IP address mismatch" in message
    assert message.endswith(
        "the server's certificate does not name the host this client connected to: connect "
        "with a host name or address the certificate lists (check NAQ_NATS_URL), or reissue "
        "the certificate with that host in its subjectAltName"
    )


@needs_openssl
def test_tls_asked_of_a_server_without_tls_is_refused_not_sent_in_plain_text(
    tmp_path: Path,
) -> None:
    """Measured: nats-py connects in plain text when the server does not require TLS,
    whatever the client was given; that connection is refused here."""
    cert, _ = self_signed(tmp_path, "server")
    with plain_server() as url:
        with_ca = refusal(ConnectionSettings(url, tls_ca_file=cert))
        tls_url = url.replace("nats://", "tls://")
        with_scheme = refusal(ConnectionSettings(tls_url))
    fix = (
        "does not require TLS, so this connection would be plain text (nats-py uses TLS only "
        "when the server requires it): require TLS on the server (a `tls { cert_file, "
        "key_file }` block, without allow_non_tls), or, if plain text is intended, use a "
        "nats:// URL and unset NAQ_NATS_TLS_CA, NAQ_NATS_TLS_CERT and NAQ_NATS_TLS_KEY"
    )
    assert (
        with_ca == f"TLS is configured (NAQ_NATS_TLS_CA={cert}) but the NATS server at {url} {fix}"
    )
    assert with_scheme == (
        f"TLS is configured (a tls:// URL) but the NATS server at {tls_url} {fix}"
    )


@needs_openssl
def test_tls_names_the_client_certificate_a_server_asks_for(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "server")
    client, client_key = self_signed(tmp_path, "client")
    stranger, stranger_key = self_signed(tmp_path, "stranger")
    verifying = ("--tlsverify", "--tlscert", cert, "--tlskey", key, "--tlscacert", client)
    with plain_server(*verifying) as url:
        settings = ConnectionSettings(url, tls_ca_file=cert, connect_timeout=1)
        assert asyncio.run(
            connects(replace(settings, tls_cert_file=client, tls_key_file=client_key))
        )
        without = refusal(settings)
        untrusted = refusal(replace(settings, tls_cert_file=stranger, tls_key_file=stranger_key))
    assert without.endswith(
        "the server requires a client certificate: set NAQ_NATS_TLS_CERT and NAQ_NATS_TLS_KEY "
        "to this client's certificate and key"
    )
    assert untrusted.endswith(
        f"the server did not accept the client certificate in NAQ_NATS_TLS_CERT ({stranger}): "
        "use one signed by a CA the server trusts (the ca_file of its tls block)"
    )


def test_connection_events_reach_the_naq_resilience_logger(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from naq_resilience.jetstream import connection

    monkeypatch.setattr(connection, "LOST_AFTER", 300.0)  # a restart is a blip, however slow

    async def main(server: EmbeddedServer) -> None:
        nc = await connect(url=server.url, reconnect_time_wait=0.05)
        try:
            await asyncio.to_thread(server.kill)
            await asyncio.to_thread(server.restart)
            for _ in range(1000):
                if nc.is_connected and any("reconnected" in m for m in caplog.messages):
                    return
                await asyncio.sleep(0.01)
        finally:
            await nc.close()

    caplog.set_level(logging.DEBUG, logger="naq_resilience")
    with EmbeddedServer() as server:
        asyncio.run(main(server))
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "naq_resilience"]

    def level(start: str) -> set[int]:
        return {n for n, m in said if m.startswith(start)}

    # A blip (back before LOST_AFTER) is only the INFO line of its reconnect; our own
    # close is not news (see test_connection_reports.py for an outage that lasts).
    assert level("disconnected from NATS at nats://127.0.0.1:") == {logging.DEBUG}
    assert level("reconnected to NATS at nats://127.0.0.1:") == {logging.INFO}
    assert level("NATS connection to ") == {logging.DEBUG}
    assert not [m for n, m in said if n >= logging.WARNING]
