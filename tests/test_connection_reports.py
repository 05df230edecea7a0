"""What nats-py's callbacks say, and at which level, against a real server stopped and
started under a live connection. Nothing here measures time: the tests wait for the
events (a number of reconnect attempts, the reconnect) and count the lines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from naq_resilience.jetstream import connection
from naq_resilience.jetstream.connection import ConnectionSettings, connect
from naq_resilience.jetstream.server import EmbeddedServer

ROOT = Path(__file__).resolve().parents[1]


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


def test_a_lost_connection_is_one_warning_and_its_attempts_are_debug(
    fresh_nats_server: EmbeddedServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "LOST_AFTER", 0.2)
    caplog.set_level(logging.DEBUG, logger="naq_resilience")
    name = f"reports-{uuid.uuid4().hex}"  # its lines, not those of a client another test leaked
    settings = ConnectionSettings(fresh_nats_server.url, name=name, reconnect_time_wait=0.02)

    def said(level: int, text: str) -> list[logging.LogRecord]:
        return [
            r for r in caplog.records
            if r.levelno == level and text in r.getMessage() and name in r.getMessage()
        ]  # fmt: skip

    async def main() -> None:
        nc = await connect(settings)
        try:
            fresh_nats_server.stop()
            await until(lambda: bool(said(logging.WARNING, "lost the connection")))
            reported = len(said(logging.DEBUG, "Connect call failed"))
            await until(lambda: len(said(logging.DEBUG, "Connect call failed")) >= reported + 20)
            fresh_nats_server.restart()
            await until(lambda: bool(said(logging.INFO, "reconnected to NATS")))
        finally:
            await nc.close()

    asyncio.run(main())
    ours = [r for r in caplog.records if name in r.getMessage()]
    above_info = [r for r in ours if r.levelno >= logging.WARNING]
    assert [r.getMessage().split(" at ")[0] for r in above_info] == [
        "lost the connection to NATS"  # once, for dozens of attempts
    ], [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "reconnect attempts so far" in above_info[0].getMessage()
    assert not said(logging.INFO, "closed")  # our own close is not news


def test_a_connection_nats_py_closes_for_good_is_a_warning(
    fresh_nats_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="naq_resilience")
    name = f"reports-{uuid.uuid4().hex}"
    settings = ConnectionSettings(
        fresh_nats_server.url, name=name, max_reconnect_attempts=2, reconnect_time_wait=0.02
    )

    async def main() -> None:
        nc = await connect(settings)
        fresh_nats_server.stop()
        await until(lambda: nc.is_closed)

    asyncio.run(main())
    (closed,) = [
        r for r in caplog.records
        if r.levelno >= logging.WARNING and name in r.getMessage()
    ]  # fmt: skip
    assert "was closed for good (no server left to try" in closed.getMessage()


EXITING = textwrap.dedent(
    """
    import sys

    from naq_resilience import EmbeddedServer, enqueue_sync, setup_logging

    if sys.argv[1:] == ["--debug"]:
        setup_logging("DEBUG", json=True, process=True)


    def work(n: int) -> int:
        return n


    server = EmbeddedServer()
    server.start()
    enqueue_sync(work, 1, nats_url=server.url)  # the module's client, closed at exit
    server.stop()
    """
)


@pytest.mark.parametrize("debug", [False, True], ids=["no-logging-set-up", "debug-json"])
def test_a_client_closed_at_exit_after_its_server_stopped_says_nothing_above_debug(
    tmp_path: Path, debug: bool
) -> None:
    """examples/dead_letter_handling.py's ending: the embedded server stops, then the
    process exits and closes the module-level sync client."""
    script = tmp_path / "exiting.py"
    script.write_text(EXITING)
    done = subprocess.run(
        [sys.executable, str(script), *(["--debug"] if debug else [])],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    if not debug:
        assert done.stderr == ""  # Python's last-resort handler prints WARNING and up
        return
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line for line in lines if line["level"] not in ("DEBUG", "INFO")] == []
    assert any(line["message"].startswith("NATS connection to") for line in lines)  # closed
