"""`naq dashboard [--host 127.0.0.1] [--port 8000] [--token T | --user U --password P]`:
the web dashboard, served by uvicorn until Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

from naq_resilience.cli._common import exits

__all__ = ["add_dashboard_command"]


def add_dashboard_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dashboard",
        help="the web dashboard: queues, dead letters, schedules, breakers, live",
        description=(
            "Serve the web dashboard and its JSON API (/api/openapi.json). It listens on "
            "127.0.0.1 unless told otherwise, and refuses any other address without a "
            "token (or a user and password). Needs: pip install 'naq-resilience[dashboard]'."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument(
        "--token", default=None,
        help="ask every request for this token (default: $NAQ_DASHBOARD_TOKEN, else none)",
    )  # fmt: skip
    parser.add_argument(
        "--user", default=None, help="ask for this user and --password (default: none)"
    )
    parser.add_argument(
        "--password", default=None,
        help="the --user's password (default: $NAQ_DASHBOARD_PASSWORD, else none)",
    )  # fmt: skip
    parser.add_argument("--nats-url", default=None, help="the NATS server (default: $NAQ_NATS_URL)")
    parser.add_argument(
        "--sample-every", type=float, default=2.0, metavar="SECONDS",
        help="read the fleet for the live pages every SECONDS (default: 2)",
    )  # fmt: skip
    parser.set_defaults(handler=_dashboard)


@exits
def _dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from naq_resilience.dashboard import Credentials, check_bind, create_app, is_loopback
    except ImportError as exc:
        print(
            f"naq dashboard: {exc.name or exc} is not installed; "
            "pip install 'naq-resilience[dashboard]'",
            file=sys.stderr,
        )
        return 1
    token = args.token or os.environ.get("NAQ_DASHBOARD_TOKEN") or None
    password = args.password or os.environ.get("NAQ_DASHBOARD_PASSWORD") or None
    try:
        credentials = Credentials(token=token, user=args.user, password=password)
        check_bind(args.host, credentials)
    except ValueError as exc:
        print(f"naq dashboard: {exc}", file=sys.stderr)
        return 2
    # Bind here, so a taken port is one clear line rather than uvicorn's traceback.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        why = "is taken" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
        print(
            f"naq dashboard: port {args.port} on {args.host} {why}; pass --port to choose "
            "another",
            file=sys.stderr,
        )
        return 1
    sock.listen(128)  # connections wait in the backlog while the app starts
    port = sock.getsockname()[1]
    app = create_app(
        args.nats_url, credentials=credentials, loopback_only=is_loopback(args.host),
        sample_every=args.sample_every,
    )  # fmt: skip
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"naq dashboard: serving http://{shown}:{port} (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=1, lifespan="on", access_log=False
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
