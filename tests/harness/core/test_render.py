"""The report formats (pure): report.json against its schema, JUnit XML, the Markdown summary
and the self-contained HTML page, built from literal trials (the checkers' model race and its
twins) and from generated ones with hostile strings."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raceharness.core.history import ProviderCall, Trial
from raceharness.core.properties import SINGLE_CHAT_RACE, check_trial
from raceharness.core.report import build_report, rebuild_report, reproduce_from_history
from raceharness.render import load_schema, render_json, write_reports
from raceharness.render.html import render_html
from raceharness.render.junit import render_junit
from raceharness.render.markdown import MAX_BYTES, render_markdown
from raceharness.render.text import clean, ops_note
from raceharness.render.timeline import build_timeline
from raceharness.render.timeline_svg import FOCUS_SHARE, PLOT_W, PLOT_X, build_axis
from tests.harness.core.test_checkers import (
    LOSER_A,
    LOSER_B,
    WINNER,
    History,
    distinct_chats,
    drop,
    model,
    ns,
    patch,
    race_trials,
)
from tests.harness.core.test_history import trial_lists
from tests.harness.test_layering import IO_LIBRARIES, imported_roots

CONFIG = {"n": 3, "trials": 3, "seed": 7, "sync": "last-byte", "faults": [],
          "target": "embedded", "provider_access": True, "db_access": True,
          "losers_fast_bound_ms": 1000}
HOSTILE = '<script>alert("x")</script> & \x07 \ud800 <img src=https://evil.example/p.png>'
LOSERS_409_REASON = ("1 of 2 losers not a JSON 409 A_RUN_ALREADY_ACTIVE: op 5: 500 code=None "
                     "json=True")


def numbered(trial: Trial, k: int, seed: int, **meta: Any) -> Trial:
    return dataclasses.replace(trial, meta={**trial.meta, "trial": k, "seed": seed, **meta})


def invalid_trial() -> Trial:
    return patch(model(), LOSER_A, status=500, code=None)


def report_of(*trials: Trial) -> dict[str, Any]:
    return build_report(list(trials), [check_trial(t, SINGLE_CHAT_RACE) for t in trials],
                        config=CONFIG, reproduce="harness race --n 3 --seed 7 --trials 3",
                        trial_reproduce=lambda seed: f"harness race --n 3 --seed {seed}")


def three_trials() -> list[Trial]:
    """Trial 0 valid, trial 1 invalid (a loser got 500), trial 2 unknown (no provider)."""
    return [numbered(model(), 0, 7), numbered(invalid_trial(), 1, 8),
            numbered(model(provider=False), 2, 9)]


def validate(report: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(load_schema())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(report)]


def test_render_modules_are_pure() -> None:
    root = Path(__file__).resolve().parents[3] / "harness" / "render"
    offenders = {path.name: sorted(imported_roots(path) & (IO_LIBRARIES | {"os", "datetime"}))
                 for path in root.glob("*.py") if path.name != "__init__.py"}
    assert "timeline.py" in offenders  # the folder was found: the check is not vacuous
    assert {k: v for k, v in offenders.items() if v} == {}


# -- report.json and its schema ------------------------------------------------------------------

def test_the_schema_is_a_valid_draft_2020_12_schema_naming_its_version() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"] == {"const": "raceharness/report/v1"}


@pytest.mark.parametrize(("trials", "verdict", "exit_code"), [
    (lambda: [numbered(model(), 0, 7)], "valid", 0),
    (lambda: [numbered(invalid_trial(), 0, 7)], "invalid", 1),
    (lambda: [numbered(model(provider=False), 0, 7)], "unknown", 3),
    (three_trials, "invalid", 1),
])
def test_reports_of_every_verdict_validate(trials: Any, verdict: str, exit_code: int) -> None:
    report = report_of(*trials())
    assert (report["verdict"], report["exit_code"]) == (verdict, exit_code)
    assert validate(report) == []


@pytest.mark.parametrize("key", ["schema", "verdict", "exit_code", "properties", "trials",
                                 "reproduce", "release_spread_ms", "first_failure"])
def test_a_report_missing_a_required_key_fails_validation(key: str) -> None:
    report = report_of(*three_trials())
    del report[key]
    assert validate(report) == [f"[]: '{key}' is a required property"]


@pytest.mark.parametrize("key", ["trial", "seed", "statuses", "winners", "release_spread_ms",
                                 "verdict", "properties"])
def test_a_trial_missing_a_required_key_fails_validation(key: str) -> None:
    report = report_of(*three_trials())
    del report["trials"][1][key]
    assert validate(report) == [f"['trials', 1]: '{key}' is a required property"]


def test_wrong_values_fail_validation() -> None:
    report = report_of(*three_trials())
    report["schema"] = "raceharness/report/v2"
    report["verdict"] = "ok"
    report["trials"][0]["properties"]["race/one-winner"]["ops"] = ["5"]
    assert sorted(validate(report)) == [
        "['schema']: 'raceharness/report/v1' was expected",
        "['trials', 0, 'properties', 'race/one-winner', 'ops', 0]: '5' is not of type 'integer'",
        "['verdict']: 'ok' is not one of ['valid', 'invalid', 'unknown']",
    ]


# -- JUnit ---------------------------------------------------------------------------------------

def test_junit_has_one_testcase_per_property_per_trial_and_matching_counts() -> None:
    root = ET.fromstring(render_junit(report_of(*three_trials())))
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "36", "failures": "1", "errors": "0", "skipped": "4"}
    suites = root.findall("testsuite")
    assert [(s.get("name"), s.get("tests"), s.get("failures"), s.get("skipped"))
            for s in suites] == [("race trial 0", "12", "0", "0"), ("race trial 1", "12", "1", "0"),
                                 ("race trial 2", "12", "0", "4")]
    assert [c.get("name") for c in suites[1].findall("testcase")] == [
        f"{p} [trial 1]" for p in SINGLE_CHAT_RACE]
    assert {c.get("classname") for c in root.iter("testcase")} == {"race"}


def test_junit_suite_properties_name_seed_target_and_spread() -> None:
    trial = numbered(model(), 0, 7, send_spread_ns=ns(0.25))
    suite = ET.fromstring(render_junit(report_of(trial))).find("testsuite")
    assert suite is not None
    assert {p.get("name"): p.get("value") for p in suite.iter("property")} == {
        "seed": "7", "target": "embedded", "n": "3", "release_spread_ms": "0.25",
        "reproduce": "harness race --n 3 --seed 7"}


def test_junit_times_come_from_each_trials_history() -> None:
    """A trial's time is its first op to its last, split evenly over its cases (so they add
    up to the suite's time), and the suites add up to the root's; no clock is read."""
    trials = three_trials()
    root = ET.fromstring(render_junit(report_of(*trials), trials))
    suites = root.findall("testsuite")
    assert [s.get("time") for s in suites] == ["1.601", "1.601", "1.601"]  # ops 0 → 1601 ms
    for suite in suites:
        cases = [float(c.get("time") or "nan") for c in suite.iter("testcase")]
        assert len(cases) == 12 and all(0.133 <= t <= 0.134 for t in cases)
        assert sum(cases) == pytest.approx(float(suite.get("time") or "nan"), abs=1e-9)
    assert root.get("time") == "4.803"
    # without the histories there is nothing to time: 0, as before
    bare = ET.fromstring(render_junit(report_of(*trials)))
    assert {c.get("time") for c in bare.iter("testcase")} == {"0.000"}


def test_junit_matches_histories_to_trials_by_number() -> None:
    short = History(release_ns=0)
    short.turn(1, 0, "n1")
    short.stream(1, headers_ms=5, end_ms=250, run_id="run-w")
    trials = [numbered(model(), 0, 7), numbered(short.trial(), 1, 8)]
    root = ET.fromstring(render_junit(report_of(*trials), list(reversed(trials))))
    assert [s.get("time") for s in root.findall("testsuite")] == ["1.601", "0.250"]


def test_write_reports_times_the_junit_cases(tmp_path: Path) -> None:
    trials = three_trials()
    paths = write_reports(tmp_path, report_of(*trials), trials, env={})
    root = ET.fromstring(paths["junit"].read_text())
    assert root.get("time") == "4.803"
    assert "0.000" not in {c.get("time") for c in root.iter("testcase")}


def test_an_invalid_property_is_a_failure_with_reason_ops_and_reproduce_line() -> None:
    root = ET.fromstring(render_junit(report_of(*three_trials())))
    failures = [(c.get("name"), c.find("failure")) for c in root.iter("testcase")
                if c.find("failure") is not None]
    assert len(failures) == 1
    name, failure = failures[0]
    assert failure is not None
    assert (name, failure.get("message"), failure.get("type")) == (
        "race/losers-409 [trial 1]", LOSERS_409_REASON, "invalid")
    # the reason names op 5 already: the body says where it is instead of listing it again
    assert failure.text == (f"{LOSERS_409_REASON}\noffending: as cited above (trial 1 of "
                            "history.jsonl)\nseed: 8\nreproduce: harness race --n 3 --seed 8\n")


def test_an_unknown_property_is_skipped_as_inconclusive() -> None:
    root = ET.fromstring(render_junit(report_of(*three_trials())))
    skipped = {c.get("name"): c.find("skipped") for c in root.iter("testcase")
               if c.find("skipped") is not None}
    assert {name: s.get("message") for name, s in skipped.items() if s is not None} == {
        "race/no-loser-provider-call [trial 2]": "inconclusive: no provider access",
        "race/winner-provider-call [trial 2]": "inconclusive: no provider access",
        "race/no-untracked-run [trial 2]": "inconclusive: missing evidence: no provider access",
        "race/winner-stoppable [trial 2]": "inconclusive: stop answered stopped:true and the "
                                           "stream ended abort, but no provider access to see "
                                           "the provider disconnect"}


def test_junit_classname_is_the_scenario_when_named() -> None:
    report = report_of(numbered(model(), 0, 7, scenario="double-submit"))
    root = ET.fromstring(render_junit(report))
    assert {c.get("classname") for c in root.iter("testcase")} == {"double-submit"}
    assert [s.get("name") for s in root.iter("testsuite")] == ["double-submit trial 0"]


def hostile_report() -> dict[str, Any]:
    report = report_of(*three_trials())
    report["trials"][1]["properties"]["race/losers-409"]["reason"] = HOSTILE
    report["trials"][2]["properties"]["race/winner-stoppable"]["reason"] = HOSTILE
    report["trials"][1]["scenario"] = HOSTILE
    return report


def test_junit_escapes_hostile_strings_and_stays_well_formed() -> None:
    text = render_junit(hostile_report())
    root = ET.fromstring(text)
    assert "<script>" not in text and "<img" not in text
    failure = next(root.iter("failure"))
    assert failure.get("message") == clean(HOSTILE)
    assert (failure.text or "").startswith(clean(HOSTILE) + "\n")
    assert clean(HOSTILE) == HOSTILE.replace("\x07", "\ufffd").replace("\ud800", "\ufffd")


# -- Markdown ------------------------------------------------------------------------------------

def test_markdown_has_headline_table_spread_and_the_first_failure() -> None:
    trials = [numbered(t, k, 7 + k, send_spread_ns=ns(0.25 * (k + 1)))
              for k, t in enumerate(three_trials())]
    text = render_markdown(report_of(*trials))
    assert text.startswith("## raceharness: FAILED\n\nVerdict **invalid** (exit code 1). "
                           "3 trials: 1 valid, 1 invalid, 1 inconclusive.\n")
    assert ("| property | verdict | valid | invalid | unknown |\n|---|---|--:|--:|--:|\n"
            "| race/overlap-achieved | valid | 3 | 0 | 0 |\n") in text
    assert "| race/losers-409 | **invalid** | 2 | 1 | 0 |\n" in text
    assert "| race/winner-stoppable | unknown | 2 | 0 | 1 |\n" in text
    assert "Release spread (last bytes sent): median 0.500 ms, max 0.750 ms.\n" in text
    assert ("### First failing trial: trial 1 (seed 8)\n\n- **race/losers-409**: "
            f"{LOSERS_409_REASON}\n\nReproduce:\n\n```sh\nharness race --n 3 --seed 8\n```"
            ) in text
    assert text.endswith("Config: target embedded; n 3; trials 3; seed 7; sync last-byte; faults "
                         "none; provider access yes; database access yes.\n\nReproduce the run:"
                         "\n\n```sh\nharness race --n 3 --seed 7 --trials 3\n```\n")


def test_markdown_shows_the_reproduce_line_once_when_the_run_is_the_failing_trial() -> None:
    trial = numbered(invalid_trial(), 0, 7)
    report = build_report([trial], [check_trial(trial, SINGLE_CHAT_RACE)], config=CONFIG,
                          reproduce="harness race --n 3 --seed 7",
                          trial_reproduce=lambda seed: f"harness race --n 3 --seed {seed}")
    text = render_markdown(report)
    assert text.count("harness race --n 3 --seed 7") == 1
    assert text.count("```sh") == 1 and "Reproduce the run:" not in text
    assert "Reproduce:\n\n```sh\nharness race --n 3 --seed 7\n```\n" in text
    # a run line that differs (several trials) is still shown, after the trial's
    text = render_markdown(report_of(*three_trials()))
    assert text.count("```sh") == 2
    assert text.endswith("Reproduce the run:\n\n```sh\nharness race --n 3 --seed 7 "
                         "--trials 3\n```\n")


def test_a_passing_run_shows_its_reproduce_line_once() -> None:
    text = render_markdown(report_of(numbered(model(), 0, 7)))
    assert text.count("```sh") == 1 and "Reproduce the run:" in text


@pytest.mark.parametrize(("reason", "ops", "note"), [
    ("1 of 2 losers not a JSON 409: op 5: 500 code=None", [5], ""),
    ("2 racers got 200 (ops 3, 11): more than one winner", [3, 11], ""),
    ("call 2 ← op 7; call 3 ← op 9", [7, 9], ""),
    ("a loser was slow", [5, 6], "ops 5, 6"),
    ("op 5 was late; … and 1 more", [5, 6], "other op 6"),
    ("ops 1, 2, … (30 in all)", [1, 2, 3], "other op 3"),
    ("nothing to cite", [], "no op cited"),
    ("the stop (op 50) answered", [5], "op 5"),
])
def test_ops_note_lists_only_the_ops_a_reason_does_not(reason: str, ops: list[int],
                                                       note: str) -> None:
    assert ops_note(reason, ops) == note


def reasons_report() -> dict[str, Any]:
    """Trial 1's losers-409 names its op in the reason; two other properties made invalid
    with a reason naming none and one naming some of their ops."""
    report = report_of(*three_trials())
    props = report["trials"][1]["properties"]
    props["race/one-winner"] = {"verdict": "invalid", "reason": "a curious outcome",
                                "ops": [3, 4]}
    props["race/losers-fast"] = {"verdict": "invalid", "reason": "op 6 was slow; … and 1 more",
                                 "ops": [6, 7]}
    return report


def test_every_renderer_shows_each_op_list_once() -> None:
    report = reasons_report()
    text = render_markdown(report)
    assert f"- **race/losers-409**: {LOSERS_409_REASON}\n" in text
    assert "- **race/one-winner**: a curious outcome (ops 3, 4)\n" in text
    assert "- **race/losers-fast**: op 6 was slow; … and 1 more (other op 7)\n" in text
    page = render_html(report, three_trials())
    assert f"race/losers-409</code>: {LOSERS_409_REASON}</li>" in page
    assert "race/one-winner</code>: a curious outcome <span class=muted>(ops 3, 4)</span>" in page
    assert "… and 1 more <span class=muted>(other op 7)</span>" in page
    bodies = {c.get("name"): (c.find("failure").text or "")  # type: ignore[union-attr]
              for c in ET.fromstring(render_junit(report)).iter("testcase")
              if c.find("failure") is not None}
    assert "offending: as cited above (trial 1" in bodies["race/losers-409 [trial 1]"]
    assert "offending: ops 3, 4 (trial 1" in bodies["race/one-winner [trial 1]"]
    assert "offending: other op 7 (trial 1" in bodies["race/losers-fast [trial 1]"]


def test_markdown_names_the_server_arrival_spread_when_present() -> None:
    report = report_of(numbered(model(), 0, 7))
    report["server_arrival_spread_ms"] = {"median": 0.125, "max": 0.5}
    assert "Server arrival spread: median 0.125 ms, max 0.500 ms.\n" in render_markdown(report)


def test_markdown_of_1000_trials_stays_well_under_a_mebibyte() -> None:
    trials = [numbered(invalid_trial() if k % 3 else model(), k, 1000 + k) for k in range(1000)]
    text = render_markdown(report_of(*trials))
    assert len(text.encode()) < 64 * 1024 < MAX_BYTES < 1024 * 1024
    assert "Other failing trials: 2 (seed 1002), 4 (seed 1004), 5 (seed 1005)" in text
    assert ", and 655 more." in text


def test_markdown_escapes_hostile_strings() -> None:
    text = render_markdown(hostile_report())
    assert "<script" not in text and "<img" not in text and "\x07" not in text
    assert ("&lt;script&gt;alert(\"x\")&lt;/script&gt; &amp; \ufffd \ufffd &lt;img "
            "src=https://evil.example/p.png&gt;") in text


def test_a_backtick_run_cannot_close_the_reproduce_fence() -> None:
    report = report_of(numbered(model(), 0, 7))
    report["reproduce"] = "harness race ```\n# injected"
    assert render_markdown(report).endswith("````sh\nharness race ```\n# injected\n````\n")


# -- HTML ----------------------------------------------------------------------------------------

class Tags(HTMLParser):
    """Every start tag with its attributes, and the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    tags.close()
    return tags


