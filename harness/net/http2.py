"""Firing requests so that they truly arrive together: HTTP/2 single-packet synchronisation.

Most deployments sit behind an HTTP/2 proxy. Over HTTP/2 many requests share one connection,
so the final frame of every request can travel in **one TCP write** — one packet on the wire
when it fits the segment (each final frame is 10 bytes) — and the server reads them in one go:
no per-connection scheduling between them at all.

How a burst goes (:func:`open_h2_burst`, then :meth:`H2Burst.release`):

1. Connect (``TCP_NODELAY``). ``http`` is h2c with prior knowledge (the connection preface is
   sent at once); ``https`` is TLS with ALPN ``h2``, and a server that does not select ``h2`` is
   :class:`Http2Unavailable`. The server's first SETTINGS frame is awaited: an HTTP/1.1-only
   server answers the preface with ``HTTP/1.1 400``, closes, or says nothing, and each of these
   is :class:`Http2Unavailable` within the connect timeout.
2. ``SETTINGS_MAX_CONCURRENT_STREAMS`` is respected: when N exceeds it, the streams are spread
   over several connections (each within the limit), released with one write per connection,
   and :attr:`H2Burst.note` says so.
3. Per request: HEADERS (``:method``, ``:path``, ``:authority``, ``:scheme``, the given headers,
   ``content-length``), then the body except its final byte in DATA frames without
   END_STREAM, within the flow-control windows (one byte of window is kept for the release).
4. Release (``await burst.release()``; or in steps, e.g. ``release([first])`` then
   ``release()``, each racer once): for every stream ``send_data(last byte, end_stream=True)``;
   the frames of one connection are collected into one buffer. Plain TCP: every connection's
   buffer goes out in one tight loop of non-blocking ``send`` calls on the raw sockets, no
   checkpoint in between (a partial send is finished afterwards and counted). TLS: one
   ``send_all`` per connection (the record must be encrypted; a checkpoint each). The release
   instant and each stream's send time are recorded (monotonic ns).

Responses are read by one task per connection (started in the caller's nursery) that feeds
``h2`` and dispatches its events to per-stream results, acknowledging received DATA so the
flow-control windows never stall a long SSE stream. Each :class:`H2Stream` looks like a
:class:`raceharness.net.http1.Racer` to the race program: ``response``, ``answered``, ``finished``,
``sent_ns``, ``endpoint``, ``read_response()``, ``aclose()``. The server's misbehaviour is a
finding in the response (``error``, SSE findings), never an exception.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Sequence

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from raceharness.core.sse import SseParser
from raceharness.net.http1 import (
    MAX_ERROR_BODY,
    Endpoint,
    Response,
    open_stream,
    open_tcp_nodelay,
)

RECEIVE_SIZE = 65536
CLOSE_GRACE_S = 1.0  # bound on flushing a RST_STREAM / GOAWAY when a racer is closed over TLS

#: One request of a burst: method, path (with query), headers, body (at least one byte).
Request = tuple[str, str, list[tuple[str, str]], bytes]

# Connection-specific header fields are forbidden in HTTP/2 (RFC 9113 §8.2.2); host becomes
# :authority, and content-length is set from the body.
_DROPPED_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                              "upgrade", "te", "host", "content-length"})

_SUGGESTION = "use --sync last-byte (HTTP/1.1, one connection per request) instead"


class Http2Unavailable(Exception):
    """The target does not speak HTTP/2 as needed; the message says why and what to use."""

    def __init__(self, why: str) -> None:
        super().__init__(f"HTTP/2 unavailable: {why}; {_SUGGESTION}")
        self.why = why


def _code_name(code: object) -> str:
    try:
        return h2.errors.ErrorCodes(int(code)).name  # type: ignore[call-overload]
    except (ValueError, TypeError):
        return f"error code {code}"


class H2Stream:
    """One request on a shared HTTP/2 connection, duck-type compatible with
    :class:`raceharness.net.http1.Racer` for everything after the release.

    ``answered``: the status is known and, for a 200 event stream, its ``start`` frame was seen
    (or the response ended or failed). ``finished``: the response ended or failed.
    ``aclose()`` resets the stream with ``CANCEL`` — to the server, that request's client went
    away — and closes the connection once none of its streams is open any more.
    """

    def __init__(self, conn: _Connection, stream_id: int, last: bytes) -> None:
        self.endpoint: Endpoint = conn.endpoint
        self.stream_id = stream_id
        self.sent_ns: int | None = None
        self.response = Response(wire=conn.endpoint.wire)
        self.chat_id: str | None = None  # the chat the turn is on, when the caller knows it
        self.answered = trio.Event()
        self.finished = trio.Event()
        self.released = False  # its final frame was staged (or found unsendable)
        self.release_error: str | None = None  # why the final frame could not be sent
        self._conn = conn
        self._last = last
        self._parser: SseParser | None = None
        self._offset = 0
        self._closed = False

    @property
    def done(self) -> bool:
        """Nothing more will happen on this stream: it finished or was closed by us."""
        return self._closed or self.finished.is_set()

    async def read_response(self) -> None:
        """Until this stream's response has ended or failed (the connection's reader does the
        reading); never raises for the target's misbehaviour."""
        await self.finished.wait()

    async def aclose(self) -> None:
        await self._conn.close_stream(self)

    # -- fed by the connection's reader -----------------------------------------------------

    def _on_response(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
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
            self._finish(f"HTTP/2 response without a valid :status ({status[:20]!r})")
            return
        resp.status = int(status)
        resp.headers_ns = time.monotonic_ns()
        resp.headers = fields
        if resp.status == 200 and fields.get("content-type", "").startswith("text/event-stream"):
            self._parser, resp.stream = open_stream(self.endpoint, fields)
            if resp.stream.started:
                self.answered.set()

    def _on_data(self, data: bytes) -> None:
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

    def _finish(self, error: str | None, *, ended: bool = False) -> None:
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


class _Connection:
    """One HTTP/2 connection of a burst: the socket, the ``h2`` state, its streams, its reader.

    Writes: plain TCP goes through ``_out`` and non-blocking sends on the raw socket (so the
    release can write synchronously, and the order of ``h2``'s output is kept); TLS goes
    through ``send_all`` on the SSL stream under a lock, ``h2``'s output taken inside it.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.tls = endpoint.scheme == "https"
        self.h2 = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.sock: socket.socket | None = None
        self.stream: trio.abc.Stream | None = None
        self.streams: dict[int, H2Stream] = {}
        self.max_concurrent_streams: int | None = None
        self.dead: str | None = None
        self.closed = False
        self.preface_sent = False  # TLS (if any) is up and the preface is written
        self.settings_seen = False  # the server's first SETTINGS frame arrived
        self._out = bytearray()
        self._drain_lock = trio.Lock()
        self._tls_lock = trio.Lock()
        self._window = trio.Event()

    # -- opening ----------------------------------------------------------------------------

    async def open(self) -> None:
        """TCP (+ TLS with ALPN h2), the preface, and the server's SETTINGS."""
        ep = self.endpoint
        self.sock, tcp = await open_tcp_nodelay(ep)
        stream: trio.abc.Stream = tcp
        self.stream = stream
        if self.tls:
            if ep.ssl_context is None:
                raise ValueError("an https endpoint needs an SSL context")
            tls = trio.SSLStream(stream, ep.ssl_context, server_hostname=ep.host,
                                 https_compatible=True)
            self.stream = tls
            await tls.do_handshake()
            selected = tls.selected_alpn_protocol()
            if selected != "h2":
                raise Http2Unavailable(
                    f"the TLS server at {ep.host}:{ep.port} did not select h2 by ALPN "
                    f"(selected {selected!r})")
        await self._handshake()

    async def _handshake(self) -> None:
        assert self.stream is not None
        ep = self.endpoint
        where = f"{ep.scheme}://{ep.host_header}"
        self.h2.initiate_connection()
        await self.flush()
        self.preface_sent = True
        head = b""   # the first bytes, to recognise an HTTP/1 answer
        unfed = b""  # bytes held back from h2 until we can tell
        while not self.settings_seen:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, OSError) as exc:
                raise Http2Unavailable(f"{where} broke the connection after the HTTP/2 "
                                       f"preface ({type(exc).__name__})") from None
            if len(head) < 256:
                head += data[:256 - len(head)]
            if head.startswith(b"HTTP/"):
                line = head.split(b"\r\n", 1)[0][:80].decode("latin-1", "replace")
                raise Http2Unavailable(
                    f"{where} answered the HTTP/2 preface with HTTP/1 ({line!r}): it does not "
                    f"speak HTTP/2 with prior knowledge on this port")
            if not data:
                raise Http2Unavailable(
                    f"{where} closed the connection after the HTTP/2 preface without HTTP/2 "
                    f"SETTINGS: it does not speak HTTP/2 on this port")
            unfed += data
            if len(head) < 9:
                continue  # too little to tell an HTTP/1 status line from a frame header
            length, kind = int.from_bytes(head[:3], "big"), head[3]
            if kind != 0x4 or length % 6 or length > 16384:  # RFC 9113 §3.4: SETTINGS first
                raise Http2Unavailable(
                    f"{where} answered the HTTP/2 preface with something that is not HTTP/2 "
                    f"(no SETTINGS frame first; first bytes {head[:16].hex(' ')})")
            try:
                events = self.h2.receive_data(unfed)
            except h2.exceptions.H2Error as exc:
                raise Http2Unavailable(f"{where} answered the HTTP/2 preface with something "
                                       f"that is not HTTP/2 ({exc})") from None
            unfed = b""
            self._dispatch(events)
            if self.dead is not None:
                raise Http2Unavailable(f"{where}: {self.dead}")
            await self.flush()
        limit = self.max_concurrent_streams
        if limit is not None and limit < 1:
            raise Http2Unavailable(f"{where} allows no streams "
                                   f"(SETTINGS_MAX_CONCURRENT_STREAMS={limit})")

    async def open_streams(self, requests: Sequence[Request]) -> list[H2Stream]:
        """HEADERS and every body but its last byte, for each request; returns once every
        prefix is written and the windows leave room for the final frames."""
        pending: list[tuple[H2Stream, memoryview]] = []
        for method, path, headers, body in requests:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream_id, _request_headers(self.endpoint, method, path,
                                                             headers, len(body)))
            stream = H2Stream(self, stream_id, body[-1:])
            self.streams[stream_id] = stream
            pending.append((stream, memoryview(body)[:-1]))
        while True:
            waiting = self._window
            pending = self._push_prefixes(pending)
            await self.flush()
            if self.dead is not None:
                raise OSError(f"the HTTP/2 connection failed while sending requests: "
                              f"{self.dead}")
            if not pending and self._release_fits():
                return list(self.streams.values())
            await waiting.wait()  # a WINDOW_UPDATE (or the connection's end) wakes us

    def _push_prefixes(self, pending: list[tuple[H2Stream, memoryview]]
                       ) -> list[tuple[H2Stream, memoryview]]:
        left: list[tuple[H2Stream, memoryview]] = []
        reserve = sum(1 for s in self.streams.values() if not s.done)
        for stream, rest in pending:
            if stream.done:
                continue  # answered early (or reset): nothing more to send on it
            sid = stream.stream_id
            try:
                while rest:
                    budget = min(self.h2.local_flow_control_window(sid) - 1,
                                 self.h2.outbound_flow_control_window - reserve,
                                 self.h2.max_outbound_frame_size)
                    if budget <= 0:
                        break
                    self.h2.send_data(sid, bytes(rest[:budget]))
                    rest = rest[budget:]
            except h2.exceptions.H2Error:
                continue  # the stream closed under us: its response says how
            if rest:
                left.append((stream, rest))
        return left

    def _release_fits(self) -> bool:
        live = [s for s in self.streams.values() if not s.done]
        try:
            return (self.h2.outbound_flow_control_window >= len(live)
                    and all(self.h2.local_flow_control_window(s.stream_id) >= 1 for s in live))
        except h2.exceptions.H2Error:
            return True  # a stream closed meanwhile: the release will skip it

    # -- writing ----------------------------------------------------------------------------

    def write_nowait(self, data: bytes) -> int:
        """Plain TCP: queue ``data`` behind anything unsent and send what the socket takes now,
        without yielding; returns the number of ``send`` calls made."""
        assert self.sock is not None
        self._out += data
        calls = 0
        while self._out and not self.closed:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                break
            calls += 1
            del self._out[:sent]
        return calls

    async def flush(self) -> None:
        """Write everything ``h2`` has queued (and, plain, anything left unsent)."""
        if self.closed:
            return
        if self.tls:
            assert self.stream is not None
            async with self._tls_lock:
                data = self.h2.data_to_send()
                if data:
                    await self.stream.send_all(data)
            return
        assert self.sock is not None
        self.write_nowait(self.h2.data_to_send())
        if self._out:
            async with self._drain_lock:
                while self._out and not self.closed:
                    await trio.lowlevel.wait_writable(self.sock)
                    self.write_nowait(b"")

    def stage_release(self, only: set[H2Stream]) -> bytes:
        """The final byte with END_STREAM of each stream in ``only``, as frames; returns
        ``h2``'s output (anything it had queued, then the final frames)."""
        for stream in self.streams.values():
            if stream not in only:
                continue
            stream.released = True
            if stream.done or self.dead is not None:
                stream.release_error = "closed before the release"
                continue
            try:
                self.h2.send_data(stream.stream_id, stream._last, end_stream=True)
            except h2.exceptions.H2Error as exc:
                stream.release_error = f"final frame not sendable: {type(exc).__name__}"
        return self.h2.data_to_send()

    async def release_tls(self, only: set[H2Stream]) -> None:
        """TLS: stage and send the final frames with one ``send_all``."""
        assert self.stream is not None
        async with self._tls_lock:
            data = self.stage_release(only)
            await self.stream.send_all(data)

    # -- reading ----------------------------------------------------------------------------

    async def read_loop(self) -> None:
        """Feed ``h2`` until the connection ends; every stream gets its outcome."""
        assert self.stream is not None
        try:
            while self.dead is None and not self.closed:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._fail(f"connection error: {type(exc).__name__}")
                    break
                if not data:
                    self._fail("connection closed before the response ended")
                    break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.H2Error as exc:
                    self._fail(f"HTTP/2 protocol error: {exc}")
                    break
                self._dispatch(events)
                try:
                    await self.flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._fail(f"connection error: {type(exc).__name__}")
                    break
        finally:
            for stream in self.streams.values():
                stream._finish(None)  # cancelled: what was seen stays, like Racer
            if self.dead is not None:
                with trio.CancelScope(shield=True):
                    await self.aclose()

    def _dispatch(self, events: Sequence[h2.events.Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0,
                                                  event.stream_id)
                stream = self.streams.get(event.stream_id)
                if stream is not None and event.data:
                    stream._on_data(event.data)
            elif isinstance(event, h2.events.ResponseReceived):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    stream._on_response(event.headers or [])  # type: ignore[arg-type]
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    stream._finish(None, ended=True)
                self._wake()
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    stream._finish(f"stream reset by the server ({_code_name(event.error_code)})")
                self._wake()
            elif isinstance(event, h2.events.ConnectionTerminated):
                # h2 reads nothing after a GOAWAY (python-hyper/h2#1181), so a stream the
                # server did process but had not ended is over for us too.
                goaway = (f"GOAWAY {_code_name(event.error_code)}, last stream "
                          f"{event.last_stream_id}")
                last = event.last_stream_id or 0
                for stream in self.streams.values():
                    stream._finish(f"the server ended the connection ({goaway}) without ending "
                                   f"this stream" if stream.stream_id <= last else
                                   f"refused by the server's {goaway}: not processed")
                self._fail(f"the server ended the connection ({goaway})")
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_seen = True
                code = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
                if code in self.h2.remote_settings:
                    self.max_concurrent_streams = self.h2.remote_settings[code]
                self._wake()
            elif isinstance(event, h2.events.WindowUpdated):
                self._wake()
            # Pings are answered by h2 itself; informational responses, trailers, priority
            # and unknown frames change nothing we report.

    def _wake(self) -> None:
        self._window.set()
        self._window = trio.Event()

    def _fail(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
        for stream in self.streams.values():
            stream._finish(reason)
        self._wake()

    # -- closing ----------------------------------------------------------------------------

    async def close_stream(self, stream: H2Stream) -> None:
        if stream._closed:
            return
        stream._closed = True
        stream._finish("closed by the client before the response ended")
        if self.closed:
            return
        last = all(s.done for s in self.streams.values())
        if self.dead is None:
            try:
                if self._stream_open(stream.stream_id):
                    self.h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
                if last:
                    self.h2.close_connection()
            except h2.exceptions.H2Error:
                pass
        try:
            if self.dead is None:
                if self.tls:
                    with trio.move_on_after(CLOSE_GRACE_S):
                        await self.flush()
                else:
                    self.write_nowait(self.h2.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            last = True
        finally:
            if last:
                await self.aclose()

    def _stream_open(self, stream_id: int) -> bool:
        try:
            return not self.h2._get_stream_by_id(stream_id).closed
        except h2.exceptions.H2Error:
            return False

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            stream._finish("connection closed by the client")
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
        elif self.sock is not None:
            self.sock.close()


def _request_headers(endpoint: Endpoint, method: str, path: str,
                     headers: Sequence[tuple[str, str]], length: int) -> list[tuple[str, str]]:
    fields = [(":method", method), (":scheme", endpoint.scheme),
              (":authority", endpoint.host_header), (":path", path),
              ("content-length", str(length)), ("user-agent", "raceharness")]
    fields += [(name.lower(), value) for name, value in headers
               if name.lower() not in _DROPPED_HEADERS and name.lower() != "user-agent"]
    return fields


def _stamp(conn: _Connection, only: set[H2Stream], sent_ns: int) -> None:
    for stream in conn.streams.values():
        if stream in only and stream.release_error is None:
            stream.sent_ns = sent_ns


def _plan(n: int, caps: Sequence[int]) -> list[int]:
    """Streams per connection: as even as the capacities allow."""
    sizes = [0] * len(caps)
    left = n
    while left:
        progressed = False
        for i, cap in enumerate(caps):
            if left and sizes[i] < cap:
                sizes[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            raise AssertionError("capacity below n")  # the caller opens enough connections
    return sizes


class H2Burst:
    """N requests over HTTP/2, every one withholding its final byte until :meth:`release`.

    ``racers`` (one :class:`H2Stream` per request, in request order), ``connections``,
    ``max_concurrent_streams`` (the server's limit; ``None`` when it set none), ``note`` (a
    human sentence when the burst had to be split over several connections), and after the
    release ``packets``: the write calls it took (one per connection unless a send was partial;
    summed over the calls of :meth:`release`).
    """

    def __init__(self, conns: list[_Connection], racers: list[H2Stream],
                 max_concurrent_streams: int | None) -> None:
        self._conns = conns
        self.racers = racers
        self.connections = len(conns)
        self.max_concurrent_streams = max_concurrent_streams
        self.packets: int | None = None
        self.note: str | None = None
        if len(conns) > 1:
            self.note = (f"N={len(racers)} exceeds the server's SETTINGS_MAX_CONCURRENT_STREAMS="
                         f"{max_concurrent_streams}: {len(conns)} connections, "
                         f"{len(conns)} packets")

    async def release(self, racers: Sequence[H2Stream] | None = None
                      ) -> tuple[int, list[int | None]]:
        """Send the final frames of ``racers`` (default: every racer not yet released; a racer
        is released once); returns (release instant, send time per racer of the burst —
        ``None`` for one not (yet) released, see its ``release_error``).

        Plain TCP: every connection's buffer in one loop of non-blocking sends, no checkpoint in
        between; then any partial send is finished. TLS: one ``send_all`` per connection.
        """
        only = {r for r in (self.racers if racers is None else racers) if not r.released}
        release_ns = time.monotonic_ns()
        live = [c for c in self._conns if any(s in only for s in c.streams.values())]
        writes = 0
        if live and not live[0].tls:
            staged = [(c, c.stage_release(only)) for c in live]
            for conn, data in staged:
                try:
                    writes += conn.write_nowait(data)
                except OSError as exc:
                    conn._fail(f"release failed: {type(exc).__name__}")
                    continue
                _stamp(conn, only, time.monotonic_ns())
            for conn in live:
                if conn._out and conn.dead is None:  # a partial send: finish it
                    try:
                        await conn.flush()
                    except OSError as exc:
                        conn._fail(f"release failed: {type(exc).__name__}")
                        continue
                    writes += 1
                    _stamp(conn, only, time.monotonic_ns())
        else:
            for conn in live:
                try:
                    await conn.release_tls(only)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    conn._fail(f"release failed: {type(exc).__name__}")
                    continue
                writes += 1
                _stamp(conn, only, time.monotonic_ns())
        self.packets = (self.packets or 0) + writes
        return release_ns, [r.sent_ns for r in self.racers]

    async def aclose(self) -> None:
        """Close every racer (each a client disconnect), then every connection."""
        for racer in self.racers:
            await racer.aclose()
        for conn in self._conns:
            await conn.aclose()


async def open_h2_burst(endpoint: Endpoint, requests: Sequence[Request], *,
                        nursery: trio.Nursery, connect_timeout_s: float) -> H2Burst:
    """Connect, read the server's SETTINGS, open one stream per request and send every
    request but its last body byte; each connection's reader runs in ``nursery``.

    Raises :class:`Http2Unavailable` when the server does not speak HTTP/2 (no ALPN h2, the
    preface answered in HTTP/1, closed, or not answered within ``connect_timeout_s``);
    ``OSError`` when it cannot be reached; ``trio.TooSlowError`` when connecting or sending
    takes longer than ``connect_timeout_s``. For https, ALPN ``["h2"]`` is set on
    ``endpoint.ssl_context``: give the burst an endpoint of its own
    (``Target.endpoint()`` makes a fresh context on each call).
    """
    if not requests:
        raise ValueError("a burst needs at least one request")
    if any(not body for _, _, _, body in requests):
        raise ValueError("every request needs a body to withhold its last byte")
    if endpoint.scheme == "https":
        if endpoint.ssl_context is None:
            raise ValueError("an https endpoint needs an SSL context")
        endpoint.ssl_context.set_alpn_protocols(["h2"])
    n = len(requests)
    deadline = trio.current_time() + connect_timeout_s
    conns: list[_Connection] = []
    try:
        with trio.move_on_at(deadline) as opening:
            await _open_connections(endpoint, 1, conns, nursery)
            caps = [min(c.max_concurrent_streams or n, n) for c in conns]
            while sum(caps) < n:
                await _open_connections(endpoint, math.ceil((n - sum(caps)) / min(caps)),
                                        conns, nursery)
                caps = [min(c.max_concurrent_streams or n, n) for c in conns]
        if opening.cancelled_caught:
            if any(c.preface_sent and not c.settings_seen for c in conns):
                raise Http2Unavailable(
                    f"no HTTP/2 SETTINGS from {endpoint.scheme}://{endpoint.host_header} "
                    f"within {connect_timeout_s:g}s of the connection preface")
            raise trio.TooSlowError(f"connecting took longer than {connect_timeout_s:g}s")
        with trio.fail_at(deadline):
            racers = await _open_streams(conns, _plan(n, caps), requests)
    except BaseException:
        with trio.CancelScope(shield=True):
            for conn in conns:
                await conn.aclose()
        raise
    return H2Burst(conns, racers, conns[0].max_concurrent_streams)


async def _open_streams(conns: list[_Connection], sizes: list[int],
                        requests: Sequence[Request]) -> list[H2Stream]:
    """Each connection's share of the requests, all connections at once; racers in order."""
    batches: list[Sequence[Request]] = []
    start = 0
    for size in sizes:
        batches.append(requests[start:start + size])
        start += size
    opened: list[list[H2Stream]] = [[] for _ in conns]
    errors: list[Exception] = []

    async def send(i: int) -> None:
        try:
            opened[i] = await conns[i].open_streams(batches[i])
        except (OSError, trio.BrokenResourceError, h2.exceptions.H2Error) as exc:
            errors.append(exc)

    async with trio.open_nursery() as senders:
        for i in range(len(conns)):
            senders.start_soon(send, i)
    if errors:
        if isinstance(errors[0], OSError):
            raise errors[0]
        raise OSError(f"sending the requests failed: {type(errors[0]).__name__}: {errors[0]}")
    return [racer for batch in opened for racer in batch]


async def _open_connections(endpoint: Endpoint, count: int, conns: list[_Connection],
                            nursery: trio.Nursery) -> None:
    """Open ``count`` connections concurrently, appending each (readers start in ``nursery``);
    the first failure is raised once all attempts have ended."""
    errors: list[BaseException] = []

    async def one() -> None:
        conn = _Connection(endpoint)
        conns.append(conn)
        try:
            await conn.open()
        except (Http2Unavailable, OSError, trio.BrokenResourceError) as exc:
            errors.append(exc)
            return
        nursery.start_soon(conn.read_loop)

    async with trio.open_nursery() as openers:
        for _ in range(count):
            openers.start_soon(one)
    if errors:
        unavailable = [e for e in errors if isinstance(e, Http2Unavailable)]
        raise unavailable[0] if unavailable else errors[0]
