"""``junit.xml``: one test case per property per trial (conformance.md §2, §5). Pure.

Layout, as GitHub, GitLab and Jenkins read it::

    <testsuites name="raceharness" tests failures errors skipped time>
      <testsuite name="race trial 0" tests failures errors skipped time>   (one per trial)
        <properties> seed, target, n, sync, faults, release/arrival spread, reproduce
        <testcase classname="<scenario or race>" name="<property> [trial k]" time="<s>">
          <failure message="<reason>" type="invalid">reason, offending ops, reproduce</failure>
          | <skipped message="inconclusive: <reason>"/>
      <testsuite name="skipped scenarios">   (when a scenario could not run on this target)
        <testcase classname="<scenario>" name="<scenario> [not run]" time="0"><skipped …/>

A property ``invalid`` is a failure, ``unknown`` is skipped (inconclusive), ``valid`` passes.
Escaping is ElementTree's; characters XML cannot carry are replaced first (:mod:`.text`).

Times (seconds) come from the history, never from a clock: a trial's time is from its first
op to its last (``time_ns``, the harness's monotonic clock). Every property of a trial is
judged on the whole trial at once, so none has a time of its own: the trial's time is split
evenly over its test cases, so that they add up to the suite's time (CI summaries add them up),
and the suites add up to the root's. A trial whose history is not given gets ``time="0"``, as
does a scenario that never ran.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from raceharness.core.history import Trial
from raceharness.render.text import clean, ops_note

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


def trial_seconds(trial: Trial | None) -> float:
    """The trial's time: its first op to its last (0 without a history or a usable time)."""
    times = [op.time_ns for op in (trial.ops if trial is not None else ())
             if isinstance(op.time_ns, int | float) and not isinstance(op.time_ns, bool)
             and math.isfinite(op.time_ns)]
    return (max(times) - min(times)) / 1e9 if times else 0.0


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _split_ms(seconds: float, parts: int) -> list[float]:
    """``seconds`` split into ``parts`` whole-millisecond shares adding up to it exactly."""
    total = round(seconds * 1000)
    base, extra = divmod(total, parts) if parts else (0, 0)
    return [(base + (k < extra)) / 1000 for k in range(parts)]


def _testcase(suite: ET.Element, report: Mapping[str, Any], trial: Mapping[str, Any],
              name: str, result: Mapping[str, Any], seconds: float) -> str:
    case = ET.SubElement(suite, "testcase", {
        "classname": clean(trial.get("scenario") or "race"),
        "name": clean(f"{name} [trial {trial.get('trial')}]"),
        "time": _seconds(seconds)})
    verdict = result.get("verdict")
    reason = clean(result.get("reason", ""))
    if verdict == "invalid":
        failure = ET.SubElement(case, "failure", {"message": clean(reason, MESSAGE_LIMIT),
                                                  "type": "invalid"})
        note = ops_note(reason, result.get("ops")) or "as cited above"
        failure.text = (f"{clean(reason, BODY_LIMIT)}\n"
                        f"offending: {note} "
                        f"(trial {trial.get('trial')} of history.jsonl)\n"
                        f"seed: {trial.get('seed')}\n"
                        f"reproduce: {clean(_reproduce(report, trial))}\n")
    elif verdict != "valid":
        ET.SubElement(case, "skipped",
                      {"message": clean(f"inconclusive: {reason}", MESSAGE_LIMIT)})
    return str(verdict)


def render_junit(report: Mapping[str, Any], trials: Sequence[Trial] = ()) -> str:
    """The report as JUnit XML (a complete document, UTF-8 declared). ``trials`` are the
    histories behind ``report["trials"]`` (matched by trial number, else by position), for the
    times; without them every time is 0."""
    root = ET.Element("testsuites", {"name": "raceharness"})
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    by_number = {t.meta.get("trial"): t for t in trials}
    total_seconds = 0.0
    for k, trial in enumerate(report.get("trials") or ()):
        history = by_number.get(trial.get("trial"), trials[k] if k < len(trials) else None)
        seconds = round(trial_seconds(history), 3)
        total_seconds += seconds
        properties = trial.get("properties") or {}
        shares = _split_ms(seconds, len(properties))
        scenario = trial.get("scenario") or "race"
        suite = ET.SubElement(root, "testsuite", {
            "name": clean(f"{scenario} trial {trial.get('trial')}"),
            "id": clean(trial.get("trial"))})
        props = ET.SubElement(suite, "properties")
        for key, value in _suite_properties(report, trial):
            ET.SubElement(props, "property", {"name": key, "value": value})
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for (name, result), share in zip(properties.items(), shares, strict=True):
            verdict = _testcase(suite, report, trial, name, result, share)
            counts["tests"] += 1
            counts["failures"] += verdict == "invalid"
            counts["skipped"] += verdict not in ("valid", "invalid")
        suite.attrib.update({"tests": str(counts["tests"]), "failures": str(counts["failures"]),
                             "errors": "0", "skipped": str(counts["skipped"]),
                             "time": _seconds(seconds)})
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
                        "errors": "0", "skipped": str(totals["skipped"]),
                        "time": _seconds(total_seconds)})
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'

