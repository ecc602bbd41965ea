"""Database outages for real (issue #6), and the watchdog of embedded reference processes.

An outage here is what a stopped Postgres does to one service: every backend connected to its
database is terminated and new connections are refused
(``raceharness.stack.embedded.database_down``), on the session's shared server, never stopping it.

- End to end, in test_conformance: both outage scenarios valid against the correct reference
  (with the whole catalogue), and ``untracked-on-begin-failure`` caught by ``db-outage`` and
  by ``db-outage-mid-race`` each.
- In process: a run whose database goes mid-stream ends its stream cleanly at once and is
  recorded once the database is back; a turn during the outage is refused 503.
- The gate: a settle whose database is down completes after it returns (or gives up, bounded);
  the registry stops renewing a run whose task ended, so its lease and the reaper end it.
- A harness killed with SIGKILL leaves no reference process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from raceharness.reference.gate import Claim, Gate
from raceharness.reference.metrics import Metrics
from raceharness.reference.registry import Registry
from raceharness.reference.runner import UNSAVED_ERROR, LiveRun
from raceharness.reference.settings import Settings, SettingsError
from raceharness.stack.embedded import database_down, database_up
from raceharness.stack.postgres import PostgresCluster
from tests.refkit import Api, FakeProvider, make_settings, running_reference, seed_chat

ROOT = Path(__file__).resolve().parents[2]
ACTIVE = ("pending", "running")


def dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


@contextlib.asynccontextmanager
async def outage(cluster: PostgresCluster, dsn: str) -> AsyncIterator[None]:
    """The database of ``dsn`` taken away for the block (always given back)."""
    name = dbname(dsn)
    await asyncio.to_thread(database_down, cluster.dsn, name)
    try:
        yield
    finally:
        await asyncio.to_thread(database_up, cluster.dsn, name)


# -- in process: the runner and the turn during an outage ---------------------------------------

async def latest_when_settled(api: Api, chat_id: str) -> dict[str, Any]:
    """Bounded poll of ``/run`` (503 while the pool reconnects) until the run is terminal."""
    async with asyncio.timeout(30):
        while True:
            resp = await api.latest(chat_id)
            if resp.status_code == 200:
                data: dict[str, Any] = resp.json()["data"]
                if data["run"] is not None and data["run"]["status"] not in ACTIVE:
                    return data
            await asyncio.sleep(0.05)  # polling the server's view: it exposes no event


@pytest.mark.anyio
async def test_a_run_whose_database_goes_mid_stream_ends_at_once_and_settles_when_it_returns(
        pg_cluster: PostgresCluster, pg_dsn: str, users: dict[str, str]) -> None:
    provider = FakeProvider(mode="hold")
    settings = make_settings(pg_dsn, pool_timeout_s=1.0)
    async with running_reference(settings, provider) as ref, \
            httpx.AsyncClient(timeout=30) as client:
        api = Api(client, ref.url, users["alice"])
        async with api.open_turn("hello") as turn:
            assert turn.status == 200
            await turn.until("text-delta")  # the provider holds the run after one token
            chat_id = turn.chat_id
            async with outage(pg_cluster, pg_dsn):
                provider.release.set()
                tail = await turn.rest()  # the stream ends while the database is away
                assert [f if f == "[DONE]" else f["type"] for f in tail][-2:] == [
                    "error", "[DONE]"]
                assert tail[-2]["errorText"] == UNSAVED_ERROR
                # A turn meanwhile: refused before any stream or provider call.
                refused = await api.turn("during the outage", chat_id)
                assert (refused.status, refused.body["code"]) == (503, "A_RUN_BEGIN_FAILED")
                assert provider.calls_for("during the outage") == []
                assert (await client.get(ref.url + "/healthz")).status_code == 503
        data = await latest_when_settled(api, chat_id)
        assert (data["run"]["status"], data["run"]["error"]) == ("failed", UNSAVED_ERROR)
        assert (data["message"]["status"], data["message"]["content"]) == ("error", "Hello!")
        again = await api.turn("after the outage", chat_id)
        assert again.status == 200 and again.types[-2:] == ["finish", "[DONE]"]


@pytest.mark.anyio
async def test_pooled_connections_whose_backends_were_terminated_are_replaced_before_use(
        pg_cluster: PostgresCluster, pg_dsn: str, users: dict[str, str]) -> None:
    """After a short outage every idle pooled connection is dead: the pool's check (a round
    trip only for a connection the server wrote to unasked) replaces them, so the first turn
    after the outage succeeds instead of failing on a stale connection."""
    provider = FakeProvider()
    async with running_reference(make_settings(pg_dsn, pool_min_size=4), provider) as ref, \
            httpx.AsyncClient(timeout=30) as client:
        api = Api(client, ref.url, users["alice"])
        first = await api.turn("before the outage")
        assert first.status == 200 and first.chat_id is not None
        async with outage(pg_cluster, pg_dsn):
            pass  # database_down returns once every backend of the database has exited
        after = await api.turn("after the outage", first.chat_id)
        runs = await api.runs(first.chat_id)
    assert (after.status, after.types[-2:]) == (200, ["finish", "[DONE]"])
    assert runs.status_code == 200


# -- the gate and the registry -------------------------------------------------------------------

def run_row(dsn: str, run_id: UUID) -> tuple[str, str | None, Any]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT status, error, lease_expires_at FROM ai_chat_runs "
                           "WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@contextlib.asynccontextmanager
async def open_gate(dsn: str, lease_s: float = 30.0) -> AsyncIterator[Gate]:
    """A gate on a pool configured as the reference's (checked connections, short timeouts)."""
    pool = AsyncConnectionPool(dsn, min_size=2, max_size=4, timeout=1.0, open=False,
                               check=AsyncConnectionPool.check_connection,
                               reconnect_timeout=5.0)
    await pool.open(wait=True, timeout=30.0)
    try:
        yield Gate(pool, instance_id="outage-test", lease_s=lease_s, faults=frozenset())
    finally:
        await pool.close(timeout=5.0)


