"""The benchmark scripts still run (their figures are not judged here: no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=BENCHMARKS
    )
    assert done.returncode == 0, f"{argv[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_decorator_benchmark_runs() -> None:
    out = run("bench_decorators.py", "--quick", "--repeats", "1", "--target-time", "0.01")
    assert "| case | peer | naq-resilience us | peer us | ratio |" in out
    assert "full sync stack" in out


def test_worker_benchmark_runs() -> None:
    out = run(
        "bench_worker.py", "--cases", "raw,naq", "--n", "1000", "--rounds", "1",
        "--memory-jobs", "0", "--no-progress",
    )  # fmt: skip
    assert "naq-resilience | e2e" in out
    assert "failing jobs to dead letters" in out


def test_dead_letter_benchmark_runs() -> None:
    out = run("bench_dead_letters.py", "--letters", "600", "--replay", "200", "--runs", "1")
    assert "| first page of 50 | naq-resilience ms | raw nats-py ms |" in out
    assert "| every letter of one dead-letter queue, rate=None | 200 |" in out


def test_monitoring_benchmark_runs() -> None:
    out = run(
        "bench_monitoring.py", "--outcomes", "3000", "--hours", "2", "--naive-jobs", "300",
        "--runs", "1",
    )  # fmt: skip
    assert "| read | naq-resilience ms | client CPU ms | answer |" in out
    assert "| error_patterns(24h) |" in out
    assert "target: error_rate over an hour under 100 ms: " in out


def test_dashboard_benchmark_runs() -> None:
    out = run("bench_dashboard.py", "--letters", "300", "--outcomes", "1000", "--runs", "1")
    assert "| page | path | status | median ms | max ms | under 300 ms |" in out
    assert "| dead letter with history |" in out
