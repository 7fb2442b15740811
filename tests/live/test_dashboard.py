"""The runs dashboard (`bridges.live.runs_dashboard`) in real Chromium against a real uvicorn
server and a SQLite store: list and filter runs, a run's log with its times and errors, and
resume / cancel / fork / retry from the browser; closed without an authorize hook; POSTs need
the CSRF token and the app's origin."""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable, Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from live_client import LiveServer
from playwright.async_api import Browser, Page, expect
from starlette.requests import Request

from bridges.live import runs_dashboard
from effects import Call, Yield, computation
from effects.durable import DurableRunner, RunStatus

pytestmark = pytest.mark.anyio

WORKERS = Path(__file__).parent.parent / "durable" / "workers"
SECRET = "dashboard-test-secret-0123456789"
OPERATOR = {"X-Operator": "ada"}
ANSWERED = 0 + 1 + 2 + 3  # crash.flow(4): the effects before the bonus prompt


@pytest.fixture
def anyio_backend() -> str:
    """The dashboard's store runs on asyncio (SQLAlchemy's async drivers)."""
    return "asyncio"


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(WORKERS))
    return importlib.import_module("crash_flows")


def check(flag: str) -> str:
    """Fails until the file `flag` exists (a dependency that was down, then fixed)."""
    if not Path(flag).exists():
        raise ConnectionError("the stock service is down")
    return "reserved"


@computation(name="dash.fragile", version=1)
def fragile(flag: str) -> Generator[Any, Any, str]:
    """Asks a question, then calls a service that may be down."""
    sku: str = yield Yield("sku?", input=str)
    status: str = yield Call(check, flag)
    return f"{sku}: {status}"


def only_operators(request: Request) -> bool:
    return request.headers.get("x-operator") == "ada"


async def stored_runs(db_url: str, flows: ModuleType, tmp_path: Path) -> str:
    """waiting (at the bonus prompt), waiting-2, paid (done), broken (failed); the flag path."""
    counter = str(tmp_path / "counter.db")
    flows.init_counter(counter)
    flag = str(tmp_path / "service-up")
    async with DurableRunner(db_url, handlers=flows.HANDLERS) as runner:
        await runner.start(flows.charge_flow(counter), run_id="paid")
        await runner.start(flows.flow(4, counter), run_id="waiting")
        await runner.start(flows.flow(4, counter), run_id="waiting-2")
        await runner.start(fragile(flag), run_id="broken")
        failed = await runner.resume("broken", "tea")
        assert failed.status is RunStatus.FAILED
    return flag


async def status_becomes(page: Page, status: str) -> None:
    """Reload the run page until it shows `status` (the step runs in the server's background;
    the deadline is a safety net)."""
    deadline = time.monotonic() + 20
    while (await page.locator("#run-status").inner_text()).split(",")[0] != status:
        assert time.monotonic() < deadline, await page.locator("#run-status").inner_text()
        await page.reload()


async def test_operators_act_on_runs_from_the_browser(
    browser: Browser,
    serve: Callable[[Any], LiveServer],
    db_url: str,
    flows: ModuleType,
    tmp_path: Path,
) -> None:
    flag = await stored_runs(db_url, flows, tmp_path)
    server = serve(
        runs_dashboard(
            db_url, authorize=only_operators, secret=SECRET, handlers=flows.HANDLERS, title="Ops"
        )
    )
    stranger = await browser.new_page()
    refused = await stranger.goto(server.url + "/")
    assert refused is not None
    assert refused.status == 403

    context = await browser.new_context(extra_http_headers=OPERATOR)
    page = await context.new_page()
    await page.goto(server.url + "/")
    ids = page.locator("table.dash-runs a.dash-id")
    await expect(ids).to_have_text(["broken", "waiting-2", "waiting", "paid"])  # newest first

    # Filter: the runs waiting for an answer whose id starts with "waiting".
    await page.get_by_label("suspended").check()
    await page.get_by_label("Id starts with").fill("waiting")
    await page.get_by_role("button", name="Filter").click()
    await expect(ids).to_have_text(["waiting-2", "waiting"])

    # A run's log, with when each effect started and how long it took.
    await page.get_by_role("link", name="waiting", exact=True).click()
    await expect(page.locator("#run-status")).to_have_text("suspended")
    rows = page.locator("#run-log tbody tr")
    await expect(rows).to_have_count(5)
    await expect(rows.nth(1).locator(".dash-started")).to_have_text(
        re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")
    )
    await expect(rows.nth(1).locator(".dash-took")).to_have_text(re.compile(r"^\d+ ms$"))
    await expect(rows.nth(4)).to_contain_text("pending")

    # An invalid answer: the page says why, nothing changes.
    await page.get_by_label("Answer (JSON)").first.fill('"many"')
    await page.get_by_role("button", name="Resume").click()
    await expect(page.get_by_role("alert")).to_contain_text("invalid answer")
    await expect(page.locator("#run-status")).to_have_text("suspended")

    # Resume from the browser.
    await page.get_by_label("Answer (JSON)").first.fill("100")
    await page.get_by_role("button", name="Resume").click()
    await expect(page.get_by_role("status")).to_have_text(
        "The answer was accepted; the run continues."
    )
    await status_becomes(page, "done")
    await expect(page.locator("#run-result")).to_have_text(str(ANSWERED + 100))

    # Fork the finished run at its prompt (step 4) with another answer.
    await page.get_by_label("At step").select_option("4")
    await page.get_by_label("Answer (JSON, for a prompt)").fill("7")
    await page.get_by_role("button", name="Fork").click()
    await expect(page.get_by_role("status")).to_have_text("This run was forked from another one.")
    assert not page.url.endswith("/runs/waiting?done=fork")
    await status_becomes(page, "done")
    await expect(page.locator("#run-result")).to_have_text(str(ANSWERED + 7))

    # Cancel the other waiting run.
    await page.goto(server.url + "/runs/waiting-2")
    await page.get_by_label("Reason").fill("customer left")
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.locator("#run-status")).to_have_text("cancelled")

    # The failed run shows its error; once the service is back, retry it.
    await page.goto(server.url + "/runs/broken")
    await expect(page.locator("#run-error")).to_contain_text(
        "ConnectionError: the stock service is down"
    )
    await expect(page.locator("#run-log tbody tr").nth(1)).to_contain_text("ConnectionError")
    await anyio.Path(flag).touch()
    await page.get_by_role("button", name="Retry from step 1").click()
    await expect(page.get_by_role("status")).to_have_text("This run retries a failed run.")
    await status_becomes(page, "done")
    await expect(page.locator("#run-result")).to_have_text('"tea: reserved"')

    async with DurableRunner(db_url, handlers=flows.HANDLERS) as runner:
        runs = {r.id: r for r in await runner.list()}
        assert runs["broken"].status is RunStatus.FAILED  # the retried run is kept as it was
        assert runs["waiting"].outcome.value == ANSWERED + 100  # type: ignore[union-attr]
        assert len(runs) == 6  # the fork and the retry are new runs
    await context.close()


