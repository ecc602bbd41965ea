"""Declarative scenarios: TOML files naming steps, parameters and the properties checked.

A scenario file::

    name = "same-chat-burst"
    summary = "N simultaneous turns on one idle chat; the winner held, then stopped"
    n = 50                      # racers per burst (``--n`` overrides)
    trials = 1                  # independent trials (``--trials`` overrides)
    requires = []               # capabilities, see CAPABILITIES
    properties = ["race/one-winner", "race/losers-409"]

    [[steps]]
    do = "new-chat"

    [[steps]]
    do = "burst"
    provider = "hold"           # step arguments, checked against the step's spec

The steps, their arguments (types, allowed values, defaults) and the observation phases are
declared once in ``steps.py``. Loading is pure and strict: an unknown key, step, argument,
property, capability or phase, or a value of the wrong type, is a :class:`ScenarioError` naming
the file, the field and the value.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from raceharness.core.properties import CHECKERS
from raceharness.core.steps import PHASES, SPECS, Phase, StepSpec

__all__ = ["CAPABILITIES", "PHASES", "SERVICE_SETTINGS", "STEPS", "Phase", "Scenario",
           "ScenarioError", "Step", "StepSpec", "catalogue", "load_scenario_file",
           "loads_scenario", "parse_scenario", "resolve"]

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

# What a scenario may need from the system under test. The embedded stack has all of them (it
# starts the reference with the setting a scenario asks for); a --target has "provider" with
# --provider-listen, "db" with --dsn, "other-token" with --other-token, the disconnect
# behaviours when declared with --capability, and the control capabilities only when its
# profile's [control] section says how (net/control_spec.py): the harness does not kill or stop
# what it did not start unless told how.
CAPABILITIES: dict[str, str] = {
    "provider": "the target uses the harness's fake provider (--provider-listen)",
    "db": "read-only database access (--dsn)",
    "other-token": "a second user's token (--other-token)",
    "autonomous-runs": "a client disconnect lets the run finish (AUTONOMOUS_RUNS=true)",
    "disconnect-stops": "a client disconnect stops the run (AUTONOMOUS_RUNS=false)",
    "service-control": "the harness may kill and restart the service's processes (a "
                       "target: [control] kill and start in its profile)",
    "db-control": "the harness may stop and start the service's database (a target: "
                  "[control] db_down and db_up in its profile)",
    "multi-instance": "several instances of the service share one database (a target: "
                      "[control] instances, two or more URLs, in its profile)",
    "client-chat-ids": "a turn may name a chat that does not exist yet and create it (the "
                       "adapter's; e.g. LangGraph's if_not_exists)",
}

# What a scenario may assume of the service's configuration. The embedded stack starts the
# reference with the scenario's value; against a --target the user declares the deployment's
# value (the flag, or [service] in the profile) and the scenario's waits are derived from it.
# A scenario assuming a setting that is not declared for a target is skipped with the reason:
# never run against a guess and failed.
SERVICE_SETTINGS: dict[str, tuple[str, str]] = {
    "provider_timeout_s": ("--provider-timeout", "the service's provider read timeout"),
    "lease_s": ("--lease", "the service's run lease"),
    "heartbeat_s": ("--heartbeat", "the service's lease renewal (heartbeat) interval"),
}

# The steps a scenario may name, their arguments and the observation phases: declared once in
# ``steps.py`` (each with exactly one implementation in ``trial/steps/``).
STEPS: dict[str, StepSpec] = SPECS

_TOP: dict[str, type | tuple[type, ...]] = {
    "name": str, "summary": str, "n": int, "trials": int, "requires": list,
    "properties": list, "steps": list, "reuse_chat": bool, "instances": int,
    "autonomous_runs": bool, "lease_s": (int, float), "provider_timeout_s": (int, float),
    "heartbeat_s": (int, float),
}


_SPEC_DEFAULT: Any = object()


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file, the field and the value."""


@dataclass(frozen=True)
class Step:
    do: str
    args: dict[str, Any] = field(default_factory=dict)

    def arg(self, name: str, default: Any = _SPEC_DEFAULT) -> Any:
        """The argument as written, else ``default``, else the spec's fixed default."""
        if name in self.args:
            return self.args[name]
        if default is not _SPEC_DEFAULT:
            return default
        return STEPS[self.do].default(name)


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    steps: tuple[Step, ...]
    properties: tuple[str, ...]
    n: int = 50
    trials: int = 1
    requires: frozenset[str] = frozenset()
    reuse_chat: bool = False
    instances: int = 1
    autonomous_runs: bool = False
    lease_s: float | None = None
    provider_timeout_s: float | None = None  # the embedded reference's provider read timeout
    heartbeat_s: float | None = None
    source: str = ""

    @property
    def assumes(self) -> dict[str, float]:
        """The service settings this scenario relies on (SERVICE_SETTINGS), with the value
        the embedded stack is started with."""
        return {name: value for name in SERVICE_SETTINGS
                if (value := getattr(self, name)) is not None}


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {"str": "a string", "int": "an integer", "bool": "a boolean", "list": "an array",
            "float": "a number"}.get(t.__name__, t.__name__)


def _check_type(where: str, value: Any, expected: type | tuple[type, ...]) -> None:
    ok = isinstance(value, expected) and not (
        isinstance(value, bool) and expected in (int, (int, float)))
    if not ok:
        raise ScenarioError(f"{where}: expected {_type_name(expected)}, got {value!r}")


