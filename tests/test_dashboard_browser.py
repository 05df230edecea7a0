"""`naq dashboard` driven through a real headless Chromium (Debian's `chromium`), against
a real nats-server and a real worker: load, filter, replay and see it run, watch a
chart update live, bulk discard with confirmation, force a breaker, and a cross-site
POST refused. A failing test leaves a screenshot in browser-failures/.

Playwright's async API, each test one `asyncio.run`: its sync API keeps an event loop
running in the test's thread, where the broker fixtures run theirs."""

from __future__ import annotations

import asyncio
import http.server
import os
import re
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from naq_resilience import Client

import worker_jobs
from dashboard_helpers import NASTY, DashboardProcess

pytest.importorskip("playwright", reason="the dev extra installs playwright")
from playwright.async_api import Page, async_playwright, expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.usefixtures("clean_jetstream"),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
        reason="no chromium here: apt-get install chromium (.ci/run installs it)",
    ),
]
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
FAILURES = Path(__file__).resolve().parents[1] / "browser-failures"
WAIT = 30_000  # ms: for the broker and worker to do their part, not a timing claim


@asynccontextmanager
async def browsing(name: str) -> AsyncIterator[Page]:
    """A page in a fresh headless Chromium; a screenshot of it if the test fails."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        dialogs: list[str] = []

        async def accept(dialog: Any) -> None:
            dialogs.append(dialog.message)
            await dialog.accept()

        page.on("dialog", accept)
        page.dialogs = dialogs  # type: ignore[attr-defined]
        try:
            yield page
        except BaseException:
            FAILURES.mkdir(exist_ok=True)
            shot = FAILURES / f"{name}.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failure: {shot}")
            raise
        finally:
            await browser.close()


def run(test: Callable[[Page], Awaitable[None]], name: str) -> None:
    async def main() -> None:
        async with browsing(name) as page:
            await test(page)

    asyncio.run(main())


def test_pages_load_filter_and_show_tracebacks_as_text(
    fleet: tuple[DashboardProcess, Path], request: pytest.FixtureRequest
) -> None:
    board, _ = fleet

    async def test(page: Page) -> None:
        await page.goto(board.url + "/")
        await expect(page.locator("h1")).to_have_text("Overview")
        await expect(page.locator("#fleet")).to_contain_text("dead letters")
        await expect(page.locator("#fleet")).to_contain_text("default")
        await page.click("nav >> text=Dead letters")
        await expect(page.locator("table.letters tbody tr")).to_have_count(8)
        await page.select_option("select[name=classification]", "critical")
        await page.click("button:has-text('Filter')")
        await expect(page).to_have_url(re.compile(r"classification=critical"))
        await expect(page.locator("table.letters tbody tr")).to_have_count(1)
        await expect(page.locator("table.letters")).to_contain_text("SecurityError")
        await page.goto(board.url + "/dead-letters?text=alert(1)")
        await expect(page.locator("table.letters tbody tr")).to_have_count(1)
        await expect(page.locator("table.letters")).to_contain_text(NASTY[:20])  # as text
        await page.click("table.letters tbody a")
        await expect(page.locator("h2", has_text="Failure history")).to_be_visible()
        await expect(page.locator("pre.traceback").first).to_contain_text("Traceback")
        assert await page.locator("img[src=x]").count() == 0
        assert page.dialogs == []  # type: ignore[attr-defined]
        await page.click("nav >> text=Schedules")
        await expect(page.locator("table")).to_contain_text("nightly-report")
        row = page.locator("tr", has_text="hourly-sync")
        await row.locator("button", has_text="Pause").click()
        await expect(page.locator("tr", has_text="hourly-sync")).to_contain_text("paused")

    run(test, request.node.name)


def test_replay_a_dead_letter_and_watch_it_run(
    fleet: tuple[DashboardProcess, Path], request: pytest.FixtureRequest
) -> None:
    board, trace = fleet

    async def test(page: Page) -> None:
        await page.goto(board.url + "/dead-letters?function=*call_dependency")
        await expect(page.locator("table.letters tbody tr")).to_have_count(2)
        (trace / "dependency-is-up").touch()  # the dependency is back: the replay works
        await page.locator("table.letters tbody a").first.click()
        await page.click("#replay")
        await expect(page).to_have_url(re.compile(r"/jobs/"))
        await expect(page.locator(".banner.ok")).to_contain_text("Replayed")
        # The job page is not reloaded: the live update brings the worker's outcome.
        await page.evaluate("window.notReloaded = true")
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=WAIT)
        assert await page.evaluate("window.notReloaded") is True
        await expect(page.locator("#job")).to_contain_text("Replay of")

    run(test, request.node.name)


def test_chart_updates_live_and_bulk_discard_asks_first(
    fleet: tuple[DashboardProcess, Path], nats_url: str, request: pytest.FixtureRequest
) -> None:
    board, _ = fleet

    async def test(page: Page) -> None:
        await page.goto(board.url + "/")
        await page.evaluate("window.notReloaded = true")
        depth = page.locator("#charts svg.chart[aria-label='Queue depth'] polyline").first
        await expect(depth).to_be_attached(timeout=WAIT)
        before = await depth.get_attribute("points")
        async with Client(nats_url) as client:
            await client.enqueue_many(worker_jobs.slow, [(1.0, f"s{n}") for n in range(6)])
        await expect(depth).not_to_have_attribute("points", before or "", timeout=WAIT)
        assert await page.evaluate("window.notReloaded") is True

        await page.goto(board.url + "/dead-letters?error_type=ValueError")
        await expect(page.locator("table.letters tbody tr")).to_have_count(2)
        await page.check("input[data-select-all]")
        await page.select_option("select[name=action]", "discard")
        await page.click("button:has-text('Review')")
        await expect(page.locator("h1")).to_have_text("Discard 2 dead letters?")
        async with Client(nats_url) as client:  # nothing done before the confirmation
            assert await client.count_dead_letters(error_type="ValueError") == 2
        await page.click("#confirm")
        await expect(page.locator("h1")).to_have_text("Discarded 2")
        await page.goto(board.url + "/dead-letters?error_type=ValueError")
        await expect(page.locator("table.letters")).to_contain_text("No dead letters match")

    run(test, request.node.name)


def test_force_a_breaker_open_and_closed(
    fleet: tuple[DashboardProcess, Path], nats_url: str, request: pytest.FixtureRequest
) -> None:
    board, _ = fleet

    async def test(page: Page) -> None:
        async with Client(nats_url) as client:
            await client.close_breaker("payments-api")
        await page.goto(board.url + "/breakers")
        row = page.locator("tr[data-breaker='payments-api']")
        await expect(row).to_contain_text("closed")
        await row.locator("button", has_text="Force open").click()
        await expect(page.locator(".banner.ok")).to_contain_text("opened")
        await expect(row.locator(".tag")).to_have_text("open")
        await row.locator("button", has_text="Force closed").click()
        await expect(row.locator(".tag")).to_have_text("closed")
        async with Client(nats_url) as client:
            [breaker] = [b for b in await client.list_breakers() if b.name == "payments-api"]
            assert breaker.state == "closed"

    run(test, request.node.name)


class _EvilSite(http.server.BaseHTTPRequestHandler):
    """Another site, whose page posts a form to the dashboard as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        page = (
            f'<form id="f" method="post" action="{self.target}/breakers/open">'
            '<input name="name" value="payments-api"><input name="csrf" value="guess"></form>'
            '<script>document.getElementById("f").submit()</script>'
        )
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cross_site_post_is_refused(
    fleet: tuple[DashboardProcess, Path], nats_url: str, request: pytest.FixtureRequest
) -> None:
    board, _ = fleet
    _EvilSite.target = board.url
    evil = http.server.HTTPServer(("127.0.0.1", 0), _EvilSite)
    threading.Thread(target=evil.serve_forever, daemon=True).start()

    async def test(page: Page) -> None:
        await page.goto(board.url + "/breakers")  # the operator has the dashboard open
        async with page.expect_response(lambda r: "/breakers/open" in r.url) as answer:
            await page.goto(f"http://localhost:{evil.server_address[1]}/")
        assert (await answer.value).status == 403
        async with Client(nats_url) as client:
            assert [b.name for b in await client.list_breakers() if b.state == "open"] == []

    try:
        run(test, request.node.name)
    finally:
        evil.shutdown()
        evil.server_close()


