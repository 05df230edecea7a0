"""The monitor's configuration file: a small TOML file of rules and sinks.

```toml
[monitor]
interval = "30s"          # how often the leader evaluates (a number of seconds, or 30s, 5m)
lease = "15s"             # how long the fleet may go without a leader when it dies

[[rules]]
type = "dead_letters"     # DeadLetterDepthRule
dead_letter_queue = ["emails.dead", "billing"]
threshold = 100
cooldown = "15m"

[[rules]]
type = "breaker_open"     # BreakerOpenRule

[[rules]]
type = "incidents"        # IncidentRule: pages until acknowledged

[[sinks]]
type = "webhook"
url = "https://hooks.example.com/naq"
headers = { Authorization = "Bearer ${PAGER_TOKEN}" }
min_severity = "error"
```

Each table's keys are the keyword arguments of its class (`type` picks the class), so
the file says nothing the Python API does not; a key a class does not take is refused
with the closest one it does. Durations are seconds or `90s`, `15m`, `2h`, `7d`. A
webhook's `url` and `headers` may name environment variables (`${PAGER_TOKEN}`), so the
file need not hold secrets; an unset one is refused rather than sent empty. A `callback`
sink names a function as `module:qualname`, imported from the operator's own code.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naq_resilience.ops.alerts import (
    AlertRule,
    BreakerOpenRule,
    BudgetBurnRule,
    DeadLetterDepthRule,
    ErrorPatternRule,
    ErrorRateRule,
    IncidentRule,
)
from naq_resilience.ops.sinks import CallbackSink, LoggingSink, NatsSink, Sink, WebhookSink

__all__ = ["RULE_TYPES", "SINK_TYPES", "MonitorConfig", "load_monitor_config", "parse_duration"]

RULE_TYPES: dict[str, type[Any]] = {
    "dead_letters": DeadLetterDepthRule,
    "breaker_open": BreakerOpenRule,
    "incidents": IncidentRule,
    "error_rate": ErrorRateRule,
    "error_pattern": ErrorPatternRule,
    "budget_burn": BudgetBurnRule,
}
SINK_TYPES: dict[str, type[Sink]] = {
    "log": LoggingSink,
    "callback": CallbackSink,
    "webhook": WebhookSink,
    "nats": NatsSink,
}
MONITOR_KEYS = ("interval", "lease", "name", "rule_timeout")
_DURATION_KEYS = {"cooldown", "window", "interval", "lease", "timeout", "retry_delay",
                  "rule_timeout"}  # fmt: skip
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class MonitorConfig:
    """What a file says: rules, sinks, and `Monitor` options (`interval`, `lease`, ...)."""

    rules: list[AlertRule] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def parse_duration(value: object, where: str) -> float:
    """Seconds from a number or `90s`, `15m`, `2h`, `7d`, `1w`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (match := _DURATION.match(value.strip())):
        return float(match[1]) * _UNITS[match[2]]
    raise ValueError(f"{where}: {value!r} is not a duration; write seconds or 90s, 15m, 2h, 7d")


def _expand(value: str, where: str) -> str:
    def variable(match: re.Match[str]) -> str:
        name = match[1]
        if name not in os.environ:
            raise ValueError(f"{where} names ${{{name}}}, which is not set in the environment")
        return os.environ[name]

    return _ENV.sub(variable, value)


def _callable(target: object, where: str) -> Callable[..., Any]:
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(f"{where}: callable is 'module:qualname', got {target!r}")
    module_name, _, qualname = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"{where}: {target} is not callable")
    return found  # type: ignore[no-any-return]


def _build(kinds: Mapping[str, type[Any]], table: Mapping[str, Any], where: str) -> Any:
    if not isinstance(table, Mapping):
        raise ValueError(f"{where} must be a table")
    options = dict(table)
    kind = options.pop("type", None)
    if kind not in kinds:
        raise ValueError(f"{where}: type must be one of {', '.join(kinds)}, got {kind!r}")
    cls = kinds[kind]
    if cls is CallbackSink:
        options["callback"] = _callable(options.pop("callable", None), where)
    if cls is WebhookSink:
        if "url" in options:
            options["url"] = _expand(str(options["url"]), f"{where} url")
        headers = options.get("headers") or {}
        options["headers"] = {str(k): _expand(str(v), f"{where} header {k}")
                              for k, v in headers.items()}  # fmt: skip
    accepted = [
        name
        for name, parameter in inspect.signature(cls).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{where} ({kind}): unknown key {key!r}{hint} (it takes {', '.join(accepted)})"
            )
        if key in _DURATION_KEYS:
            options[key] = parse_duration(options[key], f"{where} {key}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} ({kind}): {exc}") from None


def load_monitor_config(path: str | os.PathLike[str]) -> MonitorConfig:
    """Rules, sinks and options from a TOML file; every mistake is one ValueError naming
    where it is."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read the monitor config {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{file} is not valid TOML: {exc}") from None
    unknown = set(data) - {"monitor", "rules", "sinks"}
    if unknown:
        raise ValueError(
            f"{file}: unknown table(s) {', '.join(sorted(unknown))}; it has [monitor], "
            "[[rules]] and [[sinks]]"
        )
    config = MonitorConfig()
    for key, value in dict(data.get("monitor", {})).items():
        if key not in MONITOR_KEYS:
            close = difflib.get_close_matches(key, MONITOR_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{file} [monitor]: unknown key {key!r}{hint}")
        where = f"{file} [monitor] {key}"
        config.options[key] = parse_duration(value, where) if key in _DURATION_KEYS else value
    for i, table in enumerate(data.get("rules", [])):
        config.rules.append(_build(RULE_TYPES, table, f"{file} rules[{i}]"))
    for i, table in enumerate(data.get("sinks", [])):
        config.sinks.append(_build(SINK_TYPES, table, f"{file} sinks[{i}]"))
    return config
