"""Type-check the docs' code as a user would: mypy --strict and pyright (strict).

Usage: python scripts/check_docs_types.py [--exclude PAGE ...] [PAGE ...]

Every Python block that tests/test_docs_blocks.py runs (README.md and docs/**/*.md, or the
PAGEs given) is written into a temporary directory as a module, joined with the blocks that
continue it exactly as the runner joins them; a block whose first line names a file
(`# signup.py`) is written as that file, so that the page's other blocks import it. Skipped
blocks are not checked. Both checkers run on these modules with the project's strictness
(`[tool.mypy]` and `[tool.pyright]` in pyproject.toml, `src` first on the path), and every
error is printed at its page and line: `docs/durable/guide.md:42: error: ...`. The exit
status is 1 if either checker reports an error. docs/writing-docs.md says more.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_docs_blocks import Program, pages, programs  # noqa: E402

# Where a generated module's line comes from: (page, line in the page).
Origin = tuple[str, int]


@dataclass
class Folder:
    """One directory of modules checked together: a page's files and scripts as they run.

    A page that writes the same file twice (two `# main.py` blocks) gets a second folder
    from that block on, so that each version of the file is checked with what imports it.
    """

    name: str
    files: dict[str, tuple[str, list[Origin]]] = field(default_factory=dict)

    def modules(self) -> set[str]:
        return {name[: -len(".py")].replace("/", ".") for name in self.files}


def program_text(program: Program) -> tuple[str, list[Origin]]:
    """The program's source, its blocks joined, and where each of its lines comes from."""
    text = ""
    origins: list[Origin] = []
    for block in program.blocks:
        source = block.source if block.source.endswith("\n") else block.source + "\n"
        text += source
        # The block's first line is the line after its opening fence.
        origins += [(block.page, block.line + 1 + i) for i in range(source.count("\n"))]
    return text, origins


def page_folders(path: Path) -> list[Folder]:
    """The folders of one page's programs."""
    slug = re.sub(r"\W", "_", str(path.relative_to(ROOT)).removesuffix(".md"))
    folders = [Folder(f"{slug}_0")]
    for index, program in enumerate(programs(path)):
        text, origins = program_text(program)
        if program.file is None:
            # Scripts are imported by nobody: a name unique in the whole check.
            folders[-1].files[f"{slug}_block{index}.py"] = (text, origins)
            continue
        if program.file in folders[-1].files:
            # Written again: later blocks see the new version, the old one stays checked.
            files = {n: f for n, f in folders[-1].files.items() if not n.startswith(slug)}
            folders.append(Folder(f"{slug}_{len(folders)}", files))
        folders[-1].files[program.file] = (text, origins)
    return [folder for folder in folders if folder.files]


def groups(folders: list[Folder]) -> list[list[Folder]]:
    """Folders packed so that no two in a group define the same module (one mypy run each)."""
    packed: list[tuple[set[str], list[Folder]]] = []
    for folder in folders:
        names = folder.modules()
        for taken, members in packed:
            if not taken & names:
                taken |= names
                members.append(folder)
                break
        else:
            packed.append((set(names), [folder]))
    return [members for _, members in packed]


# Keys of the line origins: a file's path under the temporary directory. mypy's cache keeps
# the errors of an unchanged module with the path it had in an earlier run's directory.
Where = dict[str, list[Origin]]
UNDER_BASE = re.compile(r"docs-types-[^/\\]+[/\\](.+)$")


def write(folders: list[Folder], base: Path) -> Where:
    """Write the folders under `base`; returns each file's line origins."""
    where: Where = {}
    for folder in folders:
        for name, (text, origins) in folder.files.items():
            target = base / folder.name / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            where[f"{folder.name}/{name}"] = origins
    return where


def locate(where: Where, file: str, line: int) -> str:
    """`page:line` of a generated file's line (1-based)."""
    under = UNDER_BASE.search(file)
    origins = None if under is None else where.get(under.group(1).replace("\\", "/"))
    if origins is None:
        return f"{file}:{line}"  # not a docs module (should not happen: src is not checked)
    page, page_line = origins[min(max(line, 1), len(origins)) - 1]
    return f"{page}:{page_line}"


MYPY_LINE = re.compile(r"^(?P<file>[^:\n]+\.py):(?P<line>\d+): (?P<rest>(?:error|note): .*)$")


