"""Firing requests so that they truly arrive together: last-byte synchronisation.

Each racer opens its own TCP connection (``TCP_NODELAY``), writes its whole request except the
last body byte, and waits; the server's handler sits in its body read. Then every final byte is
sent in one tight, non-blocking loop over the raw sockets — no checkpoint between sends — and the
release instant and each send time are recorded (monotonic ns). The achieved spread is evidence
in every result: a race harness's claim is only as good as its synchronisation.

``naive`` mode (each racer connects and sends its whole request, all started together) exists
only as the comparison baseline.

HTTP/1.1 is spoken with h11 (sans-I/O). https targets are supported: the TLS record carrying the
last byte is sent with ``send_all`` per stream (a checkpoint each), and the result says so.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from raceharness.adapters.base import Adapter, StreamReader
from raceharness.adapters.base import error_summary as _error_body_summary
from raceharness.core.protocol import CONFLICT_HOLDER
from raceharness.core.sse import SseParser
from raceharness.core.ui_stream import UiStream

MAX_ERROR_BODY = 64 * 1024
# Linux ACKs at most this many of a connection's first segments at once (TCP_MAX_QUICKACKS),
# and counts them down only for segments that do not arrive back to back.
QUICKACK_SEGMENTS = 16
QUICKACK_GAP_S = 0.0005


@dataclass
class Endpoint:
    scheme: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    # The target's adapter: how a 200 stream is read and an error body summarised (None:
    # the ai-chat protocol's).
    wire: Adapter | None = None

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@dataclass
class Response:
    """What one racer observed: facts only, judged later."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    headers_ns: int | None = None
    first_frame_ns: int | None = None
    end_ns: int | None = None
    body: bytearray = field(default_factory=bytearray)
    stream: StreamReader | None = None
    comments: int = 0
    error: str | None = None
    wire: Adapter | None = None  # reads error bodies (None: the protocol's holder field)

    def summary(self) -> dict[str, Any]:
        """The completion value recorded in the history."""
        value: dict[str, Any] = {"status": self.status, "headers_ns": self.headers_ns,
                                 "first_frame_ns": self.first_frame_ns, "end_ns": self.end_ns}
        if self.error:
            value["error"] = self.error
        if self.stream is not None:
            s = self.stream
            value.update(run_id=s.run_id, chat_id=s.chat_id, terminal=s.terminal, done=s.done,
                         frames=list(s.types[:200]), error_text=s.error_text, pings=self.comments,
                         findings=[{"code": f.code, "message": f.message} for f in s.findings])
        elif self.status is not None:
            raw = bytes(self.body)
            value.update(self.wire.error_summary(raw) if self.wire is not None
                         else _error_body_summary(raw, CONFLICT_HOLDER))
        server_ns = arrival_ns(self.headers)
        if server_ns is not None:
            value["server_arrival_ns"] = server_ns
        app_ms = _SERVER_TIMING_APP.search(self.headers.get("server-timing", ""))
        if app_ms:
            value["server_app_ms"] = float(app_ms.group(1))
        return value


_SERVER_TIMING_APP = re.compile(r'(?:^|,)\s*app\s*;[^,]*?dur=(\d{1,9}(?:\.\d{1,6})?)', re.I)
_SERVER_TIMING_ARRIVAL = re.compile(r'(?:^|,)\s*arrival\s*;[^,]*?desc="?(\d{1,20})"?', re.I)


def arrival_ns(headers: dict[str, str]) -> int | None:
    """The server's arrival timestamp of this request on the host's monotonic clock, when the
    target exposes one (``x-arrival-ns: <ns>`` or ``server-timing: arrival;desc="<ns>"``, as
    the reference does); only comparable with our clock when both run on one host."""
    raw = headers.get("x-arrival-ns", "").strip()
    if raw.isdigit():
        return int(raw)
    match = _SERVER_TIMING_ARRIVAL.search(headers.get("server-timing", ""))
    return int(match.group(1)) if match else None


def open_stream(endpoint: Endpoint, headers: dict[str, str]
                ) -> tuple[SseParser, StreamReader]:
    """The SSE parser and stream reader for a 200 event stream from ``endpoint``'s target
    (its adapter's; the protocol's UI-message stream by default)."""
    wire = endpoint.wire
    if wire is None:
        return SseParser(), UiStream()
    return SseParser(event_typed=wire.event_typed()), wire.new_stream(None, headers)


def build_request(endpoint: Endpoint, method: str, target: str, headers: list[tuple[str, str]],
                  body: bytes) -> tuple[h11.Connection, bytes]:
    """An h11 client connection that has 'sent' the request, and the request's bytes."""
    conn = h11.Connection(h11.CLIENT)
    all_headers = [("host", endpoint.host_header), ("content-length", str(len(body))),
                   ("user-agent", "raceharness"), *headers]
    data = conn.send(h11.Request(method=method, target=target, headers=all_headers))
    data += conn.send(h11.Data(data=body)) if body else b""
    data += conn.send(h11.EndOfMessage())
    return conn, data


async def open_tcp_nodelay(endpoint: Endpoint) -> tuple[socket.socket, trio.SocketStream]:
    """A connected TCP stream with ``TCP_NODELAY`` (a small final write leaves at once), and
    its raw non-blocking socket, for sends that must not yield."""
    infos = await trio.socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    family, type_, proto, _, addr = infos[0]
    raw = socket.socket(family, type_, proto)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw.setblocking(False)
    tsock = trio.socket.from_stdlib_socket(raw)
    try:
        await tsock.connect(addr)
    except BaseException:
        tsock.close()
        raise
    return raw, trio.SocketStream(tsock)