def parse_scenario(data: dict[str, Any], source: str) -> Scenario:
    for key, value in data.items():
        if key not in _TOP:
            raise ScenarioError(f"{source}: {key}: unknown field; expected one of "
                                f"{', '.join(_TOP)}")
        _check_type(f"{source}: {key}", value, _TOP[key])
    for key in ("name", "summary", "steps", "properties"):
        if key not in data:
            raise ScenarioError(f"{source}: {key}: required")
    name = data["name"]
    if not NAME_RE.match(name):
        raise ScenarioError(f"{source}: name: expected lowercase letters, digits and '-', "
                            f"got {name!r}")
    for key in ("n", "trials", "instances"):
        if key in data and data[key] < 1:
            raise ScenarioError(f"{source}: {key}: expected an integer >= 1, got {data[key]!r}")
    for key in SERVICE_SETTINGS:
        if key in data and not data[key] > 0:
            raise ScenarioError(f"{source}: {key}: expected a number > 0, got {data[key]!r}")
    properties = tuple(data["properties"])
    for i, prop in enumerate(properties):
        if prop not in CHECKERS:
            raise ScenarioError(f"{source}: properties[{i}]: unknown property {prop!r}; "
                                f"known: {', '.join(CHECKERS)}")
    if not properties:
        raise ScenarioError(f"{source}: properties: a scenario must check at least one")
    requires = data.get("requires", [])
    for i, cap in enumerate(requires):
        if cap not in CAPABILITIES:
            raise ScenarioError(f"{source}: requires[{i}]: unknown capability {cap!r}; "
                                f"known: {', '.join(CAPABILITIES)}")
    steps = tuple(_parse_step(source, i, raw) for i, raw in enumerate(data["steps"]))
    if not steps:
        raise ScenarioError(f"{source}: steps: a scenario needs at least one step")
    return Scenario(
        name=name, summary=data["summary"], steps=steps, properties=properties,
        n=data.get("n", 50), trials=data.get("trials", 1), requires=frozenset(requires),
        reuse_chat=data.get("reuse_chat", False), instances=data.get("instances", 1),
        autonomous_runs=data.get("autonomous_runs", False),
        lease_s=None if "lease_s" not in data else float(data["lease_s"]),
        provider_timeout_s=(None if "provider_timeout_s" not in data
                            else float(data["provider_timeout_s"])),
        heartbeat_s=None if "heartbeat_s" not in data else float(data["heartbeat_s"]),
        source=source)


def _parse_step(source: str, i: int, raw: Any) -> Step:
    where = f"{source}: steps[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a table, got {raw!r}")
    do = raw.get("do")
    if do not in STEPS:
        raise ScenarioError(f"{where}.do: unknown step {do!r}; known: {', '.join(STEPS)}")
    spec = STEPS[do]
    signature = spec.signature
    args: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "do":
            continue
        if key not in signature:
            raise ScenarioError(f"{where}.{key}: step {do!r} takes no argument {key!r}"
                                + (f"; it takes {', '.join(signature)}" if signature else ""))
        arg = spec.arg(key)
        _check_type(f"{where}.{key}", value, arg.type)
        if arg.choices and value not in arg.choices:
            raise ScenarioError(f"{where}.{key}: expected one of {', '.join(arg.choices)}, "
                                f"got {value!r}")
        if arg.type is int and value < 0:
            raise ScenarioError(f"{where}.{key}: expected an integer >= 0, got {value!r}")
        if arg.type is list:
            if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                                for v in value):
                raise ScenarioError(f"{where}.{key}: expected a non-empty array of integers "
                                    f">= 0, got {value!r}")
            value = tuple(value)
        args[key] = value
    for arg in spec.args:
        if arg.name in args and arg.only_with is not None:
            other, needed = arg.only_with
            if args.get(other, spec.default(other)) != needed:
                raise ScenarioError(
                    f"{where}.{arg.name}: only with {other} = {needed!r}, got "
                    f"{other} = {args.get(other, spec.default(other))!r}")
    return Step(do=do, args=args)


def loads_scenario(text: str, source: str = "<string>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    return parse_scenario(data, source)


def load_scenario_file(path: str | Path) -> Scenario:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario file: {exc}") from None
    return loads_scenario(text, str(path))


def catalogue() -> dict[str, Scenario]:
    """The scenarios shipped in the ``scenarios`` package, by name, in file-name order."""
    found: dict[str, Scenario] = {}
    files = sorted((f for f in resources.files("raceharness.scenarios").iterdir()
                    if f.name.endswith(".toml")), key=lambda f: f.name)
    for entry in files:
        scenario = loads_scenario(entry.read_text(encoding="utf-8"), f"scenarios/{entry.name}")
        if scenario.name in found:
            raise ScenarioError(f"scenarios/{entry.name}: name: {scenario.name!r} is used twice")
        found[scenario.name] = scenario
    return found


def resolve(name_or_file: str) -> Scenario:
    """A catalogue name, or a path to a user's scenario file."""
    if name_or_file.endswith(".toml") or "/" in name_or_file:
        return load_scenario_file(name_or_file)
    scenarios = catalogue()
    if name_or_file not in scenarios:
        raise ScenarioError(f"unknown scenario {name_or_file!r}; known: {', '.join(scenarios)}")
    return scenarios[name_or_file]
