"""The gate: every decision that creates, guards or ends a run, and the one mapping of its
database errors.

Theory of operation
-------------------
A chat may hold at most one *active* run (``pending`` or ``running``). Two guards exist:

1. ``precheck`` — a fast read that answers 409 early for the common case (a second click after
   the first turn has started). It also reclaims a holder whose lease expired (its process died),
   but never a run this instance is still driving (see :meth:`Gate.spare`): that one's lease
   lapsed only because the database could not be reached to renew it, and it is renewed instead.
   It is only an optimisation: two simultaneous turns can both pass it.
2. ``begin`` — the authoritative gate: an INSERT of the run row, committed at once. The partial
   unique index ``ai_chat_runs_one_active_per_chat`` lets exactly one INSERT win; every other
   gets SQLSTATE 23505 *on that index*, which becomes :class:`RunAlreadyActiveError`. Any other
   failure (another constraint, the database down) is :class:`RunBeginFailedError` — the caller
   must then answer 503 and never stream without a run row.

Terminal writes are compare-and-set (``WHERE id = %s AND status IN ('pending','running')``), so
a late writer never overwrites a final status or touches a newer run. That also makes them safe to
retry: ``settle_retrying`` repeats one while the database is unavailable (stopped, its backends
terminated, the pool out of connections), so a run in flight during an outage still ends once the
database is back.

The statements themselves, and the connections they run on, are :mod:`gate_sql
<raceharness.reference.gate_sql>`'s (the run SQL is written there, once); this module picks
them, runs them and maps psycopg's errors. The fault switches that live here are marked
``# FAULT:``. About 400 lines, on purpose: one class, :class:`Gate`, whose guards and writes
share its pool, its instance's lease and the claims the claim-held-open fault keeps open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import AsyncConnectionPool

from raceharness.reference import gate_sql as sql
from raceharness.reference.errors import RunAlreadyActiveError, RunBeginFailedError
from raceharness.reference.faults import Fault
from raceharness.reference.gate_sql import AsyncConn, give_back, holder_on, lent
from raceharness.reference.schema import GATE_INDEX

log = logging.getLogger(__name__)


@dataclass
class Claim:
    """A won gate: the run row exists (committed, unless the claim-held-open fault holds it)."""

    run_id: UUID
    chat_id: UUID
    # FAULT claim-held-open: the connection whose transaction still holds the INSERT.
    held_conn: AsyncConn | None = None
    held_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class PrecheckResult:
    reclaimed: int


@dataclass(frozen=True)
class Admission:
    """What the pre-check saw: the chat's owner (None: no such chat), the expired holders it
    reclaimed, and the active run left (None: the chat looked free)."""

    owner: UUID | None
    reclaimed: int
    active_id: UUID | None


def _drives_none(chat_id: UUID) -> Collection[UUID]:
    return ()


class Gate:
    """Run SQL bound to one pool and one instance's settings.

    ``heartbeat_s``: the instance's heartbeat interval; only the lease-too-short fault needs it.
    """

    def __init__(self, pool: AsyncConnectionPool, *, instance_id: str, lease_s: float,
                 faults: frozenset[Fault], heartbeat_s: float | None = None) -> None:
        self.pool = pool
        self.instance_id = instance_id
        self.lease_s = lease_s
        self.faults = faults
        # The lease this instance writes, at the INSERT and at every renewal.
        self.written_lease_s = lease_s
        if Fault.LEASE_TOO_SHORT in faults:
            # FAULT: lease-too-short — a tenth of the heartbeat interval, so a live run looks
            # expired for most of the time between two heartbeats, and another instance's
            # pre-check or reaper reclaims it while it streams. (The LEASE_S setting itself is
            # still validated to exceed the heartbeat; only what is written is short.)
            if heartbeat_s is None:
                raise ValueError("the lease-too-short fault needs the heartbeat interval")
            self.written_lease_s = heartbeat_s / 10
        # FAULT: claim-held-open — turn connections whose open INSERT a run's claim now holds.
        self._claimed: set[AsyncConn] = set()
        self._drives: Callable[[UUID], Collection[UUID]] = _drives_none

    def spare(self, drives: Callable[[UUID], Collection[UUID]]) -> None:
        """Tell the gate which runs of a chat this instance is still driving (the registry's
        live runs): its pre-check never reclaims them, whatever their lease says, and renews
        a lapsed one instead. Until this is called, the gate drives no run."""
        self._drives = drives

    # -- guards ---------------------------------------------------------------------------

    @asynccontextmanager
    async def turn_connection(self) -> AsyncIterator[AsyncConn]:
        """One pooled connection, in autocommit, for everything a turn does before it streams:
        the pre-check, the gate INSERT and the turn's first rows.

        One checkout on purpose. The pool queues its waiters in order, so a turn that gave its
        connection back after the pre-check would wait for its INSERT behind the pre-check of
        every request of the burst. Every pre-check would then pass before any INSERT was
        made, and all N-1 losers would reach the gate. With one checkout, the winner's INSERT
        follows its own pre-check, and the rest of a burst is answered by the pre-check."""
        conn = await self.pool.getconn()
        try:
            await conn.set_autocommit(True)
            yield conn
        finally:
            if conn not in self._claimed:  # FAULT: claim-held-open — kept by the run's claim
                await give_back(self.pool, conn)

    async def admit(self, chat_id: UUID, user_id: UUID | None, *,
                    conn: AsyncConn | None = None) -> Admission:
        """The pre-check, in one autocommit round trip: the chat's owner, the reclaim of an
        expired holder (only when ``user_id`` owns the chat, or no user is given), and the
        active holder left. Never raises for a conflict: the caller answers 403 before 409.
        A run this instance still drives is never reclaimed: its lapsed lease is renewed, and
        it is reported as the active holder (409 naming it), as the reaper spares it too.

        One statement sees one snapshot, so the holder query excludes the rows it reclaims,
        and an expired holder someone else reclaimed meanwhile is looked up again. The
        pre-check is only the fast path: the INSERT below is the gate.

        ``conn``: the turn's connection (:meth:`turn_connection`); one of the pool otherwise."""
        async with lent(conn, self.pool) as conn:
            cur = await conn.execute(sql.ADMIT, {
                "chat_id": chat_id, "user_id": user_id,
                "live": [sql.NIL, *self._drives(chat_id)], "lease_s": self.written_lease_s,
            }, prepare=True)  # planned once per connection
            row = await cur.fetchone()
            assert row is not None
            owner, reclaimed, active_id, expired = row
            if expired:
                # An expired holder we did not reclaim: another reclaim (a concurrent pre-check,
                # the reaper) held its row and has ended it since our snapshot. Look again in a
                # new snapshot rather than report an ended run as the chat's active run.
                cur = await conn.execute(sql.ACTIVE_HOLDER, (chat_id,))
                holder = await cur.fetchone()
                active_id = None if holder is None else holder[0]
        if reclaimed:
            log.warning("reclaimed %d run(s) with an expired lease on chat %s", reclaimed, chat_id)
        return Admission(owner=owner, reclaimed=int(reclaimed), active_id=active_id)

    async def precheck(self, chat_id: UUID) -> PrecheckResult:
        """Reclaim an expired holder, then raise if an active run remains (the fast path)."""
        admission = await self.admit(chat_id, None)
        if admission.active_id is not None:
            raise RunAlreadyActiveError(chat_id, admission.active_id, "precheck")
        return PrecheckResult(reclaimed=admission.reclaimed)

    async def begin(self, *, chat_id: UUID, user_id: UUID, run_id: UUID | None = None,
                    conn: AsyncConn | None = None) -> Claim | None:
        """Insert the run row; the unique index decides who wins.

        ``conn``: the turn's connection, in autocommit (:meth:`turn_connection`); one of the
        pool otherwise. Under the claim-held-open fault, the claim keeps that connection.

        Returns the claim, or ``None`` only under the swallow-unique-violation fault.
        """
        params = {
            "id": run_id or uuid4(), "chat_id": chat_id, "user_id": user_id,
            "instance": self.instance_id,
            # FAULT: no-lease
            "lease_s": None if Fault.NO_LEASE in self.faults else self.written_lease_s,
        }
        if Fault.CLAIM_HELD_OPEN in self.faults:
            return await self._begin_held_open(params, conn)
        holder: UUID | None = None
        try:
            # Autocommit: the INSERT commits by itself (one round trip), and a loser looks up
            # the holder on the same connection instead of queueing for another.
            async with lent(conn, self.pool) as conn:
                try:
                    cur = await conn.execute(sql.INSERT_RUN, params, prepare=True)
                    row = await cur.fetchone()
                except pgerrors.UniqueViolation as exc:
                    if (exc.diag.constraint_name == GATE_INDEX
                            and not self.faults & _CONFLICT_FAULTS):
                        try:
                            holder = await holder_on(conn, chat_id)
                        except psycopg.Error:  # still a 409, only without activeRunId
                            log.exception("could not look up the holder of chat %s", chat_id)
                    raise
        except pgerrors.UniqueViolation as exc:
            if exc.diag.constraint_name != GATE_INDEX:
                raise RunBeginFailedError(
                    f"run insert violated {exc.diag.constraint_name!r}") from exc
            if Fault.SWALLOW_UNIQUE_VIOLATION in self.faults:
                # FAULT: swallow-unique-violation — the original #184 bug.
                log.warning("begin: unique violation ignored (fault), streaming untracked")
                return None
            if Fault.BLANKET_500 in self.faults:
                # FAULT: blanket-500 — the conflict escapes as an unexpected error, answered 500.
                raise RuntimeError(f"run insert failed on chat {chat_id}") from exc
            raise RunAlreadyActiveError(chat_id, holder, "gate") from exc
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise RunBeginFailedError(f"run insert failed: {type(exc).__name__}") from exc
        assert row is not None
        return Claim(run_id=row[0], chat_id=chat_id)

    async def _begin_held_open(self, params: dict[str, Any], turn: AsyncConn | None) -> Claim:
        # FAULT: claim-held-open — the INSERT runs in a transaction that stays open while the
        # provider streams; every loser's INSERT then waits on the index instead of failing.
        # On the turn's connection, the claim keeps that connection (the turn does not give it
        # back), so a waiting loser holds one connection, as a winner does.
        if turn is None:
            try:
                conn = await self.pool.getconn()
            except Exception as exc:  # noqa: BLE001 - pool timeout or connection failure
                raise RunBeginFailedError(f"no database connection: {type(exc).__name__}") from exc
        else:
            conn = turn
            await conn.set_autocommit(False)
        try:
            cur = await conn.execute(sql.INSERT_RUN, params)
            row = await cur.fetchone()
        except BaseException as exc:
            await conn.rollback()
            if turn is None:
                await self.pool.putconn(conn)
            else:
                await conn.set_autocommit(True)
            if isinstance(exc, pgerrors.UniqueViolation) and exc.diag.constraint_name == GATE_INDEX:
                raise RunAlreadyActiveError(
                    params["chat_id"], await self.active_holder(params["chat_id"], turn), "gate"
                ) from exc
            if isinstance(exc, psycopg.Error):
                raise RunBeginFailedError(f"run insert failed: {type(exc).__name__}") from exc
            raise
        assert row is not None
        if turn is not None:
            self._claimed.add(conn)
        return Claim(run_id=row[0], chat_id=params["chat_id"], held_conn=conn)

    async def active_holder(self, chat_id: UUID, conn: AsyncConn | None = None) -> UUID | None:
        """The id of the chat's active run, looked up after a gate conflict (None if it ended).

        ``conn``: an autocommit connection to use (the turn's); one of the pool otherwise."""
        try:
            async with lent(conn, self.pool) as conn:
                return await holder_on(conn, chat_id)
        except psycopg.Error:
            log.exception("could not look up the active holder of chat %s", chat_id)
            return None

    # -- the run's own connection ---------------------------------------------------------

    @asynccontextmanager
    async def connection(self, claim: Claim | None,
                         conn: AsyncConn | None = None) -> AsyncIterator[AsyncConn]:
        """A connection for the run's writes: a transaction committed at exit.

        ``conn``: the turn's autocommit connection (:meth:`turn_connection`), used for the
        transaction instead of another checkout. Under claim-held-open the run's open
        transaction is used instead (not committed here).
        """
        if claim is not None and claim.held_conn is not None:
            async with claim.held_lock:
                yield claim.held_conn
            return
        if conn is not None:
            async with conn.transaction():
                yield conn
            return
        async with self.pool.connection() as conn:
            yield conn

    async def release_claim(self, claim: Claim | None) -> None:
        """End the claim-held-open transaction (commit) and return its connection."""
        if claim is None or claim.held_conn is None:
            return
        conn, claim.held_conn = claim.held_conn, None
        try:
            await conn.commit()
        except psycopg.Error:
            log.exception("commit of held claim %s failed", claim.run_id)
        finally:
            self._claimed.discard(conn)
            await give_back(self.pool, conn)

    # -- terminal writes --------------------------------------------------------------------

    async def settle(self, claim: Claim, *, status: str, error: str | None, content: str,
                     message_id: UUID | None, message_status: str, step_count: int,
                     stop_requested: bool) -> bool:
        """Write the run's terminal status and its message; True iff this call ended the run."""
        # FAULT: late-write-overwrites — the terminal writes without their status checks.
        late = Fault.LATE_WRITE_OVERWRITES in self.faults
        async with self.connection(claim) as conn:
            cur = await conn.execute(
                sql.SETTLE_RUN_UNGUARDED if late else sql.SETTLE_RUN,
                {"status": status, "error": error, "steps": step_count,
                 "stop": stop_requested, "id": claim.run_id},
            )
            ended = await cur.fetchone() is not None
            if ended and message_id is not None:
                await conn.execute(
                    sql.SETTLE_MESSAGE_UNGUARDED if late else sql.SETTLE_MESSAGE,
                    (content, message_status, message_id),
                )
        return ended

    async def settle_retrying(self, claim: Claim, *, give_up_after_s: float,
                              max_delay_s: float = 1.0,
                              on_failure: Callable[[BaseException], None] | None = None,
                              **terminal: Any) -> bool | None:
        """``settle`` retried with bounded backoff while the database is unavailable.

        Returns what ``settle`` returned once a write went through, or None when the database
        stayed unavailable for ``give_up_after_s`` (or the pool closed): the run's lease, no
        longer renewed once its task ends, then lets the reaper end it. Only unavailability is
        retried (``OperationalError``: no connection, a pool timeout, a terminated backend);
        any other error propagates. ``on_failure`` sees each failed attempt.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_after_s
        delay = 0.05
        while True:
            try:
                return await self.settle(claim, **terminal)
            except (psycopg.OperationalError, OSError) as exc:
                if on_failure is not None:
                    on_failure(exc)
                if self.pool.closed or loop.time() + delay > deadline:
                    log.error("terminal write of run %s still failing (%s); giving up",
                              claim.run_id, type(exc).__name__)
                    return None
            await asyncio.sleep(delay)  # backoff between attempts on an unavailable database
            delay = min(delay * 2, max_delay_s)

    async def mark_stop_requested(self, run_id: UUID) -> bool:
        """Stop a run owned by another instance: mark it; the owner hears and ends it."""
        async with self.pool.connection() as conn:
            if Fault.LATE_WRITE_OVERWRITES in self.faults:
                # FAULT: late-write-overwrites — the stop writes `aborted` with no status check.
                cur = await conn.execute(sql.ABORT_ON_STOP_UNGUARDED, (run_id,))
                return await cur.fetchone() is not None
            cur = await conn.execute(sql.MARK_STOP_REQUESTED, (run_id,))
            return await cur.fetchone() is not None

    async def abort_orphan(self, run_id: UUID, reason: str) -> bool:
        """End an active run whose owner's lease expired (nobody is streaming it)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql.ABORT_ORPHAN, (reason, run_id))
            row = await cur.fetchone()
            if row is None:
                return False
            if row[0] is not None:
                await conn.execute(sql.ABORT_MESSAGE, (row[0],))
        return True

    # -- liveness -------------------------------------------------------------------------

    async def renew_leases(self, run_ids: list[UUID]) -> dict[UUID, bool]:
        """Extend the leases of live runs; returns id -> stop requested, for rows still active."""
        if not run_ids:
            return {}
        # FAULT: no-lease — the heartbeat leaves the (absent) lease as it is.
        renew = sql.RENEW_LEASES_NO_LEASE if Fault.NO_LEASE in self.faults else sql.RENEW_LEASES
        async with self.pool.connection() as conn:
            cur = await conn.execute(renew, {"ids": run_ids, "lease_s": self.written_lease_s})
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def reap_expired(self, live: list[UUID] | None = None) -> list[UUID]:
        """Abort every active run whose lease expired (its owner died); returns their ids.

        ``live``: runs this instance is streaming right now, never reaped here even when their
        lease lapsed (a database outage longer than the lease stops the heartbeat too; the
        next heartbeat renews them)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql.REAP_EXPIRED, {"live": live or []})
            rows = await cur.fetchall()
            msg_ids = [r[1] for r in rows if r[1] is not None]
            if msg_ids:
                await conn.execute(sql.ABORT_MESSAGES, (msg_ids,))
        return [r[0] for r in rows]

    async def notify_stop(self, run_id: UUID) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(sql.NOTIFY_STOP, (str(run_id),))


# Faults whose conflict path never reports the holder.
_CONFLICT_FAULTS = frozenset({Fault.SWALLOW_UNIQUE_VIOLATION, Fault.BLANKET_500})
