"""The report folder end to end: `harness race --report DIR` against the embedded reference
writes all five files; `harness report DIR` re-renders them from history.jsonl alone."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from raceharness.commands.cli import main
from raceharness.render import load_schema

FILES = ["history.jsonl", "junit.xml", "report.html", "report.json", "summary.md"]


@pytest.fixture
def embedded_db(monkeypatch: pytest.MonkeyPatch, pg_empty_dsn: str) -> str:
    """The embedded stack reuses the session's Postgres (a fresh empty database)."""
    monkeypatch.setenv("HARNESS_PG_DSN", pg_empty_dsn)
    return pg_empty_dsn


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """What a re-rendering must reproduce: the verdicts, per property and per trial."""
    return {"verdict": report["verdict"], "exit_code": report["exit_code"],
            "properties": report["properties"], "first_failure": report["first_failure"],
            "trials": [{k: v for k, v in t.items() if k != "reproduce"}
                       for t in report["trials"]]}


@pytest.mark.parametrize(("faults", "exit_code", "failing"), [
    ((), 0, set()),
    (("--fault", "blanket-500"), 1, {"race/losers-409"}),
])
def test_race_writes_the_report_folder_and_report_re_renders_it(
        faults: tuple[str, ...], exit_code: int, failing: set[str], embedded_db: str,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "rep"
    step_summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    code = main(["race", "--n", "10", "--seed", "21", *faults, "--report", str(folder)])
    capsys.readouterr()
    assert code == exit_code
    assert sorted(p.name for p in folder.iterdir()) == FILES
    report = json.loads((folder / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    assert {name for name, p in report["properties"].items() if p["verdict"] == "invalid"} == \
        failing
    suites = ET.parse(folder / "junit.xml").getroot()
    assert (suites.tag, suites.get("tests"), suites.get("failures")) == (
        "testsuites", str(len(report["properties"])), str(len(failing)))
    summary = (folder / "summary.md").read_text()
    assert step_summary.read_text() == summary
    assert summary.startswith("## raceharness: " + ("PASSED" if not failing else "FAILED"))
    assert "<svg class=\"timeline\"" in (folder / "report.html").read_text()

    # Everything but the history goes; `harness report` brings back the same verdicts.
    for name in FILES[1:]:
        (folder / name).unlink()
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert main(["report", str(folder)]) == exit_code
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"reproduce: {report['reproduce']}")
    assert sorted(p.name for p in folder.iterdir()) == FILES
    again = json.loads((folder / "report.json").read_text())
    jsonschema.validate(again, load_schema())
    assert verdicts(again) == verdicts(report)
    assert [t["reproduce"] for t in again["trials"]] == [t["reproduce"] for t in report["trials"]]
    assert ET.parse(folder / "junit.xml").getroot().get("failures") == str(len(failing))


def test_report_without_a_history_is_a_usage_error_naming_the_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == (
        f"harness report: {tmp_path / 'nowhere' / 'history.jsonl'}: no such file\n")


def test_report_on_a_malformed_history_is_a_usage_error_naming_the_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "history.jsonl").write_text('{"kind":"run","schema":1}\nnot json\n{}\n')
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"harness report: {tmp_path / 'history.jsonl'}: line 2: not valid JSON\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


def test_report_on_a_history_without_trials_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "history.jsonl").write_text('{"kind":"run","schema":1}\n')
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"harness report: {tmp_path / 'history.jsonl'}: no trials in the history (the run "
        "stopped before its first trial began)\n")
