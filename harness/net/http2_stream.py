"""One request of an HTTP/2 burst: its header fields, and its response as its connection's
reader feeds it.

An :class:`H2Stream` is what the race program holds for a request sent over HTTP/2
(:mod:`raceharness.net.http2`): it satisfies :class:`raceharness.net.race_request.RaceRequest`,
as an HTTP/1.1 :class:`raceharness.net.http1.Racer` does. It does no I/O of its own: the
connection (:mod:`raceharness.net.http2_connection`) feeds it the response's headers and DATA
and tells it how the stream ended, and closes it on its behalf. The server's misbehaviour is a
finding in the response (``error``, SSE findings), never an exception.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from raceharness.core.sse import SseParser
from raceharness.net.http1 import MAX_ERROR_BODY, Endpoint, Response, open_stream

#: One request of a burst: method, path (with query), headers, body (at least one byte).
Request = tuple[str, str, list[tuple[str, str]], bytes]

# Connection-specific header fields are forbidden in HTTP/2 (RFC 9113 §8.2.2); host becomes
# :authority, and content-length is set from the body.
_DROPPED_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                              "upgrade", "te", "host", "content-length"})


class H2Stream:
    """One request on a shared HTTP/2 connection: a
    :class:`~raceharness.net.race_request.RaceRequest`, as an HTTP/1.1 racer is.

    ``answered``: the status is known and, for a 200 event stream, its ``start`` frame was seen
    (or the response ended or failed). ``finished``: the response ended or failed.
    ``aclose()`` has the connection reset the stream with ``CANCEL`` — to the server, that
    request's client went away — and close itself once none of its streams is open any more.
    """

    def __init__(self, endpoint: Endpoint, stream_id: int, last: bytes,
                 close: Callable[[H2Stream], Awaitable[None]]) -> None:
        self.endpoint = endpoint
        self.stream_id = stream_id
        self.sent_ns: int | None = None
        self.response = Response(wire=endpoint.wire)
        self.chat_id: str | None = None  # the chat the turn is on, when the caller knows it
        self.answered = trio.Event()
        self.finished = trio.Event()
        self.released = False  # its final frame was staged (or found unsendable)
        self.release_error: str | None = None  # why the final frame could not be sent
        self.last_byte = last  # withheld until the release
        self.closed = False  # closed by us (the connection resets it)
        self._close = close
        self._parser: SseParser | None = None
        self._offset = 0

    @property
    def done(self) -> bool:
        """Nothing more will happen on this stream: it finished or was closed by us."""
        return self.closed or self.finished.is_set()

    async def read_response(self) -> None:
        """Until this stream's response has ended or failed (the connection's reader does the
        reading); never raises for the target's misbehaviour."""
        await self.finished.wait()

    async def aclose(self) -> None:
        await self._close(self)

    # -- fed by the connection's reader (net/http2_connection.py) ---------------------------

    def on_response(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        resp = self.response
        if resp.status is not None:
            return
        status = b""
        fields: dict[str, str] = {}
        for name, value in headers:
            if name == b":status":
                status = value
            elif not name.startswith(b":"):
                fields[name.decode("latin-1").lower()] = value.decode("latin-1")
        if not status.isdigit():
            self.finish(f"HTTP/2 response without a valid :status ({status[:20]!r})")
            return
        resp.status = int(status)
        resp.headers_ns = time.monotonic_ns()
        resp.headers = fields
        if resp.status == 200 and fields.get("content-type", "").startswith("text/event-stream"):
            self._parser, resp.stream = open_stream(self.endpoint, fields)
            if resp.stream.started:
                self.answered.set()

    def on_data(self, data: bytes) -> None:
        resp = self.response
        if self.finished.is_set() or resp.status is None:
            return
        if self._parser is not None and resp.stream is not None:
            for frame in self._parser.feed(data):
                if resp.first_frame_ns is None:
                    resp.first_frame_ns = time.monotonic_ns()
                resp.stream.on_frame(frame, self._offset)
                if resp.stream.started:
                    self.answered.set()
            self._offset += len(data)
            resp.comments = self._parser.comments
        elif len(resp.body) < MAX_ERROR_BODY:
            resp.body += data[:MAX_ERROR_BODY - len(resp.body)]

    def finish(self, error: str | None, *, ended: bool = False) -> None:
        """The response ended (``ended``), failed (``error``), or reading stopped (neither)."""
        if self.finished.is_set():
            return
        resp = self.response
        if ended:
            resp.end_ns = time.monotonic_ns()
        elif error is not None and resp.error is None:
            resp.error = error
        if self._parser is not None and resp.stream is not None:
            for frame in self._parser.close():
                resp.stream.on_frame(frame, self._offset)
            resp.stream.findings.extend(self._parser.findings)
            resp.stream.close()
            self._parser = None
        self.answered.set()
        self.finished.set()


def request_headers(endpoint: Endpoint, method: str, path: str,
                    headers: Sequence[tuple[str, str]], length: int) -> list[tuple[str, str]]:
    """A request's HEADERS fields: the pseudo-headers first, then the given fields an HTTP/2
    request may carry."""
    fields = [(":method", method), (":scheme", endpoint.scheme),
              (":authority", endpoint.host_header), (":path", path),
              ("content-length", str(length)), ("user-agent", "raceharness")]
    fields += [(name.lower(), value) for name, value in headers
               if name.lower() not in _DROPPED_HEADERS and name.lower() != "user-agent"]
    return fields
