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
flow-control windows never stall a long SSE stream. Each :class:`H2Stream` is a
:class:`~raceharness.net.race_request.RaceRequest` to the race program, as an HTTP/1.1
:class:`~raceharness.net.http1.Racer` is. The server's misbehaviour is a finding in the response
(``error``, SSE findings), never an exception.

This module is the burst: how many connections, which streams on which, the release and its
timing. A connection's machinery (opening, the prefixes within the windows, writes, the reader,
closing) is :mod:`raceharness.net.http2_connection`; a stream's response is
:mod:`raceharness.net.http2_stream`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import h2.exceptions
import trio

from raceharness.net.http1 import Endpoint
from raceharness.net.http2_connection import H2Connection, Http2Unavailable
from raceharness.net.http2_stream import H2Stream, Request

__all__ = ["H2Burst", "H2Stream", "Http2Unavailable", "Request", "open_h2_burst"]


def _stamp(conn: H2Connection, only: set[H2Stream], sent_ns: int) -> None:
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

    def __init__(self, conns: list[H2Connection], racers: list[H2Stream],
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
                    conn.fail(f"release failed: {type(exc).__name__}")
                    continue
                _stamp(conn, only, time.monotonic_ns())
            for conn in live:
                if conn.unsent and conn.dead is None:  # a partial send: finish it
                    try:
                        await conn.flush()
                    except OSError as exc:
                        conn.fail(f"release failed: {type(exc).__name__}")
                        continue
                    writes += 1
                    _stamp(conn, only, time.monotonic_ns())
        else:
            for conn in live:
                try:
                    await conn.release_tls(only)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    conn.fail(f"release failed: {type(exc).__name__}")
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
    conns: list[H2Connection] = []
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


async def _open_streams(conns: list[H2Connection], sizes: list[int],
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


async def _open_connections(endpoint: Endpoint, count: int, conns: list[H2Connection],
                            nursery: trio.Nursery) -> None:
    """Open ``count`` connections concurrently, appending each (readers start in ``nursery``);
    the first failure is raised once all attempts have ended."""
    errors: list[BaseException] = []

    async def one() -> None:
        conn = H2Connection(endpoint)
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