FETCHING_TAGS = {"script", "img", "link", "iframe", "object", "embed", "base", "image", "use",
                 "audio", "video", "source", "frame", "form", "input"}
FETCHING_ATTRS = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster",
                  "background", "data", "ping", "manifest"}


def external_references(page: str) -> list[str]:
    found = []
    for tag, attrs in parse(page).tags:
        if tag in FETCHING_TAGS:
            found.append(f"<{tag}>")
        for name, value in attrs.items():
            if name in FETCHING_ATTRS or re.search(r"(https?:)?//|url\(", value or ""):
                found.append(f"{tag} {name}={value!r}")
    return found + re.findall(r"@import|url\(", page.split("<body>")[0])


def test_html_draws_one_lane_per_request_and_the_verdict_table() -> None:
    trial = numbered(model(), 0, 7)
    page = render_html(report_of(trial), [trial])
    labels = re.findall(r'<text class="label"[^>]*><title>[^<]*</title>([^<]*)</text>', page)
    assert labels == ["setup · 200", "racer 1 · 200 · winner", "racer 2 · 409", "racer 3 · 409",
                      "/runs held · 200", "/stop · 200", "/runs after · 200", "released · 200",
                      "/runs cleanup · 200"]
    drawing = page[page.index("<details"):]
    assert drawing.count('<g class="call">') == 3  # setup, winner, released provider calls
    assert drawing.count('<line class="stop"') == 1
    assert ("<tr><td><code>race/losers-409</code></td><td><span class=\"valid\">valid</span>"
            "</td><td class=n>1</td><td class=n>0</td><td class=n>0</td></tr>") in page


