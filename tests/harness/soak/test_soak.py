"""`harness soak`: a short soak against the embedded reference (default run), the full
ten-minute soak (slow), flag errors, and an interrupt that still writes the partial totals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from raceharness.commands.cli import main

TOP_KEYS = {"schema", "ok", "interrupted", "interrupt_signal", "crashes", "crash_count",
            "must_be_zero", "config", "timing_s", "settle", "runs", "requests", "provider",
            "restart", "service_metrics", "resources", "machine", "provenance"}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def embedded_db(monkeypatch: pytest.MonkeyPatch, pg_empty_dsn: str) -> str:
    """The embedded stack on the session's Postgres (instead of a cluster per run)."""
    monkeypatch.setenv("HARNESS_PG_DSN", pg_empty_dsn)
    return pg_empty_dsn


def load_result(out: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / "soak.json").read_text(encoding="utf-8"))
    assert set(result) == TOP_KEYS
    assert result["schema"] == "soak-v1"
    assert set(result["must_be_zero"]) == {"active_runs_left", "untracked_provider_calls"}
    runs, reqs = result["runs"], result["requests"]
    assert runs["started"] == sum(runs["by_status"].values())
    assert reqs["total"] == sum(reqs["by_outcome"].values())
    assert reqs["conflicts"] == reqs["by_outcome"].get("409", 0)
    assert result["provider"]["calls"] == sum(result["provider"]["by_mode"].values())
    assert result["machine"]["cores"] >= 1 and result["machine"]["python"]
    assert result["resources"]["harness_peak_rss_kib"] > 0
    provenance = result["provenance"]
    assert provenance["seeds"] == {"soak": result["config"]["seed"]}
    assert provenance["machine"]["cores"] >= 1 and provenance["date"].endswith("Z")
    assert "Provenance: " in (out / "soak.md").read_text(encoding="utf-8")
    return result


def assert_no_secrets(out: Path, dsn: str) -> None:
    for name in ("soak.json", "soak.md"):
        text = (out / name).read_text(encoding="utf-8")
        assert dsn not in text and "postgresql://" not in text and "Bearer" not in text


def assert_sound(result: dict[str, Any]) -> None:
    """What must hold after any soak of the correct reference."""
    assert result["must_be_zero"] == {"active_runs_left": 0, "untracked_provider_calls": 0}
    assert result["crashes"] == [] and result["crash_count"] == 0
    runs, reqs = result["runs"], result["requests"]
    assert runs["ended"] == runs["started"] > 0
    assert runs["by_status"].get("succeeded", 0) > 0
    assert runs["stream_ids_missing"] == 0
    bursts = reqs["bursts"]
    assert bursts["more_than_one_winner"] == 0 and bursts["no_winner_unexplained"] == 0
    # A burst in flight on the instance the restart killed may lose its winner with it.
    assert bursts["one_winner"] + bursts["hit_by_restart"] >= bursts["count"]
    assert set(bursts["by_winners"]) <= {"0", "1"}
    assert reqs["malformed_streams"] == 0
    assert result["provider"]["repeat_calls"] == 0


