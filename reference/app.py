"""The Starlette application: routes of protocol.md §2-§4 and the instance's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import select
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from raceharness.reference import store
from raceharness.reference.arrival import ArrivalTimestamps
from raceharness.reference.auth import Authenticator, bearer_token
from raceharness.reference.faults import Fault
from raceharness.reference.gate import Gate
from raceharness.reference.gate_sql import prepare_connection
from raceharness.reference.metrics import Metrics
from raceharness.reference.openapi import OPENAPI
from raceharness.reference.provider import ProviderClient
from raceharness.reference.registry import STOP_CHANNEL, Registry
from raceharness.reference.runner import RunDriver
from raceharness.reference.runtime import Runtime
from raceharness.reference.schema import RUN_STATUSES, apply_schema_sync, check_schema_sync
from raceharness.reference.settings import Settings
from raceharness.reference.stream_response import RunStreamResponse
from raceharness.reference.turn import start_turn
from raceharness.reference.turn_input import parse_turn
from raceharness.reference.web import (
    HttpError,
    bad_request,
    begin_failed,
    forbidden,
    ok,
    parse_uuid,
    read_json_object,
    unauthorized,
)

log = logging.getLogger(__name__)


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


async def _user(request: Request) -> UUID:
    token = bearer_token(request.headers.get("authorization"))
    user = await _rt(request).auth.user_for(token)
    if user is None:
        raise unauthorized()
    return user


async def _own_chat(rt: Runtime, chat_id: UUID, user_id: UUID) -> None:
    async with rt.pool.connection() as conn:
        if await store.chat_owner(conn, chat_id) != user_id:
            raise forbidden()


async def stream(request: Request) -> Response:
    rt = _rt(request)
    try:
        user_id = await _user(request)
    except (psycopg.Error, OSError) as exc:  # the token's lookup needs the database:
        # a turn that cannot begin is refused as one (protocol §2.4), not as A_UNAVAILABLE
        log.error("database error authenticating a turn: %s", type(exc).__name__)
        raise begin_failed() from None
    turn = parse_turn(await read_json_object(request, rt.settings.max_body_bytes))
    run = await start_turn(rt, user_id, turn)
    return RunStreamResponse(run, rt.registry, rt.settings)


async def stop(request: Request) -> Response:
    rt = _rt(request)
    user_id = await _user(request)
    body = await read_json_object(request, rt.settings.max_body_bytes)
    run_id = parse_uuid(body.get("runId"), "runId", required=False)
    chat_id = parse_uuid(body.get("chatId"), "chatId", required=False)
    if run_id is None and chat_id is None:
        raise bad_request("runId or chatId: one is required")
    return ok({"stopped": await _stop(rt, user_id, run_id, chat_id)})


async def _stop(rt: Runtime, user_id: UUID, run_id: UUID | None, chat_id: UUID | None) -> bool:
    if run_id is not None:
        local = rt.registry.runs.get(run_id)
        if local is not None and not local.settled.is_set():  # live here: no database read
            if local.user_id != user_id or (chat_id is not None and local.chat_id != chat_id):
                raise forbidden()
            return await rt.registry.stop_local(local, "stopped by user")
        async with rt.pool.connection() as conn:
            row = await store.run_for_stop(conn, run_id)
        if row is None or row["creator_id"] != user_id or (
                chat_id is not None and row["chat_id"] != chat_id):
            raise forbidden()
    else:
        assert chat_id is not None
        await _own_chat(rt, chat_id, user_id)
        for live in list(rt.registry.runs.values()):
            if live.chat_id == chat_id and not live.settled.is_set():
                return await rt.registry.stop_local(live, "stopped by user")
        async with rt.pool.connection() as conn:
            row = await store.active_run_for_stop(conn, chat_id)
        if row is None:
            return False
    if row["status"] not in ("pending", "running") and Fault.LATE_WRITE_OVERWRITES not in (
            rt.settings.faults):
        return False
    if row["expired"]:
        # Nobody renews this run's lease: its owner is gone, so end it here.
        return await rt.gate.abort_orphan(row["id"], "stopped by user (owner lease expired)")
    # Another instance drives the run (or nobody yet knows its owner died): mark the row; the
    # owner hears the NOTIFY, or reads the mark on its next heartbeat.
    marked = await rt.gate.mark_stop_requested(row["id"])
    if marked and rt.settings.stop_notify and Fault.STOP_LOCAL_ONLY not in rt.settings.faults:
        # FAULT: stop-local-only — no NOTIFY: the single-process design, whose stop reaches only
        # its own in-memory runs. The mark is written (and answered stopped: true) but the
        # owner, which neither listens nor polls, streams on to the end.
        await rt.gate.notify_stop(row["id"])
    return marked


async def latest_run(request: Request) -> Response:
    rt = _rt(request)
    user_id = await _user(request)
    body = await read_json_object(request, rt.settings.max_body_bytes)
    chat_id = parse_uuid(body.get("chatId"), "chatId", required=True)
    assert chat_id is not None
    await _own_chat(rt, chat_id, user_id)
    async with rt.pool.connection() as conn:
        run, message = await store.latest_run(conn, chat_id)
    return ok({"run": run, "message": message})


async def list_runs(request: Request) -> Response:
    """One page of the chat's runs, newest first: ``{"items": [...], "nextCursor": ...}``.
    A client that sends neither ``limit`` nor ``cursor`` gets the newest 50 (``items`` as
    before); ``nextCursor`` is null on the last page."""
    rt = _rt(request)
    user_id = await _user(request)
    chat_id = parse_uuid(request.query_params.get("chatId"), "chatId", required=True)
    assert chat_id is not None
    status = request.query_params.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise bad_request(f"status: expected one of {', '.join(RUN_STATUSES)}")
    limit = _page_limit(request.query_params.get("limit") or None)
    cursor = request.query_params.get("cursor") or None
    after = None
    if cursor is not None:
        try:
            after = store.decode_cursor(cursor)
        except store.BadCursor:  # opaque: never echoed (a token pasted by mistake stays out)
            raise bad_request("cursor: not a nextCursor this server issued, got a value of "
                              f"length {len(cursor)}") from None
    await _own_chat(rt, chat_id, user_id)
    async with rt.pool.connection() as conn:
        page = await store.list_runs(conn, chat_id, status, limit=limit, after=after)
    return ok({"items": page.items, "nextCursor": page.next_cursor})


_NUMBERISH = re.compile(r"[-+0-9.eE]{1,20}")


def _page_limit(raw: str | None) -> int:
    """``limit``: absent is the default page; else a plain decimal integer in range. A bad
    value is named when it looks like a number; other text is never echoed (protocol §1)."""
    if raw is None:
        return store.RUNS_PAGE_DEFAULT
    if (raw.isascii() and raw.isdigit() and len(raw) <= 6
            and 1 <= int(raw) <= store.RUNS_PAGE_MAX):
        return int(raw)
    got = repr(raw) if _NUMBERISH.fullmatch(raw) else f"a value of length {len(raw)}"
    raise bad_request(f"limit: expected an integer from 1 to {store.RUNS_PAGE_MAX}, got {got}")


async def healthz(request: Request) -> Response:
    rt = _rt(request)
    body: dict[str, Any] = {
        "status": "ok", "instance": rt.settings.instance_id,
        "faults": sorted(f.value for f in rt.settings.faults),
        "autonomousRuns": rt.settings.autonomous_runs,
    }
    try:
        async with rt.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
    except (psycopg.Error, OSError):
        body["status"] = "unavailable"
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    return PlainTextResponse(_rt(request).metrics.render(),
                             media_type="text/plain; version=0.0.4")


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return exc.response()


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"statusCode": exc.status_code, "message": exc.detail},
                        status_code=exc.status_code, headers=exc.headers)  # 405 keeps Allow


async def _database_error(request: Request, exc: Exception) -> Response:
    log.error("database error on %s: %s", request.url.path, type(exc).__name__)
    return JSONResponse({"statusCode": 503, "message": "Service unavailable",
                         "code": "A_UNAVAILABLE"}, status_code=503)


async def _crash(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"statusCode": 500, "message": "Internal server error"}, status_code=500)


def suspect_connection_check(pool_ref: list[AsyncConnectionPool]
                             ) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    """The pool's check before it lends a connection: a round trip only when the idle
    connection has something to read. An idle pooled connection (never LISTENing) is sent
    nothing, so readable means the server wrote to it unasked — the FATAL of a terminated
    backend, or the close of a stopped server. A healthy connection costs one zero-timeout
    ``poll`` instead of a round trip on every checkout (the 409 path's latency).

    A dead one means an outage just ended: every idle connection is checked at once
    (``pool.check()``), so the request that found it waits one pool back-off for a fresh
    connection instead of one back-off per stale connection."""

    async def check(conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.closed:
            log.warning("a pooled connection was closed")
            raise psycopg.OperationalError("the connection is closed")
        poller = select.poll()  # not select(): its fds stop at 1024, a busy server's do not
        poller.register(conn.pgconn.socket, select.POLLIN)
        if poller.poll(0):
            try:
                await AsyncConnectionPool.check_connection(conn)
            except psycopg.Error as exc:
                log.warning("a pooled connection was dead (%s): checking the pool",
                            type(exc).__name__)
                if pool_ref:
                    await pool_ref[0].check()
                raise

    return check


def create_app(settings: Settings, *,
               provider_transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The reference server for ``settings``; ``provider_transport`` is for tests (respx)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.faults:
            log.warning("!" * 72)
            log.warning("FAULTS ENABLED: %s — this server is deliberately broken",
                        ", ".join(sorted(f.value for f in settings.faults)))
            log.warning("!" * 72)
        if settings.apply_schema:  # start-up only, on its own connection, in a thread; before
            # the pool opens, since each pooled connection prepares statements on these tables
            await asyncio.to_thread(apply_schema_sync, settings.database_url, settings.faults)
        else:  # fail at once, naming what is missing, rather than after the pool's timeout
            await asyncio.to_thread(check_schema_sync, settings.database_url, settings.faults)
        # check: a connection whose backend was terminated (a database outage) is replaced
        # before use instead of failing the request that gets it. configure: generic plans,
        # and the hot statements prepared before the connection is first lent.
        # Through a transaction pooler (DATABASE_POOLER=transaction) neither: the next
        # transaction may run on another server connection, where neither the SET nor a
        # prepared statement exists, so psycopg prepares nothing (prepare_threshold=None also
        # turns the gate's prepare=True off) and every statement is planned when it runs.
        pool_ref: list[AsyncConnectionPool] = []
        pool = AsyncConnectionPool(settings.database_url, min_size=settings.pool_min_size,
                                   max_size=settings.pool_max_size,
                                   timeout=settings.pool_timeout_s, open=False,
                                   check=suspect_connection_check(pool_ref),
                                   configure=None if settings.pooled else prepare_connection,
                                   kwargs={"prepare_threshold": None} if settings.pooled
                                   else None,
                                   reconnect_timeout=settings.pool_reconnect_timeout_s,
                                   name=f"reference-{settings.instance_id}")
        pool_ref.append(pool)
        await pool.open(wait=True, timeout=30.0)
        try:
            gate = Gate(pool, instance_id=settings.instance_id, lease_s=settings.lease_s,
                        faults=settings.faults, heartbeat_s=settings.heartbeat_interval_s)
            provider = ProviderClient(settings, transport=provider_transport)
            metrics_ = Metrics()
            registry = Registry(settings, gate, metrics_)
            metrics_.active_runs = registry.active_count
            metrics_.pool_stats = pool.get_stats
            app.state.runtime = Runtime(
                settings=settings, pool=pool, gate=gate, provider=provider, metrics=metrics_,
                registry=registry, driver=RunDriver(
                    gate, provider, metrics_, settings.faults,
                    settle_retry_s=settings.settle_retry_s,
                    settle_retry_max_delay_s=min(1.0, settings.heartbeat_interval_s),
                    history_messages=settings.provider_history_messages),
                auth=Authenticator(pool))
            registry.start()
            pooled = "" if not settings.pooled else (
                "; through a transaction pooler: no prepared statements, " + (
                    "LISTEN on LISTEN_DSN" if registry.hears_remote_stops
                    else "remote stops by the heartbeat poll"))
            log.info("reference instance %s ready (stop channel %s%s%s)", settings.instance_id,
                     STOP_CHANNEL, "" if registry.hears_remote_stops else ", notifications off",
                     pooled)
            try:
                yield
            finally:
                await registry.close()
                await provider.aclose()
        finally:
            await pool.close()

    return Starlette(
        routes=[
            Route("/api/ai-chat/stream", stream, methods=["POST"]),
            Route("/api/ai-chat/stop", stop, methods=["POST"]),
            Route("/api/ai-chat/run", latest_run, methods=["POST"]),
            Route("/api/ai-chat/runs", list_runs, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={
            HttpError: _http_error,
            HTTPException: _starlette_error,
            psycopg.Error: _database_error,
            Exception: _crash,
        },
        middleware=[Middleware(ArrivalTimestamps)],
        lifespan=lifespan,
    )
