"""The fake provider: an OpenAI-compatible streaming endpoint that attributes every call.

It runs inside the harness (trio + h11) on a loopback port, and the target is configured with
its base URL (``http://HOST:PORT/v1``). Each call is attributed to the request that caused it by
the marker ``[race:<nonce>]`` in the **last** user message (the history a service forwards also
carries the markers of earlier turns). For each call it records arrival, tokens sent, and when
the caller disconnected — the evidence for ``race/no-loser-provider-call``,
``race/winner-provider-call`` and ``race/winner-stoppable``.

Modes, chosen per call by ``mode_for(nonce)``:

- ``finish`` — every token (``token_interval_s`` apart), then ``data: [DONE]``;
- ``hold`` — one token, then wait until the harness releases the nonce or the caller goes;
- ``trickle`` — as ``hold``, but a filler token every ``trickle_interval_s`` while it waits, so
  a service's provider read timeout never fires however long the harness holds the run;
- ``error-mid`` — one token, then an error event, then the stream ends;
- ``slow-first`` — wait ``first_token_delay_s`` (or a release) before the first token;
- ``status-500`` — answer 500 with an OpenAI-style error body;
- ``drop`` — one token, then the connection is cut (no [DONE], no chunked terminator);
- ``stall`` — one token, then nothing, whatever is released, until the caller gives up.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

from raceharness.core.history import ProviderCall

log = logging.getLogger(__name__)

NONCE_RE = re.compile(r"\[race:([A-Za-z0-9_.:-]{1,80})\]")
MODES = ("finish", "hold", "trickle", "error-mid", "slow-first", "status-500", "drop", "stall")
TRICKLE_TOKEN = " ."
_MAX_BODY = 4 * 1024 * 1024


def nonce_of(body: object) -> str | None:
    """The nonce in the last user message of an OpenAI chat request body, if any."""
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                return None
            found = NONCE_RE.search(content)
            return found.group(1) if found else None
    return None


@dataclass
class _Call:
    index: int
    nonce: str | None
    arrival_ns: int
    mode: str
    tokens_sent: int = 0
    first_token_ns: int | None = None
    disconnected_ns: int | None = None
    completed_ns: int | None = None
    complete: bool = True  # False: a contact, the connection closed before a whole request
    gone: trio.Event = field(default_factory=trio.Event)

    def record(self) -> ProviderCall:
        return ProviderCall(index=self.index, nonce=self.nonce, arrival_ns=self.arrival_ns,
                            tokens_sent=self.tokens_sent, first_token_ns=self.first_token_ns,
                            disconnected_ns=self.disconnected_ns,
                            completed_ns=self.completed_ns, mode=self.mode,
                            complete=self.complete)


def _chunk(content: str) -> bytes:
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake-model",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class FakeProvider:
    def __init__(self, *, tokens: tuple[str, ...] = ("Hello", " from", " the", " fake",
                                                      " provider."),
                 token_interval_s: float = 0.0, first_token_delay_s: float = 1.0,
                 trickle_interval_s: float = 0.5, api_key: str | None = None) -> None:
        self.tokens = tokens
        self.token_interval_s = token_interval_s
        self.first_token_delay_s = first_token_delay_s
        self.trickle_interval_s = trickle_interval_s
        self.api_key = api_key
        self.mode_for: Callable[[str | None], str] = lambda nonce: "finish"
        self.calls: list[_Call] = []
        self._released: set[str] = set()
        self._release_all = False
        self._changed = trio.Event()
        self.port: int | None = None
        self.host = "127.0.0.1"

    # -- control ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def release(self, nonce: str) -> None:
        self._released.add(nonce)
        self._wake()

    def release_all(self) -> None:
        self._release_all = True
        self._wake()

    def reset(self) -> None:
        """Forget released nonces and holds (between trials); the ledger is kept."""
        self._released.clear()
        self._release_all = False

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _is_released(self, nonce: str | None) -> bool:
        return self._release_all or (nonce is not None and nonce in self._released)

    def ledger(self, since_index: int = 0) -> list[ProviderCall]:
        return [c.record() for c in self.calls[since_index:]]

    def calls_for(self, nonce: str) -> list[_Call]:
        return [c for c in self.calls if c.nonce == nonce]

    async def wait_called(self, nonce: str) -> None:
        """Until a call carrying ``nonce`` has arrived."""
        await self.wait_for(lambda: bool(self.calls_for(nonce)))

    async def wait_for(self, done: Callable[[], bool]) -> None:
        """Until ``done()`` holds; it is asked again whenever a call arrives or changes."""
        while not done():
            await self._changed.wait()

    async def wait_disconnected(self, nonce: str) -> None:
        """Until every call carrying ``nonce`` has ended (disconnect or completion)."""
        for call in self.calls_for(nonce):
            await call.gone.wait()

    # -- serving ----------------------------------------------------------------------------

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
        self.host = host
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        reading = _Reading(None)
        try:
            while True:
                request, body = await _read_request(conn, stream, reading)
                if request is None:
                    return
                reading.requests += 1
                await self._handle(conn, stream, request, body)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                reading.started_ns, reading.received = None, 0
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        except Exception:  # one connection's failure must never stop the provider
            log.exception("fake provider: a connection failed")
        finally:
            if reading.received and reading.started_ns is not None:
                self._contact(reading.started_ns)
            await trio.aclose_forcefully(stream)

    def _contact(self, started_ns: int) -> None:
        """A request that began and never completed is still contact (conformance §2: a loser
        that reached for the provider and was cut off mid-request). A connection that never
        sent a byte is not: clients pre-open and idle-close connections without calling."""
        now = time.monotonic_ns()
        call = _Call(index=len(self.calls), nonce=None, arrival_ns=started_ns, mode="contact",
                     disconnected_ns=now, complete=False)
        call.gone.set()
        self.calls.append(call)
        self._wake()

    async def _handle(self, conn: h11.Connection, stream: trio.SocketStream,
                      request: h11.Request, raw: bytes) -> None:
        path = request.target.decode("latin-1").split("?")[0]
        if request.method != b"POST" or not path.endswith("/chat/completions"):
            await _send_json(conn, stream, 404, {"error": {"message": "not found"}})
            return
        if self.api_key is not None:
            auth = dict(request.headers).get(b"authorization", b"").decode("latin-1")
            if auth != f"Bearer {self.api_key}":
                await _send_json(conn, stream, 401, {"error": {"message": "bad api key"}})
                return
        try:
            body = json.loads(raw)
        except ValueError:
            await _send_json(conn, stream, 400, {"error": {"message": "body is not JSON"}})
            return
        nonce = nonce_of(body)
        mode = self.mode_for(nonce)
        call = _Call(index=len(self.calls), nonce=nonce, arrival_ns=time.monotonic_ns(),
                     mode=mode)
        self.calls.append(call)
        self._wake()  # wait_called() waiters
        try:
            if mode == "status-500":
                await _send_json(conn, stream, 500, {"error": {"message": "fake provider failure"}})
                call.completed_ns = time.monotonic_ns()
                return
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                ("content-type", "text/event-stream"), ("cache-control", "no-cache")])))
            await self._stream_tokens(conn, stream, call)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if call.completed_ns is None and call.disconnected_ns is None:
                call.disconnected_ns = time.monotonic_ns()
            raise
        finally:
            call.gone.set()

    async def _stream_tokens(self, conn: h11.Connection, stream: trio.SocketStream,
                             call: _Call) -> None:
        async def send(data: bytes) -> None:
            await stream.send_all(conn.send(h11.Data(data=data)))

        if call.mode == "slow-first" and not await self._wait(stream, call,
                                                             self.first_token_delay_s):
            return
        for i, token in enumerate(self.tokens):
            if call.mode == "error-mid" and i == 1:
                await send(b'data: {"error":{"message":"fake provider error mid-stream",'
                           b'"type":"server_error"}}\n\n')
                break
            await send(_chunk(token))
            call.tokens_sent += 1
            if call.first_token_ns is None:
                call.first_token_ns = time.monotonic_ns()
            if call.mode == "drop" and i == 0:
                call.completed_ns = time.monotonic_ns()
                await trio.aclose_forcefully(stream)  # mid-body: the caller sees a broken stream
                return
            if call.mode == "stall" and i == 0:
                await self._wait(stream, call, None, releasable=False)
                return
            if call.mode == "hold" and i == 0:
                if not await self._wait(stream, call, None):
                    return
            elif call.mode == "trickle" and i == 0:
                while not self._is_released(call.nonce):
                    if not await self._wait(stream, call, self.trickle_interval_s):
                        return
                    if not self._is_released(call.nonce):
                        await send(_chunk(TRICKLE_TOKEN))
                        call.tokens_sent += 1
            elif self.token_interval_s > 0:
                if not await self._wait(stream, call, self.token_interval_s, releasable=False):
                    return
        else:
            await send(b"data: [DONE]\n\n")
        await stream.send_all(conn.send(h11.EndOfMessage()))
        call.completed_ns = time.monotonic_ns()

    async def _wait(self, stream: trio.SocketStream, call: _Call, timeout_s: float | None,
                    releasable: bool = True) -> bool:
        """Wait for a release (or ``timeout_s``) while watching for the caller to go.

        Returns False when the caller disconnected (recorded), True to go on.
        """
        gone = False
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                nonlocal gone
                while True:
                    try:
                        data = await stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""  # a reset is a disconnect too
                    if not data:
                        gone = True
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch)
            with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")):
                while not (releasable and self._is_released(call.nonce)):
                    await self._changed.wait()
            nursery.cancel_scope.cancel()
        if gone:
            call.disconnected_ns = time.monotonic_ns()
            return False
        return True


@dataclass
class _Reading:
    """The request being read on one connection: when its first byte came, how many came."""

    started_ns: int | None
    received: int = 0
    requests: int = 0


async def _read_request(conn: h11.Connection, stream: trio.SocketStream, reading: _Reading
                        ) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if data:
                if not reading.received:
                    reading.started_ns = time.monotonic_ns()
                reading.received += len(data)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise h11.RemoteProtocolError("request body too large")
        elif isinstance(event, h11.EndOfMessage):
            reading.received = 0  # whole: from here on it is a call, not a contact
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None, b""


async def _send_json(conn: h11.Connection, stream: trio.SocketStream, status: int,
                     body: object) -> None:
    data = json.dumps(body).encode()
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
        ("content-type", "application/json"), ("content-length", str(len(data)))])))
    await stream.send_all(conn.send(h11.Data(data=data)))
    await stream.send_all(conn.send(h11.EndOfMessage()))
