"""Two `naq monitor` processes against a real server: one leads and alerts, the other
waits; killed with SIGKILL, the leader is replaced by the other, which alerts on what is
new and not again on what the dead leader already alerted (the cooldown is in JetStream).

No timing is asserted: the test waits for what the processes log and publish, each wait
bounded only so that a broken build fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from naq_resilience import Client
from naq_resilience.models import Alert, BreakerRecord

from processes import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]
WAIT = 60.0

CONFIG = """
[monitor]
interval = 0.2
lease = 2

[[rules]]
type = "breaker_open"
cooldown = "1h"

[[sinks]]
type = "nats"
subject = "test.monitor.alerts"

[[sinks]]
type = "log"
"""


class MonitorProcess:
    def __init__(self, url: str, config: Path, name: str, logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "naq_resilience.cli", "monitor", "--config", str(config),
             "--name", name, "--log-level", "DEBUG", "--nats-url", url],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, text: str) -> int:
        return self.log().count(text)

    async def wait_for(self, text: str, times: int = 1) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while self.count(text) < times:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            if loop.time() > deadline:
                raise AssertionError(f"{self.name} never logged {text!r} x{times}:\n{self.log()}")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


async def open_breaker(client: Client, name: str) -> None:
    _, buckets = await client._ready()
    record = BreakerRecord(
        name=name, state="open", failures=5, successes=0, opened_at=1_800_000_000.0,
        generation=1, updated_by="test",
    )  # fmt: skip
    await buckets.breakers.put(name, msgspec.json.encode(record))


@pytest.mark.usefixtures("clean_jetstream")
def test_one_monitor_alerts_and_the_standby_takes_over_when_it_is_killed(
    nats_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "monitor.toml"
    config.write_text(CONFIG)
    monitors: list[MonitorProcess] = []

    async def main() -> list[Alert]:
        alerts: list[Alert] = []
        async with Client(nats_url) as client:
            nc = client._nc
            assert nc is not None
            sub = await nc.subscribe("test.monitor.alerts")

            async def next_alert() -> Alert:
                msg = await sub.next_msg(timeout=WAIT)
                alert = msgspec.json.decode(msg.data, type=Alert)
                alerts.append(alert)
                return alert

            await open_breaker(client, "billing-api")
            first = MonitorProcess(nats_url, config, "first", tmp_path)
            monitors.append(first)
            await first.wait_for("monitor first leads")
            second = MonitorProcess(nats_url, config, "second", tmp_path)
            monitors.append(second)
            await second.wait_for("monitor second is on standby")

            alert = await next_alert()
            assert (alert.key, alert.monitor) == ("billing-api", "first")

            # Both alive for a while: the leader keeps evaluating, the standby keeps
            # asking for the lease, and nothing else is published.
            rounds = first.count("round ")
            await first.wait_for("round ", rounds + 10)
            await second.wait_for("standby: another monitor holds the lease", 3)
            assert "monitor second leads" not in second.log()

            first.kill()
            await second.wait_for("monitor second leads")
            await open_breaker(client, "search")
            alert = await next_alert()
            assert (alert.key, alert.monitor) == ("search", "second")
            rounds = second.count("round ")
            await second.wait_for("round ", rounds + 10)  # billing-api is still open
            await nc.flush()
            assert sub.pending_msgs == 0

            second.proc.send_signal(signal.SIGTERM)
            assert second.proc.wait(WAIT) == 0
            assert "monitor second stopped" in second.log()
        return alerts

    try:
        alerts = asyncio.run(main())
    finally:
        for process in monitors:
            process.close()
    assert [(a.key, a.monitor) for a in alerts] == [("billing-api", "first"), ("search", "second")]


@pytest.mark.usefixtures("clean_jetstream")
def test_a_worker_started_with_monitor_alerts_too(
    nats_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    config = tmp_path / "monitor.toml"
    config.write_text(CONFIG)

    async def main() -> Alert:
        async with Client(nats_url) as client:
            nc = client._nc
            assert nc is not None
            sub = await nc.subscribe("test.monitor.alerts")
            await open_breaker(client, "billing-api")
            workers.append(WorkerProcess(nats_url, tmp_path, "--monitor", str(config)))
            msg = await sub.next_msg(timeout=WAIT)
            return msgspec.json.decode(msg.data, type=Alert)

    alert = asyncio.run(main())
    assert alert.key == "billing-api"
    assert str(workers[0].proc.pid) in alert.monitor
    assert workers[0].terminate() == 0
    assert f"monitor {alert.monitor} stopped after" in workers[0].log()  # cleanly, lease given up
