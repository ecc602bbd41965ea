"""Rejected requests (protocol.md §1, §2, §4): the documented 4xx body, no rows, no provider call.

Most cases run against one reference server per module, served from a background thread with
its own event loop, so that the parametrised cases and the hypothesis test (a sync ``@given``)
share it; each test counts rows and provider calls before and after its own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from raceharness.reference.app import create_app
from raceharness.reference.auth import ensure_user_sync
from raceharness.reference.server import ReferenceServer
from raceharness.reference.settings import Settings
from raceharness.stack.postgres import PostgresCluster
from tests.refkit import Api, FakeProvider, make_settings, parse_sse, running_reference, turn_body

TOKENS = {"alice": "tok-bad-input-alice-5e1f", "bob": "tok-bad-input-bob-77c2"}
SECRET = "sk-live-SECRET-do-not-echo-8f3a"
UNAUTHORIZED = {"statusCode": 401, "message": "Unauthorized"}
FORBIDDEN = {"statusCode": 403, "message": "Forbidden"}
TOO_LARGE = {"statusCode": 413, "message": "Request body exceeds 1048576 bytes",
             "code": "A_PAYLOAD_TOO_LARGE"}
TABLES = ("ai_chats", "ai_chat_runs", "ai_chat_messages")


def bad_request(message: str) -> dict[str, Any]:
    return {"statusCode": 400, "message": message, "code": "A_BAD_REQUEST"}


def count_rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in TABLES}


# -- a reference server in a background thread ---------------------------------------------------

class _ThreadServer(ReferenceServer):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class World:
    """The module's server and the rows the cases refer to."""

    url: str
    dsn: str
    settings: Settings
    provider: FakeProvider
    alice_chat: str         # alice's chat with one ended run
    alice_run: str
    bob_chat: str           # bob's chat with one ended run
    bob_run: str
    deleted_chat: str       # alice's soft-deleted chat
    conn: psycopg.Connection[Any]  # autocommit, for the row counts

    def headers(self, who: str = "alice") -> dict[str, str]:
        return {"authorization": f"Bearer {TOKENS[who]}"}

    def snapshot(self) -> tuple[dict[str, int], int]:
        return count_rows(self.conn), self.provider.route.call_count


