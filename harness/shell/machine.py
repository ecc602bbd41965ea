"""The machine a measurement ran on, and peak memory, for ``harness bench`` and ``harness soak``.

Readings come from ``/proc`` and ``getrusage`` (Linux); a reading the system does not give is
None, never an error. Peak memory is the high-water mark of resident memory in KiB: ``ru_maxrss``
for this process, ``VmHWM`` for another one (read it before the process ends).
"""

from __future__ import annotations

import os
import resource


def cpu_model() -> str | None:
    """The ``model name`` of the first CPU in ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def memory_mib() -> int | None:
    """``MemTotal`` in MiB."""
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable_cores() -> int | None:
    """The cores this process may run on (its CPU affinity), which a container can narrow."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (the machine may be shared)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def self_peak_rss_kib() -> int:
    """This process's peak resident memory (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib(pid: int) -> int | None:
    """Another process's peak resident memory (``VmHWM``), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
