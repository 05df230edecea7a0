"""The monitor: one process of the fleet evaluates the alert rules and sends the alerts.

Any number of monitors may run (`naq monitor`, or workers started with `--monitor`):
they elect one through a lease in the `naq-monitor` bucket (`Lease`: compare-and-set
writes with a per-key TTL), the leader evaluates every `interval`, and the others renew
their claim every third of the lease's TTL, ready to take over within about
`lease + lease / 3` seconds of the leader's death (plus up to a second the server takes
to expire the key).

Alerts are de-duplicated by the cooldown state, not only by the election. Before it
sends anything, the monitor writes the rule's `RuleState` (when each key last fired) with
compare-and-set on the revision it read: of two monitors that both believe they lead
(a paused leader that has not noticed its lease ran out), one write fails and that
monitor sends nothing. The same state is what a new leader reads, so a failover does
not re-alert at once. An alert no sink could deliver is taken out of the state again,
so the next round retries it rather than waiting out the cooldown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from naq_resilience.codec import decode
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.client import Client
from naq_resilience.jetstream.leases import Lease, cas_write, read_entry
from naq_resilience.jetstream.streams import StorageSettings, ensure_monitor_bucket
from naq_resilience.models import Alert, RuleState
from naq_resilience.ops.alerts import AlertRule, RuleUnavailable
from naq_resilience.ops.sinks import LoggingSink, Sink
from naq_resilience.policies.durations import Duration, seconds

__all__ = ["Monitor"]

log = logging.getLogger("naq_resilience.monitor")
_encoder = msgspec.json.Encoder(enc_hook=repr)
STATE_GRACE = 60.0
"""Seconds a rule's state outlives its cooldown before the key expires."""


