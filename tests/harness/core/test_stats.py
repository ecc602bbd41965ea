"""The statistics shared by `harness bench` and `harness soak` (core/stats.py, pure)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from raceharness.core.stats import (
    percentile,
    percentiles,
    ratio,
    rounded,
    summary,
    trials_for_confidence,
    wilson_interval,
    wilson_lower,
)


def test_trials_for_confidence() -> None:
    assert trials_for_confidence(1.0) == 1
    assert trials_for_confidence(0.5) == 5          # 1 - 0.5**5 = 0.969 >= 0.95 > 1 - 0.5**4
    assert trials_for_confidence(0.0) is None
    assert trials_for_confidence(None) is None


@given(st.floats(min_value=0.001, max_value=0.999))
def test_trials_for_confidence_is_the_least_that_reaches_95(p: float) -> None:
    k = trials_for_confidence(p)
    assert k is not None
    assert 1 - (1 - p) ** k >= 0.95 - 1e-12
    assert k == 1 or 1 - (1 - p) ** (k - 1) < 0.95 + 1e-12


@given(st.integers(min_value=1, max_value=500), st.data())
def test_the_wilson_lower_bound_is_below_the_rate(trials: int, data: st.DataObject) -> None:
    caught = data.draw(st.integers(min_value=0, max_value=trials))
    lower = wilson_lower(caught, trials)
    assert lower is not None and 0.0 <= lower <= caught / trials + 1e-12


@given(st.integers(min_value=1, max_value=500), st.data())
def test_the_wilson_interval_holds_the_rate(trials: int, data: st.DataObject) -> None:
    caught = data.draw(st.integers(min_value=0, max_value=trials))
    interval = wilson_interval(caught, trials)
    assert interval is not None
    lower, upper = interval
    assert 0.0 <= lower <= caught / trials <= upper + 1e-12 and upper <= 1.0
    assert lower == wilson_lower(caught, trials)


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(0, 0) is None
    lower, upper = wilson_interval(46, 50) or (0, 0)
    assert math.isclose(lower, 0.8115, abs_tol=1e-3) and math.isclose(upper, 0.9685, abs_tol=1e-3)


def test_wilson_lower_bound_known_values() -> None:
    assert wilson_lower(0, 0) is None
    assert math.isclose(wilson_lower(50, 50) or 0, 0.9287, abs_tol=1e-4)
    assert math.isclose(wilson_lower(10, 10) or 0, 0.7225, abs_tol=1e-4)


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1))
def test_percentile_is_the_rank_the_soak_used(values: list[float]) -> None:
    ordered = sorted(values)
    for q in (50, 99):  # soak's own rank: ceil(q/100 * n), 1-based, on the sorted values
        assert percentile(values, q) == ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def test_percentiles_have_the_shape_of_soak_latencies() -> None:
    assert percentiles([]) == {"n": 0, "p50": None, "p99": None, "max": None}
    assert percentiles([3.0, 1.0004, 2.0]) == {"n": 3, "p50": 2.0, "p99": 3.0, "max": 3.0}
    assert percentiles([1.23456]) == {"n": 1, "p50": 1.235, "p99": 1.235, "max": 1.235}


def test_summary_leaves_missing_values_out() -> None:
    assert summary([2.0, None, 1.0, 4.0]) == {"median": 2.0, "min": 1.0, "max": 4.0,
                                              "count": 3}
    assert summary([None]) == {"median": None, "min": None, "max": None, "count": 0}


def test_ratio_and_rounding() -> None:
    assert ratio(1.0, 3.0) == 0.333 and ratio(None, 1.0) is None and ratio(1.0, 0.0) is None
    assert rounded(None) is None and rounded(1.23456, 1) == 1.2
