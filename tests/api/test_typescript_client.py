"""The TypeScript client (clients/typescript) against a real server: its generated types are
those of the server's models, node's test runner drives the client against tests/api/
wizard_api.py, and a React page built with esbuild goes through the whole wizard in Chromium.

Needs node and the package's dependencies (`npm ci` in clients/typescript, which .ci/run
does): without them these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from servers import WizardApiServer

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
TIMEOUT_MS = 10_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run must install node and run npm ci)", pytrace=False)
    pytest.skip(reason)


def _run(*command: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=PACKAGE,
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def package() -> Path:
    """clients/typescript with its dependencies installed, built (dist/) and its test page
    bundled (test-dist/page), once per session."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed")
    if not (PACKAGE / "node_modules" / ".bin" / "tsc").exists():
        _unavailable("clients/typescript has no node_modules: run `npm ci` there")
    for script in ("build", "build:test"):
        done = _run("npm", "run", "--silent", script)
        assert done.returncode == 0, f"npm run {script}:\n{done.stdout}\n{done.stderr}"
    return PACKAGE


@pytest.fixture
def server(tmp_path: Path, package: Path) -> Iterator[WizardApiServer]:
    """The wizard with its JSON API (and the React page at /page/) on a fresh SQLite file."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    started = WizardApiServer("--url", url, "--page", str(package / "test-dist" / "page"))
    started.start()
    yield started
    started.stop()


def test_generated_types_are_up_to_date(package: Path) -> None:
    """src/types.gen.ts and test/wizard.gen.ts are what `npm run gen` makes from the models
    now (a changed pydantic model without `npm run gen` fails here)."""
    done = _run("node", "scripts/gen.mjs", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_node_client_against_the_server(server: WizardApiServer) -> None:
    """node --test test/client.test.mjs: the wizard, 404s, cancel, reconnects, the parser."""
    done = _run("node", "--test", "test/client.test.mjs", API_URL=server.url + "/api")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "# fail 0" in done.stdout
    assert "# pass 5" in done.stdout


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_react_page_through_the_wizard(server: WizardApiServer, browser: Browser) -> None:
    """The React page (useRun, useTaskTree; session cookie + CSRF) in Chromium: start, a
    refused email shown from the 422, the three steps, the welcome; the run is the browser
    session's run on the HTML pages too."""
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        await page.goto(server.url + "/page/")
        await page.get_by_role("button", name="Start").click()
        heading = page.get_by_role("heading", level=1)
        await expect(heading).to_have_text("Welcome! What is your name?")
        await page.get_by_role("textbox", name="name").fill("Ada")
        await page.get_by_role("button", name="Continue").click()

        await expect(heading).to_have_text("Hello Ada! What is your email address?")
        await page.get_by_role("textbox", name="email").fill("nope")
        await page.get_by_role("button", name="Continue").click()
        await expect(page.get_by_role("alert")).to_contain_text("email: enter an email address")
        await page.get_by_role("textbox", name="email").fill("ada@example.com")
        await page.get_by_role("button", name="Continue").click()

        await expect(heading).to_have_text("Choose a plan")
        await page.get_by_role("radio", name="pro").check()
        await page.get_by_role("button", name="Create my account").click()
        await expect(heading).to_have_text("Welcome Ada (pro)")

        run_id = await page.locator("main").get_attribute("data-run-id")
        assert run_id
        html = await page.goto(f"{server.url}/runs/{run_id}")
        assert html is not None
        assert html.status == 200
        assert errors == []
    finally:
        await context.close()
