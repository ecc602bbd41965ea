"""The scenario checkers (``checks/lifecycle.py``, ``refusals.py``, ``recovery.py``), Jepsen
style: literal trials in, whole results out.

Each trial is written in the exact op shapes ``program.py`` records (``wait-run-end``,
``stale-stop``, ``foreign-user``, ``bad-inputs``, ``database-outage``, ``burst-into-outage``,
``burst-during-outage``, ``database-down``, ``database-up``, ``restart-service``,
``expire-lease``). Every property has a valid model, invalid twins (one minimal change that breaks
it) and unknown twins (evidence taken away). Times are written in milliseconds and stored in ns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from raceharness.core.checks.base import CheckResult, Verdict
from raceharness.core.history import DbSnapshot, MessageRow, Op, OpType, ProviderCall, RunRow, Trial
from raceharness.core.properties import CHECKERS, SCENARIO_CHECKERS, check_trial
from tests.harness.core.test_checkers import drop, patch, retype, with_meta

# program.py's process ids (not imported: it pulls in trio and httpx; only the pairing matters)
P_SETUP, P_RELEASED, P_STOP, P_OBSERVE, P_PROBE = 10_001, 10_002, 10_003, 10_004, 10_100
P_DATABASE = 10_006
MS = 1_000_000
CHAT = "chat-1"
FOREIGN_LABELS = ("stream", "stop-run", "stop-chat", "run", "runs")
BAD_INPUTS = (("malformed-json", 400), ("array-body", 400), ("missing-messages", 400),
              ("text-not-a-string", 400), ("no-user-text", 400), ("chat-id-not-a-uuid", 400),
              ("oversize", 413), ("no-token", 401))


def ns(ms: float) -> int:
    return round(ms * MS)


class History:
    """Appends ops with increasing indices; each call returns the new op's index."""

    def __init__(self, **meta: Any) -> None:
        self.meta: dict[str, Any] = {"trial": 0, "n": 1, "losers_fast_bound_ms": 1000,
                                     "stop_bound_ms": 2000, "release_ns": ns(1000),
                                     "ended": True, **meta}
        self.ops: list[Op] = []

    def op(self, type_: OpType, f: str, process: int, at_ms: float, nonce: str | None = None,
           /, **value: Any) -> int:
        self.ops.append(Op(len(self.ops), type_, f, process, ns(at_ms), nonce, value))
        return len(self.ops) - 1

    def turn(self, process: int, at_ms: float, nonce: str, role: str = "racer") -> int:
        extra = {"sent_ns": ns(at_ms)} if role == "racer" else {}
        return self.op("invoke", "turn", process, at_ms, nonce, role=role, chat_id=CHAT, **extra)

    def stream(self, process: int, nonce: str | None, headers_ms: float, end_ms: float | None,
               run_id: str | None, terminal: str | None = "finish") -> int:
        frames = ["start", "text-delta", *([terminal] if terminal else []), "[DONE]"]
        return self.op("ok", "turn", process, end_ms or headers_ms, nonce,
                       status=200, code=None, json=False, run_id=run_id, active_run_id=None,
                       chat_id=CHAT, headers_ns=ns(headers_ms),
                       end_ns=None if end_ms is None else ns(end_ms), terminal=terminal,
                       done=terminal is not None, frames=frames, findings=[])

    def refuse(self, process: int, nonce: str | None, at_ms: float, status: int,
               code: str | None) -> int:
        return self.op("ok", "turn", process, at_ms, nonce,
                       status=status, code=code, json=True, run_id=None, active_run_id=None,
                       chat_id=CHAT, headers_ns=ns(at_ms), end_ns=ns(at_ms), terminal=None,
                       done=False, frames=[], findings=[])

    def setup(self) -> None:
        """``new-chat``: ops 0 and 1, the chat's first run ``run-s`` (ended)."""
        self.turn(P_SETUP, 0, "s0", role="setup")
        self.stream(P_SETUP, "s0", 5, 50, "run-s")

    def observe(self, at_ms: float, phase: str, rows: dict[str, str]) -> int:
        """``observe``: a ``runs`` invoke and its ok; returns the ok's index."""
        self.op("invoke", "runs", P_OBSERVE, at_ms, chat_id=CHAT, phase=phase)
        return self.op("ok", "runs", P_OBSERVE, at_ms + 1, phase=phase, status=200,
                       runs=[{"id": k, "status": v} for k, v in rows.items()])

    def stop(self, at_ms: float, run_id: str, role: str, stopped: bool) -> int:
        self.op("invoke", "stop", P_STOP, at_ms, run_id=run_id, role=role)
        return self.op("ok", "stop", P_STOP, at_ms + 10, status=200, stopped=stopped)

    def probe(self, k: int, at_ms: float, role: str, label: str, expect: int, status: int,
              nonce: str | None = None) -> int:
        self.op("invoke", "probe", P_PROBE + k, at_ms, nonce, role=role, label=label,
                expect_status=expect)
        return self.op("ok", "probe", P_PROBE + k, at_ms + 1, nonce, status=status)

    def latest(self, at_ms: float, phase: str, run: dict[str, Any] | None,
               message: dict[str, Any] | None = None) -> int:
        """``wait-run-end`` (phase final) / ``expire-lease`` (phase reclaimed)."""
        self.op("invoke", "run", P_OBSERVE, at_ms, chat_id=CHAT, phase=phase,
                run_id=None if run is None else run["id"])
        value: dict[str, Any] = {
            "phase": phase, "status": 200,
            "runs": [] if run is None else [{"id": run["id"], "status": run["status"]}],
            "run": run}
        if phase == "final":
            value["message"] = message
        return self.op("ok", "run", P_OBSERVE, at_ms + 100, **value)

    def trial(self, provider: list[ProviderCall] | None = None,
              db: list[DbSnapshot] | None = None) -> Trial:
        return Trial(meta=dict(self.meta), ops=list(self.ops), provider=provider, db=db)


# -- twins: small edits of a trial ---------------------------------------------------------------

# patch / retype / drop / with_meta: shared with the race checkers' tests


def without_meta(trial: Trial, key: str) -> Trial:
    return dataclasses.replace(trial, meta={k: v for k, v in trial.meta.items() if k != key})


def with_calls(trial: Trial, calls: list[ProviderCall] | None) -> Trial:
    return dataclasses.replace(trial, provider=calls)


def with_db(trial: Trial, snapshots: list[DbSnapshot] | None) -> Trial:
    return dataclasses.replace(trial, db=snapshots)


def messages(*ids: str) -> tuple[MessageRow, ...]:
    return tuple(MessageRow(id=i, chat_id=CHAT, role="user" if n % 2 == 0 else "assistant",
                            status="completed") for n, i in enumerate(ids))


# -- run/expected-end (wait-run-end) -------------------------------------------------------------

ANSWER = "Hello, world."
WON_RUN = {"id": "run-w", "status": "succeeded", "error": None}
COMPLETED = {"status": "completed", "content": ANSWER}
END_RACER, FINAL = 5, 4


