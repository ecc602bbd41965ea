"""Installing the project adds one import name, ``raceharness``, and nothing a user's own code
may already use: a repository with its own ``harness``, ``reference`` and ``scenarios``
packages keeps them, and the pytest plugin (entry point ``pytest11``) still loads and races."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_adds_exactly_one_top_level_import_name(tmp_path: Path) -> None:
    # Built from a copy of the tracked files: a stale build/ folder in the work tree would
    # otherwise ship modules that no longer exist.
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("raceharness-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(
        (".dist-info", ".data"))}
    assert tops == {"raceharness"}
    assert "raceharness/reference/gate.py" in names
    assert "raceharness/scenarios/01-same-chat-burst.toml" in names
    assert "raceharness/adapters/langgraph.toml" in names  # a built-in adapter is data
    assert "raceharness/schemas/report-v1.schema.json" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "harness = raceharness.commands.cli:main" in text
    assert "raceharness = raceharness.pytest_plugin" in text


USER_TEST = '''
import harness
import reference
import scenarios
from harness.core import answer


def test_the_users_own_packages_are_theirs():
    assert answer() == 42
    assert harness.MINE and reference.MINE and scenarios.MINE


def test_the_plugin_still_races(raceharness):
    outcome = raceharness.race(n=5, seed=3)
    outcome.assert_valid()
    assert outcome.report["trials"][0]["statuses"] == {"200": 1, "409": 4}
'''


@pytest.mark.timeout(300)
def test_a_repository_with_its_own_harness_reference_and_scenarios_runs_the_plugin(
        tmp_path: Path, pg_empty_dsn: str) -> None:
    """The user's repository shadows nothing of ours and we shadow nothing of theirs: its
    packages named like our folders import as its own, and the plugin's fixture works."""
    repo = tmp_path / "users-repo"
    for package in ("harness", "reference", "scenarios"):
        (repo / package).mkdir(parents=True)
        (repo / package / "__init__.py").write_text("MINE = True\n")
    (repo / "harness" / "core.py").write_text("def answer():\n    return 42\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_users_code.py").write_text(textwrap.dedent(USER_TEST))
    (repo / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    env = {**os.environ, "HARNESS_PG_DSN": pg_empty_dsn}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout


def test_every_package_folder_is_in_the_wheel() -> None:
    """pyproject lists its packages explicitly (the folders are mapped into one name): a new
    subpackage left out of the list would be missing from an installed harness."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {"raceharness." + ".".join(init.parent.relative_to(ROOT / "harness").parts)
             for init in (ROOT / "harness").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found}
    assert found - listed == set()
