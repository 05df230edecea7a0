"""Every example in examples/ runs, as a user would run it, and exits cleanly.

Each runs against the test session's server, except that one run of the quickstart
points at a port where nothing answers, to prove its embedded-server fallback; none of
them may reach a server on the default port that some other program owns.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


def _unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{sock.getsockname()[1]}"


def _run(example: Path, url: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=example.parent,
        env={**os.environ, "NAQ_NATS_URL": url},
    )
    assert done.returncode == 0, f"{example.name} failed:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), f"{example.name} printed nothing"
    return done


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ is empty"


@pytest.mark.usefixtures("clean_jetstream")
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example: Path, nats_url: str) -> None:
    _run(example, nats_url)


def test_quickstart_starts_its_own_server_when_none_answers() -> None:
    done = _run(Path(__file__).parent.parent / "examples" / "quickstart.py", _unused_url())
    assert "started one at nats://" in done.stdout
