"""HTTP/2 single-packet synchronisation (``harness/net/http2.py``) and the reference over HTTP/2.

Two kinds of server:

- the reference itself, run as its own process with ``--server hypercorn`` (h2c with prior
  knowledge, or TLS with ALPN h2), on a fresh database, its provider the harness's fake
  provider (trio, in the test's loop): a burst on one chat has one winner and 409 losers, and
  every final frame leaves in one write per connection;
- tiny in-process servers on trio (an ``h2`` server; a silent one; a TLS one without h2) for
  flow control, stream reset on close, the connection's end, and the fallback messages.

Every test body runs in its own ``trio.run`` under one bound; waits are on events, except the
readiness probe of another process and the watch of another process's database row.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import psycopg
import pytest
import trio
import trustme

from raceharness.net.http1 import Endpoint, Racer
from raceharness.net.http2 import H2Burst, Http2Unavailable, open_h2_burst
from raceharness.shell.fake_provider import FakeProvider
from raceharness.trial.context import race_text, turn_body
from tests.refkit import free_ports, wait_until_ready

BOUND_S = 30  # every test body is bounded; none comes near it
STREAM_PATH = "/api/ai-chat/stream"


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with trio.fail_after(BOUND_S):
            await body()

    trio.run(bounded)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the reference as its own process ----------------------------------------------------------

@dataclass
class Reference:
    url: str
    port: int
    token: str
    dsn: str
    provider_port: int
    proc: subprocess.Popen[bytes]
    log: Path
    ca: trustme.CA | None = None

    def endpoint(self, alpn: list[str] | None = None) -> Endpoint:
        """A fresh endpoint (TLS: a context of its own trusting the test CA)."""
        if self.ca is None:
            return Endpoint("http", "127.0.0.1", self.port)
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return Endpoint("https", "127.0.0.1", self.port, ctx)


StartReference = Callable[..., Reference]


@pytest.fixture
def start_reference(pg_dsn: str, users: dict[str, str], tmp_path: Path
                    ) -> Iterator[StartReference]:
    """``start_reference(*args, tls=False)``: ``python -m raceharness.reference ARGS`` on the test's
    database, ready; stopped (SIGTERM) at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, tls: bool = False) -> Reference:
        port, provider_port = free_ports(2)
        argv = [sys.executable, "-m", "raceharness.reference", "--port", str(port), *args]
        ca = None
        if tls:
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1")
            cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
            cert.cert_chain_pems[0].write_to_path(str(cert_file))
            cert.private_key_pem.write_to_path(str(key_file))
            argv += ["--ssl-certfile", str(cert_file), "--ssl-keyfile", str(key_file)]
        env = {**os.environ, "DATABASE_URL": pg_dsn, "AUTONOMOUS_RUNS": "false",
               "PROVIDER_BASE_URL": f"http://127.0.0.1:{provider_port}/v1"}
        env.pop("REFERENCE_SERVER", None)
        log_path = tmp_path / f"reference-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        wait_until_ready(url, proc, log_path)
        return Reference(url, port, users["alice"], pg_dsn, provider_port, proc, log_path, ca)

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=15)


def requests_for(ref: Reference, chat_id: str | None, nonces: list[str]
                 ) -> list[tuple[str, str, list[tuple[str, str]], bytes]]:
    headers = [("content-type", "application/json"), ("accept", "text/event-stream"),
               ("authorization", f"Bearer {ref.token}")]
    return [("POST", STREAM_PATH, headers, turn_body(race_text(nonce, "racer"), chat_id))
            for nonce in nonces]


async def new_chat(ref: Reference) -> str:
    """A first turn over HTTP/1.1, let to end: the chat the burst races on."""
    racer = Racer(ref.endpoint(["http/1.1"]) if ref.ca else ref.endpoint(), "POST", STREAM_PATH,
                  requests_for(ref, None, ["setup"])[0][2], turn_body("[race:setup] hi", None))
    await racer.connect()
    await racer.send_whole()
    await racer.read_response()
    await racer.aclose()
    stream = racer.response.stream
    assert racer.response.status == 200 and stream is not None and stream.chat_id, (
        racer.response.summary())
    return stream.chat_id


