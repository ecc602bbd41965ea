"""The evidence rule (conformance.md §2): a property is ``valid`` only on positive evidence,
``unknown`` with its reason when evidence is missing, ``invalid`` when evidence contradicts it.

Hand-made histories in the shapes ``program.py`` records (the models of ``test_checkers`` and
``test_scenario_checks``), each a small edit away from a valid model. Times in ms, stored in ns.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given

import tests.harness.core.test_checkers as rc
import tests.harness.core.test_scenario_checks as sc
from raceharness.core.checks import EVIDENCE, REGISTRY, Evidence, check
from raceharness.core.checks.base import CheckResult, Verdict
from raceharness.core.history import (
    DbSnapshot,
    ProviderCall,
    RunRow,
    Trial,
    dumps_trials,
    loads_trials,
)
from raceharness.core.properties import (
    CHECKERS,
    INTERRUPTED,
    RACE_CHECKERS,
    SCENARIO_CHECKERS,
    SINGLE_CHAT_RACE,
    check_trial,
)
from raceharness.core.scenario import ScenarioError, catalogue, loads_scenario
from raceharness.render.timeline import build_timeline
from tests.harness.core.test_checkers import (
    AFTER,
    CHAT,
    CLEANUP,
    HELD,
    LOSER_A,
    LOSER_B,
    MODEL_DB,
    MODEL_PROVIDER,
    RELEASED,
    SETUP,
    WINNER,
    History,
    drop,
    model,
    ns,
    patch,
    retype,
    with_calls,
    with_db,
    with_meta,
)


def verdict(trial: Trial, prop: str) -> CheckResult:
    return check_trial(trial, [prop])[prop]


def assert_result(trial: Trial, prop: str, expected: Verdict, reason: str,
                  ops: tuple[int, ...] | None = None) -> None:
    result = verdict(trial, prop)
    assert result.verdict == expected, result.reason
    assert reason in result.reason, result.reason
    assert "\n" not in result.reason
    if ops is not None:
        assert result.ops == ops, result.reason


def without_observers(trial: Trial) -> Trial:
    """The trial with every ``/runs`` and ``/run`` answer and every snapshot taken away."""
    return dataclasses.replace(trial, ops=[op for op in trial.ops if op.f not in ("runs", "run")],
                               db=None)


def after_rows(trial: Trial, rows: list[dict[str, str]], **value: object) -> Trial:
    return patch(trial, AFTER, runs=rows, **value)


WITHOUT_AFTER = [s for s in MODEL_DB if s.label != "after"]


# -- 1. race/winner-stoppable: an observation after the stop shows the run aborted -----------------

def test_winner_stoppable_without_an_observation_after_the_stop_is_unknown() -> None:
    trial = with_db(drop(model(), AFTER - 1, AFTER), WITHOUT_AFTER)
    assert_result(trial, "race/winner-stoppable", "unknown",
                  "no observation after the stop shows run run-w aborted", ())


def test_winner_stoppable_with_the_run_gone_from_the_list_is_invalid() -> None:
    trial = with_db(after_rows(model(), [{"id": "run-s", "status": "finished"}]), WITHOUT_AFTER)
    assert_result(trial, "race/winner-stoppable", "invalid",
                  "op 13: run run-w gone from the list of its chat after the stop", (AFTER,))


def test_winner_stoppable_with_the_run_gone_from_the_db_after_snapshot_is_invalid() -> None:
    trial = with_db(model(), [*MODEL_DB[:2], dataclasses.replace(MODEL_DB[2], runs=(
        RunRow("run-s", CHAT, "finished"),))])
    assert_result(trial, "race/winner-stoppable", "invalid",
                  "db after snapshot: run run-w gone from the list of its chat", ())


def test_a_truncated_list_without_the_run_decides_nothing() -> None:
    trial = with_db(after_rows(model(), [{"id": "run-s", "status": "finished"}], truncated=True),
                    WITHOUT_AFTER)
    assert_result(trial, "race/winner-stoppable", "unknown",
                  "no observation after the stop shows run run-w aborted")


@pytest.mark.parametrize("status", ["running", "pending"])
def test_winner_stoppable_still_active_in_the_after_stop_answer_is_invalid(status: str) -> None:
    h = History(release_ns=ns(1000))
    for op in model().ops[:AFTER - 1]:
        h.ops.append(op)
    h.runs(12, 1230, "after-stop", {"run-w": status, "run-s": "finished"})   # 12, 13
    trial = with_db(h.trial(provider=list(MODEL_PROVIDER)), WITHOUT_AFTER)
    assert_result(trial, "race/winner-stoppable", "invalid",
                  f"op 13: run run-w is {status!r}: still active after the stop", (13,))


def test_an_after_stop_answer_showing_the_run_aborted_is_the_evidence() -> None:
    trial = patch(model(), AFTER - 1, phase="after-stop")
    assert_result(trial, "race/winner-stoppable", "valid", "op 13 shows run run-w aborted")
    db_only = with_db(drop(model(), AFTER - 1, AFTER), MODEL_DB)
    assert_result(db_only, "race/winner-stoppable", "valid",
                  "db after snapshot shows run run-w aborted")


def test_a_run_answer_shows_only_the_latest_run_so_its_absence_decides_nothing() -> None:
    """Without a /runs route the after-stop evidence is a /run answer: the chat's latest run."""
    ops = [dataclasses.replace(op, f="run") if op.index in (AFTER - 1, AFTER) else op
           for op in model().ops]
    trial = dataclasses.replace(model(), ops=ops, db=WITHOUT_AFTER)
    assert verdict(trial, "race/winner-stoppable").verdict == "valid"  # it lists run-w aborted
    other = patch(trial, AFTER, runs=[{"id": "run-r", "status": "running"}])
    assert_result(other, "race/winner-stoppable", "unknown", "no observation after the stop")


