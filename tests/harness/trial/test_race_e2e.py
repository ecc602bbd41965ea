"""End to end: `harness race` against the embedded reference (its own process, real Postgres,
the fake provider in the harness), correct and with each fault the race must catch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raceharness.commands.cli import main


@pytest.fixture
def embedded_db(monkeypatch: pytest.MonkeyPatch, pg_empty_dsn: str) -> str:
    """Point the embedded stack at a fresh empty database of the session's cluster
    (instead of a cluster per run): the reference creates its schema in it."""
    monkeypatch.setenv("HARNESS_PG_DSN", pg_empty_dsn)
    return pg_empty_dsn


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_race_50_against_the_correct_reference_is_valid(
        embedded_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_cli(capsys, "race", "--n", "50", "--seed", "11", "--report",
                           str(tmp_path), "--json")
    trial = report["trials"][0]
    assert trial["statuses"] == {"200": 1, "409": 49}
    assert trial["winners"] == 1
    assert {name: p["verdict"] for name, p in report["properties"].items()} == {
        name: "valid" for name in report["properties"]}
    assert len(report["properties"]) == 12
    assert code == 0 and report["verdict"] == "valid"
    assert trial["release_spread_ms"] is not None
    assert report["reproduce"] == "harness race --n 50 --seed 11"
    assert json.loads((tmp_path / "report.json").read_text())["verdict"] == "valid"

    # The saved history reproduces the verdict offline.
    code, rechecked = run_cli(capsys, "check", str(tmp_path / "history.jsonl"), "--json")
    assert code == 0
    assert {k: v["verdict"] for k, v in rechecked["properties"].items()} == {
        k: v["verdict"] for k, v in report["properties"].items()}


RACY_GATE_FAULTS = {"swallow-unique-violation", "no-unique-index"}


@pytest.mark.parametrize(("fault", "caught_by"), [
    ("swallow-unique-violation", "race/no-untracked-run"),
    ("no-unique-index", "race/one-winner"),
    ("blanket-500", "race/losers-409"),
    ("provider-before-gate", "race/no-loser-provider-call"),
    ("persist-before-gate", "race/no-loser-writes"),
    ("claim-held-open", "race/losers-fast"),
])
def test_race_catches_each_gate_fault(fault: str, caught_by: str, embedded_db: str,
                                      tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    # Two faults show only when two turns pass the pre-check (or insert) before the first
    # insert commits: a race that a loaded machine (the suite runs on two workers) can
    # serialise in one trial. Three trials make a miss unlikely; the others are deterministic.
    trials = ["--trials", "3"] if fault in RACY_GATE_FAULTS else []
    code, report = run_cli(capsys, "race", "--n", "50", "--seed", "5", *trials, "--fault",
                           fault, "--report", str(tmp_path), "--json")
    assert code == 1
    assert report["verdict"] == "invalid"
    assert report["properties"][caught_by]["verdict"] == "invalid"
    assert caught_by in report["first_failure"]["properties"]
    assert report["reproduce"] == " ".join(["harness race --n 50 --seed 5", *trials,
                                            "--fault", fault])


def test_every_winner_of_a_broken_gate_is_stopped(
        embedded_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the gate index gone, several racers win. The harness stops each of their runs, so
    no extra run streams on: /stop is judged on the winner's own run, and the turn after it
    finds the chat free (before, it met a 409 from a leftover winner or waited out the stop
    bound). The fault is still caught, by the properties that say why."""
    # three trials: on a loaded machine one trial can serialise the race (see RACY_GATE_FAULTS)
    code, report = run_cli(capsys, "race", "--n", "50", "--seed", "5", "--trials", "3",
                           "--fault", "no-unique-index", "--report", str(tmp_path), "--json")
    trial = next((t for t in report["trials"] if t["winners"] >= 2), None)
    assert code == 1 and trial is not None, [t["winners"] for t in report["trials"]]
    verdicts = {name: p["verdict"] for name, p in report["properties"].items()}
    assert verdicts["race/one-winner"] == verdicts["race/no-loser-writes"] == "invalid"
    assert verdicts["race/released"] == "valid"
    # Valid, or unknown when the winner's provider call carries another winner's nonce (each
    # winner's history holds the others' turns); never a false finding against /stop.
    assert verdicts["race/winner-stoppable"] in ("valid", "unknown")
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    for k in range(3):  # in every trial: each winner stopped, one of them as "the winner"
        ops = [line for line in lines if line.get("kind") == "op" and line["trial"] == k]
        won = {op["value"]["run_id"] for op in ops if op["f"] == "turn" and op["type"] == "ok"
               and op["value"].get("status") == 200 and op["process"] < 10000}
        stops = [op for op in ops if op["f"] == "stop" and op["type"] == "invoke"]
        assert {op["value"]["run_id"] for op in stops
                if op["value"]["role"] in ("winner", "extra-winner")} == won
        assert sum(op["value"]["role"] == "winner" for op in stops) == 1