@contextlib.contextmanager
def threaded_reference(settings_: Settings, provider: FakeProvider) -> Iterator[str]:
    """Serve the reference on a pre-bound socket from a thread with its own event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    server = _ThreadServer(uvicorn.Config(
        create_app(settings_, provider_transport=provider.transport), lifespan="on",
        log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="reference-under-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
    assert not thread.is_alive(), "the reference server did not shut down"
    assert not failure, failure


def _insert_chat(conn: psycopg.Connection[Any], owner: str, *, deleted: bool = False,
                 with_run: bool = True) -> tuple[str, str | None]:
    row = conn.execute(
        "INSERT INTO ai_chats (creator_id, title, deleted_at) "
        "SELECT user_id, 'setup', CASE WHEN %s THEN now() END FROM ai_api_tokens "
        "WHERE token_hash = sha256(convert_to(%s, 'UTF8')) RETURNING id",
        (deleted, TOKENS[owner])).fetchone()
    assert row is not None
    chat_id = str(row[0])
    if not with_run:
        return chat_id, None
    run = conn.execute(
        "INSERT INTO ai_chat_runs (chat_id, status, started_at, finished_at) "
        "VALUES (%s, 'succeeded', now(), now()) RETURNING id", (chat_id,)).fetchone()
    assert run is not None
    return chat_id, str(run[0])


@pytest.fixture(scope="module")
def world(pg_cluster: PostgresCluster, pg_template: str) -> Iterator[World]:
    name = f"t_bad_{uuid.uuid4().hex[:10]}"
    dsn = pg_cluster.create_database(name, template=pg_template)
    try:
        for who, token in TOKENS.items():
            ensure_user_sync(dsn, who, token)
        with psycopg.connect(dsn) as conn:
            alice_chat, alice_run = _insert_chat(conn, "alice")
            bob_chat, bob_run = _insert_chat(conn, "bob")
            deleted_chat, _ = _insert_chat(conn, "alice", deleted=True, with_run=False)
        assert alice_run is not None and bob_run is not None
        settings_ = make_settings(dsn)
        provider = FakeProvider()
        with threaded_reference(settings_, provider) as url, \
                psycopg.connect(dsn, autocommit=True) as conn:
            yield World(url=url, dsn=dsn, settings=settings_, provider=provider,
                        alice_chat=alice_chat, alice_run=alice_run, bob_chat=bob_chat,
                        bob_run=bob_run, deleted_chat=deleted_chat, conn=conn)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15) as c:
        yield c


@contextlib.contextmanager
def writes_nothing(world: World) -> Iterator[None]:
    """The block adds no row to any chat table and makes no provider call."""
    rows, calls = world.snapshot()
    yield
    assert world.snapshot() == (rows, calls)


def stream_url(world: World) -> str:
    return world.url + "/api/ai-chat/stream"


# -- 401 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("authorization", [
    None, "Bearer not-a-known-token", f"Basic {TOKENS['alice']}", "Bearer", TOKENS["alice"],
    f"Bearer {TOKENS['alice']}x", "Bearer " + "t" * 5000,
], ids=["missing", "wrong-token", "basic-scheme", "bearer-bare", "no-scheme", "token-prefix",
        "token-huge"])
def test_stream_without_a_valid_bearer_token_is_401(world: World, client: httpx.Client,
                                                    authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    with writes_nothing(world):
        resp = client.post(stream_url(world), json=turn_body("hi"), headers=headers)
    assert resp.status_code == 401
    assert resp.json() == UNAUTHORIZED


@pytest.mark.parametrize("method,path", [
    ("POST", "/api/ai-chat/stop"), ("POST", "/api/ai-chat/run"), ("GET", "/api/ai-chat/runs"),
])
def test_other_routes_without_a_token_are_401(world: World, client: httpx.Client, method: str,
                                              path: str) -> None:
    with writes_nothing(world):
        if method == "GET":
            resp = client.get(world.url + path, params={"chatId": world.alice_chat})
        else:
            resp = client.post(world.url + path, json={"chatId": world.alice_chat})
    assert resp.status_code == 401
    assert resp.json() == UNAUTHORIZED


# -- 400: the body --------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,message", [
    (b'{"messages": [', "body: not valid JSON"),
    (b'{"messages": "\xff\xfe"}', "body: not valid JSON"),
    (b"[1, 2]", "body: expected a JSON object, got array"),
    (b'"' + SECRET.encode() + b'"', "body: expected a JSON object, got string"),
    (b"42", "body: expected a JSON object, got number"),
    (b"null", "body: expected a JSON object, got null"),
    (b"", "body: expected a JSON object, got an empty body"),
    (b" \n ", "body: expected a JSON object, got an empty body"),
    (b"[" * 100_000, "body: not valid JSON"),
], ids=["malformed", "invalid-utf8", "array", "string", "number", "null", "empty", "blank",
        "deeply-nested"])
def test_stream_body_that_is_not_a_json_object_is_400(world: World, client: httpx.Client,
                                                      raw: bytes, message: str) -> None:
    with writes_nothing(world):
        resp = client.post(stream_url(world), content=raw,
                           headers={**world.headers(), "content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json() == bad_request(message)
    assert SECRET not in resp.text


def _msg(role: Any = "user", parts: Any = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": role, **extra}
    message["parts"] = [{"type": "text", "text": "hello"}] if parts is None else parts
    return message


def _text(text: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]


BAD_TURNS: dict[str, tuple[dict[str, Any], str]] = {
    "messages-missing": ({"chatId": None}, "messages: required"),
    "messages-null": ({"messages": None}, "messages: required"),
    "messages-string": ({"messages": SECRET}, "messages: expected an array, got string"),
    "messages-object": ({"messages": {"role": "user", "secret": SECRET}},
                        "messages: expected an array, got object"),
    "item-string": ({"messages": [SECRET]}, "messages[0]: expected an object, got string"),
    "item-array": ({"messages": [_msg(), [SECRET]]},
                   "messages[1]: expected an object, got array"),
    "role-missing": ({"messages": [{"parts": _text(SECRET)}]},
                     "messages[0].role: expected a string, got null"),
    "role-number": ({"messages": [_msg(role=8675309)]},
                    "messages[0].role: expected a string, got number"),
    "role-object": ({"messages": [_msg(role={"secret": SECRET})]},
                    "messages[0].role: expected a string, got object"),
    "parts-string": ({"messages": [_msg(parts=SECRET)]},
                     "messages[0].parts: expected an array, got string"),
    "part-string": ({"messages": [_msg(parts=[SECRET])]},
                    "messages[0].parts[0]: expected an object, got string"),
    "text-number": ({"messages": [_msg(parts=_text(8675309))]},
                    "messages[0].parts[0].text: expected a string, got number"),
    "text-bool": ({"messages": [_msg(), _msg(parts=[*_text("ok"), *_text(True)])]},
                  "messages[1].parts[1].text: expected a string, got boolean"),
    "text-missing": ({"messages": [_msg(parts=[{"type": "text"}])]},
                     "messages[0].parts[0].text: expected a string, got null"),
    "no-user-message": ({"messages": [_msg(role="assistant", parts=_text(SECRET))]},
                        "messages: no user message with non-empty text"),
    "no-messages": ({"messages": []}, "messages: no user message with non-empty text"),
    "user-text-empty": ({"messages": [_msg(parts=_text(""))]},
                        "messages: no user message with non-empty text"),
    "user-text-whitespace": ({"messages": [_msg(parts=_text(" \n\t\u3000 "))]},
                             "messages: no user message with non-empty text"),
    "user-no-text-parts": ({"messages": [_msg(parts=[{"type": "image", "url": SECRET}])]},
                           "messages: no user message with non-empty text"),
    "last-user-empty": ({"messages": [_msg(parts=_text(SECRET)), _msg(role="assistant"),
                                      _msg(parts=_text("  "))]},
                        "messages: no user message with non-empty text"),
    "text-nul": ({"messages": [_msg(parts=_text(SECRET + "\x00tail"))]},
                 "messages[0].parts[0].text: contains a NUL character"),
    "assistant-text-nul": ({"messages": [_msg(role="assistant", parts=_text("a\x00")), _msg()]},
                           "messages[0].parts[0].text: contains a NUL character"),
    "chat-id-number": ({**turn_body("hi"), "chatId": 8675309},
                       "chatId: expected a uuid string, got number"),
    "chat-id-not-uuid": ({**turn_body("hi"), "chatId": "not-a-uuid-" + SECRET},
                         "chatId: not a valid uuid"),
    "chat-id-object": ({**turn_body("hi"), "chatId": {"id": SECRET}},
                       "chatId: expected a uuid string, got object"),
}


@pytest.mark.parametrize("case", list(BAD_TURNS))
def test_stream_bad_turn_is_400_naming_the_field_never_the_value(
        world: World, client: httpx.Client, case: str) -> None:
    body, message = BAD_TURNS[case]
    with writes_nothing(world):
        resp = client.post(stream_url(world), json=body, headers=world.headers())
    assert resp.status_code == 400
    assert resp.json() == bad_request(message)
    assert SECRET not in resp.text
    assert "8675309" not in resp.text


def test_stream_user_text_with_a_lone_surrogate_is_400(world: World,
                                                       client: httpx.Client) -> None:
    """JSON may escape a lone surrogate (``\\ud800``); it cannot be stored as UTF-8 text."""
    raw = json.dumps(turn_body("hello \ud800 world", world.alice_chat)).encode()
    assert b"\\ud800" in raw
    with writes_nothing(world):
        resp = client.post(stream_url(world), content=raw,
                           headers={**world.headers(), "content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json() == bad_request(
        "messages[0].parts[0].text: contains a lone surrogate (not valid Unicode)")
    # the chat is still free: a proper turn on it succeeds
    ok = client.post(stream_url(world), json=turn_body("after", world.alice_chat),
                     headers=world.headers())
    assert ok.status_code == 200
    assert [f if f == "[DONE]" else f["type"] for f in parse_sse(ok.text)][-2:] == [
        "finish", "[DONE]"]


# -- 413 ------------------------------------------------------------------------------------------

BIG_TEXT = "x" * (1024 * 1024 + 100 * 1024)  # 1.1 MiB of user text


def test_stream_oversize_body_with_content_length_is_413(world: World,
                                                        client: httpx.Client) -> None:
    with writes_nothing(world):
        resp = client.post(stream_url(world), json=turn_body(BIG_TEXT), headers=world.headers())
    assert resp.request.headers["content-length"] == str(len(resp.request.content))
    assert resp.status_code == 413
    assert resp.json() == TOO_LARGE


def test_stream_oversize_chunked_body_is_413(world: World, client: httpx.Client) -> None:
    raw = json.dumps(turn_body(BIG_TEXT)).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 64 * 1024):
            yield raw[i:i + 64 * 1024]

    with writes_nothing(world):
        resp = client.post(stream_url(world), content=chunks(),
                           headers={**world.headers(), "content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert resp.request.headers["transfer-encoding"] == "chunked"
    assert resp.status_code == 413
    assert resp.json() == TOO_LARGE


# -- 403: unknown, foreign and deleted chats are indistinguishable -------------------------------

def test_stream_on_foreign_unknown_or_deleted_chat_is_the_same_403(world: World,
                                                                  client: httpx.Client) -> None:
    answers = {}
    with writes_nothing(world):
        for case, chat_id in {"foreign": world.bob_chat, "unknown": str(uuid.uuid4()),
                              "deleted": world.deleted_chat}.items():
            resp = client.post(stream_url(world), json=turn_body("hi", chat_id),
                               headers=world.headers())
            answers[case] = (resp.status_code, resp.content, resp.headers["content-type"])
    expected = (403, json.dumps(FORBIDDEN, separators=(",", ":")).encode(), "application/json")
    assert answers == {"foreign": expected, "unknown": expected, "deleted": expected}


# -- /stop, /run, /runs ---------------------------------------------------------------------------

def _stop_cases(w: World) -> dict[str, tuple[dict[str, Any], int, dict[str, Any]]]:
    unknown = str(uuid.uuid4())
    return {
        "foreign-run": ({"runId": w.bob_run}, 403, FORBIDDEN),
        "unknown-run": ({"runId": unknown}, 403, FORBIDDEN),
        "foreign-chat": ({"chatId": w.bob_chat}, 403, FORBIDDEN),
        "unknown-chat": ({"chatId": unknown}, 403, FORBIDDEN),
        "deleted-chat": ({"chatId": w.deleted_chat}, 403, FORBIDDEN),
        "own-run-foreign-chat": ({"runId": w.alice_run, "chatId": w.bob_chat}, 403, FORBIDDEN),
        "foreign-run-own-chat": ({"runId": w.bob_run, "chatId": w.alice_chat}, 403, FORBIDDEN),
        "neither": ({}, 400, bad_request("runId or chatId: one is required")),
        "both-null": ({"runId": None, "chatId": None}, 400,
                      bad_request("runId or chatId: one is required")),
        "run-not-uuid": ({"runId": "nope-" + SECRET}, 400, bad_request("runId: not a valid uuid")),
        "run-number": ({"runId": 8675309}, 400,
                       bad_request("runId: expected a uuid string, got number")),
        "chat-not-uuid": ({"chatId": "nope-" + SECRET}, 400,
                          bad_request("chatId: not a valid uuid")),
    }


STOP_CASES = [
    "foreign-run", "unknown-run", "foreign-chat", "unknown-chat", "deleted-chat",
    "own-run-foreign-chat", "foreign-run-own-chat", "neither", "both-null", "run-not-uuid",
    "run-number", "chat-not-uuid"]


def runs_state(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, status, stop_requested_at, updated_at FROM ai_chat_runs "
                            "ORDER BY id").fetchall()


@pytest.mark.parametrize("case", STOP_CASES)
def test_stop_rejections(world: World, client: httpx.Client, case: str) -> None:
    body, status, expected = _stop_cases(world)[case]
    before = runs_state(world.dsn)
    with writes_nothing(world):
        resp = client.post(world.url + "/api/ai-chat/stop", json=body, headers=world.headers())
    assert (resp.status_code, resp.json()) == (status, expected)
    assert SECRET not in resp.text
    assert runs_state(world.dsn) == before


def test_stop_unknown_and_foreign_answers_are_byte_identical(world: World,
                                                            client: httpx.Client) -> None:
    url = world.url + "/api/ai-chat/stop"
    bodies = [client.post(url, json=b, headers=world.headers()) for b in (
        {"runId": world.bob_run}, {"runId": str(uuid.uuid4())},
        {"chatId": world.bob_chat}, {"chatId": str(uuid.uuid4())})]
    assert {(r.status_code, r.content) for r in bodies} == {
        (403, b'{"statusCode":403,"message":"Forbidden"}')}


@pytest.mark.parametrize("case", ["missing", "null", "not-uuid", "number", "foreign", "unknown",
                                  "deleted", "body-array"])
def test_latest_run_rejections(world: World, client: httpx.Client, case: str) -> None:
    body: Any = {
        "missing": {}, "null": {"chatId": None}, "not-uuid": {"chatId": "x-" + SECRET},
        "number": {"chatId": 8675309}, "foreign": {"chatId": world.bob_chat},
        "unknown": {"chatId": str(uuid.uuid4())}, "deleted": {"chatId": world.deleted_chat},
        "body-array": [world.alice_chat],
    }[case]
    expected = {
        "missing": (400, bad_request("chatId: required")),
        "null": (400, bad_request("chatId: required")),
        "not-uuid": (400, bad_request("chatId: not a valid uuid")),
        "number": (400, bad_request("chatId: expected a uuid string, got number")),
        "body-array": (400, bad_request("body: expected a JSON object, got array")),
    }.get(case, (403, FORBIDDEN))
    with writes_nothing(world):
        resp = client.post(world.url + "/api/ai-chat/run", json=body, headers=world.headers())
    assert (resp.status_code, resp.json()) == expected
    assert SECRET not in resp.text


@pytest.mark.parametrize("case", ["missing", "empty", "not-uuid", "bad-status", "foreign",
                                  "foreign-with-status", "unknown", "deleted"])
def test_list_runs_rejections(world: World, client: httpx.Client, case: str) -> None:
    params: dict[str, str] = {
        "missing": {}, "empty": {"chatId": ""}, "not-uuid": {"chatId": "x-" + SECRET},
        "bad-status": {"chatId": world.alice_chat, "status": "done-" + SECRET},
        "foreign": {"chatId": world.bob_chat},
        "foreign-with-status": {"chatId": world.bob_chat, "status": "succeeded"},
        "unknown": {"chatId": str(uuid.uuid4())}, "deleted": {"chatId": world.deleted_chat},
    }[case]
    expected = {
        "missing": (400, bad_request("chatId: required")),
        "empty": (400, bad_request("chatId: not a valid uuid")),
        "not-uuid": (400, bad_request("chatId: not a valid uuid")),
        "bad-status": (400, bad_request(
            "status: expected one of pending, running, succeeded, failed, aborted")),
    }.get(case, (403, FORBIDDEN))
    with writes_nothing(world):
        resp = client.get(world.url + "/api/ai-chat/runs", params=params,
                          headers=world.headers())
    assert (resp.status_code, resp.json()) == expected
    assert SECRET not in resp.text


def test_own_routes_still_answer_after_the_rejections(world: World,
                                                     client: httpx.Client) -> None:
    """The control case: the same requests by bob on his own chat and run succeed."""
    runs = client.get(world.url + "/api/ai-chat/runs", params={"chatId": world.bob_chat},
                      headers=world.headers("bob"))
    latest = client.post(world.url + "/api/ai-chat/run", json={"chatId": world.bob_chat},
                         headers=world.headers("bob"))
    stop = client.post(world.url + "/api/ai-chat/stop", json={"runId": world.bob_run},
                       headers=world.headers("bob"))
    assert runs.status_code == 200 and [r["id"] for r in runs.json()["data"]["items"]] == [
        world.bob_run]
    assert latest.status_code == 200 and latest.json()["data"]["run"]["id"] == world.bob_run
    assert stop.json() == {"data": {"stopped": False}, "success": True, "status": 200}


# -- routing --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", "/api/ai-chat/nope"), ("POST", "/api/ai-chat/streams"), ("GET", "/"),
])
def test_unknown_route_is_a_json_404(world: World, client: httpx.Client, method: str,
                                     path: str) -> None:
    with writes_nothing(world):
        resp = client.request(method, world.url + path, headers=world.headers())
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"statusCode": 404, "message": "Not Found"}


@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/api/ai-chat/stream", {"POST"}),
    ("PUT", "/api/ai-chat/stop", {"POST"}),
    ("POST", "/api/ai-chat/runs", {"GET", "HEAD"}),
    ("DELETE", "/healthz", {"GET", "HEAD"}),
])
def test_wrong_method_is_a_json_405_with_allow(world: World, client: httpx.Client, method: str,
                                               path: str, allowed: set[str]) -> None:
    with writes_nothing(world):
        resp = client.request(method, world.url + path, headers=world.headers())
    assert resp.status_code == 405
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"statusCode": 405, "message": "Method Not Allowed"}
    assert set(resp.headers["allow"].replace(" ", "").split(",")) == allowed


# -- health and metrics ---------------------------------------------------------------------------

def test_healthz_answers_ok(world: World, client: httpx.Client) -> None:
    resp = client.get(world.url + "/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "instance": world.settings.instance_id, "faults": [],
                           "autonomousRuns": False}


METRIC_FAMILIES = {
    "ai_chat_runs_started_total": "counter",
    "ai_chat_run_conflicts_total": "counter",
    "ai_chat_runs_ended_total": "counter",
    "ai_chat_provider_calls_total": "counter",
    "ai_chat_runs_reaped_total": "counter",
    "ai_chat_run_begin_failures_total": "counter",
    "ai_chat_active_runs": "gauge",
}
POOL_FAMILIES = {
    "ai_chat_db_pool_pool_size": "gauge",
    "ai_chat_db_pool_pool_available": "gauge",
    "ai_chat_db_pool_requests_waiting": "gauge",
    "ai_chat_db_pool_requests_num_total": "counter",
    "ai_chat_db_pool_requests_queued_total": "counter",
    "ai_chat_db_pool_requests_wait_ms_total": "counter",
    "ai_chat_db_pool_connections_num_total": "counter",
}


def parse_prometheus(text: str) -> tuple[dict[str, str], dict[str, float]]:
    """(family -> type, sample with labels -> value) of a Prometheus text exposition."""
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ")
            types[family] = kind
        elif line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return types, samples


@pytest.mark.anyio
async def test_metrics_lists_every_family_of_the_protocol(pg_dsn: str,
                                                         users: dict[str, str]) -> None:
    """On a fresh server: every family of protocol §4 with its labels, all zero; one rejected
    turn moves no counter. The connection pool's figures come beside them."""
    async with running_reference(make_settings(pg_dsn), FakeProvider()) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        await client.post(ref.url + "/api/ai-chat/stream", json={"messages": []},
                          headers={"authorization": f"Bearer {users['alice']}"})
        resp = await client.get(ref.url + "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    types, samples = parse_prometheus(resp.text)
    assert types == METRIC_FAMILIES | POOL_FAMILIES
    pool = {name: samples.pop(name) for name in POOL_FAMILIES}
    assert pool["ai_chat_db_pool_pool_size"] >= 2  # make_settings: min 2
    assert pool["ai_chat_db_pool_connections_num_total"] >= pool["ai_chat_db_pool_pool_size"]
    assert pool["ai_chat_db_pool_requests_waiting"] == 0
    assert samples == {
        "ai_chat_runs_started_total": 0,
        'ai_chat_run_conflicts_total{path="gate"}': 0,
        'ai_chat_run_conflicts_total{path="precheck"}': 0,
        'ai_chat_runs_ended_total{status="aborted"}': 0,
        'ai_chat_runs_ended_total{status="failed"}': 0,
        'ai_chat_runs_ended_total{status="succeeded"}': 0,
        "ai_chat_provider_calls_total": 0,
        "ai_chat_runs_reaped_total": 0,
        "ai_chat_run_begin_failures_total": 0,
        "ai_chat_active_runs": 0,
    }


# -- a foreign stop on a live run has no effect ----------------------------------------------------

@pytest.mark.anyio
async def test_foreign_stop_on_a_live_run_is_403_and_the_run_keeps_going(
        pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    async with running_reference(make_settings(pg_dsn), provider) as ref, \
            httpx.AsyncClient(timeout=10) as client:
        alice = Api(client, ref.url, users["alice"])
        bob = Api(client, ref.url, users["bob"])
        async with alice.open_turn("held") as turn:
            await turn.until("text-delta")
            by_run = await bob.stop(runId=turn.run_id)
            by_chat = await bob.stop(chatId=turn.chat_id)
            by_both = await bob.stop(runId=turn.run_id, chatId=turn.chat_id)
            runs = (await alice.runs(turn.chat_id)).json()["data"]["items"]
            live = uuid.UUID(turn.run_id) in ref.runtime.registry.runs
            disconnected = provider.calls[0].disconnected.is_set()
            provider.release.set()
            tail = await turn.rest()
        final = (await alice.latest(turn.chat_id)).json()["data"]["run"]
    for resp in (by_run, by_chat, by_both):
        assert (resp.status_code, resp.json()) == (403, FORBIDDEN)
    assert [(r["id"], r["status"], r["stopRequestedAt"]) for r in runs] == [
        (turn.run_id, "running", None)]
    assert live and not disconnected
    assert [f if f == "[DONE]" else f["type"] for f in tail][-2:] == ["finish", "[DONE]"]
    assert (final["status"], final["stopRequestedAt"], final["error"]) == (
        "succeeded", None, None)


# -- arbitrary JSON never makes a 5xx --------------------------------------------------------------

any_text = st.text(st.characters(blacklist_categories=()), max_size=12)  # surrogates too
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12)
# bodies shaped like a turn, with arbitrary values where the fields go, reach the deeper checks
OWN_CHAT = "<alice's chat>"  # replaced by the id of alice's chat in the test
part_values = (st.fixed_dictionaries({"type": st.just("text"), "text": any_text})
               | st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]) | json_values},
                                       optional={"text": any_text | json_values})
               | json_values)
