"""The run lifecycle (protocol.md §7) through the HTTP app: stop, disconnect, provider failure,
leases and reaping, late writes, cross-instance stop, shutdown, heartbeat pings, run reads.

Real Postgres (a fresh database per test), real uvicorn; only the provider is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

from raceharness.reference.gate import Claim
from tests.refkit import (
    Api,
    FakeProvider,
    OpenTurn,
    RunningReference,
    make_settings,
    parse_sse,
    running_reference,
    turn_body,
)

pytestmark = pytest.mark.anyio

API_KEY = "sk-test-secret"
TERMINAL = ("finish", "error", "abort")
STOPPED_TRUE = {"data": {"stopped": True}, "success": True, "status": 200}
STOPPED_FALSE = {"data": {"stopped": False}, "success": True, "status": 200}
RUN_KEYS = {"id", "chatId", "status", "error", "stepCount", "stopRequestedAt", "startedAt",
            "finishedAt", "createdAt", "updatedAt", "leaseExpiresAt"}


# -- helpers -----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def serve(dsn: str, provider: FakeProvider | None, token: str,
                **overrides: Any) -> AsyncIterator[tuple[RunningReference, Api]]:
    """One reference instance and a client for it."""
    async with running_reference(make_settings(dsn, **overrides), provider) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        yield ref, Api(client, ref.url, token)


def types(frames: list[Any]) -> list[str]:
    return [f if f == "[DONE]" else f["type"] for f in frames]


def terminal_count(frames: list[Any]) -> int:
    return sum(1 for t in types(frames) if t in TERMINAL)


async def latest(api: Api, chat_id: str) -> dict[str, Any]:
    resp = await api.latest(chat_id)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]  # type: ignore[no-any-return]


async def wait_terminal(api: Api, chat_id: str) -> dict[str, Any]:
    """Bounded poll of ``/run`` until the chat's latest run is terminal."""
    async with asyncio.timeout(10):
        while True:
            data = await latest(api, chat_id)
            if data["run"] is not None and data["run"]["status"] not in ("pending", "running"):
                return data
            await asyncio.sleep(0.02)


async def wait_until(condition: Any, seconds: float = 5) -> None:
    """Bounded poll of an in-process condition that has no event (the reference exposes none)."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - nothing to wait on: LiveRun.detach sets no event
            await asyncio.sleep(0.005)


async def held(turn: OpenTurn) -> None:
    """Until the run's provider call is under way (its first token relayed)."""
    assert turn.status == 200
    await turn.until("text-delta")


async def user_id(dsn: str, name: str = "alice") -> UUID:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT id FROM ai_users WHERE name = %s", (name,))
        row = await cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def insert_chat(dsn: str, name: str = "alice") -> str:
    owner = await user_id(dsn, name)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "INSERT INTO ai_chats (creator_id, title) VALUES (%s, 'seeded') RETURNING id",
            (owner,))
        row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def insert_active_run(dsn: str, chat_id: str, *, lease: str = "-1 minute",
                            owner: str = "dead-instance") -> tuple[str, str]:
    """An active run row (and its streaming assistant message) as a dead owner left it.

    ``lease`` is added to now() for ``lease_expires_at``. Returns (run id, message id).
    """
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            """INSERT INTO ai_chat_messages (chat_id, role, content, status)
               VALUES (%s, 'assistant', 'partial', 'streaming') RETURNING id""", (chat_id,))
        msg = await cur.fetchone()
        assert msg is not None
        cur = await conn.execute(
            """INSERT INTO ai_chat_runs
                   (chat_id, created_by, assistant_message_id, status, started_at,
                    owner_instance, lease_expires_at)
               SELECT id, creator_id, %s, 'running', now() - interval '5 minutes', %s,
                      now() + %s::interval
                 FROM ai_chats WHERE id = %s
               RETURNING id""", (msg[0], owner, lease, chat_id))
        run = await cur.fetchone()
    assert run is not None
    return str(run[0]), str(msg[0])


