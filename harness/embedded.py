"""The embedded default target: Postgres, the reference server and the fake provider, all
started on free loopback ports and torn down after, even on Ctrl-C.

The reference runs as its own process (``python -m reference``) so the harness talks to it
only over HTTP, exactly as it would to a deployment it did not start. Its bearer token goes
through the environment, never the command line.
"""

from __future__ import annotations

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
from dataclasses import dataclass

import httpx
import trio

from harness.postgres import PostgresCluster, provision
from harness.target import Target

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0


class EmbeddedStartError(Exception):
    """The embedded stack could not start (exit code 4); the message has the log tail."""


@dataclass
class EmbeddedStack:
    target: Target
    dsn: str
    cluster: PostgresCluster
    log_path: str


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def embedded_stack(provider_url: str, *, faults: Sequence[str] = (),
                         autonomous_runs: bool = False, dsn: str | None = None,
                         extra_env: dict[str, str] | None = None,
                         ) -> AsyncIterator[EmbeddedStack]:
    t0 = time.monotonic()
    cluster = await trio.to_thread.run_sync(provision, dsn)
    try:
        db_dsn = cluster.dsn
        if cluster.source != "dsn":
            db_dsn = await trio.to_thread.run_sync(cluster.create_database, "reference")
        token = secrets.token_urlsafe(18)
        port = free_port()
        env = {**os.environ, "DATABASE_URL": db_dsn, "PROVIDER_BASE_URL": provider_url,
               "REFERENCE_FAULTS": ",".join(faults), "REFERENCE_TOKENS": token,
               "AUTONOMOUS_RUNS": "true" if autonomous_runs else "false",
               "HEARTBEAT_INTERVAL_S": "1", "LEASE_S": "10", "REAPER_INTERVAL_S": "2",
               "POOL_MAX_SIZE": "60", **(extra_env or {})}
        log_file = tempfile.NamedTemporaryFile(prefix="raceharness-reference-", suffix=".log",
                                               delete=False)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "reference", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            await _wait_ready(url, proc, log_file.name)
            log.info("embedded reference ready at %s in %.2fs%s", url, time.monotonic() - t0,
                     f" (FAULTS: {', '.join(faults)})" if faults else "")
            yield EmbeddedStack(Target(base_url=url, token=token), db_dsn, cluster,
                                log_file.name)
        finally:
            with trio.CancelScope(shield=True):
                await _terminate(proc)
            log_file.close()
            if not os.environ.get("HARNESS_KEEP_LOGS"):
                with contextlib.suppress(OSError):
                    os.unlink(log_file.name)
    finally:
        await trio.to_thread.run_sync(cluster.close)


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