async def run_status(dsn: str, run_id: str) -> str:
    def read() -> str:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT status FROM ai_chat_runs WHERE id = %s",
                               (run_id,)).fetchone()
        assert row is not None
        return str(row[0])

    return await trio.to_thread.run_sync(read)


async def wait_run_ended(dsn: str, run_id: str) -> str:
    """Until the run's row is terminal (another process writes it: a watch, bounded by the
    test's bound)."""
    while (status := await run_status(dsn, run_id)) in (  # noqa: ASYNC110 - another
            "pending", "running"):                          # process's row: no event here
        await trio.sleep(0.02)
    return status


async def race_on_one_chat(ref: Reference, n: int, check: Callable[[H2Burst], None]) -> None:
    """N turns on one chat over HTTP/2 against the reference: one 200 stream with a run id,
    N-1 409 ``A_RUN_ALREADY_ACTIVE``; after closing every racer the run ends as aborted."""
    provider = FakeProvider()
    provider.mode_for = lambda nonce: "finish" if nonce == "setup" else "hold"
    async with trio.open_nursery() as nursery:
        await nursery.start(provider.serve, "127.0.0.1", ref.provider_port)
        chat_id = await new_chat(ref)
        nonces = [f"r{i}" for i in range(n)]
        burst = await open_h2_burst(ref.endpoint(), requests_for(ref, chat_id, nonces),
                                    nursery=nursery, connect_timeout_s=10)
        release_ns, sent = await burst.release()
        check(burst)
        assert all(ns is not None and ns >= release_ns for ns in sent)
        for racer in burst.racers:
            await racer.answered.wait()
        statuses = sorted(r.response.status or 0 for r in burst.racers)
        assert statuses == [200] + [409] * (n - 1), [r.response.summary() for r in burst.racers]
        winner = next(r for r in burst.racers if r.response.status == 200)
        assert winner.response.stream is not None and winner.response.stream.run_id
        assert winner.response.headers["content-type"].startswith("text/event-stream")
        run_id = winner.response.stream.run_id
        for loser in burst.racers:
            if loser is winner:
                continue
            await loser.read_response()
            assert loser.response.error is None and loser.response.end_ns is not None
            body = json.loads(bytes(loser.response.body))
            assert body["code"] == "A_RUN_ALREADY_ACTIVE" and body["activeRunId"] == run_id
            assert loser.response.summary()["code"] == "A_RUN_ALREADY_ACTIVE"
        assert await run_status(ref.dsn, run_id) == "running"
        winner_nonce = nonces[burst.racers.index(winner)]
        await provider.wait_called(winner_nonce)
        await burst.aclose()  # each racer: RST_STREAM(CANCEL), a client disconnect
        await provider.wait_disconnected(winner_nonce)
        assert await wait_run_ended(ref.dsn, run_id) == "aborted"
        assert [len(provider.calls_for(nonce)) for nonce in nonces].count(1) == 1
        await winner.read_response()  # returns: closed by the client
        nursery.cancel_scope.cancel()


def test_h2c_burst_on_one_chat_one_winner_and_every_final_frame_in_one_write(
        start_reference: StartReference) -> None:
    ref = start_reference("--server", "hypercorn")

    def check(burst: H2Burst) -> None:
        assert (burst.connections, burst.packets, burst.note) == (1, 1, None)
        assert burst.max_concurrent_streams == 100
        assert len({r.sent_ns for r in burst.racers}) == 1  # one write: one send time

    run(lambda: race_on_one_chat(ref, 10, check))


