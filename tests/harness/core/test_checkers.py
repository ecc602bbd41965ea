"""The pure checkers, Jepsen style (checker_test.clj): literal histories in, whole results out.

Every property has a valid model, an invalid twin (one minimal change that breaks it) and an
unknown twin (evidence taken away). Times are written in milliseconds and stored in ns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raceharness.core.checks.base import CheckResult, Verdict, summarize, worst
from raceharness.core.checks.turns import find_winner, losers, turns
from raceharness.core.history import DbSnapshot, MessageRow, Op, OpType, ProviderCall, RunRow, Trial
from raceharness.core.properties import RACE_CHECKERS, SINGLE_CHAT_RACE, check_trial

MS = 1_000_000
CHAT = "chat-1"


def ns(ms: float) -> int:
    return round(ms * MS)


class History:
    """Appends ops with increasing indices; each call returns the new op's index."""

    def __init__(self, **meta: Any) -> None:
        self.meta: dict[str, Any] = {"trial": 0, "n": 0, "losers_fast_bound_ms": 1000,
                                     "stop_bound_ms": 2000, "release_ns": 0, "ended": True,
                                     **meta}
        self.ops: list[Op] = []
        self.chats: dict[int, str] = {}  # process → the chat its turn asked for

    def op(self, type_: OpType, f: str, process: int, at_ms: float, nonce: str | None = None,
           /, **value: Any) -> int:
        self.ops.append(Op(len(self.ops), type_, f, process, ns(at_ms), nonce, value))
        return len(self.ops) - 1

    def turn(self, process: int, at_ms: float, nonce: str, role: str = "racer",
             chat_id: str = CHAT) -> int:
        if role == "racer":
            self.meta["n"] += 1
        self.chats[process] = chat_id
        return self.op("invoke", "turn", process, at_ms, nonce, role=role, chat_id=chat_id,
                       sent_ns=ns(at_ms))

    def stream(self, process: int, headers_ms: float, end_ms: float | None, run_id: str | None,
               terminal: str | None = "finish", at_ms: float | None = None, **value: Any) -> int:
        frames = ["start", "text-delta", *([terminal] if terminal else []), "[DONE]"]
        at = at_ms if at_ms is not None else end_ms if end_ms is not None else headers_ms
        return self.op("ok", "turn", process, at,
                       **{"status": 200, "code": None, "json": False, "run_id": run_id,
                          "active_run_id": None, "chat_id": self.chats.get(process, CHAT),
                          "headers_ns": ns(headers_ms),
                          "end_ns": None if end_ms is None else ns(end_ms),
                          "terminal": terminal, "done": True, "frames": frames,
                          "findings": [], **value})

    def refuse(self, process: int, at_ms: float, status: int = 409,
               code: str | None = "A_RUN_ALREADY_ACTIVE", **value: Any) -> int:
        return self.op("ok", "turn", process, at_ms,
                       **{"status": status, "code": code, "json": True, "run_id": None,
                          "active_run_id": "run-w", "headers_ns": ns(at_ms), "end_ns": ns(at_ms),
                          "terminal": None, "done": False, "frames": [], "findings": [], **value})

    def runs(self, process: int, at_ms: float, phase: str, rows: dict[str, str],
             chat_id: str = CHAT, **value: Any) -> int:
        self.op("invoke", "runs", process, at_ms, chat_id=chat_id, phase=phase)
        return self.op("ok", "runs", process, at_ms + 1, status=200,
                       runs=[{"id": k, "status": v} for k, v in rows.items()], **value)

    def stop(self, process: int, at_ms: float, run_id: str, stopped: bool | None = True,
             status: int = 200) -> tuple[int, int]:
        invoke = self.op("invoke", "stop", process, at_ms, run_id=run_id)
        return invoke, self.op("ok", "stop", process, at_ms + 10, status=status, stopped=stopped)

    def trial(self, provider: list[ProviderCall] | None = None,
              db: list[DbSnapshot] | None = None) -> Trial:
        return Trial(meta=dict(self.meta), ops=list(self.ops), provider=provider, db=db)


# -- the model of a correct race -----------------------------------------------------------------

def messages(*specs: tuple[str, str]) -> tuple[MessageRow, ...]:
    return tuple(MessageRow(id=i, chat_id=CHAT, role=role, status="complete") for i, role in specs)


SETUP_RUN = RunRow("run-s", CHAT, "finished")
SETUP_MESSAGES = messages(("m1", "user"), ("m2", "assistant"))
MODEL_PROVIDER = [
    ProviderCall(0, "s0", ns(10), tokens_sent=3, completed_ns=ns(40)),
    ProviderCall(1, "n1", ns(1004), tokens_sent=1, first_token_ns=ns(1004.5),
                 disconnected_ns=ns(1215)),
    ProviderCall(2, "r0", ns(1401), tokens_sent=3, completed_ns=ns(1450)),
]
MODEL_DB = [
    DbSnapshot("before", ns(999), runs=(SETUP_RUN,), messages=SETUP_MESSAGES),
    DbSnapshot("held", ns(1150), runs=(SETUP_RUN, RunRow("run-w", CHAT, "running")),
               messages=SETUP_MESSAGES + messages(("m3", "user"), ("m4", "assistant"))),
    DbSnapshot("after", ns(1250), runs=(SETUP_RUN, RunRow("run-w", CHAT, "aborted")),
               messages=SETUP_MESSAGES + messages(("m3", "user"), ("m4", "assistant"))),
]
# op indices of the model, by role
SETUP, WINNER, LOSER_A, LOSER_B, HELD, STOP_INVOKE, STOP, AFTER, RELEASED, CLEANUP = (
    1, 11, 5, 6, 8, 9, 10, 13, 15, 17)