def expected_end() -> Trial:
    """new-chat, burst (finish), wait-run-end, drain: the run succeeded with the whole answer."""
    h = History(expect_end="succeeded", expected_content=ANSWER)
    h.setup()                                                                   # 0, 1
    h.turn(0, 1000, "r0")                                                       # 2
    h.latest(1100, "final", WON_RUN, COMPLETED)                                 # 3, 4
    h.stream(0, "r0", 1005, 1150, "run-w")                                      # 5
    return h.trial()


def expected_failure() -> Trial:
    """provider-error: the scenario expects the run to fail (no expected content is recorded)."""
    trial = without_meta(with_meta(expected_end(), expect_end="failed"), "expected_content")
    return patch(trial, FINAL, run={**WON_RUN, "status": "failed", "error": "provider"},
                 message={"status": "failed", "content": "Hel"})


# -- stop/stale-ignored (stale-stop) -------------------------------------------------------------

BEFORE_STALE, STALE_INVOKE, STALE, AFTER_STALE, STALE_RACER = 4, 5, 6, 8, 11
STALE_ROWS = {"run-w": "running", "run-s": "succeeded"}


def stale_stop() -> Trial:
    """new-chat, burst (hold), stale-stop (observe before-stale, stop run-s, observe
    after-stale), stop-winner, drain."""
    h = History()
    h.setup()                                                                   # 0, 1
    h.turn(0, 1000, "r0")                                                       # 2
    h.observe(1050, "before-stale", STALE_ROWS)                                 # 3, 4
    h.stop(1100, "run-s", "stale", stopped=False)                               # 5, 6
    h.observe(1200, "after-stale", STALE_ROWS)                                  # 7, 8
    h.stop(1300, "run-w", "winner", stopped=True)                               # 9, 10
    h.stream(0, "r0", 1005, 1320, "run-w", terminal="abort")                    # 11
    return h.trial()


def stale_rows(index: int, **rows: str | None) -> Callable[[], Trial]:
    """stale_stop with the observation at ``index`` listing ``rows`` (None: left out)."""
    listed = {**STALE_ROWS, **rows}
    return lambda: patch(stale_stop(), index, runs=[{"id": k, "status": v}
                                                     for k, v in listed.items() if v])


# -- auth/foreign-denied (foreign-user) ----------------------------------------------------------

FOREIGN = (6, 8, 10, 12, 14)  # the probes' completions, in FOREIGN_LABELS order
BEFORE_FOREIGN, AFTER_FOREIGN_INVOKE, AFTER_FOREIGN, FOREIGN_RACER = 4, 15, 16, 19
FOREIGN_ROWS = {"run-w": "running", "run-s": "succeeded"}
FOREIGN_PROVIDER = [ProviderCall(0, "s0", ns(1), tokens_sent=3, completed_ns=ns(40)),
                    ProviderCall(1, "r0", ns(1003), tokens_sent=1, disconnected_ns=ns(1310))]
FOREIGN_DB = [DbSnapshot(label, ns(at), runs=(RunRow("run-s", CHAT, "succeeded"),
                                              RunRow("run-w", CHAT, "running")),
                         messages=messages("m1", "m2", "m3", "m4"))
              for label, at in (("before-foreign", 1050), ("after-foreign", 1200))]


def foreign_user(db: bool = False) -> Trial:
    """new-chat, burst (hold), foreign-user (observe before-foreign, 5 probes — the stream
    probe with its nonce f0 — observe after-foreign), stop-winner, drain."""
    h = History()
    h.setup()                                                                   # 0, 1
    h.turn(0, 1000, "r0")                                                       # 2
    h.observe(1050, "before-foreign", FOREIGN_ROWS)                             # 3, 4
    for k, label in enumerate(FOREIGN_LABELS):                                  # 5 … 14
        h.probe(k, 1100 + 10 * k, "foreign", label, 403, 403,
                nonce="f0" if label == "stream" else None)
    h.observe(1200, "after-foreign", FOREIGN_ROWS)                              # 15, 16
    h.stop(1300, "run-w", "winner", stopped=True)                               # 17, 18
    h.stream(0, "r0", 1005, 1320, "run-w", terminal="abort")                    # 19
    return h.trial(provider=list(FOREIGN_PROVIDER), db=list(FOREIGN_DB) if db else None)


# -- input/rejected-cleanly (bad-inputs) ---------------------------------------------------------

BAD = (5, 7, 9, 11, 13, 15, 17, 19)  # the probes' completions, in BAD_INPUTS order
OVERSIZE, NO_TOKEN = BAD[6], BAD[7]
BEFORE = DbSnapshot("before", ns(1000), runs=(RunRow("run-s", CHAT, "succeeded"),),
                    messages=messages("m1", "m2"))
AFTER = DbSnapshot("after", ns(1300), runs=BEFORE.runs, messages=BEFORE.messages)
BAD_PROVIDER = [ProviderCall(0, "s0", ns(1), tokens_sent=3, completed_ns=ns(40)),
                ProviderCall(1, "released", ns(1401), tokens_sent=3, completed_ns=ns(1450))]


def bad_inputs() -> Trial:
    """new-chat, observe before, bad-inputs (8 probes, one nonce), observe after, released-turn."""
    h = History()
    h.setup()                                                                   # 0, 1
    h.observe(1000, "before", {"run-s": "succeeded"})                           # 2, 3
    for k, (label, expect) in enumerate(BAD_INPUTS):                            # 4 … 19
        h.probe(k, 1100 + 10 * k, "bad-input", label, expect, expect, nonce="bad")
    h.observe(1300, "after", {"run-s": "succeeded"})                            # 20, 21
    h.turn(P_RELEASED, 1400, "released", role="released")                       # 22
    h.stream(P_RELEASED, "released", 1401, 1500, "run-r")                       # 23
    return h.trial(provider=list(BAD_PROVIDER), db=[BEFORE, AFTER])


# -- outage/fails-closed (database-outage) -------------------------------------------------------

OUTAGE = (5, 6, 7)  # the three outage turns' completions
OUTAGE_PROVIDER = [ProviderCall(0, "s0", ns(1), tokens_sent=3, completed_ns=ns(40)),
                   ProviderCall(1, "released", ns(1401), tokens_sent=3, completed_ns=ns(1450))]


def outage() -> Trial:
    """new-chat, database-outage (3 concurrent turns: 503 A_RUN_BEGIN_FAILED), released-turn."""
    h = History()
    h.setup()                                                                   # 0, 1
    for i in range(3):                                                          # 2, 3, 4
        h.turn(P_PROBE + i, 1000, f"o{i}", role=f"outage{i}")
    for i in range(3):                                                          # 5, 6, 7
        h.refuse(P_PROBE + i, f"o{i}", 1010 + i, 503, "A_RUN_BEGIN_FAILED")
    h.turn(P_RELEASED, 1400, "released", role="released")                       # 8
    h.stream(P_RELEASED, "released", 1401, 1500, "run-r")                       # 9
    return h.trial(provider=list(OUTAGE_PROVIDER))


