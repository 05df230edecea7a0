"""`naq incidents list [--status S...] [--json]`, `show ID [--json]`,
`ack ID [--by NAME] [--note TEXT]`, `resolve ID [--by NAME] [--note TEXT]`."""

from __future__ import annotations

import argparse
import getpass
from typing import TYPE_CHECKING

from naq_resilience.cli._common import exits, run_client, table, to_json, utc

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client
    from naq_resilience.models import Incident

__all__ = ["add_incidents_command"]

STATUSES = ("open", "acknowledged", "resolved")


def add_incidents_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "incidents",
        help="list, show, acknowledge and resolve incidents",
        description=(
            "Incidents are opened by critical errors (a job failing with one, or "
            "handle_critical_error); the same error adds to the open incident until it is "
            "resolved. Acknowledging stops the monitor's pages; resolving closes it."
        ),
    )
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="incidents, newest first")
    listing.add_argument(
        "--status", nargs="+", choices=STATUSES, type=str.lower, default=None,
        help="only these (default: open and acknowledged; `--status resolved` for the rest)",
    )  # fmt: skip
    listing.add_argument("--all", action="store_true", help="every status")
    listing.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    listing.set_defaults(handler=exits(_list))

    show = actions.add_parser("show", help="every field of one incident")
    show.add_argument("id", metavar="ID", help="the incident's id (see `naq incidents list`)")
    show.add_argument("--json", action="store_true", help="the record as JSON, for scripts")
    show.set_defaults(handler=exits(_show))

    for name, helptext in (
        ("ack", "say you are on it: the monitor stops paging for it"),
        ("resolve", "close it: the same error afterwards opens a new incident"),
    ):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("id", metavar="ID", help="the incident's id")
        action.add_argument("--by", default=None, help="who (default: your login name)")
        action.add_argument("--note", default=None, help="a line for the record")
        action.add_argument("--json", action="store_true", help="the new record as JSON")
        action.set_defaults(handler=exits(_ack if name == "ack" else _resolve))
    for sub in actions.choices.values():
        sub.add_argument("--nats-url", default=None, help="default: $NAQ_NATS_URL")


def _table_of(incidents: list[Incident]) -> str:
    rows = [("ID", "STATUS", "SEVERITY", "COUNT", "OPENED", "LAST SEEN", "ERROR", "WHERE")]
    for i in incidents:
        rows.append((
            i.id, i.status.value, i.severity.value, str(i.count), utc(i.opened_at),
            utc(i.last_seen), i.error_type, i.where or "-",
        ))  # fmt: skip
    return table(rows)


def _list(args: argparse.Namespace) -> int:
    from naq_resilience.ops.incidents import list_incidents_async

    wanted = args.status or ("open", "acknowledged")
    statuses = None if args.all else [s.upper() for s in wanted]

    async def call(client: Client) -> list[Incident]:
        return await list_incidents_async(client, statuses)

    incidents = run_client("incidents list", call, args.nats_url)
    if args.json:
        print(to_json(incidents))
    elif incidents:
        print(_table_of(incidents))
    else:
        which = "" if statuses is None else " " + "/".join(s.lower() for s in statuses)
        print(f"no{which} incidents")
    return 0


def _print(incident: Incident) -> None:
    import msgspec

    for field, value in msgspec.structs.asdict(incident).items():
        if value in (None, [], {}):
            continue
        if field.endswith("_at") or field == "last_seen":
            value = utc(value)
        elif hasattr(value, "value"):
            value = value.value
        print(f"{field + ':':<18} {value}")


def _show(args: argparse.Namespace) -> int:
    from naq_resilience.ops.incidents import get_incident_async

    async def call(client: Client) -> Incident:
        return await get_incident_async(client, args.id)

    incident = run_client("incidents show", call, args.nats_url)
    if args.json:
        print(to_json(incident))
    else:
        _print(incident)
    return 0


def _who(args: argparse.Namespace) -> str:
    if args.by:
        return str(args.by)
    try:
        return getpass.getuser()
    except Exception:  # no login name in a container: say so rather than guess
        return "unknown"


def _ack(args: argparse.Namespace) -> int:
    from naq_resilience.ops.incidents import acknowledge_incident_async

    by = _who(args)

    async def call(client: Client) -> Incident:
        return await acknowledge_incident_async(client, args.id, by, args.note)

    incident = run_client("incidents ack", call, args.nats_url)
    if args.json:
        print(to_json(incident))
    else:
        print(f"incident {incident.id} acknowledged by {incident.acknowledged_by}")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from naq_resilience.ops.incidents import resolve_incident_async

    by = _who(args)

    async def call(client: Client) -> Incident:
        return await resolve_incident_async(client, args.id, by, args.note)

    incident = run_client("incidents resolve", call, args.nats_url)
    if args.json:
        print(to_json(incident))
    else:
        print(f"incident {incident.id} resolved by {incident.resolved_by}")
    return 0
