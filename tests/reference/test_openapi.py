"""GET /openapi.json describes every route, and fuzzing every route never makes a 5xx.

Each test serves the reference on a fresh database from a background thread (the helper of
test_bad_input.py), so a sync hypothesis test can drive it over HTTP; rows and provider calls
are counted before and after every request.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import quote, quote_from_bytes, urlencode

import httpx
import jsonschema  # type: ignore[import-untyped]
import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from raceharness.reference.app import create_app
from raceharness.reference.openapi import OPENAPI
from raceharness.reference.schema import RUN_STATUSES
from raceharness.reference.store import MESSAGE_WIRE_KEYS, RUN_WIRE_KEYS, _camel, encode_cursor
from tests.reference.test_bad_input import (
    assert_well_formed_stream,
    count_rows,
    json_values,
    threaded_reference,
)
from tests.refkit import FakeProvider, make_settings, turn_body

FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


@dataclass
class Served:
    url: str
    provider: FakeProvider
    conn: psycopg.Connection[Any]
    client: httpx.Client
    tokens: dict[str, str]
    ids: list[str]  # alice's chat and run, bob's chat and run: targets for id fields

    def snapshot(self) -> tuple[dict[str, int], int]:
        return count_rows(self.conn), self.provider.route.call_count


@pytest.fixture
def served(pg_dsn: str, users: dict[str, str]) -> Iterator[Served]:
    ids: list[str] = []
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for who in ("alice", "bob"):
            chat = conn.execute(
                "INSERT INTO ai_chats (creator_id, title) SELECT user_id, 'setup' "
                "FROM ai_api_tokens WHERE token_hash = sha256(convert_to(%s, 'UTF8')) "
                "RETURNING id", (users[who],)).fetchone()
            assert chat is not None
            run = conn.execute(
                "INSERT INTO ai_chat_runs (chat_id, status, started_at, finished_at) "
                "VALUES (%s, 'succeeded', now(), now()) RETURNING id", (chat[0],)).fetchone()
            assert run is not None
            ids += [str(chat[0]), str(run[0])]
        provider = FakeProvider()
        with threaded_reference(make_settings(pg_dsn), provider) as url, \
                httpx.Client(timeout=15) as client:
            yield Served(url, provider, conn, client, users, ids)


# -- the document --------------------------------------------------------------------------------

def _app_routes(pg_dsn: str) -> set[tuple[str, str]]:
    app = create_app(make_settings(pg_dsn))  # routes only: the lifespan never runs
    return {(route.path, method.lower()) for route in app.routes
            for method in route.methods or () if method != "HEAD"}  # type: ignore[attr-defined]


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_json_describes_exactly_the_app_routes(served: Served, pg_dsn: str) -> None:
    resp = served.client.get(served.url + "/openapi.json")  # no token needed
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    doc = resp.json()
    assert doc == json.loads(json.dumps(OPENAPI))
    assert doc["openapi"].startswith("3.1.")
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert documented == _app_routes(pg_dsn)
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {"type": "http",
                                                                  "scheme": "bearer"}
    schemas = doc["components"]["schemas"]
    for ref in set(_refs(doc)):  # every $ref is internal and resolves
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref
    assert set(schemas["Run"]["properties"]) == {_camel(k) for k in RUN_WIRE_KEYS}
    assert set(schemas["Message"]["properties"]) == {_camel(k) for k in MESSAGE_WIRE_KEYS}
    assert set(schemas["Error"]["properties"]) == {"statusCode", "message", "code",
                                                   "activeRunId"}


# -- fuzz: never a 5xx ----------------------------------------------------------------------------

FIELDS = {
    "/api/ai-chat/stream": ("chatId", "messages"),
    "/api/ai-chat/stop": ("runId", "chatId"),
    "/api/ai-chat/run": ("chatId",),
}
ID = "<id>"  # stands for one of the seeded ids, picked by index


def _field_value(field: str) -> st.SearchStrategy[Any]:
    generic = json_values | st.uuids().map(str)
    if field != "messages":  # an id field: often one of the seeded ids (own or foreign)
        return st.tuples(st.just(ID), st.integers(0, 3)) | generic
    user_turn = st.text(min_size=1, max_size=8).map(
        lambda text: [{"role": "user", "parts": [{"type": "text", "text": text}]}])
    messages = st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]) | json_values,
         "parts": st.lists(st.fixed_dictionaries(
             {"type": st.just("text"), "text": st.text(max_size=8) | json_values}),
             max_size=2) | json_values}), max_size=2)
    return user_turn | messages | generic


def _shaped(path: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={f: _field_value(f) for f in FIELDS[path]})


def _resolve(value: Any, ids: list[str]) -> Any:
    if isinstance(value, tuple):
        return ids[value[1]]
    return value


who_strategy = st.sampled_from(["alice", "alice", "bob", None])


def _headers(served: Served, who: str | None) -> dict[str, str]:
    return {} if who is None else {"authorization": f"Bearer {served.tokens[who]}"}


def _check_answer(served: Served, path: str, method: str, resp: httpx.Response) -> None:
    event(f"HTTP {resp.status_code}")
    assert resp.status_code < 500, (resp.status_code, resp.text)
    documented = OPENAPI["paths"][path][method]["responses"]
    assert str(resp.status_code) in documented, (resp.status_code, resp.text)
    if resp.status_code == 200:
        if path == "/api/ai-chat/stream":
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert_well_formed_stream(resp.text)
        else:
            body = resp.json()
            assert (body["success"], body["status"]) == (True, 200)
            schema = documented["200"]["content"]["application/json"]["schema"]
            jsonschema.validate(body, {**schema, "components": OPENAPI["components"]})
        return
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["statusCode"] == resp.status_code
    assert isinstance(body["message"], str) and body["message"]


@pytest.mark.parametrize("path", list(FIELDS))
def test_post_routes_never_5xx_on_arbitrary_json(served: Served, path: str) -> None:
    @FUZZ
    @given(body=st.one_of(json_values, _shaped(path), _shaped(path)), who=who_strategy)
    def fuzz(body: Any, who: str | None) -> None:
        if isinstance(body, dict):
            body = {k: _resolve(v, served.ids) for k, v in body.items()}
        before = served.snapshot()
        resp = served.client.post(served.url + path, content=json.dumps(body).encode(),
                                  headers={**_headers(served, who),
                                           "content-type": "application/json"})
        _check_answer(served, path, "post", resp)
        if path != "/api/ai-chat/stream" or resp.status_code != 200:
            assert served.snapshot() == before  # rejected: no row, no provider call

    fuzz()


query_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
limits = st.sampled_from(["1", "50", "200", "0", "201", "-1", "1.5"]) | st.integers().map(str)
cursors = st.builds(encode_cursor, st.datetimes(timezones=st.just(UTC)), st.uuids())
query_params = st.dictionaries(
    st.sampled_from(["chatId", "status", "limit", "cursor"]) | query_text,
    query_text | st.sampled_from(RUN_STATUSES) | st.uuids().map(str)
    | st.tuples(st.just(ID), st.integers(0, 3)) | limits | cursors,
    max_size=4)
chat_query = st.fixed_dictionaries(  # a seeded chat (alice's or bob's), maybe a status, a page
    {"chatId": st.tuples(st.just(ID), st.sampled_from([0, 2]))},
    optional={"status": st.sampled_from(RUN_STATUSES) | query_text,
              "limit": limits | query_text, "cursor": cursors | query_text})
# any text, percent-encoded only where a URL cannot carry it raw (its '%', '&', '=' stay)
raw_queries = query_text.map(lambda t: quote(t, safe="=&+%/?;")) | st.binary(max_size=24).map(
    lambda b: "chatId=" + quote_from_bytes(b))


def test_get_runs_never_5xx_on_arbitrary_query_strings(served: Served) -> None:
    @FUZZ
    @given(query=st.one_of(raw_queries, query_params, chat_query, chat_query),
           who=who_strategy)
    def fuzz(query: Any, who: str | None) -> None:
        if isinstance(query, dict):
            query = urlencode({k: _resolve(v, served.ids) for k, v in query.items()})
        before = served.snapshot()
        resp = served.client.get(f"{served.url}/api/ai-chat/runs?{query}",
                                 headers=_headers(served, who))
        _check_answer(served, "/api/ai-chat/runs", "get", resp)
        assert served.snapshot() == before

    fuzz()


def test_a_valid_turn_streams_on_the_served_reference(served: Served) -> None:
    """Sanity: the served reference takes a proper turn, so a 200 is reachable."""
    resp = served.client.post(served.url + "/api/ai-chat/stream",
                              json=turn_body("hi", served.ids[0]),
                              headers=_headers(served, "alice"))
    assert resp.status_code == 200
    assert_well_formed_stream(resp.text)
    assert uuid.UUID(resp.headers["x-run-id"])
