"""examples/tasks: an import job's task tree, shared by every tab, cancellable by its owner."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Page, expect

from e2e import ExampleServer, NewPage, NoScript, StartServer, free_port

pytestmark = pytest.mark.anyio

ALL_FULL = """() => {
    const bars = [...document.querySelectorAll('#live-tasks progress[role=progressbar]')];
    return bars.length >= 4 && bars.every(b => b.value === b.max
        && b.getAttribute('aria-valuenow') === b.getAttribute('aria-valuemax'));
}"""


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tasks") / "runs.db"


@pytest.fixture(scope="module")
def server(db: Path) -> Iterator[ExampleServer]:
    """`python examples/tasks/app.py --port P --db DB`, for the whole module."""
    server = ExampleServer("tasks", "--db", str(db)).start()
    yield server
    server.stop()


async def start_import(page: Page, url: str, rows: int, speed: int) -> str:
    """Start an import from the start page; returns the run's URL."""
    await page.goto(url)
    await page.wait_for_selector("body[aria-busy]", state="attached")
    await page.get_by_role("spinbutton", name="Rows").fill(str(rows))
    await page.get_by_role("spinbutton", name="Speed").fill(str(speed))
    await page.get_by_role("button", name="Start").click()
    await page.wait_for_url("**/runs/*")
    await expect(page.get_by_text("You started this run.")).to_be_visible()
    return page.url


async def watch(page: Page, url: str) -> None:
    await page.goto(url)
    await expect(page.get_by_text("Started by someone else; you are watching.")).to_be_visible()
    await page.wait_for_selector("body[aria-busy]", state="attached")


async def test_progress_reaches_100_in_two_tabs(
    server: ExampleServer, db: Path, new_page: NewPage
) -> None:
    """The owner and a watcher (another session) follow the same run live: the download's
    output streams in, and every progress bar ends full in both tabs."""
    owner, watcher = await new_page(), await new_page()
    url = await start_import(owner, server.url, rows=60, speed=40)
    await watch(watcher, url)
    await expect(watcher.get_by_role("button", name="Cancel")).to_have_count(0)
    # Streamed: lines show up while the source program still runs.
    await expect(watcher.locator("#live-output")).to_contain_text("5,User 5,")
    await expect(watcher.get_by_role("status")).to_have_text("Working…")
    for page in (owner, watcher):
        await expect(page.locator("#live-main")).to_contain_text(
            "56 contacts imported, 4 rejected", timeout=10_000
        )
        await page.wait_for_function(ALL_FULL)
        await expect(page.get_by_role("status")).to_have_text("Finished.")
        output = page.locator("#live-output")
        await expect(output).to_contain_text("60,User 60,user60@example.com")
        await expect(output).to_contain_text("rejected row 13: 'user13-at-example.com'")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM contacts").fetchone() == (56,)
    # The start page lists the run for everyone.
    await watcher.goto(server.url)
    await expect(
        watcher.locator(f'#live-runs a[href="{url.removeprefix(server.url)}"]')
    ).to_be_visible()


async def test_only_the_owner_cancels(server: ExampleServer, new_page: NewPage) -> None:
    """The watcher has no cancel button; the owner's cancel reaches both tabs and stops the
    source program."""
    owner, watcher = await new_page(), await new_page()
    url = await start_import(owner, server.url, rows=1000, speed=20)
    await watch(watcher, url)
    await expect(owner.locator("#live-output")).to_contain_text("3,User 3,")
    assert server.children(), "the source program should be running"
    await expect(watcher.get_by_role("button", name="Cancel")).to_have_count(0)
    await owner.get_by_role("button", name="Cancel").click()
    for page in (owner, watcher):
        await expect(page.get_by_role("heading", name="Cancelled")).to_be_visible()
        await expect(page.get_by_role("status")).to_have_text("Cancelled.")
        await expect(page.locator("#live-tasks .live-task-cancelled")).to_contain_text(
            "Download contacts.csv"
        )
    await expect(owner.get_by_role("button", name="Cancel")).to_have_count(0)
    assert server.children() == []


