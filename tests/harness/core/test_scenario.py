"""The scenario format and catalogue (pure): loading is strict, errors name file, field, value."""

from __future__ import annotations

from pathlib import Path

import pytest

from raceharness.core.properties import CHECKERS
from raceharness.core.scenario import (
    CAPABILITIES,
    STEPS,
    ScenarioError,
    Step,
    catalogue,
    loads_scenario,
    resolve,
)
from raceharness.core.steps import PHASES, SPECS, Phase, reference

CONFORMANCE_CATALOGUE = [  # conformance.md §3, in its order
    "same-chat-burst", "double-submit", "sequential-double-submit", "distinct-chats",
    "burst-waves", "stop-then-burst", "stale-stop", "disconnect-abort", "disconnect-continue",
    "provider-error", "provider-slow-first-token", "foreign-user", "bad-input",
    "crash-recovery", "db-outage",
    # §3.14 with a real outage: the database taken away in the gate, while streaming
    "db-outage-mid-race", "db-outage-mid-stream",
    "multi-instance",
    # beyond §3: the provider faults of the reliability issue
    "provider-500-before-first-token", "provider-connection-drop", "provider-stall",
    "disconnect-storm-abort", "disconnect-storm-continue",
    # the service's own clocks run: the winner held past its heartbeats and lease
    "long-hold",
    # a chat created by its first turns, racing (an adapter with client-chosen chat ids)
    "create-on-first-turn",
    # a real restart of the Postgres cluster (fast), and a crash of it (immediate), in the
    # gate and mid-stream
    "postgres-restart-mid-race", "postgres-crash-mid-race",
    "postgres-restart-mid-stream", "postgres-crash-mid-stream",
]

MINIMAL = '''
name = "mine"
summary = "a user's scenario"
properties = ["race/one-winner"]
[[steps]]
do = "new-chat"
[[steps]]
do = "burst"
n = 3
'''


def test_the_catalogue_is_conformance_section_3_in_order_then_the_provider_faults() -> None:
    scenarios = catalogue()
    assert list(scenarios) == CONFORMANCE_CATALOGUE
    for scenario in scenarios.values():
        assert set(scenario.properties) <= set(CHECKERS)
        assert scenario.requires <= set(CAPABILITIES)
        assert all(step.do in STEPS for step in scenario.steps)
        assert scenario.summary


def test_scenarios_needing_control_declare_it() -> None:
    scenarios = catalogue()
    assert "service-control" in scenarios["crash-recovery"].requires
    for name in ("db-outage", "db-outage-mid-race", "db-outage-mid-stream",
                 "postgres-restart-mid-race", "postgres-crash-mid-race",
                 "postgres-restart-mid-stream", "postgres-crash-mid-stream"):
        assert "db-control" in scenarios[name].requires
    assert "multi-instance" in scenarios["multi-instance"].requires
    assert scenarios["multi-instance"].instances == 3
    assert "client-chat-ids" in scenarios["create-on-first-turn"].requires


def test_create_on_first_turn_names_a_fresh_chat_before_the_burst_and_counts_it_after() -> None:
    scenario = catalogue()["create-on-first-turn"]
    steps = [step.do for step in scenario.steps]
    assert steps.index("fresh-chat-id") < steps.index("burst") < steps.index("count-chats")
    assert "new-chat" not in steps  # the racers create the chat
    assert scenario.properties[0] == "chats/created-once"
    assert STEPS["fresh-chat-id"].requires == {"client-chat-ids"}



def test_a_scenario_names_the_service_settings_it_assumes() -> None:
    """What a scenario relies on of the service's configuration is declared in the file:
    the embedded stack is started with it, and a --target must declare the same names."""
    scenarios = catalogue()
    assert scenarios["provider-stall"].assumes == {"provider_timeout_s": 1.0}
    assert scenarios["long-hold"].assumes == {"lease_s": 1.5, "heartbeat_s": 0.3}
    assert scenarios["crash-recovery"].assumes == {"lease_s": 3.0}
    assert scenarios["same-chat-burst"].assumes == {}
    burst = next(s for s in scenarios["sequential-double-submit"].steps if s.do == "burst")
    assert burst.args["delays_ms"] == (0, 50, 500, 2000)