def model(provider: bool = True, db: bool = True) -> Trial:
    """1×200 held then stopped (abort), 2×409 fast naming the winner's run, the winner's
    provider call disconnected after the stop, /runs shows it running while held and aborted
    after, the released turn finished, and the cleanup /runs lists every run of the chat."""
    h = History(release_ns=ns(1000))
    h.turn(0, 0, "s0", role="setup")
    h.stream(0, headers_ms=5, end_ms=50, run_id="run-s")                       # 1
    h.turn(1, 1000.00, "n1")
    h.turn(2, 1000.01, "n2")
    h.turn(3, 1000.02, "n3")
    h.refuse(2, 1010)                                                          # 5
    h.refuse(3, 1011)                                                          # 6
    h.runs(10, 1100, "held", {"run-s": "finished", "run-w": "running"})        # 7, 8
    h.stop(11, 1200, "run-w")                                                  # 9, 10
    h.stream(1, headers_ms=1005, end_ms=1220, run_id="run-w", terminal="abort")  # 11
    h.runs(12, 1300, "after", {"run-s": "finished", "run-w": "aborted"})       # 12, 13
    h.turn(13, 1400, "r0", role="released")
    h.stream(13, headers_ms=1401, end_ms=1500, run_id="run-r")                 # 15
    h.runs(14, 1600, "cleanup", {"run-r": "succeeded", "run-w": "aborted",    # 16, 17
                                 "run-s": "finished"})
    return h.trial(provider=list(MODEL_PROVIDER) if provider else None,
                   db=list(MODEL_DB) if db else None)


def distinct_chats(*outcomes: tuple[OpType, int | None]) -> Trial:
    h = History()
    for p, _ in enumerate(outcomes):
        h.turn(p, 1000 + p * 0.01, f"n{p}", chat_id=f"chat-{p}")
    for p, (type_, status) in enumerate(outcomes):
        if type_ == "ok" and status == 200:
            h.stream(p, headers_ms=1005, end_ms=1100, run_id=f"run-{p}")
        elif type_ == "ok":
            h.refuse(p, 1010, status=status or 409)
        else:
            h.op(type_, "turn", p, 3000, error="timeout")
    return h.trial()


def many_chats(*chats: tuple[tuple[OpType, int | None], ...]) -> Trial:
    """Several racers on each of several chats; ops are numbered in call order."""
    h = History()
    p = 0
    plan: list[tuple[int, OpType, int | None, int]] = []
    for c, outcomes in enumerate(chats):
        for type_, status in outcomes:
            h.turn(p, 1000 + p * 0.01, f"n{p}", chat_id=f"chat-{c}")
            plan.append((p, type_, status, c))
            p += 1
    for p, type_, status, c in plan:
        if type_ == "ok" and status == 200:
            h.stream(p, headers_ms=1005, end_ms=1100, run_id=f"run-{p}")
        elif type_ == "ok":
            h.refuse(p, 1010, status=status or 409, active_run_id=f"run-c{c}")
        else:
            h.op(type_, "turn", p, 3000, error="timeout")
    return h.trial()


OK200: tuple[OpType, int | None] = ("ok", 200)
OK409: tuple[OpType, int | None] = ("ok", 409)


# -- twins: small edits of a trial ---------------------------------------------------------------

def patch(trial: Trial, index: int, **value: Any) -> Trial:
    """The trial with op ``index``'s value updated."""
    ops = [dataclasses.replace(op, value={**op.value, **value}) if op.index == index else op
           for op in trial.ops]
    return dataclasses.replace(trial, ops=ops)


def retype(trial: Trial, index: int, type_: OpType, **value: Any) -> Trial:
    ops = [dataclasses.replace(op, type=type_, value=value) if op.index == index else op
           for op in trial.ops]
    return dataclasses.replace(trial, ops=ops)


def drop(trial: Trial, *indices: int) -> Trial:
    return dataclasses.replace(trial, ops=[op for op in trial.ops if op.index not in indices])


def with_meta(trial: Trial, **meta: Any) -> Trial:
    return dataclasses.replace(trial, meta={**trial.meta, **meta})


def with_calls(trial: Trial, calls: list[ProviderCall] | None) -> Trial:
    return dataclasses.replace(trial, provider=calls)


def with_db(trial: Trial, snapshots: list[DbSnapshot] | None) -> Trial:
    return dataclasses.replace(trial, db=snapshots)


def replace_call(index: int, **changes: Any) -> list[ProviderCall]:
    return [dataclasses.replace(c, **changes) if c.index == index else c for c in MODEL_PROVIDER]


PATTERN = "already has an active run"
BUSY_BODY = '{"code":"A_RUN_ALREADY_ACTIVE","message":"chat already has an active run"}'
OTHER_BODY = '{"code":"A_RUN_ALREADY_ACTIVE","message":"try again later"}'


def bodies(pattern: str, body_a: str | None, body_b: str | None) -> Trial:
    """The model with the losers' recorded error bodies and ``meta.conflict.pattern``."""
    trial = patch(patch(model(), LOSER_A, body=body_a), LOSER_B, body=body_b)
    return with_meta(trial, conflict={"status": 409, "code": "A_RUN_ALREADY_ACTIVE",
                                      "holder": "activeRunId", "pattern": pattern})


def only_losers() -> Trial:
    """The model where the winner got 409 too: no 200 among the racers."""
    return retype(model(), WINNER, "ok", status=409, code="A_RUN_ALREADY_ACTIVE", json=True,
                  run_id=None, headers_ns=ns(1012), end_ns=ns(1012), terminal=None, done=False,
                  frames=[], findings=[])


