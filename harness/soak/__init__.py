"""``harness soak``: minutes of mixed load against the embedded reference, then the totals.

The embedded stack (Postgres, ``--instances`` reference processes on one database, the fake
provider in the harness) takes ``--concurrency`` closed-loop workers for ``--duration`` seconds.
Each worker picks its next action with a seeded RNG (its first action is fixed, so even a short
soak covers every kind):

- ``burst`` — 5..20 turns on one idle chat, released together (last byte or whole request); the
  provider holds the winner, which then ends by a release, a ``/stop`` or a client disconnect;
- ``distinct`` — 2..6 turns on new chats at once;
- ``stop`` — a held turn stopped through ``/stop`` on a random instance;
- ``disconnect`` — a held turn whose client goes away after the start frame or the first token
  (its hold is never released: ending that run is the service's job);
- ``provider-error`` — a turn whose provider call fails (``error-mid``, ``status-500``,
  ``drop``) or is slow to its first token (``slow-first``);
- ``turn`` — one plain turn on an idle or a new chat.

Half-way through, one instance is killed with SIGKILL while it streams a held run (a crash: its
runs are left to the lease reaper) and started again. Every request is bounded; nothing is
retried. At the end every hold is released and the harness waits (a bounded poll of the
database, three leases at most) until no run is ``pending``/``running``; then it counts, from
the **database** (``ai_chat_runs``) and the fake provider's ledger.

``soak.json`` keys (schema ``soak-v1``; numbers are counts unless named otherwise):

- ``ok`` — both must-be-zero numbers are zero, no burst had more than one winner, nothing
  crashed, not interrupted;
  ``interrupted`` (bool) and ``interrupt_signal``; ``crashes`` (harness errors, instances that
  died by themselves, a failed restart);
- ``must_be_zero`` — ``active_runs_left`` (runs still pending/running after the settle bound)
  and ``untracked_provider_calls`` (provider calls whose ``[race:<nonce>]`` request got no run
  id from its start frame, or whose run id is not in ``ai_chat_runs``);
- ``config`` (duration, seed, instances, concurrency, lease, reproduce line), ``timing_s``
  (``load``, ``settle``, ``total``), ``settle`` (bound, active runs when the load ended);
- ``runs`` — ``started``, ``by_status``, ``ended``, ``reaped`` (aborted with error
  ``lease expired``), ``aborted_by_reason``, ``by_action`` (database status of each action's
  runs), ``unattributed`` (rows no request saw), ``stream_ids_missing`` (run ids a stream
  announced that have no row);
- ``requests`` — ``total``, ``by_outcome``, ``by_action`` (outcomes per action), ``conflicts``
  (409s), ``conflict_latency_ms`` (last byte sent → status line, p50/p99/max), ``bursts``
  (count, sizes, with conflicts, winners; ``more_than_one_winner`` and
  ``no_winner_unexplained`` are findings, ``hit_by_restart`` counts bursts whose winner may
  have died with the killed instance), ``stops``, ``malformed_streams``, ``per_minute``
  (requests, conflicts and runs started in each minute of load: a slowdown shows there);
- ``provider`` — ``calls``, ``by_mode``, ``untracked_calls``, ``untracked_examples``,
  ``repeat_calls`` (calls beyond the first for one request);
- ``restart`` — instance, when it was killed, the victim run, how long the restart took;
- ``service_metrics`` — the reference's own ``/metrics`` counters summed over instances (the
  killed incarnation is scraped just before the kill);
- ``resources`` — peak RSS of the harness (``getrusage``) and of each reference process
  (``VmHWM``, read before it stops); ``machine`` — cores, CPU model, memory, the load averages
  at the start and the end (the machine may be shared), Python.

Exit codes: 0 ok, 1 not ok (a must-be-zero number is non-zero, or something crashed), 2 usage,
4 environment unreachable, 130 interrupted. On SIGINT/SIGTERM no new action starts, the actions
in flight end (each is bounded), every run still active is stopped, and the partial totals are
written with ``"interrupted": true``; a second signal cuts the waiting short.

The modules, by role: ``plan`` (pure: flags, the mix of actions, every bound), ``load`` (what
one request saw, and one action's requests sent together, built by ``trial.context``),
``workers`` (the closed-loop workers and their actions), ``run`` (the I/O: the stack, the
restart, the settle, the signals, the reads at the end), ``totals`` (pure: ``soak.json`` from
the counts), ``render`` (``soak.json``, ``soak.md``, the console) and ``command`` (flags to exit
code). Percentiles are ``core/stats.py`` and the machine and peak memory ``shell/machine.py``,
both shared with ``bench``.
"""

from raceharness.soak.command import run_soak_command
from raceharness.soak.plan import add_arguments

__all__ = ["add_arguments", "run_soak_command"]
