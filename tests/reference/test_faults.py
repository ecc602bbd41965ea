"""Each fault switch of conformance.md §4 changes exactly the behaviour it names.

Most tests are a parametrised pair: the same steps against a correct server and against a
server with one fault on, asserting the two different observed behaviours, so the switch is
proven to be what changes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

from raceharness.commands.cli import main as harness_main
from raceharness.reference.faults import VALID_FAULTS, Fault
from raceharness.reference.schema import GATE_INDEX
from raceharness.reference.settings import Settings, SettingsError
from tests.refkit import (
    Api,
    FakeProvider,
    lock_waiters,
    make_settings,
    running_reference,
    turn_through_gate,
)

pytestmark = pytest.mark.anyio

CONFLICT_BODY = {"statusCode": 409, "message": "An agent run is already in progress for this chat",
                 "code": "A_RUN_ALREADY_ACTIVE"}
CORRECT = "correct"


def settings_for(dsn: str, fault: str, **overrides: Any) -> Any:
    faults = frozenset() if fault == CORRECT else frozenset({Fault(fault)})
    return make_settings(dsn, faults=faults, **overrides)


def pair(fault: str) -> Any:
    """Parametrise a test over (correct server, server with ``fault``)."""
    return pytest.mark.parametrize("fault", [CORRECT, fault])


# -- database helpers (async: the server shares the event loop) --------------------------------

async def scalar(dsn: str, sql: str, params: Any = None) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
        return None if row is None else row[0]


async def execute(dsn: str, sql: str, params: Any = None) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql, params)


async def run_row(dsn: str, run_id: str | UUID) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT status, error, lease_expires_at FROM ai_chat_runs WHERE id = %s", (run_id,))
        row = await cur.fetchone()
        assert row is not None
        return tuple(row)


async def count_rows(dsn: str) -> dict[str, int]:
    return {t: await scalar(dsn, f"SELECT count(*) FROM {t}")
            for t in ("ai_chats", "ai_chat_runs", "ai_chat_messages")}


async def wait_blocked_or_done(dsn: str, task: asyncio.Task[Any],
                               also: asyncio.Event | None = None) -> None:
    """Until ``task`` is done, ``also`` is set, or some backend waits on a lock (bounded)."""
    async with asyncio.timeout(10):
        while not task.done() and not (also is not None and also.is_set()):
            if await lock_waiters(dsn) > 0:
                return
            await asyncio.sleep(0.01)


async def until_not(predicate: Any) -> None:
    """Bounded poll of an in-process condition with no event of its own."""
    async with asyncio.timeout(10):
        while predicate():  # noqa: ASYNC110 - no event exists for it
            await asyncio.sleep(0.01)


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10)


# -- gate-path faults ---------------------------------------------------------------------------

@pair("swallow-unique-violation")
async def test_swallow_unique_violation_streams_the_gate_loser_untracked(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider()
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        chat_id = (await api.turn("setup")).chat_id
        assert chat_id is not None
        loser, holder_id = await turn_through_gate(api, pg_dsn, chat_id, "loser")
    loser_calls = provider.calls_for("loser")
    if fault == CORRECT:
        assert loser.status == 409
        assert loser.body == {**CONFLICT_BODY, "activeRunId": holder_id}
        assert loser_calls == []
    else:
        assert loser.status == 200
        assert loser.frames[0]["messageMetadata"] == {"chatId": chat_id}  # no runId
        assert "x-run-id" not in loser.headers
        assert loser.frames[-2:] == [{"type": "finish"}, "[DONE]"]
        assert len(loser_calls) == 1


@pair("blanket-500")
async def test_blanket_500_answers_the_gate_conflict_500(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider()
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        chat_id = (await api.turn("setup")).chat_id
        assert chat_id is not None
        loser, holder_id = await turn_through_gate(api, pg_dsn, chat_id, "loser")
    assert provider.calls_for("loser") == []
    if fault == CORRECT:
        assert (loser.status, loser.body) == (409, {**CONFLICT_BODY, "activeRunId": holder_id})
    else:
        assert (loser.status, loser.body) == (500, {"statusCode": 500,
                                                    "message": "Internal server error"})


@pair("provider-before-gate")
async def test_provider_before_gate_calls_the_provider_for_a_gate_loser(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider()
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        chat_id = (await api.turn("setup")).chat_id
        assert chat_id is not None
        loser, holder_id = await turn_through_gate(api, pg_dsn, chat_id, "loser")
        loser_calls = provider.calls_for("loser")
        if loser_calls:
            async with asyncio.timeout(5):
                await loser_calls[0].disconnected.wait()
    assert (loser.status, loser.body) == (409, {**CONFLICT_BODY, "activeRunId": holder_id})
    assert len(loser_calls) == (0 if fault == CORRECT else 1)


@pair("no-unique-index")
async def test_no_unique_index_lets_a_second_active_run_in(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider(mode="hold")
    provider.release.set()
    streaming = asyncio.Event()
    outcome: dict[str, Any] = {}
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        chat_id = (await api.turn("setup")).chat_id  # the server has started: schema applied
        indexes = await scalar(pg_dsn, "SELECT count(*) FROM pg_indexes WHERE indexname = %s",
                               (GATE_INDEX,))
        assert chat_id is not None
        provider.release = asyncio.Event()

        async def second() -> None:
            async with api.open_turn("second", chat_id) as turn:
                outcome["status"] = turn.status
                if turn.status != 200:
                    outcome["body"] = json.loads(await turn.response.aread())
                    return
                await turn.until("text-delta")
                outcome["run_id"] = turn.run_id
                streaming.set()
                await turn.rest()

        async with asyncio.timeout(20):
            async with await psycopg.AsyncConnection.connect(pg_dsn) as holder:
                cur = await holder.execute(
                    "INSERT INTO ai_chat_runs (chat_id, status) VALUES (%s, 'running') "
                    "RETURNING id", (chat_id,))
                row = await cur.fetchone()
                assert row is not None
                task = asyncio.create_task(second())
                await wait_blocked_or_done(pg_dsn, task, also=streaming)
                await holder.commit()
            if fault != CORRECT:
                await streaming.wait()
            active = await scalar(
                pg_dsn, "SELECT count(*) FROM ai_chat_runs WHERE chat_id = %s "
                        "AND status IN ('pending', 'running')", (chat_id,))
            provider.release.set()
            await task
    if fault == CORRECT:
        assert indexes == 1
        assert outcome == {"status": 409, "body": {**CONFLICT_BODY, "activeRunId": str(row[0])}}
        assert active == 1
    else:
        assert indexes == 0
        assert outcome["status"] == 200 and outcome["run_id"]
        assert active == 2  # the holder and the second turn: two active runs on one chat


# -- rejected turns that write or call -------------------------------------------------------------

@pair("persist-before-gate")
async def test_persist_before_gate_leaves_a_rejected_turns_message(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider(mode="hold")
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        async with asyncio.timeout(20), api.open_turn("holder") as holder:
            await holder.until("text-delta")
            rejected = await api.turn("second", holder.chat_id)
            provider.release.set()
            await holder.rest()
        left = await scalar(pg_dsn, "SELECT count(*) FROM ai_chat_messages WHERE content = %s",
                            ("second",))
    assert (rejected.status, rejected.body) == (409, {**CONFLICT_BODY,
                                                      "activeRunId": holder.run_id})
    assert provider.calls_for("second") == []
    assert left == (0 if fault == CORRECT else 1)


@pair("untracked-on-begin-failure")
async def test_untracked_on_begin_failure_streams_without_a_run(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider()
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        chat_id = (await api.turn("setup")).chat_id
        assert chat_id is not None
        # Every run INSERT now fails with 23514: a database error that is not a conflict.
        await execute(pg_dsn, "ALTER TABLE ai_chat_runs ADD CONSTRAINT no_new_runs "
                             "CHECK (false) NOT VALID")
        before = await count_rows(pg_dsn)
        result = await api.turn("second", chat_id)
        after = await count_rows(pg_dsn)
    second_calls = provider.calls_for("second")
    if fault == CORRECT:
        assert (result.status, result.body) == (503, {
            "statusCode": 503, "message": "Could not start the agent run. Please try again.",
            "code": "A_RUN_BEGIN_FAILED"})
        assert second_calls == []
        assert after == before
    else:
        assert result.status == 200
        assert result.frames[0]["messageMetadata"] == {"chatId": chat_id}  # no runId
        assert result.frames[-2:] == [{"type": "finish"}, "[DONE]"]
        assert len(second_calls) == 1
        assert after["ai_chat_runs"] == before["ai_chat_runs"]


# -- run lifecycle faults ------------------------------------------------------------------------

@pair("claim-held-open")
async def test_claim_held_open_makes_the_second_turn_wait_then_win(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider(mode="hold")
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        async with asyncio.timeout(20):
            async with api.open_turn("holder") as holder:
                await holder.until("text-delta")
                visible = await scalar(
                    pg_dsn, "SELECT count(*) FROM ai_chat_runs WHERE status = 'running'")
                second = asyncio.create_task(api.turn("second", holder.chat_id))
                await wait_blocked_or_done(pg_dsn, second)
                answered_while_holding = second.done()
                stats = ref.runtime.pool.get_stats()
                in_use = stats["pool_size"] - stats["pool_available"]
                provider.release.set()
                await holder.rest()
            result = await second
    assert holder.frames[-2:] == [{"type": "finish"}, "[DONE]"]
    if fault == CORRECT:
        assert visible == 1
        assert answered_while_holding
        assert (result.status, result.body) == (409, {**CONFLICT_BODY,
                                                      "activeRunId": holder.run_id})
    else:
        assert visible == 0  # the claim is invisible outside its open transaction
        assert not answered_while_holding  # blocked on the index lock, not a fast 409
        assert in_use == 2  # the holder's claim and the waiting turn: one connection each
        assert result.status == 200  # a late second winner
        assert result.run_id is not None and result.run_id != holder.run_id
        assert len(provider.calls_for("second")) == 1


@pair("leak-on-provider-error")
async def test_leak_on_provider_error_keeps_the_chat_held(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider(mode="error-mid")
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        failed = await api.turn("first")
        assert failed.run_id is not None
        status, error, _lease = await run_row(pg_dsn, failed.run_id)
        provider.mode = "finish"
        following = await api.turn("next", failed.chat_id)
    assert failed.status == 200
    assert failed.frames[-2:] == [{"type": "error", "errorText": "model overloaded"}, "[DONE]"]
    if fault == CORRECT:
        assert (status, error) == ("failed", "model overloaded")
        assert following.status == 200
        assert following.frames[-2:] == [{"type": "finish"}, "[DONE]"]
    else:
        assert (status, error) == ("running", None)
        assert (following.status, following.body) == (409, {**CONFLICT_BODY,
                                                            "activeRunId": failed.run_id})


@pair("stop-ignores-provider")
async def test_stop_ignores_provider_keeps_relaying_tokens(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider(tokens=("Hel", "lo", "!"), mode="hold")
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        async with asyncio.timeout(20), api.open_turn("held") as turn:
            await turn.until("text-delta")
            call = provider.calls_for("held")[0]
            stopped = (await api.stop(runId=turn.run_id)).json()
            disconnected_at_stop = call.disconnected.is_set()
            status, error, _lease = await run_row(pg_dsn, turn.run_id)
            if fault == CORRECT:
                await call.disconnected.wait()
            provider.release.set()
            rest = await turn.rest()
    assert stopped == {"data": {"stopped": True}, "success": True, "status": 200}
    assert (status, error) == ("aborted", "stopped by user")
    deltas = [f["delta"] for f in rest if f != "[DONE]" and f["type"] == "text-delta"]
    assert rest[-2:] == [{"type": "abort"}, "[DONE]"]
    if fault == CORRECT:
        assert disconnected_at_stop
        assert deltas == []
        assert call.tokens_sent == 1
    else:
        assert not disconnected_at_stop
        assert deltas == ["lo", "!"]  # the provider kept streaming into a stopped run
        assert call.tokens_sent == 3


@pair("ignore-disconnect")
async def test_ignore_disconnect_lets_the_run_go_on_unread(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider(mode="hold")
    settings = settings_for(pg_dsn, fault, autonomous_runs=False)
    async with running_reference(settings, provider) as ref, client() as http:
        api = Api(http, ref.url, users["alice"])
        async with asyncio.timeout(20):
            async with api.open_turn("left") as turn:
                await turn.until("text-delta")
                live = ref.runtime.registry.runs[UUID(turn.run_id)]
                call = provider.calls_for("left")[0]
            # The client is gone; wait until the server has noticed (it detaches the reader).
            await until_not(lambda: live.attached)
            disconnected_at_detach = call.disconnected.is_set()
            if fault == CORRECT:
                await call.disconnected.wait()
            provider.release.set()
            await live.done.wait()
        status, error, _lease = await run_row(pg_dsn, turn.run_id)
    if fault == CORRECT:
        assert (status, error) == ("aborted", "client disconnected")
        assert call.tokens_sent == 1
    else:
        assert not disconnected_at_detach
        assert (status, error) == ("succeeded", None)
        assert call.tokens_sent == 3


@pair("no-lease")
async def test_no_lease_lets_a_dead_owner_hold_the_chat_forever(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider()
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        first = await api.turn("setup-a")
        other = await api.turn("setup-b")
        assert first.run_id is not None and other.run_id is not None
        _s, _e, served_lease = await run_row(pg_dsn, first.run_id)
        user_id = await scalar(pg_dsn, "SELECT creator_id FROM ai_chats WHERE id = %s",
                               (first.chat_id,))
        gate = ref.runtime.gate
        # Owners that died right after winning the gate: a run row nobody streams or renews.
        dead_a = await gate.begin(chat_id=UUID(first.chat_id), user_id=user_id)
        dead_b = await gate.begin(chat_id=UUID(other.chat_id), user_id=user_id)
        assert dead_a is not None and dead_b is not None
        # Time passes: every lease is now in the past (NULL stays NULL).
        await execute(pg_dsn, "UPDATE ai_chat_runs SET lease_expires_at = "
                             "lease_expires_at - interval '1 hour'")
        _s, _e, dead_lease = await run_row(pg_dsn, dead_a.run_id)
        via_precheck = await api.turn("after-b", other.chat_id)
        reaped = await gate.reap_expired()
        status_a, error_a, _lease = await run_row(pg_dsn, dead_a.run_id)
        status_b, error_b, _lease = await run_row(pg_dsn, dead_b.run_id)
    if fault == CORRECT:
        assert served_lease is not None and dead_lease is not None
        assert via_precheck.status == 200  # the pre-check reclaimed the expired holder
        assert (status_b, error_b) == ("aborted", "lease expired")
        assert reaped == [dead_a.run_id]
        assert (status_a, error_a) == ("aborted", "lease expired")
    else:
        assert served_lease is None and dead_lease is None
        assert (via_precheck.status, via_precheck.body) == (
            409, {**CONFLICT_BODY, "activeRunId": str(dead_b.run_id)})
        assert (status_b, error_b) == ("running", None)
        assert reaped == []
        assert (status_a, error_a) == ("running", None)


@pair("late-write-overwrites")
async def test_late_write_overwrites_a_terminal_status(
        pg_dsn: str, users: dict[str, str], fault: str) -> None:
    provider = FakeProvider()
    async with running_reference(settings_for(pg_dsn, fault), provider) as ref, \
            client() as http:
        api = Api(http, ref.url, users["alice"])
        done = await api.turn("finished")
        assert done.run_id is not None
        run_id = UUID(done.run_id)
        # The stream has ended; wait until the instance has forgotten the run too.
        await until_not(lambda: run_id in ref.runtime.registry.runs)
        stopped = (await api.stop(runId=done.run_id)).json()
        status, error, _lease = await run_row(pg_dsn, done.run_id)
    if fault == CORRECT:
        assert stopped == {"data": {"stopped": False}, "success": True, "status": 200}
        assert (status, error) == ("succeeded", None)
    else:
        assert stopped == {"data": {"stopped": True}, "success": True, "status": 200}
        assert (status, error) == ("aborted", "stopped by user")


# -- configuration and visibility of faults -----------------------------------------------------

def test_the_catalogue_is_conformance_section_4() -> None:
    assert VALID_FAULTS == (
        "swallow-unique-violation", "no-unique-index", "blanket-500", "provider-before-gate",
        "persist-before-gate", "claim-held-open", "untracked-on-begin-failure",
        "leak-on-provider-error", "stop-ignores-provider", "ignore-disconnect", "no-lease",
        "late-write-overwrites", "lease-too-short", "stop-local-only")


def test_unknown_fault_in_the_environment_is_a_settings_error() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"DATABASE_URL": "x", "REFERENCE_FAULTS": "no-lease,nope"})
    assert str(info.value) == (
        f"REFERENCE_FAULTS: unknown fault 'nope'; valid faults: {', '.join(VALID_FAULTS)}")


def test_known_faults_in_the_environment_are_parsed() -> None:
    settings = Settings.from_env({"DATABASE_URL": "x",
                                  "REFERENCE_FAULTS": " no-lease , blanket-500,"})
    assert settings.faults == frozenset({Fault.NO_LEASE, Fault.BLANKET_500})


def test_unknown_fault_on_the_command_line_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        harness_main(["serve-reference", "--fault", "nope"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown fault 'nope'" in err
    assert f"valid faults: {', '.join(VALID_FAULTS)}" in err


@pytest.mark.parametrize("faults", [[], ["no-lease", "blanket-500"]])
async def test_healthz_lists_the_faults_and_start_warns_loudly(
        pg_dsn: str, caplog: pytest.LogCaptureFixture, faults: list[str]) -> None:
    settings = make_settings(pg_dsn, faults=frozenset(Fault(f) for f in faults))
    with caplog.at_level(logging.WARNING, logger="raceharness.reference.app"):
        async with running_reference(settings, None) as ref, client() as http:
            health = await http.get(ref.url + "/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "instance": settings.instance_id,
                             "faults": sorted(faults), "autonomousRuns": False}
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "raceharness.reference.app" and r.levelno == logging.WARNING
                and "FAULTS ENABLED" in r.getMessage()]
    if faults:
        assert warnings == ["FAULTS ENABLED: blanket-500, no-lease — this server is "
                            "deliberately broken"]
    else:
        assert warnings == []
