"""In-process counters, rendered as Prometheus text exposition (``GET /metrics``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping


class Metrics:
    def __init__(self, active_runs: Callable[[], int] = lambda: 0) -> None:
        self.runs_started = 0
        self.conflicts: Counter[str] = Counter({"precheck": 0, "gate": 0})
        self.runs_ended: Counter[str] = Counter({"succeeded": 0, "failed": 0, "aborted": 0})
        self.provider_calls = 0
        self.runs_reaped = 0
        self.begin_failures = 0
        self.active_runs = active_runs
        self.pool_stats: Callable[[], Mapping[str, int]] = dict  # psycopg_pool's get_stats

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
        stats = self.pool_stats()
        for key, kind, text in _POOL_SERIES if stats else ():
            name = f"ai_chat_db_pool_{key}" + ("_total" if kind == "counter" else "")
            # get_stats leaves a counter out until it first moves
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}",
                      f"{name} {stats.get(key, 0)}"]
        return "\n".join(lines) + "\n"


# psycopg_pool.get_stats() keys worth exposing: a turn that queues for a connection is late to
# its pre-check, so it widens (or, in a race, narrows) the window the gate must cover.
_POOL_SERIES = (
    ("pool_size", "gauge", "Connections the pool holds (busy or idle)."),
    ("pool_available", "gauge", "Idle connections in the pool."),
    ("requests_waiting", "gauge", "Requests waiting for a connection now."),
    ("requests_num", "counter", "Connections requested from the pool."),
    ("requests_queued", "counter", "Requests that found no idle connection and queued."),
    ("requests_wait_ms", "counter", "Milliseconds requests spent queued for a connection."),
    ("connections_num", "counter", "Connections the pool opened."),
)