# -- the model is valid for every single-chat property -------------------------------------------

def test_model_layout() -> None:
    trial = model()
    assert [(op.index, op.type, op.f, op.process) for op in trial.ops
            if op.index in (SETUP, WINNER, LOSER_A, LOSER_B, HELD, STOP, AFTER, RELEASED)] == [
        (1, "ok", "turn", 0), (5, "ok", "turn", 2), (6, "ok", "turn", 3), (8, "ok", "runs", 10),
        (10, "ok", "stop", 11), (11, "ok", "turn", 1), (13, "ok", "runs", 12),
        (15, "ok", "turn", 13)]
    racers = turns(trial, "racer")
    winner = find_winner(racers)
    assert winner is not None and winner.index == WINNER
    assert [r.index for r in losers(racers, winner)] == [LOSER_A, LOSER_B]


def test_the_model_race_is_valid_for_all_single_chat_properties() -> None:
    results = check_trial(model(), SINGLE_CHAT_RACE)
    assert list(results) == list(SINGLE_CHAT_RACE)
    assert {p: (r.verdict, r.ops) for p, r in results.items()} == {
        p: ("valid", ()) for p in SINGLE_CHAT_RACE}


# -- per property: valid, invalid twin, unknown twin ---------------------------------------------

Case = tuple[str, Callable[[], Trial], Verdict, tuple[int, ...], str]

