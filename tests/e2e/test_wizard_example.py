"""examples/wizard: the durable onboarding wizard, in Chromium and over plain HTTP."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Page, expect

from e2e import ExampleServer, NewPage, NoScript, StartServer, free_port

pytestmark = pytest.mark.anyio

NAME_STEP = "Welcome! What is your name?"
PLAN_STEP = "Choose a plan"


def email_step(name: str) -> str:
    return f"Hello {name}! What is your email address?"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wizard's SQLite file (runs and users), shared by the module's server."""
    return tmp_path_factory.mktemp("wizard") / "runs.db"


@pytest.fixture(scope="module")
def wizard(db: Path) -> Iterator[ExampleServer]:
    """`python examples/wizard/app.py --port P --db DB`, for the whole module."""
    server = ExampleServer("wizard", "--db", str(db)).start()
    yield server
    server.stop()


def users(db: Path, email: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT name, email, plan FROM users WHERE email = ?", (email,)
        ).fetchall()
    return [tuple(row) for row in rows]


async def heading(page: Page, text: str) -> None:
    await expect(page.get_by_role("heading", name=text, exact=True)).to_be_visible()


async def synced(page: Page) -> None:
    """Wait until the page's script has applied its first snapshot (it marks `<body>` with
    `aria-busy`). Typing before that may be lost: the snapshot replaces a form that changed
    since the document was rendered, as a real user typing in the first milliseconds would see."""
    await page.wait_for_selector("body[aria-busy]", state="attached")


async def start(page: Page, url: str) -> None:
    await page.goto(url)
    await synced(page)
    await page.get_by_role("button", name="Start").click()
    await heading(page, NAME_STEP)
    await synced(page)


async def answer(page: Page, label: str, value: str, then: str) -> None:
    await page.get_by_role("textbox", name=label).fill(value)
    await page.get_by_role("button", name="Continue").click()
    await heading(page, then)


async def cancel(page: Page) -> None:
    """Cancel the run the way its page asks: open the question, then confirm."""
    confirm = page.get_by_role("button", name="Yes, cancel my sign-up")
    await expect(confirm).to_be_hidden()
    await page.get_by_text("Cancel sign-up", exact=True).click()
    await confirm.click()


async def test_complete_the_wizard(wizard: ExampleServer, db: Path, new_page: NewPage) -> None:
    """Name, email, plan: the user is created once, the event emitted, the welcome shown."""
    page = await new_page()
    await start(page, wizard.url)
    await answer(page, "Name", "Ada", email_step("Ada"))
    await answer(page, "Email", "Ada@Example.com", PLAN_STEP)
    await expect(page.get_by_text("Signing up Ada <ada@example.com>.")).to_be_visible()
    await page.get_by_role("radio", name="Pro Unlimited projects").check()
    await page.get_by_role("button", name="Create my account").click()
    await heading(page, "Welcome aboard, Ada!")
    await expect(page.get_by_role("status")).to_have_text("Finished.")
    await expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    assert users(db, "ada@example.com") == [("Ada", "ada@example.com", "pro")]
    event = wizard.wait_for("email='ada@example.com'", timeout=5)
    assert event.startswith("event: UserOnboarded(user_id=")


async def test_invalid_email_shows_the_error(wizard: ExampleServer, new_page: NewPage) -> None:
    """An email the browser accepts but the model refuses: the step stays, with the error
    next to the field; the corrected answer goes through."""
    page = await new_page()
    await start(page, wizard.url)
    await answer(page, "Name", "Bob", email_step("Bob"))
    await answer(page, "Email", "bob@example", email_step("Bob"))
    field = page.get_by_role("textbox", name="Email")
    await expect(page.get_by_role("alert")).to_have_text(
        "enter an email address such as ada@example.com"
    )
    await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(field).to_have_value("bob@example")
    await answer(page, "Email", "bob@example.com", PLAN_STEP)


async def test_reload_mid_wizard_keeps_the_step(wizard: ExampleServer, new_page: NewPage) -> None:
    """A reload shows the step the run waits at, with the answers given so far."""
    page = await new_page()
    await start(page, wizard.url)
    await answer(page, "Name", "Carol", email_step("Carol"))
    await answer(page, "Email", "carol@example.com", PLAN_STEP)
    await page.reload()
    await heading(page, PLAN_STEP)
    await synced(page)
    await expect(page.get_by_text("Signing up Carol <carol@example.com>.")).to_be_visible()


async def test_cancel_at_a_step(wizard: ExampleServer, db: Path, new_page: NewPage) -> None:
    """Cancel in the middle: the run ends cancelled and no user is created."""
    page = await new_page()
    await start(page, wizard.url)
    await answer(page, "Name", "Dora", email_step("Dora"))
    await cancel(page)
    await heading(page, "Cancelled")
    await expect(page.get_by_role("status")).to_have_text("Cancelled.")
    await expect(page.get_by_role("button")).to_have_count(0)
    await page.reload()
    await heading(page, "Cancelled")
    assert users(db, "dora@example.com") == []