def run_mypy(members: list[Folder], base: Path, where: Where) -> list[str]:
    """mypy --strict on one group, with pyproject.toml's settings (src first, pydantic plugin)."""
    top: list[str] = []
    nested: list[str] = []
    for folder in members:
        for name in folder.files:
            if "/" in name:
                # pkg/mod.py is module pkg.mod, found through the folder on MYPYPATH.
                nested += ["-m", name[: -len(".py")].replace("/", ".")]
            else:
                top.append(str(base / folder.name / name))
    env = dict(os.environ)
    env["MYPYPATH"] = os.pathsep.join(str(base / folder.name) for folder in members)
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--no-error-summary",
        "--show-error-codes",
        "--no-pretty",
        "--show-absolute-path",
        *top,
        *nested,
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    errors = mypy_errors(done.stdout, where)
    if done.returncode not in (0, 1) or (done.returncode == 1 and not errors):
        errors.append(f"mypy failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return errors


def mypy_errors(stdout: str, where: Where) -> list[str]:
    """mypy's errors at their pages' lines; a note follows its error, indented."""
    errors: list[str] = []
    last_error = ""
    for line in stdout.splitlines():
        match = MYPY_LINE.match(line)
        if match is None:
            continue
        message = f"{locate(where, match['file'], int(match['line']))}: mypy {match['rest']}"
        if match["rest"].startswith("error"):
            errors.append(message)
            last_error = message
        elif last_error:
            errors.append("    " + message)  # a note explains the error before it
    return errors


def pyright_command() -> list[str]:
    found = shutil.which("pyright")
    if found is None:
        sys.exit("pyright is not installed: source scripts/env lint (the lint group has it)")
    return [found]


def run_pyright(folders: list[Folder], base: Path, where: Where) -> list[str]:
    """pyright with [tool.pyright]'s strictness; each folder is its own execution root."""
    src = str(ROOT / "src")
    config = {
        "include": [folder.name for folder in folders],
        "pythonVersion": "3.11",
        "typeCheckingMode": "strict",
        "reportUnnecessaryTypeIgnoreComment": "error",
        "enableTypeIgnoreComments": False,
        "extraPaths": [src],
        "executionEnvironments": [{"root": folder.name, "extraPaths": [src]} for folder in folders],
    }
    (base / "pyrightconfig.json").write_text(json.dumps(config))
    command = [
        *pyright_command(),
        "--outputjson",
        "--pythonpath",
        sys.executable,
        "--project",
        str(base / "pyrightconfig.json"),
    ]
    done = subprocess.run(command, cwd=base, capture_output=True, text=True)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return [f"pyright failed ({done.returncode}):\n{done.stdout}{done.stderr}"]
    errors = pyright_errors(report, where)
    if done.returncode not in (0, 1) or (done.returncode == 1 and not errors):
        errors.append(f"pyright failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return errors


def pyright_errors(report: dict[str, Any], where: Where) -> list[str]:
    """The errors of pyright's `--outputjson` report at their pages' lines."""
    errors: list[str] = []
    for diagnostic in report.get("generalDiagnostics", []):
        if diagnostic.get("severity") != "error":
            continue
        line = diagnostic["range"]["start"]["line"] + 1  # pyright counts lines from 0
        rule = f" [{diagnostic['rule']}]" if diagnostic.get("rule") else ""
        message = " ".join(diagnostic["message"].split())
        errors.append(f"{locate(where, diagnostic['file'], line)}: pyright error: {message}{rule}")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages to check (default: all)")
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PAGE",
        help="a page not to check (say why where it is used)",
    )
    args = parser.parse_args(argv)
    chosen = [p.resolve() for p in args.pages] or pages()
    excluded = {(ROOT / p).resolve() for p in args.exclude}
    unknown = excluded - set(pages())
    if unknown:
        parser.error(f"--exclude: not a docs page: {', '.join(map(str, sorted(unknown)))}")
    folders = [f for page in chosen if page not in excluded for f in page_folders(page)]
    with tempfile.TemporaryDirectory(prefix="docs-types-") as tmp:
        base = Path(tmp).resolve()
        where = write(folders, base)
        errors: list[str] = []
        for members in groups(folders):
            errors += run_mypy(members, base, where)
        if folders:  # pyright with nothing to include would check the whole directory
            errors += run_pyright(folders, base, where)
    # The same module is checked in two folders when a page rewrites a file: report once.
    unique = list(dict.fromkeys(errors))
    print("\n".join(unique) if unique else "", end="\n" if unique else "")
    modules = sum(len(f.files) for f in folders)
    count = len([e for e in unique if not e.startswith("    ")])  # notes are not counted
    verdict = f"{count} errors" if unique else "clean"
    print(
        f"docs types: {modules} modules from {len(chosen) - len(excluded & set(chosen))} "
        f"pages, mypy --strict and pyright (strict): {verdict}"
    )
    return 1 if unique else 0


if __name__ == "__main__":
    sys.exit(main())
