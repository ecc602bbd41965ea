"""Through the HTTP app: the stream's frames, the race through the gate, and rejected turns."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import psycopg
import pytest

from tests.refkit import (
    Api,
    FakeProvider,
    make_settings,
    running_reference,
    turn_body,
    turn_through_gate,
)

pytestmark = pytest.mark.anyio


def count_rows(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in ("ai_chats", "ai_chat_runs", "ai_chat_messages")}


async def test_a_turn_streams_the_exact_frames(pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(tokens=("Hel", "lo"))
    async with running_reference(make_settings(pg_dsn), provider) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        api = Api(client, ref.url, users["alice"])
        result = await api.turn("hi there")
        latest = (await api.latest(result.chat_id or "")).json()["data"]
    assert result.status == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert result.headers["x-accel-buffering"] == "no"
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-run-id"] == result.run_id
    start, *rest = result.frames
    part = rest[1]["id"]
    assert start == {"type": "start", "messageId": latest["message"]["id"],
                     "messageMetadata": {"chatId": result.chat_id, "runId": result.run_id}}
    assert rest == [
        {"type": "start-step"},
        {"type": "text-start", "id": part},
        {"type": "text-delta", "id": part, "delta": "Hel"},
        {"type": "text-delta", "id": part, "delta": "lo"},
        {"type": "text-end", "id": part},
        {"type": "finish-step"},
        {"type": "finish"},
        "[DONE]",
    ]
    assert latest["run"]["status"] == "succeeded" and latest["run"]["id"] == result.run_id
    assert latest["message"]["content"] == "Hello"
    assert latest["message"]["status"] == "completed"
    assert provider.route.call_count == 1
    assert provider.calls[0].last_user_text == "hi there"
    assert provider.calls[0].body["stream"] is True


async def race_held(api: Api, provider: FakeProvider, chat_id: str,
                    n: int) -> list[tuple[int, Any]]:
    """N simultaneous turns on one chat; the winner is held until every loser has answered."""
    provider.release = asyncio.Event()
    results: list[tuple[int, Any]] = []
    losers_done = asyncio.Event()

    async def racer(i: int) -> None:
        async with api.open_turn(f"racer-{i}", chat_id) as turn:
            if turn.status != 200:
                results.append((turn.status, json.loads(await turn.response.aread())))
                if sum(1 for s, _ in results if s != 200) == n - 1:
                    losers_done.set()
                return
            await turn.next_frame()
            await losers_done.wait()
            provider.release.set()
            await turn.rest()
            results.append((200, turn.frames))

    if n == 1:
        losers_done.set()
    async with asyncio.timeout(20):
        await asyncio.gather(*(racer(i) for i in range(n)))
    return results


@pytest.mark.parametrize("n", [2, 50])
async def test_simultaneous_turns_one_winner_rest_409(pg_dsn: str, users: dict[str, str],
                                                      n: int) -> None:
    provider = FakeProvider(mode="hold")
    provider.release.set()
    async with running_reference(make_settings(pg_dsn), provider) as ref, \
            httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=None)) as client:
        api = Api(client, ref.url, users["alice"])
        chat_id = (await api.turn("setup")).chat_id
        assert chat_id is not None
        before = count_rows(pg_dsn)
        results = await race_held(api, provider, chat_id, n)
        runs = (await api.runs(chat_id)).json()["data"]["items"]
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] + [409] * (n - 1)
    winner_frames = next(body for s, body in results if s == 200)
    winner_run = winner_frames[0]["messageMetadata"]["runId"]
    for status, body in results:
        if status == 409:
            assert body == {"statusCode": 409,
                            "message": "An agent run is already in progress for this chat",
                            "code": "A_RUN_ALREADY_ACTIVE", "activeRunId": winner_run}
    racer_calls = [c for c in provider.calls if c.last_user_text.startswith("racer-")]
    assert len(racer_calls) == 1
    assert winner_frames[-2:] == [{"type": "finish"}, "[DONE]"]
    after = count_rows(pg_dsn)
    assert after["ai_chat_runs"] - before["ai_chat_runs"] == 1
    assert after["ai_chat_messages"] - before["ai_chat_messages"] == 2
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]


async def test_precheck_rejection_writes_nothing_and_calls_no_provider(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with running_reference(make_settings(pg_dsn), provider) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        api = Api(client, ref.url, users["alice"])
        async with api.open_turn("holder") as holder:
            await holder.until("text-delta")  # the holder's provider call is under way
            before = count_rows(pg_dsn)
            calls_before = provider.route.call_count
            rejected = await api.turn("second", holder.chat_id)
            after = count_rows(pg_dsn)
            metrics = (await client.get(ref.url + "/metrics")).text
            provider.release.set()
            await holder.rest()
    assert rejected.status == 409
    assert rejected.body["activeRunId"] == holder.run_id
    assert provider.route.call_count == calls_before
    assert after == before
    assert 'ai_chat_run_conflicts_total{path="precheck"} 1' in metrics


async def test_gate_rejection_writes_nothing_and_calls_no_provider(
        pg_dsn: str, users: dict[str, str]) -> None:
    """Force the gate path: an uncommitted holder is invisible to the pre-check, so the
    request's INSERT waits on the index; committing the holder makes that INSERT fail 23505."""
    provider = FakeProvider()
    async with running_reference(make_settings(pg_dsn), provider) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        api = Api(client, ref.url, users["alice"])
        chat_id = (await api.turn("setup")).chat_id
        assert chat_id is not None
        before = count_rows(pg_dsn)
        calls_before = provider.route.call_count
        rejected, holder_id = await turn_through_gate(api, pg_dsn, chat_id, "loser")
        after = count_rows(pg_dsn)
        metrics = (await client.get(ref.url + "/metrics")).text
    assert rejected.status == 409
    assert rejected.body == {"statusCode": 409,
                             "message": "An agent run is already in progress for this chat",
                             "code": "A_RUN_ALREADY_ACTIVE", "activeRunId": holder_id}
    assert provider.route.call_count == calls_before
    assert after["ai_chat_runs"] == before["ai_chat_runs"] + 1  # only the test's holder
    assert after["ai_chat_messages"] == before["ai_chat_messages"]
    assert 'ai_chat_run_conflicts_total{path="gate"} 1' in metrics


