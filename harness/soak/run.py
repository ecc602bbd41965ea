"""Running the soak (the I/O): the embedded stack, the workers for the duration, the restart
half-way, the settle, the signals, and the reads at the end (the database's ``ai_chat_runs``,
each instance's ``/metrics`` and peak memory)."""

from __future__ import annotations

import logging
import os
import platform
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import trio

from raceharness.net.http1 import Racer
from raceharness.shell import machine
from raceharness.shell.observe import ServiceClient
from raceharness.soak.load import Load, Req, Tally
from raceharness.soak.plan import PROGRESS_S, RESTART_S, SCRAPE_S, STOP_S, SoakPlan
from raceharness.soak.totals import parse_metrics, soak_result
from raceharness.soak.workers import Worker
from raceharness.stack.embedded import (
    EmbeddedService,
    EmbeddedStartError,
    embedded_postgres,
    reference_service,
)

log = logging.getLogger(__name__)


@dataclass
class Interrupt:
    signal: str | None = None
    scopes: list[trio.CancelScope] = field(default_factory=list)   # the first signal cancels
    hurry: list[trio.CancelScope] = field(default_factory=list)    # a second signal cancels


class Soak:
    def __init__(self, plan: SoakPlan) -> None:
        self.plan = plan
        self.rng = random.Random(f"{plan.seed}:main")
        self.tally = Tally()
        self.load = Load(plan, self.tally)
        self.interrupt = Interrupt()
        self.incarnation: list[int] = [0] * plan.instances
        self.service: EmbeddedService | None = None
        self.old_clients: list[ServiceClient] = []
        self.postgres_source: str | None = None
        self.pooler_name: str | None = None
        self.load_s = 0.0
        self.settle_s = 0.0
        self.active_at_load_end: int | None = None
        self.load_at_start: list[float] | None = None

    # -- the whole run ------------------------------------------------------------------------

    async def main(self) -> dict[str, Any] | None:
        t_start = time.monotonic()
        async with trio.open_nursery() as nursery:
            await nursery.start(self._signals)
            await nursery.start(self.load.provider.serve, "127.0.0.1", 0)
            startup = trio.CancelScope()
            self.interrupt.scopes.append(startup)
            result: dict[str, Any] | None = None
            with startup:
                async with embedded_postgres(pooler=self.plan.pooler) as cluster:
                    self.postgres_source = cluster.source
                    self.pooler_name = None if cluster.pooler is None else cluster.pooler.name
                    async with reference_service(cluster, self.load.provider.base_url,
                                                 lease_s=self.plan.lease_s,
                                                 instances=self.plan.instances) as service:
                        self.interrupt.scopes.remove(startup)
                        result = await self._soak(service, t_start)
            nursery.cancel_scope.cancel()
        return result

    async def _signals(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                       ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                first = self.interrupt.signal is None
                if first:
                    self.interrupt.signal = name
                    self.load.deadline = min(self.load.deadline, trio.current_time())
                    print(f"harness soak: {name}: no new actions; the ones in flight end (all "
                          "bounded), the runs are stopped and the partial totals written "
                          "(again to hurry)", file=sys.stderr, flush=True)
                for scope in [*self.interrupt.scopes, *([] if first else self.interrupt.hurry)]:
                    scope.cancel()

    async def _soak(self, service: EmbeddedService, t_start: float) -> dict[str, Any]:
        plan, load = self.plan, self.load
        self.service = service
        targets = service.targets
        load.attach(targets, [ServiceClient(t) for t in targets])
        try:
            load.t0 = trio.current_time()
            load.deadline = load.t0 + plan.duration_s
            self.load_at_start = machine.load_average()
            print(f"harness soak: load started: {plan.duration_s:g}s, {plan.concurrency} "
                  f"workers, {plan.instances} instance(s), lease {plan.lease_s:g}s, seed "
                  f"{plan.seed}", file=sys.stderr, flush=True)
            if self.interrupt.signal is not None:  # it came between the start-up and now
                load.deadline = load.t0
            scope = trio.CancelScope()
            self.interrupt.hurry.append(scope)
            with scope:
                async with trio.open_nursery() as nursery:
                    for w in range(plan.concurrency):
                        nursery.start_soon(Worker(load, w).run)
                    nursery.start_soon(self._restart_once)
                    nursery.start_soon(self._progress)
            self.interrupt.hurry.remove(scope)
            self.load_s = trio.current_time() - load.t0
            t_settle = trio.current_time()
            await self._settle(service)
            self.settle_s = trio.current_time() - t_settle
            self._check_instances(service)
            for k in range(plan.instances):
                if k not in load.down:
                    await self._scrape(k)
            totals = await trio.to_thread.run_sync(db_totals, service.dsn)
            return soak_result(
                plan, self.tally, totals, self.load.provider.ledger(),
                interrupt_signal=self.interrupt.signal,
                timing_s={"load": self.load_s, "settle": self.settle_s,
                          "total": time.monotonic() - t_start},
                active_at_load_end=self.active_at_load_end, postgres=self.postgres_source,
                harness_peak_rss_kib=machine.self_peak_rss_kib(),
                machine={**machine_info(), "load_average_at_start": self.load_at_start},
                pooler=self.pooler_name)
        finally:
            with trio.CancelScope(shield=True):
                for client in [*load.clients, *self.old_clients]:
                    await client.aclose()

    async def _settle(self, service: EmbeddedService) -> None:
        """Release every hold (and on an interrupt stop the runs), then wait — a bounded poll
        of the database — until no run is active, or three leases pass."""
        self.load.settling = True
        self.load.provider.release_all()
        self.active_at_load_end = await trio.to_thread.run_sync(active_count, service.dsn)
        scope = trio.move_on_after(self.plan.settle_bound_s)
        self.interrupt.hurry.append(scope)
        with scope:
            if self.interrupt.signal is not None:
                await self._stop_active(service)
            while True:
                if not await trio.to_thread.run_sync(active_count, service.dsn):
                    break
                await trio.sleep(0.2)  # bounded poll of another process's database
        self.interrupt.hurry.remove(scope)

    async def _stop_active(self, service: EmbeddedService) -> None:
        ids = await trio.to_thread.run_sync(active_ids, service.dsn)
        live = [k for k in range(self.plan.instances) if k not in self.load.down]
        for run_id in ids:
            if not live:
                return
            try:
                with trio.fail_after(STOP_S):
                    await self.load.clients[live[0]].stop(run_id=run_id)
            except Exception:  # noqa: BLE001 - best effort: the lease reclaims the rest
                log.warning("could not stop run %s after the interrupt", run_id)

    def _check_instances(self, service: EmbeddedService) -> None:
        for k, instance in enumerate(service.instances):
            code = instance.process.returncode
            if code is not None and k not in self.load.down:
                self.tally.crash(f"reference instance {k} exited by itself with code {code}")

    async def _progress(self) -> None:
        scope = trio.CancelScope()
        self.interrupt.scopes.append(scope)
        with scope:
            await self._progress_lines()
        self.interrupt.scopes.remove(scope)

    async def _progress_lines(self) -> None:
        load = self.load
        while True:
            left = load.deadline - trio.current_time()
            if left <= 0:
                return
            await trio.sleep(min(PROGRESS_S, left))
            reqs = self.tally.reqs
            outcomes = Counter(r.outcome() for r in reqs.values() if r.status is not None
                               or r.error or r.timed_out)
            print(f"harness soak: {trio.current_time() - load.t0:5.0f}s  "
                  f"{len(reqs)} requests, {outcomes.get('409', 0)} conflicts, "
                  f"{len(load.provider.calls)} provider calls", file=sys.stderr, flush=True)

    # -- the restart --------------------------------------------------------------------------

    async def _restart_once(self) -> None:
        """Half-way: SIGKILL one instance while it streams a held run, then start it again."""
        assert self.service is not None
        load = self.load
        waiting = trio.CancelScope()  # an interrupt before the restart began skips it
        self.interrupt.scopes.append(waiting)
        with waiting:
            await trio.sleep_until(load.t0 + self.plan.duration_s / 2)  # a schedule, not a sync
        self.interrupt.scopes.remove(waiting)
        if waiting.cancelled_caught or self.interrupt.signal is not None:
            return
        service = self.service
        k = self.rng.randrange(self.plan.instances)
        info = self.tally.restart
        info.update(instance=k)
        victim = load.new_req("restart-victim", k, None, "hold")

        async def kill(live: list[tuple[Req, Racer]]) -> None:
            if live and live[0][1].response.status == 200:
                await load.wait_called(victim)
            await self._scrape(k)
            load.down.add(k)
            info["killed_at_s"] = round(trio.current_time() - load.t0, 3)
            await service.kill(k)

        await load.group([victim], "whole", kill)
        info["victim_run_id"] = victim.run_id
        info["victim_outcome"] = victim.outcome()
        t = trio.current_time()
        try:
            with trio.fail_after(RESTART_S):
                await service.restart(k)
        except (EmbeddedStartError, trio.TooSlowError) as exc:
            self.tally.crash(f"restart of instance {k} failed: {type(exc).__name__}: "
                             f"{str(exc)[-2000:]}")  # with the log's tail: the why
            return
        self.incarnation[k] += 1
        self.old_clients.append(load.clients[k])
        load.clients[k] = ServiceClient(load.targets[k])
        load.down.discard(k)
        load.up.set()
        load.up = trio.Event()
        info.update(done=True, restart_s=round(trio.current_time() - t, 3))

    async def _scrape(self, k: int) -> None:
        """Peak RSS and the service's own counters of instance ``k`` (before it stops)."""
        assert self.service is not None
        instance = self.service.instances[k]
        self.tally.rss.append({"instance": k, "incarnation": self.incarnation[k],
                               "vm_hwm_kib": machine.peak_rss_kib(instance.process.pid)})
        try:
            async with httpx.AsyncClient(timeout=SCRAPE_S) as client:
                with trio.fail_after(SCRAPE_S):
                    resp = await client.get(instance.url + "/metrics")
            resp.raise_for_status()
        except (httpx.HTTPError, trio.TooSlowError):
            self.tally.metrics_failures += 1
            return
        self.tally.metrics_scrapes += 1
        self.tally.metrics.update(parse_metrics(resp.text))


def machine_info() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "usable_cores": machine.usable_cores(),
            "cpu_model": machine.cpu_model(), "memory_mib": machine.memory_mib(),
            "load_average_at_end": machine.load_average(),
            "python": platform.python_version(), "platform": platform.platform(terse=True)}


