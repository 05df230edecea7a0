"""`naq worker QUEUE... [--concurrency N] [--import MODULE]... [--strict]
[--unroutable-after SECONDS] [--monitor FILE] [--no-incidents]
[--metrics-port PORT [--metrics-host HOST]] [--log-level LEVEL] [--log-json]
[--no-publish-logs]`.

`--log-level` and `--log-json` configure logging for the whole process (the root
logger), so the job code's own `logging` calls come out at that level, in that format,
each with the job's id and attempt; the worker also publishes them to `NAQ_LOGS` for
`naq worker-logs`. `--metrics-port` serves Prometheus metrics from a thread of their
own (`naq_resilience.ops.metrics`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from naq_resilience.ops.metrics import WorkerMetrics

__all__ = ["METRICS_HOST", "add_worker_command"]

METRICS_HOST = "0.0.0.0"
"""`naq_resilience.ops.metrics.DEFAULT_HOST`, written out so that parsing the command
line does not need prometheus_client (a test keeps the two equal)."""
METRICS_MISSING = (
    "--metrics-port needs prometheus_client, which is not installed: "
    "pip install 'naq-resilience[metrics]'"
)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def add_worker_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "worker",
        help="run jobs from one or more queues",
        description=(
            "Run the jobs of QUEUE(s). A worker runs only functions defined in the modules "
            "it is told to import (--import, NAQ_IMPORTS as a comma list, and `imports = "
            "[...]` under [tool.naq] in the nearest pyproject.toml), never private ones (a "
            "name part starting with '_'); with --strict only those marked @job. The "
            "current directory and the pyproject.toml's are importable, as with `python "
            "script.py`."
        ),
    )
    parser.add_argument(
        "queues", nargs="*", default=["default"], metavar="QUEUE",
        help="queues to take jobs from (default: default)",
    )  # fmt: skip
    parser.add_argument(
        "-i", "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="a module whose functions jobs may name (repeatable; added to NAQ_IMPORTS and "
        "[tool.naq] imports)",
    )  # fmt: skip
    parser.add_argument(
        "--strict", action="store_true",
        help="run only functions marked @job (also NAQ_STRICT=1)",
    )  # fmt: skip
    parser.add_argument(
        "-c", "--concurrency", type=int, default=10,
        help="jobs run at once at most; sync jobs run on as many threads (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--nats-url", default=None, help="default: $NAQ_NATS_URL")
    parser.add_argument(
        "--ack-wait", type=float, default=30.0,
        help="seconds the broker waits for a sign of life before redelivering a job "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--shutdown-grace", type=float, default=30.0,
        help="seconds in-flight jobs get to finish after SIGTERM/SIGINT; async jobs still "
        "running then are cancelled and handed back, sync jobs are waited for (a second "
        "signal exits at once) (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-crashes", type=int, default=3, metavar="N",
        help="deliveries of one job a worker crash may interrupt before the job is "
        "dead-lettered as a poison job; not counted as attempts (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--unroutable-after", type=float, default=None, metavar="SECONDS",
        help="how long a job whose function this worker cannot run (its module not "
        "imported here, or this version of it without the function) is handed back for "
        "other workers, without using an attempt, before it is dead-lettered as "
        "unroutable; 0 dead-letters it at once (default: $NAQ_UNROUTABLE_AFTER or 300)",
    )  # fmt: skip
    parser.add_argument(
        "--replicas", type=int, default=None, metavar="N",
        help="replicas of the streams and buckets this worker creates when missing "
        "(default: $NAQ_REPLICAS or 1; 3 in a 3-node cluster)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-port", type=_port, default=None, metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics: jobs completed, failed, "
        "retried and dead-lettered, durations, in-flight jobs, breaker states, queue and "
        "dead-letter depths (needs naq-resilience[metrics]; 0: any free port, logged; "
        "default: no metrics)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-host", default=METRICS_HOST, metavar="HOST",
        help="the address to serve metrics on (default: %(default)s, every interface, for a "
        "scraper on another host; 127.0.0.1 keeps them to this one)",
    )  # fmt: skip
    parser.add_argument(
        "--monitor", metavar="FILE", default=None,
        help="also run an alert monitor with this config (TOML, as `naq monitor --config`): "
        "it contends for the fleet's monitor lease, so one process alerts however many run",
    )  # fmt: skip
    parser.add_argument(
        "--no-incidents", action="store_true",
        help="do not open incidents for jobs that fail with a critical error",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", default="INFO", metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL, for the whole process: the worker, "
        "the jobs' own logging, nats-py (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--log-json", action="store_true",
        help="one JSON object per log line (timestamp, level, logger, message, job_id, "
        "attempt, error_type, error_message, context, traceback, ...)",
    )  # fmt: skip
    parser.add_argument(
        "--no-publish-logs", dest="publish_logs", action="store_false", default=None,
        help="do not publish log records to NAQ_LOGS for `naq worker-logs` (also "
        "NAQ_PUBLISH_LOGS=0)",
    )  # fmt: skip
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from naq_resilience.jetstream.connection import (
        JetStreamUnavailableError,
        NatsUnavailableError,
    )
    from naq_resilience.jetstream.project import NO_MODULES_WARNING, find_pyproject
    from naq_resilience.jetstream.streams import StorageSettings
    from naq_resilience.jetstream.worker import Worker, WorkerConnectionLost
    from naq_resilience.ops.logging import setup_logging

    metrics_class: type[WorkerMetrics] | None = None
    if args.metrics_port is not None:
        try:  # before anything starts: a missing extra is a one-line error
            from naq_resilience.ops import metrics as metrics_module
        except ImportError:
            print(f"naq worker: {METRICS_MISSING}", file=sys.stderr)
            return 2
        metrics_class = metrics_module.WorkerMetrics
    try:
        setup_logging(args.log_level, json=args.log_json, process=True)
    except ValueError as exc:
        print(f"naq worker: --log-level: {exc}", file=sys.stderr)
        return 2

    def say(level: int, text: str) -> None:
        """A line of the command's own: with --log-json a JSON line like every other."""
        if args.log_json:
            logging.getLogger("naq_resilience.cli").log(level, "%s", text)
        else:
            print(f"naq worker: {text}", file=sys.stderr)

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    project = find_pyproject()
    if project is not None and str(project.parent) not in sys.path:
        sys.path.insert(1, str(project.parent))  # its [tool.naq] modules are named from there
    try:
        worker = Worker(
            args.queues,
            nats_url=args.nats_url,
            concurrency=args.concurrency,
            imports=args.imports,
            ack_wait=args.ack_wait,
            shutdown_grace=args.shutdown_grace,
            max_crashes=args.max_crashes,
            unroutable_after=args.unroutable_after,
            storage=StorageSettings.from_env().with_replicas(args.replicas),
            strict=args.strict,
            publish_logs=args.publish_logs,
            incidents=not args.no_incidents,
        )
        monitor = None
        if args.monitor:
            from naq_resilience.cli.monitor import build_monitor

            monitor = build_monitor(argparse.Namespace(config=args.monitor, nats_url=args.nats_url))
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        say(logging.ERROR, str(exc))
        return 2
    if not worker.has_jobs and not args.log_json:  # the worker logs it as it starts
        say(logging.WARNING, f"warning: {NO_MODULES_WARNING}")
    metrics: WorkerMetrics | None = None
    if metrics_class is not None:
        try:  # before the monitor's thread: a port in use leaves nothing running
            metrics = metrics_class(worker).serve(args.metrics_port, args.metrics_host)
        except OSError as exc:
            say(
                logging.ERROR,
                f"cannot serve metrics on {args.metrics_host} port {args.metrics_port}: "
                f"{exc.strerror or exc}",
            )
            return 2
        logging.getLogger("naq_resilience.worker").info("serving metrics at %s", metrics.url)
    thread = monitor.start_in_thread() if monitor is not None else None
    try:
        worker.run_forever()
    except (NatsUnavailableError, JetStreamUnavailableError) as exc:
        say(logging.ERROR, str(exc))
        return 1
    except WorkerConnectionLost as exc:
        # Threads of sync jobs may still run; they cannot be settled and must not keep
        # the process (and their duplicates) alive, so exit now.
        say(logging.ERROR, f"{exc}; exiting so a supervisor restarts it")
        logging.shutdown()
        os._exit(3)
    finally:
        if monitor is not None and thread is not None:
            monitor.stop()  # gives the lease up, so a standby need not wait for its TTL
            thread.join(10)
        if metrics is not None:
            metrics.close()
    return 0
