"""Every 200 stream follows the frame rules: conformance.md §2's ``stream/well-formed``. Pure.

Decisions
---------
- ``stream/well-formed``: a start frame naming another chat than the one requested (or none)
  is malformed.
"""

from __future__ import annotations

from raceharness.core.checks.base import TERMINAL_FRAMES, CheckResult, _listing
from raceharness.core.checks.registry import check
from raceharness.core.checks.turns import Request, _ops, turns
from raceharness.core.history import Trial


def _stream_problems(t: Request) -> list[str]:
    frames, findings = t.frames, t.findings
    problems: list[str] = []
    if findings:
        first = findings[0]
        problems.append(f"finding {first.get('code') if isinstance(first, dict) else first}")
    if not frames or frames[0] != "start":
        problems.append(f"first frame {frames[0] if frames else None!r}, not 'start'")
    if t.run_id is None:
        problems.append("no runId")
    asked = t.asked_chat
    if asked is not None and t.started_chat != asked:
        problems.append("no chatId" if t.started_chat is None
                        else f"chatId {t.started_chat}, requested {asked}")
    terminals = sum(1 for f in frames if f in TERMINAL_FRAMES)
    if terminals != 1:
        problems.append(f"{terminals} terminal frames")
    if t.completion is None or t.completion.get("done") is not True or frames[-1:] != ["[DONE]"]:
        problems.append("no [DONE] last")
    return problems


@check("stream/well-formed", scope="race", evidence=("racers", "turns"),
       summary="every 200 stream follows the frame rules")
def stream_well_formed(trial: Trial) -> CheckResult:
    prop = "stream/well-formed"
    streams = [t for t in turns(trial) if t.outcome == "ok" and t.got_200]
    if not streams:
        return CheckResult(prop, "unknown", "no 200 stream to check")
    bad = [(t, p) for t in streams if (p := _stream_problems(t))]
    if bad:
        what = [f"op {t.index} ({', '.join(p)})" for t, p in bad]
        return CheckResult(prop, "invalid", f"{len(bad)} of {len(streams)} 200 streams malformed: "
                           f"{_listing(what)}", _ops(t for t, _ in bad))
    return CheckResult(prop, "valid", f"all {len(streams)} 200 streams well formed")
