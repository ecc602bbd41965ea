"""Bounded reads of the reference: ``GET /runs`` a page at a time (``limit``, an opaque
``cursor``, ``nextCursor``), and a provider request bounded to the chat's newest messages
(``PROVIDER_HISTORY_MESSAGES``).

Real Postgres, real uvicorn; only the provider is mocked (respx, see refkit).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID, uuid4

import httpx
import jsonschema  # type: ignore[import-untyped]
import psycopg
import pytest

from raceharness.reference.faults import Fault
from raceharness.reference.openapi import OPENAPI
from raceharness.reference.store import decode_cursor, encode_cursor
from tests.refkit import Api, FakeProvider, RunningReference, make_settings, running_reference

pytestmark = pytest.mark.anyio

RUN_KEYS = {"id", "chatId", "status", "error", "stepCount", "stopRequestedAt", "startedAt",
            "finishedAt", "createdAt", "updatedAt", "leaseExpiresAt"}


@contextlib.asynccontextmanager
async def serve(dsn: str, provider: FakeProvider | None, token: str,
                **overrides: Any) -> AsyncIterator[tuple[RunningReference, Api]]:
    async with running_reference(make_settings(dsn, **overrides), provider) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        yield ref, Api(client, ref.url, token)


async def sql(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def chat_with_runs(dsn: str, n: int, *, ties: int = 0, owner: str = "alice") -> str:
    """A chat of ``owner`` with ``n`` ended runs, one a second apart, alternately succeeded
    and aborted; the newest ``ties`` of them share one created_at (the id breaks the tie)."""
    ((chat,),) = await sql(dsn, """INSERT INTO ai_chats (creator_id, title)
                                   SELECT id, 'paged' FROM ai_users WHERE name = %s
                                   RETURNING id""", (owner,))
    await sql(dsn, """INSERT INTO ai_chat_runs (chat_id, status, created_at, started_at,
                                                finished_at)
                      SELECT %(chat)s, CASE WHEN i %% 2 = 0 THEN 'succeeded' ELSE 'aborted' END,
                             t, t, t
                        FROM generate_series(1, %(n)s) AS i,
                             LATERAL (SELECT timestamptz '2025-01-01 00:00:00+00'
                                             + make_interval(secs => least(i, %(tie)s))) AS c(t)
                   """, {"chat": chat, "n": n, "tie": n - ties + 1 if ties else n + 1})
    return str(chat)


async def expected_ids(dsn: str, chat_id: str, status: str | None = None) -> list[str]:
    rows = await sql(dsn, """SELECT id FROM ai_chat_runs
                              WHERE chat_id = %s AND (%s::text IS NULL OR status = %s::text)
                              ORDER BY created_at DESC, id DESC""", (chat_id, status, status))
    return [str(r[0]) for r in rows]


async def page(api: Api, chat_id: str, **params: str) -> dict[str, Any]:
    resp = await api.runs(chat_id, **params)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"data", "success", "status"} and body["success"] is True
    assert set(body["data"]) == {"items", "nextCursor"}
    assert all(set(item) == RUN_KEYS for item in body["data"]["items"])
    schema = OPENAPI["paths"]["/api/ai-chat/runs"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": OPENAPI["components"]})
    return body["data"]  # type: ignore[no-any-return]


async def every_page(api: Api, chat_id: str, **params: str) -> list[list[str]]:
    """The ids of each page, following nextCursor to the last page (bounded)."""
    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(100):
        data = await page(api, chat_id, **params, **({"cursor": cursor} if cursor else {}))
        pages.append([r["id"] for r in data["items"]])
        cursor = data["nextCursor"]
        if cursor is None:
            return pages
    raise AssertionError("nextCursor never became null")


# -- GET /runs: pages ----------------------------------------------------------------------------

async def test_a_client_without_limit_gets_the_newest_50_and_a_cursor_for_more(
        pg_dsn: str, users: dict[str, str]) -> None:
    chat_id = await chat_with_runs(pg_dsn, 60)
    async with serve(pg_dsn, None, users["alice"]) as (_, api):
        first = await page(api, chat_id)
        rest = await page(api, chat_id, cursor=first["nextCursor"])
    ids = await expected_ids(pg_dsn, chat_id)
    assert [r["id"] for r in first["items"]] == ids[:50]
    assert isinstance(first["nextCursor"], str) and first["nextCursor"]
    assert [r["id"] for r in rest["items"]] == ids[50:]
    assert rest["nextCursor"] is None


@pytest.mark.parametrize("limit,sizes", [("3", [3, 3, 3, 2]), ("11", [11]), ("200", [11]),
                                         ("1", [1] * 11)])
async def test_pages_follow_one_another_newest_first_to_the_last(
        pg_dsn: str, users: dict[str, str], limit: str, sizes: list[int]) -> None:
    """Four runs share one created_at: the id orders them, and a page boundary among them
    neither repeats nor skips one."""
    chat_id = await chat_with_runs(pg_dsn, 11, ties=4)
    async with serve(pg_dsn, None, users["alice"]) as (_, api):
        pages = await every_page(api, chat_id, limit=limit)
    assert [len(p) for p in pages] == sizes
    assert [i for p in pages for i in p] == await expected_ids(pg_dsn, chat_id)


async def test_a_chat_with_fewer_runs_than_a_page_has_no_next_cursor(
        pg_dsn: str, users: dict[str, str]) -> None:
    chat_id = await chat_with_runs(pg_dsn, 3)
    empty = await chat_with_runs(pg_dsn, 0)
    async with serve(pg_dsn, None, users["alice"]) as (_, api):
        exact = await page(api, chat_id, limit="3")
        none = await page(api, empty)
    assert len(exact["items"]) == 3 and exact["nextCursor"] is None
    assert none == {"items": [], "nextCursor": None}


async def test_pages_filtered_by_status(pg_dsn: str, users: dict[str, str]) -> None:
    chat_id = await chat_with_runs(pg_dsn, 9)
    async with serve(pg_dsn, None, users["alice"]) as (_, api):
        pages = await every_page(api, chat_id, status="aborted", limit="2")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == await expected_ids(pg_dsn, chat_id, "aborted")


async def test_a_run_started_between_two_pages_shifts_nothing(
        pg_dsn: str, users: dict[str, str]) -> None:
    """Keyset paging: a newer run sorts before the first page; the next page goes on where
    the last one ended (offset paging would repeat a run)."""
    chat_id = await chat_with_runs(pg_dsn, 6)
    before = await expected_ids(pg_dsn, chat_id)
    async with serve(pg_dsn, FakeProvider(), users["alice"]) as (_, api):
        first = await page(api, chat_id, limit="3")
        turn = await api.turn("newer", chat_id)
        second = await page(api, chat_id, limit="3", cursor=first["nextCursor"])
        newest = await page(api, chat_id, limit="1")
    assert turn.status == 200
    assert [r["id"] for r in first["items"]] == before[:3]
    assert [r["id"] for r in second["items"]] == before[3:]
    assert second["nextCursor"] is None
    assert [r["id"] for r in newest["items"]] == [turn.run_id]


# -- GET /runs: bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("raw,shown", [
    ("0", "'0'"), ("201", "'201'"), ("-1", "'-1'"), ("1.5", "'1.5'"), ("+5", "'+5'"),
    ("1e2", "'1e2'"), ("99999999999999999999", "'99999999999999999999'"),
    # not a number: never echoed (it could be anything, a secret pasted by mistake too)
    ("abc", "a value of length 3"), (" 5", "a value of length 2"), ("٣", "a value of length 1"),
    ("5" * 60, "a value of length 60"), ("sk-SECRET", "a value of length 9")])
async def test_a_bad_limit_is_400_naming_the_field_and_value(
        pg_dsn: str, users: dict[str, str], raw: str, shown: str) -> None:
    chat_id = await chat_with_runs(pg_dsn, 1)
    async with serve(pg_dsn, None, users["alice"]) as (_, api):
        resp = await api.runs(chat_id, limit=raw)
    assert resp.status_code == 400
    assert resp.json() == {"statusCode": 400, "code": "A_BAD_REQUEST",
                           "message": f"limit: expected an integer from 1 to 200, got {shown}"}


def b64(value: Any) -> str:
    """A cursor-looking value: URL-safe base64 of the JSON of ``value``, unpadded."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize("raw", [
    "nope!", "%%%", b64([]), b64({"a": 1}), b64(["x", "y"]), b64([1, 2]),
    b64(["2025-01-01T00:00:00", str(UUID(int=0))]),  # a timestamp without its zone
    b64(["2025-01-01T00:00:00+00:00", "not-a-uuid"]),
    b64(["2025-01-01T00:00:00+00:00", str(UUID(int=0)), "extra"]),
    "x" * 300])