# -- a real outage: outage/fails-closed and outage/runs-settle ------------------------------------

GATE_REFUSED, DOWN_REFUSED, RACE_RECOVERED = (5, 6), (10, 11), 15


def database(h: History, at_ms: float, action: str, **info: Any) -> None:
    """A ``database`` invoke and its ok (``database-down`` / ``database-up``)."""
    h.op("invoke", "database", P_DATABASE, at_ms, action=action, **info)
    h.op("ok", "database", P_DATABASE, at_ms + 10, action=action)


def recovered(h: History, at_ms: float, runs: dict[str, str], waited_ms: int = 990) -> int:
    """``database-up``'s observation of the chat; returns the ok's index."""
    h.op("invoke", "runs", P_OBSERVE, at_ms, chat_id=CHAT, phase="recovered", within_s=30)
    return h.op("ok", "runs", P_OBSERVE, at_ms + waited_ms, phase="recovered", status=200,
                runs=[{"id": k, "status": v} for k, v in runs.items()], waited_ms=waited_ms)


def mid_race() -> Trial:
    """new-chat, burst-into-outage (2 turns in the gate, the database goes), burst-during-outage
    (2 turns refused connections), database-up, released-turn."""
    h = History()
    h.setup()                                                                   # 0, 1
    for i in range(2):                                                          # 2, 3
        h.turn(P_PROBE + i, 1000, f"g{i}", role=f"outage-gate{i}")
    h.op("invoke", "database", P_DATABASE, 1050, action="down", at="gate", run_id=None,
         waiting=2, n=2)                                                        # 4
    for i in range(2):                                                          # 5, 6
        h.refuse(P_PROBE + i, f"g{i}", 1060 + i, 503, "A_RUN_BEGIN_FAILED")
    h.op("ok", "database", P_DATABASE, 1100, action="down", terminated=3)       # 7
    for i in range(2):                                                          # 8, 9
        h.turn(P_PROBE + i, 1200, f"d{i}", role=f"outage-down{i}")
    for i in range(2):                                                          # 10, 11
        h.refuse(P_PROBE + i, f"d{i}", 6200 + i, 503, "A_RUN_BEGIN_FAILED")
    database(h, 6300, "up")                                                     # 12, 13
    recovered(h, 6310, {"run-s": "succeeded"})                                  # 14, 15
    h.turn(P_RELEASED, 7400, "released", role="released")                       # 16
    h.stream(P_RELEASED, "released", 7401, 7500, "run-r")                       # 17
    return h.trial(provider=list(OUTAGE_PROVIDER))


STREAM_RACER, STREAM_RECOVERED = 5, 9


def mid_stream() -> Trial:
    """new-chat, burst (hold), database-down, drain (the answer could not be saved: the stream
    ends with an error frame), database-up (run-w recorded failed), released-turn."""
    h = History()
    h.setup()                                                                   # 0, 1
    h.turn(0, 1000, "r0")                                                       # 2
    h.op("invoke", "database", P_DATABASE, 1100, action="down", at="stream",
         run_id="run-w")                                                        # 3
    h.op("ok", "database", P_DATABASE, 1150, action="down", terminated=5)       # 4
    h.stream(0, "r0", 1005, 6200, "run-w", terminal="error")                    # 5
    database(h, 6300, "up")                                                     # 6, 7
    recovered(h, 6310, {"run-w": "failed", "run-s": "succeeded"})               # 8, 9
    h.turn(P_RELEASED, 7400, "released", role="released")                       # 10
    h.stream(P_RELEASED, "released", 7401, 7500, "run-r")                       # 11
    return h.trial()


def finished_but(status: str) -> Trial:
    """mid_stream whose stream ended ``finish`` while its run was recorded ``status``."""
    trial = patch(mid_stream(), STREAM_RACER, terminal="finish",
                  frames=["start", "text-delta", "finish", "[DONE]"])
    return patch(trial, STREAM_RECOVERED, runs=[{"id": "run-w", "status": status}])


# -- recovery/lease-reclaims (kill-owner, restart-service, expire-lease) -------------------------

BLOCKED_INVOKE, BLOCKED, RECLAIMED_INVOKE, RECLAIMED, LEASE_RACER = 5, 6, 7, 8, 11
ABORTED_RUN = {"id": "run-w", "status": "aborted", "error": "lease expired"}


def crash_recovery() -> Trial:
    """new-chat, burst (hold), kill-owner, restart-service (a blocked turn: 409), expire-lease
    (run-w aborted), released-turn, then the drain records the killed winner's stream."""
    h = History(expect_reclaim=True, killed_instance=0)
    h.setup()                                                                   # 0, 1
    h.turn(0, 1000, "r0")                                                       # 2
    h.op("invoke", "kill", P_STOP, 1100, instance=0, run_id="run-w")            # 3
    h.op("ok", "kill", P_STOP, 1101, instance=0)                                # 4
    h.turn(P_PROBE, 1500, "blocked", role="blocked")                            # 5
    h.refuse(P_PROBE, "blocked", 1510, 409, "A_RUN_ALREADY_ACTIVE")             # 6
    h.latest(1600, "reclaimed", ABORTED_RUN)                                    # 7, 8
    h.turn(P_RELEASED, 9000, "released", role="released")                       # 9
    h.stream(P_RELEASED, "released", 9001, 9100, "run-r")                       # 10
    h.stream(0, "r0", 1005, None, "run-w", terminal=None)                       # 11
    return h.trial()


def no_winner(trial: Trial, racer: int) -> Trial:
    """The trial with its racer refused: no run was started."""
    return retype(trial, racer, "ok", status=409, code="A_RUN_ALREADY_ACTIVE", json=True,
                  run_id=None, headers_ns=ns(1006), end_ns=ns(1006), terminal=None, done=False,
                  frames=[], findings=[])


def storm(expect: str = "aborted") -> Trial:
    """``disconnect-storm`` on two chats: c1's client saw its run start (run-1) before
    dropping; c2's dropped right after sending (no run id known). Ops 0-3 the storm turns,
    4-7 the final /run per chat."""
    h = History(storm_expect=expect,
                **({"expected_content": ANSWER} if expect == "succeeded" else {}))
    h.op("invoke", "turn", P_PROBE, 10, "st0", role="storm", chat_id="c1", drop_at="start")
    h.op("ok", "turn", P_PROBE, 20, "st0", status=200, dropped_at="start", run_id="run-1")
    h.op("invoke", "turn", P_PROBE + 1, 10, "st1", role="storm", chat_id="c2", drop_at="sent")
    h.op("ok", "turn", P_PROBE + 1, 11, "st1", status=None, dropped_at="sent", run_id=None)
    end = "aborted" if expect == "aborted" else "succeeded"
    for k, (chat, run_id) in enumerate((("c1", "run-1"), ("c2", "run-2"))):
        h.op("invoke", "run", P_OBSERVE, 100 + k, chat_id=chat, phase="storm")
        h.op("ok", "run", P_OBSERVE, 110 + k, phase="storm", status=200, chat_id=chat,
             runs=[{"id": run_id, "status": end}],
             run={"id": run_id, "status": end, "error": None},
             message={"status": "completed" if end == "succeeded" else "aborted",
                      "content": ANSWER if end == "succeeded" else "Hel"})
    return h.trial()


