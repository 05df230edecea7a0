"""A function defined in a script run as `python script.py` is enqueued under the
script's name, so a worker started beside it with `--import script` runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    from naq_resilience import enqueue_sync

    def greet(name: str, path: str) -> None:
        with open(path, "a") as out:
            out.write(f"hello {name}\\n")

    if __name__ == "__main__":
        job = enqueue_sync(greet, "ada", sys.argv[1])
        print(job.function)
    """
)


@pytest.mark.usefixtures("clean_jetstream")
def test_script_function_runs_on_a_worker_importing_the_script(
    nats_url: str, tmp_path: Path
) -> None:
    (tmp_path / "signup.py").write_text(SCRIPT)
    out = tmp_path / "out.txt"
    env = dict(os.environ, NAQ_NATS_URL=nats_url)
    enqueued = subprocess.run(
        [sys.executable, "signup.py", str(out)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert enqueued.returncode == 0, enqueued.stderr
    assert enqueued.stdout.strip() == "signup:greet"
    worker = subprocess.Popen(
        [sys.executable, "-m", "naq_resilience.cli", "worker", "--import", "signup"],
        cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and out.read_text()):
            assert worker.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.05)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    assert out.read_text() == "hello ada\n"