message_values = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]) | json_values,
     "parts": st.lists(part_values, max_size=3) | json_values},
    optional={"id": json_values}) | json_values
turn_like = st.fixed_dictionaries(
    {"messages": st.lists(message_values, max_size=3) | json_values},
    optional={"chatId": st.none() | st.just(OWN_CHAT) | st.uuids().map(str) | json_values})
# text made of the characters that trouble storage and validation (NUL, lone surrogates, blanks)
tricky_text = st.lists(st.sampled_from(["a", " ", "\n", "\x00", "\ud800", "\udfff", "\u00e9",
                                        "\u200b", "\U0001f600"]),
                       min_size=1, max_size=6).map("".join)
# and bodies that are nearly (often exactly) a valid turn: some get 200 or 403
near_valid = st.fixed_dictionaries(
    {"messages": st.tuples(st.lists(message_values, max_size=2),
                           st.text(min_size=1, max_size=12) | tricky_text)
     .map(lambda t: [*t[0], {"role": "user", "parts": [{"type": "text", "text": t[1]}]}])},
    optional={"chatId": st.none() | st.just(OWN_CHAT) | st.uuids().map(str),
              "extra": json_values})
bodies = json_values | turn_like | near_valid


def assert_well_formed_stream(raw: str) -> None:
    frames = parse_sse(raw)
    assert frames[0]["type"] == "start"
    assert set(frames[0]["messageMetadata"]) == {"chatId", "runId"}
    terminals = [f for f in frames[1:-1] if f["type"] in ("finish", "error", "abort")]
    assert terminals == [frames[-2]] and frames[-1] == "[DONE]"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_arbitrary_json_bodies_get_a_json_4xx_never_a_5xx(world: World, client: httpx.Client,
                                                          body: Any) -> None:
    if isinstance(body, dict) and body.get("chatId") == OWN_CHAT:
        body = {**body, "chatId": world.alice_chat}
    rows, calls = world.snapshot()
    raw = json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as \\udxxx escapes
    resp = client.post(stream_url(world), content=raw,
                       headers={**world.headers(), "content-type": "application/json"})
    event(f"HTTP {resp.status_code}")
    if resp.status_code == 200:
        assert_well_formed_stream(resp.text)
        return
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/json"
    answer = resp.json()
    assert answer["statusCode"] == resp.status_code
    assert isinstance(answer["message"], str) and answer["message"]
    assert world.snapshot() == (rows, calls)