async def test_a_cursor_this_server_did_not_issue_is_400(
        pg_dsn: str, users: dict[str, str], raw: str) -> None:
    chat_id = await chat_with_runs(pg_dsn, 1)
    async with serve(pg_dsn, None, users["alice"]) as (_, api):
        resp = await api.runs(chat_id, cursor=raw)
    assert resp.status_code == 400
    assert resp.json() == {"statusCode": 400, "code": "A_BAD_REQUEST",
                           "message": "cursor: not a nextCursor this server issued, got a value "
                                      f"of length {len(raw)}"}


async def test_empty_limit_and_cursor_mean_the_first_default_page(
        pg_dsn: str, users: dict[str, str]) -> None:
    """As an empty ``status`` does: the parameter is absent."""
    chat_id = await chat_with_runs(pg_dsn, 52)
    async with serve(pg_dsn, None, users["alice"]) as (_, api):
        resp = await api.client.get(f"{api.base}/runs?"
                                    + urlencode({"chatId": chat_id, "limit": "", "cursor": ""}),
                                    headers={"authorization": f"Bearer {api.token}"})
    assert resp.status_code == 200
    assert [r["id"] for r in resp.json()["data"]["items"]] == (
        await expected_ids(pg_dsn, chat_id))[:50]


async def test_a_foreign_chat_is_403_whatever_the_paging(
        pg_dsn: str, users: dict[str, str]) -> None:
    chat_id = await chat_with_runs(pg_dsn, 3, owner="bob")
    async with serve(pg_dsn, None, users["alice"]) as (_, api):
        own_cursor = (await page(api, await chat_with_runs(pg_dsn, 3), limit="1"))["nextCursor"]
        resp = await api.runs(chat_id, limit="1", cursor=own_cursor)
    assert resp.status_code == 403
    assert resp.json() == {"statusCode": 403, "message": "Forbidden"}


