"""scripts/check_docs_types.py writes the docs' blocks as the runner joins them and reports the
checkers' errors at the page's lines. The checkers themselves run in CI (`.ci/run`, "types as
users see them"): mypy and pyright are in the lint group, not in the test group."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import test_docs_blocks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_docs_types", ROOT / "scripts" / "check_docs_types.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


PAGE = """# A page

```python
# helper.py
VALUE = 1
```

<!-- docs: continue -->
```python
EXTRA: int = "not an int"
```

```python
from helper import VALUE
x = VALUE
```

<!-- docs: continue -->
```python
y: str = x
```

<!-- docs: skip needs a server -->
```python
z: int = "skipped blocks are not checked"
```

```python
# helper.py
VALUE = "two"
```

```python
from helper import VALUE
w: str = VALUE
```
"""


def test_page_folders_join_and_locate(
    script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Continuations join their program, a rewritten file starts a second folder, skipped
    blocks are left out, and each generated line maps back to its page line."""
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text(PAGE)
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr(test_docs_blocks, "ROOT", tmp_path)
    first, second = script.page_folders(page)
    assert sorted(first.files) == ["docs_page_block1.py", "helper.py"]
    assert sorted(second.files) == ["docs_page_block3.py", "helper.py"]  # scripts not copied
    helper, origins = first.files["helper.py"]
    assert helper == '# helper.py\nVALUE = 1\nEXTRA: int = "not an int"\n'
    lines = PAGE.splitlines()
    for n, (where, line) in enumerate(origins):
        assert where == "docs/page.md"
        assert lines[line - 1] == helper.splitlines()[n]
    joined, _ = first.files["docs_page_block1.py"]
    assert joined == "from helper import VALUE\nx = VALUE\ny: str = x\n"
    assert "skipped" not in "".join(text for text, _ in second.files.values())
    assert second.files["helper.py"][0] == '# helper.py\nVALUE = "two"\n'
    # The two helpers are the same module: they are checked by separate mypy runs.
    assert [[f.name for f in g] for g in script.groups([first, second])] == [
        ["docs_page_0"],
        ["docs_page_1"],
    ]

    where = script.write([first, second], tmp_path / "docs-types-now")
    # mypy replays a cached module's errors with the path of an earlier run's directory.
    output = (
        "/tmp/docs-types-earlier/docs_page_0/helper.py:3: error: Incompatible types in "
        'assignment (expression has type "str", variable has type "int")  [assignment]\n'
        "/tmp/docs-types-earlier/docs_page_0/helper.py:3: note: a note\n"
        "Found 1 error in 1 file\n"
    )
    assert script.mypy_errors(output, where) == [
        "docs/page.md:10: mypy error: Incompatible types in assignment (expression has type "
        '"str", variable has type "int")  [assignment]',
        "    docs/page.md:10: mypy note: a note",
    ]
    report = {
        "generalDiagnostics": [
            {
                "file": str(tmp_path / "docs-types-now" / "docs_page_0" / "docs_page_block1.py"),
                "severity": "error",
                "message": 'Type "int" is not assignable\n  to "str"',
                "range": {"start": {"line": 2, "character": 0}},
                "rule": "reportAssignmentType",
            },
            {"file": "x.py", "severity": "warning", "message": "w", "range": {}},
        ]
    }
    assert script.pyright_errors(report, where) == [
        'docs/page.md:20: pyright error: Type "int" is not assignable to "str" '
        "[reportAssignmentType]"
    ]
