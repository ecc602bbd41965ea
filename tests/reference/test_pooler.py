"""The reference behind PgBouncer in transaction pooling mode (``DATABASE_POOLER=transaction``):
the gate still lets exactly one turn win and answers the rest 409, nothing relies on session
state (no prepared statement, no session SET), and a stop received by another instance still
reaches the owner within the stop bound, through its LISTEN on a direct session connection
(``LISTEN_DSN``), since a LISTEN through the pooler hears nothing.

Real Postgres (the session's cluster), a real PgBouncer in front of it (the Debian package
``pgbouncer``: missing, these tests fail naming it, never skip); only the provider is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from raceharness.reference.errors import RunAlreadyActiveError
from raceharness.reference.gate import Claim, Gate
from raceharness.reference.settings import Settings
from raceharness.stack.pooler import PgBouncer, PoolerUnavailable, start_pgbouncer
from raceharness.stack.postgres import PostgresCluster
from tests.refkit import (
    Api,
    FakeProvider,
    RunningReference,
    make_settings,
    running_reference,
    seed_chat,
    turn_through_gate,
)

pytestmark = pytest.mark.anyio

STOP_BOUND_S = 2.0  # a stop must end the owner's stream within this (conformance: winner-stoppable)


@pytest.fixture(scope="module")
def pgbouncer(pg_cluster: PostgresCluster) -> Iterator[PgBouncer]:
    """PgBouncer (transaction pooling) in front of the session's Postgres."""
    try:
        bouncer = start_pgbouncer(pg_cluster)
    except PoolerUnavailable as exc:
        pytest.fail(f"no PgBouncer for the pooler tests: {exc}", pytrace=False)
    try:
        yield bouncer
    finally:
        bouncer.close()


@pytest.fixture
def pooled_dsn(pg_dsn: str, pgbouncer: PgBouncer) -> str:
    """The test's fresh database, through PgBouncer."""
    return pgbouncer.dsn_for(str(conninfo_to_dict(pg_dsn)["dbname"]))


def pooled_settings(pooled: str, direct: str, **overrides: Any) -> Settings:
    return make_settings(pooled, database_pooler="transaction", listen_dsn=direct, **overrides)


@contextlib.asynccontextmanager
async def serve(settings: Settings, provider: FakeProvider, token: str
                ) -> AsyncIterator[tuple[RunningReference, Api]]:
    async with running_reference(settings, provider) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        yield ref, Api(client, ref.url, token)


# -- the gate through the pooler --------------------------------------------------------------

async def test_concurrent_begins_through_the_pooler_have_exactly_one_winner(
        pg_dsn: str, pooled_dsn: str) -> None:
    """50 INSERTs at once, each on its own client connection of the pooler, configured as
    the reference configures its pool there (nothing prepared): one claim, 49 conflicts at
    the gate naming the winner."""
    n = 50
    user, chat = seed_chat(pg_dsn)
    pool = AsyncConnectionPool(pooled_dsn, min_size=n, max_size=n, timeout=10, open=False,
                               kwargs={"prepare_threshold": None})
    await pool.open(wait=True, timeout=30)
    try:
        gate = Gate(pool, instance_id="pooled", lease_s=30, faults=frozenset())
        barrier = asyncio.Barrier(n)

        async def racer() -> Claim | None:
            await barrier.wait()
            return await gate.begin(chat_id=chat, user_id=user)

        async with asyncio.timeout(30):
            results = await asyncio.gather(*(racer() for _ in range(n)), return_exceptions=True)
    finally:
        await pool.close(timeout=5)
    claims = [r for r in results if isinstance(r, Claim)]
    losers = [r for r in results if isinstance(r, RunAlreadyActiveError)]
    assert len(claims) == 1 and len(losers) == n - 1, results
    assert {(e.active_run_id, e.path) for e in losers} == {(claims[0].run_id, "gate")}


