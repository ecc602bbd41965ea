"""A nemesis for a deployment the harness did not start (issue 16): the profile's ``[control]``
commands let crash-recovery, the outage scenarios and multi-instance run against a --target.

The reference runs here as ordinary external processes — two instances on one fresh database,
started by a shell script from an env file, the way a deployment's own tooling would — and the
harness reaches them only through the target flags and a profile whose control commands are
shell scripts: ``kill`` by pid file, ``start`` by re-spawning with the same environment, the
database taken away and given back with the embedded stack's own outage functions in a
``python`` command. A correct service passes; with ``no-lease``, ``untracked-on-begin-failure``
and ``stop-local-only`` on in those processes, the scenarios catch each.

A command that fails or hangs ends the run with exit 4, naming it and its output's tail, and
the deployment is healed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raceharness.commands.cli import main
from raceharness.stack.postgres import PostgresCluster
from tests.harness.trial.test_target_trust import External, external
from tests.refkit import free_ports, wait_until_ready

__all__ = ["external"]  # the fixture, shared with test_target_trust (one external reference)

# Short, so the crash scenarios are quick (no-lease is caught after 3 leases + 5 s); the lease
# less a heartbeat (3.5 s) must hold a kill and a restart (about 2 s on 2 busy cores).
LEASE_S, HEARTBEAT_S = 4.0, 0.5
FAULTS = ("no-lease", "untracked-on-begin-failure", "stop-local-only")

START_SH = """\
set -eu
k="$RACEHARNESS_INSTANCE_INDEX"
pidfile="$RUN_DIR/instance-$k.pid"
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
if [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; then
  echo "instance $k already running"; exit 0
fi
set -a; . "$RUN_DIR/instance-$k.env"; set +a
nohup "$PYTHON" -m raceharness.reference --host 127.0.0.1 --port "$PORT" \\
  >>"$RUN_DIR/instance-$k.log" 2>&1 </dev/null &
echo $! >"$pidfile"
echo "instance $k started (pid $!)"
"""

KILL_SH = """\
set -eu
k="$RACEHARNESS_INSTANCE_INDEX"
pidfile="$RUN_DIR/instance-$k.pid"
[ -f "$pidfile" ] || { echo "instance $k: no pid file"; exit 1; }
pid=$(cat "$pidfile")
kill -KILL "$pid" 2>/dev/null || true
i=0
while [ -e "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
do
  i=$((i + 1)); [ "$i" -le 200 ] || { echo "instance $k (pid $pid) still alive"; exit 1; }
  sleep 0.05
done
rm -f "$pidfile"
echo "instance $k (pid $pid) killed"
"""

# The embedded stack's outage (stack/embedded.py database_down/database_up), in plain psycopg
# (importing the harness would double the command's time): connections to the service's
# database refused, and every backend on it terminated.
DB_PY = """\
import os, sys, time
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

admin, service = os.environ["RH_TEST_ADMIN_DSN"], os.environ["SERVICE_DSN"]
name = conninfo_to_dict(service)["dbname"]
action = sys.argv[1]
if action in ("down", "up"):
    allow = sql.Literal(action == "up")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), allow))
        deadline = time.monotonic() + 10
        while action == "down":
            pids = [pid for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = "
                "'client backend' AND pid <> pg_backend_pid()", (name,))]
            if not pids:
                break
            assert time.monotonic() < deadline, f"{len(pids)} backends left"
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
else:
    query = ("ALTER TABLE ai_chat_runs ADD CONSTRAINT harness_outage CHECK (false) NOT VALID"
             if action == "reject" else
             "ALTER TABLE ai_chat_runs DROP CONSTRAINT IF EXISTS harness_outage")
    with psycopg.connect(service, autocommit=True) as conn:
        conn.execute(query)
print(action, name)
"""


@dataclass
class Deployment:
    urls: list[str]
    folder: Path
    profile: Path
    external: External  # instance 0 as --target, the tokens, the provider port, the DSN

    def flags(self) -> list[str]:
        return [*self.external.flags(), "--profile", str(self.profile), "--lease",
                f"{LEASE_S:g}", "--heartbeat", f"{HEARTBEAT_S:g}"]


class _PidFile:
    """What refkit.wait_until_ready polls: ``poll()`` is None while the process lives."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def poll(self) -> int | None:
        pid = self.path.read_text().strip() if self.path.exists() else ""
        return None if pid and Path(f"/proc/{pid}").exists() else 1