def test_html_names_no_winner_when_the_racers_used_distinct_chats() -> None:
    trial = numbered(distinct_chats(("ok", 200), ("ok", 200)), 0, 7)
    page = render_html(report_of(trial), [trial])
    assert re.findall(r"</title>(racer [^<]*)</text>", page) == ["racer 0 · 200", "racer 1 · 200"]


def test_html_marks_the_lanes_an_invalid_property_cites() -> None:
    trial = numbered(invalid_trial(), 0, 7)
    page = render_html(report_of(trial), [trial])
    fills = re.findall(r'<rect x="0" y="\d+" width="\d+" height="18" fill="([^"]+)"/>', page)
    assert [k for k, fill in enumerate(fills) if fill == "#fde2e2"] == [2]  # racer 2: op 5
    assert "race/losers-409</code>: 1 of 2 losers not a JSON 409" in page


def test_a_provider_call_no_request_accounts_for_gets_its_own_lane() -> None:
    trial = numbered(model(), 0, 7)
    trial = dataclasses.replace(trial, provider=[*(trial.provider or []),
                                                 ProviderCall(3, "stranger", ns(1100))])
    page = render_html(report_of(trial), [trial])
    assert ">provider call 3 · nonce stranger</text>" in page


def test_html_escapes_hostile_strings_from_the_target() -> None:
    trial = numbered(patch(model(), WINNER, run_id=HOSTILE, code=HOSTILE), 0, 7, chat_id=HOSTILE)
    report = report_of(trial)
    report["trials"][0]["properties"]["race/one-winner"]["reason"] = HOSTILE
    page = render_html(report, [trial])
    tags = parse(page)
    assert [t for t, _ in tags.tags if t in ("script", "img")] == []
    assert "<script" not in page and "<img" not in page and "\x07" not in page
    assert clean(HOSTILE) in "".join(tags.text)


