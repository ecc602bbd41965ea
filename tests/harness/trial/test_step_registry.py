"""The step registry: every step spec (core/steps.py) has exactly one implementation in
trial/steps/, every implementation a spec, and Program.run dispatches through it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from raceharness.core.scenario import Step, loads_scenario
from raceharness.core.steps import SPECS, Phase
from raceharness.trial import program as program_module
from raceharness.trial.steps import IMPLEMENTATIONS, Program, step
from raceharness.trial.steps import base as steps_base

STEPS_DIR = Path(steps_base.__file__).parent
MAX_LINES = 400


def _decorated_names() -> dict[str, list[str]]:
    """Step name -> the modules whose functions are decorated ``@step(name)`` (read from the
    source: a second registration would fail at import before any runtime check)."""
    found: dict[str, list[str]] = {}
    for path in sorted(STEPS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name)
                        and deco.func.id == "step"):
                    arg = deco.args[0]
                    assert isinstance(arg, ast.Constant), f"{path.name}: @step needs a literal"
                    found.setdefault(arg.value, []).append(f"{path.name}:{node.name}")
    return found


def test_every_spec_has_exactly_one_implementation_and_every_implementation_a_spec() -> None:
    assert set(IMPLEMENTATIONS) == set(SPECS)
    decorated = _decorated_names()
    assert {name: where for name, where in decorated.items() if len(where) != 1} == {}
    assert set(decorated) == set(SPECS)


def test_every_implementation_is_an_async_function_of_program_and_call() -> None:
    for name, fn in IMPLEMENTATIONS.items():
        assert inspect.iscoroutinefunction(fn), name
        assert list(inspect.signature(fn).parameters) == ["p", "call"], name


def test_the_decorator_refuses_an_unknown_step_and_a_second_implementation() -> None:
    async def impl(p: Program, call: Step) -> None:
        """Never registered."""

    with pytest.raises(LookupError, match="no step spec 'teleport'"):
        step("teleport")(impl)
    with pytest.raises(LookupError, match="step 'burst' implemented twice: "
                                          "raceharness.trial.steps.burst.burst and"):
        step("burst")(impl)
    assert IMPLEMENTATIONS["burst"].__module__ == "raceharness.trial.steps.burst"


def test_each_step_module_is_short_or_says_why_not() -> None:
    for path in STEPS_DIR.glob("*.py"):
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert lines <= MAX_LINES or "longer than 400 lines because" in doc, (
            f"{path.name}: {lines} lines; split it or say why in its docstring")


def test_the_names_suite_and_bench_import_stay_importable_from_program() -> None:
    for name in ("run_scenario_trial", "StepNotAvailable", "planned_wait_s", "Program",
                 "TrialState"):
        assert hasattr(program_module, name), name


def test_planned_wait_uses_the_spec_defaults() -> None:
    scenario = loads_scenario('''
name = "waits"
summary = "s"
properties = ["race/one-winner"]
[[steps]]
do = "hold-past"
[[steps]]
do = "wait-run-end"
[[steps]]
do = "wait-run-end"
within_s = 4
[[steps]]
do = "expire-lease"
''')
    settings = {"heartbeat_s": 1.0, "lease_s": 2.0, "provider_timeout_s": 2.0}
    # hold-past: max(3 x 1, 2 + 2 x 1) = 4; wait-run-end: 2 x 1.5 + 5 = 8 (the one with
    # within_s is not derived from the settings); expire-lease: 3 x 2 + 5 = 11
    assert program_module.planned_wait_s(scenario, settings, 10.0) == 4 + 8 + 11
    assert program_module.planned_wait_s(scenario, {}, 10.0) == 10.0


def _program(steps: list[str], monkeypatch: pytest.MonkeyPatch,
             decide_after: str | None = None) -> tuple[Program, list[Step]]:
    scenario = loads_scenario("name = \"d\"\nsummary = \"s\"\nproperties = "
                              "[\"race/one-winner\"]\n"
                              + "".join(f"[[steps]]\ndo = \"{s}\"\n" for s in steps))
    ran: list[Step] = []
    program = Program(SimpleNamespace(trial_no=1), scenario, None, {}, None, {})  # type: ignore[arg-type]

    def fake(name: str) -> Any:
        async def impl(p: Program, call: Step) -> None:
            assert p is program
            ran.append(call)
            if name == decide_after:
                p.decided = "race/losers-fast: settled"
        return impl

    for name in set(steps):
        monkeypatch.setitem(IMPLEMENTATIONS, name, fake(name))
    return program, ran


def test_program_run_dispatches_each_step_through_the_registry_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    program, ran = _program(["new-chat", "observe", "burst", "drain"], monkeypatch)
    trio.run(program.run)
    assert [s.do for s in ran] == ["new-chat", "observe", "burst", "drain"]
    assert "cut_short" not in program.meta


def test_a_decided_trial_skips_the_steps_left_and_says_which(
        monkeypatch: pytest.MonkeyPatch) -> None:
    program, ran = _program(["new-chat", "burst", "stop-winner", "released-turn"], monkeypatch,
                            decide_after="burst")
    trio.run(program.run)
    assert [s.do for s in ran] == ["new-chat", "burst"]
    assert program.meta["cut_short"] == {"because": "race/losers-fast: settled",
                                         "skipped": ["stop-winner", "released-turn"]}


def test_the_phases_a_step_records_are_the_checkers_on_disk_strings() -> None:
    recorded = {phase for spec in SPECS.values() for phase in spec.records}
    observed = {Phase.BEFORE, Phase.HELD, Phase.AFTER}  # by observe steps in scenario files
    assert recorded | observed | {Phase.CLEANUP} == set(Phase)  # cleanup: every trial's end
    assert {p.value for p in Phase} >= {"after-stop", "before-stale", "after-foreign", "final",
                                        "storm", "reclaimed", "recovered", "cleanup"}
