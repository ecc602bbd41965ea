"""A real restart of the Postgres cluster under the embedded reference (issue 18, item 4):
``postgres-restart-mid-race`` and ``postgres-restart-mid-stream`` (``pg_ctl restart -m fast``),
``postgres-crash-mid-race`` and ``postgres-crash-mid-stream`` (``pg_ctl stop -m immediate``,
then ``pg_ctl start``).

Through the command line, on a cluster the harness starts itself: ``HARNESS_PG_DSN`` is unset,
because the session's shared cluster (``pg_cluster``) must never be restarted under the other
tests, and a server given by a DSN is refused. That the four scenarios are valid against the
correct reference is proven with the whole catalogue (test_conformance.py); here, that
``untracked-on-begin-failure`` is caught by both mid-race ones, and that a restart the harness
may not do is a skip with its reason, never a verdict.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import trio

from raceharness.commands.cli import main
from raceharness.core.scenario import Step, catalogue
from raceharness.shell.control import CommandControl
from raceharness.stack.postgres import PostgresCluster
from raceharness.trial.steps import IMPLEMENTATIONS, Program, StepNotAvailable

MID_RACE = ["postgres-restart-mid-race", "postgres-crash-mid-race"]
RESTARTS = [*MID_RACE, "postgres-restart-mid-stream", "postgres-crash-mid-stream"]


@pytest.fixture
def own_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness provisions a cluster of its own for the run (about 1.5 s)."""
    monkeypatch.delenv("HARNESS_PG_DSN", raising=False)


def test_the_restart_scenarios_restart_postgres_for_real() -> None:
    scenarios = catalogue()
    modes = {}
    for name in RESTARTS:
        steps = [s for s in scenarios[name].steps if s.do == "postgres-restart"]
        assert len(steps) == 1 and "db-control" in scenarios[name].requires, name
        modes[name] = (steps[0].arg("mode"), steps[0].arg("at"), steps[0].arg("while_down"))
    assert modes == {
        "postgres-restart-mid-race": ("fast", "gate", "nothing"),
        "postgres-crash-mid-race": ("immediate", "gate", "turns"),
        "postgres-restart-mid-stream": ("fast", "now", "nothing"),
        "postgres-crash-mid-stream": ("immediate", "now", "drain"),
    }


@pytest.mark.timeout(180)
def test_untracked_on_begin_failure_is_caught_by_both_mid_race_restarts(
        own_cluster: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", *MID_RACE, "--fault", "untracked-on-begin-failure", "--trials", "1",
                 "--json"])
    report = json.loads(capsys.readouterr().out)
    assert {name: s["verdict"] for name, s in report["scenarios"].items()} == {
        name: "invalid" for name in MID_RACE}
    assert report["properties"]["outage/fails-closed"] == {
        "verdict": "invalid", "valid": 0, "invalid": 2, "unknown": 0}
    assert code == 1


@pytest.mark.timeout(120)
def test_a_server_given_by_a_dsn_is_never_restarted_the_scenario_is_skipped_saying_why(
        pg_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARNESS_PG_DSN", pg_cluster.dsn)
    pid = pg_cluster.postmaster_pid()
    code = main(["run", "postgres-restart-mid-stream", "--json"])
    report = json.loads(capsys.readouterr().out)
    skipped = report["scenarios"]["postgres-restart-mid-stream"]["skipped"]
    assert "postgres-restart: the Postgres server was given by a DSN" in skipped
    assert report["trials"] == [] and code == 3  # nothing ran: inconclusive, never valid
    assert pg_cluster.postmaster_pid() == pid


def test_a_target_whose_control_commands_cannot_restart_postgres_skips_the_step() -> None:
    """[control] (shell/control.py) has no command for it: the step says so."""
    assert not hasattr(CommandControl, "postgres_restart")
    commands = SimpleNamespace(unavailable=lambda action: None, controls_database=True)
    program = Program(SimpleNamespace(control=commands), None, None, {}, None, {})  # type: ignore[arg-type]
    with pytest.raises(StepNotAvailable, match="postgres-restart: the target's \\[control\\] "
                                               "commands cannot restart its Postgres"):
        trio.run(IMPLEMENTATIONS["postgres-restart"], program, Step("postgres-restart"))
    nothing = Program(SimpleNamespace(control=None), None, None, {}, None, {})  # type: ignore[arg-type]
    with pytest.raises(StepNotAvailable, match="needs control of the service"):
        trio.run(IMPLEMENTATIONS["postgres-restart"], nothing, Step("postgres-restart"))
