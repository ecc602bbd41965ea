"""The HTTP/2 connections of a burst: the socket, the ``h2`` state, the streams' prefixes,
the writes and the reader.

One :class:`H2Connection` per connection of an :class:`~raceharness.net.http2.H2Burst` (which
decides how many and releases them). Opening is TCP (``TCP_NODELAY``), TLS with ALPN ``h2`` for
https, the connection preface and the server's first SETTINGS, each failure to speak HTTP/2 an
:class:`Http2Unavailable` that says why. Then per request HEADERS and the body but its final
byte within the flow-control windows (:meth:`H2Connection.open_streams`); the final frames are
staged by :meth:`H2Connection.stage_release` for the burst to send. One reader task per
connection feeds ``h2`` and dispatches its events to the :class:`H2Stream` results,
acknowledging received DATA so that the windows never stall a long SSE stream.

About 400 lines, on purpose: it is one class whose opening, writes, reader and closing share
the ``h2`` state and the socket; split, each part would reach into the others' state.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from raceharness.net.http1 import Endpoint, open_tcp_nodelay
from raceharness.net.http2_stream import H2Stream, Request, request_headers

RECEIVE_SIZE = 65536
CLOSE_GRACE_S = 1.0  # bound on flushing a RST_STREAM / GOAWAY when a racer is closed over TLS

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


class H2Connection:
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
            self.h2.send_headers(stream_id, request_headers(self.endpoint, method, path,
                                                            headers, len(body)))
            stream = H2Stream(self.endpoint, stream_id, body[-1:], self.close_stream)
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

    @property
    def unsent(self) -> bool:
        """Plain TCP: bytes are queued that the socket did not take yet (a partial send)."""
        return bool(self._out)

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
                self.h2.send_data(stream.stream_id, stream.last_byte, end_stream=True)
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
                    self.fail(f"connection error: {type(exc).__name__}")
                    break
                if not data:
                    self.fail("connection closed before the response ended")
                    break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.H2Error as exc:
                    self.fail(f"HTTP/2 protocol error: {exc}")
                    break
                self._dispatch(events)
                try:
                    await self.flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.fail(f"connection error: {type(exc).__name__}")
                    break
        finally:
            for stream in self.streams.values():
                stream.finish(None)  # cancelled: what was seen stays, like Racer
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
                    stream.on_data(event.data)
            elif isinstance(event, h2.events.ResponseReceived):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.on_response(event.headers or [])  # type: ignore[arg-type]
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.finish(None, ended=True)
                self._wake()
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.finish(f"stream reset by the server ({_code_name(event.error_code)})")
                self._wake()
            elif isinstance(event, h2.events.ConnectionTerminated):
                # h2 reads nothing after a GOAWAY (python-hyper/h2#1181), so a stream the
                # server did process but had not ended is over for us too.
                goaway = (f"GOAWAY {_code_name(event.error_code)}, last stream "
                          f"{event.last_stream_id}")
                last = event.last_stream_id or 0
                for stream in self.streams.values():
                    stream.finish(f"the server ended the connection ({goaway}) without ending "
                                   f"this stream" if stream.stream_id <= last else
                                   f"refused by the server's {goaway}: not processed")
                self.fail(f"the server ended the connection ({goaway})")
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

    def fail(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
        for stream in self.streams.values():
            stream.finish(reason)
        self._wake()

    # -- closing ----------------------------------------------------------------------------

    async def close_stream(self, stream: H2Stream) -> None:
        if stream.closed:
            return
        stream.closed = True
        stream.finish("closed by the client before the response ended")
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
            stream.finish("connection closed by the client")
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
        elif self.sock is not None:
            self.sock.close()