def test_html_makes_no_external_reference() -> None:
    trial = numbered(patch(model(), WINNER, run_id=HOSTILE), 0, 7)
    report = report_of(trial)
    report["config"]["target"] = "https://target.example/api"
    page = render_html(report, [trial])
    assert "Target https://target.example/api;" in "".join(parse(page).text)
    assert external_references(page) == []
    assert "default-src &#x27;none&#x27;" in page or "default-src 'none'" in page


def none_rich_trial() -> Trial:
    """The model with every value a history may lack left out: a setup turn without a role,
    a racer never answered, provider calls without a nonce (one a contact)."""
    trial = drop(patch(model(), 0, role=None), LOSER_B)
    calls = [*(trial.provider or []), ProviderCall(3, None, ns(1100), mode=None),  # type: ignore[arg-type]
             ProviderCall(4, None, ns(1102), disconnected_ns=ns(1103), complete=False)]
    return numbered(dataclasses.replace(trial, provider=calls), 0, 7)


def test_no_tooltip_label_or_table_cell_says_none() -> None:
    trial = none_rich_trial()
    report = report_of(trial)
    summary = report["trials"][0]
    summary.update(seed=None, winners=None, reproduce=None,
                   statuses={**summary["statuses"], "None": 1})
    report["reproduce"] = None
    for p in summary["properties"].values():  # the checkers' own words are not the renderer's
        p["reason"] = "reason"
    page = render_html(report, [trial])
    tags = parse(page)
    titles = re.findall(r"<title>([^<]*)</title>", page)
    labels = re.findall(r'<text class="label"[^>]*><title>[^<]*</title>([^<]*)</text>', page)
    assert titles and labels
    assert [t for t in titles if "None" in t] == []
    assert [label for label in labels if "None" in label] == []
    assert "None" not in "".join(tags.text)
    assert "turn · 200" in labels and "racer 3 · no answer" in labels
    assert "provider call 3 · no nonce" in labels
    assert "409×1, no answer×1" in page  # the report's "None" status key, in words
    assert "seed —" in page and "<pre>" not in page


