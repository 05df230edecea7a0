"""Alert rules, cooldowns and de-duplication on a real server, without a monitor process:
rules are evaluated directly, monitors one round at a time with a clock the test moves."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_dead_letters import letter, write

from naq_resilience import Client, SecurityError
from naq_resilience.jetstream import layout
from naq_resilience.jetstream.leases import Lease
from naq_resilience.jetstream.streams import ensure_monitor_bucket
from naq_resilience.models import Alert, BreakerRecord, Severity
from naq_resilience.ops.alerts import (
    AlertRule,
    BreakerOpenRule,
    BudgetBurnRule,
    DeadLetterDepthRule,
    ErrorPatternRule,
    ErrorRateRule,
    IncidentRule,
    Rule,
    RuleUnavailable,
)
from naq_resilience.ops.incidents import acknowledge_incident_async, handle_critical_error_async
from naq_resilience.ops.monitor import Monitor
from naq_resilience.ops.monitor_config import load_monitor_config
from naq_resilience.ops.sinks import CallbackSink, LoggingSink, NatsSink, Sink, WebhookSink

pytestmark = pytest.mark.usefixtures("clean_jetstream")


class Firing(Rule):
    """Fires for each of `keys`, every time it is asked."""

    def __init__(self, keys: list[str], *, name: str = "firing", cooldown: float = 60.0) -> None:
        super().__init__(name=name, cooldown=cooldown)
        self.keys = keys

    async def evaluate(self, client: Client) -> list[Alert]:
        return [self.alert(f"{key} is wrong", "as always", key=key) for key in self.keys]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Flaky(Sink):
    """Fails its first `failures` sends."""

    def __init__(self, failures: int) -> None:
        super().__init__(name="flaky")
        self.failures = failures
        self.sent: list[Alert] = []

    async def send(self, alert: Alert) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("pager down")
        self.sent.append(alert)


def monitor(client: Client, rules: list[Any], sinks: list[Sink], clock: Clock) -> Monitor:
    return Monitor(rules, sinks, client=client, clock=clock)


def test_cooldown_per_rule_and_key_kept_in_jetstream_for_the_next_monitor(nats_url: str) -> None:
    got: list[Alert] = []
    clock = Clock()

    async def main() -> None:
        async with Client(nats_url) as client:
            rule = Firing(["a"])
            first = monitor(client, [rule], [CallbackSink(got.append)], clock)
            assert [a.key for a in await first.evaluate_once()] == ["a"]
            assert await first.evaluate_once() == []  # cooling down
            rule.keys = ["a", "b"]
            assert [a.key for a in await first.evaluate_once()] == ["b"]  # its own key

            # A new leader (another process, a failover) reads the same cooldowns.
            successor = monitor(client, [Firing(["a", "b"])], [CallbackSink(got.append)], clock)
            assert await successor.evaluate_once() == []
            clock.now += 59
            assert await successor.evaluate_once() == []
            clock.now += 1
            assert sorted(a.key for a in await successor.evaluate_once()) == ["a", "b"]

    asyncio.run(main())
    assert [a.key for a in got] == ["a", "b", "a", "b"]
    assert got[0].monitor
    assert got[0].fired_at == 1_800_000_000.0
    assert got[0].rule == "firing"


def test_two_monitors_evaluating_at_once_send_each_alert_once(nats_url: str) -> None:
    got: list[Alert] = []
    clock = Clock()

    async def main() -> None:
        async with Client(nats_url) as one, Client(nats_url) as two:
            monitors = [
                monitor(client, [Firing(["a", "b", "c"])], [CallbackSink(got.append)], clock)
                for client in (one, two)
            ]
            for _ in range(5):
                sent = await asyncio.gather(*(m.evaluate_once() for m in monitors))
                assert sorted(a.key for batch in sent for a in batch) == ["a", "b", "c"]
                clock.now += 60

    asyncio.run(main())
    assert len(got) == 15


def test_an_alert_no_sink_delivered_is_tried_again_not_cooled_down(nats_url: str) -> None:
    clock = Clock()
    flaky = Flaky(failures=1)

    async def main() -> None:
        async with Client(nats_url) as client:
            watcher = monitor(client, [Firing(["a"])], [flaky], clock)
            assert await watcher.evaluate_once() == []
            assert [a.key for a in await watcher.evaluate_once()] == ["a"]
            assert await watcher.evaluate_once() == []

    asyncio.run(main())
    assert len(flaky.sent) == 1


def test_sinks_get_what_their_minimum_severity_allows(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pages: list[Alert] = []
    received: list[bytes] = []

    class Critical(Firing):
        async def evaluate(self, client: Client) -> list[Alert]:
            alerts = await super().evaluate(client)
            return [msgspec.structs.replace(a, severity=Severity.CRITICAL) for a in alerts]

    async def main() -> None:
        async with Client(nats_url) as client:
            nc = client._nc
            assert nc is not None
            sub = await nc.subscribe("test.alerts")
            rules = [Firing(["warn"], name="warning"), Critical(["page"], name="critical")]
            sinks = [
                CallbackSink(pages.append, min_severity="critical"),
                LoggingSink(),
                NatsSink("test.alerts"),
            ]
            await monitor(client, rules, sinks, Clock()).evaluate_once()
            for _ in range(2):
                received.append((await sub.next_msg(timeout=10)).data)

    with caplog.at_level(logging.INFO, logger="naq_resilience.alerts"):
        asyncio.run(main())
    assert [a.key for a in pages] == ["page"]
    levels = {r.getMessage().split("]")[0]: r.levelname for r in caplog.records}
    assert levels == {"ALERT [warning": "WARNING", "ALERT [critical": "CRITICAL"}
    decoded = sorted(msgspec.json.decode(data, type=Alert).key for data in received)
    assert decoded == ["page", "warn"]


def test_dead_letter_depth_counts_each_queue(nats_url: str) -> None:
    asyncio.run(write(nats_url, [letter(n) for n in range(7)]))  # billing.dead gets 3

    async def main() -> tuple[list[Alert], list[Alert], list[Alert]]:
        async with Client(nats_url) as client:
            per_queue = DeadLetterDepthRule(2, dead_letter_queue=["billing.dead", "mail"])
            every = DeadLetterDepthRule(6)
            quiet = DeadLetterDepthRule(7)
            return (
                await per_queue.evaluate(client),
                await every.evaluate(client),
                await quiet.evaluate(client),
            )

    per_queue, every, quiet = asyncio.run(main())
    assert [(a.key, a.value, a.threshold) for a in per_queue] == [("billing.dead", 3.0, 2.0)]
    assert [(a.key, a.value) for a in every] == [("", 7.0)]
    assert quiet == []


def test_breaker_rule_reads_the_shared_states(nats_url: str) -> None:
    def state(name: str, kind: str) -> bytes:
        return msgspec.json.encode(
            BreakerRecord(
                name=name, state=kind, failures=5, successes=0,
                opened_at=None if kind == "closed" else 1_800_000_000.0, generation=1,
            )
        )  # fmt: skip

    async def main() -> tuple[list[Alert], list[Alert]]:
        async with Client(nats_url) as client:
            _, buckets = await client._ready()
            await buckets.breakers.put("billing-api", state("billing-api", "open"))
            await buckets.breakers.put("search", state("search", "half_open"))
            await buckets.breakers.put("mail", state("mail", "closed"))
            await buckets.breakers.put("billing-db", state("billing-db", "open"))
            everything = BreakerOpenRule(include_half_open=True)
            billing = BreakerOpenRule(["billing-a*"])
            return await everything.evaluate(client), await billing.evaluate(client)

    everything, billing = asyncio.run(main())
    assert sorted(a.key for a in everything) == ["billing-api", "billing-db", "search"]
    assert [a.key for a in billing] == ["billing-api"]
    assert billing[0].severity is Severity.ERROR
    assert "open since 2027-01-15 08:00:00 UTC after 5 consecutive failures" in billing[0].message


def test_incident_rule_pages_until_acknowledged(nats_url: str) -> None:
    async def main() -> tuple[list[Alert], list[Alert]]:
        async with Client(nats_url) as client:
            incident = await handle_critical_error_async(client, SecurityError("tampered"))
            await handle_critical_error_async(client, "warning only", severity="warning")
            rule = IncidentRule(min_severity="error")
            before = await rule.evaluate(client)
            await acknowledge_incident_async(client, incident.id, "ada")
            return before, await rule.evaluate(client)

    before, after = asyncio.run(main())
    assert [(a.severity, a.details["error_type"]) for a in before] == [
        (Severity.CRITICAL, "naq_resilience:SecurityError")
    ]
    assert after == []


def test_analytics_rules_import_and_say_what_they_lack(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    rules: list[AlertRule] = [
        ErrorRateRule(0.05, 3600, queue="emails"),
        ErrorPatternRule(10, 3600),
        BudgetBurnRule(0.999, 30 * 86400, burn_rate=14.4),
    ]
    assert all(isinstance(rule, AlertRule) for rule in rules)

    async def main() -> list[Alert]:
        async with Client(nats_url) as client:
            if hasattr(client, "error_rate"):
                pytest.skip("error analytics exists now: test these rules against it")
            with pytest.raises(RuleUnavailable, match=r"Client\.error_rate"):
                await rules[0].evaluate(client)
            watcher = Monitor([*rules, Firing(["x"])], [Flaky(0)], client=client, clock=Clock())
            return await watcher.evaluate_once()

    with caplog.at_level(logging.ERROR, logger="naq_resilience.monitor"):
        sent = asyncio.run(main())
    assert [a.key for a in sent] == ["x"]  # the other rules still run
    assert sum("cannot run" in r.getMessage() for r in caplog.records) == 3


def test_a_lease_has_one_holder_and_passes_on_when_released(nats_url: str) -> None:
    async def main() -> None:
        async with Client(nats_url) as client:
            js, _ = await client._ready()
            kv = await ensure_monitor_bucket(js)
            a, b = (
                Lease(js, kv, layout.MONITOR_BUCKET, "test-lease", holder, 30)
                for holder in ("a", "b")
            )
            assert await a.keep()
            assert not await b.keep()
            assert await a.keep()  # a renewal
            assert (await b.current()) is not None
            assert (await b.current()).holder == "a"  # type: ignore[union-attr]
            await a.release()
            assert await b.keep()
            assert not await a.keep()
            assert b.held
            assert not a.held

    asyncio.run(main())


def test_config_file_builds_rules_and_sinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGER_TOKEN", "s3cret")
    config = tmp_path / "monitor.toml"
    config.write_text(
        """
