"""`naq demo` runs from start to end on the server it starts itself, and tells the truth."""

from __future__ import annotations

import re
import subprocess
import sys


def test_the_demo_shows_every_kind_of_failure_and_the_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "naq_resilience.cli", "demo", "--jobs", "100"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    counts = re.search(
        r"(\d+) retries, (\d+) breaker trips, (\d+) fallbacks, (\d+) compensations, "
        r"(\d+) dead letters",
        out,
    )
    assert counts is not None, out
    retries, trips, fallbacks, compensations, dead = map(int, counts.groups())
    assert retries == out.count("\nretry ")
    assert dead == out.count("\ndead letter ")
    assert fallbacks == out.count("\nfallback ")
    assert min(retries, fallbacks, compensations, dead) > 0
    assert trips == out.count("\nbreaker open ")
    # Every job ended once, and the counters agree with what was seen die.
    failed = re.search(r"(\d+) of (\d+) jobs failed for good", out)
    assert failed is not None, out
    assert (int(failed[1]), int(failed[2])) == (dead, 100)
    assert "Error patterns" in out
    assert "Error budget for a 99% success target" in out
