"""The instance's live runs and its background duties: heartbeat, reaper, stop notifications.

- Heartbeat: one statement renews the lease of every live run of this instance; a row that
  reports ``stop_requested_at`` (the poll fallback of a cross-instance stop) or is no longer
  active stops the local run.
- Reaper: aborts active runs whose lease expired (their process died), never one this instance
  is streaming (after a database outage longer than the lease, the next heartbeat renews it).
  The gate's pre-check spares the same runs (``Gate.spare``, wired here): a turn landing on
  this instance never reclaims the chat from a run the instance still streams.
- Listener: ``LISTEN ai_chat_run_stop``; a notification naming a local run stops it at once.
  It holds one session connection of its own (``LISTEN_DSN``, else ``DATABASE_URL``): behind a
  transaction pooler a LISTEN ends with its transaction's server connection, so it must reach
  Postgres past the pooler. (With ``STOP_NOTIFY`` off, the heartbeat poll carries every stop.)
  (Under the stop-local-only fault there is neither listener nor poll: a stop reaches only the
  runs of the instance that received it.)
- Shutdown: aborts this instance's own runs, never another instance's.
- Parent watch (``REFERENCE_PARENT_PID``): when the process that started this server is gone
  (a harness killed with SIGKILL runs no cleanup), the server shuts itself down as on SIGTERM.

A run is renewed only while its task lives (it leaves ``runs`` when its task ends, whatever the
outcome): a run whose task ended without a terminal write (the database gone for longer than the
retries) stops being renewed, so its lease expires and the reaper ends it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from uuid import UUID

import psycopg

from raceharness.reference.aio import cancel_until_done
from raceharness.reference.faults import Fault
from raceharness.reference.gate import Gate
from raceharness.reference.metrics import Metrics
from raceharness.reference.runner import LiveRun
from raceharness.reference.settings import Settings

log = logging.getLogger(__name__)

STOP_CHANNEL = "ai_chat_run_stop"
PARENT_POLL_S = 0.5  # how often the parent watch looks at getppid()
PARENT_GONE_EXIT_S = 30.0  # a shutdown that hangs longer than this after the parent died: _exit


class Registry:
    def __init__(self, settings: Settings, gate: Gate, metrics: Metrics) -> None:
        self.settings = settings
        self.gate = gate
        self.metrics = metrics
        self.runs: dict[UUID, LiveRun] = {}
        self.untracked: set[LiveRun] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()
        # The gate's pre-check spares what this instance drives, as the reaper below does.
        gate.spare(self.live_run_ids)

    # -- runs -----------------------------------------------------------------------------

    def launch(self, run: LiveRun, drive: Callable[[LiveRun], Awaitable[None]]) -> None:
        """Start the run's driver as a task owned by the instance."""
        if run.run_id is not None:
            self.runs[run.run_id] = run
        else:
            self.untracked.add(run)

        async def _owned() -> None:
            try:
                await drive(run)
            finally:
                if run.run_id is not None:
                    self.runs.pop(run.run_id, None)
                self.untracked.discard(run)

        task = asyncio.create_task(_owned(), name=f"run-{run.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def live_run_ids(self, chat_id: UUID) -> list[UUID]:
        """The runs of ``chat_id`` whose task this instance still runs (tracked ones). A scan:
        an instance drives few runs at once, and a chat at most one but for a fault."""
        return [run_id for run_id, run in self.runs.items() if run.chat_id == chat_id]

    def active_count(self) -> int:
        return len(self.runs) + len(self.untracked)

    async def stop_local(self, run: LiveRun, reason: str) -> bool:
        """Stop a run of this instance; True iff this call aborted it."""
        if not run.request_stop(reason):
            return False
        try:
            await asyncio.wait_for(run.settled.wait(), self.settings.stop_wait_s)
        except TimeoutError:
            log.error("run %s did not settle within %.1fs of a stop", run.run_id,
                      self.settings.stop_wait_s)
            return False
        return run.ended_by_us and run.outcome == "aborted"

    async def abort_all(self, reason: str) -> None:
        """End every run of this instance as ``aborted`` (SIGTERM); other instances' untouched."""
        runs = [*self.runs.values(), *self.untracked]
        if not runs:
            return
        log.warning("aborting %d run(s) of this instance: %s", len(runs), reason)
        for run in runs:
            run.request_stop(reason)
        await asyncio.wait([asyncio.create_task(r.done.wait()) for r in runs],
                           timeout=self.settings.stop_wait_s)

    def on_stop_notice(self, run_id: UUID) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            run.request_stop("stopped by user")

    # -- background duties ----------------------------------------------------------------

    def start(self) -> None:
        self._loops.append(asyncio.create_task(self._every(
            self.settings.heartbeat_interval_s, self.heartbeat), name="heartbeat"))
        self._loops.append(asyncio.create_task(self._every(
            self.settings.reaper_interval_s, self.reap), name="reaper"))
        if self.hears_remote_stops:
            self._loops.append(asyncio.create_task(self._listen(), name="stop-listener"))
        if self.settings.parent_pid is not None:
            self._loops.append(asyncio.create_task(self._watch_parent(self.settings.parent_pid),
                                                   name="parent-watch"))

    @property
    def hears_remote_stops(self) -> bool:
        """Whether this instance LISTENs for stops received by other instances."""
        # FAULT: stop-local-only — no listener: a stop received elsewhere never reaches us.
        return self.settings.stop_notify and Fault.STOP_LOCAL_ONLY not in self.settings.faults

    async def close(self) -> None:
        await self.abort_all("server shutting down")
        for task in self._loops:
            await cancel_until_done(task)  # a loop inside the pool can lose one cancel
        self._loops.clear()

    async def _every(self, interval_s: float, duty: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await duty()
            except (psycopg.OperationalError, OSError) as exc:  # the database unavailable
                log.error("%s failed (%s); retrying in %.1fs", duty.__name__,
                          type(exc).__name__, interval_s)
            except psycopg.Error:
                log.exception("%s failed; retrying in %.1fs", duty.__name__, interval_s)

    async def heartbeat(self) -> None:
        live = {rid: run for rid, run in self.runs.items()
                if run.claim is not None and run.claim.held_conn is None}
        if not live:
            return
        rows = await self.gate.renew_leases(list(live))
        for run_id, run in live.items():
            if run_id not in rows:
                if not run.settled.is_set():
                    run.request_stop("run ended elsewhere")
            elif rows[run_id] and Fault.STOP_LOCAL_ONLY not in self.settings.faults:
                # FAULT: stop-local-only — stop_requested_at is never polled: only a stop
                # received by this instance (stop_local) ends its runs.
                run.request_stop("stopped by user")

    async def reap(self) -> None:
        reaped = await self.gate.reap_expired(list(self.runs))
        if reaped:
            self.metrics.runs_reaped += len(reaped)
            log.warning("reaped %d run(s) whose lease expired: %s", len(reaped),
                        ", ".join(map(str, reaped)))

    async def _listen(self) -> None:
        while True:
            try:
                # A session of its own, straight to Postgres (LISTEN_DSN when DATABASE_URL
                # is a transaction pooler, which would drop the LISTEN with its transaction).
                async with await psycopg.AsyncConnection.connect(
                        self.settings.listen_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {STOP_CHANNEL}")
                    self.listening.set()
                    async for notice in conn.notifies():
                        try:
                            self.on_stop_notice(UUID(notice.payload))
                        except ValueError:
                            log.warning("ignored a malformed stop notice")
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.error("stop listener lost its connection (%s); reconnecting",
                          type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _watch_parent(self, parent_pid: int) -> None:
        """Shut down once this process's parent is no longer ``parent_pid`` (it died: we were
        re-parented). getppid() is exact, with no pid-reuse hazard; polling it is the only
        portable way to learn of a parent's death without PR_SET_PDEATHSIG."""
        while os.getppid() == parent_pid:  # noqa: ASYNC110 - another process's liveness
            await asyncio.sleep(PARENT_POLL_S)
        log.error("the parent process %d is gone; shutting down", parent_pid)
        timer = threading.Timer(PARENT_GONE_EXIT_S, os._exit, (1,))
        timer.daemon = True  # the last resort if the graceful shutdown hangs
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)  # the server's own graceful shutdown
