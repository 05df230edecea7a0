"""Screenshots of every dashboard page with real data, into docs/img/.

Starts a nats-server, a real worker (tests/worker_jobs.py), jobs that fail in several
ways, schedules, a breaker, a steady stream of jobs for the charts, then
`naq dashboard`, and photographs each page in headless Chromium (Debian's).

    python docs/gen_screenshots.py
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_dead_letters import fill  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from naq_resilience import Client  # noqa: E402
from naq_resilience.jetstream.server import EmbeddedServer  # noqa: E402

import worker_jobs  # noqa: E402
from dashboard_helpers import DashboardProcess, failing_jobs, request, schedules  # noqa: E402
from processes import WorkerProcess  # noqa: E402

OUT = ROOT / "docs" / "img"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


async def load(url: str, seconds: float) -> None:
    """A steady trickle of jobs, some slow, so the charts have something to draw."""
    async with Client(url) as client:
        for n in range(int(seconds * 4)):
            await client.enqueue(worker_jobs.add, n, n)
            if n % 6 == 0:
                await client.enqueue(worker_jobs.slow, 2.0, f"slow-{n}")
            if n % 20 == 0:
                await client.enqueue(worker_jobs.raises, "connection", max_retries=1)
            await asyncio.sleep(0.25)


async def shoot(board: DashboardProcess) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 820})

        async def snap(path: str, name: str, full: bool = False) -> None:
            await page.goto(board.url + path)
            await page.wait_for_timeout(600)
            await page.screenshot(path=str(OUT / f"{name}.png"), full_page=full)
            print(f"docs/img/{name}.png  <- {path}")

        await snap("/", "overview")
        await snap("/dead-letters", "dead-letters")
        await snap("/dead-letters?classification=critical", "dead-letters-filtered")
        _, _, body = request(board.url + "/dead-letters?function=worker_jobs:raises")
        found = re.search(rb'name="ids" value="([^"]+)"', body)
        assert found is not None
        await snap(f"/dead-letters/{found[1].decode()}", "dead-letter")
        await snap("/errors", "errors")
        await snap("/logs?level=warning", "logs")
        await snap("/incidents", "incidents")
        await snap("/schedules", "schedules")
        await snap("/breakers", "breakers")
        await page.goto(board.url + "/dead-letters?error_type=ConnectionError")
        await page.check("input[data-select-all]")
        await page.click("button:has-text('Review')")
        await page.screenshot(path=str(OUT / "confirm.png"))
        print("docs/img/confirm.png  <- bulk replay, confirmation")
        await browser.close()


def main() -> int:
    with (
        tempfile.TemporaryDirectory() as store,
        tempfile.TemporaryDirectory() as trace,
        EmbeddedServer(host="127.0.0.1", port=None, store_dir=store) as server,
    ):
        worker = WorkerProcess(server.url, Path(trace), "--concurrency", "4")
        board = None
        try:
            async def prepare() -> None:
                await fill(server.url, 240)  # letters as bench_dead_letters writes them
                async with Client(server.url) as client:
                    await failing_jobs(client, dependency_down=4)
                    await schedules(client)
                    await client.close_breaker("payments-api")
                    await client.open_breaker("geocoder")

            asyncio.run(prepare())
            board = DashboardProcess(server.url, sample_every=1.0)

            async def photograph(url: str, running: DashboardProcess) -> None:
                trickle = asyncio.create_task(load(url, 60))
                await asyncio.sleep(35)  # the charts fill while the jobs keep coming
                await shoot(running)
                trickle.cancel()

            asyncio.run(photograph(server.url, board))
        finally:
            if board is not None:
                board.close()
            worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
