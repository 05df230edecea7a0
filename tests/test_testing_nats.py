"""The plugin's NATS fixtures, run through pytester against real servers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from naq_resilience.testing.nats import TEST_URL_ENV

from conftest import wait_gone

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ("-p", "no:naq_resilience", "-p", "naq_resilience.testing.pytest_plugin")
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, *QUIET, "-rs", *args)


def test_loading_the_plugin_starts_nothing_and_imports_no_nats() -> None:
    code = textwrap.dedent(
        """
        import sys
        import naq_resilience.testing.pytest_plugin
        import naq_resilience.testing.nats
        print(sorted(m for m in sys.modules
                     if m == "nats" or m.startswith(("nats.", "naq_resilience.jetstream"))))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.strip() == "[]"


def test_fixtures_with_an_embedded_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TEST_URL_ENV, raising=False)
    pytester.makepyfile(
        """
        import asyncio
        import os

        def record(server):
            with open("pids.txt", "a") as pids:
                pids.write(f"{server.pid}\\n")

        def test_leaves_data_behind(nats_client, clean_jetstream, nats_server):
            record(nats_server)

            async def main():
                async with nats_client() as nc:
                    js = nc.jetstream()
                    await js.add_stream(name="LEFTOVER", subjects=["left.>"])
                    kv = await js.create_key_value(bucket="settings")
                    await kv.put("k", b"v")

            asyncio.run(main())

        def test_starts_clean(nats_client, clean_jetstream, nats_url, nats_server):
            assert clean_jetstream == nats_url == nats_server.url

            async def main():
                async with nats_client() as nc:
                    return await nc.jetstream().streams_info()

            assert asyncio.run(main()) == []

        def test_session_server_survives_kill_and_restart(
            nats_client, clean_jetstream, nats_server
        ):
            async def publish():
                async with nats_client() as nc:
                    js = nc.jetstream()
                    await js.add_stream(name="DURABLE", subjects=["durable.>"])
                    await js.publish("durable.1", b"still here")

            async def read():
                async with nats_client() as nc:
                    return (await nc.jetstream().get_msg("DURABLE", 1)).data

            asyncio.run(publish())
            nats_server.kill()
            nats_server.restart()
            record(nats_server)
            assert asyncio.run(read()) == b"still here"

        def test_kills_it_and_leaves_it_down(nats_server):
            nats_server.kill()
            assert not nats_server.running

        def test_clean_jetstream_brings_it_back(nats_server, clean_jetstream):
            assert nats_server.running
            record(nats_server)

        def test_a_fresh_server_of_its_own(fresh_nats_server, nats_url):
            record(fresh_nats_server)
            assert fresh_nats_server.url != nats_url
            fresh_nats_server.kill()
            fresh_nats_server.restart()
            record(fresh_nats_server)
            assert fresh_nats_server.running
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=6)
    pids = {int(line) for line in (pytester.path / "pids.txt").read_text().split()}
    assert len(pids) == 5
    assert all(wait_gone(pid) for pid in pids)


def test_fixtures_with_an_external_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, nats_url: str
) -> None:
    monkeypatch.setenv(TEST_URL_ENV, nats_url)
    pytester.makepyfile(
        f"""
        import asyncio

        def test_uses_the_given_url(nats_url, clean_jetstream, nats_client):
            assert nats_url == clean_jetstream == {nats_url!r}

            async def main():
                async with nats_client() as nc:
                    return nc.is_connected

            assert asyncio.run(main())

        def test_kill_is_skipped(nats_server):
            nats_server.kill()
            raise AssertionError("not reached")

        def test_fresh_server_is_skipped(fresh_nats_server):
            raise AssertionError("not reached")

        def test_cluster_is_skipped(nats_cluster):
            raise AssertionError("not reached")
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        [
            f"*cannot kill the NATS server: {TEST_URL_ENV} points the tests at an external*",
            f"*fresh_nats_server starts a server to kill or restart, and {TEST_URL_ENV}*",
            f"*nats_cluster starts a 3-node cluster to kill or restart, and {TEST_URL_ENV}*",
        ]
    )