async def run_row(dsn: str, run_id: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            """SELECT r.status, r.error, r.stop_requested_at IS NOT NULL,
                      r.finished_at IS NOT NULL, r.lease_expires_at, now(), m.status
                 FROM ai_chat_runs r LEFT JOIN ai_chat_messages m
                   ON m.id = r.assistant_message_id WHERE r.id = %s""", (run_id,))
        row = await cur.fetchone()
    assert row is not None
    return {"status": row[0], "error": row[1], "stop_requested": row[2], "finished": row[3],
            "lease_expires_at": row[4], "now": row[5], "message_status": row[6]}


async def metric(client: httpx.AsyncClient, ref: RunningReference, name: str) -> str:
    text = (await client.get(ref.url + "/metrics")).text
    return next(line for line in text.splitlines() if line.startswith(name + " ")
                or line.startswith(name + "{"))


def assert_stopped_run(data: dict[str, Any], run_id: str, error: str, content: str) -> None:
    run, message = data["run"], data["message"]
    assert run["id"] == run_id
    assert (run["status"], run["error"]) == ("aborted", error)
    assert run["stopRequestedAt"] is not None and run["finishedAt"] is not None
    assert (message["status"], message["content"]) == ("aborted", content)


# -- stop ----------------------------------------------------------------------------------

@pytest.mark.parametrize("by", ["runId", "chatId"])
async def test_stop_aborts_the_held_run_and_releases_the_chat(
        pg_dsn: str, users: dict[str, str], by: str) -> None:
    provider = FakeProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"]) as (ref, api):
        async with api.open_turn("hold me") as turn:
            await held(turn)
            ids = {"runId": turn.run_id} if by == "runId" else {"chatId": turn.chat_id}
            stopped = await api.stop(**ids)
            disconnected = provider.calls[0].disconnected.is_set()
            tail = await turn.rest()
        part = turn.frames[2]["id"]
        after_stop = await latest(api, turn.chat_id)
        second = await api.stop(**ids)
        after_second = await latest(api, turn.chat_id)
        provider.release.set()
        provider.mode = "finish"
        nxt = await api.turn("next", turn.chat_id)
    assert stopped.json() == STOPPED_TRUE
    assert disconnected  # the provider call was closed before /stop answered
    assert tail == [{"type": "text-end", "id": part}, {"type": "abort"}, "[DONE]"]
    assert terminal_count(turn.frames) == 1
    assert_stopped_run(after_stop, turn.run_id, "stopped by user", "Hel")
    assert second.json() == STOPPED_FALSE
    assert after_second == after_stop
    assert nxt.status == 200 and nxt.types[-2:] == ["finish", "[DONE]"]


async def test_stop_on_an_idle_chat_answers_false(pg_dsn: str, users: dict[str, str]) -> None:
    async with serve(pg_dsn, FakeProvider(), users["alice"]) as (_, api):
        done = await api.turn("one")
        before = await latest(api, done.chat_id or "")
        resp = await api.stop(chatId=done.chat_id or "")
        after = await latest(api, done.chat_id or "")
    assert (resp.status_code, resp.json()) == (200, STOPPED_FALSE)
    assert after == before and after["run"]["status"] == "succeeded"


async def test_stop_with_neither_id_is_400(pg_dsn: str, users: dict[str, str]) -> None:
    async with serve(pg_dsn, FakeProvider(), users["alice"]) as (_, api):
        resp = await api.stop()
    assert resp.status_code == 400
    assert resp.json() == {"statusCode": 400, "message": "runId or chatId: one is required",
                           "code": "A_BAD_REQUEST"}


# -- client disconnect ---------------------------------------------------------------------

