"""The gate module directly against real Postgres: begin races, precheck, settle CAS, leases."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from raceharness.reference.errors import RunAlreadyActiveError, RunBeginFailedError
from raceharness.reference.gate import Claim, Gate, PrecheckResult
from raceharness.reference.gate_sql import prepare_connection
from raceharness.stack.postgres import PostgresCluster
from tests.refkit import wait_for_lock_wait

pytestmark = pytest.mark.anyio

LEASE_S = 30.0
INSTANCE = "gate-test"


# -- helpers -------------------------------------------------------------------------------------

def seed(dsn: str, chats: int = 2) -> tuple[UUID, list[UUID]]:
    """A user and ``chats`` chats of theirs, with plain SQL."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        user = conn.execute("INSERT INTO ai_users (name) VALUES ('gate') RETURNING id").fetchone()
        assert user is not None
        ids = []
        for _ in range(chats):
            row = conn.execute("INSERT INTO ai_chats (creator_id) VALUES (%s) RETURNING id",
                               (user[0],)).fetchone()
            assert row is not None
            ids.append(row[0])
    return user[0], ids


@contextlib.asynccontextmanager
async def open_gate(dsn: str, size: int = 4, pool_timeout: float = 10.0,
                    wait: bool = True) -> AsyncIterator[Gate]:
    pool = AsyncConnectionPool(dsn, min_size=size, max_size=size, timeout=pool_timeout,
                               open=False)
    await pool.open(wait=wait, timeout=30.0)
    try:
        yield Gate(pool, instance_id=INSTANCE, lease_s=LEASE_S, faults=frozenset())
    finally:
        await pool.close(timeout=5.0)


def sql(dsn: str, query: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def runs(dsn: str) -> list[dict[str, Any]]:
    return sql(dsn, "SELECT * FROM ai_chat_runs ORDER BY created_at, id")


def run_row(dsn: str, run_id: UUID) -> dict[str, Any]:
    (row,) = sql(dsn, "SELECT * FROM ai_chat_runs WHERE id = %s", (run_id,))
    return row


def active_ids(dsn: str, chat_id: UUID) -> list[UUID]:
    return [r["id"] for r in sql(
        dsn, "SELECT id FROM ai_chat_runs WHERE chat_id = %s AND status IN ('pending','running')",
        (chat_id,))]


def seed_message(dsn: str, chat_id: UUID, run_id: UUID) -> UUID:
    """The streaming assistant message of a run, linked to it (what the turn seeds)."""
    (row,) = sql(dsn, """INSERT INTO ai_chat_messages (chat_id, role, content, status)
                         VALUES (%s, 'assistant', '', 'streaming') RETURNING id""", (chat_id,))
    sql(dsn, "UPDATE ai_chat_runs SET assistant_message_id = %s WHERE id = %s",
        (row["id"], run_id))
    return row["id"]


def message(dsn: str, message_id: UUID) -> dict[str, Any]:
    (row,) = sql(dsn, "SELECT content, status, updated_at FROM ai_chat_messages WHERE id = %s",
                 (message_id,))
    return row


def expire(dsn: str, run_id: UUID) -> None:
    sql(dsn, "UPDATE ai_chat_runs SET lease_expires_at = now() - interval '1 hour' WHERE id = %s",
        (run_id,))


async def settle(gate: Gate, claim: Claim, status: str, *, error: str | None = None,
                 content: str = "", message_id: UUID | None = None,
                 message_status: str = "completed", stop: bool = False) -> bool:
    return await gate.settle(claim, status=status, error=error, content=content,
                             message_id=message_id, message_status=message_status,
                             step_count=1 if status == "succeeded" else 0, stop_requested=stop)


# -- begin: the gate -------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 50])
async def test_concurrent_begins_have_exactly_one_winner(pg_dsn: str, n: int) -> None:
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn, size=n) as gate:
        barrier = asyncio.Barrier(n)

        async def racer() -> Claim | None:
            await barrier.wait()  # every racer holds its own pooled connection: no queueing
            return await gate.begin(chat_id=chat, user_id=user)

        async with asyncio.timeout(30):
            results = await asyncio.gather(*(racer() for _ in range(n)), return_exceptions=True)
    claims = [r for r in results if isinstance(r, Claim)]
    losers = [r for r in results if isinstance(r, RunAlreadyActiveError)]
    assert len(claims) == 1 and len(losers) == n - 1, results
    winner = claims[0].run_id
    assert [(e.chat_id, e.active_run_id, e.path) for e in losers] == [
        (chat, winner, "gate")] * (n - 1)
    assert [(r["id"], r["chat_id"], r["status"]) for r in runs(pg_dsn)] == [
        (winner, chat, "running")]