# -- 2. race/no-untracked-run: every 200 stream's run is one the service reports ------------------

def test_a_200_with_an_invented_run_id_is_untracked() -> None:
    trial = patch(model(), RELEASED, run_id="run-invented")
    assert_result(trial, "race/no-untracked-run", "invalid",
                  "op 15: runId run-invented is reported by no observation: untracked (op 17 "
                  "lists every run of its chat)", (RELEASED,))


def test_a_loser_streaming_under_an_invented_run_id_is_untracked() -> None:
    """swallow-unique-violation: the loser streams 200 with a run id the service never lists."""
    trial = patch(model(), LOSER_A, status=200, code=None, json=False, run_id="run-x",
                  frames=["start", "text-delta", "finish", "[DONE]"], terminal="finish",
                  done=True, chat_id=CHAT)
    assert_result(trial, "race/no-untracked-run", "invalid",
                  "op 5: runId run-x is reported by no observation: untracked", (LOSER_A,))


def test_a_run_no_observation_covers_is_unknown_naming_it() -> None:
    trial = drop(model(), CLEANUP - 1, CLEANUP)
    assert_result(trial, "race/no-untracked-run", "unknown",
                  "missing evidence: no observation covers run run-r (op 15)")
    truncated = patch(model(), CLEANUP, truncated=True, runs=[{"id": "run-w", "status": "x"}])
    assert_result(truncated, "race/no-untracked-run", "unknown",
                  "no observation covers run run-r (op 15)")


def test_an_observation_before_the_stream_started_proves_nothing_of_it() -> None:
    early = dataclasses.replace(model(), ops=[  # asked at 1300, before run-r's headers at 1401
        dataclasses.replace(op, time_ns=ns(1300)) if op.index == CLEANUP - 1 else op
        for op in model().ops])
    trial = patch(early, CLEANUP, runs=[{"id": "run-s", "status": "finished"}])
    assert_result(trial, "race/no-untracked-run", "unknown", "no observation covers run run-r")


def test_any_phase_and_status_reports_a_run_and_the_setup_run_needs_one_too() -> None:
    trial = patch(model(), CLEANUP, runs=[{"id": "run-r", "status": "failed"}])
    assert verdict(trial, "race/no-untracked-run").verdict == "valid"
    no_setup = patch(patch(model(), HELD, runs=[{"id": "run-w", "status": "running"}]), AFTER,
                     runs=[{"id": "run-w", "status": "aborted"}])
    no_setup = patch(no_setup, CLEANUP, runs=[{"id": "run-r", "status": "succeeded"},
                                              {"id": "run-w", "status": "aborted"}])
    assert_result(with_db(no_setup, None), "race/no-untracked-run", "invalid",
                  "op 1: runId run-s is reported by no observation", (SETUP,))
    assert verdict(no_setup, "race/no-untracked-run").verdict == "valid"  # the db lists it


def test_a_holders_run_must_be_reported_too() -> None:
    trial = stop_then_burst()
    assert verdict(trial, "race/no-untracked-run").verdict == "valid"
    listed = [{"id": "run-w", "status": "aborted"}, {"id": "run-r", "status": "succeeded"}]
    hidden = patch(patch(patch(trial, 11, runs=[{"id": "run-w", "status": "running"}]), 13,
                         runs=listed), 17, runs=listed)
    assert_result(hidden, "race/no-untracked-run", "invalid",
                  "runId run-h is reported by no observation: untracked")


# -- 3. race/holder-named: activeRunId names the run that held the chat ----------------------------

def stop_then_burst(loser_active: str | None = "run-w", loser_ms: float = 1010) -> Trial:
    """A holder (run-h) stopped just before the release, then 1×200 (run-w) and 1×409."""
    h = History(release_ns=ns(1000))
    h.turn(9, 100, "h0", role="holder")                                        # 0
    h.stop(8, 990, "run-h")                                                    # 1, 2
    h.turn(1, 1000.00, "n1")                                                   # 3
    h.turn(2, 1000.01, "n2")                                                   # 4
    h.refuse(2, loser_ms, active_run_id=loser_active)                          # 5
    h.stream(9, headers_ms=105, end_ms=995, run_id="run-h", terminal="abort")  # 6
    h.stream(1, headers_ms=1005, end_ms=1220, run_id="run-w", terminal="abort",
             at_ms=1005)                                                        # 7
    h.turn(13, 1400, "r0", role="released")                                    # 8
    h.stream(13, headers_ms=1401, end_ms=1500, run_id="run-r")                 # 9
    h.runs(10, 1100, "held", {"run-w": "running", "run-h": "aborted"})         # 10, 11
    h.runs(14, 1600, "cleanup", {"run-r": "succeeded", "run-w": "aborted",     # 12, 13
                                 "run-h": "aborted"})
    h.runs(15, 1700, "after", {"run-w": "aborted"}, truncated=True)            # 14, 15
    h.runs(16, 1800, "after", {"run-w": "aborted", "run-h": "aborted",         # 16, 17
                               "run-r": "succeeded"})
    return h.trial(provider=[ProviderCall(0, "h0", ns(101), disconnected_ns=ns(991)),
                             ProviderCall(1, "n1", ns(1004), disconnected_ns=ns(1210)),
                             ProviderCall(2, "r0", ns(1402), completed_ns=ns(1450))])


