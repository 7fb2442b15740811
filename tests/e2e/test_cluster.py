"""Several processes behind a load balancer (issue #9): the wizard example as three server
processes on one PostgreSQL database, behind nginx doing round robin without stickiness, in
Chromium and over plain HTTP. Any process serves any request: the page's GET, its stream and
each answer may land on different processes, and the page still follows the run."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from cluster import Cluster, start_cluster
from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import create_async_engine

from e2e import NewPage, NoScript
from fixtures.nginx import Balancer, LogLine
from live.live_client import EventReader, RawStream, Visitor, form_key

pytestmark = pytest.mark.anyio

Sql = Callable[[str], Awaitable[list[tuple[Any, ...]]]]
"""The `sql` fixture: `await sql(query)` returns the rows."""

NAME_STEP = "Welcome! What is your name?"
PLAN_STEP = "Choose a plan"
ROUNDS = 30  # wizards answered in the latency test (three answers each)
LEASE = 2.0  # seconds: the takeover test's lease
ALL_FULL = """() => {
    const bars = [...document.querySelectorAll('#live-tasks progress[role=progressbar]')];
    return bars.length >= 4 && bars.every(b => b.value === b.max
        && b.getAttribute('aria-valuenow') === b.getAttribute('aria-valuemax'));
}"""


def email_step(name: str) -> str:
    return f"Hello {name}! What is your email address?"


@pytest.fixture
def cluster(
    pg_database_url: str, start_nginx: Callable[[Sequence[int]], Balancer]
) -> Iterator[Cluster]:
    """Three wizard processes on one PostgreSQL database, nginx in front."""
    started = start_cluster("wizard", pg_database_url, start_nginx)
    yield started
    started.stop()


@pytest.fixture
async def sql(pg_database_url: str) -> AsyncIterator[Sql]:
    """`await sql(query)`: the rows of a query on the cluster's database."""
    engine = create_async_engine(pg_database_url)

    async def query(text: str) -> list[tuple[Any, ...]]:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(sa.text(text))).all()]

    yield query
    await engine.dispose()


async def heading(page: Page, text: str) -> None:
    await expect(page.get_by_role("heading", name=text, exact=True)).to_be_visible()


async def synced(page: Page) -> None:
    """Wait until the page's script applied its stream's first snapshot (`<body aria-busy>`)."""
    await page.wait_for_selector("body[aria-busy]", state="attached")


async def answer(page: Page, label: str, value: str, then: str) -> None:
    await page.get_by_role("textbox", name=label).fill(value)
    await page.get_by_role("button", name="Continue").click()
    await heading(page, then)


async def logged(cluster: Cluster, done: Callable[[list[LogLine]], bool]) -> list[LogLine]:
    """The access log once `done(lines)` holds (streams are logged when they end)."""
    deadline = time.monotonic() + 10
    while not done(lines := cluster.served()):
        assert time.monotonic() < deadline, f"not in nginx's access log: {lines}"
        await anyio.sleep(0.05)
    return lines


async def test_the_wizard_completed_while_every_request_hits_another_process(
    cluster: Cluster, new_page: NewPage, sql: Sql
) -> None:
    """Round robin without stickiness: the run page's GET, its stream and the answers are
    served by different processes, and the page follows every step without a reload."""
    page = await new_page()
    await page.goto(cluster.address)
    await synced(page)
    await page.get_by_role("button", name="Start").click()
    await heading(page, NAME_STEP)
    await synced(page)
    path = "/" + page.url.split("/", 3)[3]
    await answer(page, "Name", "Ada", email_step("Ada"))
    await answer(page, "Email", "ada@example.com", PLAN_STEP)
    await page.get_by_role("radio", name="Pro Unlimited projects").check()
    await page.get_by_role("button", name="Create my account").click()
    await heading(page, "Welcome aboard, Ada!")
    await expect(page.get_by_role("status")).to_have_text("Finished.")
    rows = await sql("SELECT name, email, plan FROM users")
    assert rows == [("Ada", "ada@example.com", "pro")]
    await page.context.close()  # ends the stream: nginx logs it

    stream_path = path + "/_live/sse"
    lines = await logged(cluster, lambda ls: any(line.path == stream_path for line in ls))
    get = [line for line in lines if line.method == "GET" and line.path == path]
    posts = [line for line in lines if line.method == "POST" and line.path == path]
    streams = [line for line in lines if line.path == stream_path]
    assert len(posts) == 3, posts
    assert {line.upstream for line in lines} == {f"127.0.0.1:{s.port}" for s in cluster.servers}

    def stream_at(moment: float) -> LogLine:
        found = [s for s in streams if s.start <= moment <= s.end]
        assert found, (moment, streams)
        return found[0]

    # The page's GET on one process, its stream on another...
    assert len(get) == 1, get
    assert get[0].upstream != stream_at(get[0].end + 0.5).upstream
    # ...and answers posted to processes other than the stream's, which still showed them.
    elsewhere = [post for post in posts if post.upstream != stream_at(post.start).upstream]
    assert elsewhere, (posts, streams)


