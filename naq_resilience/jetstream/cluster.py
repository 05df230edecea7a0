"""A local JetStream cluster: N nats-server nodes on loopback, for development and tests.

Each node is an `EmbeddedServer` given a cluster name, a route port and routes to
every other node, with its own store in `node-<i>/` (and its log beside it) under the
cluster's store dir, a temporary one removed by `close()` unless one is given. What
`EmbeddedServer` promises about orphans holds for every node: its own session, a
finalizer, and on Linux the kernel's SIGTERM when Python dies.

Readiness is asked of the servers (measured with nats-server 2.15). A node's own check
passes within tens of milliseconds, before the nodes have found each other, so
`start()` then waits until the cluster can serve JetStream:

- every node's `/jsz` names the same meta leader, and the leader's own `/jsz` counts
  every other node as a current follower. Until then the leader may not have seen
  enough peers to place a stream's replicas (its `cluster_size` starts below N and
  grows as peers report in); a stream create sent the moment each node merely *named*
  a leader once timed out in our runs;
- then `/healthz?js-meta-only=true` answers 200 on every node: each says itself that
  it is current with that leader.

Not plain `/healthz`: it also checks every stream and consumer replica on the node,
which is the streams' business (it answers 503 for a moment whenever a stream is
created) and would tie the cluster's readiness to whatever a test did with them. Not
`?js-server-only=true`: in 2.15 it answers 200 before any leader exists. And
nats-server logs a warning for every failing `/healthz` request, so it is asked only
once `/jsz`, which logs nothing, says the answer should be yes.

JetStream knows a node by its server name (`<cluster>-node-<i>`), so a kept store must
be started again under the same names: a cluster on a given store dir keeps its
generated name in `<store_dir>/cluster-name`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from naq_resilience.jetstream.server import (
    _PORT_RACE_ATTEMPTS,
    EmbeddedServer,
    ServerStartError,
    _free_port,
    _healthy,
    _probe_host,
    _Resources,
    _url_host,
    default_store_dir,
    find_nats_server,
)

__all__ = ["EmbeddedCluster", "default_cluster_store_dir"]

_META_READY_PATH = "/healthz?js-meta-only=true"
_NAME_FILE = "cluster-name"
_LOG_NAME = "nats-server.log"
_LOG_TAIL_BYTES = 1500
_MAX_PAUSE = 0.25

Answer = dict[str, Any]


def default_cluster_store_dir(size: int) -> Path:
    """Where `naq server --cluster N` keeps its nodes: beside the single server's store.

    One dir per size, because a store remembers its cluster's members: a smaller
    cluster started on a bigger one's stores would count the missing nodes against its
    majority.
    """
    return default_store_dir().with_name(f"jetstream-cluster-{size}")


class EmbeddedCluster:
    """A JetStream cluster of `size` nats-server child processes, on loopback by default.

    `port` is the first node's client port and the others take the next free ports
    above it (all chosen free when not given); `monitor_port` likewise. Ports are fixed
    at the first start and kept by `restart(i)`, so clients and the other nodes' routes
    find a restarted node where it was. Node `i` (an index into `nodes`, from 0) keeps
    its store in `node-<i + 1>/`.

    `size` must be at least 2 (nats-server refuses a JetStream cluster without routes;
    one server is an `EmbeddedServer`) and is best odd: JetStream needs a majority of
    the nodes up, so 3 survive one failure, and 4 no more than that.

    `name` defaults to the one kept in a given store dir (see the module docstring),
    else a new unique one; naming a kept store's cluster otherwise is refused.
    """

    def __init__(
        self,
        size: int = 3,
        host: str = "127.0.0.1",
        port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        *,
        monitor_port: int | None = None,
        name: str | None = None,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if size < 2:
            raise ValueError(
                f"a cluster needs at least 2 nodes, got {size}: nats-server refuses a "
                "JetStream cluster without routes (one server is an EmbeddedServer)"
            )
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive, got {startup_timeout!r}")
        if port and port == monitor_port:
            raise ValueError(f"port and monitor_port must differ, both are {port}")
        self.host = host
        self.startup_timeout = startup_timeout
        self._size = size
        self._port = port or None
        self._monitor_port = monitor_port or None
        self._binary = None if binary is None else str(binary)
        self._resources = _Resources()
        self._nodes: list[EmbeddedServer] = []
        self._finalizer = weakref.finalize(self, _release, self._nodes, self._resources)
        self._kept = store_dir is not None
        self._store_dir = (
            Path(store_dir) if store_dir is not None else self._resources.scratch_path("store")
        )
        stored = self._stored_name()
        if name and stored and name != stored:
            raise ValueError(
                f"{self._store_dir} holds cluster {stored!r}, not {name!r}: JetStream knows "
                "nodes by name, so nodes renamed on it would never elect a leader"
            )
        self._name = name or stored or f"naq-{uuid.uuid4().hex[:12]}"
        self._closed = False

    # ------------------------------------------------------------------ state

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        """The cluster name; node `i` is named `<name>-node-<i + 1>`."""
        return self._name

    @property
    def store_dir(self) -> Path:
        return self._store_dir

    @property
    def nodes(self) -> tuple[EmbeddedServer, ...]:
        if not self._nodes:
            raise RuntimeError("the nodes are made at the first start(); start the cluster first")
        return tuple(self._nodes)

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, in node order."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated, as `ConnectionSettings(url=...)` takes them."""
        return ",".join(self.urls)

    @property
    def running(self) -> bool:
        """Whether every node runs."""
        return bool(self._nodes) and all(node.running for node in self._nodes)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start every node and return once the cluster serves JetStream.

        That is: every node ready, the meta leader elected and every node current with
        it (the module docstring says how that is asked). On kept stores the election
        waits out nats-server's election timeout (seconds), a fresh cluster elects
        within a second. Raises `ServerStartError` (with the nodes' log tails) if a
        node exits or the cluster is not serving within `startup_timeout`, every node
        stopped either way.
        """
        if self._closed:
            raise RuntimeError("this EmbeddedCluster is closed; create a new one")
        if any(node.running for node in self._nodes):
            raise RuntimeError("the cluster is already running; restart(i) restarts one node")
        binary = self._binary if self._binary is not None else find_nats_server()
        deadline = time.monotonic() + self.startup_timeout
        try:
            if self._nodes:
                for node in self._nodes:
                    node.start()
            else:
                self._first_start(binary)
            self._wait_serving(deadline)
        except BaseException:
            for node in self._nodes:
                node.stop()
            raise

    def kill(self, index: int) -> None:
        """SIGKILL node `index` at once, like a crashed broker; its store stays."""
        self._node(index).kill()

    def stop(self, index: int, timeout: float = 5.0) -> None:
        """Stop node `index` cleanly (SIGTERM, then SIGKILL if it lingers); its store stays."""
        self._node(index).stop(timeout)

    def restart(self, index: int) -> None:
        """Start node `index` again on its ports and store (stopping it first if running).

        With a majority of the nodes then running, it returns once the node has rejoined:
        the readiness `start()` waits for, over the running nodes. With fewer, no leader
        can exist yet, so it returns once the node itself is ready. On a timeout it raises
        `ServerStartError` and leaves the node running, for a look at why.
        """
        self._node(index).restart()
        if 2 * sum(node.running for node in self._nodes) > self._size:
            self._wait_serving(time.monotonic() + self.startup_timeout)

    def close(self) -> None:
        """Stop every node and remove the scratch dir (temporary stores and logs)."""
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
        running = sum(node.running for node in self._nodes)
        return (
            f"<EmbeddedCluster {self._name} {running}/{self._size} running "
            f"store={str(self._store_dir)!r}>"
        )

    # ------------------------------------------------------------------ leaders

    def meta_leader(self, timeout: float = 30.0) -> int:
        """The index of the node leading the JetStream meta group, waiting for one.

        The leader is the running node whose own `/jsz` says it leads, so a dead
        leader is never reported: after killing one this waits out the election.
        Raises `TimeoutError` if no single node claims it within `timeout`.
        """

        def leads(node: EmbeddedServer, jsz: Answer) -> bool:
            return _field(jsz, "meta_cluster").get("leader") == node.name

        return self._leader("/jsz", leads, "the JetStream meta group", timeout)

    def stream_leader(self, stream: str, timeout: float = 30.0) -> int:
        """The index of the node leading stream `stream`, waiting for one.

        Asked as `meta_leader()` is, of each running node's `/jsz?streams=true`; the
        stream may be in any account. Raises `TimeoutError` if no single node claims it
        within `timeout` (no such stream, or too few of its replicas running).
        """

        def leads(node: EmbeddedServer, jsz: Answer) -> bool:
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        return bool(_field(detail, "cluster").get("leader") == node.name)
            return False

        return self._leader("/jsz?streams=true", leads, f"stream {stream!r}", timeout)

    # ------------------------------------------------------------------ internals

    def _node(self, index: int) -> EmbeddedServer:
        nodes = self.nodes
        if not 0 <= index < len(nodes):
            raise IndexError(
                f"no node {index} in a {len(nodes)}-node cluster (0 to {len(nodes) - 1})"
            )
        return nodes[index]

    def _stored_name(self) -> str | None:
        if not self._kept:
            return None
        try:
            return (self._store_dir / _NAME_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    def _first_start(self, binary: str) -> None:
        """Make the nodes on fresh ports and start them, again on a port clash.

        Every node's routes name every other node's route port, so those are picked
        before any node starts, and a clash on one (another process bound it since)
        means new ports for the whole cluster: a node moved alone would leave the
        others soliciting a port that may by then belong to someone else's server.
        """
        if self._kept:
            self._store_dir.mkdir(parents=True, exist_ok=True)
            name_file = self._store_dir / _NAME_FILE
            if not name_file.exists():
                name_file.write_text(f"{self._name}\n")
        for attempt in range(1, _PORT_RACE_ATTEMPTS + 1):
            picked: set[int] = set()
            ports = self._ports_from(self._port, picked)
            monitor_ports = self._ports_from(self._monitor_port, picked)
            cluster_ports = [self._free(picked) for _ in range(self._size)]
            self._nodes[:] = self._make_nodes(binary, ports, monitor_ports, cluster_ports)
            try:
                for node in self._nodes:
                    node.start()
                return
            except BaseException as error:
                for node in self._nodes:
                    node.close()
                self._nodes.clear()
                retry = isinstance(error, ServerStartError) and error.port_in_use in picked
                if not retry or attempt == _PORT_RACE_ATTEMPTS:
                    raise

    def _make_nodes(
        self,
        binary: str,
        ports: list[int | None],
        monitor_ports: list[int | None],
        cluster_ports: list[int],
    ) -> list[EmbeddedServer]:
        route_host = _url_host(self.host)
        nodes = []
        for i in range(self._size):
            directory = self._store_dir / f"node-{i + 1}"
            nodes.append(
                EmbeddedServer(
                    self.host,
                    ports[i],
                    directory,
                    monitor_port=monitor_ports[i],
                    binary=binary,
                    startup_timeout=self.startup_timeout,
                    log_file=directory / _LOG_NAME,
                    server_name=f"{self._name}-node-{i + 1}",
                    cluster_name=self._name,
                    cluster_port=cluster_ports[i],
                    routes=[
                        f"nats-route://{route_host}:{other}"
                        for j, other in enumerate(cluster_ports)
                        if j != i
                    ],
                )
            )
        return nodes

    def _ports_from(self, first: int | None, picked: set[int]) -> list[int | None]:
        """`first` and the next free ports above it; all None (each node picks) if None."""
        if first is None:
            return [None] * self._size
        ports: list[int | None] = [first]
        candidate = first
        while len(ports) < self._size:
            candidate += 1
            if candidate > 65535:
                raise ValueError(f"not enough free ports above {first} for {self._size} nodes")
            if candidate in picked or candidate in (self._port, self._monitor_port):
                continue
            if _bindable(self.host, candidate):
                picked.add(candidate)
                ports.append(candidate)
        return ports

    def _free(self, picked: set[int]) -> int:
        while (port := _free_port(self.host)) in picked or port in (self._port, self._monitor_port):
            pass
        picked.add(port)
        return port

    def _wait_serving(self, deadline: float) -> None:
        pause = 0.01
        while True:
            for index, node in enumerate(self._nodes):
                # A node we stopped has no process; one with a process not running died.
                if node.pid is not None and not node.running:
                    raise ServerStartError(
                        f"node {index} ({node.name}) exited before the cluster served "
                        "JetStream\n" + self._log_tails()
                    )
            problem = self._serving_problem()
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"the {self._size}-node cluster {self._name} did not serve JetStream "
                    f"within {self.startup_timeout:g} s: {problem}\n" + self._log_tails()
                )
            time.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    def _serving_problem(self) -> str | None:
        """None once the running nodes serve JetStream, else what is still missing."""
        views: dict[str, Answer] = {}
        for node in self._nodes:
            if node.running:
                jsz = _ask(node, "/jsz")
                if jsz is None:
                    return f"{node.name} does not answer /jsz yet"
                views[node.name] = _field(jsz, "meta_cluster")
        named = {name: view.get("leader") or "" for name, view in views.items()}
        leaders = set(named.values())
        if len(leaders) != 1 or "" in leaders:
            return f"no meta leader all running nodes agree on yet (each names: {named})"
        leader = leaders.pop()
        if leader not in views:
            return f"the meta leader {leader} is not a running node"
        current = {
            replica.get("name"): replica.get("current")
            for replica in views[leader].get("replicas") or []
        }
        behind = sorted(name for name in views if name != leader and current.get(name) is not True)
        if behind:
            return f"the meta leader {leader} does not count {behind} as current yet"
        for node in self._nodes:
            if node.running and not _answers_ok(node, _META_READY_PATH):
                return f"{node.name} does not answer {_META_READY_PATH} with 200 yet"
        return None

    def _leader(
        self,
        path: str,
        leads: Callable[[EmbeddedServer, Answer], bool],
        what: str,
        timeout: float,
    ) -> int:
        nodes = self.nodes
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            claims = [
                index
                for index, node in enumerate(nodes)
                if (jsz := _ask(node, path)) is not None and leads(node, jsz)
            ]
            if len(claims) == 1:
                return claims[0]
            if time.monotonic() >= deadline:
                running = sum(node.running for node in nodes)
                claimed = f"; nodes {claims} all claim it" if claims else ""
                raise TimeoutError(
                    f"no single running node leads {what} after {timeout:g} s "
                    f"({running} of {len(nodes)} nodes running{claimed})"
                )
            time.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    def _log_tails(self) -> str:
        parts = []
        for index, node in enumerate(self._nodes):
            tail = node.log_tail(_LOG_TAIL_BYTES).rstrip()
            shown = "\n".join(f"    {line}" for line in tail.splitlines()) or "    (empty)"
            parts.append(f"  node {index} log {node.log_file}:\n{shown}")
        return "\n".join(parts)


def _release(nodes: list[EmbeddedServer], resources: _Resources) -> None:
    """Stop the nodes, then remove the scratch dir their stores and logs live in."""
    for node in nodes:
        node.close()
    resources.release()


def _field(answer: Answer, key: str) -> Answer:
    value = answer.get(key)
    return value if isinstance(value, dict) else {}


def _ask(node: EmbeddedServer, path: str) -> Answer | None:
    """A running node's monitoring answer to `path`, if it gave a JSON object with a 200."""
    port = node.monitor_port
    if port is None or not node.running:
        return None
    connection = http.client.HTTPConnection(_probe_host(node.host), port, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        answer = json.loads(body)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        connection.close()
    return answer if isinstance(answer, dict) else None


def _answers_ok(node: EmbeddedServer, path: str) -> bool:
    port = node.monitor_port
    return port is not None and node.running and _healthy(_probe_host(node.host), port, path)


def _bindable(host: str, port: int) -> bool:
    """Whether nats-server could listen on `port` now (Go sets SO_REUSEADDR, so do we)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
