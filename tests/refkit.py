"""Test kit for the reference server: a respx-routed provider, an in-process uvicorn server
on a pre-bound socket (clients wait in the backlog, no polling for start-up), and a small
HTTP client that parses the SSE stream.

Only the provider is mocked; Postgres is real (see conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import respx
import uvicorn

from raceharness.reference.app import create_app
from raceharness.reference.runtime import Runtime
from raceharness.reference.server import ReferenceServer
from raceharness.reference.settings import Settings

PROVIDER_BASE = "http://provider.test/v1"


# -- the provider ------------------------------------------------------------------------------

# The conflict body of protocol.md §2.3 without its activeRunId (which names a run per test).
CONFLICT = {"statusCode": 409, "message": "An agent run is already in progress for this chat",
            "code": "A_RUN_ALREADY_ACTIVE"}


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: all bound at once, then released. (Picking one at a
    time can give the same port twice: a port released is free again for the next pick.)"""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def seed_chat(dsn: str) -> tuple[UUID, UUID]:
    """A user and a chat of theirs, written straight into the reference's tables."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        user = conn.execute("INSERT INTO ai_users (name) VALUES ('seed') RETURNING id").fetchone()
        assert user is not None
        chat = conn.execute("INSERT INTO ai_chats (creator_id) VALUES (%s) RETURNING id",
                            (user[0],)).fetchone()
        assert chat is not None
    return user[0], chat[0]


def completion_chunk(content: str) -> bytes:
    body = {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass(eq=False)
class ProviderCall:
    body: dict[str, Any]
    first_token_sent: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    tokens_sent: int = 0

    @property
    def last_user_text(self) -> str:
        users = [m["content"] for m in self.body.get("messages", []) if m.get("role") == "user"]
        return users[-1] if users else ""


class _Body(httpx.AsyncByteStream):
    def __init__(self, provider: FakeProvider, call: ProviderCall) -> None:
        self.provider = provider
        self.call = call

    async def __aiter__(self) -> AsyncIterator[bytes]:
        p, call = self.provider, self.call
        for i, token in enumerate(p.tokens):
            if p.mode == "error-mid" and i == 1:
                yield b'data: {"error":{"message":"model overloaded"}}\n\n'
                return
            if p.mode == "drop" and i == 1:
                raise httpx.RemoteProtocolError("peer closed connection")
            yield completion_chunk(token)
            call.tokens_sent += 1
            call.first_token_sent.set()
            if p.mode == "hold" and i == 0:
                await p.release.wait()
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        self.call.disconnected.set()


class FakeProvider:
    """OpenAI-compatible streaming provider behind a respx router.

    Modes: ``finish`` (all tokens, then [DONE]); ``hold`` (one token, then wait for
    ``release``); ``error-mid`` (one token, then an error event); ``status-500``;
    ``drop`` (one token, then the connection breaks).
    """

    def __init__(self, tokens: tuple[str, ...] = ("Hel", "lo", "!"), mode: str = "finish"):
        self.tokens = tokens
        self.mode = mode
        self.release = asyncio.Event()
        self.calls: list[ProviderCall] = []
        self.call_made = asyncio.Condition()
        self.router = respx.Router(assert_all_called=False, base_url=PROVIDER_BASE)
        self.route = self.router.post("/chat/completions").mock(side_effect=self._respond)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.router.async_handler)

    async def _respond(self, request: httpx.Request) -> httpx.Response:
        call = ProviderCall(json.loads(request.content))
        self.calls.append(call)
        if self.mode == "status-500":
            call.disconnected.set()
            return httpx.Response(500, json={"error": {"message": "upstream exploded"}})
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=_Body(self, call))

    def calls_for(self, text: str) -> list[ProviderCall]:
        return [c for c in self.calls if c.last_user_text == text]


# -- the server --------------------------------------------------------------------------------

class _TestServer(ReferenceServer):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningReference:
    url: str
    server: ReferenceServer
    app: Any

    @property
    def runtime(self) -> Runtime:
        return self.app.state.runtime  # type: ignore[no-any-return]


def make_settings(dsn: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        database_url=dsn, provider_base_url=PROVIDER_BASE, provider_api_key="sk-test-secret",
        heartbeat_interval_s=60.0, lease_s=120.0, reaper_interval_s=60.0, stop_wait_s=5.0,
        pool_min_size=2, pool_max_size=20, provider_read_timeout_s=10.0)
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_reference(settings: Settings,
                            provider: FakeProvider | None) -> AsyncIterator[RunningReference]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    app = create_app(settings, provider_transport=None if provider is None else provider.transport)
    server = _TestServer(uvicorn.Config(app, lifespan="on", log_level="warning",
                                        access_log=False, timeout_graceful_shutdown=5))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield RunningReference(url=f"http://127.0.0.1:{port}", server=server, app=app)
    finally:
        server.should_exit = True
        await task
        sock.close()


# -- the client --------------------------------------------------------------------------------

def parse_sse(raw: str) -> list[Any]:
    """Frames of an SSE body: decoded JSON objects and the literal ``"[DONE]"``; pings dropped."""
    frames: list[Any] = []
    for block in raw.split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        frames.append(data if data == "[DONE]" else json.loads(data))
    return frames


def turn_body(text: str = "hello", chat_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [
        {"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}]}
    if chat_id is not None:
        body["chatId"] = chat_id
    return body


@dataclass
class TurnResult:
    status: int
    headers: httpx.Headers
    frames: list[Any]
    body: Any

    @property
    def run_id(self) -> str | None:
        return self.frames[0]["messageMetadata"].get("runId") if self.frames else None

    @property
    def chat_id(self) -> str | None:
        return self.frames[0]["messageMetadata"].get("chatId") if self.frames else None

    @property
    def types(self) -> list[str]:
        return [f if f == "[DONE]" else f["type"] for f in self.frames]


class Api:
    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str) -> None:
        self.client = client
        self.base = base_url + "/api/ai-chat"
        self.token = token

    def _headers(self, token: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {token or self.token}"}

    async def turn(self, text: str = "hello", chat_id: str | None = None,
                   token: str | None = None) -> TurnResult:
        """A whole turn: waits for the end of the stream."""
        async with self.client.stream("POST", self.base + "/stream",
                                      json=turn_body(text, chat_id),
                                      headers=self._headers(token)) as resp:
            raw = (await resp.aread()).decode()
        if resp.status_code == 200:
            return TurnResult(200, resp.headers, parse_sse(raw), None)
        return TurnResult(resp.status_code, resp.headers, [], json.loads(raw))

    @contextlib.asynccontextmanager
    async def open_turn(self, text: str = "hello", chat_id: str | None = None,
                        token: str | None = None) -> AsyncIterator[OpenTurn]:
        """A turn whose stream is read frame by frame (for held runs)."""
        async with self.client.stream("POST", self.base + "/stream",
                                      json=turn_body(text, chat_id),
                                      headers=self._headers(token)) as resp:
            yield OpenTurn(resp)

    async def post(self, path: str, body: Any, token: str | None = None) -> httpx.Response:
        return await self.client.post(self.base + path, json=body, headers=self._headers(token))

    async def stop(self, token: str | None = None, **ids: str) -> httpx.Response:
        return await self.post("/stop", ids, token)

    async def latest(self, chat_id: str, token: str | None = None) -> httpx.Response:
        return await self.post("/run", {"chatId": chat_id}, token)

    async def runs(self, chat_id: str, token: str | None = None, **params: str) -> httpx.Response:
        return await self.client.get(self.base + "/runs", params={"chatId": chat_id, **params},
                                     headers=self._headers(token))


class OpenTurn:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self._buffer = ""
        self._chunks = response.aiter_text()
        self.frames: list[Any] = []

    async def next_frame(self) -> Any:
        while "\n\n" not in self._buffer:
            self._buffer += await self._chunks.__anext__()
        block, self._buffer = self._buffer.split("\n\n", 1)
        if block.startswith(":"):
            return await self.next_frame()
        frame = parse_sse(block + "\n\n")[0]
        self.frames.append(frame)
        return frame

    async def until(self, frame_type: str) -> Any:
        """Read frames up to and including the first of ``frame_type``."""
        while True:
            frame = await self.next_frame()
            if frame != "[DONE]" and frame["type"] == frame_type:
                return frame

    async def rest(self) -> list[Any]:
        """Every remaining frame, to the end of the stream."""
        async for chunk in self._chunks:
            self._buffer += chunk
        tail = parse_sse(self._buffer)
        self._buffer = ""
        self.frames.extend(tail)
        return tail

    @property
    def run_id(self) -> str:
        return self.frames[0]["messageMetadata"]["runId"]  # type: ignore[no-any-return]

    @property
    def chat_id(self) -> str:
        return self.frames[0]["messageMetadata"]["chatId"]  # type: ignore[no-any-return]


# -- forcing the gate path ---------------------------------------------------------------------

async def _scalar(dsn: str, query: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(query)  # type: ignore[arg-type]
        row = await cur.fetchone()
    assert row is not None
    return row[0]


async def lock_waiters(dsn: str) -> int:
    return int(await _scalar(
        dsn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
             "AND datname = current_database()"))


async def wait_for_lock_wait(dsn: str) -> None:
    """Until some backend waits on a lock (a request's INSERT behind an open transaction)."""
    async with asyncio.timeout(10):
        while await lock_waiters(dsn) == 0:  # noqa: ASYNC110 - a database condition
            await asyncio.sleep(0.01)


async def turn_through_gate(api: Api, dsn: str, chat_id: str, text: str) -> tuple[TurnResult, str]:
    """A turn forced onto the gate path: an uncommitted holder row is invisible to the
    pre-check, the request's INSERT waits on the index, and committing the holder makes it
    conflict (23505). Returns the turn's result and the holder's run id."""
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        cur = await holder.execute(
            "INSERT INTO ai_chat_runs (chat_id, status) VALUES (%s, 'running') RETURNING id",
            (chat_id,))
        row = await cur.fetchone()
        assert row is not None
        request = asyncio.create_task(api.turn(text, chat_id))
        try:
            await wait_for_lock_wait(dsn)
            await holder.commit()
            async with asyncio.timeout(10):
                result = await request
        finally:
            request.cancel()
    return result, str(row[0])


def wait_until_ready(url: str, proc: Any, log_path: Any, timeout_s: float = 30.0) -> None:
    """Wait until the server process ``proc`` answers ``GET /healthz`` with 200 (https
    without verification); fail with its log if it exits or takes longer than ``timeout_s``.
    A bounded readiness probe of another process: there is nothing to await."""
    import time

    deadline = time.monotonic() + timeout_s
    with httpx.Client(verify=False, timeout=2) as client:
        while True:
            assert proc.poll() is None, Path(log_path).read_text()
            assert time.monotonic() < deadline, "the reference did not become ready"
            try:
                if client.get(url + "/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # not ready (no answer, or not 200 yet): probe again shortly
