"""The two faults that show only with several instances on one database: ``lease-too-short``
and ``stop-local-only``. Each test runs the same steps against a correct reference and a faulty
one, asserting the two different behaviours, so the switch is proven to be what changes them.

Real Postgres, real uvicorn; only the provider is mocked (respx, see refkit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from raceharness.reference.errors import RunAlreadyActiveError
from raceharness.reference.faults import Fault
from raceharness.reference.gate import Gate, PrecheckResult
from tests.refkit import (
    CONFLICT,
    Api,
    FakeProvider,
    OpenTurn,
    RunningReference,
    make_settings,
    running_reference,
)

pytestmark = pytest.mark.anyio

CORRECT = "correct"
STOPPED_TRUE = {"data": {"stopped": True}, "success": True, "status": 200}


def faults(fault: str) -> frozenset[Fault]:
    return frozenset() if fault == CORRECT else frozenset({Fault(fault)})


# -- helpers -----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def two_instances(dsn: str, provider: FakeProvider, token: str, **overrides: Any
                        ) -> AsyncIterator[tuple[RunningReference, Api, RunningReference, Api]]:
    """Instances A and B of the reference on one database, each with a client."""
    async with running_reference(make_settings(dsn, instance_id="A", **overrides),
                                 provider) as ref_a, \
            running_reference(make_settings(dsn, instance_id="B", **overrides),
                              provider) as ref_b, \
            httpx.AsyncClient(timeout=10) as client:
        yield ref_a, Api(client, ref_a.url, token), ref_b, Api(client, ref_b.url, token)


async def held(turn: OpenTurn) -> None:
    """Until the run's provider call is under way (its first token relayed)."""
    assert turn.status == 200
    await turn.until("text-delta")


async def sql(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def wait_db(dsn: str, query: str, params: Any = None, seconds: float = 10) -> None:
    """Bounded poll until ``query`` answers true (a database condition: nothing to await)."""
    async with asyncio.timeout(seconds):
        while not (await sql(dsn, query, params))[0][0]:  # noqa: ASYNC110 - a database condition
            await asyncio.sleep(0.01)


async def run_state(dsn: str, run_id: str) -> tuple[str, str | None, bool]:
    """(status, error, stop requested)."""
    ((status, error, stop),) = await sql(
        dsn, "SELECT status, error, stop_requested_at IS NOT NULL FROM ai_chat_runs "
             "WHERE id = %s", (run_id,))
    return status, error, stop


def types(frames: list[Any]) -> list[str]:
    return [f if f == "[DONE]" else f["type"] for f in frames]


# -- both faults are visible -------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["lease-too-short", "stop-local-only"])
async def test_healthz_and_the_start_up_log_name_the_fault(
        pg_dsn: str, caplog: pytest.LogCaptureFixture, fault: str) -> None:
    settings = make_settings(pg_dsn, faults=faults(fault))
    with caplog.at_level(logging.INFO, logger="raceharness.reference.app"):
        async with running_reference(settings, None) as ref, \
                httpx.AsyncClient(timeout=10) as http:
            health = await http.get(ref.url + "/healthz")
            listening = ref.runtime.registry.hears_remote_stops
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "instance": settings.instance_id,
                             "faults": [fault], "autonomousRuns": False}
    messages = [r.getMessage() for r in caplog.records if r.name == "raceharness.reference.app"]
    assert f"FAULTS ENABLED: {fault} — this server is deliberately broken" in messages
    ready = [m for m in messages if m.startswith("reference instance")]
    off = ", notifications off" if fault == "stop-local-only" else ""
    assert ready == [f"reference instance {settings.instance_id} ready "
                     f"(stop channel ai_chat_run_stop{off})"]
    assert listening is (fault != "stop-local-only")


# -- lease-too-short ---------------------------------------------------------------------------

def seed_chat(dsn: str) -> tuple[UUID, UUID]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "WITH u AS (INSERT INTO ai_users (name) VALUES ('lease') RETURNING id) "
            "INSERT INTO ai_chats (creator_id) SELECT id FROM u RETURNING creator_id, id"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


@contextlib.asynccontextmanager
async def gate_of(dsn: str, instance: str, fault: str) -> AsyncIterator[Gate]:
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=2, timeout=10, open=False)
    await pool.open(wait=True, timeout=30)
    try:
        yield Gate(pool, instance_id=instance, lease_s=30.0, faults=faults(fault),
                   heartbeat_s=1.0)
    finally:
        await pool.close(timeout=5)