# -- the database (read-only) -----------------------------------------------------------------

_ACTIVE = "status IN ('pending', 'running')"


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5,
                           options="-c default_transaction_read_only=on")


def active_count(dsn: str) -> int:
    with _connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM ai_chat_runs WHERE {_ACTIVE}").fetchone()
    return int(row[0]) if row else 0


def active_ids(dsn: str) -> list[str]:
    with _connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            f"SELECT id::text FROM ai_chat_runs WHERE {_ACTIVE}").fetchall()]


def db_totals(dsn: str) -> dict[str, Any]:
    """Counts from ``ai_chat_runs`` (protocol §5): the service's own record of every run."""
    with _connect(dsn) as conn:
        runs = {r[0]: r[1] for r in conn.execute(
            "SELECT id::text, status FROM ai_chat_runs").fetchall()}
        reasons = {(r[0] or "(none)"): int(r[1]) for r in conn.execute(
            "SELECT error, count(*) FROM ai_chat_runs WHERE status = 'aborted' "
            "GROUP BY error ORDER BY error").fetchall()}
    by_status = Counter(runs.values())
    return {"runs": runs, "by_status": dict(by_status),
            "active": by_status.get("pending", 0) + by_status.get("running", 0),
            "reaped": reasons.get("lease expired", 0), "aborted_by_reason": reasons}