def test_an_active_run_id_naming_no_run_of_the_chat_is_invalid() -> None:
    trial = patch(model(), LOSER_B, active_run_id="run-zz")
    assert_result(trial, "race/holder-named", "invalid",
                  "op 6: activeRunId run-zz names no run that held the chat", (LOSER_B,))
    # the answer itself was the conflict answer: race/losers-409 does not judge the holder
    assert verdict(trial, "race/losers-409").verdict == "valid"


def test_a_null_active_run_id_while_the_winner_was_active_is_invalid() -> None:
    assert_result(patch(model(), LOSER_A, active_run_id=None), "race/holder-named", "invalid",
                  "op 5: activeRunId null while run run-w was active", (LOSER_A,))
    missing = dataclasses.replace(model(), ops=[
        dataclasses.replace(op, value={k: v for k, v in op.value.items() if k != "active_run_id"})
        if op.index in (LOSER_A, LOSER_B) else op for op in model().ops])
    assert verdict(missing, "race/holder-named").verdict == "invalid"
    assert verdict(missing, "race/losers-409").verdict == "valid"


def test_a_null_active_run_id_when_no_known_run_was_active_is_allowed() -> None:
    # answered before the winner's 200 came and after the holder's stop: the holder had ended
    assert verdict(stop_then_burst(None, loser_ms=1003), "race/holder-named").verdict == "valid"
    assert verdict(stop_then_burst(None, loser_ms=1010), "race/holder-named").verdict == "invalid"
    # without the stop the holder never ended: null at 1003 is wrong too (holder-named reads
    # the stops)
    unstopped = drop(stop_then_burst(None, loser_ms=1003), 1, 2)
    assert_result(patch(unstopped, 6, end_ns=None), "race/holder-named", "invalid",
                  "op 5: activeRunId null while run run-h was active", (5,))


def test_the_holder_and_runs_seen_active_are_known_runs() -> None:
    assert verdict(stop_then_burst("run-h", loser_ms=1003), "race/holder-named").verdict == "valid"
    seen = patch(patch(model(), HELD, runs=[{"id": "run-w", "status": "running"},
                                            {"id": "run-q", "status": "pending"}]),
                 LOSER_A, active_run_id="run-q")
    assert verdict(seen, "race/holder-named").verdict == "valid"
    # seen active in a database snapshot only (holder-named reads db)
    in_db = with_db(patch(model(), LOSER_A, active_run_id="run-q"), [
        *MODEL_DB[:1], dataclasses.replace(MODEL_DB[1], runs=MODEL_DB[1].runs + (
            RunRow("run-q", CHAT, "running"),)), *MODEL_DB[2:]])
    assert verdict(in_db, "race/holder-named").verdict == "valid"
    assert verdict(with_db(in_db, None), "race/holder-named").verdict == "invalid"


def test_a_target_whose_409_cannot_name_the_holder_is_never_valid() -> None:
    trial = with_meta(patch(model(), LOSER_A, active_run_id="run-zz"), conflict_holder_id=False)
    assert_result(trial, "race/holder-named", "unknown",
                  "the target's conflict answer names no holder (meta conflict_holder_id: "
                  "false): nothing to check", ())
    assert verdict(with_meta(model(), conflict_holder_id=False),
                   "race/holder-named").verdict == "unknown"
    assert verdict(with_meta(model(), conflict_holder_id=True),
                   "race/holder-named").verdict == "valid"
    # the answer itself is still judged
    assert verdict(trial, "race/losers-409").verdict == "valid"
    assert verdict(patch(trial, LOSER_B, status=500, code=None),
                   "race/losers-409").verdict == "invalid"


def test_no_winner_on_a_chat_nothing_held_makes_every_409_a_false_conflict() -> None:
    idle = with_db(drop(rc.only_losers(), HELD - 1, HELD), None)
    assert_result(idle, "race/losers-409", "invalid",
                  "no racer got 200 and nothing held the chat, yet 3 racer(s) got 409: false "
                  "conflicts (ops 5, 6, 11)", (LOSER_A, LOSER_B, WINNER))
    # with a run seen active in the chat (a holder), the 409s may be right
    assert verdict(with_db(rc.only_losers(), None), "race/losers-409").verdict == "valid"
    # seen in a database snapshot only: losers-409 reads db (it declares it)
    assert verdict(drop(rc.only_losers(), HELD - 1, HELD), "race/losers-409").verdict == "valid"
    assert "db" in REGISTRY["race/losers-409"].evidence


