"""Starting a turn: every check before the first byte, then the run task (protocol.md §2).

Order: ownership (403) → pre-check (409) → new chat row → begin, the gate (409 / 503) →
message rows → 200 and the ``start`` frame. A rejected turn writes nothing and calls no
provider — except where a fault switch (marked ``# FAULT:``) re-introduces a known bug.

All of it runs on one pooled connection (``Gate.turn_connection``), given back before the run
streams: a burst's INSERTs do not queue behind the other requests' pre-checks.
"""

from __future__ import annotations

import contextlib
import logging
from uuid import UUID

import psycopg

from raceharness.reference import frames, store
from raceharness.reference.errors import ProviderError, RunAlreadyActiveError, RunBeginFailedError
from raceharness.reference.faults import Fault
from raceharness.reference.gate import Admission, Claim
from raceharness.reference.gate_sql import AsyncConn
from raceharness.reference.provider import ProviderStream
from raceharness.reference.runner import LiveRun
from raceharness.reference.runtime import Runtime
from raceharness.reference.turn_input import TurnInput
from raceharness.reference.web import begin_failed, conflict, forbidden

log = logging.getLogger(__name__)


async def start_turn(rt: Runtime, user_id: UUID, turn: TurnInput) -> LiveRun:
    faults = rt.settings.faults
    chat_id = turn.chat_id
    admission: Admission | None = None
    early_message_id: UUID | None = None
    provider_stream: ProviderStream | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:  # no connection to be had (the pool timed out, the database down) is a 503
                conn = await stack.enter_async_context(rt.gate.turn_connection())
                if chat_id is not None:
                    # Ownership and the pre-check in one round trip; 403 is decided before 409.
                    admission = await rt.gate.admit(chat_id, user_id, conn=conn)
                    if admission.owner != user_id:
                        raise forbidden()
            except psycopg.Error as exc:
                log.error("stream: chat lookup failed: %s", type(exc).__name__)
                rt.metrics.begin_failures += 1
                raise begin_failed() from exc
            if chat_id is not None and Fault.PERSIST_BEFORE_GATE in faults:
                early_message_id = await _persist_user_message(conn, chat_id, user_id,
                                                               turn.user_text)
            chat_id, claim, provider_stream, early = await _begin(
                rt, conn, chat_id, user_id, turn, faults, admission)
            early_message_id = early_message_id or early
            message_id, failure = await _persist_turn(rt, conn, claim, chat_id, user_id,
                                                      turn.user_text, early_message_id)
        if failure is not None:
            assert claim is not None
            await _release_failed_turn(rt, claim, failure)
        run = LiveRun(chat_id=chat_id, user_id=user_id, claim=claim, message_id=message_id,
                      provider_stream=provider_stream)
        provider_stream = None  # the run owns it now
        if claim is not None:
            rt.metrics.runs_started += 1
        run.emit(frames.start(str(message_id), str(chat_id),
                              None if claim is None else str(claim.run_id)))
        rt.registry.launch(run, rt.driver.drive)
        return run
    finally:
        if provider_stream is not None:
            await provider_stream.aclose()


async def _begin(rt: Runtime, conn: AsyncConn, chat_id: UUID | None, user_id: UUID,
                 turn: TurnInput, faults: frozenset[Fault], admission: Admission | None,
                 ) -> tuple[UUID, Claim | None, ProviderStream | None, UUID | None]:
    """Pre-check verdict, new chat, gate. Returns (chat id, claim or None if untracked,
    stream, msg)."""
    provider_stream: ProviderStream | None = None
    early_message_id: UUID | None = None
    try:
        if chat_id is not None and admission is not None and admission.active_id is not None:
            rt.metrics.conflicts["precheck"] += 1
            raise conflict(RunAlreadyActiveError(chat_id, admission.active_id, "precheck"))
        if Fault.PROVIDER_BEFORE_GATE in faults:
            provider_stream = await _open_provider_early(rt, conn, chat_id, turn.user_text)
        if chat_id is None:
            chat_id = await store.create_chat(conn, user_id, turn.user_text)
            if Fault.PERSIST_BEFORE_GATE in faults:
                early_message_id = await _persist_user_message(conn, chat_id, user_id,
                                                               turn.user_text)
        try:
            claim = await rt.gate.begin(chat_id=chat_id, user_id=user_id, conn=conn)
        except RunAlreadyActiveError as exc:
            rt.metrics.conflicts["gate"] += 1
            raise conflict(exc) from exc
    except (RunBeginFailedError, psycopg.Error) as exc:
        log.error("begin failed on chat %s: %s", chat_id, exc)
        if Fault.UNTRACKED_ON_BEGIN_FAILURE in faults and chat_id is not None:
            # FAULT: untracked-on-begin-failure — the legacy fallback streams without a run.
            log.warning("streaming chat %s without a run (fault)", chat_id)
            return chat_id, None, provider_stream, early_message_id
        if provider_stream is not None:
            await provider_stream.aclose()
        rt.metrics.begin_failures += 1
        raise begin_failed() from exc
    except BaseException:
        if provider_stream is not None:
            await provider_stream.aclose()
        raise
    return chat_id, claim, provider_stream, early_message_id


async def _open_provider_early(rt: Runtime, conn: AsyncConn, chat_id: UUID | None,
                               user_text: str) -> ProviderStream | None:
    # FAULT: provider-before-gate — the provider request goes out before the run row exists.
    messages: list[dict[str, str]] = []
    if chat_id is not None:  # the new user message is not written yet: one place kept for it
        messages = await store.history(conn, chat_id, None,
                                       rt.settings.provider_history_messages - 1)
    messages.append({"role": "user", "content": user_text})
    rt.metrics.provider_calls += 1
    try:
        return await rt.provider.open(messages)
    except ProviderError:
        log.warning("early provider call failed (fault path)")
        return None


async def _persist_user_message(conn: AsyncConn, chat_id: UUID, user_id: UUID,
                                text: str) -> UUID:
    # FAULT: persist-before-gate — the user message is written before the gate decides.
    return await store.insert_user_message(conn, chat_id, user_id, text)


async def _persist_turn(rt: Runtime, conn: AsyncConn, claim: Claim | None, chat_id: UUID,
                        user_id: UUID, text: str, early_message_id: UUID | None,
                        ) -> tuple[UUID | None, Exception | None]:
    """The user message and the seeded assistant message, linked to the run, in one
    transaction. Returns (message id, None), or (None, the failure) when a claimed run must be
    released — by the caller, once the turn's connection is back in the pool."""
    try:
        async with rt.gate.connection(claim, conn) as tx:
            if early_message_id is None:
                await store.insert_user_message(tx, chat_id, user_id, text)
            return await store.seed_assistant_message(
                tx, chat_id, None if claim is None else claim.run_id), None
    except Exception as exc:  # any failure after the gate must release the run it claimed
        if claim is None:
            return None, None  # the untracked fault path streams whatever happens
        return None, exc


async def _release_failed_turn(rt: Runtime, claim: Claim, exc: Exception) -> None:
    """End a run whose turn could not be persisted, and answer 503."""
    log.error("persisting the turn of run %s failed: %s", claim.run_id, type(exc).__name__)
    try:
        await rt.gate.settle(claim, status="failed", error="could not persist the turn",
                             content="", message_id=None, message_status="error",
                             step_count=0, stop_requested=False)
    except psycopg.Error:
        log.exception("could not release run %s; its lease will", claim.run_id)
    await rt.gate.release_claim(claim)
    rt.metrics.begin_failures += 1
    raise begin_failed() from exc
