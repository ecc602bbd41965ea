"""The import rules of ARCHITECTURE.md, checked on the source (no import side effects).

The repository's folders are mapped into one package: ``harness/`` is ``raceharness``,
``reference/`` is ``raceharness.reference`` (see pyproject.toml). Every import of a
``raceharness`` module, at any depth (a function-level import is still a dependency), is an
edge of the module graph checked here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"raceharness": ROOT / "harness", "raceharness.reference": ROOT / "reference"}
IO_LIBRARIES = {"trio", "httpx", "h11", "h2", "starlette", "psycopg", "psycopg_pool", "uvicorn",
                "hypercorn", "socket", "ssl", "time", "asyncio", "subprocess", "os"}
# The pure core: histories, SSE, checkers, the report model, the scenario model, and the
# renderers (their package's __init__ is the one writer, so it is not pure).
PURE_PACKAGES = ("raceharness.core", "raceharness.render")
IMPURE = {"raceharness.render"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for name, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            dotted = ".".join([name, *parts])
            if name == "raceharness" and dotted.startswith("raceharness.reference"):
                continue
            found[dotted] = path
    return found


MODULES = modules()


def imported_roots(path: Path) -> set[str]:
    """Top-level names a file imports (absolute imports only)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports(module: str) -> Iterator[str]:
    """The package modules ``module`` imports (``from x import y``: ``x.y`` when that is a
    module, else ``x``), relative imports resolved."""
    path = MODULES[module]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(module, path)
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]  # a name inside a module
            if target and target != module:
                yield target


def test_the_module_map_covers_the_folders() -> None:
    assert "raceharness.core.checks.base" in MODULES
    assert "raceharness.reference.gate" in MODULES
    assert all(name.startswith("raceharness") for name in MODULES)


def test_reference_never_imports_the_harness_or_trio() -> None:
    offenders = {
        name: sorted({m for m in imports(name) if not m.startswith("raceharness.reference")}
                     | (imported_roots(path) & {"trio", "h11", "harness", "scenarios"}))
        for name, path in MODULES.items() if name.startswith("raceharness.reference")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_harness_imports_the_reference_only_to_start_it() -> None:
    allowed = {"raceharness.commands.cli", "raceharness.stack.serve"}
    offenders = sorted(name for name in MODULES
                       if not name.startswith("raceharness.reference") and name not in allowed
                       and any(m.startswith("raceharness.reference") for m in imports(name)))
    assert offenders == []


def _pure(name: str) -> bool:
    return name.startswith(PURE_PACKAGES) and name not in IMPURE


def test_the_pure_core_imports_no_io_and_only_the_pure_core() -> None:
    pure = [name for name in MODULES if _pure(name)]
    assert {"raceharness.core.checks.base", "raceharness.core.scenario",
            "raceharness.render.timeline"} <= set(pure)
    offenders = {name: sorted(imported_roots(MODULES[name]) & IO_LIBRARIES) for name in pure}
    assert {k: v for k, v in offenders.items() if v} == {}
    impure_deps = {name: sorted(m for m in imports(name) if not _pure(m)) for name in pure}
    assert {k: v for k, v in impure_deps.items() if v} == {}


def test_there_is_no_import_circle() -> None:
    graph = {name: set(imports(name)) for name in MODULES}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # a package's __init__ importing its own submodules is not a circle of design
    circles = [c for c in circles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert circles == []
