"""The layering rule of docs/design.md: core <- durable <- bridges, never the other way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src"

# layer directory -> module prefixes it must not import
RULES = {
    "core": ("effects.durable", "bridges", "starlette", "sqlalchemy", "aiosqlite", "jinja2"),
    "durable": ("bridges", "starlette", "jinja2"),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _files(layer: str) -> list[Path]:
    effects = SRC / "effects"
    if layer == "durable":
        return sorted((effects / "durable").rglob("*.py"))
    # `python -m effects` is the command line of durable runs, an entry point, not the core.
    return sorted(
        p for p in effects.rglob("*.py") if "durable" not in p.parts and p.name != "__main__.py"
    )


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports(layer: str) -> None:
    """No module of a layer imports a layer above it."""
    bad = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in _files(layer)
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in RULES[layer])
    ]
    assert bad == []
