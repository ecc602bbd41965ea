"""Conformance on the embedded reference: the whole catalogue is clean against the correct
reference, and every known fault is caught by the scenarios conformance.md §4 names.

The default run covers the catalogue once and each deterministic fault's scenario (the gate
faults run end to end in test_race_e2e); the full `harness conformance --faults all` matrix
(~3 minutes) is marked slow: `./run.sh test -m slow`. The committed matrix in
reports/conformance is checked here too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from raceharness.commands.cli import main
from raceharness.commands.matrix import FAULT_CATCHERS, RACY
from raceharness.core.scenario import catalogue
from raceharness.reference.faults import VALID_FAULTS

ROOT = Path(__file__).resolve().parents[3]
# create-on-first-turn needs a target whose turns may create a chat of a client-chosen id
# (LangGraph's if_not_exists): the protocol's first turn has no chat id, so the reference is
# never asked (tests/harness/adapters/test_langgraph_target.py runs it on LangGraph)
NOT_FOR_THE_PROTOCOL = {"create-on-first-turn"}
CATALOGUE = [name for name in catalogue() if name not in NOT_FOR_THE_PROTOCOL]
# A real Postgres restart stops the whole server: the harness refuses it on a server given by a
# DSN, so these run on a cluster the harness starts itself, never the session's shared one.
OWN_CLUSTER = [name for name in CATALOGUE
               if any(step.do == "postgres-restart" for step in catalogue()[name].steps)]


@pytest.fixture
def embedded_db(monkeypatch: pytest.MonkeyPatch, pg_cluster: object) -> None:
    """Reuse the session's Postgres server: each embedded service creates its own database
    on it (see raceharness.stack.embedded), so faults never leak between rows."""
    monkeypatch.setenv("HARNESS_PG_DSN", pg_cluster.dsn)  # type: ignore[attr-defined]


def test_every_fault_is_known_to_the_matrix() -> None:
    assert sorted(FAULT_CATCHERS) == sorted(VALID_FAULTS)


@pytest.mark.timeout(600)
def test_the_whole_catalogue_is_valid_against_the_correct_reference(
        embedded_db: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    shared = [name for name in CATALOGUE if name not in OWN_CLUSTER]
    codes = [main(["run", *shared, "--trials", "1", "--json"])]
    scenarios = json.loads(capsys.readouterr().out)["scenarios"]
    monkeypatch.delenv("HARNESS_PG_DSN")  # the restarts: a cluster of the run's own
    codes.append(main(["run", *OWN_CLUSTER, "--trials", "1", "--json"]))
    scenarios |= json.loads(capsys.readouterr().out)["scenarios"]
    assert {name: s["skipped"] for name, s in scenarios.items() if s["skipped"]} == {}
    assert {name: s["verdict"] for name, s in scenarios.items()} == {
        name: "valid" for name in CATALOGUE}
    assert len(OWN_CLUSTER) == 4 and codes == [0, 0]


@pytest.mark.parametrize("fault", sorted(set(FAULT_CATCHERS) - RACY))
def test_each_deterministic_fault_is_caught_by_its_scenario(
        fault: str, embedded_db: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The gate faults are caught end to end in test_race_e2e; these are the others."""
    scenarios, expected = FAULT_CATCHERS[fault]
    code = main(["run", *scenarios, "--fault", fault, "--trials", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    caught = {p for p, v in report["properties"].items() if v["verdict"] == "invalid"}
    assert caught & set(expected), report["properties"]
    # every scenario named for the fault catches it on its own (the outage one mid-race too)
    assert {name: s["verdict"] for name, s in report["scenarios"].items()} == {
        name: "invalid" for name in scenarios}
    assert code == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_fault_matrix_catches_every_fault_and_the_correct_reference_is_clean(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HARNESS_PG_DSN", raising=False)  # the restarts: clusters of its own
    code = main(["conformance", "--faults", "all", "--trials", "1", "--fault-trials", "3",
                 "--matrix-dir", str(tmp_path), "--json"])
    matrix = json.loads(capsys.readouterr().out)
    correct = matrix["rows"]["(correct)"]
    assert correct["skipped"] == {}
    assert {p: v for p, v in correct["properties"].items() if v != "valid"} == {}
    not_caught = {fault: row["properties"] for fault, row in matrix["rows"].items()
                  if fault != "(correct)" and not row["caught"]}
    assert not_caught == {}
    assert set(matrix["rows"]) == {"(correct)", *VALID_FAULTS}
    assert matrix["ok"] is True and code == 0
    assert json.loads((tmp_path / "matrix.json").read_text()) == matrix
    assert "Result: every fault caught" in (tmp_path / "matrix.md").read_text()
    assert set(matrix["provenance"]["seeds"]) == set(matrix["rows"])


def test_the_committed_matrix_is_complete_and_ok() -> None:
    """reports/conformance/ is regenerated by `./run.sh harness conformance --faults all
    --matrix-dir reports/conformance`; it must show every fault caught."""
    matrix = json.loads((ROOT / "reports" / "conformance" / "matrix.json").read_text())
    assert matrix["ok"] is True
    assert set(matrix["rows"]) == {"(correct)", *VALID_FAULTS}
    for fault, (_, expected) in FAULT_CATCHERS.items():
        assert set(matrix["rows"][fault]["caught_by"]) & set(expected), fault


def test_the_console_prints_the_matrix_as_a_compact_grid() -> None:
    """One line per row (not a 22-column Markdown table): the fault, caught or not, and what
    caught it with its invalid trials."""
    from raceharness.commands.matrix import render_matrix_console

    matrix = json.loads((ROOT / "reports" / "conformance" / "matrix.json").read_text())
    text = render_matrix_console(matrix)
    lines = text.splitlines()
    assert len(lines) == len(matrix["rows"]) + 2
    assert max(len(line) for line in lines) < 200
    row = next(line for line in lines if line.startswith("blanket-500 "))
    assert row.split()[1:] == ["yes", "losers-409", "3/3"]
    matrix["rows"]["blanket-500"]["caught"] = False
    matrix["ok"] = False
    again = render_matrix_console(matrix).splitlines()
    assert next(line for line in again if line.startswith("blanket-500 ")).split()[1] == "NO"
    assert again[-1].startswith("result: NOT OK")


def test_the_matrix_records_where_it_came_from(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """matrix.json gets a provenance object (commit or version, UTC date, every row's seed,
    the machine) and matrix.md shows it; the scenarios themselves are stood in for here."""
    import trio

    from raceharness.commands import matrix as matrix_module
    from raceharness.trial.context import RaceConfig
    from raceharness.trial.suite import RaceOptions, RaceOutcome

    seeds = iter([101, 202])

    async def fake_run_scenarios(opts: RaceOptions, scenarios: list[Any]) -> RaceOutcome:
        bad = "invalid" if opts.faults else "valid"
        counts = {"valid": int(bad == "valid"), "invalid": int(bad == "invalid"), "unknown": 0}
        report = {"verdict": bad, "config": {"seed": next(seeds)}, "trials": [{}],
                  "properties": {"race/released": {"verdict": bad, **counts}},
                  "scenarios": {s.name: {"skipped": None} for s in scenarios}}
        return RaceOutcome(report=report, trials=[], results=[])

    monkeypatch.setattr(matrix_module, "run_scenarios", fake_run_scenarios)
    code = trio.run(matrix_module.run_matrix, RaceOptions(config=RaceConfig()), ["no-lease"],
                    1, tmp_path, True)
    matrix = json.loads((tmp_path / "matrix.json").read_text())
    assert code == 0 and matrix == json.loads(capsys.readouterr().out)
    assert matrix["schema"] == "raceharness/matrix/v1"  # a field added, the version kept
    provenance = matrix["provenance"]
    assert provenance["seeds"] == {"(correct)": 101, "no-lease": 202}
    assert set(provenance) == {"commit", "dirty", "version", "date", "seeds", "machine"}
    assert provenance["commit"] or provenance["version"]
    assert provenance["machine"]["cores"] >= 1
    text = (tmp_path / "matrix.md").read_text()
    assert "\nProvenance: " in text and "seeds (correct) 101, no-lease 202" in text



def test_create_on_first_turn_is_skipped_on_the_protocol_with_its_reason(
        embedded_db: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The protocol's first turn has no chat id: the scenario is not run against the reference
    and says why; with nothing run there is no verdict (exit 3), never a pass."""
    code = main(["run", "create-on-first-turn", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert "needs client-chat-ids" in report["scenarios"]["create-on-first-turn"]["skipped"]
    assert code == 3
