"""A pytest plugin (entry point ``pytest11``) for users' own test suites.

Fixtures:

- ``raceharness`` — a :class:`Harness` whose ``race(...)`` and ``run(...)`` run the harness from
  a test and return the outcome; ``outcome.assert_valid()`` fails the test with the verdict
  table (and the reproduce line) unless every property is valid.

Without options it races the embedded reference (the harness provisions Postgres and starts
the reference itself). To aim at a deployment::

    pytest --raceharness-target https://staging.example.com          # token: HARNESS_TOKEN
           [--raceharness-provider-listen 0.0.0.0:9099] [--raceharness-dsn ...]

Example (``tests/test_one_active_run.py`` in a user's project)::

    def test_one_active_run_per_chat(raceharness):
        raceharness.race(n=50, trials=3).assert_valid()

    def test_double_click(raceharness):
        raceharness.run("double-submit").assert_valid()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from raceharness.core.report import verdict_table
from raceharness.core.scenario import resolve
from raceharness.net.target import Target
from raceharness.runtime import MAX_N
from raceharness.trial.context import RaceConfig
from raceharness.trial.suite import RaceOptions, RaceOutcome, run_race, run_scenarios


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("raceharness", "one-active-run race harness")
    group.addoption("--raceharness-target", default=os.environ.get("HARNESS_TARGET"),
                    help="deployment URL (default: the embedded reference); token from "
                         "HARNESS_TOKEN")
    group.addoption("--raceharness-provider-listen", default=None, metavar="HOST:PORT",
                    help="where the fake provider listens for the deployment")
    group.addoption("--raceharness-dsn", default=os.environ.get("HARNESS_DSN"),
                    help="read-only DSN of the deployment's database")
    group.addoption("--raceharness-report", default=None, metavar="DIR",
                    help="write each run's reports under DIR/<test name>/")


@dataclass
class Outcome:
    outcome: RaceOutcome

    @property
    def report(self) -> dict[str, Any]:
        return self.outcome.report

    @property
    def verdict(self) -> str:
        return str(self.outcome.report["verdict"])

    def assert_valid(self) -> None:
        if self.verdict != "valid":
            raise AssertionError("raceharness verdict is "
                                 f"{self.verdict}:\n{verdict_table(self.report)}")


class Harness:
    def __init__(self, config: pytest.Config, test_name: str) -> None:
        self._config = config
        self._test_name = test_name

    def _options(self, n: int | None, trials: int | None, **overrides: Any) -> RaceOptions:
        for name, value in (("n", n), ("trials", trials)):  # as strict as the command line
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"raceharness: {name}: expected an integer >= 1, "
                                 f"got {value!r}")
        if n is not None and n > MAX_N:
            raise ValueError(f"raceharness: n: expected at most {MAX_N}, got {n}")
        get = self._config.getoption
        target_url = get("raceharness_target")
        target = None
        if target_url:
            token = os.environ.get("HARNESS_TOKEN")
            if not token:
                raise pytest.UsageError("--raceharness-target needs HARNESS_TOKEN")
            target = Target(base_url=target_url, token=token,
                            other_token=os.environ.get("HARNESS_OTHER_TOKEN"))
        listen = get("raceharness_provider_listen")
        provider_listen = None
        if listen:
            host, _, port = listen.rpartition(":")
            provider_listen = (host, int(port))
        report = get("raceharness_report")
        return RaceOptions(
            config=RaceConfig(n=50 if n is None else n), n=n, trials=trials, target=target,
            dsn=get("raceharness_dsn") if target else None, provider_listen=provider_listen,
            report_dir=None if not report else Path(report) / self._test_name, **overrides)

    def race(self, n: int = 50, trials: int = 1, *, seed: int | None = None,
             faults: tuple[str, ...] = ()) -> Outcome:
        opts = self._options(n, trials, seed=seed, faults=faults)
        return Outcome(trio.run(run_race, opts))

    def run(self, *scenarios: str, n: int | None = None, trials: int | None = None,
            seed: int | None = None, faults: tuple[str, ...] = ()) -> Outcome:
        opts = self._options(n, trials, seed=seed, faults=faults, command="run")
        return Outcome(trio.run(run_scenarios, opts, [resolve(s) for s in scenarios]))


@pytest.fixture
def raceharness(request: pytest.FixtureRequest) -> Harness:
    """Run the race harness from a test; see the module docstring."""
    return Harness(request.config, request.node.name)