async def test_an_answer_is_shown_as_text(wizard: ExampleServer, new_page: NewPage) -> None:
    """Markup in an answer is text, live and server-rendered; no script of it runs."""
    payload = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"
    page = await new_page()
    await start(page, wizard.url)
    await answer(page, "Name", payload, email_step(payload))
    for _ in range(2):  # as patched in by the client, then as rendered by the server
        assert await page.locator("#live-main script, #live-main img").count() == 0
        assert await page.evaluate("window.pwned") is None
        await page.reload()
        await heading(page, email_step(payload))
        await synced(page)


async def test_kill_and_restart_mid_wizard(
    start_server: StartServer, tmp_path: Path, new_page: NewPage
) -> None:
    """SIGKILL the server at step 2 and start it again on the same port: the open page
    reconnects by itself, gets the new process's snapshot and goes on to the end."""
    port, db = free_port(), str(tmp_path / "runs.db")
    server = start_server("wizard", "--db", db, port=port)
    page = await new_page()
    await start(page, server.url)
    await answer(page, "Name", "Grace", email_step("Grace"))
    before = await page.locator("body").get_attribute("data-live-epoch")

    server.kill()
    start_server("wizard", "--db", db, port=port)
    # The client reconnects with backoff; the new process's page is a new epoch, whose
    # snapshot the client takes whole.
    await expect(page.locator("body")).not_to_have_attribute(
        "data-live-epoch", before or "", timeout=15_000
    )
    await heading(page, email_step("Grace"))
    await answer(page, "Email", "grace@example.com", PLAN_STEP)
    await page.get_by_role("radio", name="enterprise").check()
    await page.get_by_role("button", name="Create my account").click()
    await heading(page, "Welcome aboard, Grace!")
    assert users(Path(db), "grace@example.com") == [("Grace", "grace@example.com", "enterprise")]


async def test_a_hostile_link_does_not_freeze_the_page(
    wizard: ExampleServer, new_page: NewPage
) -> None:
    """Issue #8: a link to the stream with a huge `last_event_id` (a top-level GET, so the
    SameSite=Lax cookie goes with it) once pushed the page's revisions past 2^53, where the
    client saw no later revision as newer: the page froze. The id is ignored now, and the page
    opened afterwards still follows the run."""
    page = await new_page()
    await start(page, wizard.url)
    run_url = page.url
    hostile = run_url.rstrip("/") + "/_live/sse?last_event_id=1" + "0" * 30
    response = await page.goto(hostile, wait_until="commit")
    assert response is not None
    assert response.status == 200
    await page.goto(run_url)
    await heading(page, NAME_STEP)
    await synced(page)
    revision = await page.locator("body").get_attribute("data-live-revision")
    assert revision is not None
    assert int(revision) < 2**53
    await answer(page, "Name", "Mallory", email_step("Mallory"))
    await answer(page, "Email", "mallory@example.com", PLAN_STEP)


async def test_the_wizard_over_the_websocket(wizard: ExampleServer, new_page: NewPage) -> None:
    """With the WebSocket transport the client sends its commands as frames, takes the
    replies and patches, and the run goes to its end."""
    page = await new_page()
    await page.add_init_script("window.LIVE_TRANSPORT = 'ws'")
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await start(page, wizard.url)
    await answer(page, "Name", "Wes", email_step("Wes"))
    await answer(page, "Email", "wes@example.com", PLAN_STEP)
    assert sockets
    assert all("/_live/ws?last_event_id=" in url for url in sockets)
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    await page.get_by_role("radio", name="free").check()
    await page.get_by_role("button", name="Create my account").click()
    await heading(page, "Welcome aboard, Wes!")
    assert posts == []  # the command went over the socket


# -- without JavaScript: plain HTTP ---------------------------------------------------------


async def start_run(client: NoScript) -> str:
    await client.get("/")
    response = await client.post("/", "start")
    assert response.status_code == 303
    path: str = response.headers["location"]
    assert path.startswith("/runs/")
    return path


async def test_the_wizard_without_javascript(wizard: ExampleServer, db: Path) -> None:
    """GET the page, POST its form with the CSRF token, follow the 303: to the welcome."""
    async with NoScript(wizard.url) as client:
        path = await start_run(client)
        page = await client.get(path)
        assert NAME_STEP in page
        page = await client.submit(path, "answer", {"name": "Hedy"})
        assert email_step("Hedy") in page
        assert client.path == path
        page = await client.submit(path, "answer", {"email": "not an email"})
        assert 'role="alert">enter an email address such as ada@example.com<' in page
        page = await client.submit(path, "answer", {"email": "hedy@example.com"})
        assert PLAN_STEP in page
        page = await client.submit(path, "answer", {"plan": "free"})
        assert "Welcome aboard, Hedy!" in page
        forbidden = await client.http.post(path, data={"_event": "cancel", "_key": "x"})
        assert forbidden.status_code == 403  # no CSRF token
    assert users(db, "hedy@example.com") == [("Hedy", "hedy@example.com", "free")]


