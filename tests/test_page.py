"""The run-watch page in a real browser: Debian's Chromium driven by Playwright.

Tests wait on DOM state the page exposes (`#run-view[data-state]`, `data-last-seq`, the
counts of gaps, duplicates and reconnects), never on time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from rayruns import Client
from rayruns.serve_app.settings import Settings
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
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"
WORDS = " ".join(f"w{i}" for i in range(15))
ASSISTANT_TEXT = (
    "() => [...document.querySelectorAll('#transcript .assistant_message')]"
    ".map(n => n.textContent).join('')"
)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def proxy(base_url: str, settings: Settings) -> Iterator[CuttingProxy]:
    cutter = CuttingProxy(settings.serve.port).start()
    yield cutter
    cutter.stop()


@pytest.fixture
def client(base_url: str) -> Iterator[Client]:
    with Client(base_url) as c:
        yield c


@pytest.fixture
def expected_errors() -> list[str]:
    """Console errors a test causes on purpose (a substring of each)."""
    return []


@pytest.fixture
def page(browser: Browser, proxy: CuttingProxy, expected_errors: list[str]) -> Iterator[Page]:
    """The page, through the proxy; any other console error (a script error, a CSP refusal,
    a failed request) fails the test."""
    context = browser.new_context(base_url=proxy.url, viewport={"width": 1360, "height": 560})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    assert [p for p in problems if not any(e in p for e in expected_errors)] == []


def follow(page: Page, run_id: str) -> None:
    page.goto(f"/#run={run_id}")
    expect(page.locator("#run-view")).to_have_attribute("data-run-id", run_id)


def expect_clean_end(page: Page, stop_reason: str) -> None:
    view = page.locator("#run-view")
    expect(view).to_have_attribute("data-state", "done")
    expect(page.locator("#stop-reason")).to_have_text(stop_reason)
    expect(view).to_have_attribute("data-gaps", "0")
    expect(view).to_have_attribute("data-duplicates", "0")


def test_the_list_shows_runs_and_filters_them(page: Page, client: Client) -> None:
    conversation = f"conv-page-{id(page)}"
    done = client.runs.create(
        messages=[{"role": "user", "content": "a b c"}], stream=False, conversation_id=conversation
    ).run
    hanging = client.runs.create(
        messages=[{"role": "user", "content": "x y"}],
        background=True,
        provider_options={"hang_after": 0},
    )
    cancelled = client.runs.cancel(hanging.run_id)
    hanging.close()
    page.goto("/")
    line = page.locator(f'#runs tr[data-run-id="{done.id}"]')
    expect(line).to_have_attribute("data-status", "completed")
    usage = done.usage
    assert usage is not None
    cells = [done.id, "completed", "fake/echo", re.compile(r"\d"), re.compile(r"^\d+\.\d s$")]
    expect(line.locator("td")).to_have_text([*cells, str(usage.total_tokens)])
    expect(page.locator(f'#runs tr[data-run-id="{cancelled.id}"]')).to_have_attribute(
        "data-status", "cancelled"
    )
    page.fill("#filter-conversation", conversation)
    expect(page.locator("#runs tbody tr")).to_have_count(1)
    expect(line).to_be_visible()
    page.fill("#filter-conversation", "")
    page.select_option("#filter-status", "cancelled")
    expect(page.locator(f'#runs tr[data-run-id="{cancelled.id}"]')).to_be_visible()
    expect(line).to_have_count(0)
    assert page.locator("#runs tbody tr:not([data-status=cancelled])").count() == 0


def test_a_followed_run_renders_its_text_then_its_stop_reason(page: Page, client: Client) -> None:
    tool = client.runs.create(
        messages=[{"role": "user", "content": "weather?"}],
        stream=False,
        provider_options={"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
    ).run
    page.goto("/")
    page.locator(f'#runs tr[data-run-id="{tool.id}"] button').click()
    expect_clean_end(page, "requires_approval")
    expect(page.locator("#transcript .tool_call_message")).to_contain_text(
        'get_weather({"city": "Oslo"})'
    )
    expect(page.locator("#transcript .approval_request_message")).to_contain_text("get_weather")

    # Record the text on screen at the moment the stop reason appears.
    page.evaluate(
        """() => new MutationObserver((_, observer) => {
             if (!document.getElementById('stop-reason').textContent) return;
             window.textAtStop = ("""
        + ASSISTANT_TEXT
        + """)();
             observer.disconnect();
           }).observe(document.getElementById('stop-reason'), {childList: true})"""
    )
    page.fill("#start-prompt", WORDS)
    page.fill("#start-options", '{"delay_s": 0.02, "reasoning": "first, some thinking"}')
    page.click("#start-button")
    expect_clean_end(page, "end_turn")
    assert page.evaluate("window.textAtStop") == WORDS
    assert page.evaluate(ASSISTANT_TEXT) == WORDS
    expect(page.locator("#transcript .reasoning_message")).to_have_text("first, some thinking")
    # 15 words of text and 3 of reasoning, one chunk each
    expect(page.locator("#usage")).to_have_text("15 prompt + 18 completion tokens, 1 step")
    run_id = page.locator("#run-view").get_attribute("data-run-id")
    assert run_id is not None and client.runs.get(run_id).background
    expect(page.locator(f'#runs tr[data-run-id="{run_id}"]')).to_have_class("followed")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT)


def test_cancel_from_the_page_ends_the_run_cancelled(page: Page, client: Client) -> None:
    stream = client.runs.create(
        messages=[{"role": "user", "content": WORDS}],
        background=True,
        provider_options={"hang_after": 2},
    )
    stream.close()  # a background run goes on without its client
    follow(page, stream.run_id)
    expect(page.locator("#run-view")).to_have_attribute("data-last-seq", "2")
    page.click("#cancel-button")
    expect_clean_end(page, "cancelled")
    assert page.evaluate(ASSISTANT_TEXT) == "w0 w1 "
    assert client.runs.get(stream.run_id).status == "cancelled"
    expect(page.locator(f'#runs tr[data-run-id="{stream.run_id}"]')).to_have_attribute(
        "data-status", "cancelled"
    )


def test_a_cut_stream_reconnects_with_last_event_id_without_gap_or_duplicate(
    page: Page, client: Client, proxy: CuttingProxy, expected_errors: list[str]
) -> None:
    expected_errors.append("net::ERR_INCOMPLETE_CHUNKED_ENCODING")  # the cut, as Chromium logs it
    stream = client.runs.create(
        messages=[{"role": "user", "content": WORDS}],
        background=True,
        provider_options={"delay_s": 0.2},
    )
    stream.close()
    follow(page, stream.run_id)
    view = page.locator("#run-view")
    expect(view).not_to_have_attribute("data-last-seq", "0")
    cut_at = int(view.get_attribute("data-last-seq") or 0)
    assert proxy.cut(f"/v1/runs/{stream.run_id}/stream") == 1
    resumed = proxy.wait_for(
        lambda h: (
            h.path.startswith(f"/v1/runs/{stream.run_id}/stream") and "last-event-id" in h.headers
        )
    )
    expect_clean_end(page, "end_turn")
    assert int(resumed.headers["last-event-id"]) >= cut_at >= 1
    expect(view).to_have_attribute("data-reconnects", "1")
    assert page.evaluate(ASSISTANT_TEXT) == WORDS