async def test_begin_writes_a_running_row_with_a_lease(pg_dsn: str) -> None:
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
    assert claim is not None
    assert claim == Claim(run_id=claim.run_id, chat_id=chat, held_conn=None,
                          held_lock=claim.held_lock)
    row = run_row(pg_dsn, claim.run_id)
    assert {k: row[k] for k in ("chat_id", "created_by", "status", "error", "owner_instance",
                                "finished_at", "stop_requested_at", "assistant_message_id")} == {
        "chat_id": chat, "created_by": user, "status": "running", "error": None,
        "owner_instance": INSTANCE, "finished_at": None, "stop_requested_at": None,
        "assistant_message_id": None}
    assert row["lease_expires_at"] - row["started_at"] == timedelta(seconds=LEASE_S)


async def test_begin_uses_the_given_run_id(pg_dsn: str) -> None:
    user, (chat, _) = seed(pg_dsn)
    run_id = uuid.uuid4()
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user, run_id=run_id)
    assert claim is not None and claim.run_id == run_id
    assert active_ids(pg_dsn, chat) == [run_id]


async def test_a_primary_key_violation_is_begin_failed_not_a_conflict(pg_dsn: str) -> None:
    """A 23505 on another constraint than the gate index must not look like a lost race."""
    user, (chat_a, chat_b) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        first = await gate.begin(chat_id=chat_a, user_id=user)
        assert first is not None
        with pytest.raises(RunBeginFailedError, match="ai_chat_runs_pkey") as info:
            await gate.begin(chat_id=chat_b, user_id=user, run_id=first.run_id)
    assert not isinstance(info.value, RunAlreadyActiveError)
    assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)
    assert [(r["id"], r["chat_id"]) for r in runs(pg_dsn)] == [(first.run_id, chat_a)]


async def test_begin_on_a_missing_chat_is_begin_failed(pg_dsn: str) -> None:
    user, _ = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        with pytest.raises(RunBeginFailedError) as info:
            await gate.begin(chat_id=uuid.uuid4(), user_id=user)
    assert isinstance(info.value.__cause__, psycopg.errors.ForeignKeyViolation)
    assert runs(pg_dsn) == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_begin_against_an_unreachable_server_is_begin_failed() -> None:
    dsn = f"host=127.0.0.1 port={closed_port()} dbname=nowhere user=nobody connect_timeout=2"
    async with open_gate(dsn, size=1, pool_timeout=0.5, wait=False) as gate:
        with pytest.raises(RunBeginFailedError, match="PoolTimeout"):
            await gate.begin(chat_id=uuid.uuid4(), user_id=uuid.uuid4())


async def test_begin_after_the_database_is_dropped_is_begin_failed(
        pg_cluster: PostgresCluster, pg_template: str) -> None:
    name = f"t_gone_{uuid.uuid4().hex[:8]}"
    dsn = pg_cluster.create_database(name, template=pg_template)
    try:
        user, (chat, _) = seed(dsn)
        async with open_gate(dsn, size=1, pool_timeout=1.0) as gate:
            pg_cluster.drop_database(name)  # WITH (FORCE): the pooled connection is killed
            with pytest.raises(RunBeginFailedError):
                await gate.begin(chat_id=chat, user_id=user)
    finally:
        pg_cluster.drop_database(name)


# -- precheck --------------------------------------------------------------------------------------

async def test_precheck_passes_on_an_idle_chat(pg_dsn: str) -> None:
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        fresh = await gate.precheck(chat)
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        assert await settle(gate, claim, "succeeded")
        after_a_run = await gate.precheck(chat)
    assert fresh == PrecheckResult(reclaimed=0)
    assert after_a_run == PrecheckResult(reclaimed=0)


async def test_precheck_names_the_active_holder(pg_dsn: str) -> None:
    user, (chat, other) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        with pytest.raises(RunAlreadyActiveError) as info:
            await gate.precheck(chat)
        assert await gate.precheck(other) == PrecheckResult(reclaimed=0)
    assert (info.value.chat_id, info.value.active_run_id, info.value.path) == (
        chat, claim.run_id, "precheck")
    assert run_row(pg_dsn, claim.run_id)["status"] == "running"


