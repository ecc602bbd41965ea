"""Statistics shared by ``harness bench`` and ``harness soak`` (pure): medians, nearest-rank
percentiles, Wilson score intervals, the trials a rate needs, ratios and rounding."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def percentiles(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Count, p50, p99 and max (nearest rank, rounded): the shape of a latency in soak.json."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(values), "p50": rounded(percentile(values, 50), digits),
            "p99": rounded(percentile(values, 99), digits), "max": round(max(values), digits)}


def summary(values: Sequence[float | None], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and count of the values present (None is left out)."""
    present = [v for v in values if v is not None]
    return {"median": rounded(median(present), digits),
            "min": rounded(min(present) if present else None, digits),
            "max": rounded(max(present) if present else None, digits), "count": len(present)}


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a rate (95% by default)."""
    if trials == 0:
        return None
    p = successes / trials
    denom = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    # It always holds p; the clamps only undo rounding at p = 0 and p = 1.
    return min(p, max(0.0, (centre - margin) / denom)), max(p, min(1.0, (centre + margin) / denom))


def wilson_lower(successes: int, trials: int, z: float = 1.96) -> float | None:
    """The lower end of the Wilson score interval (95% by default)."""
    interval = wilson_interval(successes, trials, z)
    return None if interval is None else interval[0]


def trials_for_confidence(p: float | None, confidence: float = 0.95) -> int | None:
    """Independent trials needed so that at least one catches with ``confidence``."""
    if p is None or p <= 0:
        return None
    if p >= 1:
        return 1
    return math.ceil(math.log(1 - confidence) / math.log(1 - p))


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return round(value / baseline, 3)
