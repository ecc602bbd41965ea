"""Where a committed result came from: the commit (and whether the checkout was dirty) when the
harness runs from a git checkout, else the installed version; the UTC date, the seeds and the
machine; and the fresh folder bench and soak write to by default."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from raceharness.shell import provenance as prov
from raceharness.shell.provenance import (
    build_provenance,
    fresh_results_folder,
    git_state,
    provenance_markdown,
)

NOW = dt.datetime(2026, 12, 5, 10, 15, 0, tzinfo=dt.UTC)
MACHINE_KEYS = {"cores", "usable_cores", "cpu_model", "memory_mib", "python", "platform"}
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                           "user.email=t@example.invalid", *args], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A throwaway git repository holding a package folder, committed."""
    repo = tmp_path / "repo"
    package = repo / "harness"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    return package


@needs_git
def test_a_checkout_gives_its_commit_and_whether_tracked_files_changed(checkout: Path) -> None:
    head = git(checkout.parent, "rev-parse", "HEAD")
    assert git_state(checkout) == (head, False)
    (checkout / "notes.txt").write_text("untracked")  # untracked files do not count
    assert git_state(checkout) == (head, False)
    (checkout / "mod.py").write_text("x = 2\n")
    assert git_state(checkout) == (head, True)


@needs_git
def test_a_package_not_tracked_by_the_repository_around_it_has_no_commit(
        checkout: Path) -> None:
    """An installed copy inside some other repository (its virtualenv) is not that commit."""
    stray = checkout.parent / "venv" / "raceharness"
    stray.mkdir(parents=True)
    (stray / "__init__.py").write_text("")
    assert git_state(stray) == (None, None)


def test_outside_a_checkout_the_installed_version_says_what_ran(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    p = build_provenance({"bench": 7}, source=tmp_path, now=lambda: NOW)
    assert (p["commit"], p["dirty"]) == (None, None)
    assert p["version"] == metadata.version("raceharness")
    assert p["date"] == "2026-12-05T10:15:00Z" and p["seeds"] == {"bench": 7}
    assert set(p["machine"]) == MACHINE_KEYS and p["machine"]["cores"] >= 1
    assert provenance_markdown(p).startswith(
        f"Provenance: raceharness {p['version']} (not a checkout); 2026-12-05T10:15:00Z; "
        "seed 7; ")


@needs_git
def test_this_checkout_is_recorded_with_its_head() -> None:
    p = build_provenance({"soak": 1})
    head = subprocess.run(["git", "-C", str(prov.SOURCE), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the harness does not run from a git checkout here")
    assert p["commit"] == head.stdout.strip() and isinstance(p["dirty"], bool)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["date"])


def test_the_markdown_line_names_commit_date_seeds_and_machine() -> None:
    p = {"commit": "0123456789abcdef" * 2 + "01234567", "dirty": True, "version": "0.1.0",
         "date": "2026-12-05T10:15:00Z", "seeds": {"(correct)": 3, "no-lease": 4},
         "machine": {"cores": 2, "cpu_model": "AMD EPYC", "memory_mib": 3900,
                     "python": "3.11.7"}}
    assert provenance_markdown(p) == (
        "Provenance: commit `0123456789ab` (with uncommitted changes); 2026-12-05T10:15:00Z; "
        "seeds (correct) 3, no-lease 4; 2 cores (AMD EPYC), 3900 MiB, Python 3.11.7.")
    assert provenance_markdown(None) == ""


def test_results_go_to_a_fresh_timestamped_folder(tmp_path: Path) -> None:
    first = fresh_results_folder("bench", tmp_path, now=lambda: NOW)
    assert first == tmp_path / "bench-results" / "20261205T101500Z"
    first.mkdir(parents=True)
    assert fresh_results_folder("bench", tmp_path, now=lambda: NOW).name == "20261205T101500Z-2"
    assert fresh_results_folder("soak", tmp_path, now=lambda: NOW) == (
        tmp_path / "soak-results" / "20261205T101500Z")
