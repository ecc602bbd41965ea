"""The fake provider over real loopback HTTP: attribution, the five modes, holds and releases.

Each test runs its own trio loop (``trio.run``) with the provider and an httpx client in it, so
"the provider is parked" is proved with ``trio.testing.wait_all_tasks_blocked`` — every task,
the provider's handler included, is blocked — rather than by sleeping and hoping.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from raceharness.core.history import ProviderCall
from raceharness.shell.fake_provider import FakeProvider, nonce_of

TOKENS = ("Hello", " from", " the", " fake", " provider.")
BOUND_S = 10  # every test body is bounded; none comes near it


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with trio.fail_after(BOUND_S):
            await body()

    trio.run(bounded)


@asynccontextmanager
async def serving(**kwargs: Any) -> AsyncIterator[tuple[FakeProvider, httpx.AsyncClient]]:
    provider = FakeProvider(**kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(provider.serve, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=provider.base_url, timeout=BOUND_S) as client:
            yield provider, client
        nursery.cancel_scope.cancel()


def chat_body(nonce: str | None, *, earlier: tuple[str, ...] = ()) -> dict[str, Any]:
    """An OpenAI chat request; ``earlier`` nonces ride in earlier turns, as forwarded history."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "be brief [race:sys]"}]
    for old in earlier:
        messages += [{"role": "user", "content": f"before [race:{old}]"},
                     {"role": "assistant", "content": f"answer [race:{old}-a]"}]
    text = "hello" if nonce is None else f"hello [race:{nonce}]"
    messages.append({"role": "user", "content": text})
    return {"model": "fake-model", "stream": True, "messages": messages}


class Events:
    """The ``data:`` payloads of an SSE response, read one at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self) -> str | None:
        async for line in self._lines:
            if line.startswith("data: "):
                return line[len("data: "):]
        return None

    async def rest(self) -> list[str]:
        out = []
        while (data := await self.next()) is not None:
            out.append(data)
        return out


def content(data: str) -> str:
    chunk = json.loads(data)
    assert chunk["object"] == "chat.completion.chunk"
    return str(chunk["choices"][0]["delta"]["content"])


def decoded(events: list[str]) -> list[str]:
    """The token texts of a finished stream, then its closing ``[DONE]``."""
    return [content(e) for e in events[:-1]] + events[-1:]


def timeless(call: ProviderCall) -> dict[str, Any]:
    """A ledger entry with each ``*_ns`` time replaced by whether it is set."""
    return {k: (v is not None if k.endswith("_ns") else v)
            for k, v in dataclasses.asdict(call).items()}


def entry(nonce: str | None, mode: str, tokens_sent: int, *, first_token: bool,
          disconnected: bool = False, completed: bool = False, index: int = 0) -> dict[str, Any]:
    return {"index": index, "nonce": nonce, "arrival_ns": True, "tokens_sent": tokens_sent,
            "first_token_ns": first_token, "disconnected_ns": disconnected,
            "completed_ns": completed, "mode": mode, "complete": True}


def modes(**by_nonce: str) -> Callable[[str | None], str]:
    return lambda nonce: by_nonce.get(nonce or "", "finish")


async def wait_ended(provider: FakeProvider, *nonces: str) -> None:
    """Until the provider's handler for each nonce has ended (the ledger is then final)."""
    for nonce in nonces:
        await provider.wait_disconnected(nonce)


# -- attribution (pure) --------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "expected"), [
    (chat_body("new", earlier=("old1", "old2")), "new"),
    (chat_body(None, earlier=("old",)), None),
    ({"messages": [{"role": "user", "content": "[race:old]"},
                   {"role": "user", "content": [{"type": "text", "text": "look"},
                                                {"type": "image_url", "image_url": {}},
                                                {"type": "text", "text": "at [race:parts]"}]}]},
     "parts"),
    ({"messages": [{"role": "user", "content": "q [race:u1]"},
                   {"role": "assistant", "content": "a [race:a1]"}]}, "u1"),
    ({"messages": [{"role": "system", "content": "[race:sys]"}]}, None),
    ({"messages": []}, None),
    ({"model": "m"}, None),
    ({"messages": "not a list"}, None),
    ({"messages": [{"role": "user", "content": None}]}, None),
    (["messages"], None),
    ("[race:str]", None),
    (None, None),
], ids=["last-user-wins", "last-user-unmarked", "content-parts", "trailing-assistant",
        "system-only", "no-messages", "messages-missing", "messages-not-list", "content-null",
        "list-body", "str-body", "none-body"])
def test_nonce_of_reads_the_last_user_message_only(body: object, expected: str | None) -> None:
    assert nonce_of(body) == expected