def test_tls_alpn_h2_burst_on_one_chat(start_reference: StartReference) -> None:
    ref = start_reference("--server", "hypercorn", tls=True)

    def check(burst: H2Burst) -> None:
        assert (burst.connections, burst.packets, burst.note) == (1, 1, None)
        assert burst.racers[0].endpoint.scheme == "https"

    run(lambda: race_on_one_chat(ref, 8, check))


def test_more_streams_than_the_server_allows_are_split_over_connections(
        start_reference: StartReference) -> None:
    ref = start_reference("--server", "hypercorn", "--h2-max-concurrent-streams", "4")

    def check(burst: H2Burst) -> None:
        assert burst.max_concurrent_streams == 4
        assert (burst.connections, burst.packets) == (3, 3)
        assert burst.note == ("N=10 exceeds the server's SETTINGS_MAX_CONCURRENT_STREAMS=4: "
                              "3 connections, 3 packets")
        per_conn = sorted(len(c.streams) for c in burst._conns)
        assert per_conn == [3, 3, 4]

    run(lambda: race_on_one_chat(ref, 10, check))


def test_an_http1_only_reference_is_h2_unavailable_at_once(
        start_reference: StartReference) -> None:
    ref = start_reference()  # uvicorn: HTTP/1.1 only

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            with pytest.raises(Http2Unavailable) as err:
                await open_h2_burst(ref.endpoint(), requests_for(ref, None, ["a", "b"]),
                                    nursery=nursery, connect_timeout_s=10)
        message = str(err.value)
        assert "answered the HTTP/2 preface with HTTP/1 ('HTTP/1.1 400" in message
        assert "use --sync last-byte" in message

    run(body)


def test_sigterm_on_hypercorn_aborts_own_runs_first_then_exits(
        start_reference: StartReference) -> None:
    """The winner's stream gets its ``abort`` frame and ``[DONE]`` before the server goes; the
    run is aborted in the database; the process exits 0.

    (hypercorn, shutting down, sends GOAWAY as soon as the last stream's body is written, and
    its ``h2`` then refuses the END_STREAM that should have followed: the stream's HTTP/2 end
    may be missing though its frames are whole. The race records that as the response's
    ``error``; the SSE checks see a complete stream.)"""
    ref = start_reference("--server", "hypercorn")

    async def body() -> None:
        provider = FakeProvider()
        provider.mode_for = lambda nonce: "finish" if nonce == "setup" else "hold"
        async with trio.open_nursery() as nursery:
            await nursery.start(provider.serve, "127.0.0.1", ref.provider_port)
            chat_id = await new_chat(ref)
            burst = await open_h2_burst(ref.endpoint(), requests_for(ref, chat_id, ["w", "l"]),
                                        nursery=nursery, connect_timeout_s=10)
            await burst.release()
            for racer in burst.racers:
                await racer.answered.wait()
            winner = next(r for r in burst.racers if r.response.status == 200)
            await provider.wait_called(["w", "l"][burst.racers.index(winner)])
            ref.proc.send_signal(signal.SIGTERM)
            await winner.read_response()
            stream = winner.response.stream
            assert stream is not None and stream.run_id
            assert (stream.terminal, stream.done, stream.findings) == ("abort", True, [])
            # hypercorn's GOAWAY overtakes the END_STREAM of a stream whose body is complete
            assert winner.response.error in (None, (
                f"the server ended the connection (GOAWAY NO_ERROR, last stream "
                f"{max(r.stream_id for r in burst.racers)}) without ending this stream"))
            assert await run_status(ref.dsn, stream.run_id) == "aborted"
            assert await trio.to_thread.run_sync(ref.proc.wait) == 0
            await burst.aclose()
            nursery.cancel_scope.cancel()

    run(body)
    assert "aborting 1 run(s) of this instance: server shutting down" in ref.log.read_text()


