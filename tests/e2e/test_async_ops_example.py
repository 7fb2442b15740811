"""examples/async_ops: loading, then success or error; the button is disabled while loading."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from playwright.async_api import Page, expect

from e2e import ExampleServer, NewPage, NoScript, load_example
from effects import run
from effects.testing import FixedClock, FixedRandom

pytestmark = pytest.mark.anyio

LATENCY = "0.4"  # seconds per fetch: long enough to see the loading state, short for the suite


@pytest.fixture(scope="module")
def server() -> Iterator[ExampleServer]:
    """`python examples/async_ops/app.py --port P --latency 0.4`, for the whole module."""
    server = ExampleServer("async_ops", "--latency", LATENCY).start()
    yield server
    server.stop()


def test_the_fetch_under_test_handlers() -> None:
    """The fetch is effects only: a stopped clock and fixed random numbers make it a unit
    test (no waiting, both outcomes on demand)."""
    app = load_example("async_ops")
    assert run(app.fetch_quote(60), FixedClock(), FixedRandom([0.5, 2])) == app.QUOTES[2]
    with pytest.raises(app.FetchFailed):
        run(app.fetch_quote(60), FixedClock(), FixedRandom([0.2]))


async def fetch(page: Page, number: int) -> str:
    """Click the button and check the loading state; returns how fetch `number` ended."""
    status = page.get_by_role("status")
    await page.locator("#live-main button").click()
    button = page.get_by_role("button", name="Loading…")
    await expect(button).to_be_disabled()
    await expect(button).to_have_attribute("aria-busy", "true")
    await expect(status).to_have_text(f"Fetch {number}: loading…")
    # A second submit while loading (the button is disabled, so from script): ignored.
    await page.evaluate("document.querySelector('#live-main form').requestSubmit()")
    await expect(status).not_to_have_text(f"Fetch {number}: loading…")
    await expect(page.locator("#live-main button")).to_be_enabled()
    text = (await status.inner_text()).strip()
    assert text in (f"Fetch {number}: done.", f"Fetch {number}: failed."), text
    return "done" if text.endswith("done.") else "failed"


async def test_loading_then_success_or_error(server: ExampleServer, new_page: NewPage) -> None:
    """Each fetch shows loading with a disabled button, then a quote or an alert; about one
    in three fails, so both outcomes show up within a few fetches."""
    page = await new_page()
    await page.goto(server.url)
    await page.wait_for_selector("body[aria-busy]", state="attached")
    await expect(page.get_by_role("status")).to_have_text("Ready.")
    seen: set[str] = set()
    number = 0
    # P(one outcome missing after 30 fetches) = (2/3)^30 + (1/3)^30 < 1e-5.
    while seen != {"done", "failed"} and number < 30:
        number += 1
        outcome = await fetch(page, number)
        seen.add(outcome)
        if outcome == "done":
            await expect(page.locator("blockquote.quote-text")).not_to_be_empty()
            await expect(page.get_by_role("button", name="Fetch a quote")).to_be_visible()
        else:
            await expect(page.get_by_role("alert")).to_have_text(
                "The quote server did not answer. Try again."
            )
            await expect(page.get_by_role("button", name="Try again")).to_be_visible()
    assert seen == {"done", "failed"}


async def test_a_second_click_while_loading_is_ignored(server: ExampleServer) -> None:
    """Without JavaScript, POSTs sent while a fetch loads (a double click, the same form
    twice, a fresh key) start nothing."""
    async with NoScript(server.url) as client:
        await client.get("/")
        key = client.key("fetch")
        first = await client.post("/", "fetch", key=key)
        assert first.status_code == 303
        page = await client.get("/")
        assert "Fetch 1: loading…" in page
        assert '<noscript><meta http-equiv="refresh"' in page
        for again in (key, client.key("fetch")):
            reply = await client.post("/", "fetch", key=again, headers={"X-Live": "1"})
            assert reply.json()["duplicate"] is True
        # Follow the page's stream until the fetch ends: fetch 1, never a fetch 2.
        async with client.http.stream("GET", "/_live/sse") as stream:
            with anyio.fail_after(5):
                async for line in stream.aiter_lines():
                    if "Fetch 1: done." in line or "Fetch 1: failed." in line:
                        break
        page = await client.get("/")
        assert "Fetch 1: " in page
        assert "Fetch 2" not in page
