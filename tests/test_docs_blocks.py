"""Every code block of README.md and docs/**/*.md runs as written (docs/writing-docs.md).

Pages are found when the tests are collected, so a new page is checked without being listed
here. A page's Python blocks run in order, in a temporary directory that is also the working
directory and on `sys.path`:

- a block runs alone, in a fresh namespace, as a script (`__name__` is `"__main__"`), unless
  it is preceded by `<!-- docs: continue -->`: then it runs in the namespace of the page's
  previous Python block;
- a block whose first line is a comment naming a file (`# signup.py`) is written to that file
  too, so that later blocks can import it; it runs as that module (`__name__` is `signup`);
- `<!-- docs: skip REASON -->` before a block does not run it; the reason is required;
- a block of another language (bash, text, json, ...) is not run: its language says what it is;
  a block without a language is refused, except on a page that declares
  `<!-- docs: untagged blocks are API signatures -->` (the API reference's pseudo-signatures).
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from effects import _computation

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*docs:\s*(.*?)\s*-->")
SIGNATURES = "untagged blocks are API signatures"
NOT_RUN = frozenset(
    {"bash", "console", "text", "json", "sql", "nginx", "html", "html+jinja", "jinja", "toml",
     "ini", "yaml", "pycon", "diff", "http", "ts", "tsx"}
)  # fmt: skip
FILE_LINE = re.compile(r"^#\s*([A-Za-z_][\w/]*\.py)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text and its marker."""

    page: str
    line: int
    language: str
    source: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every page under docs/, new ones included."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> Iterator[Block]:
    """The fenced blocks of a page, each with the `<!-- docs: ... -->` marker right above it
    (only blank lines between)."""
    text = path.read_text()
    page = str(path.relative_to(ROOT))
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        marker = None
        last = before.rsplit("\n", 1)[-1]
        found = MARKER.fullmatch(last.strip())
        if found is not None:
            marker = found.group(1)
        line = text.count("\n", 0, match.start()) + 1
        yield Block(page, line, match.group(1).strip(), match.group(2), marker)


def declares_signatures(path: Path) -> bool:
    return any(m.group(1) == SIGNATURES for m in MARKER.finditer(path.read_text()))


def check_marked(path: Path) -> list[Block]:
    """The page's blocks that run; fails for a block whose nature is not said explicitly."""
    runnable: list[Block] = []
    signatures = declares_signatures(path)
    for block in blocks(path):
        if block.marker is not None and block.marker.startswith("skip"):
            reason = block.marker[len("skip") :].strip()
            assert reason, f"{block.where}: `<!-- docs: skip -->` needs a reason"
            continue
        if block.marker not in (None, "continue"):
            pytest.fail(f"{block.where}: unknown marker <!-- docs: {block.marker} -->")
        if block.language == "python":
            runnable.append(block)
        elif block.language == "":
            assert signatures, (
                f"{block.where}: a code block without a language; say what it is "
                "(```python runs, ```bash / ```text do not; see docs/writing-docs.md)"
            )
            assert block.marker is None, f"{block.where}: a signature block does not run"
        else:
            assert block.language in NOT_RUN, (
                f"{block.where}: unknown language {block.language!r} (add it to NOT_RUN in "
                "tests/test_docs_blocks.py if it is not Python)"
            )
            assert block.marker is None, f"{block.where}: only Python blocks continue"
    return runnable


@dataclass(frozen=True)
class Program:
    """The blocks that run in one namespace: a first block, then the blocks that continue it.

    `file` is the name the first block's first line gives it (`signup.py`), or None for a
    script. scripts/check_docs_types.py type-checks these, joined as they run here.
    """

    blocks: tuple[Block, ...]
    file: str | None

    @property
    def module(self) -> str | None:
        """The module name of a file program (`pkg/mod.py` is `pkg.mod`)."""
        return None if self.file is None else self.file[: -len(".py")].replace("/", ".")


def programs(path: Path) -> list[Program]:
    """The page's runnable blocks, each continuation joined to the program it continues."""
    result: list[Program] = []
    for block in check_marked(path):
        named = FILE_LINE.match(block.source.split("\n", 1)[0])
        if block.marker == "continue":
            assert result, f"{block.where}: nothing to continue"
            assert named is None, f"{block.where}: a file block does not continue"
            last = result[-1]
            result[-1] = Program((*last.blocks, block), last.file)
        else:
            result.append(Program((block,), None if named is None else named.group(1)))
    return result


def run_page(path: Path, workdir: Path) -> int:
    """Run the page's Python blocks in `workdir`; returns how many ran."""
    ran = 0
    files: list[str] = []
    for program in programs(path):
        first, *rest = program.blocks
        namespace: dict[str, Any]
        if program.file is not None and program.module is not None:
            target = workdir / program.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(first.source)
            files.append(program.module)
            sys.modules.pop(program.module, None)
            importlib.invalidate_caches()
            try:
                namespace = vars(importlib.import_module(program.module))
            except BaseException as err:
                raise AssertionError(f"{first.where} ({program.file}) failed: {err!r}") from err
        else:
            namespace = {"__name__": "__main__"}
            rest = list(program.blocks)
        for block in rest:
            code = compile(block.source, block.where, "exec")
            try:
                exec(code, namespace)
            except BaseException as err:
                raise AssertionError(f"{block.where} failed: {err!r}") from err
        ran += len(program.blocks)
    for module in files:
        sys.modules.pop(module, None)
    return ran


@pytest.fixture
def page_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The page's working directory, on sys.path; computations it registers are forgotten."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = dict(_computation._registry)
    # Pages that show how to configure logging must not leave their handlers behind.
    loggers = [
        logging.getLogger(),
        logging.getLogger("effects"),
        logging.getLogger("effects.durable"),
    ]
    saved = [(lg, lg.level, list(lg.handlers)) for lg in loggers]
    try:
        yield tmp_path
    finally:
        _computation._registry.clear()
        _computation._registry.update(registry)
        for logger, level, handlers in saved:
            logger.setLevel(level)
            logger.handlers[:] = handlers


@pytest.mark.parametrize("path", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_blocks_run(path: Path, page_dir: Path) -> None:
    """Every Python block of the page runs; every other block says what it is."""
    run_page(path, page_dir)


def test_every_page_is_checked() -> None:
    """New pages are found without being listed, and the Python blocks are many."""
    found = {str(p.relative_to(ROOT)) for p in pages()}
    assert "README.md" in found
    assert "docs/live/guide-wizard.md" in found
    assert len(found) >= 30


def test_markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The markers do what docs/writing-docs.md says, and unmarked blocks are refused."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    page = tmp_path / "page.md"
    page.write_text(
        "```python\n# helper_mod.py\nVALUE = 41\n```\n\n"
        "```python\nfrom helper_mod import VALUE\nx = VALUE + 1\n```\n\n"
        "<!-- docs: continue -->\n```python\nassert x == 42\n```\n\n"
        "<!-- docs: skip needs a server -->\n```python\nraise SystemExit\n```\n\n"
        "```bash\nexit 1\n```\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert run_page(page, tmp_path) == 3
    page.write_text("```python\nx = 1\n```\n\n```python\nassert x == 1\n```\n")
    with pytest.raises(AssertionError, match="NameError"):
        run_page(page, tmp_path)
    page.write_text("```\nuntagged\n```\n")
    with pytest.raises(AssertionError, match="without a language"):
        run_page(page, tmp_path)
    page.write_text("<!-- docs: skip -->\n```python\nx\n```\n")
    with pytest.raises(AssertionError, match="needs a reason"):
        run_page(page, tmp_path)