def test_a_conflict_answer_whose_body_does_not_match_the_pattern_is_no_conflict_answer() -> None:
    busy = '{"code":"A_RUN_ALREADY_ACTIVE","message":"chat already has an active run"}'
    trial = with_meta(patch(patch(model(), LOSER_A, body=busy), LOSER_B, body="Bad Gateway"),
                      conflict={"pattern": "already has an active run"})
    assert_result(trial, "race/losers-409", "invalid",
                  "1 of 2 losers not a JSON 409 A_RUN_ALREADY_ACTIVE matching /already has an "
                  "active run/: op 6", (LOSER_B,))
    assert verdict(patch(trial, LOSER_B, body=busy), "race/losers-409").verdict == "valid"
    # holder-named reads only the answers that are the conflict answer: op 6 is losers-409's
    assert_result(trial, "race/holder-named", "valid",
                  "conflict answers named a run that held the chat")


# -- 4. an empty ledger is missing evidence --------------------------------------------------------

@pytest.mark.parametrize("prop", ["race/no-loser-provider-call", "race/no-untracked-run"])
def test_an_empty_provider_ledger_is_unknown(prop: str) -> None:
    assert_result(with_calls(model(), []), prop, "unknown",
                  "the provider ledger is empty: nothing shows the target calls the fake "
                  "provider")


def test_an_empty_ledger_still_fails_winner_provider_call() -> None:
    assert verdict(with_calls(model(), []), "race/winner-provider-call").verdict == "invalid"


# -- 5. contacts: connections that never sent a whole request --------------------------------------

CONTACT = ProviderCall(3, None, ns(1002), disconnected_ns=ns(1003), complete=False)


def test_an_unattributed_contact_during_the_burst_is_a_loser_contact() -> None:
    trial = with_calls(model(), [*MODEL_PROVIDER, CONTACT])
    assert_result(trial, "race/no-loser-provider-call", "invalid",
                  "2 provider contacts for 1 winner(s): 1 unattributed contact(s)")
    nameless = ProviderCall(3, None, ns(1002), completed_ns=ns(1100))  # complete, no marker
    assert_result(with_calls(model(), [*MODEL_PROVIDER, nameless]),
                  "race/no-loser-provider-call", "invalid", "1 unattributed contact(s)")


def test_a_contact_before_the_release_is_not_the_bursts() -> None:
    early = dataclasses.replace(CONTACT, arrival_ns=ns(900), disconnected_ns=ns(901))
    trial = with_calls(model(), [*MODEL_PROVIDER, early])
    assert verdict(trial, "race/no-loser-provider-call").verdict == "valid"
    assert verdict(trial, "race/no-untracked-run").verdict == "valid"  # a contact is no call


def test_a_lone_contact_no_more_than_the_winners_is_not_a_loser_contact() -> None:
    calls = [c for c in MODEL_PROVIDER if c.nonce != "n1"] + [CONTACT]
    assert_result(with_calls(model(), calls), "race/no-loser-provider-call", "valid",
                  "1 unattributed contact(s)")


# -- 6. several winners: attribution by nonce is ambiguous -----------------------------------------

def two_winners(extra_calls: int = 0) -> Trial:
    """The model where loser A also got 200 (run-x, listed everywhere) and has its own call."""
    trial = patch(model(), LOSER_A, status=200, code=None, json=False, run_id="run-x",
                  active_run_id=None, frames=["start", "text-delta", "abort", "[DONE]"],
                  terminal="abort", done=True, chat_id=CHAT, end_ns=ns(1230))
    calls = [*MODEL_PROVIDER, ProviderCall(3, "n2", ns(1012), disconnected_ns=ns(1215))]
    calls += [ProviderCall(4 + k, "n1", ns(1013)) for k in range(extra_calls)]
    return with_calls(trial, calls)


def test_several_winners_make_winner_provider_call_unknown() -> None:
    assert_result(two_winners(), "race/winner-provider-call", "unknown",
                  "attribution ambiguous: 2 racers got 200 on the chat (ops 5, 11)")


def test_several_winners_no_more_calls_than_winners_is_unknown_not_a_loser_call() -> None:
    result = verdict(two_winners(), "race/no-loser-provider-call")
    assert (result.verdict, "attribution ambiguous" in result.reason) == ("unknown", True)
    assert "←" not in result.reason  # no call is credited to one racer


def test_several_winners_with_more_calls_than_winners_is_invalid() -> None:
    result = verdict(two_winners(extra_calls=1), "race/no-loser-provider-call")
    assert (result.verdict, result.reason) == (
        "invalid", "3 provider contacts for 2 winner(s): 0 unattributed contact(s) after the "
        "release")


def test_a_call_with_the_nonce_of_a_racer_that_got_no_200_is_invalid_whatever_the_winners() -> None:
    trial = with_calls(two_winners(), [*(two_winners().provider or []),
                                       ProviderCall(5, "n3", ns(1014))])
    assert_result(trial, "race/no-loser-provider-call", "invalid",
                  "1 provider call(s) carry a loser's nonce: call 5 ← op 6", (LOSER_B,))


