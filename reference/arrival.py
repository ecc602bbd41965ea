"""Arrival timestamps: when each request's last body byte reached the application.

A pure ASGI middleware records ``time.monotonic_ns()`` as the final ``http.request`` message
(``more_body`` false) is received — for a body-less request, when the request starts — and
adds it to the response head as ``x-arrival-ns: <ns>`` and
``server-timing: arrival;desc="<ns>", app;dur=<ms from arrival to the response head>``.
On Linux ``CLOCK_MONOTONIC`` is one clock for every process on the host, so a client on the
same machine (the race harness) can compare these with its own send times and measure the
*server-observed* arrival spread of a burst, 409s included. The timestamp says nothing about
the request's content and costs one clock read per request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ArrivalTimestamps:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrival: list[int] = []
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            arrival.append(time.monotonic_ns())

        async def timed_receive() -> Message:
            message = await receive()
            if (not arrival and message.get("type") == "http.request"
                    and not message.get("more_body", False)):
                arrival.append(time.monotonic_ns())
            return message

        async def stamped_send(message: Message) -> None:
            if message.get("type") == "http.response.start":
                now = time.monotonic_ns()
                start = arrival[0] if arrival else now
                ns = str(start).encode()
                dur = f"{(now - start) / 1e6:.3f}".encode()
                message["headers"] = [
                    *message.get("headers", ()), (b"x-arrival-ns", ns),
                    (b"server-timing", b'arrival;desc="' + ns + b'", app;dur=' + dur)]
            await send(message)

        await self.app(scope, timed_receive, stamped_send)
