"""`naq monitor [--config FILE] [--dlq-threshold N [--dlq NAME]...] [--breakers]
[--incidents] [--webhook URL]... [--subject SUBJECT] [--once | --status]`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from naq_resilience.cli._common import exits, parse_duration, run_client, to_json, utc

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client
    from naq_resilience.ops.monitor import Monitor

__all__ = ["add_monitor_command", "build_monitor"]


def add_monitor_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "monitor",
        help="evaluate alert rules and send alerts (one leader per fleet)",
        description=(
            "Evaluate alert rules and send what they find to sinks. Run as many as you like: "
            "they elect one leader through a lease in the naq-monitor bucket, which alone "
            "evaluates; another takes over within about the lease's TTL when it dies, and "
            "cooldowns (kept in the bucket) carry over. Rules and sinks come from --config "
            "(TOML) and the flags below; with neither, it watches circuit breakers and "
            "incidents and logs the alerts."
        ),
    )
    parser.add_argument("--config", metavar="FILE", help="a TOML file of [[rules]] and [[sinks]]")
    parser.add_argument(
        "--dlq-threshold", type=int, default=None, metavar="N",
        help="alert when a dead-letter queue holds more than N letters",
    )  # fmt: skip
    parser.add_argument(
        "--dlq", action="append", default=[], metavar="NAME",
        help="the dead-letter queue(s) --dlq-threshold watches (repeatable; default: all)",
    )  # fmt: skip
    parser.add_argument("--breakers", action="store_true", help="alert on open circuit breakers")
    parser.add_argument(
        "--incidents", action="store_true", help="page for open incidents until acknowledged"
    )
    parser.add_argument(
        "--cooldown", type=parse_duration, default=None, metavar="DURATION",
        help="cooldown of the rules these flags add (default 15m)",
    )  # fmt: skip
    parser.add_argument(
        "--webhook", action="append", default=[], metavar="URL",
        help="POST each alert as JSON to URL (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--subject", default=None, metavar="SUBJECT",
        help="publish each alert as JSON on this NATS subject (e.g. naq.alerts)",
    )  # fmt: skip
    parser.add_argument("--interval", type=parse_duration, default=None, metavar="DURATION",
                        help="how often the leader evaluates (default 30s)")  # fmt: skip
    parser.add_argument("--lease", type=parse_duration, default=None, metavar="DURATION",
                        help="the leader's lease TTL, at least 2s (default 15s)")  # fmt: skip
    parser.add_argument("--name", default=None, help="this monitor's name in logs and alerts")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--once", action="store_true",
        help="evaluate once, leader or not (cooldowns still apply), print the alerts sent "
        "as JSON lines, and exit",
    )  # fmt: skip
    mode.add_argument("--status", action="store_true", help="print which monitor leads, and exit")
    parser.add_argument("--nats-url", default=None, help="default: $NAQ_NATS_URL")
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)"
    )
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    parser.set_defaults(handler=exits(_run))


def build_monitor(args: argparse.Namespace) -> Monitor:
    """The monitor the flags and the config file describe (also for `naq worker --monitor`)."""
    from naq_resilience.ops.alerts import BreakerOpenRule, DeadLetterDepthRule, IncidentRule
    from naq_resilience.ops.monitor import Monitor
    from naq_resilience.ops.monitor_config import MonitorConfig, load_monitor_config
    from naq_resilience.ops.sinks import LoggingSink, NatsSink, WebhookSink

    config = load_monitor_config(args.config) if args.config else MonitorConfig()
    cooldown: dict[str, Any] = {}
    if getattr(args, "cooldown", None) is not None:
        cooldown["cooldown"] = args.cooldown.total_seconds()
    rules = list(config.rules)
    if getattr(args, "dlq_threshold", None) is not None:
        rules.append(
            DeadLetterDepthRule(args.dlq_threshold, dead_letter_queue=args.dlq or None, **cooldown)
        )
    if getattr(args, "breakers", False):
        rules.append(BreakerOpenRule(**cooldown))
    if getattr(args, "incidents", False):
        rules.append(IncidentRule(**cooldown))
    if not rules:
        rules = [BreakerOpenRule(**cooldown), IncidentRule(**cooldown)]
    sinks = list(config.sinks) or [LoggingSink()]
    sinks += [
        WebhookSink(url, name=f"webhook-{i + 1}")
        for i, url in enumerate(getattr(args, "webhook", []))
    ]
    if getattr(args, "subject", None):
        sinks.append(NatsSink(args.subject))
    options = dict(config.options)
    for key in ("interval", "lease"):
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value.total_seconds()
    if getattr(args, "name", None):
        options["name"] = args.name
    return Monitor(rules, sinks, nats_url=args.nats_url, **options)


def _run(args: argparse.Namespace) -> int:
    from naq_resilience.cli._common import Exit
    from naq_resilience.ops.logging import setup_logging

    setup_logging(args.log_level, json=args.log_json)
    if args.status:
        return _status(args)
    try:
        monitor = build_monitor(args)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        print(f"naq monitor: {exc}", file=sys.stderr)
        return 2
    if args.once:

        async def once(client: Client) -> list[Any]:
            monitor._client, monitor._owns_client = client, False
            return await monitor.evaluate_once()

        for alert in run_client("monitor", once, args.nats_url):
            print(to_json(alert))
        return 0
    from naq_resilience.cli._common import failures, said

    try:
        monitor.run_forever()
    except failures() as exc:
        print(f"naq monitor: {said(exc)}", file=sys.stderr)
        raise Exit(1) from None
    return 0


def _status(args: argparse.Namespace) -> int:
    async def leader(client: Client) -> Any:
        from naq_resilience.codec import decode
        from naq_resilience.jetstream import layout
        from naq_resilience.jetstream.leases import read_entry
        from naq_resilience.jetstream.streams import ensure_monitor_bucket
        from naq_resilience.models import MonitorLease

        js, _ = await client._ready()
        kv = await ensure_monitor_bucket(js)
        value, _ = await read_entry(kv, layout.LEADER_KEY)
        return None if value is None else decode(value, MonitorLease)

    lease = run_client("monitor", leader, args.nats_url)
    if lease is None:
        print("no monitor leads now (none runs, or the leader died less than a lease ago)")
        return 1
    print(
        f"{lease.holder} leads since {utc(lease.acquired_at)}, renewed "
        f"{utc(lease.renewed_at)} (lease {lease.ttl:g}s)"
    )
    return 0

