"""Rich output blocks on the page: Markdown, HTML marked safe, tables — and nothing else
becomes markup."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from live_client import SECRET, LiveServer, Visitor, region
from pydantic import BaseModel

from bridges.live import progress_app
from bridges.live._blocks import render_block
from effects import Output, Print, computation, task
from effects.tasks import OutputLine

Serve = Callable[[Any], LiveServer]


def block(kind: str, text: str) -> str:
    return str(render_block(OutputLine(1, text, kind)))  # type: ignore[arg-type]


def test_markdown_is_rendered_without_raw_html_or_script_links() -> None:
    html = block("markdown", "# Title\n\n*x* <script>alert(1)</script> [a](javascript:alert(1))")
    assert "<h1>Title</h1>" in html
    assert "<em>x</em>" in html
    assert "<script" not in html
    assert "&lt;script&gt;" in html
    assert 'href="javascript' not in html


def test_tables_escape_their_cells_and_bad_data_stays_text() -> None:
    html = block("table", json.dumps({"columns": ["<b>"], "rows": [["<i>x</i>"]]}))
    assert "<th scope=col>&lt;b&gt;</th>" in html
    assert "<td>&lt;i&gt;x&lt;/i&gt;</td>" in html
    broken = block("table", '{"columns": <script>')
    assert "<script" not in broken
    assert "&lt;script&gt;" in broken


def test_only_safe_html_is_inserted_and_unknown_kinds_are_text() -> None:
    assert "<b>ok</b>" in block("html", "<b>ok</b>")
    assert block("pdf", "<b>no</b>") == "&lt;b&gt;no&lt;/b&gt;"


@settings(max_examples=200, deadline=None)
@given(st.text(), st.sampled_from(["markdown", "table", "text", "other"]))
def test_no_text_becomes_a_script_or_an_event_handler(text: str, kind: str) -> None:
    html = block(kind, text).lower()
    assert "<script" not in html
    assert not re.search(r"<[^>]*\son\w+\s*=", html)
    assert not any("javascript:" in tag for tag in re.findall(r"<[^>]*>", html))


class Go(BaseModel):
    """The start form."""

    n: int = 2


@computation(name="live_tests.report", version=1)
def report(n: int = 2) -> Generator[Any, Any, str]:
    yield from task("Report", _report(n))
    return "ok"


def _report(n: int) -> Generator[Any, Any, None]:
    yield Print("plain <b>text</b>")
    yield Output.markdown(f"## {n} rows\n\n**bold**")
    yield Output.html("<em>trusted</em>", safe=True)
    yield Output.html("<em>untrusted</em>")
    yield Output.table([{"name": "<Ann>", "n": 1}])


@pytest.mark.anyio
async def test_a_run_page_renders_its_blocks(serve: Serve, db_url: str) -> None:
    server = serve(
        progress_app(report, secret=SECRET, url=db_url, title="Reports", start_input=Go, settle=0)
    )
    async with Visitor(server.url) as ada:
        path = await ada.start({"n": "3"})
        async with ada.stream(path) as events:
            await events.until("status", "Finished.")
        page = await ada.get(path)
    output = region(page, "output")
    assert "plain &lt;b&gt;text&lt;/b&gt;" in output
    assert '<div class="live-block live-block-markdown"><h2>3 rows</h2>' in output
    assert "<strong>bold</strong>" in output
    assert '<div class="live-block live-block-html"><em>trusted</em></div>' in output
    assert "&lt;em&gt;untrusted&lt;/em&gt;" in output
    assert "<td>&lt;Ann&gt;</td><td>1</td>" in output