async def test_the_dashboard_is_closed_without_a_hook_and_posts_need_csrf(
    serve: Callable[[Any], LiveServer], db_url: str, flows: ModuleType, tmp_path: Path
) -> None:
    """No authorize hook: 403 everywhere. With one: a POST without the session's CSRF token,
    or from another origin, is refused (403) and changes nothing."""
    await stored_runs(db_url, flows, tmp_path)
    closed = serve(runs_dashboard(db_url, authorize=None, secret=SECRET))
    async with httpx.AsyncClient(base_url=closed.url) as client:
        for path in ("/", "/runs/waiting"):
            assert (await client.get(path, headers=OPERATOR)).status_code == 403
        answer = await client.post("/runs/waiting/resume", data={"value": "1"}, headers=OPERATOR)
        assert answer.status_code == 403

    async def operator(request: Request) -> bool:  # an async hook works too
        return only_operators(request)

    server = serve(
        runs_dashboard(db_url, authorize=operator, secret=SECRET, handlers=flows.HANDLERS)
    )
    async with httpx.AsyncClient(base_url=server.url, headers=OPERATOR) as client:
        page = await client.get("/runs/waiting")
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["content-security-policy"]
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        form = {"csrf": token.group(1), "value": "5"}
        no_token = await client.post("/runs/waiting/resume", data={"value": "5"})
        assert no_token.status_code == 403
        elsewhere = await client.post(
            "/runs/waiting/resume", data=form, headers={"Origin": "http://evil.example"}
        )
        assert elsewhere.status_code == 403
        missing = await client.get("/runs/nope")
        assert missing.status_code == 404
        unknown_action = await client.post("/runs/waiting/delete", data=form)
        assert unknown_action.status_code == 404
        hostile = await client.post(
            "/runs/waiting/fork", data={"csrf": token.group(1), "at": "3", "answer": "1"}
        )
        assert hostile.status_code == 400
        assert "step 3 is effects.Call, not a Yield" in hostile.text
        # Filters and pages (two runs a page on a second dashboard below).
        bogus = await client.get("/", params={"since": "yesterday"})
        assert bogus.status_code == 400
        assert "is neither a time" in bogus.text
        recent = await client.get("/", params={"since": "1h", "name": "dash.fragile"})
        assert re.findall(r'class="dash-id" href="[^"]*">([^<]+)<', recent.text) == ["broken"]
        ok = await client.post("/runs/waiting/resume", data=form)
        assert ok.status_code == 303
        assert ok.headers["location"].endswith("/runs/waiting?done=resume")
    paged = serve(runs_dashboard(db_url, authorize=operator, secret=SECRET, page_size=3))
    async with httpx.AsyncClient(base_url=paged.url, headers=OPERATOR) as client:
        first = await client.get("/")
        ids = re.findall(r'class="dash-id" href="[^"]*">([^<]+)<', first.text)
        assert ids == ["broken", "waiting-2", "waiting"]
        older = re.search(r'href="(\?[^"]*)" rel="next"', first.text)
        assert older is not None
        second = await client.get("/" + older.group(1).replace("&amp;", "&"))
        assert re.findall(r'class="dash-id" href="[^"]*">([^<]+)<', second.text) == ["paid"]
        assert 'rel="next"' not in second.text
        assert 'rel="prev"' in second.text
    async with DurableRunner(db_url, handlers=flows.HANDLERS) as runner:
        deadline = time.monotonic() + 20
        while (await runner.get("waiting")).status is not RunStatus.DONE:
            assert time.monotonic() < deadline
            await anyio.sleep(0.05)
        assert [r.id for r in await runner.list()] == ["paid", "waiting", "waiting-2", "broken"]
