"""Public API: explicit __all__ per public module, each name documented on its API page."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs" / "api"
PAGES = {
    "effects": "core.md",
    "effects.tasks": "tasks.md",
    "effects.testing": "testing.md",
    "effects.durable": "durable.md",
    "bridges.live": "live.md",
    "bridges.terminal": "terminal.md",
    "bridges.api": "json-api.md",
}
# A module re-exporting another public module's names: those are documented on that module's
# page (once), not on the re-exporting module's.
REEXPORTS = {"effects": ("effects.tasks",)}


def _documented(page: str) -> set[str]:
    text = (DOCS / page).read_text()
    return set(re.findall(r"^### `([A-Za-z_][A-Za-z0-9_]*)`", text, re.M))


@pytest.mark.parametrize("module_name", sorted(PAGES))
def test_all_matches_api_page(module_name: str) -> None:
    """The names in a module's __all__ are exactly the names its API page documents."""
    module = importlib.import_module(module_name)
    exported = set(module.__all__)
    for other_name in REEXPORTS.get(module_name, ()):
        other = importlib.import_module(other_name)
        reexported = {
            name
            for name in exported & set(other.__all__)
            if getattr(module, name) is getattr(other, name)
        }
        assert reexported <= _documented(PAGES[other_name])
        exported -= reexported
    documented = _documented(PAGES[module_name])
    assert exported - documented == set(), "exported but not documented"
    assert documented - exported == set(), "documented but not exported"


@pytest.mark.parametrize("module_name", sorted(PAGES))
def test_all_names_exist_and_have_docstrings(module_name: str) -> None:
    """Every exported name exists and classes/functions carry a docstring."""
    module = importlib.import_module(module_name)
    assert len(module.__all__) == len(set(module.__all__)), "duplicate names in __all__"
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


def test_public_objects_do_not_leak_private_modules() -> None:
    """Names defined in effects' private modules are not reachable only through them."""
    import effects

    public = {
        name
        for name, value in vars(effects).items()
        if not name.startswith("_") and not isinstance(value, type(effects))
    }
    assert public - set(effects.__all__) == set()