async def test_precheck_reclaims_an_expired_holder(pg_dsn: str) -> None:
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        old = await gate.begin(chat_id=chat, user_id=user)
        assert old is not None
        old_message = seed_message(pg_dsn, chat, old.run_id)
        expire(pg_dsn, old.run_id)
        result = await gate.precheck(chat)
        new = await gate.begin(chat_id=chat, user_id=user)
    assert result == PrecheckResult(reclaimed=1)
    row = run_row(pg_dsn, old.run_id)
    assert (row["status"], row["error"], row["finished_at"] is not None) == (
        "aborted", "lease expired", True)
    assert message(pg_dsn, old_message)["status"] == "aborted"  # as reap_expired leaves it
    assert new is not None and active_ids(pg_dsn, chat) == [new.run_id]


async def test_precheck_after_a_concurrent_reclaim_reports_the_chat_free(pg_dsn: str) -> None:
    """Two pre-checks reclaiming one expired holder: the one that waited on the row lock must
    see the holder as ended, not report the aborted run as the chat's active run."""
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        old = await gate.begin(chat_id=chat, user_id=user)
        assert old is not None
        expire(pg_dsn, old.run_id)
        async with await psycopg.AsyncConnection.connect(pg_dsn) as other:
            await other.execute(  # the other pre-check's reclaim, not yet committed
                """UPDATE ai_chat_runs SET status = 'aborted', error = 'lease expired',
                          finished_at = now() WHERE id = %s""", (old.run_id,))
            precheck = asyncio.create_task(gate.precheck(chat))
            await wait_for_lock_wait(pg_dsn)
            await other.commit()
            async with asyncio.timeout(10):
                result = await precheck
    assert result == PrecheckResult(reclaimed=0)
    assert active_ids(pg_dsn, chat) == []


async def test_precheck_spares_and_renews_a_run_the_instance_still_drives(pg_dsn: str) -> None:
    """A run this instance drives whose lease lapsed (a database outage longer than the lease
    stopped its heartbeat) is the chat's active run, not a reclaimable one."""
    user, (chat, other) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        live = await gate.begin(chat_id=chat, user_id=user)
        dead = await gate.begin(chat_id=other, user_id=user)
        assert live is not None and dead is not None
        live_msg = seed_message(pg_dsn, chat, live.run_id)
        gate.spare(lambda chat_id: [live.run_id] if chat_id == chat else [])
        expire(pg_dsn, live.run_id)
        expire(pg_dsn, dead.run_id)
        with pytest.raises(RunAlreadyActiveError) as info:
            await gate.precheck(chat)
        admission = await gate.admit(chat, user)
        reclaimed_other = await gate.precheck(other)  # not driven here: reclaimed as before
    assert (info.value.active_run_id, info.value.path) == (live.run_id, "precheck")
    assert (admission.reclaimed, admission.active_id) == (0, live.run_id)
    row = run_row(pg_dsn, live.run_id)
    assert (row["status"], row["error"]) == ("running", None)
    assert row["lease_expires_at"] - row["updated_at"] == timedelta(seconds=LEASE_S)
    assert message(pg_dsn, live_msg)["status"] == "streaming"
    assert reclaimed_other == PrecheckResult(reclaimed=1)
    assert run_row(pg_dsn, dead.run_id)["status"] == "aborted"


async def test_a_foreign_users_precheck_renews_nothing(pg_dsn: str) -> None:
    """The renewal, like the reclaim, is written only for the chat's owner: a turn answered
    403 writes nothing."""
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        live = await gate.begin(chat_id=chat, user_id=user)
        assert live is not None
        gate.spare(lambda chat_id: [live.run_id])
        expire(pg_dsn, live.run_id)
        before = run_row(pg_dsn, live.run_id)
        admission = await gate.admit(chat, uuid.uuid4())
    assert admission.owner == user and admission.reclaimed == 0
    assert run_row(pg_dsn, live.run_id) == before


# -- settle: compare-and-set -----------------------------------------------------------------------

