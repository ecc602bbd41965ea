"""A stateful model of the run lifecycle, checked against the gate on real Postgres.

Every example uses one shared database (made once for this module) and fresh chats, which it
deletes at teardown. The machine drives the Gate directly (no HTTP) on an event loop it owns.

Operations, on 3 chats: begin (with or without the pre-check, as the turn and a racing turn do),
request-stop (another instance marks the row), the owner ending its run (succeeded / failed /
aborted), a full stop, a client disconnect (a stop under AUTONOMOUS_RUNS=false, a finish under
true), a lease lapsing (its owner died), the pre-check or the reaper reclaiming it, a heartbeat
renewing leases, and a late settle of an already-terminal run. The machine's gate is one
instance: the runs it begins are driven by it until their owner "dies", and a lease that lapses
while the instance still drives the run (a database outage longer than the lease) is renewed,
never reclaimed, by its own pre-check and reaper.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg_pool import AsyncConnectionPool

from raceharness.reference.errors import RunAlreadyActiveError
from raceharness.reference.gate import Claim, Gate, PrecheckResult
from raceharness.stack.postgres import PostgresCluster

CHATS = 3
LEASE_S = 30.0
ACTIVE = ("pending", "running")
MESSAGE_STATUS = {"succeeded": "completed", "failed": "error", "aborted": "aborted"}

_DSN: str | None = None
_USER: UUID | None = None


@pytest.fixture(scope="module")
def machine_db(pg_cluster: PostgresCluster, pg_template: str) -> Iterator[str]:
    """One database for every example of this module, with one user; sets the module globals."""
    global _DSN, _USER
    name = f"t_sm_{uuid.uuid4().hex[:10]}"
    dsn = pg_cluster.create_database(name, template=pg_template)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("INSERT INTO ai_users (name) VALUES ('machine') RETURNING id").fetchone()
        assert row is not None
    _DSN, _USER = dsn, row[0]
    try:
        yield dsn
    finally:
        _DSN = _USER = None
        pg_cluster.drop_database(name)


@dataclass
class ModelRun:
    chat: int
    claim: Claim
    message_id: UUID
    status: str = "running"
    error: str | None = None
    stop_requested: bool = False
    lapsed: bool = False  # its lease is in the past (the owner died or stalled)
    driven: bool = True  # this instance still drives it (False once its owner died)
    finished_at: datetime | None = None  # as first written, once terminal
    content: str = ""  # the assistant message's, written only by the owner's settle


class RunLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert _DSN is not None and _USER is not None, "needs the machine_db fixture"
        self.dsn, self.user = _DSN, _USER
        self.loop = asyncio.new_event_loop()
        self.db = psycopg.connect(self.dsn, autocommit=True)
        self.chats: list[UUID] = []
        for _ in range(CHATS):
            row = self.db.execute("INSERT INTO ai_chats (creator_id) VALUES (%s) RETURNING id",
                                  (self.user,)).fetchone()
            assert row is not None
            self.chats.append(row[0])
        self.pool = AsyncConnectionPool(self.dsn, min_size=2, max_size=4, timeout=10, open=False)
        self.run(self.pool.open(wait=True, timeout=30))
        self.gate = Gate(self.pool, instance_id="machine", lease_s=LEASE_S, faults=frozenset())
        self.gate.spare(lambda chat_id: self._driven(chat_id))
        self.runs: dict[UUID, ModelRun] = {}
        self.active: list[UUID | None] = [None] * CHATS

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.pool.close(timeout=5))
        finally:
            self.loop.close()
            # Cascades to the runs and messages, so no example's rows outlive it (reap is global).
            self.db.execute("DELETE FROM ai_chats WHERE id = ANY(%s)", (self.chats,))
            self.db.close()

    # -- model helpers ---------------------------------------------------------------------

    def _end(self, run: ModelRun, status: str, error: str | None,
             stop: bool = False) -> None:
        """Model a terminal write and record what the database wrote, once."""
        run.status, run.error = status, error
        run.stop_requested = run.stop_requested or stop
        self.active[run.chat] = None
        row = self.db.execute("SELECT finished_at FROM ai_chat_runs WHERE id = %s",
                              (run.claim.run_id,)).fetchone()
        assert row is not None and row[0] is not None
        run.finished_at = row[0]

    def _owner_settles(self, chat: int, status: str, error: str | None, stop: bool) -> None:
        """The owner's terminal write on the chat's active run."""
        run_id = self.active[chat]
        assert run_id is not None
        run = self.runs[run_id]
        ended = self.run(self.gate.settle(
            run.claim, status=status, error=error, content=f"{status}!",
            message_id=run.message_id, message_status=MESSAGE_STATUS[status],
            step_count=1 if status == "succeeded" else 0, stop_requested=stop))
        assert ended is True  # settle does not look at the lease: a lapsed owner still ends it
        run.content = f"{status}!"
        self._end(run, status, error, stop)

    def _driven(self, chat_id: UUID | None = None) -> list[UUID]:
        """The active runs this instance drives (of ``chat_id``, or every chat)."""
        return [r for r, m in self.runs.items() if m.driven and m.status in ACTIVE
                and chat_id in (None, self.chats[m.chat])]

    def _reclaimed(self, run_id: UUID) -> None:
        self._end(self.runs[run_id], "aborted", "lease expired")

    def _check_precheck(self, chat: int) -> None:
        holder = self.active[chat]
        lapsed = holder is not None and self.runs[holder].lapsed
        driven = holder is not None and self.runs[holder].driven
        try:
            result = self.run(self.gate.precheck(self.chats[chat]))
        except RunAlreadyActiveError as exc:
            assert holder is not None and (driven or not lapsed)
            assert (exc.chat_id, exc.active_run_id, exc.path) == (
                self.chats[chat], holder, "precheck")
            self.runs[holder].lapsed = False  # a driven run's lapsed lease is renewed
            return
        assert not driven, "the pre-check reclaimed a run this instance still drives"
        if lapsed:
            assert holder is not None
            assert result == PrecheckResult(reclaimed=1)
            self._reclaimed(holder)
        else:
            assert holder is None
            assert result == PrecheckResult(reclaimed=0)

    # -- rules -----------------------------------------------------------------------------

    def _active_chat(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from([i for i, r in enumerate(self.active) if r is not None]),
                         label="chat")

    def _begin(self, chat: int) -> None:
        holder = self.active[chat]
        try:
            claim = self.run(self.gate.begin(chat_id=self.chats[chat], user_id=self.user))
        except RunAlreadyActiveError as exc:
            # begin never reclaims: a lapsed holder still holds the chat until reclaimed.
            assert holder is not None
            assert (exc.chat_id, exc.active_run_id, exc.path) == (
                self.chats[chat], holder, "gate")
            return
        # Every terminal path released the chat: a begin on a chat the model says is free wins.
        assert holder is None, "begin won on a chat the model says is held"
        assert isinstance(claim, Claim) and claim.chat_id == self.chats[chat]
        row = self.db.execute(
            """INSERT INTO ai_chat_messages (chat_id, role, content, status)
               VALUES (%s, 'assistant', '', 'streaming') RETURNING id""",
            (self.chats[chat],)).fetchone()
        assert row is not None
        self.db.execute("UPDATE ai_chat_runs SET assistant_message_id = %s WHERE id = %s",
                        (row[0], claim.run_id))
        self.runs[claim.run_id] = ModelRun(chat=chat, claim=claim, message_id=row[0])
        self.active[chat] = claim.run_id

    @rule(chat=st.integers(0, CHATS - 1))
    def turn(self, chat: int) -> None:
        """A turn: the pre-check (409, or reclaim of a lapsed holder), then begin."""
        self._check_precheck(chat)
        if self.active[chat] is None:
            self._begin(chat)

    @rule(chat=st.integers(0, CHATS - 1))
    def racer_begin(self, chat: int) -> None:
        """A racer that passed the pre-check before the holder began: the INSERT decides."""
        self._begin(chat)

    @rule(chat=st.integers(0, CHATS - 1))
    def request_stop(self, chat: int) -> None:
        """/stop from another instance: mark the active row (True only the first time); a
        stop of any ended run of the chat is False and touches nothing."""
        for rid, m in self.runs.items():
            if m.chat == chat and m.status not in ACTIVE:
                assert self.run(self.gate.mark_stop_requested(rid)) is False
        run_id = self.active[chat]
        if run_id is not None:
            run = self.runs[run_id]
            marked = self.run(self.gate.mark_stop_requested(run_id))
            assert marked is (not run.stop_requested)
            run.stop_requested = True

    @precondition(lambda self: any(r is not None for r in self.active))
    @rule(data=st.data(),
          outcome=st.sampled_from([("succeeded", None), ("failed", "model overloaded"),
                                   ("aborted", "stopped by user")]))
    def owner_ends(self, data: st.DataObject, outcome: tuple[str, str | None]) -> None:
        status, error = outcome
        self._owner_settles(self._active_chat(data), status, error, stop=status == "aborted")

    @precondition(lambda self: any(r is not None for r in self.active))
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        """The whole stop: mark, then the owner hears it and ends the run aborted."""
        chat = self._active_chat(data)
        run_id = self.active[chat]
        assert run_id is not None
        assert self.run(self.gate.mark_stop_requested(run_id)) is (
            not self.runs[run_id].stop_requested)
        self.runs[run_id].stop_requested = True
        self._owner_settles(chat, "aborted", "stopped by user", stop=True)

    @precondition(lambda self: any(r is not None for r in self.active))
    @rule(data=st.data(), autonomous=st.booleans())
    def disconnect(self, data: st.DataObject, autonomous: bool) -> None:
        """The client goes away: AUTONOMOUS_RUNS=true runs on to the end; false stops it."""
        chat = self._active_chat(data)
        if autonomous:
            self._owner_settles(chat, "succeeded", None, stop=False)
        else:
            self._owner_settles(chat, "aborted", "client disconnected", stop=True)

    @precondition(lambda self: any(r is not None for r in self.active))
    @rule(data=st.data())
    def lapse(self, data: st.DataObject) -> None:
        """The owner died: its lease passes (moved into the past rather than waited for)."""
        self._lapse(self._active_chat(data))

    @precondition(lambda self: any(r is not None for r in self.active))
    @rule(data=st.data())
    def outage(self, data: st.DataObject) -> None:
        """The lease passes while this instance still drives the run: a database outage
        longer than the lease kept its heartbeat from renewing it."""
        self._lapse(self._active_chat(data), owner_died=False)

    def _lapse(self, chat: int, owner_died: bool = True) -> None:
        run_id = self.active[chat]
        assert run_id is not None
        self.db.execute("UPDATE ai_chat_runs SET lease_expires_at = now() - interval '1 hour' "
                        "WHERE id = %s", (run_id,))
        self.runs[run_id].lapsed = True
        if owner_died:
            self.runs[run_id].driven = False

    @precondition(lambda self: any(r is not None for r in self.active))
    @rule(data=st.data(), via=st.sampled_from(["precheck", "reap"]))
    def expire(self, data: st.DataObject, via: str) -> None:
        """Lapse and reclaim in one go, by the next turn's pre-check or by the reaper."""
        chat = self._active_chat(data)
        self._lapse(chat)
        if via == "precheck":
            self._check_precheck(chat)
        else:
            self.reap()
        assert self.active[chat] is None

    @precondition(lambda self: any(r is not None for r in self.active))
    @rule(data=st.data())
    def orphan_stop(self, data: st.DataObject) -> None:
        """/stop of a run whose owner's lease passed: abort_orphan ends it, else refuses."""
        chat = self._active_chat(data)
        run_id = self.active[chat]
        assert run_id is not None
        run = self.runs[run_id]
        ended = self.run(self.gate.abort_orphan(run_id, "stopped by user (owner lease expired)"))
        assert ended is run.lapsed
        if ended:
            self._end(run, "aborted", "stopped by user (owner lease expired)", stop=True)

    @rule(chat=st.integers(0, CHATS - 1))
    def precheck(self, chat: int) -> None:
        self._check_precheck(chat)

    @rule()
    def reap(self) -> None:
        lapsed = {r for r, m in self.runs.items()
                  if m.status in ACTIVE and m.lapsed and not m.driven}
        reaped = self.run(self.gate.reap_expired(self._driven()))
        assert sorted(reaped) == sorted(lapsed)  # never a live run
        for run_id in reaped:
            self._reclaimed(run_id)

    @rule()
    def heartbeat(self) -> None:
        """The owner renews every run it knows, ended or not; only active ones answer."""
        result = self.run(self.gate.renew_leases(list(self.runs)))
        assert result == {r: m.stop_requested for r, m in self.runs.items() if m.status in ACTIVE}
        for run_id in result:
            self.runs[run_id].lapsed = False

    @precondition(lambda self: any(m.status not in ACTIVE for m in self.runs.values()))
    @rule(data=st.data(),
          write=st.sampled_from(["succeeded", "failed", "aborted", "stop", "orphan"]))
    def late_write(self, data: st.DataObject, write: str) -> None:
        """A write to an ended run (a late owner, a reaped run's owner waking up, a stale
        stop): refused, and the invariants check that nothing changed."""
        ended = sorted(r for r, m in self.runs.items() if m.status not in ACTIVE)
        run = self.runs[data.draw(st.sampled_from(ended), label="run")]
        if write == "stop":
            changed = self.run(self.gate.mark_stop_requested(run.claim.run_id))
        elif write == "orphan":
            self.db.execute("UPDATE ai_chat_runs SET lease_expires_at = now() - interval "
                            "'1 hour' WHERE id = %s AND lease_expires_at > now()",
                            (run.claim.run_id,))
            changed = self.run(self.gate.abort_orphan(run.claim.run_id, "late"))
        else:
            changed = self.run(self.gate.settle(
                run.claim, status=write, error="late", content="late",
                message_id=run.message_id, message_status=MESSAGE_STATUS[write],
                step_count=7, stop_requested=True))
        assert changed is False

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def check_database_matches_model(self) -> None:
        rows = self.db.execute(
            """SELECT r.id, r.chat_id, r.status, r.error, r.stop_requested_at IS NOT NULL,
                      CASE WHEN r.status IN ('pending', 'running')
                           THEN r.lease_expires_at < now() END,
                      r.finished_at, m.status, m.content
                 FROM ai_chat_runs r JOIN ai_chat_messages m ON m.id = r.assistant_message_id
                WHERE r.chat_id = ANY(%s)""", (self.chats,)).fetchall()
        actual = {r[0]: r[1:] for r in rows}
        expected = {}
        for run_id, m in self.runs.items():
            expected[run_id] = (
                self.chats[m.chat], m.status, m.error, m.stop_requested,
                m.lapsed if m.status in ACTIVE else None,
                m.finished_at,
                MESSAGE_STATUS[m.status] if m.status not in ACTIVE else "streaming",
                m.content)
        assert actual == expected

    @invariant()
    def at_most_one_active_run_per_chat(self) -> None:
        rows = self.db.execute(
            """SELECT chat_id, array_agg(id ORDER BY id) FROM ai_chat_runs
                WHERE chat_id = ANY(%s) AND status IN ('pending', 'running')
                GROUP BY chat_id""", (self.chats,)).fetchall()
        db_active = {chat: ids for chat, ids in rows}
        assert all(len(ids) == 1 for ids in db_active.values()), db_active
        model_active = {self.chats[i]: [rid] for i, rid in enumerate(self.active)
                        if rid is not None}
        assert db_active == model_active


def test_run_lifecycle(machine_db: str) -> None:
    run_state_machine_as_test(
        RunLifecycle,
        settings=settings(max_examples=50, stateful_step_count=20, deadline=None),
    )