def test_errors_drill_down_to_a_traceback_and_logs_arrive_live(
    fleet: tuple[DashboardProcess, Path], nats_url: str, request: pytest.FixtureRequest
) -> None:
    board, _ = fleet

    async def test(page: Page) -> None:
        await page.goto(board.url + "/errors?window=1h")
        row = page.locator("tr", has_text="SecurityError")
        await expect(row).to_contain_text("worker_jobs.py:raises")
        await row.locator("td").last.locator("a").first.click()  # one of its jobs
        await expect(page).to_have_url(re.compile(r"/jobs/"))
        await page.click("text=default.dead")  # the job became a dead letter
        await expect(page.locator("pre.traceback").first).to_contain_text("SecurityError")

        await page.goto(board.url + "/logs?level=info")
        await page.evaluate("window.notReloaded = true")
        logs = page.locator("#logs")
        await expect(logs).to_contain_text("tampered payload")
        async with Client(nats_url) as client:
            await client.enqueue(worker_jobs.raises, "live-log-marker", max_retries=0)
        await expect(logs).to_contain_text("live-log-marker", timeout=WAIT)
        assert await page.evaluate("window.notReloaded") is True

    run(test, request.node.name)


def test_acknowledge_and_resolve_an_incident(
    fleet: tuple[DashboardProcess, Path], request: pytest.FixtureRequest
) -> None:
    board, _ = fleet

    async def test(page: Page) -> None:
        # The worker opened an incident for the critical SecurityError it dead-lettered.
        await page.goto(board.url + "/incidents")
        row = page.locator("tr", has_text="SecurityError")
        await expect(row.locator(".tag")).to_have_text("OPEN", timeout=WAIT)
        await row.locator("button", has_text="Acknowledge").click()
        await expect(page.locator(".banner.ok")).to_contain_text("acknowledged")
        await expect(row.locator(".tag")).to_have_text("ACKNOWLEDGED")
        await row.locator("input[name=note]").fill("rotated the signing key")
        await row.locator("button", has_text="Resolve").click()
        await expect(row.locator(".tag")).to_have_text("RESOLVED")
        await expect(row).to_contain_text("rotated the signing key")

    run(test, request.node.name)
