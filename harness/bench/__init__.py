"""``harness bench``: how tight the race is, how often it catches a bug, and how far it scales.

Everything runs against the embedded reference in one process, side by side, so every figure
has its baseline from the same run on the same machine:

- **sync** — per sync mode (``last-byte``, ``naive``; ``h2-single-packet`` when the reference is
  served over HTTP/2) and N: the client release spread (first to last final-byte send) and the
  server-observed arrival spread (the reference stamps each request's arrival on the host's
  monotonic clock; see ``reference/arrival.py``). Medians over trials, and the ratio to naive.
- **detection** — the fraction of single ``harness race`` trials that catch the
  ``no-unique-index`` fault at N=2 (a double-click) and N=50 per sync mode, its 95% Wilson lower
  bound, and the trials needed for 95% confidence of a catch.
- **service** — 409 latency p50/p99 during an N=50 burst (client-observed and the server's own
  time), rejections per second, the winner's time to first frame, and the CPU each loser costs
  the reference, Postgres and the harness (N=50 trials against as many one-turn trials on the
  same service), and the losers' share of the reference's one event loop per burst.
- **wall** — ``harness race --n 50`` as a fresh process (cold: Postgres and reference start
  included) and its race phase alone (the trial; the burst).
- **scale** — a same-chat burst at N=1000 and a burst of 200 chats x 5 turns: wall time, every
  property evaluated, peak RSS of the harness and the server, checker time on the history and
  on a synthetic 100,000-operation history.

Results go to ``DIR/bench.json`` and ``DIR/bench.md`` with the machine (cores, CPU model,
Python, Postgres). The benchmark asserts nothing: bars are compared in the Markdown only.

The modules, by role: ``plan`` (pure: flags, sizes, sections, bars, the trials' scenarios and
bounds), ``figures`` (pure: a trial's timing facts, CPU per loser, a synthetic history),
``run`` (the I/O: the sections, every trial through ``trial.suite.run_trial``), ``cpu`` (CPU
time per process group from ``/proc``), ``render`` (``bench.json`` + ``bench.md``) and
``command`` (flags to exit code). Statistics are ``core/stats.py``, shared with ``soak``; the
machine and peak memory are ``shell/machine.py``.
"""

from raceharness.bench.command import run_bench_command
from raceharness.bench.plan import add_arguments

__all__ = ["add_arguments", "run_bench_command"]