CASES: list[Case] = [
    # race/overlap-achieved is never invalid: a race that did not happen proves nothing
    ("race/overlap-achieved", model, "valid", (), "all 3 racers sent while the winner (op 11)"),
    ("race/overlap-achieved", lambda: patch(model(), 3, sent_ns=ns(1230)), "unknown", (LOSER_A,),
     "the race did not happen for 1 of 3 racers (op 5)"),
    ("race/overlap-achieved", lambda: patch(model(), WINNER, end_ns=ns(1000.015)), "unknown",
     (LOSER_B,), "the race did not happen for 1 of 3 racers (op 6)"),
    ("race/overlap-achieved", lambda: retype(model(), LOSER_A, "fail", error="refused"),
     "unknown", (LOSER_A,), "request never reached the target: op 5"),
    ("race/overlap-achieved", only_losers, "unknown", (), "no winner"),
    ("race/overlap-achieved", lambda: with_meta(model(), n=4), "unknown", (),
     "only 3 of n=4 racers recorded"),

    ("race/one-winner", model, "valid", (), "one winner: op 11, run run-w"),
    ("race/one-winner", lambda: patch(model(), LOSER_A, status=200, run_id="run-x"), "invalid",
     (LOSER_A, WINNER), "2 racers got 200 (ops 5, 11): more than one winner"),
    ("race/one-winner", lambda: patch(model(), WINNER, run_id=None), "invalid", (WINNER,),
     "op 11: a 200 without runId is a second, untracked winner"),
    ("race/one-winner", lambda: retype(model(), LOSER_A, "info", status=200, headers_ns=ns(1010)),
     "invalid", (LOSER_A, WINNER), "2 racers got 200"),
    ("race/one-winner", lambda: patch(only_losers(), LOSER_A, status=429), "unknown", (LOSER_A,),
     "no 200, and 1 racer(s) undecided"),
    ("race/one-winner", only_losers, "invalid", (LOSER_A, LOSER_B, WINNER),
     "no winner: none of 3 racers got 200 (409×3)"),

    ("race/losers-409", model, "valid", (), "all 2 losers got 409 A_RUN_ALREADY_ACTIVE"),
    ("race/losers-409", lambda: patch(model(), LOSER_A, status=500, code=None), "invalid",
     (LOSER_A,), "1 of 2 losers not a JSON 409 A_RUN_ALREADY_ACTIVE: op 5: 500 code=None"),
    ("race/losers-409", lambda: patch(model(), LOSER_B, json=False), "invalid", (LOSER_B,),
     "op 6: 409 code=A_RUN_ALREADY_ACTIVE json=False"),
    ("race/losers-409", lambda: patch(model(), LOSER_B, code="SOMETHING_ELSE"), "invalid",
     (LOSER_B,), "op 6: 409 code=SOMETHING_ELSE json=True"),
    ("race/losers-409", lambda: retype(model(), LOSER_A, "info", error="timeout"), "invalid",
     (LOSER_A,), "op 5: no answer"),
    ("race/losers-409", lambda: patch(model(), LOSER_A, status=429, code="RATE_LIMITED"),
     "unknown", (LOSER_A,), "1 of 2 losers got 429"),
    ("race/losers-409", lambda: patch(patch(model(), LOSER_A, status=429), LOSER_B, status=503),
     "invalid", (LOSER_B,), "op 6: 503"),
    # the holder an answer names is race/holder-named's: a wrong one leaves losers-409 valid
    ("race/losers-409", lambda: patch(model(), LOSER_B, active_run_id="run-zz"), "valid", (),
     "all 2 losers got 409 A_RUN_ALREADY_ACTIVE while a run held the chat"),
    # meta.conflict.pattern: the answer's recorded body text must match it
    ("race/losers-409", lambda: bodies(PATTERN, BUSY_BODY, BUSY_BODY), "valid", (),
     "all 2 losers got 409 A_RUN_ALREADY_ACTIVE matching /already has an active run/"),
    ("race/losers-409", lambda: bodies(PATTERN, BUSY_BODY, OTHER_BODY), "invalid", (LOSER_B,),
     "1 of 2 losers not a JSON 409 A_RUN_ALREADY_ACTIVE matching /already has an active run/: "
     "op 6: 409 code=A_RUN_ALREADY_ACTIVE json=True"),
    ("race/losers-409", lambda: bodies(PATTERN, BUSY_BODY, None), "invalid", (LOSER_B,),
     "op 6: 409"),  # no body recorded: nothing matches
    ("race/losers-409", lambda: bodies("", BUSY_BODY, OTHER_BODY), "valid", (),
     "all 2 losers got 409 A_RUN_ALREADY_ACTIVE while"),  # no pattern: the body is not read

    ("race/holder-named", model, "valid", (),
     "all 2 conflict answers named a run that held the chat (activeRunId)"),
    ("race/holder-named", lambda: patch(model(), LOSER_B, active_run_id="run-zz"), "invalid",
     (LOSER_B,), "1 of 2 conflict answers named the wrong holder (protocol §2.3/§2.5: the "
     "holder's id, null only once it ended): op 6: activeRunId run-zz names no run that held "
     "the chat"),
    ("race/holder-named", lambda: patch(model(), LOSER_A, active_run_id=None), "invalid",
     (LOSER_A,), "op 5: activeRunId null while run run-w was active"),
    ("race/holder-named",
     lambda: with_meta(patch(model(), LOSER_A, active_run_id="run-zz"), conflict_holder_id=False),
     "unknown", (), "the target's conflict answer names no holder (meta conflict_holder_id: "
     "false): nothing to check"),
    ("race/holder-named",
     lambda: with_meta(model(), conflict={"status": 409, "code": "A_RUN_ALREADY_ACTIVE",
                                          "holder": ""}),
     "unknown", (), 'the target\'s conflict answer names no holder (meta conflict.holder: "")'),
    ("race/holder-named", lambda: retype(retype(model(), LOSER_A, "fail"), LOSER_B, "fail"),
     "unknown", (), "no loser got 409 A_RUN_ALREADY_ACTIVE (fail×2)"),
    ("race/holder-named", lambda: patch(model(), LOSER_B, status=500, code=None), "valid", (),
     "conflict answers named a run that held the chat"),  # a 500 names nothing: losers-409's

    ("race/losers-fast", model, "valid", (), "all 2 losers answered within 11.0 ms"),
    ("race/losers-fast", lambda: with_meta(model(), losers_fast_bound_ms=10.5), "invalid",
     (LOSER_B,), "op 6: 11.0 ms > 10.5 ms"),
    ("race/losers-fast", lambda: patch(model(), LOSER_A, headers_ns=ns(1221)), "invalid",
     (LOSER_A,), "op 5: answered 1.0 ms after the winner ended"),
    ("race/losers-fast", lambda: retype(model(), LOSER_B, "info", error="timeout"), "invalid",
     (LOSER_B,), "op 6: never answered"),
    ("race/losers-fast", lambda: retype(model(), LOSER_B, "fail", error="refused"), "unknown",
     (LOSER_B,), "1 loser(s) never reached the target"),
    ("race/losers-fast", lambda: drop(model(), 3, 4, LOSER_A, LOSER_B), "unknown", (),
     "no losers among 1 racer(s)"),

    ("race/no-loser-provider-call", model, "valid", (), "none of 3 provider call(s)"),
    ("race/no-loser-provider-call",
     lambda: with_calls(model(), [*MODEL_PROVIDER, ProviderCall(3, "n2", ns(1003))]), "invalid",
     (LOSER_A,), "1 provider call(s) carry a loser's nonce: call 3 ← op 5"),
    ("race/no-loser-provider-call", lambda: model(provider=False), "unknown", (),
     "no provider access"),

    ("race/winner-provider-call", model, "valid", (), "one provider call (call 1)"),
    ("race/winner-provider-call",
     lambda: with_calls(model(), [c for c in MODEL_PROVIDER if c.nonce != "n1"]), "invalid",
     (WINNER,), "0 provider calls for the winner (op 11), expected 1"),
    ("race/winner-provider-call",
     lambda: with_calls(model(), [*MODEL_PROVIDER, ProviderCall(3, "n1", ns(1006))]), "invalid",
     (WINNER,), "2 provider calls for the winner (op 11), expected 1"),
    ("race/winner-provider-call", lambda: model(provider=False), "unknown", (),
     "no provider access"),
    ("race/winner-provider-call", only_losers, "unknown", (), "no winner"),

    ("race/no-untracked-run", model, "valid", (), "winner run run-w reported active while held"),
    ("race/no-untracked-run",
     lambda: patch(model(), HELD, runs=[{"id": "run-w", "status": "finished"}]), "invalid",
     (HELD,), "op 8: winner run run-w finished while held"),
    ("race/no-untracked-run", lambda: patch(model(), HELD, runs=[]), "invalid", (HELD,),
     "op 8: winner run run-w absent while held"),
    ("race/no-untracked-run",
     lambda: with_calls(model(), [*MODEL_PROVIDER, ProviderCall(3, None, ns(1003))]), "invalid",
     (), "a provider call no tracked run accounts for: call 3: no nonce"),
    ("race/no-untracked-run",
     lambda: with_calls(model(), [*MODEL_PROVIDER, ProviderCall(3, "n3", ns(1003))]), "invalid",
     (LOSER_B,), "call 3: for op 6, which got no 200 with runId"),
    ("race/no-untracked-run",
     lambda: with_calls(model(), [*MODEL_PROVIDER, ProviderCall(3, "zz", ns(1003))]), "invalid",
     (), "call 3: unknown nonce 'zz'"),
    ("race/no-untracked-run", lambda: patch(model(), LOSER_A, status=200), "invalid", (LOSER_A,),
     "op 5: 200 without runId"),
    ("race/no-untracked-run",
     lambda: with_db(drop(model(), 7, HELD), [s for s in MODEL_DB if s.label != "held"]),
     "unknown", (), "missing evidence: no held-phase /runs answer or db snapshot"),
    ("race/no-untracked-run", lambda: model(provider=False), "unknown", (),
     "missing evidence: no provider access"),

    ("race/no-loser-writes", model, "valid", (), "the race added the winner's run run-w"),
    ("race/no-loser-writes",
     lambda: with_db(model(), [*MODEL_DB[:2], dataclasses.replace(
         MODEL_DB[2], messages=MODEL_DB[2].messages + messages(("m5", "user")))]),
     "invalid", (), "the race added 1 run(s) (with the winner's run-w), 2 user, 1 assistant"),
    ("race/no-loser-writes",
     lambda: with_db(patch(model(), LOSER_A, status=200, run_id="run-x"), [
         *MODEL_DB[:2], dataclasses.replace(
             MODEL_DB[2], runs=MODEL_DB[2].runs + (RunRow("run-x", CHAT, "running"),))]),
     "invalid", (LOSER_A,), "the race added 2 run(s)"),
    ("race/no-loser-writes", lambda: model(db=False), "unknown", (), "no database access"),
    ("race/no-loser-writes", lambda: with_db(model(), MODEL_DB[:2]), "unknown", (),
     "no after db snapshot"),

    ("race/winner-stoppable", model, "valid", (),
     "/stop answered stopped:true, the stream ended abort; provider disconnected 15.0 ms after"),
    ("race/winner-stoppable",
     lambda: with_calls(model(), replace_call(1, disconnected_ns=None, completed_ns=ns(1300))),
     "invalid", (STOP,), "the provider kept streaming: call 1 disconnected never"),
    ("race/winner-stoppable",
     lambda: with_calls(model(), replace_call(1, disconnected_ns=ns(3300))), "invalid", (STOP,),
     "call 1 disconnected 2100.0 ms after the stop (bound 2000 ms)"),
    ("race/winner-stoppable", lambda: patch(model(), STOP, stopped=False), "invalid", (STOP,),
     "op 10: /stop answered 200 stopped=False"),
    ("race/winner-stoppable", lambda: patch(model(), WINNER, terminal="finish"), "invalid",
     (WINNER,), "op 11: the winner's stream ended 'finish', not 'abort'"),
    ("race/winner-stoppable",
     lambda: patch(model(), AFTER, runs=[{"id": "run-w", "status": "running"}]), "invalid",
     (AFTER,), "op 13: run run-w is 'running': still active after the stop"),
    ("race/winner-stoppable", lambda: retype(model(), STOP, "info", error="timeout"), "invalid",
     (STOP,), "op 10: /stop got no answer"),
    ("race/winner-stoppable", lambda: drop(model(), STOP_INVOKE, STOP), "unknown", (),
     "no /stop aimed at the winner's run run-w"),
    ("race/winner-stoppable", lambda: model(provider=False), "unknown", (),
     "no provider access to see the provider disconnect"),

    ("race/released", model, "valid", (), "the turn after the winner ended got 200"),
    ("race/released", lambda: patch(model(), RELEASED, status=409, run_id=None), "invalid",
     (RELEASED,), "op 15: 409 terminal='finish'"),
    ("race/released", lambda: patch(model(), RELEASED, terminal="error"), "invalid",
     (RELEASED,), "op 15: 200 terminal='error'"),
    ("race/released", lambda: retype(model(), RELEASED, "info", error="timeout"), "unknown",
     (RELEASED,), "no answered turn after the winner ended"),
    ("race/released", lambda: drop(model(), 14, RELEASED), "unknown", (),
     "no answered turn after the winner ended"),

    ("stream/well-formed", model, "valid", (), "all 3 200 streams well formed"),
    ("stream/well-formed",
     lambda: patch(model(), WINNER, frames=["start", "abort"], done=False), "invalid", (WINNER,),
     "1 of 3 200 streams malformed: op 11 (no [DONE] last)"),
    ("stream/well-formed",
     lambda: patch(model(), RELEASED, findings=[{"code": "SSE_BAD_JSON", "message": "x"}]),
     "invalid", (RELEASED,), "op 15 (finding SSE_BAD_JSON)"),
    ("stream/well-formed",
     lambda: patch(model(), SETUP, frames=["text-delta", "finish", "error", "[DONE]"]),
     "invalid", (SETUP,), "op 1 (first frame 'text-delta', not 'start', 2 terminal frames)"),
    ("stream/well-formed", lambda: drop(only_losers(), 0, SETUP, 14, RELEASED), "unknown", (),
     "no 200 stream to check"),

    ("chats/independent", lambda: distinct_chats(("ok", 200), ("ok", 200), ("ok", 200)),
     "valid", (), "all 3 turns on distinct chats got 200"),
    ("chats/independent", lambda: distinct_chats(("ok", 200), ("ok", 409), ("ok", 200)),
     "invalid", (4,), "false conflict: 1 of 3 turns on distinct chats got 409 (op 4)"),
    ("chats/independent", lambda: distinct_chats(("ok", 200), ("ok", 503), ("ok", 200)),
     "invalid", (4,), "1 of 3 turns on distinct chats refused (503×1)"),
    ("chats/independent", lambda: distinct_chats(("ok", 200), ("info", None), ("ok", 200)),
     "unknown", (4,), "1 of 3 turns undecided (info×1)"),
    ("chats/independent", model, "unknown", (), "not a distinct-chat race: 3 racer(s) on 1 chat"),

    ("chats/one-winner-each", lambda: many_chats((OK200, OK409, OK409), (OK409, OK200)),
     "valid", (), "each of 2 chats had exactly one winner; the other 3 turns got 409"),
    ("chats/one-winner-each", lambda: many_chats((OK200, OK200, OK409), (OK409, OK200)),
     "invalid", (5, 6), "chat chat-0: 2 winner(s)"),
    ("chats/one-winner-each", lambda: many_chats((OK200, OK409), (("ok", 503), OK200)),
     "invalid", (6,), "op 6: 503 code=A_RUN_ALREADY_ACTIVE"),
    ("chats/one-winner-each", lambda: many_chats((OK200, ("info", None)), (OK409, OK200)),
     "unknown", (5,), "1 of 4 turns undecided (info×1)"),
    ("chats/one-winner-each", model, "unknown", (), "not a many-chat race: 3 racer(s) on 1 chat"),
]