async def test_disconnect_stops_the_run_when_not_autonomous(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"], autonomous_runs=False) as (_, api):
        async with api.open_turn("leave early") as turn:
            await held(turn)
        async with asyncio.timeout(10):
            await provider.calls[0].disconnected.wait()
        data = await wait_terminal(api, turn.chat_id)
        provider.release.set()
        nxt = await api.turn("next", turn.chat_id)
    assert_stopped_run(data, turn.run_id, "client disconnected", "Hel")
    assert nxt.status == 200


async def test_disconnect_leaves_an_autonomous_run_going_to_the_end(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"], autonomous_runs=True) as (ref, api):
        async with api.open_turn("leave early") as turn:
            await held(turn)
            live = ref.runtime.registry.runs[UUID(turn.run_id)]
        await wait_until(lambda: not live.attached)  # the server saw the client go
        assert not live.stop_event.is_set()
        provider.release.set()
        data = await wait_terminal(api, turn.chat_id)
        nxt = await api.turn("next", turn.chat_id)
    assert provider.calls[0].tokens_sent == 3
    assert data["run"]["id"] == turn.run_id
    assert (data["run"]["status"], data["run"]["error"]) == ("succeeded", None)
    assert data["run"]["stopRequestedAt"] is None
    assert (data["message"]["status"], data["message"]["content"]) == ("completed", "Hello!")
    assert nxt.status == 200


# -- provider failures ---------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "error_text", "partial"), [
    ("error-mid", "model overloaded", True),
    ("status-500", "provider answered 500: upstream exploded", False),
    ("drop", "provider connection failed: RemoteProtocolError", True),
])
async def test_provider_failure_fails_the_run(pg_dsn: str, users: dict[str, str], mode: str,
                                              error_text: str, partial: bool) -> None:
    provider = FakeProvider(mode=mode)
    async with serve(pg_dsn, provider, users["alice"]) as (_, api):
        result = await api.turn("fail please")
        data = await latest(api, result.chat_id or "")
        provider.mode = "finish"
        nxt = await api.turn("next", result.chat_id)
    part = result.frames[2]["id"] if partial else None
    relayed = [{"type": "text-start", "id": part}, {"type": "text-delta", "id": part,
                                                    "delta": "Hel"},
               {"type": "text-end", "id": part}] if partial else []
    assert result.status == 200
    assert result.frames[1:] == [{"type": "start-step"}, *relayed,
                                 {"type": "error", "errorText": error_text}, "[DONE]"]
    assert (data["run"]["status"], data["run"]["error"]) == ("failed", error_text)
    assert data["run"]["stopRequestedAt"] is None
    assert (data["message"]["status"], data["message"]["content"]) == (
        "error", "Hel" if partial else "")
    assert API_KEY not in result.frames[-2]["errorText"]
    assert nxt.status == 200 and nxt.types[-2:] == ["finish", "[DONE]"]