def racing_trial() -> Trial:
    """A trial shaped like a real ``harness race --n 10`` one: the set-up turn 215 ms before
    the release, the burst answered within 45 ms, the winner held until the stop at +80 ms,
    then the released turn and the cleanup until +225 ms."""
    h = History(release_ns=ns(215))
    h.turn(100, 0, "s0", role="setup")
    h.stream(100, headers_ms=14, end_ms=67, run_id="run-s")
    h.runs(101, 68, "before", {"run-s": "finished"})
    for p in range(10):
        h.turn(p, 215.1 + p * 0.01, f"n{p}")
    for p in range(1, 10):
        h.refuse(p, 239 + p * 2.3)
    h.runs(101, 268, "held", {"run-s": "finished", "run-w": "running"})
    h.stop(102, 295, "run-w")
    h.stream(0, headers_ms=248.6, end_ms=317, run_id="run-w", terminal="abort",
             first_frame_ns=ns(251))
    h.runs(101, 318, "after", {"run-w": "aborted"})
    h.turn(103, 379, "r0", role="released")
    h.stream(103, headers_ms=393, end_ms=422, run_id="run-r")
    h.runs(104, 423, "cleanup", {"run-r": "succeeded"})
    calls = [ProviderCall(0, "s0", ns(56), tokens_sent=3, completed_ns=ns(57)),
             ProviderCall(1, "n0", ns(267), tokens_sent=1, first_token_ns=ns(267.5),
                          disconnected_ns=ns(301)),
             ProviderCall(2, "r0", ns(401), tokens_sent=3, completed_ns=ns(402))]
    return numbered(h.trial(provider=calls), 0, 7)


