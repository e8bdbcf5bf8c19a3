"""The run-watch page in a real browser: Debian's Chromium driven by Playwright.

Tests wait on DOM state the page exposes (`#run-view[data-state]`, `data-last-seq`, the
counts of gaps, duplicates and reconnects), never on time.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from rayruns import AsyncClient
from rayruns.serve_app.settings import Settings
from tests.conftest import wait_terminal
from tests.cutting_proxy import CuttingProxy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous bounds for a loaded machine (several Ray clusters share 2 cores): waits end on DOM
# state as soon as it is reached; these only decide when to give up.
WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)
# The suite leaves the checkout as it was: `make screenshot` is what renews the README's picture.
SCREENSHOT = Path(
    os.environ.get("RAYRUNS_SCREENSHOT")
    or Path(__file__).resolve().parents[1] / "var" / "screenshot.png"
)
WORDS = " ".join(f"w{i}" for i in range(15))
ASSISTANT_TEXT = (
    "() => [...document.querySelectorAll('#transcript .assistant_message')]"
    ".map(n => n.textContent).join('')"
)


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    # Async Playwright, on the session's event loop: the sync API would hold that loop.
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture(scope="module")
def proxy(base_url: str, settings: Settings) -> Iterator[CuttingProxy]:
    cutter = CuttingProxy(settings.serve.port).start()
    yield cutter
    cutter.stop()


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(base_url) as c:
        yield c


@pytest.fixture
def expected_errors() -> list[str]:
    """Console errors a test causes on purpose (a substring of each)."""
    return []


@pytest.fixture
async def page(
    browser: Browser, proxy: CuttingProxy, expected_errors: list[str]
) -> AsyncIterator[Page]:
    """The page, through the proxy; any other console error (a script error, a CSP refusal,
    a failed request) fails the test."""
    context = await browser.new_context(base_url=proxy.url, viewport={"width": 1360, "height": 560})
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    yield page
    await context.close()
    assert [p for p in problems if not any(e in p for e in expected_errors)] == []


async def follow(page: Page, run_id: str) -> None:
    await page.goto(f"/#run={run_id}")
    await expect(page.locator("#run-view")).to_have_attribute("data-run-id", run_id)


async def expect_clean_end(page: Page, stop_reason: str) -> None:
    view = page.locator("#run-view")
    await expect(view).to_have_attribute("data-state", "done")
    await expect(page.locator("#stop-reason")).to_have_text(stop_reason)
    await expect(view).to_have_attribute("data-gaps", "0")
    await expect(view).to_have_attribute("data-duplicates", "0")


async def test_the_list_shows_runs_and_filters_them(page: Page, client: AsyncClient) -> None:
    conversation = f"conv-page-{id(page)}"
    finished = await client.runs.create(
        messages=[{"role": "user", "content": "a b c"}], stream=False, conversation_id=conversation
    )
    done = finished.run
    hanging = await client.runs.create(
        messages=[{"role": "user", "content": "x y"}],
        background=True,
        provider_options={"hang_after": 0},
    )
    cancelled = await client.runs.cancel(hanging.run_id)
    await hanging.aclose()
    await page.goto("/")
    line = page.locator(f'#runs tr[data-run-id="{done.id}"]')
    await expect(line).to_have_attribute("data-status", "completed")
    usage = done.usage
    assert usage is not None
    cells = [done.id, "completed", "fake/echo", re.compile(r"\d"), re.compile(r"^\d+\.\d s$")]
    await expect(line.locator("td")).to_have_text([*cells, str(usage.total_tokens)])
    await expect(page.locator(f'#runs tr[data-run-id="{cancelled.id}"]')).to_have_attribute(
        "data-status", "cancelled"
    )
    await page.fill("#filter-conversation", conversation)
    await expect(page.locator("#runs tbody tr")).to_have_count(1)
    await expect(line).to_be_visible()
    await page.fill("#filter-conversation", "")
    await page.select_option("#filter-status", "cancelled")
    await expect(page.locator(f'#runs tr[data-run-id="{cancelled.id}"]')).to_be_visible()
    await expect(line).to_have_count(0)
    assert await page.locator("#runs tbody tr:not([data-status=cancelled])").count() == 0


async def test_a_followed_run_renders_its_text_then_its_stop_reason(
    page: Page, client: AsyncClient
) -> None:
    tool_run = await client.runs.create(
        messages=[{"role": "user", "content": "weather?"}],
        stream=False,
        provider_options={"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
    )
    tool = tool_run.run
    await page.goto("/")
    await page.locator(f'#runs tr[data-run-id="{tool.id}"] button').click()
    await expect_clean_end(page, "requires_approval")
    await expect(page.locator("#transcript .tool_call_message")).to_contain_text(
        'get_weather({"city": "Oslo"})'
    )
    await expect(page.locator("#transcript .approval_request_message")).to_contain_text(
        "get_weather"
    )

    # Record the text on screen at the moment the stop reason appears.
    await page.evaluate(
        """() => new MutationObserver((_, observer) => {
             if (!document.getElementById('stop-reason').textContent) return;
             window.textAtStop = ("""
        + ASSISTANT_TEXT
        + """)();
             observer.disconnect();
           }).observe(document.getElementById('stop-reason'), {childList: true})"""
    )
    await page.fill("#start-prompt", WORDS)
    await page.fill("#start-options", '{"delay_s": 0.02, "reasoning": "first, some thinking"}')
    await page.click("#start-button")
    await expect_clean_end(page, "end_turn")
    assert await page.evaluate("window.textAtStop") == WORDS
    assert await page.evaluate(ASSISTANT_TEXT) == WORDS
    await expect(page.locator("#transcript .reasoning_message")).to_have_text(
        "first, some thinking"
    )
    # 15 words of text and 3 of reasoning, one chunk each
    await expect(page.locator("#usage")).to_have_text("15 prompt + 18 completion tokens, 1 step")
    run_id = await page.locator("#run-view").get_attribute("data-run-id")
    assert run_id is not None and (await client.runs.get(run_id)).background
    await expect(page.locator(f'#runs tr[data-run-id="{run_id}"]')).to_have_class("followed")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOT)


async def test_cancel_from_the_page_ends_the_run_cancelled(page: Page, client: AsyncClient) -> None:
    stream = await client.runs.create(
        messages=[{"role": "user", "content": WORDS}],
        background=True,
        provider_options={"hang_after": 2},
    )
    await stream.aclose()  # a background run goes on without its client
    await follow(page, stream.run_id)
    await expect(page.locator("#run-view")).to_have_attribute("data-last-seq", "2")
    await page.click("#cancel-button")
    await expect_clean_end(page, "cancelled")
    assert await page.evaluate(ASSISTANT_TEXT) == "w0 w1 "
    assert (await client.runs.get(stream.run_id)).status == "cancelled"
    await expect(page.locator(f'#runs tr[data-run-id="{stream.run_id}"]')).to_have_attribute(
        "data-status", "cancelled"
    )


async def test_a_cut_stream_reconnects_with_last_event_id_without_gap_or_duplicate(
    page: Page, client: AsyncClient, proxy: CuttingProxy, expected_errors: list[str]
) -> None:
    expected_errors.append("net::ERR_INCOMPLETE_CHUNKED_ENCODING")  # the cut, as Chromium logs it
    # The run stalls after 5 chunks, so the stream is open and mid-run when it is cut; its end
    # (the cancel's terminal frames) comes only over the reconnected stream.
    stream = await client.runs.create(
        messages=[{"role": "user", "content": WORDS}],
        background=True,
        provider_options={"delay_s": 0.05, "hang_after": 5},
    )
    await stream.aclose()
    await follow(page, stream.run_id)
    view = page.locator("#run-view")
    await expect(view).to_have_attribute("data-last-seq", "5")
    assert proxy.cut(f"/v1/runs/{stream.run_id}/stream") == 1
    resumed = await asyncio.to_thread(
        proxy.wait_for,
        lambda h: (
            h.path.startswith(f"/v1/runs/{stream.run_id}/stream") and "last-event-id" in h.headers
        ),
    )
    assert resumed.headers["last-event-id"] == "5"
    await expect(view).to_have_attribute("data-reconnects", "1")
    await expect(view).to_have_attribute("data-state", "live")
    await client.runs.cancel(stream.run_id)
    await expect_clean_end(page, "cancelled")
    assert await view.get_attribute("data-last-seq") == "7"  # 5 chunks, stop_reason, usage
    assert await page.evaluate(ASSISTANT_TEXT) == "w0 w1 w2 w3 w4 "
    await expect(page.locator("#usage")).to_contain_text("5 completion tokens")


async def test_a_foreground_run_started_in_the_page_ends_when_the_page_closes(
    page: Page, registry: Any
) -> None:
    await page.goto("/")
    await page.uncheck("#start-background")
    await page.fill("#start-options", '{"hang_after": 1}')
    await page.click("#start-button")
    view = page.locator("#run-view")
    await expect(view).to_have_attribute("data-last-seq", "1")
    run_id = await view.get_attribute("data-run-id")
    assert run_id is not None
    await page.close()  # the POST that holds a foreground run goes with the page
    run = await wait_terminal(registry, run_id)
    assert run.status == "cancelled" and not run.background