# -- chats/created-once (fresh-chat-id, burst, count-chats) -------------------------------------

WON_CREATE, COUNTED_INVOKE, COUNTED = 3, 6, 7


def created_once(count: int | None = 1, status: int = 200) -> Trial:
    """``create-on-first-turn``: 3 racers on a chat id nobody made yet (CHAT stands for the
    fresh id), one 200 creates it (run-w), 2×409 naming run-w; then ``count-chats`` (a
    ``chats`` op)."""
    h = History(n=3)
    for p in range(3):
        h.turn(p, 1000 + p * 0.01, f"n{p}")                                    # 0, 1, 2
    h.stream(0, "n0", 1005, 1100, "run-w")                                     # 3
    h.refuse(1, "n1", 1010, 409, "A_RUN_ALREADY_ACTIVE")                       # 4
    h.refuse(2, "n2", 1011, 409, "A_RUN_ALREADY_ACTIVE")                       # 5
    h.op("invoke", "chats", P_RELEASED, 1200, chat_id=CHAT)                    # 6
    h.op("ok", "chats", P_RELEASED, 1210, status=status, count=count)          # 7
    return patch(patch(h.trial(), 4, active_run_id="run-w"), 5, active_run_id="run-w")


# -- per property: valid, invalid twins, unknown twins -------------------------------------------

Case = tuple[str, Callable[[], Trial], Verdict, tuple[int, ...], str]