def racer_xs(page: str) -> list[float]:
    """The x of every racer's last-byte tick and first-byte dot in the drawing."""
    sent = re.findall(r'<line class="sent" x1="([\d.]+)"[^>]*><title>racer \d+: last byte', page)
    answered = re.findall(r'<circle cx="([\d.]+)"[^>]*><title>racer \d+: first byte', page)
    assert len(sent) == len(answered) == 10
    return [float(x) for x in sent + answered]


def test_the_racers_span_gets_most_of_the_timeline_width() -> None:
    trial = racing_trial()
    page = render_html(report_of(trial), [trial])
    xs = racer_xs(page)
    assert max(xs) - min(xs) >= 0.5 * PLOT_W  # was about 0.1 on one linear scale
    # the set-up turn is still drawn, on a compressed stretch at the left
    setup = re.findall(r'<line class="sent" x1="([\d.]+)"[^>]*><title>setup: last byte', page)
    assert len(setup) == 1 and PLOT_X <= float(setup[0]) <= PLOT_X + 0.1 * PLOT_W
    assert page.count('<rect class="compressed"') == 2  # before the burst and after it
    assert "axis compressed: " in page
    assert "compressed (shaded): before -2.6 ms and after +55.1 ms" in page
    axis = build_axis(build_timeline(trial))
    assert axis.focus().x1 - axis.focus().x0 == pytest.approx(FOCUS_SHARE * PLOT_W)
    assert [round(axis.x(t), 1) for t in (axis.lo, axis.hi)] == [PLOT_X, PLOT_X + PLOT_W]


def test_a_trial_without_an_answered_racer_is_drawn_at_one_scale() -> None:
    h = History(release_ns=ns(1000))
    h.turn(0, 0, "s0", role="setup")
    h.stream(0, headers_ms=5, end_ms=50, run_id="run-s")
    h.turn(1, 1000, "n1")  # never answered
    trial = numbered(h.trial(), 0, 7)
    assert len(build_axis(build_timeline(trial)).segments) == 1
    assert '<rect class="compressed"' not in render_html(report_of(trial), [trial])


def test_a_burst_that_already_fills_the_width_is_not_compressed() -> None:
    h = History(release_ns=ns(0))
    for p in range(3):
        h.turn(p, 0.01 * p, f"n{p}")
    h.stream(0, headers_ms=5, end_ms=6, run_id="run-w")
    h.refuse(1, 30)
    h.refuse(2, 40)
    axis = build_axis(build_timeline(numbered(h.trial(), 0, 7)))
    assert len(axis.segments) == 1


def test_html_draws_the_first_20_trials_and_every_invalid_one() -> None:
    trials = [numbered(invalid_trial() if k in (25, 40) else model(), k, k) for k in range(60)]
    page = render_html(report_of(*trials), trials)
    drawn = re.findall(r"<summary>Trial (\d+) ", page)
    assert drawn == [*map(str, range(20)), "25", "40"]
    assert "38 trials not drawn" in page


def test_html_leaves_out_racer_lanes_past_the_cap_but_keeps_the_winner() -> None:
    h = History(release_ns=ns(1000))
    for p in range(300):
        h.turn(p, 1000, f"n{p}")
    for p in range(299):
        h.refuse(p, 1010)
    h.stream(299, headers_ms=1005, end_ms=1100, run_id="run-w")
    trial = numbered(h.trial(), 0, 7)
    page = render_html(report_of(trial), [trial])
    assert page.count('<g class="lane">') == 240
    assert "racer 299 · 200 · winner" in page
    assert "60 racer lanes not drawn" in page