def test_the_timeline_draws_ambiguous_calls_on_lanes_of_their_own() -> None:
    lanes = build_timeline(two_winners()).lanes
    own = [lane.label for lane in lanes if lane.label.startswith("provider ")]
    assert own == ["provider call 1 · attribution ambiguous",
                   "provider call 3 · attribution ambiguous"]
    racers = [lane for lane in lanes if lane.label.startswith("racer ")]
    assert [len(lane.provider) for lane in racers] == [0, 0, 0]
    assert [len(lane.provider) for lane in build_timeline(model()).lanes
            if lane.label.startswith("racer ")] == [1, 0, 0]


def test_the_timeline_draws_a_contact_on_a_lane_of_its_own() -> None:
    lanes = build_timeline(with_calls(model(), [*MODEL_PROVIDER, CONTACT])).lanes
    assert [(lane.label, lane.offending) for lane in lanes
            if lane.label.startswith("provider ")] == [("provider contact 3 · no request", True)]


# -- 7. stream/well-formed: the start frame names the chat asked for -------------------------------

def test_a_start_frame_naming_another_chat_is_malformed() -> None:
    assert_result(patch(model(), WINNER, chat_id="chat-2"), "stream/well-formed", "invalid",
                  "op 11 (chatId chat-2, requested chat-1)", (WINNER,))
    assert_result(patch(model(), RELEASED, chat_id=None), "stream/well-formed", "invalid",
                  "op 15 (no chatId)", (RELEASED,))


def test_a_new_chats_start_frame_names_whatever_chat_was_created() -> None:
    trial = patch(patch(model(), 0, chat_id=None), SETUP, chat_id="chat-new")
    assert verdict(trial, "stream/well-formed").verdict == "valid"


# -- 10. an interrupted trial decides nothing ------------------------------------------------------

def test_a_trial_that_never_ended_is_unknown_for_every_property_after_loading() -> None:
    cut = dataclasses.replace(patch(model(), LOSER_A, status=500, code=None),
                              meta={k: v for k, v in model().meta.items() if k != "ended"})
    assert verdict(cut, "race/losers-409").verdict == "invalid"  # in memory: not marked
    _, [loaded] = loads_trials(dumps_trials([cut], {"target": "embedded"}))
    assert loaded.meta["interrupted"] is True
    results = check_trial(loaded, list(CHECKERS))
    assert {r.verdict for r in results.values()} == {"unknown"}
    assert {r.reason for r in results.values()} == {INTERRUPTED}
    assert INTERRUPTED == ("the trial was interrupted before it completed (Ctrl-C): nothing it "
                           "recorded can decide")


def test_a_trial_the_engine_marked_interrupted_is_unknown_even_when_it_ended() -> None:
    results = check_trial(with_meta(model(), interrupted=True))
    assert {r.verdict for r in results.values()} == {"unknown"}


# -- 11. every property: evidence stripped → unknown, evidence contradicted → invalid -------------

Make = Callable[[], Trial]

STRIPPED: dict[str, list[Make]] = {
    "race/overlap-achieved": [lambda: drop(model(), 4, LOSER_B)],
    "race/one-winner": [lambda: retype(retype(retype(model(), WINNER, "fail"), LOSER_A, "fail"),
                                       LOSER_B, "fail")],
    "race/losers-409": [lambda: retype(retype(model(), LOSER_A, "fail"), LOSER_B, "fail")],
    "race/holder-named": [lambda: retype(retype(model(), LOSER_A, "fail"), LOSER_B, "fail"),
                          lambda: with_meta(model(), conflict_holder_id=False),
                          lambda: with_meta(model(), conflict={"holder": ""})],
    "race/losers-fast": [lambda: retype(retype(model(), LOSER_A, "fail"), LOSER_B, "fail")],
    "race/no-loser-provider-call": [lambda: with_calls(model(), None),
                                    lambda: with_calls(model(), [])],
    "race/winner-provider-call": [lambda: with_calls(model(), None)],
    "race/no-untracked-run": [lambda: without_observers(model()),
                              lambda: with_calls(model(), None),
                              lambda: with_calls(model(), [])],
    "race/no-loser-writes": [lambda: with_db(model(), None)],
    "race/winner-stoppable": [lambda: without_observers(model()),
                              lambda: with_calls(model(), None)],
    "race/released": [lambda: drop(model(), RELEASED - 1, RELEASED)],
    "stream/well-formed": [lambda: retype(retype(retype(model(), SETUP, "fail"), WINNER, "fail"),
                                          RELEASED, "fail")],
    "chats/independent": [lambda: rc.distinct_chats(("fail", None), ("fail", None))],
    "chats/one-winner-each": [lambda: rc.many_chats((rc.OK200, ("info", None)),
                                                    (rc.OK409, rc.OK200))],
    "chats/created-once": [lambda: _without_ops(sc.created_once(), "chats"),
                           lambda: sc.created_once(None, status=0)],
    "run/expected-end": [lambda: without_observers(sc.expected_end())],
    "stop/stale-ignored": [lambda: without_observers(sc.stale_stop())],
    "auth/foreign-denied": [lambda: without_observers(sc.foreign_user()),
                            lambda: with_calls(sc.foreign_user(), None)],
    "input/rejected-cleanly": [lambda: with_db(with_calls(sc.bad_inputs(), None), None)],
    "outage/fails-closed": [lambda: with_calls(sc.outage(), None)],
    "outage/runs-settle": [lambda: without_observers(sc.mid_stream())],
    "recovery/lease-reclaims": [lambda: without_observers(sc.crash_recovery())],
    "storm/runs-end": [lambda: without_observers(sc.storm())],
}

