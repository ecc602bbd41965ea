"""The ASGI response that relays a run's frames to one client, with heartbeat and disconnect.

The response never owns the run: when the client goes, the run either keeps going unread
(``AUTONOMOUS_RUNS=true``) or is stopped as ``/stop`` would (``false``).
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from raceharness.reference import frames
from raceharness.reference.faults import Fault
from raceharness.reference.registry import Registry
from raceharness.reference.runner import LiveRun
from raceharness.reference.settings import Settings


class RunStreamResponse(Response):
    def __init__(self, run: LiveRun, registry: Registry, settings: Settings) -> None:
        super().__init__(status_code=200)
        self.run = run
        self.registry = registry
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = list(frames.STREAM_HEADERS)
        if self.run.run_id is not None:
            headers.append((b"x-run-id", str(self.run.run_id).encode()))
        disconnected = asyncio.create_task(_wait_disconnect(receive))
        getter: asyncio.Task[bytes | None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while True:
                if getter is None:
                    getter = asyncio.create_task(self.run.queue.get())
                await asyncio.wait({getter, disconnected},
                                   timeout=self.settings.sse_ping_interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    data = getter.result()
                    getter = None
                    if data is None:
                        break
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                elif disconnected.done():
                    self._client_gone()
                    return
                else:
                    await send({"type": "http.response.body", "body": frames.PING,
                                "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self._client_gone()
        except asyncio.CancelledError:
            self._client_gone()
            raise
        finally:
            disconnected.cancel()
            if getter is not None:
                getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await disconnected

    def _client_gone(self) -> None:
        run = self.run
        run.detach()
        if run.done.is_set():
            return
        if self.settings.autonomous_runs:
            return
        if Fault.IGNORE_DISCONNECT in self.settings.faults:
            return  # FAULT: ignore-disconnect — the run goes on with nobody reading.
        run.request_stop("client disconnected")


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
