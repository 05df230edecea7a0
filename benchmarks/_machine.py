"""What both benchmarks say about the machine they ran on, and when to distrust it.

Imported as `_machine` by scripts run from this folder (`python benchmarks/x.py` puts
the folder first on `sys.path`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "environment", "load_warning", "loadavg", "version"]


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


def environment() -> dict[str, Any]:
    """The machine, the interpreter and which naq_resilience was imported."""
    try:
        import naq_resilience

        naq_path = str(Path(naq_resilience.__file__).resolve().parent)
    except Exception as exc:
        naq_path = f"cannot import: {type(exc).__name__}: {exc}"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "loadavg_start": loadavg(),
        "naq_resilience": naq_path,
    }