CONTRADICTED: dict[str, list[Make]] = {
    "race/one-winner": [lambda: two_winners()],
    "race/losers-409": [lambda: patch(model(), LOSER_A, status=500, code=None),
                        lambda: with_db(drop(rc.only_losers(), HELD - 1, HELD), None),
                        lambda: rc.bodies(rc.PATTERN, rc.BUSY_BODY, rc.OTHER_BODY)],
    "race/holder-named": [lambda: patch(model(), LOSER_A, active_run_id="run-zz"),
                          lambda: patch(model(), LOSER_A, active_run_id=None)],
    "race/losers-fast": [lambda: with_meta(model(), losers_fast_bound_ms=10.5)],
    "race/no-loser-provider-call": [lambda: with_calls(model(), [*MODEL_PROVIDER, CONTACT])],
    "race/winner-provider-call": [lambda: with_calls(model(), [
        *MODEL_PROVIDER, ProviderCall(3, "n1", ns(1006))])],
    "race/no-untracked-run": [lambda: patch(model(), RELEASED, run_id="run-invented")],
    "race/no-loser-writes": [lambda: with_db(model(), [*MODEL_DB[:2], dataclasses.replace(
        MODEL_DB[2], runs=MODEL_DB[2].runs + (RunRow("run-x", CHAT, "running"),))])],
    "race/winner-stoppable": [lambda: after_rows(model(), [{"id": "run-w", "status": "running"}]),
                              lambda: with_db(after_rows(model(), []), WITHOUT_AFTER)],
    "race/released": [lambda: patch(model(), RELEASED, status=409, run_id=None)],
    "stream/well-formed": [lambda: patch(model(), WINNER, chat_id="chat-2")],
    "chats/independent": [lambda: rc.distinct_chats(("ok", 200), ("ok", 409))],
    "chats/one-winner-each": [lambda: rc.many_chats((rc.OK200, rc.OK200), (rc.OK409, rc.OK200))],
    "chats/created-once": [lambda: sc.created_once(2), lambda: sc.created_once(0)],
    "run/expected-end": [lambda: patch(sc.expected_end(), sc.FINAL,
                                       run={**sc.WON_RUN, "status": "running"})],
    "stop/stale-ignored": [sc.stale_rows(sc.AFTER_STALE, **{"run-s": "aborted"})],
    "auth/foreign-denied": [lambda: with_calls(sc.foreign_user(), [
        *sc.FOREIGN_PROVIDER, ProviderCall(2, "f0", ns(1101))])],
    "input/rejected-cleanly": [lambda: with_calls(sc.bad_inputs(), [
        *sc.BAD_PROVIDER, ProviderCall(2, "bad", ns(1175))])],
    "outage/fails-closed": [lambda: with_calls(sc.outage(), [
        *sc.OUTAGE_PROVIDER, ProviderCall(2, "o1", ns(1005))])],
    "outage/runs-settle": [lambda: patch(sc.mid_stream(), sc.STREAM_RECOVERED,
                                         runs=[{"id": "run-w", "status": "running"}])],
    "recovery/lease-reclaims": [lambda: patch(sc.crash_recovery(), sc.RECLAIMED, run={
        **sc.ABORTED_RUN, "status": "running"})],
    "storm/runs-end": [lambda: patch(sc.storm(), 7, run={"id": "run-2", "status": "running"})],
}

# A race that did not happen proves nothing (checks/race.py, Decisions): its contradiction — the
# racers were sent after the winner ended — is unknown, never invalid.
NEVER_INVALID: dict[str, list[Make]] = {
    "race/overlap-achieved": [lambda: patch(model(), WINNER, end_ns=ns(1000.005))],
}


def test_every_property_has_a_stripped_and_a_contradicted_case() -> None:
    assert set(STRIPPED) == set(CHECKERS)
    assert set(CONTRADICTED) | set(NEVER_INVALID) == set(CHECKERS)
    assert not set(CONTRADICTED) & set(NEVER_INVALID)
    assert set(NEVER_INVALID) == {"race/overlap-achieved"}


def _cases(table: dict[str, list[Make]]) -> list[tuple[str, Make]]:
    return [(prop, make) for prop, makes in table.items() for make in makes]


def _ids(table: dict[str, list[Make]]) -> list[str]:
    return [f"{prop}-{k}" for prop, makes in table.items() for k in range(len(makes))]