def test_reference_rejects_h2_options_with_uvicorn(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from raceharness.reference.server import main as reference_main

    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")
    monkeypatch.delenv("REFERENCE_SERVER", raising=False)
    monkeypatch.delenv("REFERENCE_TOKENS", raising=False)
    assert reference_main(["--h2-max-concurrent-streams", "4"]) == 2
    assert "needs --server hypercorn" in capsys.readouterr().err
    monkeypatch.setenv("REFERENCE_SERVER", "nginx")
    assert reference_main([]) == 2
    assert capsys.readouterr().err == ("error: REFERENCE_SERVER: expected one of uvicorn, "
                                       "hypercorn, got 'nginx'\n")


# -- a tiny HTTP/2 server on trio ---------------------------------------------------------------

def sse(*frames: dict[str, Any]) -> bytes:
    out = b"".join(b"data: " + json.dumps(f, separators=(",", ":")).encode() + b"\n\n"
                   for f in frames)
    return out


START = {"type": "start", "messageId": "m1", "messageMetadata": {"chatId": "c1", "runId": "r1"}}


@dataclass
class H2Server:
    """Answers by path: ``/big-sse`` a valid UI stream of ``big`` bytes and more, ``/hold`` a
    start frame and nothing more, ``/echo`` the body's length as JSON; respects the client's
    flow-control windows and acknowledges what it receives."""

    big: int = 200_000
    port: int = 0
    bodies: dict[int, bytearray] = field(default_factory=dict)
    end_batches: dict[int, int] = field(default_factory=dict)  # stream -> receive batch number
    resets: dict[int, int] = field(default_factory=dict)       # stream -> error code
    reset_seen: trio.Event = field(default_factory=trio.Event)
    goaway: trio.Event = field(default_factory=trio.Event)
    connections: int = 0
    text_sent: int = 0
    hang_up: trio.Event = field(default_factory=trio.Event)  # set: close every connection

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("http", "127.0.0.1", self.port)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.connection, listeners)

    async def connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 50})
        lock = trio.Lock()
        window = [trio.Event()]
        paths: dict[int, bytes] = {}

        async def flush() -> None:
            async with lock:
                data = conn.data_to_send()
                if data:
                    await stream.send_all(data)

        async def respond(sid: int) -> None:
            path = paths[sid]
            if path == b"/echo":
                body = json.dumps({"length": len(self.bodies[sid])}).encode()
                conn.send_headers(sid, [(b":status", b"200"),
                                        (b"content-type", b"application/json")])
                conn.send_data(sid, body, end_stream=True)
                await flush()
                return
            conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/event-stream")])
            if path == b"/hold":
                conn.send_data(sid, sse(START))
                await flush()
                return
            payload = bytearray(sse(START, {"type": "text-start", "id": "t"}))
            while len(payload) < self.big:
                payload += sse({"type": "text-delta", "id": "t", "delta": "x" * 100})
                self.text_sent += 100
            payload += sse({"type": "text-end", "id": "t"}, {"type": "finish"})
            payload += b"data: [DONE]\n\n"
            view = memoryview(bytes(payload))
            while view:
                size = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                           len(view))
                if size <= 0:
                    await window[0].wait()  # the client's WINDOW_UPDATE
                    continue
                conn.send_data(sid, bytes(view[:size]))
                view = view[size:]
                await flush()
            conn.end_stream(sid)
            await flush()

        conn.initiate_connection()
        await flush()
        batch = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hang_up_on_signal, stream)
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                batch += 1
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        sid = event.stream_id or 0
                        paths[sid] = dict(event.headers or [])[b":path"]
                        self.bodies[sid] = bytearray()
                    elif isinstance(event, h2.events.DataReceived):
                        sid = event.stream_id or 0
                        self.bodies[sid] += event.data or b""
                        conn.acknowledge_received_data(event.flow_controlled_length or 0, sid)
                    elif isinstance(event, h2.events.StreamEnded):
                        self.end_batches[event.stream_id or 0] = batch
                        nursery.start_soon(respond, event.stream_id or 0)
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets[event.stream_id or 0] = int(event.error_code or 0)
                        self.reset_seen.set()
                        self.reset_seen = trio.Event()
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self.goaway.set()
                    elif isinstance(event, (h2.events.WindowUpdated,
                                            h2.events.RemoteSettingsChanged)):
                        window[0].set()
                        window[0] = trio.Event()
                await flush()
            nursery.cancel_scope.cancel()

    async def _hang_up_on_signal(self, stream: trio.SocketStream) -> None:
        await self.hang_up.wait()
        await stream.aclose()