@pytest.mark.parametrize("fault", [CORRECT, "lease-too-short"])
async def test_the_lease_written_outlives_the_heartbeat_interval_unless_the_fault(
        pg_dsn: str, fault: str) -> None:
    """Gate A drives a run and renews it (a heartbeat); gate B, another instance on the same
    database, takes a turn's pre-check on the chat once A's lease, as written, has passed
    (with LEASE_S=30 the test does not wait: B looks at once). The lease must cover the whole
    interval to A's next heartbeat (1 s); under the fault it is 0.1 s."""
    user, chat = seed_chat(pg_dsn)
    async with gate_of(pg_dsn, "A", fault) as gate_a, gate_of(pg_dsn, "B", CORRECT) as gate_b:
        claim = await gate_a.begin(chat_id=chat, user_id=user)
        assert claim is not None
        gate_a.spare(lambda chat_id: [claim.run_id])
        ((inserted,),) = await sql(
            pg_dsn, "SELECT lease_expires_at - started_at FROM ai_chat_runs WHERE id = %s",
            (claim.run_id,))
        assert await gate_a.renew_leases([claim.run_id]) == {claim.run_id: False}
        ((renewed,),) = await sql(
            pg_dsn, "SELECT lease_expires_at - updated_at FROM ai_chat_runs WHERE id = %s",
            (claim.run_id,))
        if fault != CORRECT:  # the lease written has passed, long before the next heartbeat
            await wait_db(pg_dsn, "SELECT lease_expires_at < now() FROM ai_chat_runs "
                                  "WHERE id = %s", (claim.run_id,), seconds=5)
        conflict: RunAlreadyActiveError | None = None
        result: PrecheckResult | None = None
        try:
            result = await gate_b.precheck(chat)
        except RunAlreadyActiveError as exc:
            conflict = exc
    ((status, error),) = await sql(pg_dsn, "SELECT status, error FROM ai_chat_runs WHERE id = %s",
                                   (claim.run_id,))
    if fault == CORRECT:
        assert inserted == renewed == timedelta(seconds=30)
        assert conflict is not None and conflict.active_run_id == claim.run_id  # B: 409
        assert (status, error) == ("running", None)
    else:
        assert inserted == renewed == timedelta(seconds=0.1)
        assert (conflict, result) == (None, PrecheckResult(reclaimed=1))  # B took the chat
        assert (status, error) == ("aborted", "lease expired")


def test_the_fault_needs_the_heartbeat_interval() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        Gate(None, instance_id="x", lease_s=30.0,  # type: ignore[arg-type]
             faults=frozenset({Fault.LEASE_TOO_SHORT}))


