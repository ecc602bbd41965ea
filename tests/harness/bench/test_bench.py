"""`harness bench`: it runs, and writes well-formed results. No figure is asserted against a
bar here (timing belongs to the benchmark's own report, not to unit tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio

import raceharness.bench
from raceharness.bench.figures import synthetic_trial
from raceharness.bench.plan import SECTIONS, Plan
from raceharness.bench.render import merge_sections, render_markdown, write_results
from raceharness.bench.run import Bench
from raceharness.commands.cli import main
from raceharness.core.history import Op, Trial
from raceharness.core.properties import SINGLE_CHAT_RACE, check_trial
from raceharness.core.stats import wilson_interval

TINY = Plan(sync_ns=(2, 5), sync_trials=1, sync_trials_large=1, detection_ns=(2,),
            detection_trials=2, service_trials=1, cold_runs=1, scale_n=12, scale_chats=3,
            scale_per_chat=2, scale_trials=1, synthetic_ops=3000, wall_n=3,
            service_instances=2)


@pytest.fixture
def embedded_db(monkeypatch: pytest.MonkeyPatch, pg_empty_dsn: str) -> str:
    monkeypatch.setenv("HARNESS_PG_DSN", pg_empty_dsn)
    return pg_empty_dsn


# -- figures ------------------------------------------------------------------------------

def test_a_synthetic_history_clones_losers_and_stays_checkable() -> None:
    ops = [Op(0, "invoke", "turn", 0, 10, "w", {"role": "racer", "chat_id": "c", "sent_ns": 10}),
           Op(1, "invoke", "turn", 1, 10, "l", {"role": "racer", "chat_id": "c", "sent_ns": 10}),
           Op(2, "ok", "turn", 0, 20, None, {"status": 200, "run_id": "r", "headers_ns": 15,
                                             "frames": ["start"], "findings": []}),
           Op(3, "ok", "turn", 1, 20, None, {"status": 409, "code": "A_RUN_ALREADY_ACTIVE",
                                             "json": True, "headers_ns": 12})]
    base = Trial(meta={"n": 2, "losers_fast_bound_ms": 1000.0}, ops=ops)
    big = synthetic_trial(base, 1000)
    assert len(big.ops) >= 1000 and big.meta["n"] == 2 + (len(big.ops) - 4) // 2
    assert [op.index for op in big.ops] == list(range(len(big.ops)))
    results = check_trial(big, ["race/one-winner", "race/losers-409"])
    assert {p: r.verdict for p, r in results.items()} == {
        "race/one-winner": "valid", "race/losers-409": "valid"}
    with pytest.raises(ValueError, match="no 409 loser"):
        synthetic_trial(Trial(meta={}, ops=ops[:1] + ops[2:3]), 10)


# -- the command ----------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["--sections", "sync,nope"], "--sections: unknown section(s) nope"),
    (["--trials", "0"], "--trials: expected an integer >= 1, got 0"),
    (["--service-instances", "9"], "--service-instances: expected an integer from 1 to 8, "
                                   "got 9"),
])
def test_bad_flags_exit_2_naming_the_flag(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


def test_a_tiny_bench_runs_every_section_and_writes_well_formed_results(
        embedded_db: str, tmp_path: Path) -> None:
    bench = Bench(TINY, SECTIONS, seed=7)
    trio.run(bench.run)
    write_results(tmp_path, bench.result)
    result = json.loads((tmp_path / "bench.json").read_text())
    markdown = (tmp_path / "bench.md").read_text()

    assert result["schema"] == "raceharness/bench/v2" and result["interrupted"] is False
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["postgres"]
    s = result["sections"]
    assert set(s) == set(SECTIONS)

    rows = s["sync"]["rows"]
    assert {(r["sync"], r["n"]) for r in rows if r["server"] == "uvicorn"} >= {
        ("last-byte", 2), ("naive", 2), ("last-byte", 5), ("naive", 5)}
    for row in rows:
        assert row["release_spread_ms"]["count"] == 1
        assert row["release_spread_ms"]["median"] >= 0
        # the reference stamps arrivals, so the server-observed spread is always there
        assert row["arrival_spread_ms"]["median"] is not None
        assert sum(row["verdicts"].values()) == 1
    naive = next(r for r in rows if r["sync"] == "naive" and r["n"] == 5)
    assert naive["release_spread_ms"]["ratio_to_naive"] in (1.0, None)

    det = s["detection"]["rows"]
    assert {(r["sync"], r["n"]) for r in det if r["server"] == "uvicorn"} == {
        ("last-byte", 2), ("naive", 2)}
    for row in det:
        assert row["trials"] == 2 and 0 <= row["caught"] <= 2
        assert row["catch_rate"] == row["caught"] / 2

    service = s["service"]
    assert service["responses_409"] == 49
    assert 0 < service["latency_409_ms"]["p50"] <= service["latency_409_ms"]["p99"]
    assert service["server_409_ms"]["p50"] is not None
    assert service["winner_ttff_ms"]["median"] > 0
    assert service["verdicts"] == {"valid": 1, "invalid": 0, "unknown": 0}
    assert service["last_409_ms"]["median"] == service["latency_409_ms"]["max"]  # 1 trial
    cpu = service["cpu_per_loser_ms"]
    assert set(cpu) == {"reference", "postgres", "harness", "total",
                        "reference_loop_ms_per_burst", "instances"}
    assert cpu["instances"] == 2  # the burst spread over two reference processes
    assert all(cpu[g] >= 0 for g in ("reference", "postgres", "harness"))
    assert cpu["reference_loop_ms_per_burst"] == pytest.approx(cpu["reference"] * 49 / 2,
                                                               abs=0.05)

    wall = s["wall"]
    assert wall["n"] == 3 and wall["runs"] == 1
    assert wall["race_phase_s"]["median"] < wall["cold_s"]["median"]
    assert 0 < wall["burst_s"]["median"] <= wall["race_phase_s"]["median"]

    scale = s["scale"]
    assert scale["same_chat"]["n"] == 12 and scale["same_chat"]["all_evaluated"] is True
    assert scale["same_chat"]["verdicts"] == {"valid": 1, "invalid": 0, "unknown": 0}
    assert scale["same_chat"]["wall_s"]["count"] == 1
    assert scale["many_chats"]["chats"] == 3 and scale["many_chats"]["all_evaluated"] is True
    assert scale["many_chats"]["verdicts"] == {"valid": 1, "invalid": 0, "unknown": 0}
    assert scale["synthetic"]["ops"] >= 3000
    assert set(scale["synthetic"]["verdicts"]) == set(SINGLE_CHAT_RACE)
    assert all(section["measured"] == result["started"] for section in s.values())
    assert scale["harness_peak_rss_mb"] > 0 and scale["server_peak_rss_mb"] > 0

    for heading in ("## Synchronisation", "## Detection power", "## Service", "## Wall time",
                    "## Scale", "## Against the bars"):
        assert heading in markdown
    assert markdown == render_markdown(result) + "\n"

    # Rerunning one section keeps the others, each saying when it was measured.
    earlier = {**result, "started": "2026-01-01T00:00:00Z"}
    rerun = {**result, "sections": {"wall": s["wall"]}}
    merge_sections(rerun, earlier)
    assert set(rerun["sections"]) == set(SECTIONS)
    assert rerun["sections"]["scale"]["measured"] == result["started"]


def test_the_losers_fast_default_bound_grows_with_large_bursts_only() -> None:
    from raceharness.trial.context import (
        RaceConfig,
        default_losers_fast_bound_ms,
        losers_fast_bound_ms,
    )

    assert default_losers_fast_bound_ms(2) == default_losers_fast_bound_ms(333) == 1000.0
    assert default_losers_fast_bound_ms(1000) == 3000.0
    assert losers_fast_bound_ms(RaceConfig(n=1000)) == 3000.0
    assert losers_fast_bound_ms(RaceConfig(n=1000, losers_fast_bound_ms=250.0)) == 250.0


def _detection_result(caught: int, trials: int) -> dict[str, Any]:
    lower, upper = wilson_interval(caught, trials) or (0.0, 0.0)
    row = {"fault": "no-unique-index", "server": "uvicorn", "sync": "last-byte", "n": 2,
           "trials": trials, "caught": caught, "unknown": 0, "catch_rate": caught / trials,
           "catch_rate_wilson95_lower": lower, "catch_rate_wilson95_upper": upper,
           "trials_for_95": 1, "trials_for_95_conservative": 2}
    return {"machine": {}, "seed": 1, "sections": {"detection": {"rows": [row]}}}


def _detection_bar_line(markdown: str) -> str:
    return next(line for line in markdown.splitlines()
                if line.startswith("| detection of no-unique-index, N=2"))


def test_a_detection_rate_whose_interval_holds_the_bar_is_called_unresolved() -> None:
    line = _detection_bar_line(render_markdown(_detection_result(46, 50)))
    assert "misses (≥ 0.95)" in line
    assert "not resolved by 50 trials" in line and "0.812–0.968" in line
    line = _detection_bar_line(render_markdown(_detection_result(49, 50)))
    assert "meets (≥ 0.95)" in line and "not resolved by 50 trials" in line
    line = _detection_bar_line(render_markdown(_detection_result(980, 1000)))
    assert "meets (≥ 0.95)" in line and "not resolved" not in line  # 0.969–0.987
    line = _detection_bar_line(render_markdown(_detection_result(30, 50)))
    assert "misses (≥ 0.95)" in line and "not resolved" not in line


def test_sections_of_an_older_format_are_not_kept(tmp_path: Path) -> None:
    from raceharness.bench.plan import BENCH_SCHEMA
    from raceharness.bench.render import previous_results

    machine = {"cores": 2, "cpu_model": "cpu", "python": "3.11.7"}
    result = {"schema": BENCH_SCHEMA, "machine": machine, "sections": {}}
    (tmp_path / "bench.json").write_text(json.dumps({**result, "schema": "raceharness/bench/v1"}))
    assert previous_results(tmp_path, result) is None
    (tmp_path / "bench.json").write_text(json.dumps(result))
    assert previous_results(tmp_path, result) == result


def test_bench_trials_run_through_the_suites_per_trial_code() -> None:
    from raceharness.bench import run as bench_run
    from raceharness.trial import suite

    assert bench_run.run_trial is suite.run_trial


def test_the_command_line_names_come_from_the_package() -> None:
    assert callable(raceharness.bench.add_arguments)
    assert callable(raceharness.bench.run_bench_command)


# -- where the results go, and where they came from ---------------------------------------------

ROOT = Path(__file__).resolve().parents[3]
MACHINE = {"cores": 2, "cpu_model": "cpu", "python": "3.11.7", "platform": "Linux"}


class FakeBench:
    """Stands in for Bench: no run, one section measured (the ones asked for)."""

    def __init__(self, plan: Plan, sections: tuple[str, ...], *, seed: int | None = None,
                 quick: bool = False) -> None:
        from raceharness.bench.plan import BENCH_SCHEMA

        self.seed = 5 if seed is None else seed
        self.result: dict[str, Any] = {
            "schema": BENCH_SCHEMA, "quick": quick, "seed": self.seed,
            "started": "2026-12-05T10:15:00Z", "machine": dict(MACHINE), "plan": {},
            "interrupted": False, "sections": {"wall": {
                "n": 50, "runs": 1, "cold_s": {"median": 2.0}, "race_phase_s": {"median": 0.2},
                "burst_s": {"median": 0.02}, "race_phase_share_of_cold": 0.1,
                "measured": "2026-12-05T10:15:00Z"}}}

    async def run(self) -> None:
        return None


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr("raceharness.bench.command.Bench", FakeBench)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_bench_writes_a_fresh_folder_by_default_never_the_committed_reports(
        fake_bench: Path) -> None:
    committed = {p.name: p.stat().st_mtime_ns for p in (ROOT / "reports" / "bench").iterdir()}
    assert main(["bench", "--quick"]) == 0
    assert main(["bench", "--quick"]) == 0
    runs = sorted((fake_bench / "bench-results").iterdir())
    assert len(runs) == 2  # two runs, two folders: neither overwrote the other
    assert not (fake_bench / "reports").exists()
    assert {p.name: p.stat().st_mtime_ns
            for p in (ROOT / "reports" / "bench").iterdir()} == committed
    result = json.loads((runs[0] / "bench.json").read_text())
    provenance = result["provenance"]
    assert provenance["seeds"] == {"bench": 5} and provenance["machine"]["cores"] >= 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", provenance["date"])
    assert "commit" in provenance and "version" in provenance
    assert "\nProvenance: " in (runs[0] / "bench.md").read_text()


def test_bench_out_writes_where_it_is_told(fake_bench: Path) -> None:
    assert main(["bench", "--out", str(fake_bench / "mine"), "--seed", "9"]) == 0
    assert json.loads((fake_bench / "mine" / "bench.json").read_text())["provenance"][
        "seeds"] == {"bench": 9}
    assert not (fake_bench / "bench-results").exists()


def test_a_sections_rerun_keeps_the_newest_earlier_folders_other_sections(
        fake_bench: Path) -> None:
    from raceharness.bench.plan import BENCH_SCHEMA

    earlier = {"schema": BENCH_SCHEMA, "machine": MACHINE, "started": "2026-12-01T00:00:00Z",
               "seed": 1, "provenance": {"commit": "a" * 40, "dirty": False, "seeds": {"bench": 1},
                                         "date": "2026-12-01T00:00:00Z", "machine": {}},
               "sections": {"scale": {"same_chat": {"n": 12}}}}
    older = {**earlier, "sections": {"scale": {"same_chat": {"n": 99}}}}
    for name, result in (("20261201T000000Z", earlier), ("20261101T000000Z", older)):
        folder = fake_bench / "bench-results" / name
        folder.mkdir(parents=True)
        (folder / "bench.json").write_text(json.dumps(result))
    assert main(["bench", "--sections", "wall"]) == 0
    (newest,) = [p for p in (fake_bench / "bench-results").iterdir()
                 if p.name not in ("20261201T000000Z", "20261101T000000Z")]
    result = json.loads((newest / "bench.json").read_text())
    scale = result["sections"]["scale"]
    assert scale["same_chat"]["n"] == 12 and scale["measured"] == "2026-12-01T00:00:00Z"
    assert scale["provenance"]["commit"] == "a" * 40
    assert "Section scale kept from an earlier run: commit `aaaaaaaaaaaa`" in (
        newest / "bench.md").read_text()