def echo_requests(paths: list[str], size: int) -> list[tuple[str, str, list[tuple[str, str]],
                                                               bytes]]:
    return [("POST", path, [("content-type", "application/octet-stream")], b"b" * size)
            for path in paths]


def test_a_long_sse_response_and_long_bodies_pass_the_flow_control_windows() -> None:
    """A 200 kB event stream (three times the default 65,535-byte window) is read to its end,
    and 100 kB bodies reach the server whole, because both sides acknowledge what they get;
    every final frame arrives in one receive on the server."""
    server = H2Server(big=200_000)

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            burst = await open_h2_burst(
                server.endpoint, echo_requests(["/big-sse", "/echo", "/echo", "/echo"], 100_000),
                nursery=nursery, connect_timeout_s=10)
            assert server.end_batches == {}  # nothing released yet
            await burst.release()
            for racer in burst.racers:
                await racer.read_response()
            big = burst.racers[0].response
            assert (big.status, big.error) == (200, None)
            assert big.stream is not None and big.stream.findings == []
            assert (big.stream.terminal, big.stream.done) == ("finish", True)
            assert big.stream.text == "x" * server.text_sent and server.text_sent > 65_535
            for echo in burst.racers[1:]:
                assert json.loads(bytes(echo.response.body)) == {"length": 100_000}
            assert all(len(b) == 100_000 for b in server.bodies.values())
            assert len(set(server.end_batches.values())) == 1, server.end_batches
            assert burst.packets == 1 and server.connections == 1
            await burst.aclose()
            nursery.cancel_scope.cancel()

    run(body)


def test_racers_can_be_released_in_two_steps_each_one_write() -> None:
    """``release([first])`` then ``release()`` (the rest): what ``release='after-first-start'``
    needs; each step is one write, and a racer is released once."""
    server = H2Server()

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            burst = await open_h2_burst(server.endpoint,
                                        echo_requests(["/hold", "/echo", "/echo", "/echo"], 3),
                                        nursery=nursery, connect_timeout_s=10)
            first, *rest = burst.racers
            release_ns, sent = await burst.release([first])
            first_ns = sent[0]
            assert first_ns is not None and first_ns >= release_ns and sent[1:] == [None] * 3
            await first.answered.wait()
            assert first.response.stream is not None and first.response.stream.run_id == "r1"
            _, sent = await burst.release()
            rest_ns = sent[1]
            assert len(set(sent[1:])) == 1 and rest_ns is not None and rest_ns > first_ns
            for racer in rest:
                await racer.read_response()
                assert json.loads(bytes(racer.response.body)) == {"length": 3}
            assert burst.packets == 2
            batches = server.end_batches
            assert batches[first.stream_id] < batches[rest[0].stream_id]
            assert len({batches[r.stream_id] for r in rest}) == 1
            assert (await burst.release())[1] == sent  # nothing left to release
            assert burst.packets == 2
            await burst.aclose()
            nursery.cancel_scope.cancel()

    run(body)


