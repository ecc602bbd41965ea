"""Server-observed arrival: every reference response carries the instant its request's last
body byte reached the application, on the host's monotonic clock, and the harness reads it."""

from __future__ import annotations

import time

import httpx
import pytest

from raceharness.net.http1 import Response, arrival_ns
from raceharness.reference.arrival import ArrivalTimestamps
from tests.refkit import Api, FakeProvider, make_settings, running_reference

pytestmark = pytest.mark.anyio


async def _call(app, body_chunks: list[bytes], method: str = "POST") -> tuple[dict, int, int]:
    """Drive the middleware by hand: returns (headers, instant the last chunk was handed over,
    instant the app started its response)."""
    pending = list(body_chunks)
    handed: list[int] = []
    sent: list[dict] = []

    async def receive() -> dict:
        chunk = pending.pop(0)
        handed.append(time.monotonic_ns())
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict) -> None:
        sent.append(message)

    started: list[int] = []

    async def inner(scope, receive_, send_) -> None:
        if method == "POST":
            while (await receive_()).get("more_body"):
                pass
        started.append(time.monotonic_ns())
        await send_({"type": "http.response.start", "status": 409, "headers": []})
        await send_({"type": "http.response.body", "body": b"{}"})

    await ArrivalTimestamps(inner)({"type": "http", "method": method}, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return headers, handed[-1] if handed else 0, started[0]


async def test_the_arrival_is_the_last_body_chunk_not_the_first() -> None:
    headers, last_chunk_ns, started_ns = await _call(None, [b"{", b'"a"', b":1}"])
    ns = int(headers["x-arrival-ns"])
    assert last_chunk_ns <= ns <= started_ns
    assert arrival_ns(headers) == ns
    assert headers["server-timing"].startswith(f'arrival;desc="{ns}", app;dur=')


async def test_a_bodyless_request_arrives_when_it_starts() -> None:
    before = time.monotonic_ns()
    headers, _, started_ns = await _call(None, [], method="GET")
    assert before <= int(headers["x-arrival-ns"]) <= started_ns


@pytest.mark.parametrize("headers, expected", [
    ({"x-arrival-ns": "123"}, 123),
    ({"server-timing": 'db;dur=2.5, arrival;desc="456"'}, 456),
    ({"server-timing": "arrival;desc=789;dur=0"}, 789),
    ({"server-timing": "total;dur=1"}, None),
    ({"x-arrival-ns": "12ab"}, None),
    ({}, None),
])
def test_the_harness_reads_either_header(headers: dict[str, str], expected: int | None) -> None:
    assert arrival_ns(headers) == expected


def test_a_response_summary_carries_arrival_and_app_time() -> None:
    resp = Response(status=409, headers={"server-timing": 'arrival;desc="42", app;dur=1.250'})
    resp.body += b'{"code":"A_RUN_ALREADY_ACTIVE"}'
    summary = resp.summary()
    assert summary["server_arrival_ns"] == 42
    assert summary["server_app_ms"] == 1.25


async def test_every_reference_response_is_stamped(pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with running_reference(make_settings(pg_dsn), provider) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        api = Api(client, ref.url, users["alice"])
        before = time.monotonic_ns()
        async with api.open_turn("holder") as holder:
            await holder.until("text-delta")
            rejected = await client.post(ref.url + "/api/ai-chat/stream",
                                         json={"chatId": holder.chat_id, "messages": [
                                             {"id": "m", "role": "user",
                                              "parts": [{"type": "text", "text": "x"}]}]},
                                         headers={"authorization": f"Bearer {users['alice']}"})
            unauthorized = await client.get(ref.url + "/api/ai-chat/runs")
            provider.release.set()
            await holder.rest()
        after = time.monotonic_ns()
    assert rejected.status_code == 409
    for response in (rejected, unauthorized):
        ns = arrival_ns({k.lower(): v for k, v in response.headers.items()})
        assert ns is not None and before <= ns <= after
