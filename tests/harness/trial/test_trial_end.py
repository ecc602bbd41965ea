"""The end of a trial (``trial/program.py``): the cleanup stops what the service still lists as
active, the last pass (``stop_leftovers``) what the racers started and nothing settled, and no
run is stopped twice. Against small fakes, and once against the embedded reference."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from raceharness.commands.cli import main
from raceharness.net.http1 import Endpoint, Racer, Response
from raceharness.net.http2_connection import H2Connection
from raceharness.net.http2_stream import H2Stream
from raceharness.net.race_request import RaceRequest
from raceharness.net.target import Target
from raceharness.shell.observe import ServiceClient
from raceharness.trial.context import RaceConfig, Recorder, TrialContext
from raceharness.trial.program import _cleanup, stop_leftovers
from raceharness.trial.steps.base import Program, TrialState


class FakeService:
    """Lists the runs of the chats in ``listed`` (any other chat: the listing fails) and
    answers every /stop, counting them by run."""

    adapter = SimpleNamespace(has_runs=lambda: True)

    def __init__(self, listed: dict[str, list[dict[str, Any]]]) -> None:
        self.listed = listed
        self.stops: Counter[str] = Counter()

    async def runs_page(self, chat_id: str) -> tuple[int, list[dict[str, Any]], bool]:
        if chat_id not in self.listed:
            raise OSError("the listing failed")
        return 200, self.listed[chat_id], False

    async def stop(self, *, run_id: str, chat_id: str | None) -> tuple[int, bool]:
        self.stops[run_id] += 1
        return 200, True


class FakeRacer:
    """A released request whose start frame named ``run_id`` on ``chat_id``."""

    def __init__(self, run_id: str | None, chat_id: str) -> None:
        self.response = Response(stream=SimpleNamespace(run_id=run_id, chat_id=chat_id))  # type: ignore[arg-type]
        self.answered = trio.Event()
        self.finished = trio.Event()
        self.sent_ns: int | None = None
        self.chat_id: str | None = chat_id
        self.closed = False

    async def read_response(self) -> None:
        await self.finished.wait()

    async def aclose(self) -> None:
        self.closed = True


def context(service: FakeService) -> TrialContext:
    return TrialContext(target=Target("http://fake", ""), config=RaceConfig(), provider=None,
                        db=None, service=service, trial_no=0, seed=1)  # type: ignore[arg-type]


def test_the_cleanup_and_the_last_pass_stop_each_run_once() -> None:
    """c1 is listed: its active run is stopped by the cleanup (recorded), its ended one by
    nobody. c2's listing fails: the run a racer started there is stopped by the last pass. The
    last pass stops none of c1's runs again, and closes every racer."""
    service = FakeService({"c1": [{"id": "r1", "status": "running"},
                                  {"id": "r2", "status": "completed"}]})
    ctx = context(service)
    racers = [FakeRacer("r1", "c1"), FakeRacer("r2", "c1"), FakeRacer("r3", "c2"),
              FakeRacer(None, "c1")]

    async def end() -> None:
        async with trio.open_nursery() as readers:
            state = TrialState(readers=readers, chat_id="c1", chats=["c2"])
            program = Program(ctx, None, Recorder(0, None), {}, state, {})  # type: ignore[arg-type]
            await _cleanup(program)
        ctx.racers = list(racers)
        await stop_leftovers(ctx)

    trio.run(end)
    assert service.stops == {"r1": 1, "r3": 1}
    assert ctx.settled_runs == {"r1", "r2", "r3"}
    assert all(racer.closed for racer in racers)


def test_a_stop_the_steps_had_answered_is_not_sent_again() -> None:
    """No listing at all (the target lists no runs): the last pass stops the racers' runs, but
    not one a step's /stop was already answered for."""
    service = FakeService({})
    service.adapter = SimpleNamespace(has_runs=lambda: False)  # type: ignore[misc]
    ctx = context(service)

    async def trial() -> None:
        async with trio.open_nursery() as readers:
            state = TrialState(readers=readers, chat_id="c1")
            program = Program(ctx, None, Recorder(0, None), {}, state, {})  # type: ignore[arg-type]
            assert await program.stop_run("r1", "winner") is True
            await _cleanup(program)
        ctx.racers = [FakeRacer("r1", "c1"), FakeRacer("r2", "c1")]
        await stop_leftovers(ctx)

    trio.run(trial)
    assert service.stops == {"r1": 1, "r2": 1}


def test_an_unanswered_stop_is_tried_again_by_the_last_pass() -> None:
    service = FakeService({"c1": [{"id": "r1", "status": "running"}]})
    answers: Iterator[OSError | tuple[int, bool]] = iter([OSError("reset"), (200, True)])

    async def flaky_stop(*, run_id: str, chat_id: str | None) -> tuple[int, bool]:
        service.stops[run_id] += 1
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    service.stop = flaky_stop  # type: ignore[method-assign]
    ctx = context(service)

    async def end() -> None:
        async with trio.open_nursery() as readers:
            state = TrialState(readers=readers, chat_id="c1")
            await _cleanup(Program(ctx, None, Recorder(0, None), {}, state, {}))  # type: ignore[arg-type]
        ctx.racers = [FakeRacer("r1", "c1")]
        await stop_leftovers(ctx)

    trio.run(end)
    assert service.stops == {"r1": 2}  # the cleanup's failed, then the last pass's


def test_both_kinds_of_racer_are_race_requests() -> None:
    """An HTTP/1.1 racer and an HTTP/2 stream satisfy the one interface the trial uses."""
    endpoint = Endpoint("http", "127.0.0.1", 80)
    racer = Racer(endpoint, "POST", "/", [], b"{}")
    stream = H2Stream(endpoint, 1, b"}", H2Connection(endpoint).close_stream)
    fake = FakeRacer("r1", "c1")
    requests: list[RaceRequest] = [racer, stream, fake]
    assert all(isinstance(r, RaceRequest) for r in requests)


@pytest.fixture
def embedded_db(monkeypatch: pytest.MonkeyPatch, pg_empty_dsn: str) -> str:
    monkeypatch.setenv("HARNESS_PG_DSN", pg_empty_dsn)
    return pg_empty_dsn


def test_a_race_against_the_reference_stops_each_run_once(
        embedded_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The winner is stopped by stop-winner, and by nothing else: the cleanup lists it ended
    and the last pass leaves it be (it used to send it a second /stop)."""
    stops: Counter[str | None] = Counter()
    original = ServiceClient.stop

    async def counting(self: ServiceClient, **kwargs: Any) -> tuple[int, bool | None]:
        stops[kwargs.get("run_id")] += 1
        return await original(self, **kwargs)

    monkeypatch.setattr(ServiceClient, "stop", counting)
    code = main(["race", "--n", "10", "--seed", "3", "--report", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (code, report["verdict"]) == (0, "valid"), report.get("first_failure")
    ops = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    winner = next(op["value"]["run_id"] for op in ops if op.get("kind") == "op"
                  and op["f"] == "stop" and op["type"] == "invoke"
                  and op["value"]["role"] == "winner")
    assert stops[winner] == 1
    assert max(stops.values()) == 1
