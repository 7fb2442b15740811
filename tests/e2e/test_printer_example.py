"""examples/printer: a model function that prints as it works, used without JavaScript."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.async_api import expect

from e2e import ExampleServer, NewPage, NoScript, load_example
from effects import TaskSnapshot, TaskTree, run
from effects.testing import FixedClock, SeededRandom

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleServer]:
    """`python examples/printer/app.py --port P --db DB`, for the whole module."""
    db = tmp_path_factory.mktemp("printer") / "runs.db"
    server = ExampleServer("printer", "--db", str(db)).start()
    yield server
    server.stop()


def test_the_model_under_test_handlers() -> None:
    """The model function runs without a server: seeded, with a stopped clock, its prints
    collected by a `TaskTree`; it finds the line the data was drawn from."""
    app = load_example("printer")
    snapshots: list[TaskSnapshot] = []
    tree = TaskTree(snapshots.append)
    result = run(app.fit_line(epochs=300, learning_rate=0.7), SeededRandom(7), FixedClock(), tree)
    a, b = (float(x) for x in re.findall(r"-?\d+\.\d+", result))
    assert abs(a - 3) < 0.2
    assert abs(b - 1) < 0.2
    lines = snapshots[-1].root.lines
    assert len(lines) == 301
    assert lines[-1].text.startswith("epoch 300  loss ")


async def test_a_browser_without_javascript(server: ExampleServer, new_page: NewPage) -> None:
    """With scripting off the form posts normally, the run's page refreshes itself while the
    model works, and ends with every printed line and the result."""
    page = await new_page(java_script_enabled=False)
    await page.goto(server.url)
    # 30 epochs of 0.1 s: longer than the bridge waits before it answers the POST.
    await page.get_by_role("spinbutton", name="Epochs").fill("30")
    await page.get_by_role("button", name="Start").click()
    await page.wait_for_url("**/runs/*")
    await expect(page.get_by_role("status")).to_have_text("Working…")
    assert await page.locator('noscript, meta[http-equiv="refresh"]').count() > 0
    # Each <noscript> refresh is a new document: wait across them for the end.
    await expect(page.locator(".live-done")).to_be_visible(timeout=10_000)
    await expect(page.get_by_role("status")).to_have_text("Finished.")
    lines = page.locator("#live-output li")
    await expect(lines).to_have_count(31)
    await expect(lines.first).to_have_text("fitting 50 points: 30 epochs, learning rate 0.5")
    await expect(lines.last).to_contain_text("epoch  30  loss ")
    await expect(page.locator(".live-result")).to_have_text(
        re.compile(r"^y = [-\d.]+x \+ [-\d.]+$")
    )
    await expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuetext", "100%")


async def test_print_lines_over_plain_http(server: ExampleServer) -> None:
    """The same flow with an HTTP client: the page is complete HTML at every step."""
    async with NoScript(server.url) as client:
        await client.get("/")
        response = await client.post("/", "start", {"epochs": "3", "learning_rate": "0.5"})
        assert response.status_code == 303
        path = response.headers["location"]
        page = await client.get(path)
        assert "fitting 50 points: 3 epochs" in page
        await client.get("/")
        refused = await client.post("/", "start", {"epochs": "0"})
        assert refused.status_code == 303
        page = await client.get("/")
        assert 'id="f-epochs-err" role="alert"' in page