async def test_settle_ends_an_active_run_and_its_message(pg_dsn: str) -> None:
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        msg = seed_message(pg_dsn, chat, claim.run_id)
        ended = await settle(gate, claim, "succeeded", content="Hello", message_id=msg)
    assert ended is True
    row = run_row(pg_dsn, claim.run_id)
    assert {k: row[k] for k in ("status", "error", "step_count", "stop_requested_at")} == {
        "status": "succeeded", "error": None, "step_count": 1, "stop_requested_at": None}
    assert row["finished_at"] is not None and row["finished_at"] == row["updated_at"]
    assert {k: v for k, v in message(pg_dsn, msg).items() if k != "updated_at"} == {
        "content": "Hello", "status": "completed"}
    assert active_ids(pg_dsn, chat) == []


async def test_settle_of_a_terminal_run_changes_nothing(pg_dsn: str) -> None:
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        msg = seed_message(pg_dsn, chat, claim.run_id)
        assert await settle(gate, claim, "failed", error="model overloaded", content="par",
                            message_id=msg, message_status="error")
        row_before, msg_before = run_row(pg_dsn, claim.run_id), message(pg_dsn, msg)
        late = await settle(gate, claim, "aborted", error="stopped by user", content="late",
                            message_id=msg, message_status="aborted", stop=True)
    assert late is False
    assert run_row(pg_dsn, claim.run_id) == row_before
    assert row_before["status"] == "failed" and row_before["error"] == "model overloaded"
    assert message(pg_dsn, msg) == msg_before


async def test_settle_leaves_the_message_of_a_run_it_did_not_end(pg_dsn: str) -> None:
    """The run was ended elsewhere (its message still streaming): this settle is late."""
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        msg = seed_message(pg_dsn, chat, claim.run_id)
        sql(pg_dsn, """UPDATE ai_chat_runs SET status = 'aborted', error = 'elsewhere',
                              finished_at = now() WHERE id = %s""", (claim.run_id,))
        row_before, msg_before = run_row(pg_dsn, claim.run_id), message(pg_dsn, msg)
        late = await settle(gate, claim, "succeeded", content="Hello", message_id=msg)
    assert late is False
    assert run_row(pg_dsn, claim.run_id) == row_before
    assert message(pg_dsn, msg) == msg_before
    assert msg_before["status"] == "streaming"


async def test_settle_as_stopped_keeps_the_first_stop_request_time(pg_dsn: str) -> None:
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        assert await gate.mark_stop_requested(claim.run_id)
        sql(pg_dsn, "UPDATE ai_chat_runs SET stop_requested_at = now() - interval '1 minute' "
                    "WHERE id = %s", (claim.run_id,))
        marked_at = run_row(pg_dsn, claim.run_id)["stop_requested_at"]
        assert await settle(gate, claim, "aborted", error="stopped by user", stop=True)
    row = run_row(pg_dsn, claim.run_id)
    assert (row["status"], row["error"], row["stop_requested_at"]) == (
        "aborted", "stopped by user", marked_at)


# -- leases ----------------------------------------------------------------------------------------

async def test_reap_expired_reaps_only_runs_whose_lease_passed(pg_dsn: str) -> None:
    user, (live_chat, dead_chat) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        live = await gate.begin(chat_id=live_chat, user_id=user)
        dead = await gate.begin(chat_id=dead_chat, user_id=user)
        assert live is not None and dead is not None
        dead_msg = seed_message(pg_dsn, dead_chat, dead.run_id)
        expire(pg_dsn, dead.run_id)
        live_before = run_row(pg_dsn, live.run_id)
        reaped = await gate.reap_expired()
        again = await gate.reap_expired()
    assert reaped == [dead.run_id]
    assert again == []
    assert run_row(pg_dsn, live.run_id) == live_before
    row = run_row(pg_dsn, dead.run_id)
    assert (row["status"], row["error"], row["finished_at"] is not None) == (
        "aborted", "lease expired", True)
    assert message(pg_dsn, dead_msg)["status"] == "aborted"