def test_a_minimal_user_scenario_loads_with_defaults() -> None:
    scenario = loads_scenario(MINIMAL, "mine.toml")
    assert (scenario.name, scenario.n, scenario.trials, scenario.requires) == (
        "mine", 50, 1, frozenset())
    assert [(s.do, s.args) for s in scenario.steps] == [("new-chat", {}), ("burst", {"n": 3})]


def test_resolve_takes_a_catalogue_name_or_a_file(tmp_path: Path) -> None:
    assert resolve("stale-stop").name == "stale-stop"
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL)
    assert resolve(str(path)).source == str(path)
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'; known: same-chat-burst"):
        resolve("nope")
    with pytest.raises(ScenarioError, match="missing.toml: cannot read scenario file"):
        resolve(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(("edit", "message"), [
    (("name = \"mine\"", "name = \"Mine!\""),
     "f.toml: name: expected lowercase letters, digits and '-', got 'Mine!'"),
    (("summary = \"a user's scenario\"", "summary = 3"),
     "f.toml: summary: expected a string, got 3"),
    (("[[steps]]\ndo = \"new-chat\"", "colour = \"red\"\n[[steps]]\ndo = \"new-chat\""),
     "f.toml: colour: unknown field; expected one of name, summary"),
    (("do = \"new-chat\"", "do = \"teleport\""),
     "f.toml: steps[0].do: unknown step 'teleport'; known: new-chat"),
    (("n = 3", "speed = 3"),
     "f.toml: steps[1].speed: step 'burst' takes no argument 'speed'; it takes n, sync"),
    (("n = 3", "n = \"3\""), "f.toml: steps[1].n: expected an integer, got '3'"),
    (("n = 3", "n = true"), "f.toml: steps[1].n: expected an integer, got True"),
    (("n = 3", "sync = \"telepathy\""),
     "f.toml: steps[1].sync: expected one of last-byte, naive, got 'telepathy'"),
    (("properties = [\"race/one-winner\"]", "properties = [\"race/fast\"]"),
     "f.toml: properties[0]: unknown property 'race/fast'; known: race/overlap-achieved"),
    (("properties = [\"race/one-winner\"]", "properties = []"),
     "f.toml: properties: a scenario must check at least one"),
    (("name = \"mine\"", "name = \"mine\"\nrequires = [\"x-ray\"]"),
     "f.toml: requires[0]: unknown capability 'x-ray'; known: provider, db"),
    (("name = \"mine\"", "name = \"mine\"\ntrials = 0"),
     "f.toml: trials: expected an integer >= 1, got 0"),
    (("summary = \"a user's scenario\"\n", ""), "f.toml: summary: required"),
    (("[[steps]]\ndo = \"new-chat\"", "[[steps]]\ndo = \"new-chat\"\n[oops"),
     "f.toml: not valid TOML"),
    (("n = 3", "delays_ms = [50]"),
     "f.toml: steps[1].delays_ms: only with release = 'after-first-start', got release = "
     "'together'"),
    (("n = 3", "release = \"after-first-start\"\ndelays_ms = [50, -1]"),
     "f.toml: steps[1].delays_ms: expected a non-empty array of integers >= 0, got [50, -1]"),
    (("n = 3", "release = \"after-first-start\"\ndelays_ms = []"),
     "f.toml: steps[1].delays_ms: expected a non-empty array of integers >= 0, got []"),
    (("name = \"mine\"", "name = \"mine\"\nheartbeat_s = 0"),
     "f.toml: heartbeat_s: expected a number > 0, got 0"),
    (("do = \"new-chat\"", "do = \"observe\"\nphase = \"helld\""),
     "f.toml: steps[0].phase: expected one of before, held, after, after-stop, before-stale, "
     "after-stale, before-foreign, after-foreign, final, storm, reclaimed, recovered, "
     "cleanup, got 'helld'"),
    (("do = \"new-chat\"", "do = \"observe\"\nphase = 1"),
     "f.toml: steps[0].phase: expected a string, got 1"),
    (("do = \"new-chat\"", "do = \"stop-winner\"\nvia = \"elsewhere\""),
     "f.toml: steps[0].via: expected one of owner, other-instance, got 'elsewhere'"),
    (("do = \"new-chat\"", "do = \"new-chat\"\nn = 2"),
     "f.toml: steps[0].n: step 'new-chat' takes no argument 'n'\n"),
    (("n = 3", "n = -1"), "f.toml: steps[1].n: expected an integer >= 0, got -1"),
])
def test_loading_errors_name_the_file_the_field_and_the_value(
        edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in MINIMAL
    with pytest.raises(ScenarioError) as caught:
        loads_scenario(MINIMAL.replace(old, new, 1), "f.toml")
    assert (str(caught.value) + "\n").startswith(message)


def test_the_phases_are_the_strings_the_checkers_read() -> None:
    """On-disk strings: a history written before keeps being judged the same."""
    assert PHASES == ("before", "held", "after", "after-stop", "before-stale", "after-stale",
                      "before-foreign", "after-foreign", "final", "storm", "reclaimed",
                      "recovered", "cleanup")
    assert Phase("held") is Phase.HELD and Phase.AFTER_STOP.value == "after-stop"


def test_every_observe_phase_of_the_catalogue_is_a_phase() -> None:
    for scenario in catalogue().values():
        for step in scenario.steps:
            if step.do == "observe":
                assert Phase(step.arg("phase")) in Phase


def test_a_step_argument_left_out_takes_the_specs_default() -> None:
    assert Step("burst").arg("release") == "together"
    assert Step("burst").arg("delays_ms") == ()
    assert Step("observe").arg("phase") == "held"
    assert Step("burst", {"release": "after-first-start"}).arg("release") == "after-first-start"
    assert Step("burst").arg("n", 7) == 7  # the engine's derived default
    with pytest.raises(LookupError, match="'n' has no fixed default"):
        Step("burst").arg("n")


def test_the_specs_defaults_pass_their_own_checks() -> None:
    for spec in SPECS.values():
        for arg in spec.args:
            assert arg.type in (str, int, list), (spec.name, arg.name)
            assert arg.summary, (spec.name, arg.name)
            if arg.derived:
                assert arg.default is None, (spec.name, arg.name)
                continue
            if arg.type is list:
                assert isinstance(arg.default, tuple), (spec.name, arg.name)
            else:
                assert isinstance(arg.default, arg.type), (spec.name, arg.name)
            if arg.choices:
                assert arg.default in arg.choices, (spec.name, arg.name)
            if arg.only_with:
                assert spec.arg(arg.only_with[0]).choices, (spec.name, arg.name)


def test_steps_require_known_capabilities_and_the_catalogue_declares_them() -> None:
    for spec in SPECS.values():
        assert spec.requires <= set(CAPABILITIES), spec.name
        assert spec.summary, spec.name
    for scenario in catalogue().values():
        needed = set().union(*(STEPS[s.do].requires for s in scenario.steps))
        assert needed <= scenario.requires, (scenario.name, needed - scenario.requires)


def test_the_step_reference_names_every_step_argument_and_choice() -> None:
    text = reference()
    for spec in SPECS.values():
        assert f"{spec.name}: {spec.summary}" in text
        for arg in spec.args:
            assert f"    {arg.name}" in text
    assert "phase (before | held | after | after-stop" in text
    assert "foreign-user: another user's token on the chat: turn, stop, run, runs (each must " \
           "be 403)  [needs other-token]" in text
    assert "delays_ms: each later turn this long after the first one's answer; default none; " \
           "only with release = after-first-start" in text


def test_every_scenario_listing_losers_409_also_lists_holder_named() -> None:
    """The conflict answer and the holder it names are two claims since the split: a scenario
    that checks one checks both (an adapter that cannot name a holder says so itself)."""
    for scenario in catalogue().values():
        props = set(scenario.properties)
        assert ("race/losers-409" in props) == ("race/holder-named" in props), scenario.name
