"""CPU accounting from /proc for the bench: per process group, deltas, the local postmaster."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

from raceharness.bench.cpu import (
    CpuMeter,
    children,
    cpu_delta,
    local_postmaster_pid,
    process_cpu_s,
    self_cpu_s,
)
from raceharness.bench.figures import loser_cpu


def burn(seconds: float) -> None:
    end = self_cpu_s() + seconds
    while self_cpu_s() < end:
        sum(range(1000))


def test_a_delta_counts_new_processes_from_zero_and_sums_each_group() -> None:
    before = {"reference": {1: 2.0, 2: 1.0}, "harness": {9: 5.0}}
    after = {"reference": {1: 2.5, 3: 0.25}, "harness": {9: 5.5}}  # 2 exited, 3 was born
    assert cpu_delta(before, after) == {"reference": 0.75, "harness": 0.5}


def test_the_meter_reads_this_process_and_a_child() -> None:
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nend = time.process_time() + 0.3\n"
                              "while time.process_time() < end: pass\n"
                              "input()"], stdin=subprocess.PIPE)
    try:
        meter = CpuMeter([child.pid], None)
        first = meter.snapshot()
        assert set(first) == {"reference", "harness"}  # no postmaster given: no postgres
        burn(0.05)
        assert child.pid in children(os.getpid())
        while (process_cpu_s(child.pid) or 0) < 0.3:  # the child burns its 0.3 s
            burn(0.01)
        spent = cpu_delta(first, meter.snapshot())
        assert spent["harness"] >= 0.05
        assert spent["reference"] > 0
    finally:
        child.communicate(b"\n", timeout=30)
    assert process_cpu_s(child.pid) is None  # reaped: gone


def test_the_postmaster_of_a_local_server_is_found_and_its_backends_are_its_children(
        pg_dsn: str) -> None:
    postmaster = local_postmaster_pid(pg_dsn)
    assert postmaster is not None
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] in children(postmaster)
    assert set(CpuMeter([], postmaster).snapshot()) == {"reference", "harness", "postgres"}


def test_loser_cpu_is_the_marginal_cost_per_extra_turn() -> None:
    one = {"reference": 0.1, "postgres": 0.05, "harness": 0.2}      # 10 trials of 1 turn
    burst = {"reference": 0.59, "postgres": 0.345, "harness": 0.69}  # 10 trials of 50 turns
    cpu = loser_cpu(one, burst, k=10, n=50)
    assert cpu["reference"] == 1.0 and cpu["postgres"] == 0.602 and cpu["harness"] == 1.0
    assert cpu["total"] == 2.602
    assert cpu["reference_loop_ms_per_burst"] == 49.0 and cpu["instances"] == 1
    assert loser_cpu(one, burst, k=10, n=50, instances=2)["reference_loop_ms_per_burst"] == 24.5
    assert loser_cpu(burst, one, k=10, n=50)["reference"] == 0.0  # noise never goes negative