class Monitor:
    """Evaluates `rules` every `interval` seconds, while it holds the fleet's lease, and
    sends what they find to `sinks` (a `LoggingSink` when none are given).

    `await monitor.run()` until `stop()`; `run_forever()` stops on SIGTERM or SIGINT;
    `start_in_thread()` runs it beside other work (a worker). `lease` is the lease's TTL
    in seconds (whole, at least 2): how long the fleet may go without a leader when one
    dies. `evaluate_once()` runs one round without the lease (the cooldowns still hold),
    for cron jobs and tests. `clock` is the wall clock cooldowns are measured with.
    """

    def __init__(
        self,
        rules: Iterable[AlertRule],
        sinks: Iterable[Sink] = (),
        *,
        interval: Duration = 30.0,
        lease: Duration = 15.0,
        nats_url: str | None = None,
        client: Client | None = None,
        storage: StorageSettings | None = None,
        name: str | None = None,
        rule_timeout: Duration | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = list(rules)
        if not self.rules:
            raise ValueError("a monitor needs at least one rule")
        keys: dict[str, str] = {}
        for rule in self.rules:
            if not isinstance(rule, AlertRule):
                raise TypeError(
                    f"{rule!r} is not an alert rule: it needs name, severity, cooldown and "
                    "an async evaluate(client)"
                )
            key = layout.rule_state_key(rule.name)
            if key in keys:
                raise ValueError(
                    f"rules {keys[key]!r} and {rule.name!r} have the same name (as a key: "
                    f"{key}); give each rule a name of its own"
                )
            keys[key] = rule.name
        self.sinks = list(sinks) or [LoggingSink()]
        self.interval = seconds(interval, "interval", positive=True)
        self.lease_ttl = float(math.ceil(seconds(lease, "lease", positive=True)))
        if self.lease_ttl < 2:
            raise ValueError(f"lease must be at least 2 seconds, got {lease!r}")
        self.rule_timeout = (
            seconds(rule_timeout, "rule_timeout", positive=True)
            if rule_timeout is not None
            else max(self.interval, 30.0)
        )
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._nats_url = nats_url
        self._client = client
        self._owns_client = client is None
        self._storage = storage
        self._clock = clock
        self._lease: Lease | None = None
        self._js: JetStreamContext
        self._kv: KeyValue
        self._opened = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_asked = False
        self._unavailable: set[str] = set()
        self._failing: dict[str, float] = {}
        self.rounds = 0
        """Rounds evaluated by this monitor (as leader, or by `evaluate_once`)."""

    # ------------------------------------------------------------------ state
    @property
    def is_leader(self) -> bool:
        return self._lease is not None and self._lease.held

    async def _open(self) -> Client:
        if self._client is None:
            self._client = Client(self._nats_url, storage=self._storage)
        client = self._client
        if not self._opened:
            js, _ = await client._ready()
            storage = self._storage or client._storage or StorageSettings.from_env()
            kv = await ensure_monitor_bucket(js, storage)
            self._js, self._kv = js, kv
            self._lease = Lease(js, kv, layout.MONITOR_BUCKET, layout.LEADER_KEY, self.name,
                                self.lease_ttl)  # fmt: skip
            for sink in self.sinks:
                await sink.open(client)
            self._opened = True
        return client

    async def _close(self) -> None:
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.release()
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception:
                log.exception("alert sink %s did not close cleanly", sink.name)
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None
        self._opened = False

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        """Contend for the lease and, while held, evaluate every `interval`, until `stop()`."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_asked:
            self._stopping.set()
        try:
            await self._open()
            log.info(
                "monitor %s started: %d rules (%s), sinks %s, every %gs, lease %gs",
                self.name, len(self.rules), ", ".join(r.name for r in self.rules),
                ", ".join(s.name for s in self.sinks), self.interval, self.lease_ttl,
            )  # fmt: skip
            tasks = [asyncio.create_task(self._keep_lease()), asyncio.create_task(self._evaluate())]
            try:
                await self._stopping.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self._close()
        log.info("monitor %s stopped after %d rounds", self.name, self.rounds)

    def stop(self) -> None:
        """Stop after the current step; safe from any thread."""
        self._stop_asked = True
        loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            stopping.set()
        else:
            loop.call_soon_threadsafe(stopping.set)

    def run_forever(self) -> None:
        """`run()` in a new event loop, stopping (and giving up the lease) on SIGTERM or SIGINT."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            await self.run()

        asyncio.run(main())

    def start_in_thread(self) -> threading.Thread:
        """Run in a thread of its own, with its own loop and connection (beside a worker);
        `stop()` and then `join()` the thread to end it."""
        thread = threading.Thread(
            target=lambda: asyncio.run(self.run()), name=f"naq-monitor {self.name}", daemon=True
        )
        thread.start()
        return thread

    async def _keep_lease(self) -> None:
        assert self._lease is not None
        lease = self._lease
        was_leader: bool | None = None  # the first outcome is logged either way
        while True:
            held = await lease.keep()
            if held != was_leader:
                if held:
                    log.info("monitor %s leads: it evaluates the rules", self.name)
                else:
                    log.info("monitor %s is on standby", self.name)
                was_leader = held
            elif not held:
                log.debug("monitor %s standby: another monitor holds the lease", self.name)
            await asyncio.sleep(self.lease_ttl / 3)

    async def _evaluate(self) -> None:
        while True:
            started = time.monotonic()
            if self.is_leader:
                try:
                    await self._round(require_lease=True)
                except Exception:
                    log.exception("monitor %s: a round failed", self.name)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def evaluate_once(self) -> list[Alert]:
        """One round now, leader or not; the alerts sent. Cooldowns apply as always, so
        two monitors evaluating at once still send each alert once."""
        try:
            return await self._round(require_lease=False)
        finally:
            if self._stopping is None:  # not inside run(): nothing else will close it
                await self._close()

    # ------------------------------------------------------------------ a round
    async def _round(self, *, require_lease: bool) -> list[Alert]:
        client = await self._open()
        found = await asyncio.gather(*(self._evaluate_rule(rule, client) for rule in self.rules))
        sent: list[Alert] = []
        for rule, alerts in zip(self.rules, found, strict=True):
            if alerts:
                sent += await self._fire(rule, alerts, require_lease=require_lease)
        self.rounds += 1
        log.debug("monitor %s: round %d, %d alerts sent", self.name, self.rounds, len(sent))
        return sent

    async def _evaluate_rule(self, rule: AlertRule, client: Client) -> list[Alert]:
        try:
            return await asyncio.wait_for(rule.evaluate(client), self.rule_timeout)
        except RuleUnavailable as exc:
            if rule.name not in self._unavailable:
                self._unavailable.add(rule.name)
                log.error("alert rule %s cannot run: %s", rule.name, exc)
        except Exception as exc:
            now = time.monotonic()
            if now - self._failing.get(rule.name, -60.0) >= 60.0:
                self._failing[rule.name] = now
                log.warning(
                    "alert rule %s failed (logged once a minute): %r", rule.name, exc,
                    exc_info=not isinstance(exc, TimeoutError),
                )  # fmt: skip
        return []

    async def _fire(
        self, rule: AlertRule, alerts: list[Alert], *, require_lease: bool
    ) -> list[Alert]:
        key = layout.rule_state_key(rule.name)
        value, revision = await read_entry(self._kv, key)
        state = decode(value, RuleState) if value is not None else RuleState(rule=rule.name)
        now = self._clock()
        due: dict[str, Alert] = {}
        for alert in alerts:
            last = state.fired.get(alert.key)
            if alert.key not in due and (last is None or now - last >= rule.cooldown):
                due[alert.key] = alert
        if not due or (require_lease and not self.is_leader):
            return []
        current = {alert.key for alert in alerts}
        fired = {k: at for k, at in state.fired.items() if k in current or now - at < rule.cooldown}
        fired.update(dict.fromkeys(due, now))
        claimed = RuleState(rule=rule.name, fired=fired)
        ttl = rule.cooldown + STATE_GRACE
        try:
            revision = await cas_write(
                self._js, layout.MONITOR_BUCKET, key, _encoder.encode(claimed),
                last=revision, ttl=ttl,
            )  # fmt: skip
        except KeyWrongLastSequenceError:
            log.debug("monitor %s: another monitor fired %s first", self.name, rule.name)
            return []
        stamped = [
            msgspec.structs.replace(alert, fired_at=now, monitor=self.name)
            for alert in due.values()
        ]
        delivered = await asyncio.gather(*(self._dispatch(alert) for alert in stamped))
        failed = [alert for alert, ok in zip(stamped, delivered, strict=True) if not ok]
        if failed:
            await self._unclaim(key, claimed, state, failed, revision, ttl)
        return [alert for alert, ok in zip(stamped, delivered, strict=True) if ok]

    async def _unclaim(
        self,
        key: str,
        claimed: RuleState,
        before: RuleState,
        failed: list[Alert],
        revision: int,
        ttl: float,
    ) -> None:
        fired = dict(claimed.fired)
        for alert in failed:
            if alert.key in before.fired:
                fired[alert.key] = before.fired[alert.key]
            else:
                fired.pop(alert.key, None)
        with contextlib.suppress(Exception):
            await cas_write(
                self._js, layout.MONITOR_BUCKET, key,
                _encoder.encode(RuleState(rule=claimed.rule, fired=fired)),
                last=revision, ttl=ttl,
            )  # fmt: skip

    async def _dispatch(self, alert: Alert) -> bool:
        """Send to every sink that wants it; True if one took it (or none wanted it)."""
        sinks = [sink for sink in self.sinks if sink.wants(alert)]
        if not sinks:
            return True
        results = await asyncio.gather(
            *(sink.send(alert) for sink in sinks), return_exceptions=True
        )
        ok = False
        for sink, result in zip(sinks, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "alert sink %s could not send alert %s (%s): %r",
                    sink.name, alert.id, alert.title, result,
                )  # fmt: skip
            else:
                ok = True
        if not ok:
            log.error("no sink delivered alert %s (%s); it is tried again", alert.id, alert.title)
        return ok