def test_a_cursor_round_trips_its_position_exactly() -> None:
    at, run_id = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC), uuid4()
    cursor = encode_cursor(at, run_id)
    assert decode_cursor(cursor) == (at, run_id)
    assert all(c.isalnum() or c in "-_" for c in cursor)  # URL-safe as it is


# -- the provider's history ----------------------------------------------------------------------

async def test_the_provider_gets_the_newest_messages_ending_with_the_new_one(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider()
    async with serve(pg_dsn, provider, users["alice"], provider_history_messages=3) as (_, api):
        first = await api.turn("one")
        chat_id = first.chat_id
        assert chat_id is not None
        for text in ("two", "three", "four"):
            assert (await api.turn(text, chat_id)).status == 200
    sent = [c.body["messages"] for c in provider.calls]
    assert sent == [
        [{"role": "user", "content": "one"}],
        [{"role": "user", "content": "one"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "two"}],
        [{"role": "user", "content": "two"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "three"}],
        [{"role": "user", "content": "three"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "four"}],
    ]


@pytest.mark.parametrize("cap,expected", [(None, 50), (1, 1), (200, 121)])
async def test_a_long_chat_is_cut_to_the_setting(
        pg_dsn: str, users: dict[str, str], cap: int | None, expected: int) -> None:
    """120 earlier messages; the default sends the newest 50, the new user message last."""
    ((chat_id,),) = await sql(pg_dsn, """INSERT INTO ai_chats (creator_id, title)
                                         SELECT id, 'long' FROM ai_users WHERE name = 'alice'
                                         RETURNING id""")
    await sql(pg_dsn, """INSERT INTO ai_chat_messages (chat_id, role, content, status,
                                                    created_at)
                         SELECT %s, CASE WHEN i %% 2 = 1 THEN 'user' ELSE 'assistant' END,
                                'm' || i, 'completed',
                                timestamptz '2025-01-01 00:00:00+00' + make_interval(secs => i)
                           FROM generate_series(1, 120) AS i""", (chat_id,))
    provider = FakeProvider()
    overrides = {} if cap is None else {"provider_history_messages": cap}
    async with serve(pg_dsn, provider, users["alice"], **overrides) as (_, api):
        assert (await api.turn("newest", str(chat_id))).status == 200
    (call,) = provider.calls
    messages = call.body["messages"]
    earlier = [f"m{i}" for i in range(121 - (expected - 1), 121)]
    assert [m["content"] for m in messages] == [*earlier, "newest"]
    assert messages[-1] == {"role": "user", "content": "newest"}


async def test_the_provider_before_gate_fault_path_is_bounded_too(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider()
    async with serve(pg_dsn, provider, users["alice"], provider_history_messages=2,
                     faults=frozenset({Fault.PROVIDER_BEFORE_GATE})) as (_, api):
        first = await api.turn("one")
        assert first.chat_id is not None
        assert (await api.turn("two", first.chat_id)).status == 200
    assert provider.calls[-1].body["messages"] == [
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "two"}]
