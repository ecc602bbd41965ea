"""Last-byte synchronisation (``harness/net/http1.py``) against a bare TCP server on trio: the bytes
a server receives before and after the release, whatever way the prefix was split."""

from __future__ import annotations

import functools
import socket
from typing import Any

import trio

from raceharness.net.http1 import QUICKACK_SEGMENTS, Endpoint, Racer, release_last_bytes


class _Server:
    """Accepts connections and keeps every byte each one sends."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.changed = trio.Condition()

    async def handle(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        self.received.append(buf)
        async for chunk in stream:
            buf.extend(chunk)
            async with self.changed:
                self.changed.notify_all()

    async def until(self, k: int, length: int) -> bytes:
        async with self.changed:
            while len(self.received) <= k or len(self.received[k]) < length:
                await self.changed.wait()
        return bytes(self.received[k])


def _run(test: Any) -> None:
    async def main() -> None:
        server = _Server()
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            with trio.fail_after(10):
                await test(server, Endpoint("http", "127.0.0.1", port))
            nursery.cancel_scope.cancel()
    trio.run(main)


def _racer(endpoint: Endpoint) -> Racer:
    return Racer(endpoint, "POST", "/api/ai-chat/stream", [("content-type", "application/json")],
                 b'{"chatId": null, "messages": []}')


def test_the_server_has_all_but_the_last_byte_before_the_release_and_all_after() -> None:
    async def test(server: _Server, endpoint: Endpoint) -> None:
        racers = [_racer(endpoint) for _ in range(3)]
        for r in racers:
            await r.connect()
            await r.send_prefix()
        assert len(racers[0].data) > QUICKACK_SEGMENTS + 1  # the segmented path is taken
        for k, r in enumerate(racers):
            assert await server.until(k, len(r.data) - 1) == r.data[:-1]
        _, sent = await release_last_bytes(racers)
        assert len(sent) == 3 and sent == sorted(sent)
        for k, r in enumerate(racers):
            assert await server.until(k, len(r.data)) == r.data
        for r in racers:
            await r.aclose()
    _run(test)


class _FullBuffer:
    """A socket whose send buffer fills after ``room`` single-byte sends."""

    def __init__(self, sock: socket.socket, room: int) -> None:
        self.sock, self.room = sock, room

    def send(self, data: bytes) -> int:
        if self.room == 0:
            raise BlockingIOError
        self.room -= 1
        return self.sock.send(data)


def test_a_full_send_buffer_sends_the_rest_of_the_prefix_in_one_go() -> None:
    async def test(server: _Server, endpoint: Endpoint) -> None:
        racer = _racer(endpoint)
        await racer.connect()
        assert racer.sock is not None
        raw = racer.sock
        racer.sock = _FullBuffer(raw, room=3)  # type: ignore[assignment]
        await racer.send_prefix()
        assert await server.until(0, len(racer.data) - 1) == racer.data[:-1]
        racer.sock = raw
        await release_last_bytes([racer])
        assert await server.until(0, len(racer.data)) == racer.data
        await racer.aclose()
    _run(test)