def test_the_models_behind_the_tables_are_valid() -> None:
    models = {"race": model(), "expected-end": sc.expected_end(), "stale": sc.stale_stop(),
              "foreign": sc.foreign_user(), "bad-input": sc.bad_inputs(), "outage": sc.outage(),
              "mid-stream": sc.mid_stream(), "crash": sc.crash_recovery(), "storm": sc.storm(),
              "created-once": sc.created_once()}
    props = {"race": SINGLE_CHAT_RACE, "expected-end": ["run/expected-end"],
             "stale": ["stop/stale-ignored", "race/winner-stoppable"],
             "foreign": ["auth/foreign-denied"], "bad-input": ["input/rejected-cleanly"],
             "outage": ["outage/fails-closed"], "mid-stream": ["outage/runs-settle"],
             "crash": ["recovery/lease-reclaims"], "storm": ["storm/runs-end"],
             "created-once": ["chats/created-once", "race/one-winner", "race/losers-409",
                              "race/holder-named"]}
    verdicts = {(name, p): r.verdict for name, trial in models.items()
                for p, r in check_trial(trial, props[name]).items()}
    assert {k: v for k, v in verdicts.items() if v != "valid"} == {
        ("stale", "race/winner-stoppable"): "unknown"}  # no provider, no after-stop answer


@pytest.mark.parametrize(("prop", "make"), _cases(STRIPPED), ids=_ids(STRIPPED))
def test_evidence_stripped_is_unknown(prop: str, make: Make) -> None:
    result = verdict(make(), prop)
    assert result.verdict == "unknown", result.reason


@pytest.mark.parametrize(("prop", "make"), _cases(CONTRADICTED), ids=_ids(CONTRADICTED))
def test_evidence_contradicted_is_invalid(prop: str, make: Make) -> None:
    result = verdict(make(), prop)
    assert result.verdict == "invalid", result.reason


@pytest.mark.parametrize(("prop", "make"), _cases(NEVER_INVALID), ids=_ids(NEVER_INVALID))
def test_a_property_that_is_never_invalid_says_unknown_when_contradicted(prop: str,
                                                                        make: Make) -> None:
    assert verdict(make(), prop).verdict == "unknown"


def test_no_property_is_valid_without_any_observer_provider_or_database() -> None:
    """Only what the race's own answers show can stay valid when every observer is gone."""
    blind = with_calls(without_observers(model()), None)
    results = check_trial(blind, SINGLE_CHAT_RACE)
    assert {p for p, r in results.items() if r.verdict == "valid"} == {
        "race/overlap-achieved", "race/one-winner", "race/losers-409", "race/holder-named",
        "race/losers-fast", "race/released", "stream/well-formed"}


def test_a_db_snapshot_without_rows_names_no_chat_and_proves_no_absence() -> None:
    trial = with_db(drop(model(), AFTER - 1, AFTER), [*MODEL_DB[:2], DbSnapshot("after", ns(1250))])
    assert verdict(trial, "race/winner-stoppable").verdict == "unknown"


def test_a_saved_model_race_checks_valid_and_a_500_loser_only_fails_losers_409() -> None:
    """What ``harness check`` sees of the models: the ended trial loads as it was."""
    for trial, invalid in ((model(), set()),
                           (patch(model(), LOSER_A, status=500, code=None), {"race/losers-409"})):
        _, [loaded] = loads_trials(dumps_trials([trial], {"target": "embedded", "n": 3}))
        assert "interrupted" not in loaded.meta
        verdicts = {p: r.verdict for p, r in check_trial(loaded, SINGLE_CHAT_RACE).items()}
        assert verdicts == {p: "invalid" if p in invalid else "valid" for p in SINGLE_CHAT_RACE}


# -- 12. the registry: each property declared once; CHECKERS, the loader and the docs agree -------

ROOT = Path(__file__).resolve().parents[3]


def test_every_property_is_registered_exactly_once_with_a_summary_and_evidence() -> None:
    assert list(REGISTRY) == list(CHECKERS)
    assert list(RACE_CHECKERS) + list(SCENARIO_CHECKERS) == list(CHECKERS)
    assert SINGLE_CHAT_RACE == tuple(p for p in RACE_CHECKERS if not p.startswith("chats/"))
    for prop, entry in REGISTRY.items():
        assert entry.id == prop
        assert CHECKERS[prop] is entry.checker
        scoped = RACE_CHECKERS if entry.scope == "race" else SCENARIO_CHECKERS
        assert scoped[prop] is entry.checker
        assert entry.summary.strip() and "\n" not in entry.summary, prop
        assert entry.evidence and set(entry.evidence) <= set(EVIDENCE), prop
        assert len(set(entry.evidence)) == len(entry.evidence), prop
    assert len({id(entry.checker) for entry in REGISTRY.values()}) == len(REGISTRY)
    # declared once in the source: one ``@check("<id>"`` per property in the package
    source = "\n".join(path.read_text() for path in
                       sorted((ROOT / "harness" / "core" / "checks").glob("*.py")))
    declared = re.findall(r'^@check\(\s*"([^"]+)"', source, re.M)
    assert sorted(declared) == sorted(REGISTRY)


@pytest.mark.parametrize(("prop", "make"), _cases(STRIPPED) + _cases(CONTRADICTED),
                         ids=_ids(STRIPPED) + _ids(CONTRADICTED))