@contextlib.asynccontextmanager
async def claimed(dsn: str) -> AsyncIterator[tuple[Gate, Claim]]:
    """A gate on a seeded chat, and the claim of a run begun on it."""
    user, chat = seed_chat(dsn)
    async with open_gate(dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        yield gate, claim


TERMINAL: dict[str, Any] = {
    "status": "succeeded", "error": None, "content": "Hello!", "message_id": None,
    "message_status": "completed", "step_count": 1, "stop_requested": False}


@pytest.mark.anyio
async def test_a_settle_whose_database_is_down_completes_after_the_database_returns(
        pg_cluster: PostgresCluster, pg_dsn: str) -> None:
    async with claimed(pg_dsn) as (gate, claim):
        failures: list[BaseException] = []
        failed = asyncio.Event()

        def on_failure(exc: BaseException) -> None:
            failures.append(exc)
            failed.set()

        async with outage(pg_cluster, pg_dsn):
            settle = asyncio.create_task(gate.settle_retrying(
                claim, give_up_after_s=120.0, max_delay_s=0.2, on_failure=on_failure,
                **TERMINAL))
            async with asyncio.timeout(30):
                await failed.wait()  # at least one attempt met the outage
            assert not settle.done()
        async with asyncio.timeout(60):
            assert await settle is True
    assert all(isinstance(e, psycopg.OperationalError) for e in failures)
    assert run_row(pg_dsn, claim.run_id)[:2] == ("succeeded", None)


@pytest.mark.anyio
async def test_a_settle_gives_up_when_the_database_stays_down(
        pg_cluster: PostgresCluster, pg_dsn: str) -> None:
    async with claimed(pg_dsn) as (gate, claim):
        async with outage(pg_cluster, pg_dsn):
            assert await gate.settle_retrying(claim, give_up_after_s=0.5, max_delay_s=0.1,
                                              **TERMINAL) is None
    assert run_row(pg_dsn, claim.run_id)[0] == "running"  # for the lease to end


def expire(dsn: str, run_id: UUID) -> None:
    """The run's lease runs out (as it does when nobody renews it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE ai_chat_runs SET lease_expires_at = now() - interval '1 s' "
                     "WHERE id = %s", (run_id,))


@pytest.mark.anyio
async def test_the_heartbeat_renews_a_run_only_while_its_task_lives_and_the_reaper_ends_it(
        pg_dsn: str) -> None:
    """A live run is renewed and never reaped by its own instance, even with its lease lapsed
    (an outage longer than the lease stops the heartbeat too). A run task that ends without its
    terminal write (the retries ran out) leaves the registry: no longer renewed, it is reaped."""
    user, chat = seed_chat(pg_dsn)
    async with open_gate(pg_dsn) as gate:
        claim = await gate.begin(chat_id=chat, user_id=user)
        assert claim is not None
        registry = Registry(make_settings(pg_dsn), gate, Metrics())
        run = LiveRun(chat_id=chat, user_id=user, claim=claim, message_id=None)
        release = asyncio.Event()

        async def drive(_: LiveRun) -> None:
            await release.wait()  # streaming; then it ends with no terminal write

        registry.launch(run, drive)
        expire(pg_dsn, claim.run_id)
        await registry.reap()
        assert run_row(pg_dsn, claim.run_id)[0] == "running"  # live here: not reaped
        lapsed = run_row(pg_dsn, claim.run_id)[2]
        await registry.heartbeat()
        renewed = run_row(pg_dsn, claim.run_id)[2]
        assert renewed > lapsed
        release.set()
        await asyncio.gather(*registry._tasks)
        assert claim.run_id not in registry.runs
        await registry.heartbeat()
        assert run_row(pg_dsn, claim.run_id)[2] == renewed  # its task ended: not renewed
        expire(pg_dsn, claim.run_id)
        await registry.reap()
    assert run_row(pg_dsn, claim.run_id)[:2] == ("aborted", "lease expired")


# -- settings -------------------------------------------------------------------------------------

def test_reference_parent_pid_is_read_from_the_environment_and_checked() -> None:
    env = {"DATABASE_URL": "dbname=x"}
    assert Settings.from_env(env).parent_pid is None
    assert Settings.from_env({**env, "REFERENCE_PARENT_PID": "4242"}).parent_pid == 4242
    for bad in ("abc", "0"):
        with pytest.raises(SettingsError, match="REFERENCE_PARENT_PID"):
            Settings.from_env({**env, "REFERENCE_PARENT_PID": bad})


# -- the watchdog ---------------------------------------------------------------------------------

HARNESS = """
import sys
import trio
from raceharness.stack.embedded import embedded_postgres, reference_service

async def main():
    async with embedded_postgres(sys.argv[1]) as cluster:
        async with reference_service(cluster, "http://127.0.0.1:9/v1") as service:
            instance = service.instances[0]
            print(instance.process.pid, service.db_name, instance.log_path, flush=True)
            await trio.sleep_forever()

trio.run(main)
"""


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (its new parent may be slow to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_harness_killed_with_sigkill_leaves_no_reference_process(
        pg_cluster: PostgresCluster) -> None:
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, pg_cluster.dsn], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid, db_name, log_path = 0, None, None
    try:
        assert harness.stdout is not None
        line = harness.stdout.readline()  # the stack is up (bounded by READY_TIMEOUT_S)
        assert line, harness.communicate()[1][-2000:]
        pid_text, db_name, log_path = line.split()
        pid = int(pid_text)
        assert alive(pid)
        harness.send_signal(signal.SIGKILL)  # no atexit, no cleanup of its own
        harness.communicate()
        deadline = time.monotonic() + 30
        while alive(pid):  # polling another process's exit: not our child, nothing to wait on
            assert time.monotonic() < deadline, f"reference {pid} outlived its harness by 30 s"
            time.sleep(0.05)
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.communicate()
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)
        if db_name is not None:
            pg_cluster.drop_database(db_name)
        if log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(log_path)


@pytest.mark.anyio
async def test_the_pool_check_works_on_descriptors_past_1024(pg_dsn: str) -> None:
    """A server with a thousand clients holds database sockets numbered past FD_SETSIZE: the
    check must not use select() (which raises there, and every checkout then backs off)."""
    from raceharness.reference.app import suspect_connection_check

    pipes = [os.pipe() for _ in range(520)]
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            assert conn.pgconn.socket > 1024
            await suspect_connection_check([])(conn)  # healthy: passes without a round trip
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


@pytest.mark.anyio
async def test_a_turn_whose_token_must_be_looked_up_during_an_outage_is_refused_as_a_begin(
        pg_cluster: PostgresCluster, pg_dsn: str, users: dict[str, str]) -> None:
    """A token not in the auth cache needs the database: during an outage the turn is
    refused 503 A_RUN_BEGIN_FAILED like any turn that cannot begin (protocol §2.4), never
    the generic A_UNAVAILABLE, and no provider call is made."""
    provider = FakeProvider()
    settings = make_settings(pg_dsn, pool_timeout_s=1.0)
    async with running_reference(settings, provider) as ref, \
            httpx.AsyncClient(timeout=30) as client:
        api = Api(client, ref.url, users["alice"])
        first = await api.turn("before the outage")  # alice's token is now cached
        assert first.status == 200
        bob = next(token for name, token in users.items() if name != "alice")
        async with outage(pg_cluster, pg_dsn):
            refused = await api.turn("uncached token during the outage", token=bob)
            assert (refused.status, refused.body["code"]) == (503, "A_RUN_BEGIN_FAILED")
            assert provider.calls_for("uncached token during the outage") == []
