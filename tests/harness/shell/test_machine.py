"""The machine and peak memory readings shared by `harness bench` and `harness soak`."""

from __future__ import annotations

import os
import subprocess
import sys

from raceharness.shell import machine


def test_the_readings_of_this_machine() -> None:
    model = machine.cpu_model()
    assert model is None or (isinstance(model, str) and model)
    memory = machine.memory_mib()
    assert memory is None or memory > 0
    cores = machine.usable_cores()
    assert cores is None or 1 <= cores <= (os.cpu_count() or cores)
    load = machine.load_average()
    assert load is None or (len(load) == 3 and all(x >= 0 for x in load))


def test_peak_memory_of_this_process_and_of_another_one_until_it_is_gone() -> None:
    assert machine.self_peak_rss_kib() > 0
    mine = machine.peak_rss_kib(os.getpid())
    assert mine is not None and mine > 0
    child = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    try:
        peak = machine.peak_rss_kib(child.pid)
        assert peak is not None and peak > 0
    finally:
        child.communicate(b"\n", timeout=30)
    assert machine.peak_rss_kib(child.pid) is None  # reaped: gone