async def test_renew_leases_extends_active_runs_and_reports_stop_requests(pg_dsn: str) -> None:
    user, chats = seed(pg_dsn, chats=3)
    async with open_gate(pg_dsn) as gate:
        plain, stopped, ended = [await gate.begin(chat_id=c, user_id=user) for c in chats]
        assert plain is not None and stopped is not None and ended is not None
        expire(pg_dsn, plain.run_id)  # lapsed but not reaped: its owner renews in time
        assert await gate.mark_stop_requested(stopped.run_id)
        assert await settle(gate, ended, "succeeded")
        ended_before = run_row(pg_dsn, ended.run_id)
        renewed = await gate.renew_leases([plain.run_id, stopped.run_id, ended.run_id,
                                           uuid.uuid4()])
        nothing = await gate.renew_leases([])
    assert renewed == {plain.run_id: False, stopped.run_id: True}
    assert nothing == {}
    for claim in (plain, stopped):
        row = run_row(pg_dsn, claim.run_id)
        assert row["lease_expires_at"] - row["updated_at"] == timedelta(seconds=LEASE_S)
        assert row["status"] == "running"
    assert run_row(pg_dsn, ended.run_id) == ended_before


# -- stop ------------------------------------------------------------------------------------------

async def test_mark_stop_requested_is_idempotent(pg_dsn: str) -> None:
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        first = await gate.mark_stop_requested(claim.run_id)
        row_after_first = run_row(pg_dsn, claim.run_id)
        second = await gate.mark_stop_requested(claim.run_id)
    assert (first, second) == (True, False)
    assert run_row(pg_dsn, claim.run_id) == row_after_first
    assert row_after_first["status"] == "running"
    assert row_after_first["stop_requested_at"] is not None


async def test_mark_stop_requested_never_touches_a_terminal_run(pg_dsn: str) -> None:
    user, (chat, _) = seed(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        assert await settle(gate, claim, "succeeded")
        before = run_row(pg_dsn, claim.run_id)
        marked = await gate.mark_stop_requested(claim.run_id)
        unknown = await gate.mark_stop_requested(uuid.uuid4())
    assert (marked, unknown) == (False, False)
    assert run_row(pg_dsn, claim.run_id) == before
    assert before["stop_requested_at"] is None


# -- pooled connections: readied before they are lent ------------------------------------------

async def test_a_pooled_connection_is_lent_with_generic_plans_and_the_gate_prepared(
        pg_dsn: str) -> None:
    """``prepare_connection`` (the reference pool's ``configure``): the first pre-check on a
    new connection runs a prepared generic plan, not a parse and five custom plans; the
    connection is lent idle, in the pool's autocommit mode."""
    user, (chat, _) = seed(pg_dsn)
    pool = AsyncConnectionPool(pg_dsn, min_size=1, max_size=1, open=False,
                               configure=prepare_connection)
    await pool.open(wait=True, timeout=30.0)
    try:
        async with pool.connection() as conn:
            assert conn.autocommit is False
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            cur = await conn.execute("SHOW plan_cache_mode")
            assert await cur.fetchone() == ("force_generic_plan",)
            cur = await conn.execute("SELECT statement FROM pg_prepared_statements")
            prepared = {" ".join(s.split()) for (s,) in await cur.fetchall()}
            await conn.rollback()
        assert len(prepared) == 2
        assert any("reclaimed AS" in s for s in prepared)  # the pre-check
        assert any(s.startswith("SELECT id FROM ai_chat_runs") for s in prepared)  # the holder
        gate = Gate(pool, instance_id=INSTANCE, lease_s=LEASE_S, faults=frozenset())
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        admission = await gate.admit(chat, user)  # through the prepared statement
        assert (admission.owner, admission.active_id) == (user, claim.run_id)
        gate.spare(lambda chat_id: [claim.run_id])  # a live run's id: the same parameter types
        assert (await gate.admit(chat, user)).active_id == claim.run_id
        async with pool.connection() as conn:  # still two: the pre-check was not prepared anew
            cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements "
                                     "WHERE statement LIKE '%%reclaimed AS%%'")
            assert await cur.fetchone() == (1,)
    finally:
        await pool.close(timeout=5.0)


async def test_a_connection_that_cannot_be_readied_is_never_lent(pg_dsn: str) -> None:
    """Without the schema the preparation fails: the pool discards the connection rather
    than lend one that would fail the request."""
    sql(pg_dsn, "ALTER TABLE ai_chat_runs RENAME TO ai_chat_runs_gone")
    pool = AsyncConnectionPool(pg_dsn, min_size=1, max_size=1, timeout=1.0, open=False,
                               configure=prepare_connection)
    await pool.open(wait=False)
    try:
        with pytest.raises(PoolTimeout):
            async with pool.connection():
                pass
    finally:
        await pool.close(timeout=5.0)