async def test_a_duplicate_post_is_a_no_op(wizard: ExampleServer) -> None:
    """The same answer posted twice (a double click, a retry) advances the run once."""
    async with NoScript(wizard.url) as client:
        path = await start_run(client)
        await client.get(path)
        key = client.key("answer")
        first = await client.post(path, "answer", {"name": "Ida"}, key=key)
        assert first.status_code == 303
        again = await client.post(path, "answer", {"name": "Ida"}, key=key)
        assert again.status_code == 303
        replay = await client.post(
            path, "answer", {"name": "Ida"}, key=key, headers={"X-Live": "1"}
        )
        assert replay.json()["duplicate"] is True
        page = await client.get(path)
        assert email_step("Ida") in page
        assert 'role="alert"' not in page
        step = client.key("answer")
        page = await client.submit(path, "answer", {"email": "ida@example.com"})
        assert PLAN_STEP in page
        assert client.key("answer") != step


async def test_another_session_cannot_see_or_resume_a_run(wizard: ExampleServer) -> None:
    """A run belongs to the session that started it: any other one gets 404 for its page, its
    stream and its commands, and the owner still sees it unchanged."""
    async with NoScript(wizard.url) as owner, NoScript(wizard.url) as other:
        path = await start_run(owner)
        await owner.get(path)
        key = owner.key("answer")
        await other.get("/")
        await other.get(path, expect=404)
        response = await other.post(path, "answer", {"name": "Mallory"}, key=key)
        assert response.status_code == 404
        with anyio.fail_after(5):
            stream = await other.http.get(path + "/_live/sse")
        assert stream.status_code == 404
        page = await owner.get(path)
        assert NAME_STEP in page
        assert owner.key("answer") == key


async def test_the_wizard_as_its_users_see_it(wizard: ExampleServer, new_page: NewPage) -> None:
    """Where am I (Step n of 3, also in the tab's title, which follows the live page), what do
    the plans mean, Cancel secondary and asked twice, "Your sign-ups" in words, and no
    promise the demo does not keep."""
    page = await new_page()
    await start(page, wizard.url)
    await expect(page.get_by_text("Step 1 of 3", exact=True)).to_be_visible()
    await expect(page).to_have_title(f"Step 1 of 3: {NAME_STEP} — Onboarding")
    await answer(page, "Name", "Erin", email_step("Erin"))
    await expect(page.get_by_text("Step 2 of 3", exact=True)).to_be_visible()
    # Answered through the script and patched in over the stream: the title follows.
    await expect(page).to_have_title(f"Step 2 of 3: {email_step('Erin')} — Onboarding")
    await expect(page.get_by_text("Your account is registered with this address.")).to_be_visible()
    await answer(page, "Email", "erin@example.com", PLAN_STEP)
    await expect(page).to_have_title(f"Step 3 of 3: {PLAN_STEP} — Onboarding")
    for label, description in [
        ("Free", "One project, community support."),
        ("Pro", "Unlimited projects and email support; 12 € a month."),
        ("Enterprise", "Single sign-on, an audit log and a contract; priced per seat."),
    ]:
        await expect(page.get_by_role("radio", name=f"{label} {description}")).to_be_visible()

    # Cancel: below the step, not a button until asked, and not styled as the main action.
    summary = page.get_by_text("Cancel sign-up", exact=True)
    await expect(summary).to_be_visible()
    primary = page.get_by_role("button", name="Create my account")
    styles = await page.evaluate(
        """([a, b]) => [a, b].map((el) => getComputedStyle(el).backgroundColor)""",
        [await summary.element_handle(), await primary.element_handle()],
    )
    assert styles[0] != styles[1]
    assert styles[0] in ("rgba(0, 0, 0, 0)", "transparent")
    assert (await summary.bounding_box() or {})["y"] > (await primary.bounding_box() or {})["y"]
    await expect(page.get_by_role("button", name="Yes, cancel my sign-up")).to_be_hidden()
    await summary.click()
    await expect(page.get_by_text("Stop here? Your answers so far are discarded")).to_be_visible()

    # The start page lists the sign-up in words: no status codes, no ids.
    run_path = page.url.split("://", 1)[1].split("/", 1)[1]
    await page.goto(wizard.url)
    runs = page.get_by_role("region", name="Your sign-ups")
    item = runs.locator(f'li:has(a[href="/{run_path}"])')
    await expect(item).to_contain_text("Onboarding, started today at ")
    await expect(item).to_contain_text("UTC")
    await expect(item).to_contain_text("Step 3 of 3: waiting for your answer")
    text = await runs.inner_text()
    assert "suspended" not in text
    assert run_path.rsplit("/", 1)[-1][-8:] not in text

    # Finishing makes no promise the demo does not keep.
    await item.get_by_role("link").click()
    await heading(page, PLAN_STEP)
    await synced(page)
    await page.get_by_role("radio", name="Free One project").check()
    await page.get_by_role("button", name="Create my account").click()
    await heading(page, "Welcome aboard, Erin!")
    await expect(page).to_have_title("Onboarding")
    main = await page.locator("#live-main").inner_text()
    assert "sent a confirmation" not in main
    assert "no email is sent" in main
    await page.goto(wizard.url)
    await expect(page.get_by_role("region", name="Your sign-ups")).to_contain_text("Finished")
