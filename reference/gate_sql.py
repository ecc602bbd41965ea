"""The run SQL's statements, and the connection plumbing the gate lends them on.

Every statement that creates, guards or ends a run is written here, once; :mod:`gate
<raceharness.reference.gate>` decides which runs when (the pre-check, the INSERT gate, the
terminal writes, stops, leases, reaping) and maps psycopg's errors. A statement a fault changes
has its variant here too, named after what it drops, and marked ``# FAULT:``. ``ACTIVE`` is
the one spelling of an active run (``pending`` or ``running``): every guard and every
compare-and-set uses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

AsyncConn = psycopg.AsyncConnection[Any]

ACTIVE = "status IN ('pending', 'running')"

#: Pads the list of a chat's live runs, so that it is never empty (see ``ADMIT``).
NIL = UUID(int=0)

# The reclaim and the holder lookup are two statements on purpose: a reclaim that waited on the
# row lock of a concurrent reclaim (or the owner's late settle) must look for the holder in a new
# snapshot, or it reports the run that was just ended as the chat's active run.
#
# %(live)s: the runs of the chat this instance is still driving (never empty: the nil uuid pads
# it, so every execution binds one parameter type and reuses one prepared plan). They are never
# reclaimed here, whatever their lease says: a lease lapses while its owner lives when the
# database was out for longer than the lease (the heartbeat could not renew it). Reclaiming
# one would let this very turn win while the old run still streams, untracked, until the next
# heartbeat finds its row ended. Its lease is renewed instead, so no other instance reclaims it.
ADMIT = f"""
WITH owner AS (
    SELECT creator_id FROM ai_chats WHERE id = %(chat_id)s AND deleted_at IS NULL
), allowed AS (
    SELECT %(user_id)s::uuid IS NULL
           OR EXISTS (SELECT 1 FROM owner WHERE creator_id = %(user_id)s::uuid) AS ok
), reclaimed AS (
    UPDATE ai_chat_runs
       SET status = 'aborted', error = 'lease expired',
           finished_at = now(), updated_at = now()
     WHERE chat_id = %(chat_id)s AND {ACTIVE} AND lease_expires_at < now()
       AND NOT (id = ANY(%(live)s::uuid[])) AND (SELECT ok FROM allowed)
 RETURNING id, assistant_message_id
), renewed AS (
    UPDATE ai_chat_runs
       SET lease_expires_at = now() + make_interval(secs => %(lease_s)s::float8),
           updated_at = now()
     WHERE chat_id = %(chat_id)s AND {ACTIVE} AND lease_expires_at < now()
       AND id = ANY(%(live)s::uuid[]) AND (SELECT ok FROM allowed)
), aborted_messages AS (
    UPDATE ai_chat_messages SET status = 'aborted', updated_at = now()
     WHERE id IN (SELECT assistant_message_id FROM reclaimed) AND status = 'streaming'
)
SELECT (SELECT creator_id FROM owner), (SELECT count(*) FROM reclaimed), h.id, h.expired
  FROM (SELECT 1) AS one
  LEFT JOIN LATERAL (
       SELECT id, coalesce(lease_expires_at < now() AND NOT (id = ANY(%(live)s::uuid[])),
                           false) AS expired
         FROM ai_chat_runs
        WHERE chat_id = %(chat_id)s AND {ACTIVE} AND id NOT IN (SELECT id FROM reclaimed)
        ORDER BY created_at DESC, id DESC LIMIT 1) AS h ON true
"""

INSERT_RUN = """
INSERT INTO ai_chat_runs
       (id, chat_id, created_by, status, started_at, owner_instance, lease_expires_at)
VALUES (%(id)s, %(chat_id)s, %(user_id)s, 'running', now(), %(instance)s,
        CASE WHEN %(lease_s)s::float8 IS NULL THEN NULL
             ELSE now() + make_interval(secs => %(lease_s)s::float8) END)
RETURNING id
"""

ACTIVE_HOLDER = f"""
SELECT id FROM ai_chat_runs WHERE chat_id = %s AND {ACTIVE}
 ORDER BY created_at DESC, id DESC LIMIT 1
