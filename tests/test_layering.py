"""The import rules of ARCHITECTURE.md, checked on the source (no import side effects)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_reference_never_imports_the_harness_or_trio() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & {"harness", "scenarios",
                                                                   "trio", "h11"})
        for path in (ROOT / "reference").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_harness_imports_reference_only_to_start_it() -> None:
    allowed = {"cli.py", "serve.py"}
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "harness").rglob("*.py")
                 if "reference" in imported_roots(path) and path.name not in allowed]
    assert offenders == []


PURE_MODULES = ("history.py", "sse.py", "checkers.py", "report.py", "scenario.py",
                "scenario_checks.py", "render/junit.py", "render/markdown.py", "render/html.py",
                "render/timeline.py", "render/text.py")
IO_LIBRARIES = {"trio", "httpx", "h11", "starlette", "psycopg", "psycopg_pool", "uvicorn",
                "socket", "time", "asyncio", "subprocess"}


def test_pure_harness_modules_import_no_io_and_read_no_clock() -> None:
    offenders = {name: sorted(imported_roots(ROOT / "harness" / name) & IO_LIBRARIES)
                 for name in PURE_MODULES}
    assert {k: v for k, v in offenders.items() if v} == {}
