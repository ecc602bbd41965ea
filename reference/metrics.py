"""In-process counters, rendered as Prometheus text exposition (``GET /metrics``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


class Metrics:
    def __init__(self, active_runs: Callable[[], int] = lambda: 0) -> None:
        self.runs_started = 0
        self.conflicts: Counter[str] = Counter({"precheck": 0, "gate": 0})
        self.runs_ended: Counter[str] = Counter({"succeeded": 0, "failed": 0, "aborted": 0})
        self.provider_calls = 0
        self.runs_reaped = 0
        self.begin_failures = 0
        self.active_runs = active_runs

    def render(self) -> str:
        lines = [
            "# HELP ai_chat_runs_started_total Runs that passed the gate.",
            "# TYPE ai_chat_runs_started_total counter",
            f"ai_chat_runs_started_total {self.runs_started}",
            "# HELP ai_chat_run_conflicts_total Turns answered 409, by the guard that answered.",
            "# TYPE ai_chat_run_conflicts_total counter",
        ]
        lines += [f'ai_chat_run_conflicts_total{{path="{p}"}} {n}'
                  for p, n in sorted(self.conflicts.items())]
        lines += [
            "# HELP ai_chat_runs_ended_total Runs this instance ended, by terminal status.",
            "# TYPE ai_chat_runs_ended_total counter",
        ]
        lines += [f'ai_chat_runs_ended_total{{status="{s}"}} {n}'
                  for s, n in sorted(self.runs_ended.items())]
        lines += [
            "# HELP ai_chat_provider_calls_total Provider requests opened.",
            "# TYPE ai_chat_provider_calls_total counter",
            f"ai_chat_provider_calls_total {self.provider_calls}",
            "# HELP ai_chat_runs_reaped_total Runs aborted because their lease expired.",
            "# TYPE ai_chat_runs_reaped_total counter",
            f"ai_chat_runs_reaped_total {self.runs_reaped}",
            "# HELP ai_chat_run_begin_failures_total Begins that failed with 503.",
            "# TYPE ai_chat_run_begin_failures_total counter",
            f"ai_chat_run_begin_failures_total {self.begin_failures}",
            "# HELP ai_chat_active_runs Runs streaming in this instance now.",
            "# TYPE ai_chat_active_runs gauge",
            f"ai_chat_active_runs {self.active_runs()}",
        ]
        return "\n".join(lines) + "\n"
