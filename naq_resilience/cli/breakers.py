"""`naq breakers list|open|close|reset`: the circuit breakers every worker shares."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from naq_resilience.cli._common import ago, exits, run_client, table, to_json
from naq_resilience.cli.status import breaker_state

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client

__all__ = ["add_breakers_command"]


def add_breakers_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "breakers",
        help="list, open, close or reset the circuit breakers the workers share",
        description=(
            "Breakers with the same name share their state across workers through the "
            "naq-breakers bucket. open trips one everywhere now (it probes again after "
            "its recovery_timeout); close closes it everywhere with its failure count "
            "cleared; reset closes it and forgets it in the bucket."
        ),
    )
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="every shared breaker and its state")
    listing.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    _url(listing)
    listing.set_defaults(handler=_list)
    for action, text in (
        ("open", "open a breaker on every worker now"),
        ("close", "close a breaker on every worker, its failures cleared"),
        ("reset", "close a breaker everywhere and forget it in the bucket"),
    ):
        parser_ = actions.add_parser(action, help=text)
        parser_.add_argument("name", metavar="NAME", help="the breaker's name (see list)")
        _url(parser_)
        parser_.set_defaults(handler=_change, action=action)


def _url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", default=None, help="the NATS server (default: $NAQ_NATS_URL)")


@exits
def _list(args: argparse.Namespace) -> int:
    import time

    breakers = run_client("breakers list", lambda c: c.list_breakers(), args.nats_url)
    if args.json:
        print(to_json(breakers))
        return 0
    if not breakers:
        print("no shared breakers yet (a worker writes one at its first transition)")
        return 0
    now = time.time()
    rows: list[tuple[str, ...]] = [("BREAKER", "STATE", "FAILURES", "OPENED", "BY")]
    rows += [
        (
            b.name,
            breaker_state(b.state),
            str(b.failures),
            ago(b.opened_at, now),
            b.updated_by or "-",
        )
        for b in breakers
    ]
    print(table(rows))
    return 0


@exits
def _change(args: argparse.Namespace) -> int:
    action: str = args.action
    name: str = args.name

    async def change(client: Client) -> str:
        known = {b.name for b in await client.list_breakers()}
        if name not in known:
            raise LookupError(
                f"no shared breaker {name!r}; `naq breakers list` shows them (a breaker is "
                "shared once a worker running it has changed its state)"
            )
        operations = {
            "open": client.open_breaker, "close": client.close_breaker,
            "reset": client.reset_breaker,
        }  # fmt: skip
        record = await operations[action](name)
        return record.state

    state = run_client(f"breakers {action}", change, args.nats_url)
    print(f"breaker {name}: {state}{' and forgotten' if action == 'reset' else ''}")
    return 0