def test_closing_a_racer_resets_its_stream_and_the_last_one_closes_the_connection() -> None:
    server = H2Server()

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            burst = await open_h2_burst(server.endpoint, echo_requests(["/hold"] * 3, 10),
                                        nursery=nursery, connect_timeout_s=10)
            await burst.release()
            for racer in burst.racers:
                await racer.answered.wait()
            first, *others = burst.racers
            assert first.response.stream is not None and first.response.stream.run_id == "r1"
            seen = server.reset_seen
            await first.aclose()
            await seen.wait()
            assert server.resets == {first.stream_id: h2.errors.ErrorCodes.CANCEL}
            assert first.finished.is_set() and not others[0].finished.is_set()
            assert not server.goaway.is_set()
            for racer in others:
                await racer.aclose()
            await server.goaway.wait()  # the last close ends the connection
            assert set(server.resets) == {r.stream_id for r in burst.racers}
            await first.aclose()  # twice is harmless
            nursery.cancel_scope.cancel()

    run(body)


def test_the_server_hanging_up_mid_stream_is_an_error_in_the_response_never_an_exception(
        ) -> None:
    server = H2Server()

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            burst = await open_h2_burst(server.endpoint, echo_requests(["/hold", "/hold"], 5),
                                        nursery=nursery, connect_timeout_s=10)
            await burst.release()
            for racer in burst.racers:
                await racer.answered.wait()
            server.hang_up.set()
            for racer in burst.racers:
                await racer.read_response()
                resp = racer.response
                assert resp.status == 200 and resp.end_ns is None
                assert resp.error == "connection closed before the response ended"
                assert resp.stream is not None and resp.stream.terminal is None
            await burst.aclose()
            nursery.cancel_scope.cancel()

    run(body)


# -- not HTTP/2 --------------------------------------------------------------------------------

async def _serve_raw(handler: Callable[[trio.SocketStream], Awaitable[None]],
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


@pytest.mark.parametrize(("kind", "expected"), [
    ("silent", "no HTTP/2 SETTINGS from http://127.0.0.1:{port} within 0.5s"),
    ("close", "closed the connection after the HTTP/2 preface without HTTP/2 SETTINGS"),
    ("garbage", "answered the HTTP/2 preface with something that is not HTTP/2"),
])
def test_a_server_that_does_not_speak_h2c_is_h2_unavailable(kind: str, expected: str) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        if kind == "silent":
            await trio.sleep_forever()
        elif kind == "garbage":
            await stream.send_all(b"\xff" * 30)  # a frame far larger than allowed
            await trio.sleep_forever()
        await stream.aclose()

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_serve_raw, handler)
            with pytest.raises(Http2Unavailable) as err:
                await open_h2_burst(Endpoint("http", "127.0.0.1", port),
                                    echo_requests(["/"], 2), nursery=nursery,
                                    connect_timeout_s=0.5)
            assert expected.format(port=port) in str(err.value)
            assert str(err.value).endswith("use --sync last-byte (HTTP/1.1, one connection per "
                                           "request) instead")
            nursery.cancel_scope.cancel()

    run(body)


def test_a_tls_server_that_does_not_select_h2_is_h2_unavailable() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["http/1.1"])

    async def handler(raw: trio.SocketStream) -> None:
        tls = trio.SSLStream(raw, server_ctx, server_side=True)
        try:
            await tls.do_handshake()
            await tls.receive_some(1024)
        except trio.BrokenResourceError:
            pass
        await trio.aclose_forcefully(tls)

    async def body() -> None:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_serve_raw, handler)
            with pytest.raises(Http2Unavailable) as err:
                await open_h2_burst(Endpoint("https", "127.0.0.1", port, client_ctx),
                                    echo_requests(["/"], 2), nursery=nursery,
                                    connect_timeout_s=10)
            assert "did not select h2 by ALPN (selected None)" in str(err.value)
            nursery.cancel_scope.cancel()

    run(body)


def test_a_request_without_a_body_is_refused() -> None:
    async def body() -> None:
        async with trio.open_nursery() as nursery:
            with pytest.raises(ValueError, match="needs a body"):
                await open_h2_burst(Endpoint("http", "127.0.0.1", 1), [("POST", "/", [], b"")],
                                    nursery=nursery, connect_timeout_s=1)

    run(body)