def _deployment(cluster: PostgresCluster, dsn: str, users: dict[str, str], folder: Path,
                monkeypatch: pytest.MonkeyPatch, faults: tuple[str, ...] = ()
                ) -> Iterator[Deployment]:
    provider_port, *ports = free_ports(3)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    for k, port in enumerate(ports):
        env = {"DATABASE_URL": dsn, "PROVIDER_API_KEY": "sk-external",
               "PROVIDER_BASE_URL": f"http://127.0.0.1:{provider_port}/v1",
               "LEASE_S": str(LEASE_S), "HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
               "REAPER_INTERVAL_S": "0.5", "AUTONOMOUS_RUNS": "false", "POOL_TIMEOUT_S": "2",
               "POOL_MIN_SIZE": "1", "APPLY_SCHEMA": "false",  # a quicker start
               "INSTANCE_ID": f"external-{k}", "REFERENCE_FAULTS": ",".join(faults),
               "PORT": str(port)}
        (folder / f"instance-{k}.env").write_text(
            "".join(f"{name}={shlex.quote(value)}\n" for name, value in env.items()))
    (folder / "start.sh").write_text(START_SH)
    (folder / "kill.sh").write_text(KILL_SH)
    (folder / "db.py").write_text(DB_PY)
    python = shlex.quote(sys.executable)
    profile = folder / "profile.toml"
    profile.write_text(f"""\
[control]
instances = {json.dumps(urls)}
timeout_s = 20
kill = "sh ./kill.sh"
start = "sh ./start.sh"
db_down = "{python} ./db.py down"
db_up = "{python} ./db.py up"
reject_run_inserts = "{python} ./db.py reject"
accept_run_inserts = "{python} ./db.py accept"
pass_env = ["RH_TEST_ADMIN_DSN"]

[control.env]
RUN_DIR = {json.dumps(str(folder))}
PYTHON = {json.dumps(sys.executable)}
SERVICE_DSN = {json.dumps(dsn)}
""")
    monkeypatch.setenv("RH_TEST_ADMIN_DSN", cluster.dsn)  # passed through, not in the file
    base = {"PATH": os.environ["PATH"], "RUN_DIR": str(folder), "PYTHON": sys.executable}
    try:
        for k in range(len(urls)):  # started as the harness's `start` would start them
            subprocess.run(["sh", "./start.sh"], cwd=folder, check=True, capture_output=True,
                           env={**base, "RACEHARNESS_INSTANCE_INDEX": str(k)}, timeout=20)
        for k, url in enumerate(urls):
            wait_until_ready(url, _PidFile(folder / f"instance-{k}.pid"),
                             folder / f"instance-{k}.log")
        yield Deployment(urls, folder, profile, External(
            urls[0], users["alice"], users["bob"], provider_port, dsn,
            folder / "instance-0.log"))
    finally:
        for k in range(len(urls)):
            _stop(folder / f"instance-{k}.pid")


def _stop(pidfile: Path) -> None:
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            if "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                break
            time.sleep(0.05)  # another process's exit: nothing to await
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, FileNotFoundError):
        pass


