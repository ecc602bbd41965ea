"""The embedded default target: Postgres, the reference server (one or several instances) and
the fake provider, all on free loopback ports and torn down after, even on Ctrl-C.

The reference runs as its own processes (``python -m reference``) so the harness talks to it
only over HTTP, exactly as it would to a deployment it did not start. Bearer tokens go through
the environment, never the command line. Each service gets a database of its own, so a fault
that changes the schema (``no-unique-index``) never leaks into the next service.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import httpx
import psycopg
import trio

from harness.postgres import PostgresCluster, provision
from harness.target import Target

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0

# Reference processes still running: killed at interpreter exit, should a run be abandoned
# without its cleanup (e.g. a test timeout inside trio). (PR_SET_PDEATHSIG is no help here:
# trio forks from a worker thread, and the signal fires when that thread exits.)
_LIVE: set[trio.Process] = set()


def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(OSError):
            proc.kill()


atexit.register(_kill_leftovers)



class EmbeddedStartError(Exception):
    """The embedded stack could not start (exit code 4); the message has the log tail."""


@dataclass
class Instance:
    url: str
    port: int
    env: dict[str, str]
    process: trio.Process
    log_path: str


@dataclass
class EmbeddedService:
    """One embedded reference deployment: its instances share one database."""

    dsn: str
    token: str
    other_token: str
    instances: list[Instance] = field(default_factory=list)

    @property
    def targets(self) -> list[Target]:
        return [Target(base_url=i.url, token=self.token, other_token=self.other_token)
                for i in self.instances]

    # -- control (the embedded stack only: the harness never kills what it did not start) --

    async def kill(self, k: int) -> None:
        """SIGKILL instance ``k``: it dies without ending its runs (a crash)."""
        proc = self.instances[k].process
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        _LIVE.discard(proc)

    async def restart(self, k: int) -> None:
        """Start instance ``k`` again on the same port and database."""
        old = self.instances[k]
        self.instances[k] = await _start_process(old.env, old.port)

    def reject_run_inserts(self, on: bool) -> None:
        """A database failure limited to starting runs: every run INSERT fails (23514) while
        on. Everything else keeps working, so only the gate's failure path is exercised."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if on:
                conn.execute("ALTER TABLE ai_chat_runs ADD CONSTRAINT harness_outage "
                             "CHECK (false) NOT VALID")
            else:
                conn.execute("ALTER TABLE ai_chat_runs DROP CONSTRAINT IF EXISTS harness_outage")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def embedded_postgres(dsn: str | None = None) -> AsyncIterator[PostgresCluster]:
    cluster = await trio.to_thread.run_sync(provision, dsn)
    try:
        yield cluster
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(cluster.close)


def _service_database(cluster: PostgresCluster) -> tuple[str, str | None]:
    """A fresh database for one service (name to drop after), or the DSN's own database when
    the server does not let us create one."""
    name = f"rh_{secrets.token_hex(6)}"
    try:
        return cluster.create_database(name), name
    except psycopg.Error:
        if cluster.source != "dsn":
            raise
        return cluster.dsn, None


@contextlib.asynccontextmanager
async def reference_service(cluster: PostgresCluster, provider_url: str, *,
                            faults: Sequence[str] = (), autonomous_runs: bool = False,
                            lease_s: float | None = None, instances: int = 1,
                            provider_timeout_s: float | None = None,
                            ) -> AsyncIterator[EmbeddedService]:
    t0 = time.monotonic()
    dsn, db_name = await trio.to_thread.run_sync(_service_database, cluster)
    service = EmbeddedService(dsn=dsn, token=secrets.token_urlsafe(18),
                              other_token=secrets.token_urlsafe(18))
    lease = lease_s if lease_s is not None else 10.0
    env = {**os.environ, "DATABASE_URL": dsn, "PROVIDER_BASE_URL": provider_url,
           "REFERENCE_FAULTS": ",".join(faults),
           "REFERENCE_TOKENS": f"{service.token},{service.other_token}",
           "AUTONOMOUS_RUNS": "true" if autonomous_runs else "false",
           "HEARTBEAT_INTERVAL_S": str(min(1.0, lease / 3)), "LEASE_S": str(lease),
           "REAPER_INTERVAL_S": str(min(2.0, lease / 2)), "POOL_MAX_SIZE": "60",
           **({"PROVIDER_READ_TIMEOUT_S": str(provider_timeout_s)} if provider_timeout_s
              else {})}
    try:
        try:
            for k in range(instances):
                service.instances.append(await _start_process(
                    {**env, "INSTANCE_ID": f"embedded-{k}"}, free_port()))
            log.info("embedded reference ready (%d instance%s) in %.2fs%s", instances,
                     "" if instances == 1 else "s", time.monotonic() - t0,
                     f" (FAULTS: {', '.join(faults)})" if faults else "")
            yield service
        finally:
            with trio.CancelScope(shield=True):
                for instance in service.instances:
                    await _stop_process(instance)
    finally:
        if db_name is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(cluster.drop_database, db_name)


async def _start_process(env: dict[str, str], port: int) -> Instance:
    log_file = tempfile.NamedTemporaryFile(prefix="raceharness-reference-", suffix=".log",
                                           delete=False)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "reference", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _LIVE.add(proc)
    log_file.close()
    instance = Instance(f"http://127.0.0.1:{port}", port, env, proc, log_file.name)
    try:
        await _wait_ready(instance.url, proc, log_file.name)
    except BaseException:
        with trio.CancelScope(shield=True):
            await _stop_process(instance)
        raise
    return instance


async def _stop_process(instance: Instance) -> None:
    await _terminate(instance.process)
    _LIVE.discard(instance.process)
    if not os.environ.get("HARNESS_KEEP_LOGS"):
        with contextlib.suppress(OSError):
            os.unlink(instance.log_path)


async def _wait_ready(url: str, proc: trio.Process, log_path: str) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        with trio.move_on_after(READY_TIMEOUT_S):
            while proc.returncode is None:
                try:
                    if (await client.get(url + "/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)  # a readiness probe of another process: nothing to await
    raise EmbeddedStartError(
        f"the reference server did not become ready (exit code {proc.returncode}); "
        f"its log ends with:\n{_tail(log_path)}")


async def _terminate(proc: trio.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(10):
        await proc.wait()
        return
    proc.kill()
    await proc.wait()


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return "(no log)"
