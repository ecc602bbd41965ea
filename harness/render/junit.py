"""``junit.xml``: one test case per property per trial (conformance.md §2, §5). Pure.

Layout, as GitHub, GitLab and Jenkins read it::

    <testsuites name="raceharness" tests failures errors skipped time>
      <testsuite name="race trial 0" tests failures errors skipped time>   (one per trial)
        <properties> seed, target, n, sync, faults, release/arrival spread, reproduce
        <testcase classname="<scenario or race>" name="<property> [trial k]" time="0">
          <failure message="<reason>" type="invalid">reason, offending ops, reproduce</failure>
          | <skipped message="inconclusive: <reason>"/>
      <testsuite name="skipped scenarios">   (when a scenario could not run on this target)
        <testcase classname="<scenario>" name="<scenario> [not run]"><skipped message=…/>

A property ``invalid`` is a failure, ``unknown`` is skipped (inconclusive), ``valid`` passes.
Escaping is ElementTree's; characters XML cannot carry are replaced first (:mod:`.text`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from raceharness.render.text import clean, ops_text

MESSAGE_LIMIT = 1000   # characters of a reason in a message attribute
BODY_LIMIT = 20_000    # characters of a reason in a failure body


def _suite_properties(report: Mapping[str, Any], trial: Mapping[str, Any]) -> list[tuple[str, str]]:
    config = report.get("config") or {}
    pairs = [("seed", trial.get("seed")), ("target", config.get("target")),
             ("scenario", trial.get("scenario")), ("n", trial.get("n", config.get("n"))),
             ("sync", trial.get("sync", config.get("sync"))),
             ("faults", ",".join(map(str, config.get("faults") or ())) or None),
             ("release_spread_ms", trial.get("release_spread_ms")),
             ("server_arrival_spread_ms", trial.get("server_arrival_spread_ms")),
             ("reproduce", _reproduce(report, trial))]
    return [(name, clean(value)) for name, value in pairs if value is not None]


def _reproduce(report: Mapping[str, Any], trial: Mapping[str, Any]) -> str:
    return str(trial.get("reproduce") or report.get("reproduce") or "")


def _testcase(suite: ET.Element, report: Mapping[str, Any], trial: Mapping[str, Any],
              name: str, result: Mapping[str, Any]) -> str:
    case = ET.SubElement(suite, "testcase", {
        "classname": clean(trial.get("scenario") or "race"),
        "name": clean(f"{name} [trial {trial.get('trial')}]"),
        "time": "0"})
    verdict = result.get("verdict")
    reason = clean(result.get("reason", ""))
    if verdict == "invalid":
        failure = ET.SubElement(case, "failure", {"message": clean(reason, MESSAGE_LIMIT),
                                                  "type": "invalid"})
        failure.text = (f"{clean(reason, BODY_LIMIT)}\n"
                        f"offending {ops_text(result.get('ops'))} "
                        f"(trial {trial.get('trial')} of history.jsonl)\n"
                        f"seed: {trial.get('seed')}\n"
                        f"reproduce: {clean(_reproduce(report, trial))}\n")
    elif verdict != "valid":
        ET.SubElement(case, "skipped",
                      {"message": clean(f"inconclusive: {reason}", MESSAGE_LIMIT)})
    return str(verdict)


def render_junit(report: Mapping[str, Any]) -> str:
    """The report as JUnit XML (a complete document, UTF-8 declared)."""
    root = ET.Element("testsuites", {"name": "raceharness"})
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for trial in report.get("trials") or ():
        scenario = trial.get("scenario") or "race"
        suite = ET.SubElement(root, "testsuite", {
            "name": clean(f"{scenario} trial {trial.get('trial')}"),
            "id": clean(trial.get("trial"))})
        props = ET.SubElement(suite, "properties")
        for key, value in _suite_properties(report, trial):
            ET.SubElement(props, "property", {"name": key, "value": value})
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for name, result in (trial.get("properties") or {}).items():
            verdict = _testcase(suite, report, trial, name, result)
            counts["tests"] += 1
            counts["failures"] += verdict == "invalid"
            counts["skipped"] += verdict not in ("valid", "invalid")
        suite.attrib.update({"tests": str(counts["tests"]), "failures": str(counts["failures"]),
                             "errors": "0", "skipped": str(counts["skipped"]), "time": "0"})
        for key in totals:
            totals[key] += counts[key]
    skipped = {name: info for name, info in (report.get("scenarios") or {}).items()
               if isinstance(info, Mapping) and info.get("skipped")}
    if skipped:
        suite = ET.SubElement(root, "testsuite", {
            "name": "skipped scenarios", "tests": str(len(skipped)), "failures": "0",
            "errors": "0", "skipped": str(len(skipped)), "time": "0"})
        for name, info in skipped.items():
            case = ET.SubElement(suite, "testcase", {"classname": clean(name),
                                                     "name": clean(f"{name} [not run]"),
                                                     "time": "0"})
            ET.SubElement(case, "skipped", {"message": clean(f"skipped: {info['skipped']}",
                                                             MESSAGE_LIMIT)})
        totals["tests"] += len(skipped)
        totals["skipped"] += len(skipped)
    root.attrib.update({"tests": str(totals["tests"]), "failures": str(totals["failures"]),
                        "errors": "0", "skipped": str(totals["skipped"]), "time": "0"})
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'