CASES: list[Case] = [
    ("chats/created-once", created_once, "valid", (), "one winner of 3 and one chat record"),
    ("chats/created-once", lambda: created_once(2), "invalid", (COUNTED,),
     "op 7: 2 chat records under one chat id after the racers created it (duplicates)"),
    ("chats/created-once", lambda: created_once(0), "invalid", (COUNTED, WON_CREATE),
     "op 7: no chat record, yet op 3 got 200 on it"),
    ("chats/created-once",  # a second 200 on the new chat: two creators, whatever the count
     lambda: patch(created_once(), 4, status=200, code=None, json=False, run_id="run-x"),
     "invalid", (WON_CREATE, 4), "2 racers got 200 on one new chat (ops 3, 4)"),
    ("chats/created-once",  # duplicates are invalid even when no racer got 200
     lambda: no_winner(created_once(2), WON_CREATE), "invalid",
     (COUNTED,), "(duplicates)"),
    ("chats/created-once", lambda: created_once(None, status=0), "unknown", (),
     "op 7: the target cannot count chat records (status 0)"),
    ("chats/created-once", lambda: drop(created_once(), COUNTED_INVOKE, COUNTED), "unknown", (),
     "the chat's records were not counted (no answered count-chats)"),
    ("chats/created-once",  # count-chats timed out
     lambda: retype(created_once(), COUNTED, "info", error="TooSlowError"), "unknown", (),
     "no answered count-chats"),
    ("chats/created-once", lambda: no_winner(created_once(), WON_CREATE), "unknown", (),
     "no racer got 200 (409×3): the chat was not created by the race"),
    ("chats/created-once", lambda: no_winner(created_once(0), WON_CREATE), "unknown", (),
     "the chat was not created by the race"),
    ("chats/created-once", lambda: drop(created_once(), 0, 1, 2, 3, 4, 5), "unknown", (),
     "no racers recorded"),

    ("storm/runs-end", storm, "valid", (5, 7), "all 2 runs ended aborted (or never started)"),
    ("storm/runs-end", lambda: storm("succeeded"), "valid", (5, 7),
     "all 2 runs ended succeeded, persisted in full"),
    ("storm/runs-end", lambda: patch(storm(), 5, run={"id": "run-1", "status": "succeeded"}),
     "invalid", (5,), "run run-1 ended 'succeeded' although its client dropped mid-stream"),
    ("storm/runs-end", lambda: patch(storm(), 7, run={"id": "run-2", "status": "running"}),
     "invalid", (7,), "run run-2 still running"),
    ("storm/runs-end", lambda: patch(storm("succeeded"), 7,
                                     message={"status": "completed", "content": "Hel"}),
     "invalid", (7,), "run run-2 persisted 'Hel', not the whole answer"),
    ("storm/runs-end", lambda: patch(storm(), 5, run={"id": "run-x", "status": "aborted"}),
     "invalid", (5,), "the latest run is not the storm's run run-1"),
    ("storm/runs-end", lambda: with_meta(storm(), storm_calls_open=["st1"], storm_wait_s=10),
     "invalid", (2,), "1 provider call(s) still streaming 10s after their clients dropped"),
    ("storm/runs-end", lambda: with_meta(storm("succeeded"), storm_calls_open=["st1"]),
     "valid", (5, 7), "all 2 runs ended succeeded"),
    ("storm/runs-end", lambda: patch(storm(), 7, status=503), "unknown", (7,),
     "1 chats could not be observed"),
    ("storm/runs-end", lambda: drop(storm(), 4, 5, 6, 7), "unknown", (),
     "no disconnect storm was observed"),
    ("run/expected-end", expected_end, "valid", (FINAL,), "run run-w ended succeeded as expected"),
    ("run/expected-end", expected_failure, "valid", (FINAL,), "run run-w ended failed as expected"),
    ("run/expected-end",
     lambda: patch(expected_end(), FINAL, message={"status": "completed", "content": "Hello,"}),
     "invalid", (FINAL,), "run run-w persisted 'Hello,', the provider sent 'Hello, world.'"),
    ("run/expected-end",
     lambda: patch(expected_end(), FINAL, message={"status": "streaming", "content": ANSWER}),
     "invalid", (FINAL,), "run run-w succeeded but its message is"),
    ("run/expected-end", lambda: patch(expected_end(), FINAL, message=None), "invalid", (FINAL,),
     "its message is None, not completed"),
    ("run/expected-end",
     lambda: patch(expected_end(), FINAL, run={**WON_RUN, "status": "running"}), "invalid",
     (FINAL,), "run run-w is still running after the bound"),
    ("run/expected-end",
     lambda: patch(expected_end(), FINAL, run={**WON_RUN, "status": "pending"}), "invalid",
     (FINAL,), "run run-w is still pending after the bound"),
    ("run/expected-end",
     lambda: patch(expected_end(), FINAL, run={**WON_RUN, "id": "run-s"}), "invalid", (FINAL,),
     "/run does not show the run run-w as the chat's latest"),
    ("run/expected-end", lambda: patch(expected_end(), FINAL, run=None), "invalid", (FINAL,),
     "(saw None)"),
    ("run/expected-end",
     lambda: patch(expected_end(), FINAL, run={**WON_RUN, "status": "failed", "error": "boom"}),
     "invalid", (FINAL,), "run run-w ended 'failed' (error 'boom'), expected 'succeeded'"),
    ("run/expected-end", lambda: patch(expected_failure(), FINAL, run=WON_RUN), "invalid",
     (FINAL,), "run run-w ended 'succeeded' (error None), expected 'failed'"),
    ("run/expected-end", lambda: drop(expected_end(), 3, FINAL), "unknown", (),
     "the run's end was not observed"),
    ("run/expected-end",  # wait-run-end's bound passed without any answer from /run
     lambda: retype(expected_end(), FINAL, "info", phase="final", status=0, runs=[], run=None,
                    message=None), "unknown", (), "the run's end was not observed"),
    ("run/expected-end",  # only a 200 answer is an observation (checks/observations.py)
     lambda: patch(expected_end(), FINAL, status=503, runs=[], run=None, message=None),
     "unknown", (FINAL,), "/run answered 503: the run's end was not observed"),
    ("run/expected-end", lambda: without_meta(expected_end(), "expect_end"), "unknown", (),
     "the scenario named no expected end"),
    ("run/expected-end", lambda: no_winner(expected_end(), END_RACER), "unknown", (),
     "no run started, so none could end"),

    ("stop/stale-ignored", stale_stop, "valid", (STALE,),
     "the stale stop answered stopped:false, the ended run run-s kept its status and the newer "
     "run kept running"),
    ("stop/stale-ignored",  # no before-stale: the setup stream's finish frame says succeeded
     lambda: drop(stale_stop(), BEFORE_STALE - 1, BEFORE_STALE), "valid", (STALE,),
     "the ended run run-s kept its status"),
    ("stop/stale-ignored", stale_rows(AFTER_STALE, **{"run-s": "aborted"}), "invalid", (STALE,),
     "the ended run run-s is 'aborted' after the stale stop (op 8), was 'succeeded'"),
    ("stop/stale-ignored",  # rewritten although before-stale is missing: the frame said finish
     lambda: drop(stale_rows(AFTER_STALE, **{"run-s": "failed"})(), BEFORE_STALE - 1,
                  BEFORE_STALE), "invalid", (STALE,),
     "the ended run run-s is 'failed' after the stale stop (op 8), was 'succeeded'"),
    ("stop/stale-ignored", stale_rows(AFTER_STALE, **{"run-s": "running"}), "invalid", (STALE,),
     "the ended run run-s is 'running' after the stale stop"),
    ("stop/stale-ignored", stale_rows(AFTER_STALE, **{"run-s": None}), "invalid", (STALE,),
     "the ended run run-s is gone from op 8 after the stale stop"),
    ("stop/stale-ignored",  # a truncated list without it says nothing of it
     lambda: patch(stale_rows(AFTER_STALE, **{"run-s": None})(), AFTER_STALE, truncated=True),
     "unknown", (), "the ended run run-s was not observed after the stale stop"),
    ("stop/stale-ignored",  # nothing says what it was before: no before-stale, no terminal frame
     lambda: patch(drop(stale_stop(), BEFORE_STALE - 1, BEFORE_STALE), 1, terminal=None),
     "unknown", (), "the ended run run-s's status before the stale stop is unknown"),
    ("stop/stale-ignored", lambda: patch(stale_stop(), STALE, stopped=True), "invalid", (STALE,),
     "a stop aimed at the ended run run-s answered 200 stopped=True, expected an answer that "
     "nothing was stopped (protocol: 200 stopped:false)"),
    ("stop/stale-ignored", lambda: patch(stale_stop(), STALE, status=404, stopped=None),
     "invalid", (STALE,), "answered 404 stopped=None"),
    ("stop/stale-ignored",
     lambda: patch(stale_stop(), AFTER_STALE, runs=[{"id": "run-s", "status": "succeeded"},
                                                    {"id": "run-w", "status": "aborted"}]),
     "invalid", (STALE,), "after a stop aimed at an ended run, the newer run run-w is 'aborted'"),
    ("stop/stale-ignored",  # the same, seen in the database instead of /runs
     lambda: with_db(drop(stale_stop(), AFTER_STALE - 1, AFTER_STALE), [DbSnapshot(
         "after-stale", ns(1200), runs=(RunRow("run-s", CHAT, "succeeded"),
                                        RunRow("run-w", CHAT, "aborted")))]),
     "invalid", (STALE,), "the newer run run-w is 'aborted'"),
    ("stop/stale-ignored", lambda: drop(stale_stop(), AFTER_STALE - 1, AFTER_STALE), "unknown",
     (), "the newer run was not observed after the stale stop"),
    ("stop/stale-ignored",  # a list of every run of the chat without the newer run
     stale_rows(AFTER_STALE, **{"run-w": None}), "invalid", (STALE,),
     "after a stop aimed at an ended run, the newer run run-w is gone (op 8)"),
    ("stop/stale-ignored", lambda: patch(stale_stop(), AFTER_STALE, status=500, runs=[]),
     "unknown", (), "the newer run was not observed after the stale stop"),
    ("stop/stale-ignored",
     lambda: retype(stale_stop(), STALE, "info", error="TooSlowError"), "unknown",
     (STALE_INVOKE,), "the stale stop got no answer"),
    ("stop/stale-ignored", lambda: drop(stale_stop(), STALE_INVOKE, STALE), "unknown", (),
     "no stale stop was sent"),
    ("stop/stale-ignored", lambda: no_winner(stale_stop(), STALE_RACER), "unknown", (),
     "no newer run was live to be hit by the stale stop"),

    ("auth/foreign-denied", foreign_user, "valid", FOREIGN,
     "all 5 foreign requests got 403, no side effect"),
    ("auth/foreign-denied", lambda: patch(foreign_user(), FOREIGN[1], status=200), "invalid",
     (FOREIGN[1],), "another user's token got stop-run: 200 (expected 403 everywhere)"),
    ("auth/foreign-denied",
     lambda: patch(patch(foreign_user(), FOREIGN[0], status=200), FOREIGN[4], status=404),
     "invalid", (FOREIGN[0], FOREIGN[4]), "another user's token got stream: 200; runs: 404"),
    ("auth/foreign-denied",  # a wrong answer outweighs a missing one
     lambda: retype(patch(foreign_user(), FOREIGN[0], status=200), FOREIGN[3], "info", status=0),
     "invalid", (FOREIGN[0],), "stream: 200"),
    ("auth/foreign-denied",
     lambda: patch(foreign_user(), AFTER_FOREIGN, runs=[{"id": "run-w", "status": "aborted"}]),
     "invalid", (AFTER_FOREIGN,), "after the foreign user's requests the owner's run run-w is "
     "'aborted': a side effect (op 16)"),
    ("auth/foreign-denied", lambda: with_calls(foreign_user(), [
        *FOREIGN_PROVIDER, ProviderCall(2, "f0", ns(1101), tokens_sent=3, completed_ns=ns(1150))]),
     "invalid", (), "1 provider call(s) carry the foreign stream probe's nonce (call 2)"),
    ("auth/foreign-denied",
     lambda: patch(foreign_user(), AFTER_FOREIGN, runs=[
         {"id": "run-f", "status": "running"}, *({"id": k, "status": v}
                                                for k, v in FOREIGN_ROWS.items())]),
     "invalid", (AFTER_FOREIGN,), "run run-f appeared after the foreign user's requests (op 16)"),
    ("auth/foreign-denied",
     lambda: patch(foreign_user(), AFTER_FOREIGN, runs=[{"id": "run-s", "status": "succeeded"}]),
     "invalid", (AFTER_FOREIGN,), "the owner's run run-w is gone: a side effect (op 16)"),
    ("auth/foreign-denied", lambda: foreign_user(db=True), "valid", FOREIGN,
     "all 5 foreign requests got 403, no side effect"),
    ("auth/foreign-denied",  # seen in the database only: /runs answered before and after alike
     lambda: with_db(foreign_user(), [FOREIGN_DB[0], dataclasses.replace(
         FOREIGN_DB[1], runs=FOREIGN_DB[1].runs + (RunRow("run-f", CHAT, "running"),))]),
     "invalid", (), "run run-f appeared after the foreign user's requests (db after-foreign "
     "snapshot)"),
    ("auth/foreign-denied",
     lambda: with_db(foreign_user(), [FOREIGN_DB[0], dataclasses.replace(
         FOREIGN_DB[1], messages=FOREIGN_DB[1].messages + messages("m5"))]),
     "invalid", (), "1 message row(s) appeared after the foreign user's requests"),
    ("auth/foreign-denied", lambda: with_calls(foreign_user(), None), "unknown", FOREIGN,
     "no provider access to see the stream probe's provider calls"),
    ("auth/foreign-denied",  # a stream probe recorded without its nonce cannot be looked up
     lambda: dataclasses.replace(foreign_user(), ops=[
         dataclasses.replace(op, nonce=None) if op.f == "probe" else op
         for op in foreign_user().ops]),
     "unknown", FOREIGN, "the stream probe carried no nonce"),
    ("auth/foreign-denied", lambda: drop(foreign_user(), BEFORE_FOREIGN - 1, BEFORE_FOREIGN),
     "unknown", FOREIGN, "no before-foreign/after-foreign observation pair shows no new run"),
    ("auth/foreign-denied", lambda: retype(foreign_user(), FOREIGN[3], "info", status=0),
     "unknown", (FOREIGN[3],), "1 foreign request(s) got no answer"),
    ("auth/foreign-denied", lambda: drop(foreign_user(), *range(5, 15)), "unknown", (),
     "no request was made with another user's token"),
    ("auth/foreign-denied", lambda: no_winner(foreign_user(), FOREIGN_RACER), "unknown", FOREIGN,
     "all 5 foreign requests got 403, but the owner's run was not observed after them"),
    ("auth/foreign-denied",  # no /runs path and no --dsn: nothing proves "no side effect"
     lambda: drop(foreign_user(), AFTER_FOREIGN_INVOKE, AFTER_FOREIGN), "unknown", FOREIGN,
     "the owner's run was not observed after them"),

    ("input/rejected-cleanly", bad_inputs, "valid", BAD,
     "all 8 bad requests got their 4xx, no rows, no provider call"),
    ("input/rejected-cleanly", lambda: patch(bad_inputs(), OVERSIZE, status=400), "invalid",
     (OVERSIZE,), "oversize: 400, expected 413"),
    ("input/rejected-cleanly", lambda: patch(bad_inputs(), NO_TOKEN, status=200), "invalid",
     (NO_TOKEN,), "no-token: 200, expected 401"),
    ("input/rejected-cleanly",
     lambda: with_calls(bad_inputs(), [*BAD_PROVIDER, ProviderCall(2, "bad", ns(1175))]),
     "invalid", (), "1 provider call(s) for rejected input"),
    ("input/rejected-cleanly",
     lambda: with_db(bad_inputs(), [BEFORE, dataclasses.replace(
         AFTER, messages=AFTER.messages + messages("m3"))]),
     "invalid", (), "rejected input wrote rows: runs 1→1, messages 2→3"),
    ("input/rejected-cleanly",
     lambda: with_db(bad_inputs(), [BEFORE, dataclasses.replace(
         AFTER, runs=AFTER.runs + (RunRow("run-x", CHAT, "running"),))]),
     "invalid", (), "rejected input wrote rows: runs 1→2, messages 2→2"),
    ("input/rejected-cleanly", lambda: retype(bad_inputs(), BAD[0], "info", status=0), "unknown",
     (BAD[0],), "1 bad request(s) got no answer"),
    ("input/rejected-cleanly", lambda: with_calls(bad_inputs(), None), "unknown", (),
     "without provider and database access nothing proves no side effect"),
    ("input/rejected-cleanly", lambda: with_db(bad_inputs(), None), "unknown", (),
     "without provider and database access nothing proves no side effect"),
    ("input/rejected-cleanly", lambda: with_db(bad_inputs(), [BEFORE]), "unknown", (),
     "nothing proves no side effect"),
    ("input/rejected-cleanly", lambda: drop(bad_inputs(), *range(4, 20)), "unknown", (),
     "no bad input was sent"),

    ("outage/fails-closed", outage, "valid", OUTAGE,
     "all 3 turns got 503 A_RUN_BEGIN_FAILED, no provider call"),
    ("outage/fails-closed",
     lambda: patch(outage(), OUTAGE[1], status=200, code=None, json=False, run_id=None,
                   frames=["start", "text-delta", "finish", "[DONE]"]),
     "invalid", (OUTAGE[1],), "1 of 3 turns during the database failure were not 503 "
     "A_RUN_BEGIN_FAILED: op 6: 200 runId=None"),
    ("outage/fails-closed", lambda: patch(outage(), OUTAGE[2], code="A_INTERNAL"), "invalid",
     (OUTAGE[2],), "op 7: 503 runId=None"),
    ("outage/fails-closed",
     lambda: with_calls(outage(), [*OUTAGE_PROVIDER, ProviderCall(2, "o1", ns(1005))]),
     "invalid", (), "1 provider call(s) for turns that could not begin"),
    ("outage/fails-closed", lambda: with_calls(outage(), None), "unknown", (),
     "503s as expected, but without provider access nothing proves no provider call"),
    ("outage/fails-closed", lambda: retype(outage(), OUTAGE[0], "info", error="TooSlowError"),
     "unknown", (OUTAGE[0],), "1 turns got no answer"),
    ("outage/fails-closed", lambda: retype(outage(), OUTAGE[2], "fail", error="refused"),
     "unknown", (OUTAGE[2],), "1 turns got no answer"),
    ("outage/fails-closed", lambda: drop(outage(), 2, 3, 4, *OUTAGE), "unknown", (),
     "no turn was sent during a database failure"),

    ("outage/fails-closed", mid_race, "valid", (*GATE_REFUSED, *DOWN_REFUSED),
     "all 4 turns got 503 A_RUN_BEGIN_FAILED, no provider call"),
    ("outage/fails-closed",  # an untracked stream still open when the turn's bound passed
     lambda: retype(mid_race(), GATE_REFUSED[0], "info", status=200, run_id=None,
                    headers_ns=ns(6060), error="TooSlowError"),
     "invalid", (GATE_REFUSED[0],), "1 of 4 turns during the database failure were not 503 "
     "A_RUN_BEGIN_FAILED: op 5: 200 runId=None"),
    ("outage/fails-closed", lambda: patch(mid_race(), DOWN_REFUSED[1], status=500, code=None),
     "invalid", (DOWN_REFUSED[1],), "op 11: 500 runId=None"),

    ("outage/runs-settle", mid_race, "valid", (RACE_RECOVERED,),
     "990 ms after the database came back no run of the chat was active"),
    ("outage/runs-settle", mid_stream, "valid", (STREAM_RECOVERED,),
     "no run of the chat was active; the in-flight run run-w ended failed (stream: error)"),
    ("outage/runs-settle", lambda: finished_but("succeeded"), "valid", (STREAM_RECOVERED,),
     "the in-flight run run-w ended succeeded (stream: finish)"),
    ("outage/runs-settle",
     lambda: patch(mid_stream(), STREAM_RECOVERED, runs=[{"id": "run-w", "status": "running"}]),
     "invalid", (STREAM_RECOVERED,), "run run-w still running after the database came back"),
    ("outage/runs-settle", lambda: finished_but("aborted"), "invalid",
     (STREAM_RACER, STREAM_RECOVERED), "the in-flight stream (op 5) ended 'finish' but its run "
     "run-w was recorded 'aborted'"),
    ("outage/runs-settle",  # the stream hung: no terminal frame when the drain's bound passed
     lambda: patch(mid_stream(), STREAM_RACER, terminal=None, done=False, end_ns=None,
                   frames=["start", "text-delta"]),
     "invalid", (STREAM_RACER,), "the in-flight stream (op 5) did not end cleanly during the "
     "outage: terminal frame None, [DONE] False"),
    ("outage/runs-settle",
     lambda: patch(mid_stream(), STREAM_RECOVERED, runs=[{"id": "run-s", "status": "succeeded"}]),
     "invalid", (STREAM_RECOVERED,), "the in-flight run run-w is not among the chat's runs"),
    ("outage/runs-settle", lambda: patch(mid_race(), RACE_RECOVERED, status=503, runs=[]),
     "invalid", (RACE_RECOVERED,), "30 s after the database came back the service still "
     "answered 503: it did not recover"),
    ("outage/runs-settle",
     lambda: with_db(mid_race(), [DbSnapshot("recovered", ns(7300),
                                             runs=(RunRow("run-x", CHAT, "running"),))]),
     "invalid", (), "db: run run-x still running"),
    ("outage/runs-settle",
     lambda: retype(mid_stream(), STREAM_RECOVERED, "info", phase="recovered", status=0,
                    runs=[]),
     "unknown", (STREAM_RECOVERED,), "the service gave no answer at all after the database "
     "came back"),
    ("outage/runs-settle", lambda: drop(mid_stream(), 8, STREAM_RECOVERED), "unknown", (),
     "the chat was not observed after the database came back"),
    ("outage/runs-settle", lambda: drop(mid_stream(), 6, 7), "unknown", (),
     "the database was never given back"),
    ("outage/runs-settle", lambda: drop(mid_stream(), 3, 4, 6, 7), "unknown", (),
     "the database was never taken away"),

    ("recovery/lease-reclaims", crash_recovery, "valid", (RECLAIMED,),
     "blocked within the lease, then run-w aborted ('lease expired')"),
    ("recovery/lease-reclaims",
     lambda: patch(crash_recovery(), BLOCKED, status=200, code=None, json=False, run_id="run-x"),
     "invalid", (BLOCKED,), "within the lease of the dead owner's run a new turn got 200, not "
     "409"),
    ("recovery/lease-reclaims",
     lambda: patch(crash_recovery(), RECLAIMED, run={**ABORTED_RUN, "status": "running",
                                                     "error": None}),
     "invalid", (RECLAIMED,), "the dead owner's run run-w is still running three leases later"),
    ("recovery/lease-reclaims",
     lambda: patch(crash_recovery(), RECLAIMED, run={**ABORTED_RUN, "status": "failed"}),
     "invalid", (RECLAIMED,), "the dead owner's run run-w ended 'failed', expected aborted"),
    ("recovery/lease-reclaims", lambda: drop(crash_recovery(), RECLAIMED_INVOKE, RECLAIMED),
     "unknown", (), "the dead owner's run was not observed"),
    ("recovery/lease-reclaims",  # three leases passed without any answer from /run
     lambda: retype(crash_recovery(), RECLAIMED, "info", phase="reclaimed", status=0, runs=[],
                    run=None), "unknown", (), "the dead owner's run was not observed"),
    ("recovery/lease-reclaims",
     lambda: patch(crash_recovery(), RECLAIMED, status=502, runs=[], run=None), "unknown",
     (RECLAIMED,), "/run answered 502: the dead owner's run was not observed"),
    ("recovery/lease-reclaims",
     lambda: patch(crash_recovery(), RECLAIMED, run={**ABORTED_RUN, "id": "run-r"}), "unknown",
     (RECLAIMED,), "/run shows another run than run-w"),
    ("recovery/lease-reclaims",  # the restarted service never answered the turn in the lease
     lambda: retype(crash_recovery(), BLOCKED, "info", error="TooSlowError"), "unknown",
     (BLOCKED,), "no turn within the lease got an answer"),
    ("recovery/lease-reclaims", lambda: drop(crash_recovery(), BLOCKED_INVOKE, BLOCKED),
     "unknown", (), "no turn within the lease got an answer"),
    ("recovery/lease-reclaims", lambda: no_winner(crash_recovery(), LEASE_RACER), "unknown", (),
     "no run was live when its owner died"),
]