async def test_a_burst_through_the_pooler_has_one_winner_and_409s_naming_it(
        pg_dsn: str, pooled_dsn: str, users: dict[str, str]) -> None:
    """The whole app through the pooler: a burst on one chat gets one 200 and 409s naming
    its run; a turn forced onto the gate path (its INSERT waits on the index) is a 409 from
    the gate; and many turns on few pooled connections — more executions of each statement
    than psycopg's prepare threshold (5) — never fail on a prepared statement the next server
    connection lacks."""
    provider = FakeProvider()
    settings = pooled_settings(pooled_dsn, pg_dsn, pool_min_size=2, pool_max_size=4)
    async with serve(settings, provider, users["alice"]) as (ref, api):
        first = await api.turn("new chat")
        assert ref.runtime.pool.kwargs.get("prepare_threshold", 0) is None
        chat_id = first.chat_id
        assert chat_id is not None
        provider.mode = "hold"  # the winner streams until every loser is answered
        racers = [asyncio.create_task(api.turn(f"racer {i}", chat_id)) for i in range(20)]
        async with asyncio.timeout(10):
            while sum(t.done() for t in racers) < 19:  # noqa: ASYNC110 - 19 answers
                await asyncio.sleep(0.01)
        provider.release.set()
        burst = await asyncio.gather(*racers)
        winners = [r for r in burst if r.status == 200]
        losers = [r for r in burst if r.status != 200]
        holder = winners[0].run_id if winners else None
        provider.mode = "finish"
        gate_loser, gate_holder = await turn_through_gate(api, pg_dsn, chat_id, "at the gate")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE ai_chat_runs SET status = 'aborted' WHERE id = %s",
                         (gate_holder,))
        later = [await api.turn(f"one after another {i}", chat_id) for i in range(8)]
    assert first.status == 200
    assert len(winners) == 1, [r.status for r in burst]
    assert [(r.status, r.body["code"], r.body.get("activeRunId")) for r in losers] == [
        (409, "A_RUN_ALREADY_ACTIVE", holder)] * 19
    assert (gate_loser.status, gate_loser.body["code"], gate_loser.body["activeRunId"]) == (
        409, "A_RUN_ALREADY_ACTIVE", gate_holder)
    assert [r.status for r in later] == [200] * 8
    assert all(r.types[-2:] == ["finish", "[DONE]"] for r in later)


# -- stops across instances --------------------------------------------------------------------

async def test_a_listen_through_the_transaction_pooler_hears_nothing(
        pg_dsn: str, pooled_dsn: str) -> None:
    """Why the stop listener needs LISTEN_DSN: the LISTEN's server connection goes back to
    the pool when its transaction ends, and a notification is never routed to the client."""
    async with await psycopg.AsyncConnection.connect(pooled_dsn, autocommit=True,
                                                     prepare_threshold=None) as pooled, \
            await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as direct:
        await pooled.execute("LISTEN pooler_probe")
        await direct.execute("LISTEN pooler_probe")
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as sender:
            await sender.execute("SELECT pg_notify('pooler_probe', 'hello')")
        heard_direct = [n.payload async for n in direct.notifies(timeout=5, stop_after=1)]
        heard_pooled = [n.payload async for n in pooled.notifies(timeout=0.5, stop_after=1)]
    assert heard_direct == ["hello"]
    assert heard_pooled == []


async def test_a_stop_on_another_instance_through_the_pooler_arrives_within_the_bound(
        pg_dsn: str, pooled_dsn: str, users: dict[str, str]) -> None:
    """Two instances through the pooler, heartbeats a minute apart (so the poll cannot carry
    it): a stop sent to B ends A's stream within the stop bound, through A's LISTEN on its
    direct session connection."""
    provider = FakeProvider(mode="hold")
    common = {"heartbeat_interval_s": 60.0, "lease_s": 120.0}
    async with serve(pooled_settings(pooled_dsn, pg_dsn, instance_id="A", **common), provider,
                     users["alice"]) as (ref_a, api_a), \
            serve(pooled_settings(pooled_dsn, pg_dsn, instance_id="B", **common), provider,
                  users["alice"]) as (_, api_b):
        async with api_a.open_turn("on A") as turn:
            assert turn.status == 200
            await turn.until("text-delta")
            async with asyncio.timeout(5):
                await ref_a.runtime.registry.listening.wait()
            t0 = time.monotonic()
            stopped = await api_b.stop(runId=turn.run_id)
            async with asyncio.timeout(STOP_BOUND_S):
                await turn.until("abort")
            took_s = time.monotonic() - t0
            tail = await turn.rest()
        provider.release.set()
        latest = (await api_b.latest(turn.chat_id)).json()["data"]
    assert stopped.json()["data"] == {"stopped": True}
    assert took_s < STOP_BOUND_S
    assert [f if f == "[DONE]" else f["type"] for f in tail] == ["[DONE]"]
    assert (latest["run"]["status"], latest["run"]["error"]) == ("aborted", "stopped by user")


def test_transaction_pooling_without_a_listen_dsn_relies_on_the_poll() -> None:
    """STOP_NOTIFY off: no LISTEN_DSN needed (every remote stop arrives with a heartbeat)."""
    settings = Settings(database_url="postgresql://u@127.0.0.1:6432/db",
                        database_pooler="transaction", stop_notify=False)
    assert settings.pooled and settings.listen_url == settings.database_url