def test_a_checker_reports_under_its_registered_id(prop: str, make: Make) -> None:
    assert REGISTRY[prop].checker(make()).property == prop


def test_the_scenario_loader_accepts_exactly_the_registered_properties() -> None:
    step = next(iter(catalogue().values())).steps[0].do
    def load(prop: str) -> tuple[str, ...]:
        return loads_scenario(f'name = "x"\nsummary = "s"\nproperties = ["{prop}"]\n'
                              f'[[steps]]\ndo = "{step}"\n', "f.toml").properties

    assert [load(prop) for prop in REGISTRY] == [(prop,) for prop in REGISTRY]
    with pytest.raises(ScenarioError) as refused:
        load("race/nope")
    assert str(refused.value) == ("f.toml: properties[0]: unknown property 'race/nope'; known: "
                                  + ", ".join(REGISTRY))


def test_conformance_md_lists_every_property_with_its_registered_summary() -> None:
    text = (ROOT / "docs" / "conformance.md").read_text(encoding="utf-8")
    table = text.split("\n## 4. Properties", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z]+/[a-z0-9-]+)` \| (.+?) \|", table, re.M)
    assert rows == [(entry.id, entry.summary) for entry in REGISTRY.values()]


# Taking away a kind of evidence a property does not declare leaves its result as it was.
STRIP: dict[Evidence, Callable[[Trial], Trial]] = {
    "racers": lambda t: _without_turns(t, lambda role: role == "racer"),
    "turns": lambda t: _without_turns(t, lambda role: role != "racer"),
    "stops": lambda t: _without_ops(t, "stop"),
    "runs": lambda t: _without_ops(t, "runs", "run"),
    "chats": lambda t: _without_ops(t, "chats"),
    "probes": lambda t: _without_ops(t, "probe"),
    "outages": lambda t: _without_ops(t, "database"),
    "provider": lambda t: dataclasses.replace(t, provider=None),
    "db": lambda t: dataclasses.replace(t, db=None),
    "meta": lambda t: dataclasses.replace(t, meta={}),
}


def _without_ops(trial: Trial, *fs: str) -> Trial:
    return dataclasses.replace(trial, ops=[op for op in trial.ops if op.f not in fs])


def _without_turns(trial: Trial, role: Callable[[object], bool]) -> Trial:
    gone = {op.index for inv, comp in trial.completions("turn") if role(inv.get("role"))
            for op in (inv, comp) if op is not None}
    return dataclasses.replace(trial, ops=[op for op in trial.ops if op.index not in gone])


def _outcome(prop: str, trial: Trial) -> tuple[object, ...]:
    try:
        result = REGISTRY[prop].checker(trial)
    except Exception as exc:  # noqa: BLE001 - a crash is an outcome to compare too
        return ("crashed", type(exc).__name__, str(exc))
    return (result.verdict, result.reason, result.ops)


def test_the_stripping_covers_every_kind_of_evidence() -> None:
    assert set(STRIP) == set(EVIDENCE)


@pytest.mark.parametrize(("prop", "make"), _cases(STRIPPED) + _cases(CONTRADICTED),
                         ids=_ids(STRIPPED) + _ids(CONTRADICTED))
def test_a_property_reads_no_evidence_it_does_not_declare(prop: str, make: Make) -> None:
    trial = make()
    undeclared = [e for e in EVIDENCE if e not in REGISTRY[prop].evidence]
    assert {e: _outcome(prop, STRIP[e](trial)) for e in undeclared} == {
        e: _outcome(prop, trial) for e in undeclared}


def test_a_malformed_declaration_is_refused_and_registers_nothing() -> None:
    before = dict(REGISTRY)

    def checker(trial: Trial) -> CheckResult:
        return CheckResult("x/y", "unknown", "")

    for declare, message in [
            (lambda: check("race/one-winner", scope="race", evidence=("racers",),
                           summary="again")(checker), "registered twice"),
            (lambda: check("x/y", scope="race", evidence=("racers",),
                           summary="s")(REGISTRY["race/one-winner"].checker),
             "its checker is already 'race/one-winner''s"),
            (lambda: check("x/y", scope="race", evidence=("logs",),  # type: ignore[arg-type]
                           summary="s"), "unknown evidence 'logs'"),
            (lambda: check("x/y", scope="race", evidence=(), summary="s"), "no evidence named"),
            (lambda: check("x/y", scope="race", evidence=("db",), summary=" "),
             "not one non-empty line"),
            (lambda: check("x/y", scope="soon", evidence=("db",),  # type: ignore[arg-type]
                           summary="s"), "scope 'soon'"),
            (lambda: check("Y", scope="race", evidence=("db",), summary="s"), "'area/name'")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            declare()
    assert REGISTRY == before


@rc.FAST
@given(rc.race_trials())
def test_a_race_property_reads_no_evidence_it_does_not_declare(trial: Trial) -> None:
    for prop in SINGLE_CHAT_RACE:
        undeclared = [e for e in EVIDENCE if e not in REGISTRY[prop].evidence]
        assert {e: _outcome(prop, STRIP[e](trial)) for e in undeclared} == {
            e: _outcome(prop, trial) for e in undeclared}, prop