@pytest.mark.parametrize(("prop", "make", "verdict", "ops", "reason"), CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_property(prop: str, make: Callable[[], Trial], verdict: Verdict, ops: tuple[int, ...],
                  reason: str) -> None:
    result = check_trial(make(), [prop])[prop]
    assert (result.property, result.verdict, result.ops) == (prop, verdict, ops), result.reason
    assert reason in result.reason
    assert "\n" not in result.reason


def test_every_scenario_property_has_a_valid_an_invalid_and_an_unknown_case() -> None:
    seen = {(prop, verdict) for prop, _, verdict, _, _ in CASES}
    assert {(p, v) for p in SCENARIO_CHECKERS for v in ("valid", "invalid", "unknown")} <= seen


def test_the_scenario_properties_are_registered_by_name() -> None:
    assert set(SCENARIO_CHECKERS) == {
        "run/expected-end", "stop/stale-ignored", "auth/foreign-denied",
        "input/rejected-cleanly", "outage/fails-closed", "outage/runs-settle",
        "recovery/lease-reclaims", "storm/runs-end", "chats/created-once"}
    assert all(CHECKERS[name] is checker for name, checker in SCENARIO_CHECKERS.items())


def test_the_models_op_layout() -> None:
    """The named indices point at the ops the cases patch."""
    def shape(trial: Trial, *indices: int) -> list[tuple[str, str, Any]]:
        return [(trial.ops[i].type, trial.ops[i].f,
                 trial.ops[i].get("label", trial.ops[i].get("phase", trial.ops[i].get("role"))))
                for i in indices]

    assert shape(expected_end(), FINAL, END_RACER) == [("ok", "run", "final"),
                                                       ("ok", "turn", None)]
    assert shape(stale_stop(), STALE_INVOKE, STALE, AFTER_STALE) == [
        ("invoke", "stop", "stale"), ("ok", "stop", None), ("ok", "runs", "after-stale")]
    assert [trial_op[2] for trial_op in shape(foreign_user(), *(i - 1 for i in FOREIGN))] == list(
        FOREIGN_LABELS)
    assert shape(foreign_user(), AFTER_FOREIGN) == [("ok", "runs", "after-foreign")]
    assert [trial_op[2] for trial_op in shape(bad_inputs(), *(i - 1 for i in BAD))] == [
        label for label, _ in BAD_INPUTS]
    assert shape(outage(), *OUTAGE) == [("ok", "turn", None)] * 3
    assert shape(mid_race(), *GATE_REFUSED, *DOWN_REFUSED, RACE_RECOVERED) == [
        *[("ok", "turn", None)] * 4, ("ok", "runs", "recovered")]
    assert shape(mid_stream(), 3, STREAM_RACER, STREAM_RECOVERED) == [
        ("invoke", "database", None), ("ok", "turn", None), ("ok", "runs", "recovered")]
    assert shape(crash_recovery(), BLOCKED_INVOKE, RECLAIMED, LEASE_RACER) == [
        ("invoke", "turn", "blocked"), ("ok", "run", "reclaimed"), ("ok", "turn", None)]
    assert shape(created_once(), WON_CREATE, COUNTED_INVOKE, COUNTED) == [
        ("ok", "turn", None), ("invoke", "chats", None), ("ok", "chats", None)]


# -- garbage: a malformed value crashes the checker into unknown, never a verdict ----------------

GARBAGE: list[tuple[str, Callable[[], Trial], str]] = [
    ("run/expected-end", lambda: patch(expected_end(), END_RACER, status="abc"),
     "op 5: status='abc' is not an int"),
    ("run/expected-end", lambda: patch(expected_end(), FINAL, status="abc"),
     "op 4: status='abc' is not an int"),
    ("stop/stale-ignored", lambda: patch(stale_stop(), STALE, status="abc"),
     "op 6: status='abc' is not an int"),
    ("stop/stale-ignored", lambda: patch(stale_stop(), AFTER_STALE, runs="nope"),
     "op 8: runs='nope' is not a list"),
    ("auth/foreign-denied", lambda: patch(foreign_user(), FOREIGN[2], status="abc"),
     "op 10: status='abc' is not an int"),
    ("input/rejected-cleanly", lambda: patch(bad_inputs(), BAD[3], status="abc"),
     "op 11: status='abc' is not an int"),
    ("outage/fails-closed", lambda: patch(outage(), OUTAGE[1], status="abc"),
     "op 6: status='abc' is not an int"),
    ("outage/runs-settle", lambda: patch(mid_stream(), STREAM_RECOVERED, status="abc"),
     "op 9: status='abc' is not an int"),
    ("outage/runs-settle", lambda: patch(mid_stream(), STREAM_RECOVERED, runs="nope"),
     "op 9: runs='nope' is not a list"),
    ("recovery/lease-reclaims", lambda: patch(crash_recovery(), BLOCKED, status="abc"),
     "op 6: status='abc' is not an int"),
    ("recovery/lease-reclaims", lambda: patch(crash_recovery(), RECLAIMED, status="abc"),
     "op 8: status='abc' is not an int"),
    ("chats/created-once", lambda: created_once("1"),  # type: ignore[arg-type]
     "op 7: count='1' is not an int >= 0"),
    ("chats/created-once", lambda: created_once(-1), "op 7: count=-1 is not an int >= 0"),
    ("chats/created-once", lambda: patch(created_once(), WON_CREATE, status="abc"),
     "op 3: status='abc' is not an int"),
]


@pytest.mark.parametrize(("prop", "make", "message"), GARBAGE,
                         ids=[f"{g[0]}-{i}" for i, g in enumerate(GARBAGE)])
def test_a_garbage_value_crashes_the_checker_into_unknown(
        prop: str, make: Callable[[], Trial], message: str) -> None:
    assert check_trial(make(), [prop]) == {prop: CheckResult(
        prop, "unknown", f"checker crashed: TypeError: {message}")}


def test_check_trial_never_raises_on_garbage_for_any_scenario_property() -> None:
    garbage = Trial(
        meta={"expect_end": 7, "expected_content": None},
        ops=[Op(0, "invoke", "turn", 1, 0, "x", {"role": "racer", "sent_ns": 1}),
             Op(1, "ok", "turn", 1, 5, "x", {"status": 200, "run_id": "r", "headers_ns": 2}),
             Op(2, "invoke", "run", 2, 6, None, {"phase": "final"}),
             Op(3, "ok", "run", 2, 7, None, {"status": 200, "run": "r", "message": 7}),
             Op(4, "invoke", "stop", 3, 8, None, {"role": "stale"}),
             Op(5, "ok", "stop", 3, 9, None, {"status": None, "stopped": "no"}),
             Op(6, "invoke", "probe", 4, 10, None, {"role": "foreign", "label": None}),
             Op(7, "ok", "probe", 4, 11, None, {"status": [403]}),
             Op(8, "invoke", "probe", 5, 12, "b", {"role": "bad-input", "expect_status": "x"}),
             Op(9, "ok", "probe", 5, 13, "b", {"status": 3.5}),
             Op(10, "invoke", "turn", 6, 14, "o", {"role": "outage0"}),
             Op(11, "ok", "turn", 6, 15, "o", {"status": True}),
             Op(12, "invoke", "turn", 7, 16, "k", {"role": "blocked"}),
             Op(13, "ok", "turn", 7, 17, "k", {"status": "409"}),
             Op(14, "invoke", "run", 2, 18, None, {"phase": "reclaimed"}),
             Op(15, "ok", "run", 2, 19, None, {"status": 200, "run": ["aborted"]})],
        provider=[ProviderCall(0, "x", 1)],
        db=[DbSnapshot("before", 1), DbSnapshot("after", 2, runs=(RunRow("r", CHAT, "x"),))])
    results = check_trial(garbage, SCENARIO_CHECKERS)
    assert list(results) == list(SCENARIO_CHECKERS)
    assert all(r.property == p and r.verdict in ("valid", "invalid", "unknown")
               for p, r in results.items())