async def test_a_post_repeated_on_another_process_is_done_once(cluster: Cluster, sql: Sql) -> None:
    """A start and an answer, each posted to one process and again (same form, same key) to
    another: one run is started, the step is answered once."""
    first, second = cluster.servers[0], cluster.servers[1]
    async with NoScript(first.url) as a, NoScript(second.url) as b:
        await a.get("/")
        started = await a.post("/", "start")
        assert started.status_code == 303
        b.http.cookies = a.http.cookies
        b.page = a.page  # the same form (CSRF token and key), sent to another process
        again = await b.post("/", "start")
        assert again.status_code == 303
        run_path = started.headers["location"]
        assert again.headers["location"] == run_path
        assert len(await sql("SELECT id FROM effects_runs")) == 1

        await a.get(run_path)
        name_form = a.page
        await a.submit(run_path, "answer", {"name": "Bob"})
        b.page = name_form  # the step's form again: its key names the step answered
        repeated = await b.post(run_path, "answer", {"name": "Eve"})
        assert repeated.status_code == 303
        shown = await b.get(run_path)
        assert email_step("Bob") in shown
        assert "Eve" not in shown


async def test_answer_to_patch_across_processes(cluster: Cluster) -> None:
    """The stream on one process, the answers posted to another: each answer reaches the
    stream as a patch (the run's change travels through PostgreSQL's NOTIFY). Prints the
    latency from the answer's POST to the patch showing the next step."""
    streamer, poster = cluster.servers[0], cluster.servers[1]
    samples: list[float] = []
    for i in range(ROUNDS):
        async with Visitor(poster.url) as visitor:  # a session of its own: no start limit
            name = f"User{i}"
            path = await visitor.start()
            await visitor.get(path)
            conn = await RawStream.open(
                "127.0.0.1", streamer.port, path + "/_live/sse", visitor.cookie
            )
            try:
                reader = EventReader(conn)
                await reader.until("main", NAME_STEP)
                steps = [
                    ({"name": name}, email_step(name)),
                    ({"email": f"{name.lower()}@example.com"}, PLAN_STEP),
                    ({"plan": "free"}, f"Welcome aboard, {name}!"),
                ]
                for fields, then in steps:
                    key = form_key(reader.html("main"), "answer")
                    began = time.perf_counter()
                    response = await visitor.post(path, "answer", key, fields, live=True)
                    assert response.status_code == 200, response.text[:300]
                    try:
                        with anyio.fail_after(10):
                            await reader.until("main", then)
                    except TimeoutError:
                        raise AssertionError(
                            f"no patch with {then!r} after the answer {fields} (reply: "
                            f"{response.json()}); the stream shows {reader.html('status')!r}"
                        ) from None
                    samples.append(time.perf_counter() - began)
            finally:
                await conn.aclose()
    samples.sort()
    p50 = samples[len(samples) // 2]
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(
        f"answer -> patch across processes: n={len(samples)} p50={p50 * 1000:.1f} ms "
        f"p99={p99 * 1000:.1f} ms max={samples[-1] * 1000:.1f} ms"
    )
    # The target (p99 <= 100 ms) is printed, not asserted: timings on a machine shared with
    # other test runs vary. This bound catches a stalled patch path.
    assert p99 < 1.0


async def test_kill_9_of_the_process_running_a_step(
    pg_database_url: str,
    start_nginx: Callable[[Sequence[int]], Balancer],
    new_page: NewPage,
    sql: Sql,
) -> None:
    """kill -9 of the process running an import's step: after its lease expires another
    process continues the run from its last checkpoint (the program it started died with it,
    so the download starts again; nothing recorded is done twice) and the open page follows
    the run to its end without a reload."""
    cluster = start_cluster("tasks", pg_database_url, start_nginx, lease=LEASE)
    try:
        page = await new_page()
        await page.goto(cluster.address)
        await synced(page)
        await page.get_by_role("spinbutton", name="Rows").fill("150")
        await page.get_by_role("spinbutton", name="Speed").fill("50")
        await page.get_by_role("button", name="Start").click()
        await page.wait_for_url("**/runs/*")
        await synced(page)
        run_id = page.url.rsplit("/", 1)[1]

        # The process running the step holds the run's lease; kill it once the download has
        # recorded a few reads (the program is running).
        deadline = time.monotonic() + 20
        while True:
            rows = await sql(
                "SELECT r.lease_owner, count(l.seq) FROM effects_runs r JOIN effects_log l"
                f" ON l.run_id = r.id WHERE r.id = '{run_id}' GROUP BY r.lease_owner"
            )
            if rows and rows[0][0] and rows[0][1] >= 4:
                break
            assert time.monotonic() < deadline, rows
            await anyio.sleep(0.05)
        victim = cluster.servers[int(str(rows[0][0]).removeprefix("p"))]
        victim.kill()
        killed_at = time.monotonic()

        main = page.locator("#live-main")
        await expect(main).to_contain_text("contacts imported", timeout=40_000)
        took = time.monotonic() - killed_at
        assert await sql(f"SELECT status FROM effects_runs WHERE id = '{run_id}'") == [("done",)]
        print(f"finished {took:.1f} s after the kill (lease {LEASE} s)")
    finally:
        cluster.stop()

    # Each recorded effect once: the first program's spawn is replayed, not repeated; the
    # read cut off by the kill finds the program gone; a second program downloads everything.
    command = [sys.executable, "-m", "effects", "runs", "show", run_id, "--db", pg_database_url]
    with anyio.fail_after(30):
        shown = (await anyio.run_process(command)).stdout.decode()
    assert shown.count("importer.spawn") == 2, shown
    assert "importer.SourceLost" in shown
    ((saved,),) = await sql("SELECT count(*) FROM contacts")
    assert shown.count("importer.SaveContacts") == -(-saved // 25), shown


async def test_an_import_enqueued_by_a_web_process_runs_in_a_worker(
    pg_database_url: str,
    start_nginx: Callable[[Sequence[int]], Balancer],
    new_page: NewPage,
    sql: Sql,
) -> None:
    """`--queue`: the web processes enqueue imports and run none of them. The page shows the
    queued run until a worker process starts (only then), and then follows the worker's run
    to its end without a reload."""
    cluster = start_cluster("tasks", pg_database_url, start_nginx, queue="imports")
    try:
        page = await new_page()
        await page.goto(cluster.address)
        await synced(page)
        await page.get_by_role("spinbutton", name="Rows").fill("60")
        await page.get_by_role("spinbutton", name="Speed").fill("200")
        await page.get_by_role("button", name="Start").click()
        await page.wait_for_url("**/runs/*")
        await synced(page)
        status = page.get_by_role("status")
        await expect(status).to_have_text("Queued: waiting for a worker…")
        run_id = page.url.rsplit("/", 1)[1]
        assert await sql(f"SELECT status FROM effects_runs WHERE id = '{run_id}'") == [("queued",)]

        cluster.add_worker("imports")
        await expect(page.locator("#live-main")).to_contain_text(
            "contacts imported", timeout=20_000
        )
        await expect(status).to_have_text("Finished.")
        ((saved,),) = await sql("SELECT count(*) FROM contacts")
        assert saved > 0
    finally:
        cluster.stop()


async def test_the_tree_and_output_live_on_another_process_than_the_run(
    pg_database_url: str,
    start_nginx: Callable[[Sequence[int]], Balancer],
    new_page: NewPage,
    sql: Sql,
) -> None:
    """The tasks example: an import runs in the process that took its start; a tab whose page
    and stream are on another process (another session, watching) shows the task tree, the
    progress bars and the program's output as they change, to the end."""
    cluster = start_cluster("tasks", pg_database_url, start_nginx)
    runner, viewer = cluster.servers[0], cluster.servers[1]
    try:
        async with NoScript(runner.url) as owner:
            await owner.get("/")
            # As the page's script posts it: the reply comes at once, with the run's URL.
            started = await owner.post(
                "/", "start", {"rows": "150", "speed": "30"}, headers={"X-Live": "1"}
            )
            assert started.status_code == 200, started.text[:300]
            path = started.json()["redirect"]
        run_id = path.rsplit("/", 1)[1]
        assert await sql(f"SELECT lease_owner FROM effects_runs WHERE id = '{run_id}'") == [("p0",)]

        page = await new_page()
        await page.goto(viewer.url + path)
        await synced(page)
        await expect(page.get_by_text("Started by someone else; you are watching.")).to_be_visible()
        # Streamed from process two while process one runs the program.
        await expect(page.locator("#live-output")).to_contain_text("5,User 5,")
        await expect(page.get_by_role("status")).to_have_text("Working…")
        assert await sql(f"SELECT status, lease_owner FROM effects_runs WHERE id = '{run_id}'") == [
            ("running", "p0")
        ]
        await expect(page.locator("#live-tasks")).to_contain_text("Download contacts.csv")
        await expect(page.locator("#live-main")).to_contain_text(
            "139 contacts imported, 11 rejected", timeout=15_000
        )
        await page.wait_for_function(ALL_FULL)
        output = page.locator("#live-output")
        await expect(output).to_contain_text("150,User 150,user150@example.com")
        await expect(output).to_contain_text("rejected row 13: 'user13-at-example.com'")
    finally:
        cluster.stop()


async def test_the_wizard_over_the_websocket_through_nginx(
    cluster: Cluster, new_page: NewPage, sql: Sql
) -> None:
    """The WebSocket transport through nginx: the upgrade is passed on, the page's GET and its
    socket land on different processes, the answers go over the socket to a process that does
    not hold the run, and after a reload (a new GET, a new socket elsewhere) the wizard still
    goes to its end."""
    page = await new_page()
    await page.add_init_script("window.LIVE_TRANSPORT = 'ws'")
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    await page.goto(cluster.address)
    await synced(page)
    await page.get_by_role("button", name="Start").click()
    await heading(page, NAME_STEP)
    await synced(page)
    path = "/" + page.url.split("/", 3)[3]
    run_id = path.rsplit("/", 1)[1]
    await answer(page, "Name", "Wes", email_step("Wes"))
    await page.reload()  # a new GET and a new socket: round robin sends them elsewhere
    await heading(page, email_step("Wes"))
    await synced(page)
    await answer(page, "Email", "wes@example.com", PLAN_STEP)
    await page.get_by_role("radio", name="Free One project").check()
    await page.get_by_role("button", name="Create my account").click()
    await heading(page, "Welcome aboard, Wes!")
    await expect(page.get_by_role("status")).to_have_text("Finished.")
    assert await sql("SELECT name, email, plan FROM users") == [("Wes", "wes@example.com", "free")]
    assert await sql(f"SELECT status FROM effects_runs WHERE id = '{run_id}'") == [("done",)]
    await page.context.close()  # ends the sockets: nginx logs them

    assert sockets
    assert all("/_live/ws?last_event_id=" in url for url in sockets), sockets
    assert posts == [], posts  # every command, the start included, went over a socket
    ws_path = path + "/_live/ws"
    lines = await logged(cluster, lambda ls: sum(line.path == ws_path for line in ls) >= 2)
    gets = [line for line in lines if line.method == "GET" and line.path == path]
    run_sockets = [line for line in lines if line.path == ws_path]
    assert all(line.status == 101 for line in run_sockets), run_sockets  # upgraded
    assert len(gets) == 2, gets
    # Each page's socket on another process than its GET...
    for get in gets:
        after = [s for s in run_sockets if s.start >= get.start]
        assert after, (get, run_sockets)
        assert min(after, key=lambda s: s.start).upstream != get.upstream, (get, run_sockets)
    # ...and the answers, sent over sockets held by two different processes, both taken,
    # at least one of them by a process other than the one that took the start (and so
    # runs the run).
    assert len({s.upstream for s in run_sockets}) >= 2, run_sockets
    starts = [line for line in lines if line.path == "/_live/ws"]
    assert len(starts) == 1, starts
    assert {s.upstream for s in run_sockets} - {starts[0].upstream}, (starts, run_sockets)
    assert {line.upstream for line in lines} == {f"127.0.0.1:{s.port}" for s in cluster.servers}
