"""The issue's "done when": a deployment whose conflict answer is not protocol.md's passes
``harness race`` once its profile says what that answer is, and fails it without.

The deployment is made honestly: the reference, started as an ordinary external process, behind
a small rewriting HTTP/1.1 proxy on loopback that forwards every byte unchanged in both
directions (request bodies byte by byte as they come, so the last-byte release still races;
event streams as they come, unbuffered), except that a 409's JSON body has its ``code``
replaced by ``CHAT_BUSY`` and its ``activeRunId`` renamed ``holder``. The proxy closes each
connection after one exchange (it asks the reference for ``connection: close``), so it never
has to find where one response ends and the next begins.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from raceharness.commands.cli import main
from tests.harness.trial.test_target_trust import External, _external

BUSY_CODE, HOLDER_FIELD = "CHAT_BUSY", "holder"
PROFILE = f"""\
[paths]
stream = "/api/ai-chat/stream"
stop = "/api/ai-chat/stop"
run = "/api/ai-chat/run"
runs = "/api/ai-chat/runs"
health = "/healthz"

[auth]
header = "authorization"
scheme = "Bearer"

[conflict]
code = "{BUSY_CODE}"
holder = "{HOLDER_FIELD}"
"""


def rewrite_conflict(body: bytes) -> bytes:
    """A 409 body as the other deployment words it."""
    data = json.loads(body)
    data["code"] = BUSY_CODE
    if "activeRunId" in data:
        data[HOLDER_FIELD] = data.pop("activeRunId")
    return json.dumps(data).encode()


def with_header(head: bytes, name: bytes, value: bytes | None) -> bytes:
    """``head`` (a request or status line and its fields, ending in a blank line) with every
    ``name`` field dropped and, unless ``value`` is None, one ``name: value`` added."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0], *(line for line in lines[1:]
                        if line.split(b":", 1)[0].strip().lower() != name)]
    if value is not None:
        kept.append(name + b": " + value)
    return b"\r\n".join(kept) + b"\r\n\r\n"


class RewritingProxy:
    """Loopback HTTP/1.1 proxy to ``127.0.0.1:upstream_port`` (see the module), on its own
    asyncio loop in a thread, so the harness's trio run in the test's thread reaches it as it
    would reach any deployment."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.rewritten = 0          # 409 bodies rewritten
        self.streamed = 0           # responses passed through as they came
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def __enter__(self) -> RewritingProxy:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._exchange, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _exchange(self, client_r: asyncio.StreamReader,
                        client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        request = asyncio.create_task(self._request(client_r, up_w))
        try:
            await self._response(up_r, client_w)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass  # either side went away: so does the other
        finally:
            request.cancel()
            for writer in (up_w, client_w):
                writer.close()

    async def _request(self, client_r: asyncio.StreamReader, up_w: asyncio.StreamWriter) -> None:
        """The request head with ``connection: close``, then every byte as it comes; the
        client going away (EOF) is passed on by closing the upstream connection."""
        try:
            head = await client_r.readuntil(b"\r\n\r\n")
            up_w.write(with_header(head, b"connection", b"close"))
            await up_w.drain()
            while data := await client_r.read(65536):
                up_w.write(data)
                await up_w.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        up_w.close()

    async def _response(self, up_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        head = await up_r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 409:
            fields = dict(line.split(b":", 1) for line in head[:-4].split(b"\r\n")[1:])
            length = {k.strip().lower(): v.strip() for k, v in fields.items()}.get(
                b"content-length")
            body = await (up_r.readexactly(int(length)) if length else up_r.read())
            body = rewrite_conflict(body)
            client_w.write(with_header(head, b"content-length", str(len(body)).encode()) + body)
            await client_w.drain()
            self.rewritten += 1
            return
        client_w.write(head)
        await client_w.drain()
        self.streamed += 1
        while data := await up_r.read(65536):  # an event stream frame by frame, as it comes
            client_w.write(data)
            await client_w.drain()


@pytest.fixture
def external(pg_dsn: str, users: dict[str, str], tmp_path: Path) -> Iterator[External]:
    yield from _external(pg_dsn, users, tmp_path, provider_timeout_s=300)


@pytest.fixture
def busy_proxy(external: External) -> Iterator[RewritingProxy]:
    with RewritingProxy(int(external.url.rsplit(":", 1)[1])) as proxy:
        yield proxy


def test_the_proxy_rewrites_only_a_409s_code_and_holder() -> None:
    body = json.dumps({"message": "busy", "code": "A_RUN_ALREADY_ACTIVE",
                       "activeRunId": "r-1"}).encode()
    assert json.loads(rewrite_conflict(body)) == {"message": "busy", "code": BUSY_CODE,
                                                  HOLDER_FIELD: "r-1"}
    head = b"POST /s HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    assert with_header(head, b"connection", b"close") == (
        b"POST /s HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")


def test_a_profile_naming_the_targets_conflict_answer_passes_the_race(
        external: External, busy_proxy: RewritingProxy, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``[paths]``, ``[auth]`` and a ``[conflict]`` whose code is not A_RUN_ALREADY_ACTIVE:
    exit 0, every property valid; without the profile the same race fails race/losers-409
    (the issue: a deployment whose conflict answer differs failed the catalogue falsely)."""
    profile = tmp_path / "busy.toml"
    profile.write_text(PROFILE, encoding="utf-8")
    report_dir = tmp_path / "report"
    flags = ["--n", "10", "--seed", "7", "--target", f"http://127.0.0.1:{busy_proxy.port}",
             "--token", external.token, "--provider-listen",
             f"127.0.0.1:{external.provider_port}", "--dsn", external.dsn]

    code = main(["race", "--json", *flags, "--profile", str(profile),
                 "--report", str(report_dir)])
    report = json.loads(capsys.readouterr().out)
    verdicts = {k: v["verdict"] for k, v in report["properties"].items()}
    assert verdicts == dict.fromkeys(verdicts, "valid"), report["properties"]
    assert code == 0
    assert report["trials"][0]["statuses"] == {"200": 1, "409": 9}
    assert busy_proxy.rewritten >= 9 and busy_proxy.streamed > 0  # the answers really differ
    assert report["trials"][0]["properties"]["race/losers-409"]["reason"] == (
        f"all 9 losers got 409 {BUSY_CODE} while a run held the chat")
    assert report["trials"][0]["properties"]["race/holder-named"]["reason"] == (
        f"all 9 conflict answers named a run that held the chat ({HOLDER_FIELD})")
    meta = [json.loads(line) for line in (report_dir / "history.jsonl").read_text().splitlines()
            if '"kind":"trial"' in line][-1]
    assert meta["conflict"] == {"status": 409, "code": BUSY_CODE, "holder": HOLDER_FIELD}
    assert "conflict_holder_id" not in meta

    code = main(["race", "--json", *flags])
    report = json.loads(capsys.readouterr().out)
    invalid = {k for k, v in report["properties"].items() if v["verdict"] == "invalid"}
    assert invalid == {"race/losers-409"}, report["properties"]
    assert code == 1
    assert report["trials"][0]["properties"]["race/losers-409"]["reason"].startswith(
        "9 of 9 losers not a JSON 409 A_RUN_ALREADY_ACTIVE: op ")