def test_race_prints_a_verdict_table_naming_the_failed_property(
        embedded_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["race", "--n", "20", "--seed", "3", "--fault", "blanket-500"])
    out = capsys.readouterr().out
    assert code == 1
    assert "race/losers-409                  invalid" in out
    assert "FAILED race/losers-409 (trial 0, seed 3)" in out
    assert out.rstrip().endswith("reproduce: harness race --n 20 --seed 3 --fault blanket-500")


def test_h2_single_packet_race_against_the_embedded_reference_is_valid(
        embedded_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--sync h2-single-packet: the embedded reference is served by hypercorn, every final
    DATA frame leaves in one write, and the race is judged like any other."""
    code, report = run_cli(capsys, "race", "--n", "20", "--seed", "4", "--sync",
                           "h2-single-packet", "--report", str(tmp_path), "--json")
    trial = report["trials"][0]
    assert (code, report["verdict"]) == (0, "valid"), report.get("first_failure")
    assert trial["statuses"] == {"200": 1, "409": 19} and trial["sync"] == "h2-single-packet"
    assert trial["release_spread_ms"] == 0.0  # one write: one send time for every stream
    assert trial["server_arrival_spread_ms"] is not None
    assert report["reproduce"] == "harness race --n 20 --seed 4 --sync h2-single-packet"
    meta = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()
            if '"kind":"trial"' in line][-1]
    assert meta["sync_used"] == "h2-single-packet" and meta["h2_packets"] == 1


def test_server_ports_are_chosen_outside_the_ephemeral_range() -> None:
    """A reference restarted on its port must not find a client connection sitting on it."""
    from raceharness.stack.embedded import _ephemeral_low, free_port

    low = _ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert all(1024 < p < 65536 for p in ports)
    if low > 10_000:
        assert all(p < low for p in ports)


def test_without_a_terminal_progress_is_one_line_per_trial(
        capsys: pytest.CaptureFixture[str]) -> None:
    """CI logs show a run as it goes: one line per trial with totals and the faults named;
    -q prints none."""
    assert main(["run", "stale-stop", "--trials", "2", "--fault", "late-write-overwrites"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("scenario ")]
    assert [line.split(" invalid ")[0] for line in lines] == [
        "scenario 1/1 stale-stop trial 1/2", "scenario 1/1 stale-stop trial 2/2"]
    assert all(line.endswith(" s [fault late-write-overwrites]") for line in lines)


def test_progress_modes(capsys: pytest.CaptureFixture[str]) -> None:
    """-q: nothing; a terminal: one live line, cleared first, with the run's total time."""
    from raceharness.core.checks.base import CheckResult
    from raceharness.trial.context import RaceConfig
    from raceharness.trial.suite import RaceOptions, _progress

    result = {"race/one-winner": CheckResult("race/one-winner", "valid", "")}
    _progress(RaceOptions(config=RaceConfig(), progress="off"), "scenario 1/1 x trial 1/1",
              result, 0.4, 2.0)
    assert capsys.readouterr().err == ""
    _progress(RaceOptions(config=RaceConfig(), progress="live"), "scenario 1/1 x trial 1/1",
              result, 0.4, 2.0)
    assert capsys.readouterr().err == "\r\x1b[Kscenario 1/1 x trial 1/1 valid 0.4 s (2 s in all)"