# -- scenarios (harness run / conformance) -------------------------------------------------------

def scenario_report() -> dict[str, Any]:
    report = report_of(numbered(model(), 0, 7, scenario="double-submit"))
    report["scenarios"] = {
        "double-submit": {"summary": "N=2, the browser double-click", "skipped": None,
                          "trials": 1, "verdict": "valid"},
        "db-outage": {"summary": "begin fails", "skipped": "needs db-control (<control>)",
                      "trials": 0, "verdict": "skipped"}}
    return report


def test_a_skipped_scenario_validates_and_is_a_skipped_junit_case() -> None:
    report = scenario_report()
    assert validate(report) == []
    root = ET.fromstring(render_junit(report))
    assert (root.get("tests"), root.get("skipped")) == ("13", "1")
    suite = root.findall("testsuite")[-1]
    assert [(suite.get("name"), c.get("classname"), c.get("name"), s.get("message"))
            for c in suite.iter("testcase") for s in c.iter("skipped")] == [
        ("skipped scenarios", "db-outage", "db-outage [not run]",
         "skipped: needs db-control (<control>)")]


def test_markdown_and_html_list_the_scenarios() -> None:
    report = scenario_report()
    text = render_markdown(report)
    assert ("| scenario | verdict | trials | note |\n|---|---|--:|---|\n"
            "| double-submit | valid | 1 | N=2, the browser double-click |\n"
            "| db-outage | skipped | 0 | needs db-control (&lt;control&gt;) |\n") in text
    assert ("**Not tested** (1 scenario skipped) (`--strict` makes a skip inconclusive):\n\n"
            "- db-outage: needs db-control (&lt;control&gt;)\n") in text
    report["strict"] = True
    assert "**Not tested** (1 scenario skipped):\n" in render_markdown(report)
    page = render_html(report, [])
    assert ("<tr><td><code>db-outage</code></td><td><span class=\"skipped\">skipped</span></td>"
            "<td class=n>0</td><td>needs db-control (&lt;control&gt;)</td></tr>") in page


def test_settings_left_to_each_scenario_say_so() -> None:
    report = scenario_report()
    report["config"] = {"command": "run", "n": None, "trials": None, "seed": 7,
                        "sync": "last-byte", "faults": [], "target": "embedded"}
    assert ("Config: target embedded; n per scenario; trials per scenario; seed 7; sync "
            "last-byte; faults none.") in render_markdown(report)
    assert ("Target embedded; n per scenario; trials per scenario; sync last-byte; faults none."
            ) in render_html(report, [])


def test_one_scenario_that_ran_needs_no_scenario_table_in_markdown() -> None:
    report = scenario_report()
    del report["scenarios"]["db-outage"]
    assert "| scenario |" not in render_markdown(report)


# -- rebuilding a report from a saved history ----------------------------------------------------

RUN_META = {"schema": 1, "target": "embedded", "faults": ["blanket-500"], "seed": 7,
            "scenarios": ["same-chat-burst"]}


def test_a_rebuilt_report_has_the_runs_config_reproduce_lines_and_scenarios() -> None:
    trials = [numbered(model(), k, 7 + k, scenario="same-chat-burst", sync="last-byte",
                       provider_access=True, db_access=True) for k in range(2)]
    report = rebuild_report(RUN_META, trials, [check_trial(t, SINGLE_CHAT_RACE) for t in trials],
                            {"same-chat-burst": "the headline"})
    assert report["config"] == {
        "seed": 7, "faults": ["blanket-500"], "target": "embedded",
        "scenarios": ["same-chat-burst"], "n": 3, "sync": "last-byte", "provider_access": True,
        "db_access": True, "losers_fast_bound_ms": 1000}
    assert report["reproduce"] == "harness race --n 3 --seed 7 --trials 2 --fault blanket-500"
    assert [t["reproduce"] for t in report["trials"]] == [
        "harness race --n 3 --seed 7 --fault blanket-500",
        "harness race --n 3 --seed 8 --fault blanket-500"]
    assert report["scenarios"] == {"same-chat-burst": {
        "summary": "the headline", "skipped": None, "trials": 2, "verdict": "valid"}}
    assert validate(report) == []


