"""A stop always reaches the provider.

Found by the disconnect-storm scenario: a stop that landed while a run's relay awaited the
database (psycopg_pool waits with ``asyncio.wait_for``, which on Python 3.11 can swallow a
cancellation) let the relay go on to call the provider, and the call streamed until the
provider ended it. The driver now cancels until the relay has ended and shuts the provider's
connection down itself; an opening cut short is finished in the background and dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raceharness.reference.errors import ProviderError
from raceharness.reference.provider import ProviderClient
from raceharness.reference.runner import _end_relay, _open_unabandoned
from raceharness.reference.settings import Settings

pytestmark = pytest.mark.anyio


async def test_a_relay_that_swallows_a_cancellation_is_still_ended() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.set()  # as asyncio.wait_for can on 3.11: the relay goes on
        await asyncio.sleep(30)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):  # one cancel alone would leave it sleeping 30 s
        await _end_relay(task, lambda: None)
    assert swallowed.is_set() and task.cancelled()


async def test_ending_the_relay_drops_the_provider_connection_it_holds() -> None:
    class Stream:
        aborted = 0

        def abort(self) -> None:
            self.aborted += 1

    stream = Stream()

    async def relay() -> None:
        await asyncio.sleep(30)

    task = asyncio.create_task(relay())
    await asyncio.sleep(0)
    await _end_relay(task, lambda: stream)  # type: ignore[arg-type, return-value]
    assert stream.aborted >= 1 and task.cancelled()


class HoldingProvider:
    """A real HTTP server on loopback: answers the head and one token, then holds until the
    client's side of the connection closes (recorded)."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.closed = asyncio.Event()
        self.answer = asyncio.Event()  # the head goes out once this is set
        self.answer.set()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        self.requested.set()
        await self.answer.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        chunk = b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        await reader.read()  # b"" once the client has gone
        self.closed.set()
        writer.close()

    async def __aenter__(self) -> ProviderClient:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        settings = Settings.from_env({"DATABASE_URL": "postgresql://unused@127.0.0.1/unused",
                                      "PROVIDER_BASE_URL": f"http://127.0.0.1:{port}/v1"})
        return ProviderClient(settings)

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()


async def test_abort_shuts_the_connection_while_a_read_is_pending() -> None:
    provider = HoldingProvider()
    async with provider as client:
        stream = await client.open([{"role": "user", "content": "hi"}])
        tokens: list[str] = []
        first = asyncio.Event()

        async def read() -> None:
            async for token in stream.tokens():
                tokens.append(token)
                first.set()

        reader = asyncio.create_task(read())
        async with asyncio.timeout(5):
            await first.wait()  # the first token, then the provider holds
            stream.abort()
            await provider.closed.wait()  # the provider saw the disconnect
            with pytest.raises(ProviderError):
                await reader  # the pending read ended, short of [DONE]
        await stream.aclose()
        await client.aclose()
    assert tokens == ["Hel"]


async def test_a_stop_while_the_call_opens_drops_it_once_it_is_open() -> None:
    provider = HoldingProvider()
    provider.answer.clear()
    async with provider as client:
        task = asyncio.create_task(_open_unabandoned(client, [{"role": "user",
                                                               "content": "hi"}]))
        async with asyncio.timeout(5):
            await provider.requested.wait()  # the request is out: the call is opening
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            provider.answer.set()  # the provider answers after the stop
            await provider.closed.wait()  # dropped once open, not left streaming
        await client.aclose()
