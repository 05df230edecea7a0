"""What both benchmarks say about the machine they ran on, and when to distrust it.

Imported as `_machine` by scripts run from this folder (`python benchmarks/x.py` puts
the folder first on `sys.path`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from typing import Any

__all__ = ["cpu_model", "load_warning", "loadavg", "version"]


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def loadavg() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def load_warning(meta: dict[str, Any]) -> list[str]:
    """A warning when other processes competed for the CPU during the run."""
    cores = meta.get("usable_cores") or meta.get("cores") or 1
    try:
        load = max(float(meta[key].split()[0]) for key in ("loadavg_start", "loadavg_end"))
    except (KeyError, ValueError, IndexError):
        return []
    if load < cores / 2:
        return []
    return [
        f"WARNING: load average {load:.2f} on {cores} cores before or after the run: other "
        "processes competed for the CPU, so these numbers are noisy (see --json)."
    ]