"""


# -- terminal writes: compare-and-set on ACTIVE, so a late writer never overwrites a final
# status or touches a newer run (and a retry is harmless) -----------------------------------

_SETTLE = """UPDATE ai_chat_runs
       SET status = %(status)s, error = %(error)s, step_count = %(steps)s,
           finished_at = now(), updated_at = now(),
           stop_requested_at = CASE WHEN %(stop)s
               THEN coalesce(stop_requested_at, now())
               ELSE stop_requested_at END
     WHERE id = %(id)s"""
SETTLE_RUN = f"""{_SETTLE} AND {ACTIVE}
 RETURNING id"""
# FAULT: late-write-overwrites — the terminal write without its status check.
SETTLE_RUN_UNGUARDED = f"""{_SETTLE}
 RETURNING id"""

_SETTLE_MESSAGE = """UPDATE ai_chat_messages SET content = %s, status = %s, updated_at = now()
         WHERE id = %s"""
SETTLE_MESSAGE = f"{_SETTLE_MESSAGE} AND status = 'streaming'"
# FAULT: late-write-overwrites — the message write without its status check.
SETTLE_MESSAGE_UNGUARDED = _SETTLE_MESSAGE

MARK_STOP_REQUESTED = f"""UPDATE ai_chat_runs SET stop_requested_at = now(), updated_at = now()
     WHERE id = %s AND {ACTIVE} AND stop_requested_at IS NULL
 RETURNING id"""
# FAULT: late-write-overwrites — the stop writes `aborted` with no status check.
ABORT_ON_STOP_UNGUARDED = """UPDATE ai_chat_runs SET status = 'aborted', error = 'stopped by user',
              stop_requested_at = now(), finished_at = now(), updated_at = now()
        WHERE id = %s RETURNING id"""

ABORT_ORPHAN = f"""UPDATE ai_chat_runs
       SET status = 'aborted', error = %s, finished_at = now(), updated_at = now(),
           stop_requested_at = coalesce(stop_requested_at, now())
     WHERE id = %s AND {ACTIVE} AND lease_expires_at < now()
 RETURNING assistant_message_id"""
ABORT_MESSAGE = """UPDATE ai_chat_messages SET status = 'aborted', updated_at = now()
        WHERE id = %s AND status = 'streaming'"""
ABORT_MESSAGES = """UPDATE ai_chat_messages SET status = 'aborted', updated_at = now()
        WHERE id = ANY(%s) AND status = 'streaming'"""

# -- liveness --------------------------------------------------------------------------------

_RENEW_LEASES = """UPDATE ai_chat_runs SET lease_expires_at = {lease}, updated_at = now()
     WHERE id = ANY(%(ids)s) AND {active}
 RETURNING id, stop_requested_at IS NOT NULL"""
RENEW_LEASES = _RENEW_LEASES.format(
    lease="now() + make_interval(secs => %(lease_s)s::float8)", active=ACTIVE)
# FAULT: no-lease — the heartbeat leaves the (absent) lease as it is.
RENEW_LEASES_NO_LEASE = _RENEW_LEASES.format(lease="lease_expires_at", active=ACTIVE)

REAP_EXPIRED = f"""UPDATE ai_chat_runs
       SET status = 'aborted', error = 'lease expired',
           finished_at = now(), updated_at = now()
     WHERE {ACTIVE} AND lease_expires_at < now()
       AND NOT (id = ANY(%(live)s))
 RETURNING id, assistant_message_id"""

NOTIFY_STOP = "SELECT pg_notify('ai_chat_run_stop', %s)"


async def prepare_connection(conn: AsyncConn) -> None:
    """Ready a new pooled connection before it is lent (the pool's ``configure``).

    Generic plans: these statements are planned once per connection, not per execution.
    Postgres would otherwise plan the first five executions of each afresh, at about three
    times the cost of running them. The pre-check and the holder lookup are prepared here,
    which also fills the new backend's catalogue caches. A new backend's first pre-check
    otherwise costs about 1.8 ms instead of 0.1 ms. On a connection lent in a burst,
    that gap is as wide as a whole round trip. It skews who wins and slows the 409s.
    """
    was = conn.autocommit
    await conn.set_autocommit(True)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(ADMIT, {"chat_id": NIL, "user_id": NIL, "live": [NIL],
                                   "lease_s": 1.0}, prepare=True)
        await conn.execute(ACTIVE_HOLDER, (NIL,), prepare=True)
    finally:
        await conn.set_autocommit(was)


async def holder_on(conn: AsyncConn, chat_id: UUID) -> UUID | None:
    """The chat's active run (the newest, if several), looked up on ``conn``."""
    cur = await conn.execute(ACTIVE_HOLDER, (chat_id,), prepare=True)
    row = await cur.fetchone()
    return None if row is None else row[0]  # type: ignore[no-any-return]


@asynccontextmanager
async def lent(conn: AsyncConn | None, pool: AsyncConnectionPool) -> AsyncIterator[AsyncConn]:
    """``conn`` as it is (the caller's, in autocommit), or an autocommit one from the pool."""
    if conn is not None:
        yield conn
        return
    async with autocommit(pool) as own:
        yield own


@asynccontextmanager
async def autocommit(pool: AsyncConnectionPool) -> AsyncIterator[AsyncConn]:
    """A pooled connection in autocommit for one read-mostly statement: no BEGIN and no
    COMMIT round trip. Put back as the pool expects it (a broken one is discarded anyway)."""
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await conn.set_autocommit(False)


async def give_back(pool: AsyncConnectionPool, conn: AsyncConn) -> None:
    """Return a connection taken with ``getconn`` as the pool lends them: not in autocommit.
    A connection left in a transaction is rolled back by the pool, a broken one discarded."""
    if not conn.closed:
        with contextlib.suppress(psycopg.Error):
            await conn.set_autocommit(False)
    await pool.putconn(conn)
