"""The reference points of `bench_worker.py`: a raw nats-py worker, taskiq-nats, FastStream.

Each is configured as in /work/shared/peer-bench (raw_nats.py, raw_worker.py,
peer_taskiq.py and peer_faststream.py, measured 2026-11-28); the logic is copied here,
not imported, so that the benchmark does not depend on that directory at run time.

- raw nats-py, the limit of a Python worker on nats-py: a WorkQueue file stream, a
  durable pull consumer, ``fetch(256)`` -> msgspec-decode a small job envelope -> look
  the function up -> await it -> ``ack()``; the producer ``publish_async``-es each job.
- taskiq-nats "pull-tuned": ``PullBasedJetStreamBroker(pull_consume_batch=256,
  pull_consume_timeout=0.05)``, worker ``--workers 1 --max-async-tasks 256
  --max-prefetch 256 --ack-type when_executed --log-level WARNING``; the producer gathers
  ``.kiq()`` in batches of 256.
- FastStream "pull-tuned": ``PullSub(batch_size=256, timeout=0.05)``, broker
  ``log_level=DEBUG`` (so no per-message INFO lines), run by ``FastStream.run()`` as
  ``faststream run`` does (its CLI needs the extra ``faststream[cli]``); the producer
  gathers ``broker.publish`` in batches of 256.

Worker processes (started by bench_worker.py, with this directory on ``PYTHONPATH``)::

    python bench_worker_peers.py raw --url nats://...
    python bench_worker_peers.py faststream --url nats://...
    BENCH_NATS_URL=nats://... taskiq worker bench_worker_peers:taskiq_broker --workers 1 ...

Nothing of taskiq or FastStream is imported unless that peer is used.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from faststream import FastStream
    from faststream.nats import NatsBroker
    from taskiq import AsyncBroker

__all__ = [
    "FASTSTREAM_BATCH",
    "FS_CONSUMER",
    "FS_STREAM",
    "FS_SUBJECT",
    "RAW_CONSUMER",
    "RAW_STREAM",
    "RAW_SUBJECT",
    "TASKIQ_WORKER_ARGS",
    "TQ_CONSUMER",
    "TQ_STREAM",
    "TQ_SUBJECT",
    "faststream_app",
    "main",
    "make_taskiq_broker",
    "raw_job",
    "taskiq_broker",
]

URL_ENV = "BENCH_NATS_URL"
BATCH = 256

RAW_STREAM = "RAWBENCH"
RAW_SUBJECT = "rawbench.jobs"
RAW_CONSUMER = "rawworker"

TQ_STREAM = "TQBENCH"
TQ_SUBJECT = "tqbench.jobs"
TQ_CONSUMER = "tqworker"
TASKIQ_WORKER_ARGS: tuple[str, ...] = (
    "--workers", "1",
    "--max-async-tasks", str(BATCH),
    "--max-prefetch", str(BATCH),
    "--ack-type", "when_executed",
    "--log-level", "WARNING",
)  # fmt: skip

FS_STREAM = "FSBENCH"
FS_SUBJECT = "fsbench.jobs"
FS_CONSUMER = "fsworker"
FASTSTREAM_BATCH = BATCH

# --------------------------------------------------------------------------- raw nats-py

_encoder = msgspec.msgpack.Encoder()


def raw_job(i: int) -> bytes:
    """The raw job envelope (~60 bytes), as raw_nats.py encodes it."""
    return _encoder.encode({"id": uuid.uuid4().hex, "fn": "noop", "args": [i], "kw": {}})


async def _raw_noop(*args: Any, **kwargs: Any) -> None:
    return None


_RAW_REGISTRY: dict[str, Callable[..., Awaitable[None]]] = {"noop": _raw_noop}


async def _raw_worker(url: str, batch: int, fetch_timeout: float) -> None:
    """raw_worker.py: fetch(batch) -> decode -> registry lookup -> await -> ack."""
    import nats
    import nats.errors

    nc = await nats.connect(url)
    js = nc.jetstream()
    psub = await js.pull_subscribe(RAW_SUBJECT, durable=RAW_CONSUMER, stream=RAW_STREAM)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    decoder = msgspec.msgpack.Decoder()
    done = 0
    print("READY", flush=True)
    while not stop.is_set():
        try:
            msgs = await psub.fetch(batch, timeout=fetch_timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            job = decoder.decode(msg.data)
            await _RAW_REGISTRY[job["fn"]](*job["args"])
            await msg.ack()
            done += 1
    print(f"processed {done}", flush=True)
    await nc.close()


# --------------------------------------------------------------------------- taskiq-nats


def make_taskiq_broker(url: str) -> tuple[AsyncBroker, Any]:
    """The tuned pull broker and its ``noop`` task (same factory in producer and worker)."""
    from taskiq_nats import PullBasedJetStreamBroker

    broker = PullBasedJetStreamBroker(
        url,
        subject=TQ_SUBJECT,
        stream_name=TQ_STREAM,
        durable=TQ_CONSUMER,
        pull_consume_batch=BATCH,
        pull_consume_timeout=0.05,
    )

    @broker.task(task_name="noop")
    async def noop(i: int) -> None:
        return None

    return broker, noop


def taskiq_broker() -> AsyncBroker:
    """Broker factory for ``taskiq worker bench_worker_peers:taskiq_broker``."""
    return make_taskiq_broker(os.environ[URL_ENV])[0]


# --------------------------------------------------------------------------- FastStream


def faststream_app(url: str) -> tuple[FastStream, NatsBroker]:
    """The tuned pull-subscriber app, with a no-op handler."""
    from faststream import FastStream
    from faststream.nats import JStream, NatsBroker, PullSub

    broker = NatsBroker(url, log_level=logging.DEBUG)

    @broker.subscriber(
        FS_SUBJECT,
        stream=JStream(name=FS_STREAM, subjects=[FS_SUBJECT]),
        durable=FS_CONSUMER,
        pull_sub=PullSub(batch_size=FASTSTREAM_BATCH, timeout=0.05),
    )
    async def noop(i: int) -> None:
        return None

    return FastStream(broker), broker


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bench_worker.py's peer worker processes")
    parser.add_argument("peer", choices=["raw", "faststream"])
    parser.add_argument("--url", default=os.environ.get(URL_ENV, "nats://127.0.0.1:4222"))
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--fetch-timeout", type=float, default=0.05)
    args = parser.parse_args(argv)
    if args.peer == "raw":
        asyncio.run(_raw_worker(args.url, args.batch, args.fetch_timeout))
    else:
        app, _ = faststream_app(args.url)
        asyncio.run(app.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