def test_short_soak_against_the_embedded_reference(
        embedded_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["soak", "--duration", "8", "--concurrency", "3", "--seed", "7",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    result = load_result(tmp_path)
    assert code == 0, {k: result[k] for k in ("crashes", "must_be_zero", "interrupted", "restart")}
    assert result["ok"] is True and result["interrupted"] is False
    assert_sound(result)
    reqs, runs, restart = result["requests"], result["runs"], result["restart"]
    # Every worker's first action is fixed: a burst, provider errors, a stop.
    assert reqs["bursts"]["with_conflicts"] >= 1 and reqs["conflicts"] >= 4
    assert reqs["conflict_latency_ms"]["n"] == reqs["conflicts"]
    assert {"burst", "provider-error", "stop"} <= set(reqs["by_action"])
    # The restart: one instance killed while it held a run, which the lease reaper aborted.
    assert restart["done"] is True and restart["victim_run_id"]
    assert runs["reaped"] >= 1
    assert runs["aborted_by_reason"]["lease expired"] == runs["reaped"]
    assert runs["by_action"]["restart-victim"] == {"aborted": 1}
    assert result["config"]["reproduce"] == (
        "harness soak --duration 8 --seed 7 --instances 2 --concurrency 3 --lease-s 3")
    md = (tmp_path / "soak.md").read_text(encoding="utf-8")
    assert "| active runs left (must be 0) | 0 |" in md
    assert "| provider calls without a tracked run (must be 0) | 0 |" in md
    assert "active runs left (must be 0)" in out and "verdict" in out
    assert_no_secrets(tmp_path, embedded_db)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ten_minute_soak(embedded_db: str, tmp_path: Path) -> None:
    code = main(["soak", "--out", str(tmp_path)])
    result = load_result(tmp_path)
    assert code == 0, result["must_be_zero"]
    assert result["ok"] is True and result["config"]["duration_s"] == 600
    assert_sound(result)
    assert result["restart"]["done"] is True and result["runs"]["reaped"] >= 1


@pytest.mark.parametrize(("flag", "value"), [
    ("--duration", "0"), ("--duration", "soon"), ("--duration", "nan"),
    ("--concurrency", "0"), ("--concurrency", "2.5"), ("--instances", "9"),
    ("--lease-s", "0.5"), ("--seed", "-1"),
])
def test_flag_errors_exit_2_naming_the_flag_and_value(
        flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["soak", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and repr(value) in err


def test_out_that_cannot_be_written_exits_2(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(["soak", "--duration", "5", "--out", str(blocker / "soak")])
    assert code == 2
    assert f"--out {blocker / 'soak'}" in capsys.readouterr().err


def test_sigterm_stops_the_load_and_writes_partial_totals(embedded_db: str,
                                                          tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "raceharness", "soak", "--duration", "300", "--concurrency",
         "2", "--seed", "3", "--out", str(tmp_path)],
        env={**os.environ, "HARNESS_PG_DSN": embedded_db}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # the load has started once it says so
            seen.append(line)
            if "load started" in line:
                break
        else:
            pytest.fail("the soak never started:\n" + "".join(seen))
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    result = load_result(tmp_path)
    assert result["interrupted"] is True and result["interrupt_signal"] == "SIGTERM"
    assert result["ok"] is False
    assert result["must_be_zero"] == {"active_runs_left": 0, "untracked_provider_calls": 0}
    assert result["restart"]["done"] is False  # due half-way, at 150 s
    assert "interrupted by SIGTERM" in (tmp_path / "soak.md").read_text(encoding="utf-8")


def test_burst_winners_are_judged_against_the_restart() -> None:
    from raceharness.soak.totals import burst_summary

    def burst(winners: int, instances: set[int], span: tuple[float, float],
              unanswered: int = 0) -> dict[str, Any]:
        return {"n": 5, "sync": "whole", "end": "release", "winners": winners, "conflicts": 4,
                "instances": instances, "from_s": span[0], "to_s": span[1],
                "unanswered": unanswered}

    restart = {"instance": 1, "killed_at_s": 4.0}
    summary = burst_summary([
        burst(1, {0, 1}, (1.0, 2.0)),
        burst(0, {0, 1}, (3.5, 4.5), unanswered=1),   # its winner died with instance 1
        burst(0, {0}, (3.5, 4.5), unanswered=1),      # instance 0 was not killed
        burst(0, {0, 1}, (5.0, 6.0), unanswered=1),   # after the kill
        burst(2, {0, 1}, (7.0, 8.0)),
    ], restart)
    assert summary["one_winner"] == 1 and summary["more_than_one_winner"] == 1
    assert summary["hit_by_restart"] == 1 and summary["no_winner_unexplained"] == 2
    assert summary["by_winners"] == {"0": 3, "1": 1, "2": 1}
    assert burst_summary([burst(0, {1}, (3.5, 4.5), unanswered=1)], {})[
        "no_winner_unexplained"] == 1


def test_a_soak_request_is_the_race_engines_turn_byte_for_byte() -> None:
    """Built by trial.context, a soak request is what the soak used to build itself: the
    stream path, JSON + SSE headers, the bearer token and the ``[race:<nonce>]`` text."""
    import trio

    from raceharness.net.http1 import Racer
    from raceharness.net.target import Target
    from raceharness.shell.observe import ServiceClient
    from raceharness.soak.load import Load, Tally
    from raceharness.soak.plan import SoakPlan
    from raceharness.trial.context import race_text, turn_body

    targets = [Target(base_url=f"http://127.0.0.1:{port}/prefix", token="tok")
               for port in (8001, 8002)]
    load = Load(SoakPlan(duration_s=5, seed=9, instances=2, concurrency=1, lease_s=3),
                Tally())

    async def check() -> None:
        clients = [ServiceClient(t) for t in targets]
        load.attach(targets, clients)
        try:
            for chat in (None, "chat-1"):
                req = load.new_req("burst", 1, chat, "hold")
                t = targets[1]
                expected = Racer(t.endpoint(), "POST", t.prefix + t.profile.paths.stream,
                                 [("content-type", "application/json"),
                                  ("accept", "text/event-stream"), *t.auth_headers()],
                                 turn_body(race_text(req.nonce, "soak"), chat))
                racer = load.racer(req)
                assert racer.data == expected.data and racer.endpoint == expected.endpoint
                assert f"[race:{req.nonce}]".encode() in racer.data
        finally:
            for client in clients:
                await client.aclose()

    trio.run(check)
    assert list(load.tally.reqs) == ["soak-9-1", "soak-9-2"]


def test_the_command_line_names_come_from_the_package() -> None:
    import raceharness.soak

    assert callable(raceharness.soak.add_arguments)
    assert callable(raceharness.soak.run_soak_command)


class FakeSoak:
    """Stands in for Soak: no load; its result is the committed soak.json's."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan

    async def main(self) -> dict[str, Any]:
        committed = json.loads((ROOT / "reports" / "soak" / "soak.json").read_text())
        committed.pop("provenance", None)
        committed["config"] = {**committed["config"], "seed": self.plan.seed}
        return dict(committed)


def test_soak_writes_a_fresh_folder_by_default_never_the_committed_reports(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("raceharness.soak.command.Soak", FakeSoak)
    monkeypatch.chdir(tmp_path)
    committed = {p.name: p.stat().st_mtime_ns for p in (ROOT / "reports" / "soak").iterdir()}
    main(["soak", "--duration", "5", "--seed", "11"])
    main(["soak", "--duration", "5", "--seed", "12"])
    runs = sorted((tmp_path / "soak-results").iterdir())
    assert len(runs) == 2 and not (tmp_path / "reports").exists()
    assert {p.name: p.stat().st_mtime_ns
            for p in (ROOT / "reports" / "soak").iterdir()} == committed
    seeds = [json.loads((run / "soak.json").read_text())["provenance"]["seeds"] for run in runs]
    assert seeds == [{"soak": 11}, {"soak": 12}]
    assert "results go to " + str(runs[0]) in capsys.readouterr().err
    assert "\nProvenance: " in (runs[0] / "soak.md").read_text()


def test_the_pooler_is_part_of_the_plan_and_its_reproduce_line() -> None:
    import argparse

    from raceharness.soak.plan import SoakPlan, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    plan = SoakPlan.from_args(parser.parse_args(["--duration", "30", "--pooler", "pgbouncer"]), 4)
    assert plan.pooler == "pgbouncer"
    assert plan.reproduce_line() == ("harness soak --duration 30 --seed 4 --instances 2 "
                                     "--concurrency 4 --lease-s 3 --pooler pgbouncer")
    assert SoakPlan.from_args(parser.parse_args([]), 4).pooler is None