# -- modes ---------------------------------------------------------------------------------------

def test_finish_streams_every_token_then_done() -> None:
    async def body() -> None:
        async with serving() as (provider, client):
            async with client.stream("POST", "/chat/completions",
                                     json=chat_body("n1", earlier=("old",))) as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                events = await Events(response).rest()
            await wait_ended(provider, "n1")
            assert decoded(events) == [*TOKENS, "[DONE]"]
            [call] = provider.ledger()
            assert timeless(call) == entry("n1", "finish", len(TOKENS), first_token=True,
                                           completed=True)
            assert call.arrival_ns <= call.first_token_ns <= call.completed_ns  # type: ignore[operator]

    run(body)


def test_hold_sends_one_token_then_nothing_until_released() -> None:
    async def body() -> None:
        async with serving() as (provider, client):
            provider.mode_for = modes(h="hold")
            async with client.stream("POST", "/chat/completions", json=chat_body("h")) as response:
                events = Events(response)
                assert content(await events.next() or "") == TOKENS[0]
                await trio.testing.wait_all_tasks_blocked()  # the provider is parked, not slow
                assert [timeless(c) for c in provider.ledger()] == [
                    entry("h", "hold", 1, first_token=True)]
                provider.release("h")
                rest = await events.rest()
            await wait_ended(provider, "h")
            assert decoded(rest) == [*TOKENS[1:], "[DONE]"]
            assert [timeless(c) for c in provider.ledger()] == [
                entry("h", "hold", len(TOKENS), first_token=True, completed=True)]

    run(body)


def test_trickle_keeps_the_held_stream_alive_until_released() -> None:
    """A held run must outlive a service's provider read timeout: while it waits, trickle
    sends a filler token every trickle_interval_s; the release sends the rest and [DONE]."""
    async def body() -> None:
        async with serving(trickle_interval_s=0.01) as (provider, client):
            provider.mode_for = modes(t="trickle")
            async with client.stream("POST", "/chat/completions", json=chat_body("t")) as response:
                events = Events(response)
                assert content(await events.next() or "") == TOKENS[0]
                fillers = [content(await events.next() or "") for _ in range(3)]
                assert fillers == [" ."] * 3
                provider.release("t")
                rest = await events.rest()
            await wait_ended(provider, "t")
            assert decoded(rest)[-len(TOKENS):] == [*TOKENS[1:], "[DONE]"]
            assert set(decoded(rest)[:-len(TOKENS)]) <= {" ."}
            [call] = provider.ledger()
            assert call.mode == "trickle" and call.completed_ns is not None
            assert call.tokens_sent >= len(TOKENS) + 3

    run(body)


def test_hold_records_the_caller_disconnecting() -> None:
    async def body() -> None:
        async with serving() as (provider, client):
            provider.mode_for = modes(h="hold")
            async with client.stream("POST", "/chat/completions", json=chat_body("h")) as response:
                assert content(await Events(response).next() or "") == TOKENS[0]
                await response.aclose()  # the caller goes away mid-hold
            with trio.fail_after(5):
                await provider.wait_disconnected("h")
            assert [timeless(c) for c in provider.ledger()] == [
                entry("h", "hold", 1, first_token=True, disconnected=True)]

    run(body)


