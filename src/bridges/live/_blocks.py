"""Rich output blocks on the page: Markdown, HTML marked safe, tables (`Output.markdown`,
`Output.html(..., safe=True)`, `Output.table`).

Markdown is rendered as CommonMark with raw HTML disabled (HTML in it is shown as text) and
markdown-it's link validation (no `javascript:` links). HTML is inserted as it is only because
the computation marked it safe; `Output.html` without `safe=True` is a plain text line. Table
cells are text, escaped. A block whose data is not what its kind needs (a stored tree from a
foreign writer) is shown as escaped text, never as markup.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from markupsafe import Markup, escape

from effects.tasks import OutputLine


@lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def render_block(line: OutputLine) -> Markup:
    """The HTML of one output line of a non-text kind (text lines are escaped by Jinja)."""
    kind = line.kind
    if kind == "markdown":
        body = Markup(_markdown().render(line.text))
    elif kind == "html":
        body = Markup(line.text)
    elif kind == "table":
        body = _table(line.text)
    else:
        return escape(line.text)
    return Markup('<div class="live-block live-block-{}">{}</div>').format(kind, body)


def _table(text: str) -> Markup:
    try:
        data = json.loads(text)
        columns = [str(c) for c in data["columns"]]
        rows = [[str(cell) for cell in row] for row in data["rows"]]
    except (ValueError, KeyError, TypeError):
        return Markup("<pre>{}</pre>").format(text)
    head = Markup("").join(Markup("<th scope=col>{}</th>").format(c) for c in columns)
    body = Markup("").join(
        Markup("<tr>{}</tr>").format(Markup("").join(Markup("<td>{}</td>").format(c) for c in row))
        for row in rows
    )
    return Markup("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>").format(head, body)