async def test_a_burst_past_the_pool_is_answered_by_the_precheck(
        pg_dsn: str, users: dict[str, str]) -> None:
    """A turn keeps one connection from its pre-check through its INSERT. At the instant the
    winner's INSERT commits, at most ``pool_max_size`` turns hold a connection, the winner's
    among them; only those can have passed a pre-check that ran before it. So at most
    ``pool_max_size - 1`` losers reach the gate, whatever the arrival order. A turn that gave
    its connection back after the pre-check queued for its INSERT behind every other
    request's pre-check, and nearly every loser of a burst reached the gate."""
    from raceharness.reference.auth import ensure_user_sync

    pool, n = 3, 24
    alice = ensure_user_sync(pg_dsn, "alice", users["alice"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("INSERT INTO ai_chats (creator_id, title) VALUES (%s, 'burst') "
                           "RETURNING id", (alice,)).fetchone()
    assert row is not None
    chat_id = str(row[0])
    provider = FakeProvider(mode="hold")  # the winner streams until the burst is answered
    settings = make_settings(pg_dsn, pool_min_size=1, pool_max_size=pool)
    async with running_reference(settings, provider) as ref, \
            httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:
        answered: list[int] = []
        all_others_answered = asyncio.Event()

        async def one(i: int) -> int:
            async with client.stream("POST", ref.url + "/api/ai-chat/stream",
                                     json=turn_body(f"turn {i}", chat_id),
                                     headers={"authorization": f"Bearer {users['alice']}"}) as resp:
                if resp.status_code == 200:  # hold the chat until every other turn answered
                    await all_others_answered.wait()
                    provider.release.set()
                await resp.aread()
                if resp.status_code != 200:
                    answered.append(resp.status_code)
                    if len(answered) == n - 1:
                        all_others_answered.set()
                return resp.status_code

        statuses = sorted(await asyncio.gather(*(one(i) for i in range(n))))
        metrics = (await client.get(ref.url + "/metrics")).text
    assert statuses == [200] + [409] * (n - 1)
    gate = _counter(metrics, 'ai_chat_run_conflicts_total{path="gate"}')
    precheck = _counter(metrics, 'ai_chat_run_conflicts_total{path="precheck"}')
    assert gate + precheck == n - 1
    assert gate <= pool - 1, metrics


def _counter(metrics: str, name: str) -> int:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[-1]))
    raise AssertionError(f"{name} not in /metrics")