@pytest.fixture
def deployment(pg_cluster: PostgresCluster, pg_dsn: str, users: dict[str, str],
               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    yield from _deployment(pg_cluster, pg_dsn, users, tmp_path, monkeypatch)


@pytest.fixture
def faulty_deployment(pg_cluster: PostgresCluster, pg_dsn: str, users: dict[str, str],
                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    yield from _deployment(pg_cluster, pg_dsn, users, tmp_path, monkeypatch, FAULTS)


SCENARIOS = ["crash-recovery", "db-outage", "db-outage-mid-race", "db-outage-mid-stream",
             "multi-instance"]


def _by_scenario(report: dict) -> dict[str, dict[str, str]]:  # type: ignore[type-arg]
    return {trial["scenario"]: {p: v["verdict"] for p, v in trial["properties"].items()}
            for trial in report["trials"]}


def test_a_correct_deployment_passes_the_control_scenarios_through_its_commands(
        deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Crash, outages and several instances, each run by the profile's commands only."""
    report_dir = tmp_path / "report"
    code = main(["run", *SCENARIOS, *deployment.flags(), "--trials", "1", "--json",
                 "--report", str(report_dir)])
    report = json.loads(capsys.readouterr().out)
    scenarios = report["scenarios"]
    # holding turns inside the gate is the embedded stack's alone: said, not passed
    assert "write transaction" in scenarios["db-outage-mid-race"]["skipped"]
    assert {name: s["verdict"] for name, s in scenarios.items()} == {
        **{name: "valid" for name in SCENARIOS}, "db-outage-mid-race": "skipped"}, \
        _by_scenario(report)
    assert code == 0
    # the exact outage of db-outage (run inserts refused) ran, and every command has its log
    logs = sorted(p.relative_to(report_dir / "control").as_posix()
                  for p in (report_dir / "control").rglob("*.log"))
    assert logs == ["crash-recovery/01-kill-0.log", "crash-recovery/02-start-0.log",
                    "db-outage-mid-stream/01-db_down.log", "db-outage-mid-stream/02-db_up.log",
                    "db-outage/01-reject_run_inserts.log",
                    "db-outage/02-accept_run_inserts.log"]
    assert "killed" in (report_dir / "control/crash-recovery/01-kill-0.log").read_text()
    history = [json.loads(line) for line in (report_dir / "history.jsonl").open()]
    assert any(line.get("outage") == "run-inserts-rejected" for line in history)
    restart = next(line["value"] for line in history
                   if line.get("f") == "restart" and line.get("type") == "ok")
    assert restart["since_kill_ms"] < restart["lease_window_ms"]


def test_the_faults_are_caught_on_a_deployment_through_its_commands(
        faulty_deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    """no-lease, untracked-on-begin-failure and stop-local-only on in the processes: each
    caught by its scenario (conformance §4) against the --target."""
    code = main(["run", "crash-recovery", "db-outage", "multi-instance",
                 *faulty_deployment.flags(), "--trials", "1", "--json", "--report",
                 str(faulty_deployment.folder / "report")])
    report = json.loads(capsys.readouterr().out)
    verdicts = _by_scenario(report)
    assert verdicts["crash-recovery"]["recovery/lease-reclaims"] == "invalid", verdicts
    assert verdicts["db-outage"]["outage/fails-closed"] == "invalid", verdicts
    assert verdicts["multi-instance"]["race/winner-stoppable"] == "invalid", verdicts
    assert code == 1


def _profile(folder: Path, control: str) -> Path:
    path = folder / "profile.toml"
    path.write_text("[control]\n" + control)
    return path


def test_a_failing_command_ends_the_run_with_exit_4_naming_it_and_the_deployment_healed(
        external: External, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``kill`` exits non-zero: exit 4 naming control.kill with its output's tail, no verdict,
    and ``start`` was run for the instance it may have killed."""
    healed = tmp_path / "healed"
    profile = _profile(tmp_path, f"""\
kill = "echo stopping chat-api; echo 'Failed to kill unit chat-api: Access denied' >&2; exit 5"
start = "echo started $RACEHARNESS_INSTANCE_INDEX >> {healed}"
""")
    code = main(["run", "crash-recovery", *external.flags(), "--profile", str(profile),
                 "--lease", "3", "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 4, err
    assert f"control.kill (instance 0, {external.url}) exited with status 5" in err
    assert "stopping chat-api\nFailed to kill unit chat-api: Access denied" in err
    assert healed.read_text() == "started 0\n"
    assert "invalid" not in err
    log = (tmp_path / "report/control/crash-recovery/01-kill-0.log").read_text()
    assert "Access denied" in log and "echo" not in log  # the output, never the command


def test_a_hanging_command_is_killed_at_its_timeout_and_the_database_given_back(
        external: External, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``db_down`` outlasts its 1 s timeout: its process group is killed, the run ends with
    exit 4 naming control.db_down and its output, and ``db_up`` was run."""
    healed, child = tmp_path / "healed", tmp_path / "child.pid"
    profile = _profile(tmp_path, f"""\
db_down = {{ run = "echo taking the database away; sleep 30 & echo $! > {child}; wait", \
timeout_s = 1 }}
db_up = "echo up >> {healed}"
""")
    code = main(["run", "db-outage-mid-stream", *external.flags(), "--profile", str(profile),
                 "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "control.db_down did not finish within 1 s" in err
    assert "taking the database away" in err
    assert healed.read_text() == "up\n"
    stat = Path(f"/proc/{child.read_text().strip()}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # the sleep was killed


def test_a_restart_slower_than_the_lease_sends_no_turn_and_says_unknown(
        external: External, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """The turn after the restart must reach the service inside the dead owner's lease: a
    2.5 s restart with a 3 s lease and a 1 s heartbeat is too slow, so the turn is not sent and
    recovery/lease-reclaims is unknown, never a false invalid."""
    scenario = tmp_path / "slow-restart.toml"
    scenario.write_text("""\
name = "slow-restart"
summary = "crash-recovery's first half, with a restart slower than the lease"
n = 1
lease_s = 3
requires = ["service-control", "provider"]
properties = ["recovery/lease-reclaims"]
steps = [{ do = "new-chat" }, { do = "burst", provider = "hold" }, { do = "kill-owner" },
         { do = "restart-service" }]
""")
    profile = _profile(tmp_path, 'kill = "true"\nstart = "sleep 2.5"\n')
    code = main(["run", str(scenario), *external.flags(), "--profile", str(profile),
                 "--lease", "3", "--heartbeat", "1", "--json", "--report",
                 str(tmp_path / "report")])
    report = json.loads(capsys.readouterr().out)
    assert report["properties"]["recovery/lease-reclaims"]["unknown"] == 1
    assert code == 3
    assert "past the dead owner's lease minus a heartbeat (2.0 s)" in caplog.text
