"""The `naq` command, one module per command group.

Each group is added by one `add_*_command(subparsers)` function listed in `COMMANDS`.
The function sets `handler` on its parser: a function from the parsed arguments to the
exit code. Handlers import what they need when they run, so `naq --help` and the other
commands do not pay for it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from naq_resilience.cli.breakers import add_breakers_command
from naq_resilience.cli.dashboard import add_dashboard_command
from naq_resilience.cli.demo import add_demo_command
from naq_resilience.cli.dlq import add_dlq_command
from naq_resilience.cli.errors import add_errors_command
from naq_resilience.cli.incidents import add_incidents_command
from naq_resilience.cli.jobs import add_jobs_command
from naq_resilience.cli.logs import add_worker_logs_command
from naq_resilience.cli.monitor import add_monitor_command
from naq_resilience.cli.schedule import add_schedule_command
from naq_resilience.cli.server import add_server_command
from naq_resilience.cli.status import add_status_command
from naq_resilience.cli.worker import add_worker_command

__all__ = ["COMMANDS", "AddCommand", "Handler", "Subparsers", "build_parser", "main"]

Subparsers = argparse._SubParsersAction  # argparse has no public name for it
AddCommand = Callable[["Subparsers[argparse.ArgumentParser]"], None]
Handler = Callable[[argparse.Namespace], int]

COMMANDS: tuple[AddCommand, ...] = (
    add_demo_command,
    add_server_command,
    add_worker_command,
    add_worker_logs_command,
    add_dlq_command,
    add_jobs_command,
    add_schedule_command,
    add_status_command,
    add_breakers_command,
    add_errors_command,
    add_monitor_command,
    add_incidents_command,
    add_dashboard_command,
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("naq-resilience")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="naq", description="naq-resilience: resilient background jobs on NATS JetStream."
    )
    parser.add_argument("--version", action="version", version=f"naq {_version()}")
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