@pytest.mark.parametrize("fault", [CORRECT, "lease-too-short"])
async def test_a_turn_on_another_instance_takes_the_chat_from_a_live_run_under_the_fault(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    """Instance A streams a run and renews its lease on its heartbeat (every second). After
    A's first renewal, a turn on the same chat lands on instance B.

    Correct: the lease (5 s) covers the gap between heartbeats, B answers 409 naming A's run.
    Faulty: the lease written is 0.1 s, so for most of each second A's live run looks dead; B's
    pre-check reclaims it ('lease expired') and B's turn wins while A still streams, until A's
    next heartbeat finds its row ended ('run ended elsewhere')."""
    provider = FakeProvider(mode="hold")
    async with two_instances(pg_dsn, provider, users["alice"], faults=faults(fault),
                             heartbeat_interval_s=1.0, lease_s=5.0) as (ref_a, api_a, _, api_b):
        async with api_a.open_turn("on A") as turn_a:
            await held(turn_a)
            live_a = ref_a.runtime.registry.runs[UUID(turn_a.run_id)]
            ((written,),) = await sql(
                pg_dsn, "SELECT lease_expires_at FROM ai_chat_runs WHERE id = %s",
                (turn_a.run_id,))
            await wait_db(pg_dsn, "SELECT lease_expires_at <> %s FROM ai_chat_runs "
                                  "WHERE id = %s", (written, turn_a.run_id))  # a heartbeat
            b_answer: tuple[int, Any] = (0, None)
            b_run, tail_a, tail_b = None, [], []
            for _attempt in range(1 if fault == CORRECT else 5):
                if fault != CORRECT:  # a heartbeat may renew it just before B looks: retried
                    await wait_db(pg_dsn, "SELECT lease_expires_at < now() FROM ai_chat_runs "
                                          "WHERE id = %s", (turn_a.run_id,))
                async with api_b.open_turn("on B", turn_a.chat_id) as turn_b:
                    if turn_b.status != 200:
                        b_answer = (turn_b.status, json.loads(await turn_b.response.aread()))
                        continue
                    b_answer = (200, None)
                    await held(turn_b)
                    b_run = turn_b.run_id
                    tail_a = await turn_a.rest()  # A streams on until its next heartbeat
                    provider.release.set()
                    tail_b = await turn_b.rest()
                    break
            provider.release.set()
            if b_answer[0] != 200:
                tail_a = await turn_a.rest()
    a_state = await run_state(pg_dsn, turn_a.run_id)
    if fault == CORRECT:
        assert b_answer == (409, {**CONFLICT, "activeRunId": turn_a.run_id})
        assert types(tail_a)[-2:] == ["finish", "[DONE]"]
        assert a_state == ("succeeded", None, False)
        assert len(provider.calls) == 1
    else:
        assert b_answer == (200, None) and b_run not in (None, turn_a.run_id)
        assert a_state == ("aborted", "lease expired", False)  # reclaimed, not ended by A
        assert live_a.stop_reason == "run ended elsewhere"  # A streamed on until its heartbeat
        assert types(tail_a)[-2:] == ["abort", "[DONE]"]
        assert types(tail_b)[-2:] == ["finish", "[DONE]"]
        assert len(provider.calls_for("on A")) == len(provider.calls_for("on B")) == 1


# -- stop-local-only ---------------------------------------------------------------------------

@pytest.mark.parametrize("fault", [CORRECT, "stop-local-only"])
async def test_a_stop_sent_to_another_instance_reaches_the_owner_unless_the_fault(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    """A run streams on instance A; the stop is sent to instance B. Correct: B marks the row
    and notifies; A hears it and ends the run, dropping the provider call. Faulty: B marks the
    row (and answers stopped: true) but sends no NOTIFY, and A neither listens nor reads the
    mark on its heartbeat: the provider streams on and the run ends as if never stopped."""
    provider = FakeProvider(mode="hold")
    async with two_instances(pg_dsn, provider, users["alice"], faults=faults(fault)) as (
            ref_a, api_a, _, api_b), \
            await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as listener:
        notices: list[str] = []
        listener.add_notify_handler(lambda n: notices.append(n.payload))
        await listener.execute("LISTEN ai_chat_run_stop")
        async with api_a.open_turn("on A") as turn_a:
            await held(turn_a)
            live_a = ref_a.runtime.registry.runs[UUID(turn_a.run_id)]
            if fault == CORRECT:
                async with asyncio.timeout(5):
                    await ref_a.runtime.registry.listening.wait()
            stopped = await api_b.stop(runId=turn_a.run_id)
            await listener.execute("SELECT 1")  # a round trip: a NOTIFY sent is delivered
            await ref_a.runtime.registry.heartbeat()  # the poll of stop_requested_at
            if fault != CORRECT:
                still_streaming = (not live_a.stop_event.is_set()
                                   and not provider.calls[0].disconnected.is_set())
                provider.release.set()
            tail_a = await turn_a.rest()
        provider.release.set()
    a_state = await run_state(pg_dsn, turn_a.run_id)
    assert stopped.json() == STOPPED_TRUE
    if fault == CORRECT:
        assert notices == [turn_a.run_id]
        assert types(tail_a) == ["text-end", "abort", "[DONE]"]
        assert provider.calls[0].disconnected.is_set() and provider.calls[0].tokens_sent == 1
        assert a_state == ("aborted", "stopped by user", True)
    else:
        assert notices == []
        assert still_streaming
        assert types(tail_a)[-3:] == ["finish-step", "finish", "[DONE]"]
        assert provider.calls[0].tokens_sent == 3  # every token relayed after the stop
        assert a_state == ("succeeded", None, True)  # marked, never acted on


@pytest.mark.parametrize("fault", [CORRECT, "stop-local-only"])
async def test_a_stop_sent_to_the_owner_itself_works_with_or_without_the_fault(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    """The fault is invisible on one instance: the owner stops its own run in memory."""
    provider = FakeProvider(mode="hold")
    async with two_instances(pg_dsn, provider, users["alice"], faults=faults(fault)) as (
            _, api_a, _b, _api_b):
        async with api_a.open_turn("on A") as turn_a:
            await held(turn_a)
            stopped = await api_a.stop(runId=turn_a.run_id)
            tail_a = await turn_a.rest()
        provider.release.set()
    assert stopped.json() == STOPPED_TRUE
    assert types(tail_a) == ["text-end", "abort", "[DONE]"]
    assert provider.calls[0].disconnected.is_set()
    assert await run_state(pg_dsn, turn_a.run_id) == ("aborted", "stopped by user", True)
