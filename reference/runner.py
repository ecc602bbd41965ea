"""One run, driven to a terminal state: provider call, token relay, stop, settle, frames.

A run is a task owned by the instance (see ``registry.py``), not by the HTTP response: the
response only reads its frames. So a client disconnect can leave the run going
(``AUTONOMOUS_RUNS=true``) or stop it, and either way the run ends in a terminal status.

Order at the end: the terminal write first, then the terminal frame and ``[DONE]``, so a client
that has seen the end of the stream can start the next turn at once.

When the terminal write fails because the database is unavailable (stopped, its backends
terminated), the stream still ends at once, with the status the run will be recorded with: an
answer that could not be saved becomes ``failed`` (an ``error`` frame, never a ``finish`` the
database cannot back), a stop stays ``aborted``. The run's task then retries the write with
backoff (``SETTLE_RETRY_S``) while the instance lives; the heartbeat keeps its lease meanwhile.
Should the retries run out, the task ends, the lease is no longer renewed and the reaper ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import psycopg

from raceharness.reference import frames, store
from raceharness.reference.aio import cancel_until_done
from raceharness.reference.errors import ProviderError
from raceharness.reference.faults import Fault
from raceharness.reference.gate import Claim, Gate
from raceharness.reference.metrics import Metrics
from raceharness.reference.provider import ProviderClient, ProviderStream

log = logging.getLogger(__name__)

_FRAME_END = None  # queue sentinel: the stream is over
UNSAVED_ERROR = "The answer could not be saved: the database is unavailable."
_MESSAGE_STATUS = {"succeeded": "completed", "failed": "error", "aborted": "aborted"}


@dataclass(eq=False)
class LiveRun:
    """A run streaming in this instance. ``claim`` is None only on the untracked fault paths."""

    chat_id: UUID
    user_id: UUID
    claim: Claim | None
    message_id: UUID | None
    provider_stream: ProviderStream | None = None  # pre-opened (provider-before-gate fault)
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    attached: bool = True
    stop_reason: str | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ended_by_us: bool = False
    outcome: str | None = None
    part_id: str = field(default_factory=lambda: f"txt-{uuid4().hex[:12]}")

    @property
    def run_id(self) -> UUID | None:
        return None if self.claim is None else self.claim.run_id

    def emit(self, data: bytes | None) -> None:
        if self.attached:
            self.queue.put_nowait(data)

    def detach(self) -> None:
        """The reader is gone: stop queueing frames nobody will read."""
        self.attached = False

    def request_stop(self, reason: str) -> bool:
        """Ask the run to stop; True for the first request only. A run whose outcome is decided
        (settled, or its stream ended while its terminal write is being retried) cannot be."""
        if self.stop_event.is_set() or self.settled.is_set() or self.done.is_set():
            return False
        self.stop_reason = reason
        self.stop_event.set()
        return True


class RunDriver:
    def __init__(self, gate: Gate, provider: ProviderClient, metrics: Metrics,
                 faults: frozenset[Fault], *, settle_retry_s: float = 120.0,
                 settle_retry_max_delay_s: float = 1.0, history_messages: int = 50) -> None:
        self.gate = gate
        self.provider = provider
        self.metrics = metrics
        self.faults = faults
        self.settle_retry_s = settle_retry_s
        self.settle_retry_max_delay_s = settle_retry_max_delay_s
        self.history_messages = history_messages  # PROVIDER_HISTORY_MESSAGES

    async def drive(self, run: LiveRun) -> None:
        content: list[str] = []
        text_started = False
        status, error = "succeeded", None
        stream = run.provider_stream
        unsaved = False

        async def relay() -> None:
            nonlocal stream, text_started
            if stream is None:
                async with self.gate.connection(run.claim) as conn:
                    messages = await store.history(conn, run.chat_id, run.message_id,
                                                   self.history_messages)
                self.metrics.provider_calls += 1
                stream = await _open_unabandoned(self.provider, messages)
            async for token in stream.tokens():
                if not text_started:
                    text_started = True
                    run.emit(frames.frame("text-start", id=run.part_id))
                content.append(token)
                run.emit(frames.text_delta(run.part_id, token))

        run.emit(frames.frame("start-step"))
        relay_task = asyncio.create_task(relay())
        stop_task = asyncio.create_task(run.stop_event.wait())
        try:
            await asyncio.wait({relay_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if relay_task.done():
                status, error = _relay_outcome(relay_task)
            elif Fault.STOP_IGNORES_PROVIDER in self.faults:
                # FAULT: stop-ignores-provider — the row is marked, the provider keeps streaming.
                status, error = "aborted", run.stop_reason
                await self._settle(run, status, error, content)
                with contextlib.suppress(Exception):
                    await relay_task
            else:
                status, error = "aborted", run.stop_reason
                await _end_relay(relay_task, lambda: stream)
        except asyncio.CancelledError:
            status, error = "aborted", "server shutting down"
            relay_task.cancel()
            raise
        finally:
            stop_task.cancel()
            if stream is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(stream.aclose())
            if not run.settled.is_set():
                unsaved = not await asyncio.shield(self._settle(run, status, error, content))
                if unsaved and status == "succeeded":
                    status, error = "failed", UNSAVED_ERROR
                run.outcome = status
            self._finish_frames(run, status, error, text_started)
        if unsaved:  # not after a cancellation (shutdown): the lease covers that case
            await self._settle_later(run, status, error, content)

    async def _settle(self, run: LiveRun, status: str, error: str | None,
                      content: list[str]) -> bool:
        """The terminal write. False when the database is unavailable (nothing written, the
        caller retries); True otherwise, ``run.settled`` then set."""
        ended = False
        try:
            if run.claim is None:
                await self._settle_untracked(run, status, content)
            elif status == "failed" and Fault.LEAK_ON_PROVIDER_ERROR in self.faults:
                # FAULT: leak-on-provider-error — the failure path forgets the terminal write.
                log.warning("run %s failed; terminal write skipped (fault)", run.run_id)
            else:
                ended = await self.gate.settle(run.claim, **self._terminal(run, status, error,
                                                                           content))
        except (psycopg.OperationalError, OSError) as exc:
            if run.claim is not None:
                log.error("terminal write of run %s failed (%s): the database is unavailable; "
                          "retrying", run.run_id, type(exc).__name__)
                return False
            log.exception("terminal write of an untracked run failed")
        except psycopg.Error:
            # Not unavailability: retrying would not help. The lease expires and the reaper (or
            # the next begin) reclaims the run.
            log.exception("terminal write of run %s failed", run.run_id)
        finally:
            await self.gate.release_claim(run.claim)
        self._settled(run, status, ended)
        return True

    async def _settle_later(self, run: LiveRun, status: str, error: str | None,
                            content: list[str]) -> None:
        """Retry the terminal write after the database failed it, while the instance lives."""
        assert run.claim is not None
        ended = await self.gate.settle_retrying(
            run.claim, give_up_after_s=self.settle_retry_s,
            max_delay_s=self.settle_retry_max_delay_s,
            **self._terminal(run, status, error, content))
        if ended is None:
            log.error("run %s: no terminal write within %.0fs; its lease will end it",
                      run.run_id, self.settle_retry_s)
            ended = False
        else:
            log.warning("run %s: terminal write (%s) done after the database came back",
                        run.run_id, status)
        self._settled(run, status, ended)

    @staticmethod
    def _terminal(run: LiveRun, status: str, error: str | None,
                  content: list[str]) -> dict[str, Any]:
        return {"status": status, "error": error, "content": "".join(content),
                "message_id": run.message_id, "message_status": _MESSAGE_STATUS[status],
                "step_count": 1 if status == "succeeded" else 0,
                "stop_requested": status == "aborted"}

    def _settled(self, run: LiveRun, status: str, ended: bool) -> None:
        if ended:
            self.metrics.runs_ended[status] += 1
        run.ended_by_us = ended
        run.outcome = status
        run.settled.set()

    async def _settle_untracked(self, run: LiveRun, status: str, content: list[str]) -> None:
        if run.message_id is None:
            return
        async with self.gate.connection(None) as conn:
            await conn.execute(
                "UPDATE ai_chat_messages SET content = %s, status = %s, updated_at = now() "
                "WHERE id = %s", ("".join(content), _MESSAGE_STATUS[status], run.message_id))

    def _finish_frames(self, run: LiveRun, status: str, error: str | None,
                       text_started: bool) -> None:
        if text_started:
            run.emit(frames.frame("text-end", id=run.part_id))
        if status == "succeeded":
            run.emit(frames.frame("finish-step"))
            run.emit(frames.frame("finish"))
        elif status == "failed":
            run.emit(frames.error(error or "provider error"))
        else:
            run.emit(frames.frame("abort"))
        run.emit(frames.DONE)
        run.emit(_FRAME_END)
        run.done.set()


def _relay_outcome(task: asyncio.Task[None]) -> tuple[str, str | None]:
    exc = task.exception()
    if exc is None:
        return "succeeded", None
    if isinstance(exc, ProviderError):
        return "failed", str(exc)
    if isinstance(exc, psycopg.OperationalError):  # the history could not be read
        log.error("run relay: the database is unavailable (%s)", type(exc).__name__)
        return "failed", "The database is unavailable."
    log.error("run relay crashed", exc_info=exc)
    return "failed", "internal error"


_CLOSERS: set[asyncio.Task[None]] = set()  # strong references until each close is done


async def _open_unabandoned(provider: ProviderClient, messages: list[dict[str, str]],
                            ) -> ProviderStream:
    """``provider.open()``, except that a stop arriving while the call opens never abandons
    it half-open: the opening goes on in the background and its stream is dropped at once.
    (Cancelling httpx while it waits for the response head can leave the connection open,
    and the provider would go on streaming to nobody.)"""
    task = asyncio.ensure_future(provider.open(messages))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_drop_when_opened)
        raise


def _drop_when_opened(task: asyncio.Future[ProviderStream]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    stream = task.result()
    stream.abort()
    closer = asyncio.ensure_future(stream.aclose())
    _CLOSERS.add(closer)
    closer.add_done_callback(_CLOSERS.discard)


async def _end_relay(task: asyncio.Task[None],
                     current: Callable[[], ProviderStream | None]) -> None:
    """Cancel the relay until it has ended, dropping the provider's connection whenever one
    is open. One cancel is not enough (see ``reference.aio``): the relay would then go on to
    call the provider with nobody left to stop it. (Caught by the disconnect-storm scenario:
    calls streaming on after their runs were stopped.)"""
    def drop() -> None:
        stream = current()
        if stream is not None:
            stream.abort()

    await cancel_until_done(task, drop)