[monitor]
interval = "10s"
lease = 6

[[rules]]
type = "dead_letters"
dead_letter_queue = ["emails.dead", "billing"]
threshold = 100
cooldown = "15m"
severity = "error"

[[rules]]
type = "breaker_open"
breakers = ["billing-*"]

[[rules]]
type = "incidents"

[[rules]]
type = "error_rate"
threshold = 0.05
window = "1h"

[[sinks]]
type = "log"

[[sinks]]
type = "webhook"
url = "https://hooks.example.com/naq"
headers = { Authorization = "Bearer ${PAGER_TOKEN}" }
min_severity = "critical"

[[sinks]]
type = "callback"
callable = "builtins:print"
"""
    )
    loaded = load_monitor_config(config)
    assert loaded.options == {"interval": 10.0, "lease": 6}
    dead, breaker, incidents, rate = loaded.rules
    assert isinstance(dead, DeadLetterDepthRule)
    assert (dead.dead_letter_queues, dead.threshold, dead.cooldown, dead.severity) == (
        ["emails.dead", "billing"], 100, 900.0, Severity.ERROR,
    )  # fmt: skip
    assert isinstance(breaker, BreakerOpenRule)
    assert breaker.breakers == ["billing-*"]
    assert isinstance(incidents, IncidentRule)
    assert isinstance(rate, ErrorRateRule)
    assert rate.window.total_seconds() == 3600
    log, hook, call = loaded.sinks
    assert isinstance(log, LoggingSink)
    assert isinstance(hook, WebhookSink)
    assert hook.headers["Authorization"] == "Bearer s3cret"
    assert hook.min_severity is Severity.CRITICAL
    assert isinstance(call, CallbackSink)
    assert call.callback is print


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[[rules]]\ntype = "dead_letters"\nthreshhold = 3\n', "did you mean 'threshold'"),
        ('[[rules]]\ntype = "dead_letter"\n', "type must be one of dead_letters"),
        ('[[rules]]\ntype = "incidents"\ncooldown = "soon"\n', "not a duration"),
        ('[[sinks]]\ntype = "webhook"\nurl = "https://x/${NAQ_TEST_UNSET_VAR}"\n', "not set"),
        ('[[sinks]]\ntype = "webhook"\nurl = "file:///etc/passwd"\n', "http:// or https://"),
        ("[monitr]\n", "unknown table"),
        ("[monitor]\nintervall = 3\n", "did you mean 'interval'"),
    ],
)
def test_config_mistakes_are_one_line_naming_where(tmp_path: Path, text: str, error: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ValueError, match=error) as raised:
        load_monitor_config(config)
    assert str(config) in str(raised.value)


def naq(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    from naq_resilience import cli

    code = cli.main([*argv, "--nats-url", url])
    out, err = capsys.readouterr()
    return code, out, err


def test_naq_monitor_once_and_status(
    nats_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from naq_resilience.ops import logging as naq_logging

    # A command sets up the process's logging; here the process is the test session.
    monkeypatch.setattr(naq_logging, "setup_logging", lambda *args, **kwargs: None)
    asyncio.run(write(nats_url, [letter(n) for n in range(4)]))
    code, out, err = naq(capsys, nats_url, "monitor", "--status")
    assert (code, out) == (
        1,
        "no monitor leads now (none runs, or the leader died less than a lease ago)\n",
    )
    args = ("monitor", "--once", "--dlq-threshold", "1", "--dlq", "billing.dead", "--dlq", "mail")
    code, out, _ = naq(capsys, nats_url, *args)
    assert code == 0
    sent = [msgspec.json.decode(line, type=Alert) for line in out.splitlines()]
    assert [(a.rule, a.key, a.value) for a in sent] == [
        ("dead-letters-billing.dead,mail", "billing.dead", 2.0)
    ]
    code, out, _ = naq(capsys, nats_url, *args)  # cooling down: nothing
    assert (code, out) == (0, "")

    config = tmp_path / "bad.toml"
    config.write_text('[[rules]]\ntype = "breaker_open"\nbreaker = ["x"]\n')
    code, out, err = naq(capsys, nats_url, "monitor", "--once", "--config", str(config))
    assert code == 2
    assert "did you mean 'breakers'" in err
