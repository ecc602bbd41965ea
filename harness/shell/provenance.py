"""Where a committed result came from: the code, the date, the seeds and the machine.

``matrix.json``, ``bench.json`` and ``soak.json`` each carry a ``provenance`` object built
here, and their Markdown files show it as one line (:func:`provenance_markdown`)::

    {"commit": "<40 hex>" | null,   # git rev-parse HEAD of the checkout the harness runs from
     "dirty": true | false | null,  # tracked files changed since that commit (null: no checkout)
     "version": "0.1.0" | null,     # the installed raceharness distribution
     "date": "2026-12-05T10:15:00Z",  # UTC, when the result was made
     "seeds": {"<what>": <seed>, ...},
     "machine": {"cores", "usable_cores", "cpu_model", "memory_mib", "python", "platform"}}

The commit is read only when the harness's own source is a tracked file of a git checkout (an
installed copy in some other repository's virtualenv is not that repository's commit); git is
asked read-only (``GIT_OPTIONAL_LOCKS=0``: not even the index is refreshed), and a missing git,
a timeout or any error leaves ``commit`` null and the installed ``version`` to say what ran.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from raceharness.shell import machine

DISTRIBUTION = "raceharness"
SOURCE = Path(__file__).resolve().parents[1]  # the folder of the raceharness package
GIT_TIMEOUT_S = 5.0


def _git(source: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(source: Path = SOURCE) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout holding ``source`` as a tracked folder, else
    ``(None, None)``. ``dirty``: a tracked file differs from the commit (untracked files do
    not count)."""
    if _git(source, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return None, None  # not a checkout, or the package is not part of it
    commit = _git(source, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(source, "status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else status != ""


def installed_version() -> str | None:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def describe_machine() -> dict[str, Any]:
    """The machine, from :mod:`raceharness.shell.machine` (a reading the system does not give
    is None)."""
    return {"cores": os.cpu_count(), "usable_cores": machine.usable_cores(),
            "cpu_model": machine.cpu_model() or platform.processor() or None,
            "memory_mib": machine.memory_mib(), "python": platform.python_version(),
            "platform": platform.platform()}


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def build_provenance(seeds: Mapping[str, Any], *, source: Path = SOURCE,
                     now: Callable[[], dt.datetime] = utc_now) -> dict[str, Any]:
    """The ``provenance`` object of a result made now with ``seeds`` (what → seed)."""
    commit, dirty = git_state(source)
    return {"commit": commit, "dirty": dirty, "version": installed_version(),
            "date": now().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seeds": dict(seeds), "machine": describe_machine()}


def fresh_results_folder(kind: str, cwd: Path | None = None,
                         now: Callable[[], dt.datetime] = utc_now) -> Path:
    """Where ``harness bench`` / ``harness soak`` write when ``--out`` is not given: a new
    folder ``<kind>-results/<UTC time>/`` (e.g. ``bench-results/20261205T101500Z``) in the
    current directory, ``-2``, ``-3``, ... when one of that second exists; so a run never
    overwrites an earlier one, nor the committed ``reports/``. Not created here."""
    base = (Path.cwd() if cwd is None else cwd) / f"{kind}-results"
    stamp = now().astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder, k = base / stamp, 1
    while folder.exists():
        k += 1
        folder = base / f"{stamp}-{k}"
    return folder


def provenance_markdown(provenance: Mapping[str, Any] | None) -> str:
    """One Markdown line saying where a result came from ("" when it does not say)."""
    if not isinstance(provenance, Mapping):
        return ""
    commit = provenance.get("commit")
    if commit:
        code = f"commit `{str(commit)[:12]}`" + (
            " (with uncommitted changes)" if provenance.get("dirty") else "")
    else:
        code = f"raceharness {provenance.get('version') or '(version unknown)'} (not a checkout)"
    seeds = provenance.get("seeds") or {}
    seed_text = ", ".join(f"{k} {v}" for k, v in seeds.items()) if len(seeds) > 1 else (
        str(next(iter(seeds.values()))) if seeds else "none recorded")
    m = provenance.get("machine") or {}
    where = (f"{m.get('cores') or '?'} cores ({m.get('cpu_model') or 'unknown CPU'}), "
             f"{m.get('memory_mib') or '?'} MiB, Python {m.get('python') or '?'}")
    return (f"Provenance: {code}; {provenance.get('date') or 'date unknown'}; "
            f"seed{'s' if len(seeds) > 1 else ''} {seed_text}; {where}.")