@pytest.mark.parametrize(("run_meta", "seed", "scenario", "line"), [
    ({"seed": 5, "scenarios": ["double-submit", "stale-stop"]}, None, None,
     "harness run double-submit stale-stop --seed 5"),
    ({"seed": 5, "scenarios": ["double-submit"], "target": "https://t.example"}, 9,
     "double-submit", "harness run double-submit --seed 9 --trials 1 --target "
                      "https://t.example --token $HARNESS_TOKEN"),
    ({"seed": 5, "scenarios": ["mine"], "scenario_args": {"mine": "my/scen.toml"},
      "reproduce_flags": ["--target", "https://t", "--token", "$HARNESS_TOKEN", "--dsn",
                          '"$HARNESS_DSN"', "--provider-listen", "127.0.0.1:9"]}, 9, "mine",
     'harness run my/scen.toml --seed 9 --trials 1 --target https://t --token $HARNESS_TOKEN '
     '--dsn "$HARNESS_DSN" --provider-listen 127.0.0.1:9'),
    ({"seed": 5, "n": 4, "sync": "naive", "trials": 3}, None, None,
     "harness race --n 4 --seed 5 --trials 3 --sync naive"),
    ({"reproduce": "harness race --n 2 --seed 1"}, None, None, "harness race --n 2 --seed 1"),
])
def test_reproduce_lines_from_a_run_header(run_meta: dict[str, Any], seed: int | None,
                                           scenario: str | None, line: str) -> None:
    assert reproduce_from_history(run_meta, [], seed=seed, scenario=scenario) == line


# -- the report folder ---------------------------------------------------------------------------

def test_write_reports_writes_four_files_and_appends_the_step_summary(tmp_path: Path) -> None:
    trials = three_trials()
    report = report_of(*trials)
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    paths = write_reports(tmp_path / "out", report, trials,
                          env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert {k: p.name for k, p in paths.items()} == {
        "json": "report.json", "junit": "junit.xml", "markdown": "summary.md",
        "html": "report.html"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "junit.xml", "report.html", "report.json", "summary.md"]
    assert paths["json"].read_text() == render_json(report)
    assert summary.read_text() == "earlier step\n" + render_markdown(report)


def test_write_reports_without_a_step_summary_writes_only_the_folder(tmp_path: Path) -> None:
    trials = three_trials()
    write_reports(tmp_path, report_of(*trials), trials, env={})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "junit.xml", "report.html", "report.json", "summary.md"]


# -- Hypothesis: every renderer is total ---------------------------------------------------------

hostile_text = st.text(max_size=30) | st.sampled_from([HOSTILE, "]]>", "--><!--", "`" * 5])


@st.composite
def hostile_trials(draw: st.DrawFn) -> Trial:
    """A generated race whose strings from the target (run ids, codes, errors) are hostile."""
    trial = draw(race_trials())
    ops = []
    for op in trial.ops:
        value = dict(op.value)
        for key in ("run_id", "code", "error", "terminal"):
            if key in value and value[key] is not None and draw(st.booleans()):
                value[key] = draw(hostile_text)
        ops.append(dataclasses.replace(op, value=value))
    return dataclasses.replace(trial, ops=ops,
                               meta={**trial.meta, "seed": draw(st.integers(0, 2**32)),
                                     "scenario": draw(st.none() | hostile_text)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_trials(), min_size=1, max_size=3))
def test_every_renderer_is_total_and_junit_parses(trials: list[Trial]) -> None:
    trials = [dataclasses.replace(t, meta={**t.meta, "trial": k}) for k, t in enumerate(trials)]
    report = report_of(*trials)
    assert validate(report) == []
    root = ET.fromstring(render_junit(report))
    assert len(list(root.iter("testcase"))) == len(trials) * len(SINGLE_CHAT_RACE)
    assert len(render_markdown(report).encode()) <= MAX_BYTES
    page = render_html(report, trials)
    assert external_references(page) == []
    assert [t for t, _ in parse(page).tags if t == "script"] == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trial_lists())
def test_the_timeline_is_total_on_arbitrary_histories(trials: list[Trial]) -> None:
    """Ops with any f, type and value, provider calls with any fields: drawn, never raised."""
    report = {"verdict": "unknown", "trials": [
        {"trial": t.meta["trial"], "verdict": "unknown", "properties": {}} for t in trials]}
    page = render_html(report, trials)
    assert page.count("<svg class=\"timeline\"") == sum(1 for t in trials if t.ops)
    assert external_references(page) == []


def test_properties_not_checkable_through_the_adapter_are_listed_with_why() -> None:
    """A target's adapter that gives no evidence for a property: summary.md and report.html
    name it and the reason, so nobody reads its absence as a pass."""
    report = {**report_of(*three_trials()), "adapter": {"name": "langgraph"},
              "not_checkable": {"race/holder-named": "its 409 names no holder"}}
    summary = render_markdown(report)
    assert "**Not checkable through adapter langgraph** (1 property)" in summary
    assert "- race/holder-named: its 409 names no holder" in summary
    html = render_html(report, three_trials())
    assert "Not checkable through adapter langgraph" in html
    assert "its 409 names no holder" in html
    assert "Not checkable" not in render_markdown(report_of(*three_trials()))