def test_a_connection_reset_mid_hold_is_a_disconnect_and_the_provider_keeps_serving() -> None:
    """A caller that resets (RST) instead of closing must not take the provider down."""
    import socket
    import struct

    async def body() -> None:
        async with serving() as (provider, client):
            provider.mode_for = modes(h="hold")
            raw = json.dumps(chat_body("h")).encode()
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", provider.port))
            await sock.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                            b"content-type: application/json\r\n"
                            b"content-length: %d\r\n\r\n" % len(raw) + raw)
            received = b""
            while b"data: " not in received:  # the held first token
                received += await sock.recv(65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # linger 0: the peer sees a reset, not an orderly close
            with trio.fail_after(5):
                await provider.wait_disconnected("h")
            response = await client.post("/chat/completions", json=chat_body("after"))
            assert response.status_code == 200
            assert [timeless(c)["nonce"] for c in provider.ledger()] == ["h", "after"]
            assert provider.ledger()[0].disconnected_ns is not None

    run(body)


def test_release_all_releases_every_hold_and_reset_forgets_releases() -> None:
    async def held(client: httpx.AsyncClient, stack: AsyncExitStack, nonce: str) -> Events:
        response = await stack.enter_async_context(
            client.stream("POST", "/chat/completions", json=chat_body(nonce)))
        events = Events(response)
        assert content(await events.next() or "") == TOKENS[0]
        return events

    async def body() -> None:
        async with serving() as (provider, client):
            provider.mode_for = lambda nonce: "hold"
            async with AsyncExitStack() as stack:
                a, b = await held(client, stack, "a"), await held(client, stack, "b")
                await trio.testing.wait_all_tasks_blocked()
                assert [c.tokens_sent for c in provider.ledger()] == [1, 1]
                provider.release_all()
                assert [decoded(await a.rest()), decoded(await b.rest())] == [
                    [*TOKENS[1:], "[DONE]"]] * 2
            await wait_ended(provider, "a", "b")

            provider.reset()
            provider.release("c")
            provider.reset()
            async with AsyncExitStack() as stack:  # after reset, "c" and a new "d" hold again
                c, d = await held(client, stack, "c"), await held(client, stack, "d")
                await trio.testing.wait_all_tasks_blocked()
                assert [timeless(x) for x in provider.ledger(since_index=2)] == [
                    entry("c", "hold", 1, first_token=True, index=2),
                    entry("d", "hold", 1, first_token=True, index=3)]
                provider.release("c")
                provider.release("d")
                assert [decoded(await c.rest()), decoded(await d.rest())] == [
                    [*TOKENS[1:], "[DONE]"]] * 2

    run(body)


def test_error_mid_sends_one_token_then_an_error_event_and_ends() -> None:
    async def body() -> None:
        async with serving() as (provider, client):
            provider.mode_for = modes(e="error-mid")
            async with client.stream("POST", "/chat/completions", json=chat_body("e")) as response:
                assert response.status_code == 200
                events = await Events(response).rest()
            await wait_ended(provider, "e")
            assert content(events[0]) == TOKENS[0]
            assert [json.loads(e) for e in events[1:]] == [
                {"error": {"message": "fake provider error mid-stream", "type": "server_error"}}]
            assert [timeless(c) for c in provider.ledger()] == [
                entry("e", "error-mid", 1, first_token=True, completed=True)]

    run(body)


def test_status_500_answers_an_openai_style_error() -> None:
    async def body() -> None:
        async with serving() as (provider, client):
            provider.mode_for = modes(f="status-500")
            response = await client.post("/chat/completions", json=chat_body("f"))
            await wait_ended(provider, "f")
            assert (response.status_code, response.json()) == (
                500, {"error": {"message": "fake provider failure"}})
            assert [timeless(c) for c in provider.ledger()] == [
                entry("f", "status-500", 0, first_token=False, completed=True)]

    run(body)


def test_slow_first_sends_nothing_until_released() -> None:
    async def body() -> None:
        async with serving(first_token_delay_s=BOUND_S * 10) as (provider, client):
            provider.mode_for = modes(s="slow-first")
            async with client.stream("POST", "/chat/completions", json=chat_body("s")) as response:
                assert response.status_code == 200
                await trio.testing.wait_all_tasks_blocked()
                assert [timeless(c) for c in provider.ledger()] == [
                    entry("s", "slow-first", 0, first_token=False)]
                provider.release("s")
                events = await Events(response).rest()
            await wait_ended(provider, "s")
            assert decoded(events) == [*TOKENS, "[DONE]"]

    run(body)


def test_slow_first_waits_the_first_token_delay_without_a_release() -> None:
    delay_s = 0.2

    async def body() -> None:
        async with serving(first_token_delay_s=delay_s) as (provider, client):
            provider.mode_for = modes(s="slow-first")
            async with client.stream("POST", "/chat/completions", json=chat_body("s")) as response:
                events = await Events(response).rest()
            await wait_ended(provider, "s")
            assert events[-1] == "[DONE]"
            [call] = provider.ledger()
            assert timeless(call) == entry("s", "slow-first", len(TOKENS), first_token=True,
                                           completed=True)
            assert call.first_token_ns - call.arrival_ns >= delay_s * 1e9  # type: ignore[operator]

    run(body)


def test_concurrent_calls_are_each_attributed_to_their_own_nonce() -> None:
    nonces = [f"c{i:02d}" for i in range(50)]
    answers: dict[str, list[str]] = {}

    async def call(client: httpx.AsyncClient, nonce: str) -> None:
        body = chat_body(nonce, earlier=("shared-old", f"{nonce}-old"))
        async with client.stream("POST", "/chat/completions", json=body) as response:
            answers[nonce] = await Events(response).rest()

    async def body() -> None:
        async with serving() as (provider, client):
            async with trio.open_nursery() as nursery:
                for nonce in nonces:
                    nursery.start_soon(call, client, nonce)
            await wait_ended(provider, *nonces)
            ledger = provider.ledger()
            assert sorted(c.nonce or "" for c in ledger) == nonces
            assert {c.nonce: c.tokens_sent for c in ledger} == dict.fromkeys(nonces, len(TOKENS))
            assert {n: decoded(a) for n, a in answers.items()} == dict.fromkeys(
                nonces, [*TOKENS, "[DONE]"])

    run(body)


# -- bad requests are answered, not attributed ---------------------------------------------------

def test_unknown_path_is_404_and_unrecorded() -> None:
    async def body() -> None:
        async with serving() as (provider, client):
            get = await client.get("/chat/completions")
            other = await client.post("/embeddings", json=chat_body("x"))
            assert [(r.status_code, r.json()) for r in (get, other)] == [
                (404, {"error": {"message": "not found"}})] * 2
            assert provider.ledger() == []

    run(body)


def test_non_json_body_is_400_and_unrecorded() -> None:
    async def body() -> None:
        async with serving() as (provider, client):
            response = await client.post("/chat/completions", content=b"{not json",
                                         headers={"content-type": "application/json"})
            assert (response.status_code, response.json()) == (
                400, {"error": {"message": "body is not JSON"}})
            assert provider.ledger() == []

    run(body)


def test_api_key_is_enforced_when_set() -> None:
    async def body() -> None:
        async with serving(api_key="sk-right") as (provider, client):
            missing = await client.post("/chat/completions", json=chat_body("k0"))
            wrong = await client.post("/chat/completions", json=chat_body("k1"),
                                      headers={"authorization": "Bearer sk-wrong"})
            right = await client.post("/chat/completions", json=chat_body("k2"),
                                      headers={"authorization": "Bearer sk-right"})
            await wait_ended(provider, "k2")
            assert [r.status_code for r in (missing, wrong, right)] == [401, 401, 200]
            assert wrong.json() == {"error": {"message": "bad api key"}}
            assert [c.nonce for c in provider.ledger()] == ["k2"]

    run(body)


def test_drop_cuts_the_connection_after_one_token() -> None:
    async def body() -> None:
        async with serving() as (provider, client):
            provider.mode_for = modes(d="drop")
            async with client.stream("POST", "/chat/completions", json=chat_body("d")) as response:
                assert response.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):
                    async for _ in response.aiter_lines():
                        pass
            assert [c.tokens_sent for c in provider.ledger()] == [1]

    run(body)


