"""The report folder: ``report.json``, ``junit.xml``, ``summary.md``, ``report.html``.

The renderers (:mod:`.junit`, :mod:`.markdown`, :mod:`.html`) are pure functions of the report
model (``raceharness.core.report.build_report``) and, for the timelines, the trials. This
module is the one place that writes them. ``history.jsonl`` is the engine's (written as the run
goes) and is never touched here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from raceharness.core.history import Trial
from raceharness.render.html import render_html
from raceharness.render.junit import render_junit
from raceharness.render.markdown import render_markdown

__all__ = ["REPORT_FILES", "load_schema", "render_html", "render_junit", "render_markdown",
           "render_json", "write_reports"]

REPORT_FILES = {"json": "report.json", "junit": "junit.xml", "markdown": "summary.md",
                "html": "report.html"}
SCHEMA_FILE = "report-v1.schema.json"


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``report.json``, shipped in the package."""
    text = resources.files("raceharness").joinpath("schemas", SCHEMA_FILE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def write_reports(out_dir: Path, report: Mapping[str, Any], trials: Sequence[Trial],
                  env: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write the four rendered files into ``out_dir`` (created if missing) and return their
    paths by format. When ``env`` (default ``os.environ``) names a ``GITHUB_STEP_SUMMARY``
    file, the Markdown summary is appended to it too."""
    environ = os.environ if env is None else env
    texts = {"json": render_json(report), "junit": render_junit(report, trials),
             "markdown": render_markdown(report), "html": render_html(report, trials)}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for kind, text in texts.items():
        path = out_dir / REPORT_FILES[kind]
        path.write_text(text, encoding="utf-8")
        paths[kind] = path
    step_summary = environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as summary:
            summary.write(texts["markdown"])
    return paths