async def follow(client: NoScript, path: str, needle: str) -> None:
    """Read the run page's stream until an event contains `needle`."""
    with anyio.fail_after(15):
        async with client.http.stream("GET", path + "/_live/sse") as stream:
            async for line in stream.aiter_lines():
                if needle in line:
                    return


async def test_a_restart_mid_download_downloads_again(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Stop the server (Ctrl-C, a deploy) while the source program streams: the program dies
    with it, and the next server process continues the run, downloads again and finishes."""
    port, db = free_port(), tmp_path / "runs.db"
    server = start_server("tasks", "--db", str(db), port=port)
    async with NoScript(server.url) as client:
        await client.get("/")
        # A 4 s download; the POST returns after at most 2 s (the bridge's settle time).
        response = await client.post("/", "start", {"rows": "400", "speed": "100"})
        path = response.headers["location"]
        await follow(client, path, "5,User 5,")
        server.stop()
        start_server("tasks", "--db", str(db), port=port)
        await follow(client, path, "370 contacts imported, 30 rejected")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM contacts").fetchone() == (370,)
    # The run's log (through the command line): the first program was lost, a second one ran.
    run_id, url = path.rsplit("/", 1)[1], f"sqlite+aiosqlite:///{db}"
    command = [sys.executable, "-m", "effects", "runs", "show", run_id, "--db", url]
    with anyio.fail_after(30):
        shown = (await anyio.run_process(command)).stdout.decode()
    assert shown.count("importer.spawn") == 2
    assert "importer.SourceLost" in shown


async def test_a_recovered_run_shows_its_tree_in_the_open_tab(
    start_server: StartServer, new_page: NewPage, tmp_path: Path
) -> None:
    """The open tab follows a run across a server restart: the next process continues the
    run, and the tab shows its task tree (rebuilt by replay) to the end, and again on reload."""
    port, db = free_port(), tmp_path / "runs.db"
    server = start_server("tasks", "--db", str(db), port=port)
    page = await new_page()
    url = await start_import(page, server.url, rows=300, speed=100)
    await expect(page.locator("#live-output")).to_contain_text("5,User 5,")
    server.stop()
    start_server("tasks", "--db", str(db), port=port)
    output, tasks = page.locator("#live-output"), page.locator("#live-tasks")
    await expect(output).to_contain_text("downloading again", timeout=10_000)
    await expect(tasks).to_contain_text("Download contacts.csv")
    await expect(page.locator("#live-main")).to_contain_text(
        "277 contacts imported, 23 rejected", timeout=15_000
    )
    await page.wait_for_function(ALL_FULL)
    await expect(tasks.locator("section[data-status=completed]")).to_have_count(1)
    await page.goto(url)
    await expect(tasks.locator(".live-task-completed")).to_have_count(4)
    await expect(output).to_contain_text("300,User 300,")


async def test_a_finished_run_shows_its_tree_and_output_after_a_restart(
    start_server: StartServer, new_page: NewPage, tmp_path: Path
) -> None:
    """A run that finished before the server restarted: its page on the new server (which never
    ran it) shows the stored task tree, full bars and output, to the owner and to a new tab."""
    port, db = free_port(), tmp_path / "runs.db"
    server = start_server("tasks", "--db", str(db), port=port)
    page = await new_page()
    url = await start_import(page, server.url, rows=40, speed=400)
    await expect(page.get_by_role("status")).to_have_text("Finished.", timeout=10_000)
    server.stop()
    start_server("tasks", "--db", str(db), port=port)
    for tab in (page, await new_page()):
        await tab.goto(url)
        await expect(tab.get_by_role("status")).to_have_text("Finished.")
        tasks, output = tab.locator("#live-tasks"), tab.locator("#live-output")
        await expect(tasks.locator(".live-task-completed")).to_have_count(4)
        await expect(tasks.locator("section[data-status=completed]")).to_have_count(1)
        await tab.wait_for_function(ALL_FULL)
        await expect(output).to_contain_text("1,User 1,user1@example.com")
        await expect(output).to_contain_text("40,User 40,user40@example.com")
        await expect(output).to_contain_text("rejected row 26: 'user26-at-example.com'")
        await expect(output).to_contain_text("37 contacts saved, 3 rejected")
