"""The layering rule of docs/design.md: core <- durable <- bridges, never the other way; and
bridges and durable use only public names of the core."""

from __future__ import annotations

import ast
import importlib
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


# The public modules of the `effects` distribution (each with an explicit __all__).
PUBLIC = ("effects", "effects.tasks", "effects.testing", "effects.durable")


def _from_imports(path: Path, text: str) -> list[tuple[str, str | None]]:
    """(module, name) for every import in `text`, the source of `path` (which resolves its
    relative imports); name None for `import module`."""
    tree = ast.parse(text, str(path))
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            found.extend((module, alias.name) for alias in node.names)
    return found


def _bridge_violations(path: Path, text: str) -> list[str]:
    bad = []
    for module, name in _from_imports(path, text):
        if module != "effects" and not module.startswith("effects."):
            continue
        where = f"{path.relative_to(SRC)}: {module}" + (f".{name}" if name else "")
        if module not in PUBLIC:
            bad.append(f"{where} (not a public module)")
        elif name is not None and name not in importlib.import_module(module).__all__:
            bad.append(f"{where} (not in {module}.__all__)")
    return bad


def _durable_violations(path: Path, text: str) -> list[str]:
    def core(module: str) -> bool:
        return (module == "effects" or module.startswith("effects.")) and not (
            module == "effects.durable" or module.startswith("effects.durable.")
        )

    return [
        f"{path.relative_to(SRC)}: {module}.{name}"
        for module, name in _from_imports(path, text)
        if core(module) and name is not None and name.startswith("_")
    ]


def test_bridges_use_only_public_effects_names() -> None:
    """`bridges` imports from `effects` only its public modules, and only names in their
    `__all__` (no `effects._std...`, no private helpers)."""
    bad = [
        v
        for path in sorted((SRC / "bridges").rglob("*.py"))
        for v in _bridge_violations(path, path.read_text())
    ]
    assert bad == []


def test_durable_uses_no_private_core_names() -> None:
    """`effects.durable` is part of the `effects` package and may use the core's
    package-internal names (the interpreter `Run`, `flatten`), but never a module-private one
    (leading underscore, such as the interpreter's `_Signal`): the hooks it needs are public
    (`InScope`, `Handler.intercept`)."""
    bad = [v for path in _files("durable") for v in _durable_violations(path, path.read_text())]
    assert bad == []


def test_the_public_name_rules_catch_violations() -> None:
    """The two checks above flag the imports they forbid (the ones this rule replaced)."""
    bridge = SRC / "bridges" / "live" / "_example.py"
    assert _bridge_violations(
        bridge,
        "from effects._std.tasks import ROOT\n"
        "from effects import _flatten\n"
        "import effects._interpreter\n"
        "from effects.tasks import ROOT\n"
        "from effects.durable import DurableRunner\n",
    ) == [
        "bridges/live/_example.py: effects._std.tasks.ROOT (not a public module)",
        "bridges/live/_example.py: effects._flatten (not in effects.__all__)",
        "bridges/live/_example.py: effects._interpreter (not a public module)",
    ]
    durable = SRC / "effects" / "durable" / "_example.py"
    assert _durable_violations(
        durable,
        "from .._interpreter import _PUSH, SUSPEND, _Signal, returning\n"
        "from ._effects import _idempotency_key\n"
        "from .. import InScope\n",
    ) == [
        "effects/durable/_example.py: effects._interpreter._PUSH",
        "effects/durable/_example.py: effects._interpreter._Signal",
    ]