class _ReadTimeoutStream(httpx.AsyncByteStream):
    """A response body whose every read is bounded, as a network transport bounds it."""

    def __init__(self, inner: Any, request: httpx.Request, read_s: float) -> None:
        self.inner, self.request, self.read_s = inner, request, read_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self.inner.__aiter__()
        while True:
            try:
                async with asyncio.timeout(self.read_s):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise httpx.ReadTimeout("read timed out", request=self.request) from None
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class _ReadTimeoutTransport(httpx.AsyncBaseTransport):
    """httpx's MockTransport ignores timeouts; httpcore enforces the request's ``read`` timeout
    on every network read. This wrapper does the same, so the server's own setting is tested."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        read_s = request.extensions.get("timeout", {}).get("read")
        if read_s is not None:
            response.stream = _ReadTimeoutStream(response.stream, request, read_s)
        return response


class NetworkTimedProvider(FakeProvider):
    @property
    def transport(self) -> httpx.AsyncBaseTransport:  # type: ignore[override]
        return _ReadTimeoutTransport(super().transport)


async def test_provider_stall_past_the_read_timeout_fails_the_run(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = NetworkTimedProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"], provider_read_timeout_s=0.3) as (_, api):
        result = await api.turn("stall")
        data = await latest(api, result.chat_id or "")
        provider.release.set()
        nxt = await api.turn("next", result.chat_id)
    assert result.types[-3:] == ["text-end", "error", "[DONE]"]
    assert result.frames[-2] == {"type": "error", "errorText": "provider timed out"}
    assert (data["run"]["status"], data["run"]["error"]) == ("failed", "provider timed out")
    assert data["message"]["status"] == "error"
    assert provider.calls[0].disconnected.is_set()
    assert nxt.status == 200


async def test_a_provider_error_echoing_the_key_is_redacted(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider()

    def echo_key(request: httpx.Request) -> httpx.Response:  # a provider that leaks the key
        key = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(401, json={"error": {"message": f"invalid api key {key}"}})

    provider.route.side_effect = echo_key
    async with serve(pg_dsn, provider, users["alice"]) as (_, api):
        result = await api.turn("leak?")
        data = await latest(api, result.chat_id or "")
    assert result.frames[-2] == {"type": "error",
                                 "errorText": "provider answered 401: invalid api key ***"}
    assert data["run"]["error"] == "provider answered 401: invalid api key ***"
    assert API_KEY not in str(result.frames) and API_KEY not in str(data)


# -- leases and reaping --------------------------------------------------------------------

async def test_an_expired_holder_blocks_nothing(pg_dsn: str, users: dict[str, str]) -> None:
    chat_id = await insert_chat(pg_dsn)
    dead_run, _ = await insert_active_run(pg_dsn, chat_id)
    async with serve(pg_dsn, FakeProvider(), users["alice"]) as (_, api):
        result = await api.turn("after the crash", chat_id)
        runs = (await api.runs(chat_id)).json()["data"]["items"]
    assert result.status == 200 and result.types[-2:] == ["finish", "[DONE]"]
    assert [(r["id"], r["status"], r["error"]) for r in runs] == [
        (result.run_id, "succeeded", None), (dead_run, "aborted", "lease expired")]
    assert (await run_row(pg_dsn, dead_run))["message_status"] == "aborted"


async def test_reap_aborts_expired_runs_only_and_counts_them(
        pg_dsn: str, users: dict[str, str]) -> None:
    chats = [await insert_chat(pg_dsn) for _ in range(3)]
    expired = [await insert_active_run(pg_dsn, c) for c in chats[:2]]
    alive, _ = await insert_active_run(pg_dsn, chats[2], lease="1 minute", owner="other-live")
    async with serve(pg_dsn, FakeProvider(), users["alice"]) as (ref, api):
        before = await metric(api.client, ref, "ai_chat_runs_reaped_total")
        await ref.runtime.registry.reap()
        after = await metric(api.client, ref, "ai_chat_runs_reaped_total")
    assert before == "ai_chat_runs_reaped_total 0"
    assert after == "ai_chat_runs_reaped_total 2"
    for run_id, _ in expired:
        row = await run_row(pg_dsn, run_id)
        assert (row["status"], row["error"], row["finished"], row["message_status"]) == (
            "aborted", "lease expired", True, "aborted")
    row = await run_row(pg_dsn, alive)
    assert (row["status"], row["error"], row["message_status"]) == ("running", None, "streaming")


async def test_heartbeat_renews_a_live_run_so_reap_spares_it(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"]) as (ref, api):
        async with api.open_turn("alive") as turn:
            await held(turn)
            async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
                await conn.execute(  # as if the last renewal was long ago
                    "UPDATE ai_chat_runs SET lease_expires_at = now() - interval '1 second' "
                    "WHERE id = %s", (turn.run_id,))
            await ref.runtime.registry.heartbeat()
            renewed = await run_row(pg_dsn, turn.run_id)
            await ref.runtime.registry.reap()
            after_reap = await run_row(pg_dsn, turn.run_id)
            reaped = await metric(api.client, ref, "ai_chat_runs_reaped_total")
            provider.release.set()
            tail = await turn.rest()
        data = await latest(api, turn.chat_id)
    assert renewed["lease_expires_at"] > renewed["now"] + timedelta(seconds=100)  # lease_s=120
    assert (after_reap["status"], after_reap["error"]) == ("running", None)
    assert reaped == "ai_chat_runs_reaped_total 0"
    assert types(tail)[-2:] == ["finish", "[DONE]"]
    assert data["run"]["status"] == "succeeded"


# -- late writes -----------------------------------------------------------------------------

async def test_a_late_terminal_write_does_not_overwrite(
        pg_dsn: str, users: dict[str, str]) -> None:
    async with serve(pg_dsn, FakeProvider(), users["alice"]) as (ref, api):
        result = await api.turn("done")
        assert result.run_id and result.chat_id
        before = await latest(api, result.chat_id)
        claim = Claim(run_id=UUID(result.run_id), chat_id=UUID(result.chat_id))
        late = await ref.runtime.gate.settle(
            claim, status="aborted", error="late", content="overwritten",
            message_id=UUID(result.frames[0]["messageId"]), message_status="aborted",
            step_count=0, stop_requested=True)
        after_settle = await latest(api, result.chat_id)
        stop = await api.stop(runId=result.run_id)
        after_stop = await latest(api, result.chat_id)
    assert late is False
    assert before["run"]["status"] == "succeeded" and before["message"]["content"] == "Hello!"
    assert after_settle == before
    assert stop.json() == STOPPED_FALSE
    assert after_stop == before


# -- across instances ------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def two_instances(dsn: str, provider: FakeProvider, token: str, **overrides: Any
                        ) -> AsyncIterator[tuple[RunningReference, Api, RunningReference, Api]]:
    async with serve(dsn, provider, token, instance_id="A", **overrides) as (ref_a, api_a), \
            serve(dsn, provider, token, instance_id="B", **overrides) as (ref_b, api_b):
        yield ref_a, api_a, ref_b, api_b


async def test_stop_on_another_instance_reaches_the_owner_by_notify(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with two_instances(pg_dsn, provider, users["alice"]) as (ref_a, api_a, _, api_b):
        async with api_a.open_turn("on A") as turn:
            await held(turn)
            async with asyncio.timeout(5):
                await ref_a.runtime.registry.listening.wait()
            stopped = await api_b.stop(runId=turn.run_id)
            tail = await turn.rest()
        disconnected = provider.calls[0].disconnected.is_set()
        data = await latest(api_b, turn.chat_id)
        provider.release.set()
        nxt = await api_b.turn("next", turn.chat_id)
    assert stopped.json() == STOPPED_TRUE
    assert types(tail) == ["text-end", "abort", "[DONE]"]
    assert disconnected
    assert_stopped_run(data, turn.run_id, "stopped by user", "Hel")
    assert nxt.status == 200


async def test_stop_on_another_instance_is_heard_on_the_heartbeat_without_notify(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with two_instances(pg_dsn, provider, users["alice"], stop_notify=False) as (
            ref_a, api_a, _, api_b):
        async with api_a.open_turn("on A") as turn:
            await held(turn)
            stopped = await api_b.stop(runId=turn.run_id)
            marked = await latest(api_b, turn.chat_id)
            await ref_a.runtime.registry.heartbeat()
            tail = await turn.rest()
        data = await latest(api_b, turn.chat_id)
        provider.release.set()
    assert stopped.json() == STOPPED_TRUE
    # Marked, not yet ended: only the owner ends it.
    assert marked["run"]["status"] == "running" and marked["run"]["stopRequestedAt"] is not None
    assert types(tail) == ["text-end", "abort", "[DONE]"]
    assert provider.calls[0].disconnected.is_set()
    assert_stopped_run(data, turn.run_id, "stopped by user", "Hel")


async def test_stop_of_a_run_whose_owner_died_aborts_it_at_once(
        pg_dsn: str, users: dict[str, str]) -> None:
    chat_id = await insert_chat(pg_dsn)
    dead_run, _ = await insert_active_run(pg_dsn, chat_id)
    async with serve(pg_dsn, FakeProvider(), users["alice"], instance_id="B") as (_, api):
        stopped = await api.stop(runId=dead_run)
        data = await latest(api, chat_id)
        nxt = await api.turn("next", chat_id)
    assert stopped.json() == STOPPED_TRUE
    assert_stopped_run(data, dead_run, "stopped by user (owner lease expired)", "partial")
    assert nxt.status == 200


async def test_shutdown_aborts_only_the_instances_own_runs(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider_a, provider_b = FakeProvider(mode="hold"), FakeProvider(mode="hold")
    async with serve(pg_dsn, provider_b, users["alice"], instance_id="B") as (_, api_b), \
            api_b.open_turn("on B") as turn_b:
        await held(turn_b)
        async with serve(pg_dsn, provider_a, users["alice"], instance_id="A") as (ref_a, api_a):
            async with api_a.open_turn("on A") as turn_a:
                await held(turn_a)
                ref_a.server.should_exit = True  # what SIGTERM does
                tail_a = await turn_a.rest()
        data_a = await latest(api_b, turn_a.chat_id)
        data_b = await latest(api_b, turn_b.chat_id)
        provider_b.release.set()
        tail_b = await turn_b.rest()
        final_b = await latest(api_b, turn_b.chat_id)
    assert types(tail_a) == ["text-end", "abort", "[DONE]"]
    assert_stopped_run(data_a, turn_a.run_id, "server shutting down", "Hel")
    assert provider_a.calls[0].disconnected.is_set()
    assert (data_b["run"]["status"], data_b["run"]["stopRequestedAt"]) == ("running", None)
    assert types(tail_b)[-2:] == ["finish", "[DONE]"]
    assert (final_b["run"]["status"], final_b["message"]["content"]) == ("succeeded", "Hello!")


# -- the stream's heartbeat ------------------------------------------------------------------

async def test_a_held_stream_carries_ping_comments(pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"], sse_ping_interval_s=0.05) as (ref, api):
        raw = ""
        async with api.client.stream("POST", api.base + "/stream", json=turn_body("ping"),
                                     headers={"authorization": f"Bearer {api.token}"}) as resp:
            chunks = resp.aiter_text()
            async with asyncio.timeout(10):
                while raw.count(": ping\n\n") < 2:
                    raw += await chunks.__anext__()
            provider.release.set()
            async for chunk in chunks:
                raw += chunk
    frames = parse_sse(raw)  # asserts every non-comment block is a data frame
    assert types(frames) == ["start", "start-step", "text-start", "text-delta", "text-delta",
                             "text-delta", "text-end", "finish-step", "finish", "[DONE]"]
    blocks = [b for b in raw.split("\n\n") if b]
    assert all(b == ": ping" or b.startswith("data: ") for b in blocks)


# -- reads -------------------------------------------------------------------------------------

def _is_iso(value: Any) -> bool:
    return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None


async def test_run_returns_the_latest_run_and_its_message(
        pg_dsn: str, users: dict[str, str]) -> None:
    async with serve(pg_dsn, FakeProvider(), users["alice"]) as (_, api):
        first = await api.turn("one")
        chat_id = first.chat_id or ""
        second = await api.turn("two", chat_id)
        resp = await api.latest(chat_id)
    body = resp.json()
    assert set(body) == {"data", "success", "status"}
    assert (body["success"], body["status"]) == (True, 200)
    run, message = body["data"]["run"], body["data"]["message"]
    assert set(body["data"]) == {"run", "message"}
    assert set(run) == RUN_KEYS
    timestamps = {k: run.pop(k) for k in ("startedAt", "finishedAt", "createdAt", "updatedAt",
                                          "leaseExpiresAt")}
    assert all(_is_iso(v) for v in timestamps.values()), timestamps
    assert run == {"id": second.run_id, "chatId": chat_id, "status": "succeeded", "error": None,
                   "stepCount": 1, "stopRequestedAt": None}
    assert set(message) == {"id", "chatId", "role", "content", "status", "metadata",
                            "createdAt", "updatedAt"}
    assert _is_iso(message.pop("createdAt")) and _is_iso(message.pop("updatedAt"))
    assert message == {"id": second.frames[0]["messageId"], "chatId": chat_id,
                       "role": "assistant", "content": "Hello!", "status": "completed",
                       "metadata": {"runId": second.run_id}}


async def test_runs_filters_by_status(pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with serve(pg_dsn, provider, users["alice"]) as (_, api):
        async with api.open_turn("to stop") as turn:
            await held(turn)
            await api.stop(runId=turn.run_id)
            await turn.rest()
        provider.release.set()
        provider.mode = "finish"
        done = await api.turn("to finish", turn.chat_id)
        every = (await api.runs(turn.chat_id)).json()["data"]["items"]
        aborted = (await api.runs(turn.chat_id, status="aborted")).json()["data"]["items"]
        succeeded = (await api.runs(turn.chat_id, status="succeeded")).json()["data"]["items"]
        bogus = await api.runs(turn.chat_id, status="bogus")
    assert [(r["id"], r["status"]) for r in every] == [(done.run_id, "succeeded"),
                                                       (turn.run_id, "aborted")]
    assert aborted == [every[1]]
    assert succeeded == [every[0]]
    assert all(set(r) == RUN_KEYS for r in every)
    assert bogus.status_code == 400
    assert bogus.json() == {
        "statusCode": 400, "code": "A_BAD_REQUEST",
        "message": "status: expected one of pending, running, succeeded, failed, aborted"}
