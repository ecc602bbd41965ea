"""Leases across the reference's own runs and other instances' (protocol.md §7, liveness).

- An instance never reclaims a run it is still driving: after a database outage longer than
  the lease (the heartbeat could not renew it), a new turn on that chat landing on the same
  instance is answered 409 naming the live run, whose lease the pre-check renews instead. A
  reclaim would let the new turn win while the old run still streams, untracked, until the
  next heartbeat finds its row ended.
- Another instance still reclaims the expired run of a dead instance.

Real Postgres, real uvicorn; only the provider is mocked (respx, see refkit).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

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



# -- helpers -----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def serve(dsn: str, provider: FakeProvider | None, token: str,
                **overrides: Any) -> AsyncIterator[tuple[RunningReference, Api]]:
    """One reference instance and a client for it."""
    async with running_reference(make_settings(dsn, **overrides), provider) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        yield ref, Api(client, ref.url, token)


async def held(turn: OpenTurn) -> None:
    """Until the run's provider call is under way (its first token relayed)."""
    assert turn.status == 200
    await turn.until("text-delta")


async def sql(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def lapse_lease(dsn: str, run_id: str) -> None:
    """What a database outage longer than the lease leaves: the owner's heartbeat could not
    renew the row, so its lease is in the past although the run still streams."""
    await sql(dsn, "UPDATE ai_chat_runs SET lease_expires_at = now() - interval '1 second' "
                   "WHERE id = %s", (run_id,))


async def run_state(dsn: str, run_id: str) -> tuple[str, str | None, bool]:
    """(status, error, lease in the future)."""
    ((status, error, leased),) = await sql(
        dsn, "SELECT status, error, lease_expires_at > now() FROM ai_chat_runs WHERE id = %s",
        (run_id,))
    return status, error, leased


async def rejected_or_none(api: Api, text: str, chat_id: str) -> tuple[int, Any]:
    """A turn that should be rejected: (status, error body). A turn that wins instead is
    answered (200, None) and its stream closed at once (which stops its run)."""
    async with api.open_turn(text, chat_id) as turn:
        if turn.status == 200:
            return 200, None
        return turn.status, json.loads(await turn.response.aread())


def types(frames: list[Any]) -> list[str]:
    return [f if f == "[DONE]" else f["type"] for f in frames]


# -- the instance's own live runs --------------------------------------------------------------

async def test_a_turn_never_reclaims_a_run_its_own_instance_still_drives(
        pg_dsn: str, users: dict[str, str]) -> None:
    """Before the fix, the pre-check reclaimed the live run ('lease expired') and the second
    turn won: two provider calls streamed on one chat, the first one untracked."""
    provider = FakeProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"], instance_id="A") as (ref, api):
        async with api.open_turn("first") as turn:
            await held(turn)
            await lapse_lease(pg_dsn, turn.run_id)
            second = await rejected_or_none(api, "second", turn.chat_id)
            during = await run_state(pg_dsn, turn.run_id)
            calls_during = len(provider.calls)
            provider.release.set()
            tail = await turn.rest()
        after = await run_state(pg_dsn, turn.run_id)
        runs = (await api.runs(turn.chat_id)).json()["data"]["items"]
    assert second == (409, {**CONFLICT, "activeRunId": turn.run_id})
    assert during == ("running", None, True)  # spared, and its lease renewed by the pre-check
    assert calls_during == 1 and provider.calls_for("second") == []
    assert types(tail)[-3:] == ["finish-step", "finish", "[DONE]"]
    assert after == ("succeeded", None, True)
    assert [(r["id"], r["status"]) for r in runs] == [(turn.run_id, "succeeded")]


async def test_the_reaper_the_precheck_and_the_heartbeat_agree_on_a_live_run(
        pg_dsn: str, users: dict[str, str]) -> None:
    """A lapsed live run survives the instance's reaper and its pre-check alike, and the next
    heartbeat finds it still active (it is not stopped as 'run ended elsewhere')."""
    provider = FakeProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"], instance_id="A") as (ref, api):
        async with api.open_turn("first") as turn:
            await held(turn)
            live = ref.runtime.registry.runs[UUID(turn.run_id)]
            await lapse_lease(pg_dsn, turn.run_id)
            await ref.runtime.registry.reap()
            after_reap = await run_state(pg_dsn, turn.run_id)
            second = await rejected_or_none(api, "second", turn.chat_id)
            await ref.runtime.registry.heartbeat()
            stop_requested = live.stop_event.is_set()
            provider.release.set()
            tail = await turn.rest()
    assert after_reap == ("running", None, False)  # spared, not renewed: the heartbeat renews
    assert second == (409, {**CONFLICT, "activeRunId": turn.run_id})
    assert stop_requested is False
    assert types(tail)[-2:] == ["finish", "[DONE]"]


# -- another instance's runs -------------------------------------------------------------------

async def test_another_instance_still_reclaims_the_run_of_a_dead_instance(
        pg_dsn: str, users: dict[str, str]) -> None:
    """Instance B, itself driving a run on another chat, reclaims the expired run a dead
    instance left on this chat: only B's own live runs are spared."""
    provider = FakeProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"], instance_id="B") as (_, api):
        async with api.open_turn("B's own") as own:
            await held(own)
            ((chat_id, dead_run),) = await sql(
                pg_dsn, """WITH chat AS (
                               INSERT INTO ai_chats (creator_id, title)
                               SELECT id, 'left behind' FROM ai_users WHERE name = 'alice'
                               RETURNING id)
                           INSERT INTO ai_chat_runs (chat_id, status, started_at,
                                                     owner_instance, lease_expires_at)
                           SELECT id, 'running', now(), 'dead', now() - interval '1 second'
                             FROM chat RETURNING chat_id, id""")
            provider.mode = "finish"  # read per call: B's own run stays held
            nxt = await api.turn("after the crash", str(chat_id))
            own_state = await run_state(pg_dsn, own.run_id)
            provider.release.set()
            await own.rest()
    assert nxt.status == 200 and types(nxt.frames)[-2:] == ["finish", "[DONE]"]
    assert await run_state(pg_dsn, str(dead_run)) == ("aborted", "lease expired", False)
    assert own_state == ("running", None, True)