@pytest.mark.parametrize(("prop", "make", "verdict", "ops", "reason"), CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_property(prop: str, make: Callable[[], Trial], verdict: Verdict, ops: tuple[int, ...],
                  reason: str) -> None:
    result = check_trial(make(), [prop])[prop]
    assert (result.property, result.verdict, result.ops) == (prop, verdict, ops), result.reason
    assert reason in result.reason
    assert "\n" not in result.reason


def test_every_property_has_a_valid_an_invalid_and_an_unknown_case() -> None:
    seen = {(prop, verdict) for prop, _, verdict, _, _ in CASES}
    never_invalid = {"race/overlap-achieved"}
    assert {(p, v) for p in RACE_CHECKERS for v in ("valid", "invalid", "unknown")
            if not (p in never_invalid and v == "invalid")} <= seen


# -- composition: crashes, names, worst, summarize -----------------------------------------------

def test_a_malformed_value_crashes_a_checker_into_unknown() -> None:
    results = check_trial(patch(model(), LOSER_A, status="abc"))
    assert results["race/one-winner"] == CheckResult(
        "race/one-winner", "unknown",
        "checker crashed: TypeError: op 5: status='abc' is not an int")
    crashed = {p for p, r in results.items() if r.reason.startswith("checker crashed: TypeError")}
    # the released turn's checker and the chat-id check never read the racers' statuses
    chats = {"chats/independent", "chats/one-winner-each"}
    assert crashed == set(RACE_CHECKERS) - {"race/released", *chats}
    assert {p: r.verdict for p, r in results.items() if p not in crashed} == {
        "race/released": "valid", **{p: "unknown" for p in chats}}
    assert all(r.verdict == "unknown" and r.ops == () for p, r in results.items() if p in crashed)


def test_check_trial_never_raises_on_garbage() -> None:
    garbage = Trial(meta={"n": "many", "losers_fast_bound_ms": None},
                    ops=[Op(0, "invoke", "turn", 1, 0, "x", {"role": "racer", "sent_ns": "t"}),
                         Op(1, "ok", "turn", 1, 5, None, {"status": 200, "frames": 7}),
                         Op(2, "invoke", "runs", 2, 6, None, {"phase": "held"}),
                         Op(3, "ok", "runs", 2, 7, None, {"status": 200, "runs": "nope"})],
                    provider=[ProviderCall(0, "x", 1)], db=[DbSnapshot("held", 1)])
    results = check_trial(garbage)
    assert list(results) == list(RACE_CHECKERS)
    assert all(r.verdict in ("valid", "invalid", "unknown") for r in results.values())


def test_a_racer_that_never_connected_is_recorded_without_sent_ns_and_crashes_nothing() -> None:
    h = History()
    h.turn(1, 1000, "n1")
    h.op("invoke", "turn", 2, 1000, "n2", role="racer", chat_id=CHAT)  # the engine's shape
    h.meta["n"] += 1
    h.op("fail", "turn", 2, 1000, error="ConnectionRefusedError")
    h.stream(1, headers_ms=1005, end_ms=1100, run_id="run-w")
    results = check_trial(h.trial(provider=[ProviderCall(0, "n1", ns(1004))]), SINGLE_CHAT_RACE)
    assert [r.reason for r in results.values() if "crashed" in r.reason] == []
    assert (results["race/overlap-achieved"].verdict, results["race/overlap-achieved"].ops) == (
        "unknown", (2,))
    assert (results["race/losers-fast"].verdict, results["race/losers-fast"].ops) == (
        "unknown", (2,))


def test_a_racer_without_sent_ns_was_sent_at_its_invoke_time() -> None:
    trial = patch(model(), 3, sent_ns=None)
    result = check_trial(retype(trial, WINNER, "ok", **{
        **model().ops[WINNER].value, "end_ns": ns(1000.005)}), ["race/overlap-achieved"])
    assert (result["race/overlap-achieved"].verdict, result["race/overlap-achieved"].ops) == (
        "unknown", (LOSER_A, LOSER_B))


def test_unknown_property_names_are_rejected_naming_them() -> None:
    with pytest.raises(ValueError, match=r"unknown property 'race/nope'; valid: race/overlap"):
        check_trial(model(), ["race/one-winner", "race/nope"])


def test_check_trial_keeps_the_order_asked_for() -> None:
    assert list(check_trial(model(), ["stream/well-formed", "race/one-winner"])) == [
        "stream/well-formed", "race/one-winner"]
    assert list(check_trial(model(), "race/released")) == ["race/released"]


def test_checkers_are_named_in_the_conformance_order() -> None:
    assert list(RACE_CHECKERS) == [
        "race/overlap-achieved", "race/one-winner", "race/losers-409", "race/holder-named",
        "race/losers-fast",
        "race/no-loser-provider-call", "race/winner-provider-call", "race/no-untracked-run",
        "race/no-loser-writes", "race/winner-stoppable", "race/released", "stream/well-formed",
        "chats/independent", "chats/one-winner-each"]
    assert SINGLE_CHAT_RACE == tuple(list(RACE_CHECKERS)[:-2])


@pytest.mark.parametrize(("verdicts", "expected"), [
    ([], "unknown"), (["valid"], "valid"), (["valid", "unknown"], "unknown"),
    (["unknown", "invalid", "valid"], "invalid"), (["valid", "valid"], "valid")])
def test_worst(verdicts: list[Verdict], expected: Verdict) -> None:
    assert worst(verdicts) == expected


def test_worst_rejects_a_non_verdict() -> None:
    with pytest.raises(ValueError, match="verdict='ok' is not one of"):
        worst(["valid", "ok"])  # type: ignore[list-item]


def test_summarize_counts_per_property() -> None:
    good = check_trial(model(), ["race/one-winner", "race/losers-409"])
    bad = check_trial(patch(model(), LOSER_A, status=429), ["race/one-winner", "race/losers-409"])
    assert summarize([good, bad, good]) == {
        "race/one-winner": {"valid": 3, "invalid": 0, "unknown": 0},
        "race/losers-409": {"valid": 2, "invalid": 0, "unknown": 1}}
    assert summarize([]) == {}


# -- Hypothesis: totality and metamorphic properties ---------------------------------------------

STATUSES = st.sampled_from((200, 409, 429, 500, 503))
TERMINALS = st.sampled_from(("finish", "error", "abort", None))
RUN_STATUSES = st.sampled_from(("pending", "running", "finished", "aborted", "failed"))
COMPLETIONS = st.sampled_from(("ok", "ok", "ok", "info", "fail", "open"))
STOP_COMPLETIONS: st.SearchStrategy[OpType] = st.sampled_from(("ok", "info", "fail"))
PARTIALS = st.booleans()
CODES = st.sampled_from(("A_RUN_ALREADY_ACTIVE", None))
FINDINGS = st.sampled_from(([], [{"code": "SSE_BAD_JSON", "message": "bad"}]))
PHASES = st.sampled_from(("held", "after"))
LABELS = st.sampled_from(("before", "held", "after"))
ROLES = st.lists(st.sampled_from(("user", "assistant")), max_size=4)
SMALL = st.integers(0, 3)
MS_0_50, MS_0_3000, MS_1000_3000 = st.integers(0, 50), st.integers(0, 3000), st.integers(1000, 3000)
GONE = st.none() | st.integers(1000, 5000)


@st.composite
def race_trials(draw: st.DrawFn) -> Trial:
    """A well-formed single-chat race: 1-5 racers with any outcome, 0-2 stops and /runs
    observations, maybe a released turn, maybe a provider ledger and database snapshots."""
    n = draw(st.integers(1, 5))
    h = History(losers_fast_bound_ms=1 if draw(PARTIALS) else 1000)
    sent = [draw(MS_0_50) for _ in range(n)]
    run_ids: list[str] = []
    for p in range(n):
        h.turn(p, 1000 + sent[p], f"n{p}")
    for p in draw(st.permutations(range(n))):
        kind = draw(COMPLETIONS)
        headers = 1000 + sent[p] + draw(MS_0_3000)
        if kind == "fail":
            h.op("fail", "turn", p, headers, error="refused")
        elif kind == "info":
            partial = {"status": 200, "headers_ns": ns(headers)} if draw(PARTIALS) else {}
            h.op("info", "turn", p, headers + 3000, error="timeout", **partial)
        elif kind == "ok":
            status = draw(STATUSES)
            if status == 200:
                run_id = [None, f"run-{p}", "run-dup"][draw(SMALL) % 3]
                run_ids += [run_id] if run_id else []
                end = None if draw(PARTIALS) else headers + draw(MS_0_3000)
                h.stream(p, headers, end, run_id, terminal=draw(TERMINALS), at_ms=headers + 4000,
                         done=draw(PARTIALS), findings=draw(FINDINGS))
            else:
                h.refuse(p, headers, status=status, json=draw(PARTIALS), code=draw(CODES))
    targets = [*run_ids, "run-zz"]
    for k in range(draw(SMALL) % 3):
        at = draw(MS_1000_3000)
        h.op("invoke", "stop", 20 + k, at, run_id=targets[draw(SMALL) % len(targets)])
        kind = draw(STOP_COMPLETIONS)
        answer = {"status": 200 if draw(PARTIALS) else 404,
                  "stopped": [True, False, None][draw(SMALL) % 3]} if kind == "ok" else {}
        h.op(kind, "stop", 20 + k, at + 5, **answer)
    for k in range(draw(SMALL) % 3):
        rows = {targets[draw(SMALL) % len(targets)]: draw(RUN_STATUSES) for _ in range(draw(SMALL))}
        h.runs(30 + k, draw(MS_1000_3000), draw(PHASES), rows)
    if draw(PARTIALS):
        h.turn(40, 4000, "r0", role="released")
        if draw(PARTIALS):
            h.stream(40, 4001, 4100, "run-r" if draw(PARTIALS) else None, terminal=draw(TERMINALS))
    nonces = [*(f"n{p}" for p in range(n)), "r0", "zz", None]
    calls = None if draw(PARTIALS) else [
        ProviderCall(i, nonce, ns(1001),
                     disconnected_ns=None if (gone := draw(GONE)) is None else ns(gone),
                     complete=nonce is not None or draw(PARTIALS))  # maybe a contact
        for i in range(draw(SMALL))
        for nonce in [nonces[draw(st.integers(0, len(nonces) - 1))]]]
    db = None if draw(PARTIALS) else [
        DbSnapshot(draw(LABELS), ns(1000),
                   runs=tuple(RunRow(targets[draw(SMALL) % len(targets)], CHAT, draw(RUN_STATUSES))
                              for _ in range(draw(SMALL))),
                   messages=messages(*((f"m{i}", role) for i, role in enumerate(draw(ROLES)))))
        for _ in range(draw(SMALL))]
    return h.trial(provider=calls, db=db)


FAST = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROVIDER_PROPERTIES = ("race/no-loser-provider-call", "race/winner-provider-call",
                       "race/no-untracked-run", "race/winner-stoppable")


@FAST
@given(race_trials())
def test_every_checker_is_total_on_well_formed_trials(trial: Trial) -> None:
    results = check_trial(trial, SINGLE_CHAT_RACE)
    assert list(results) == list(SINGLE_CHAT_RACE)
    for prop, result in results.items():
        assert result.property == prop
        assert result.verdict in ("valid", "invalid", "unknown")
        assert "checker crashed" not in result.reason, result.reason
        assert set(result.ops) <= {op.index for op in trial.ops}
    assert results["race/overlap-achieved"].verdict != "invalid"


def unobserved(trial: Trial) -> Trial:
    """The trial without its /runs and /run answers and its database snapshots."""
    return dataclasses.replace(trial, db=None, ops=[
        op for op in trial.ops if op.f not in ("runs", "run")])


@FAST
@given(race_trials())
def test_missing_evidence_is_never_valid(trial: Trial) -> None:
    blind = check_trial(dataclasses.replace(trial, provider=None, db=None), SINGLE_CHAT_RACE)
    assert {p: blind[p].verdict for p in (*PROVIDER_PROPERTIES, "race/no-loser-writes")
            if blind[p].verdict == "valid"} == {}
    unseen = check_trial(unobserved(trial), ["race/winner-stoppable", "race/no-untracked-run"])
    assert {p: r.verdict for p, r in unseen.items() if r.verdict == "valid"} == {}
    if any(t.tracked and t.outcome != "fail" for t in turns(trial)):
        empty = check_trial(dataclasses.replace(trial, provider=[]),
                            ["race/no-loser-provider-call", "race/no-untracked-run"])
        assert {p: r.verdict for p, r in empty.items() if r.verdict == "valid"} == {}


@FAST
@given(race_trials(), st.data())
def test_a_call_with_a_losers_nonce_makes_no_loser_provider_call_invalid(
        trial: Trial, data: st.DataObject) -> None:
    racers = turns(trial, "racer")  # a racer that got 200 is a winner too: ambiguous attribution
    lost = [r for r in losers(racers, find_winner(racers)) if r.nonce is not None and not r.got_200]
    if not lost or trial.provider is None:
        return
    loser = data.draw(st.sampled_from(lost))
    call = ProviderCall(len(trial.provider), loser.nonce, ns(1002))
    after = check_trial(with_calls(trial, [*trial.provider, call]),
                        ["race/no-loser-provider-call"])["race/no-loser-provider-call"]
    assert after.verdict == "invalid"
    assert loser.index in after.ops  # so it never turns invalid into valid either


@FAST
@given(race_trials(), st.data())
def test_permuting_racer_processes_does_not_change_verdicts(
        trial: Trial, data: st.DataObject) -> None:
    processes = sorted({op.process for op in trial.ops if op.f == "turn" and op.process < 40})
    shuffled = data.draw(st.permutations(processes))
    mapping = dict(zip(processes, shuffled, strict=True))
    renamed = dataclasses.replace(trial, ops=[
        dataclasses.replace(op, process=mapping.get(op.process, op.process)) if op.f == "turn"
        else op for op in trial.ops])
    before, after = check_trial(trial), check_trial(renamed)
    assert {p: (r.verdict, r.ops) for p, r in after.items()} == {
        p: (r.verdict, r.ops) for p, r in before.items()}


@FAST
@given(race_trials(), st.data())
def test_a_losers_answer_going_missing_never_makes_losers_409_valid(
        trial: Trial, data: st.DataObject) -> None:
    racers = turns(trial, "racer")
    lost = [r for r in losers(racers, find_winner(racers)) if r.completion is not None]
    if not lost:
        return
    loser = data.draw(st.sampled_from(lost))
    assert loser.completion is not None
    hung = retype(trial, loser.completion.index, "info", error="timeout")
    assert check_trial(hung, ["race/losers-409"])["race/losers-409"].verdict != "valid"


@FAST
@given(race_trials(), st.data())
def test_a_conflict_answer_naming_an_unknown_run_makes_holder_named_invalid_only(
        trial: Trial, data: st.DataObject) -> None:
    """The holder is race/holder-named's alone: naming a run nobody saw makes it invalid,
    citing the answer, and leaves race/losers-409 as it was."""
    racers = turns(trial, "racer")
    answered = [r for r in losers(racers, find_winner(racers))
                if r.outcome == "ok" and r.status == 409 and r.code == "A_RUN_ALREADY_ACTIVE"
                and r.completion is not None and r.completion.get("json") is True]
    if not answered:
        return
    loser = data.draw(st.sampled_from(answered))
    wrong = patch(trial, loser.index, active_run_id="run-nobody")
    props = ["race/holder-named", "race/losers-409"]
    before, after = check_trial(trial, props), check_trial(wrong, props)
    assert after["race/holder-named"].verdict == "invalid", after["race/holder-named"].reason
    assert loser.index in after["race/holder-named"].ops
    assert after["race/losers-409"] == before["race/losers-409"]