class Racer:
    """One request on its own connection, able to withhold its last byte."""

    def __init__(self, endpoint: Endpoint, method: str, target: str,
                 headers: list[tuple[str, str]], body: bytes) -> None:
        if not body:
            raise ValueError("a racer needs a body to withhold its last byte")
        self.endpoint = endpoint
        self.conn, self.data = build_request(endpoint, method, target, headers, body)
        self.sock: socket.socket | None = None
        self.stream: trio.abc.Stream | None = None
        self.sent_ns: int | None = None
        self.response = Response(wire=endpoint.wire)
        self.chat_id: str | None = None  # the chat the turn is on, when the caller knows it
        self.answered = trio.Event()   # status known and (for a stream) the start frame seen
        self.finished = trio.Event()   # the response ended, or reading failed

    async def connect(self) -> None:
        ep = self.endpoint
        self.sock, tcp = await open_tcp_nodelay(ep)
        stream: trio.abc.Stream = tcp
        if ep.scheme == "https":
            assert ep.ssl_context is not None
            tls = trio.SSLStream(stream, ep.ssl_context, server_hostname=ep.host,
                                 https_compatible=True)
            await tls.do_handshake()
            stream = tls
        self.stream = stream

    async def send_prefix(self) -> None:
        """Send all but the last byte. Over plain TCP the prefix's last ``QUICKACK_SEGMENTS``
        bytes then follow one by one, a millisecond apart, so that the receiving kernel has
        left quick-ACK mode by the release.

        A Linux receiver ACKs each of a new connection's first segments at once (up to 16), and
        segments that arrive back to back do not use that allowance up. On loopback the
        receiver's ACK is made and taken inside the sender's ``send``, so a final byte sent in
        that mode costs two to three times as much (measured 15 against 6 µs on these VMs),
        and so does the release spread. A server reads the request the same either way: HTTP
        does not care how its bytes are split."""
        assert self.stream is not None
        prefix = self.data[:-1]
        if self.endpoint.scheme != "http" or self.sock is None or len(prefix) <= QUICKACK_SEGMENTS:
            await self.stream.send_all(prefix)
            return
        head = len(prefix) - QUICKACK_SEGMENTS
        await self.stream.send_all(prefix[:head])
        for i in range(head, len(prefix)):
            await trio.sleep(QUICKACK_GAP_S)
            try:
                sent = self.sock.send(prefix[i:i + 1])  # TCP_NODELAY: a segment each
            except BlockingIOError:
                sent = 0
            if not sent:  # the send buffer is full: the rest in one go, as usual
                await self.stream.send_all(prefix[i:])
                return

    def send_last_byte_nowait(self) -> int:
        """Send the final byte on the raw socket without yielding; returns the send time."""
        assert self.sock is not None
        sent = self.sock.send(self.data[-1:])
        if sent != 1:
            raise OSError("the final byte did not fit in the socket buffer")
        self.sent_ns = time.monotonic_ns()
        return self.sent_ns

    async def send_last_byte(self) -> int:
        assert self.stream is not None
        await self.stream.send_all(self.data[-1:])
        self.sent_ns = time.monotonic_ns()
        return self.sent_ns

    async def send_whole(self) -> int:
        assert self.stream is not None
        await self.stream.send_all(self.data)
        self.sent_ns = time.monotonic_ns()
        return self.sent_ns

    async def read_response(self) -> None:
        """Read the answer to the end; never raises for the target's misbehaviour."""
        assert self.stream is not None
        resp = self.response
        parser: SseParser | None = None
        offset = 0
        try:
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    data = await self.stream.receive_some(65536)
                    self.conn.receive_data(bytes(data))
                    continue
                if isinstance(event, h11.Response):
                    resp.status = event.status_code
                    resp.headers_ns = time.monotonic_ns()
                    resp.headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                                    for k, v in event.headers}
                    if resp.status == 200 and resp.headers.get(
                            "content-type", "").startswith("text/event-stream"):
                        parser, resp.stream = open_stream(self.endpoint, resp.headers)
                        if resp.stream.started:
                            self.answered.set()
                elif isinstance(event, h11.Data):
                    if parser is not None and resp.stream is not None:
                        for frame in parser.feed(event.data):
                            if resp.first_frame_ns is None:
                                resp.first_frame_ns = time.monotonic_ns()
                            resp.stream.on_frame(frame, offset)
                            if resp.stream.started:
                                self.answered.set()
                        offset += len(event.data)
                        resp.comments = parser.comments
                    elif len(resp.body) < MAX_ERROR_BODY:
                        resp.body += event.data[:MAX_ERROR_BODY - len(resp.body)]
                elif isinstance(event, h11.EndOfMessage):
                    resp.end_ns = time.monotonic_ns()
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    resp.error = "connection closed before the response ended"
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            resp.error = f"connection error: {type(exc).__name__}"
        except h11.RemoteProtocolError as exc:
            resp.error = f"HTTP protocol error: {exc}"
        finally:
            if parser is not None and resp.stream is not None:
                for frame in parser.close():
                    resp.stream.on_frame(frame, offset)
                resp.stream.findings.extend(parser.findings)
                resp.stream.close()
            self.answered.set()
            self.finished.set()

    async def aclose(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
        elif self.sock is not None:
            self.sock.close()


async def release_last_bytes(racers: list[Racer]) -> tuple[int, list[int]]:
    """Send every withheld final byte; returns (release instant, send times).

    Plain TCP: one tight loop of non-blocking sends with no checkpoint. TLS: ``send_all`` per
    stream (the byte must be encrypted), which costs a checkpoint each.
    """
    release_ns = time.monotonic_ns()
    if all(r.endpoint.scheme == "http" for r in racers):
        sent = [r.send_last_byte_nowait() for r in racers]
    else:
        sent = [await r.send_last_byte() for r in racers]
    return release_ns, sent
