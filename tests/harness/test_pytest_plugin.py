"""The pytest plugin, used as a user would: its fixture races the embedded reference."""

from __future__ import annotations

import pytest

from raceharness.pytest_plugin import Harness


@pytest.fixture
def embedded_db(monkeypatch: pytest.MonkeyPatch, pg_empty_dsn: str) -> None:
    monkeypatch.setenv("HARNESS_PG_DSN", pg_empty_dsn)


def test_the_fixture_races_the_embedded_reference(raceharness: Harness,
                                                  embedded_db: None) -> None:
    outcome = raceharness.race(n=10, seed=9)
    outcome.assert_valid()
    assert outcome.report["trials"][0]["statuses"] == {"200": 1, "409": 9}


def test_assert_valid_fails_with_the_verdict_table(raceharness: Harness,
                                                   embedded_db: None) -> None:
    outcome = raceharness.run("stale-stop", faults=("late-write-overwrites",), seed=4)
    with pytest.raises(AssertionError) as caught:
        outcome.assert_valid()
    assert "raceharness verdict is invalid" in str(caught.value)
    assert "stop/stale-ignored" in str(caught.value)


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"n": 0}, "n: expected an integer >= 1, got 0"),
    ({"n": -5}, "n: expected an integer >= 1, got -5"),
    ({"trials": 0}, "trials: expected an integer >= 1, got 0"),
    ({"n": 2.5}, "n: expected an integer >= 1, got 2.5"),
    ({"n": 5000}, "n: expected at most 1000, got 5000"),
])
def test_bad_counts_are_refused_before_anything_starts(
        raceharness: Harness, kwargs: dict[str, object], problem: str) -> None:
    """As strict as the command line: n=0 used to race 50, and -5 ran silently."""
    with pytest.raises(ValueError, match=problem):
        raceharness.race(**kwargs)  # type: ignore[arg-type]
