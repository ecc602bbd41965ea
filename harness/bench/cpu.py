"""CPU time spent by the parts of an embedded stack, from ``/proc`` (Linux).

The bench uses it to say where a burst's time goes on a small machine: the reference
processes, the Postgres server (every child of the postmaster: backends and background
processes) and the harness itself (with its in-process fake provider and database observer).
Readings are process CPU (user + system) in seconds; a process that exits between two
snapshots loses its share (the bench's processes live through a section)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from pathlib import Path

import psycopg

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

Snapshot = dict[str, dict[int, float]]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # the command name may hold spaces


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads), None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICKS


def children(ppid: int) -> list[int]:
    """The live processes whose parent is ``ppid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == ppid:
                found.append(int(entry))
    return found


def local_postmaster_pid(dsn: str) -> int | None:
    """The postmaster of the server behind ``dsn`` when it runs on this machine: the parent
    of the backend serving a connection (checked to be a ``postgres`` process); None when the
    server is elsewhere or cannot be told apart."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        host = conn.info.host
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        # read while the backend lives: once the connection closes it exits, and its /proc
        # entry with it (a race a loaded machine lost, leaving Postgres out of the CPU figures)
        fields = None if row is None else _stat_fields(int(row[0]))
    if row is None or not (host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")):
        return None
    if fields is None:
        return None
    ppid = int(fields[1])
    try:
        comm = Path(f"/proc/{ppid}/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return ppid if comm in ("postgres", "postmaster") else None


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Snapshots of the CPU used so far by each group of processes."""

    def __init__(self, reference_pids: Iterable[int], postmaster_pid: int | None) -> None:
        self.reference_pids = list(reference_pids)
        self.postmaster_pid = postmaster_pid

    def snapshot(self) -> Snapshot:
        groups: Snapshot = {"reference": self._read(self.reference_pids),
                            "harness": {os.getpid(): self_cpu_s()}}
        if self.postmaster_pid is not None:
            groups["postgres"] = self._read([self.postmaster_pid,
                                             *children(self.postmaster_pid)])
        return groups

    @staticmethod
    def _read(pids: Iterable[int]) -> dict[int, float]:
        readings = {pid: process_cpu_s(pid) for pid in pids}
        return {pid: cpu for pid, cpu in readings.items() if cpu is not None}


def cpu_delta(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each group used between two snapshots (a process born in between counts
    from zero)."""
    return {group: sum(cpu - before.get(group, {}).get(pid, 0.0) for pid, cpu in pids.items())
            for group, pids in after.items()}