def test_stall_ignores_releases_and_ends_only_when_the_caller_goes() -> None:
    async def body() -> None:
        async with serving() as (provider, client):
            provider.mode_for = modes(s="stall")
            async with client.stream("POST", "/chat/completions", json=chat_body("s")) as response:
                assert content(await Events(response).next() or "") == TOKENS[0]
                provider.release_all()
                await trio.testing.wait_all_tasks_blocked()
                assert provider.ledger()[0].completed_ns is None  # still stalled
                await response.aclose()
            with trio.fail_after(5):
                await provider.wait_disconnected("s")
            assert provider.ledger()[0].disconnected_ns is not None

    run(body)


# -- contacts: a request cut off before it was whole ------------------------------------------

async def _raw(provider: FakeProvider, data: bytes) -> None:
    """Connect, send ``data`` (possibly nothing), close; then wait until the provider has seen
    the connection end (every task blocked: its handler has returned)."""
    stream = await trio.open_tcp_stream("127.0.0.1", provider.port or 0)
    if data:
        await stream.send_all(data)
    await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()


def test_a_request_cut_off_midway_is_recorded_as_a_contact() -> None:
    async def body() -> None:
        async with serving() as (provider, _):
            whole = json.dumps(chat_body("n1")).encode()
            head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                    b"content-type: application/json\r\ncontent-length: "
                    + str(len(whole)).encode() + b"\r\n\r\n")
            await _raw(provider, head + whole[: len(whole) // 2])
            [contact] = provider.ledger()
            assert contact.complete is False and contact.nonce is None
            assert contact.mode == "contact"
            assert contact.disconnected_ns is not None
            assert contact.disconnected_ns >= contact.arrival_ns
            assert contact.tokens_sent == 0

    run(body)


def test_a_connection_that_sends_nothing_or_ends_after_whole_requests_is_no_contact() -> None:
    """A pre-opened connection closed unused, and a keep-alive connection closed after its
    requests, are not contacts: only a request that began and never completed is."""
    async def body() -> None:
        async with serving() as (provider, client):
            await _raw(provider, b"")
            resp = await client.post("/chat/completions", json=chat_body("n2"))
            assert resp.status_code == 200
            await client.aclose()  # the keep-alive connection ends after a whole request
            await trio.testing.wait_all_tasks_blocked()
            ledger = provider.ledger()
            assert [(c.nonce, c.complete) for c in ledger] == [("n2", True)]

    run(body)
