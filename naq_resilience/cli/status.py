"""`naq status [--json] [--watch SECONDS]`: queues, workers, breakers, dead letters."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from naq_resilience.cli._common import ago, colour, exits, run_client, table, to_json, watch

if TYPE_CHECKING:
    from naq_resilience.jetstream.status import FleetStatus

__all__ = ["add_status_command", "breaker_state"]


def add_status_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "status",
        help="queues, live workers, breakers and dead letters at a glance",
        description=(
            "Queues with the jobs waiting and in flight, the workers alive now (each "
            "writes its presence every 5 s), the circuit breakers they share, and the "
            "dead letters of each queue. A few requests, whatever the fleet's size."
        ),
    )
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    parser.add_argument(
        "--watch", type=float, default=None, metavar="SECONDS",
        help="redraw every SECONDS until Ctrl-C (default: print once)",
    )  # fmt: skip
    parser.add_argument("--nats-url", default=None, help="the NATS server (default: $NAQ_NATS_URL)")
    parser.set_defaults(handler=_status)


def breaker_state(state: str) -> str:
    return colour(state, {"open": "red", "half_open": "yellow"}.get(state, "green"))


def describe(status: FleetStatus) -> str:
    now = status.at
    parts = []
    rows: list[tuple[str, ...]] = [("QUEUE", "WAITING", "IN FLIGHT", "IDLE PULLS")]
    rows += [
        (q.name, str(q.waiting), str(q.in_flight), str(q.workers_waiting)) for q in status.queues
    ]
    parts.append(table(rows) if status.queues else "no queues yet (no worker has started)")
    if status.workers:
        rows = [("WORKER", "QUEUES", "RUNNING", "DONE", "FAILED", "UP SINCE", "SEEN")]
        for w in status.workers:
            rows.append((
                w.worker_id + (" (stopping)" if w.stopping else ""), ",".join(w.queues),
                f"{w.running}/{w.concurrency}", str(w.processed), str(w.failed),
                ago(w.started_at, now), ago(w.seen_at, now),
            ))  # fmt: skip
        parts.append(table(rows))
    else:
        parts.append(colour("no live workers", "yellow"))
    if status.breakers:
        rows = [("BREAKER", "STATE", "FAILURES", "OPENED", "BY")]
        for b in status.breakers:
            rows.append((
                b.name, breaker_state(b.state), str(b.failures), ago(b.opened_at, now),
                b.updated_by or "-",
            ))  # fmt: skip
        parts.append(table(rows))
    rows = [("DEAD-LETTER QUEUE", "LETTERS")]
    rows += [(d.dead_letter_queue, str(d.letters)) for d in status.dead_letters]
    rows.append(("(all, every dead-letter queue)", str(status.dead_letters_total)))
    parts.append(table(rows))
    if status.scheduled:
        parts.append(f"{status.scheduled} schedule messages waiting to fire (naq schedule list)")
    return "\n\n".join(parts)


@exits
def _status(args: argparse.Namespace) -> int:
    def render() -> str:
        status = run_client("status", lambda c: c.fleet_status(), args.nats_url)
        return to_json(status) if args.json else describe(status)

    return watch(render, args.watch)
