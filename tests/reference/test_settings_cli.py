"""Settings from the environment, the ``harness`` and ``python -m raceharness.reference`` command
lines, and ``harness serve-reference`` end to end as a subprocess."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from raceharness.commands.cli import main as harness_main
from raceharness.reference.faults import VALID_FAULTS, Fault
from raceharness.reference.server import main as reference_main
from raceharness.reference.settings import Settings, SettingsError, env_var
from raceharness.stack.postgres import PostgresCluster
from tests.refkit import parse_sse, turn_body

DSN = "postgresql://app:pg-pass-SECRET-31@db.internal:5432/chat"
ROOT = Path(__file__).resolve().parents[2]

# -- Settings.from_env ----------------------------------------------------------------------------

EVERY_VARIABLE = {
    "DATABASE_URL": DSN,
    "PROVIDER_BASE_URL": "https://llm.example/v1",
    "PROVIDER_API_KEY": "sk-SECRET-key-9c1e",
    "PROVIDER_MODEL": "gpt-test",
    "PROVIDER_CONNECT_TIMEOUT_S": "1.5",
    "PROVIDER_READ_TIMEOUT_S": " 45 ",
    "AUTONOMOUS_RUNS": "Yes",
    "HEARTBEAT_INTERVAL_S": "2",
    "LEASE_S": "12.5",
    "REAPER_INTERVAL_S": "3",
    "SSE_PING_INTERVAL_S": "7",
    "STOP_NOTIFY": "off",
    "STOP_WAIT_S": "4",
    "INSTANCE_ID": "box-7",
    "REFERENCE_FAULTS": "no-lease, blanket-500,",
    "MAX_BODY_BYTES": "2048",
    "POOL_MIN_SIZE": "3",
    "POOL_MAX_SIZE": "9",
    "POOL_TIMEOUT_S": "2.5",
    "POOL_RECONNECT_TIMEOUT_S": "6",
    "SETTLE_RETRY_S": "90",
    "REFERENCE_PARENT_PID": "4242",
    "APPLY_SCHEMA": "0",
    "PROVIDER_HISTORY_MESSAGES": "12",
    "DATABASE_POOLER": " Transaction ",
    "LISTEN_DSN": "postgresql://app:pg-pass-SECRET-31@db-direct.internal:5432/chat",
}


def test_from_env_parses_every_variable() -> None:
    assert Settings.from_env(EVERY_VARIABLE) == Settings(
        database_url=DSN, provider_base_url="https://llm.example/v1",
        provider_api_key="sk-SECRET-key-9c1e", provider_model="gpt-test",
        provider_connect_timeout_s=1.5, provider_read_timeout_s=45.0, autonomous_runs=True,
        heartbeat_interval_s=2.0, lease_s=12.5, reaper_interval_s=3.0, sse_ping_interval_s=7.0,
        stop_notify=False, stop_wait_s=4.0, instance_id="box-7",
        faults=frozenset({Fault.NO_LEASE, Fault.BLANKET_500}), max_body_bytes=2048,
        pool_min_size=3, pool_max_size=9, pool_timeout_s=2.5, pool_reconnect_timeout_s=6.0,
        settle_retry_s=90.0, parent_pid=4242, apply_schema=False, provider_history_messages=12,
        database_pooler="transaction",
        listen_dsn="postgresql://app:pg-pass-SECRET-31@db-direct.internal:5432/chat")


def test_every_setting_has_a_variable_in_the_test() -> None:
    """A new setting must come with its variable here (so the test above covers it)."""
    names = {env_var(f.name) for f in dataclasses.fields(Settings)}
    assert names == set(EVERY_VARIABLE)


def test_the_readme_documents_every_variable() -> None:
    """The README's table of the reference's variables names each one (APPLY_SCHEMA and
    MAX_BODY_BYTES were once missing from it)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Running the reference on its own", 1)[1].split("\n## ", 1)[0]
    missing = sorted(v for v in EVERY_VARIABLE if f"`{v}`" not in section)
    assert missing == []


def test_from_env_defaults_and_overrides() -> None:
    settings = Settings.from_env({"DATABASE_URL": DSN, "LEASE_S": "50"}, lease_s=40.0,
                                 instance_id="i-1")
    assert settings == Settings(database_url=DSN, lease_s=40.0, instance_id="i-1")
    assert (settings.autonomous_runs, settings.heartbeat_interval_s, settings.max_body_bytes,
            settings.faults, settings.provider_history_messages) == (
        False, 5.0, 1024 * 1024, frozenset(), 50)


@pytest.mark.parametrize("raw,expected", [
    ("1", True), ("true", True), (" TRUE ", True), ("yes", True), ("On", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False),
])
def test_boolean_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"DATABASE_URL": DSN, "AUTONOMOUS_RUNS": raw}).autonomous_runs is (
        expected)


@pytest.mark.parametrize("env,message", [
    ({"HEARTBEAT_INTERVAL_S": "abc"}, "HEARTBEAT_INTERVAL_S: expected a number, got 'abc'"),
    ({"AUTONOMOUS_RUNS": "maybe"}, "AUTONOMOUS_RUNS: expected true/false, got 'maybe'"),
    ({"STOP_NOTIFY": "2"}, "STOP_NOTIFY: expected true/false, got '2'"),
    ({"POOL_MAX_SIZE": "ten"}, "POOL_MAX_SIZE: expected an integer, got 'ten'"),
    ({"MAX_BODY_BYTES": "1.5"}, "MAX_BODY_BYTES: expected an integer, got '1.5'"),
    ({"LEASE_S": "5", "HEARTBEAT_INTERVAL_S": "5"},
     "LEASE_S: must exceed HEARTBEAT_INTERVAL_S (5.0), got 5.0; a live run would be reaped "
     "between heartbeats"),
    ({"LEASE_S": "4", "HEARTBEAT_INTERVAL_S": "5"},
     "LEASE_S: must exceed HEARTBEAT_INTERVAL_S (5.0), got 4.0; a live run would be reaped "
     "between heartbeats"),
    ({"LEASE_S": "-1"}, "LEASE_S: must be > 0, got -1.0"),
    ({"STOP_WAIT_S": "0"}, "STOP_WAIT_S: must be > 0, got 0.0"),
    ({"HEARTBEAT_INTERVAL_S": "nan"}, "HEARTBEAT_INTERVAL_S: must be > 0, got nan"),
    ({"POOL_MIN_SIZE": "0"}, "POOL_MIN_SIZE/POOL_MAX_SIZE: need 1 <= min <= max, got 0/40"),
    ({"POOL_MIN_SIZE": "8", "POOL_MAX_SIZE": "4"},
     "POOL_MIN_SIZE/POOL_MAX_SIZE: need 1 <= min <= max, got 8/4"),
    ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES: must be > 0, got 0"),
    ({"MAX_BODY_BYTES": "-1"}, "MAX_BODY_BYTES: must be > 0, got -1"),
    ({"PROVIDER_HISTORY_MESSAGES": "0"},
     "PROVIDER_HISTORY_MESSAGES: must be > 0 (the new user message is always sent), got 0"),
    ({"PROVIDER_HISTORY_MESSAGES": "-3"},
     "PROVIDER_HISTORY_MESSAGES: must be > 0 (the new user message is always sent), got -3"),
    ({"PROVIDER_HISTORY_MESSAGES": "many"},
     "PROVIDER_HISTORY_MESSAGES: expected an integer, got 'many'"),
    ({"PROVIDER_BASE_URL": "ftp://llm.example/v1"},
     "PROVIDER_BASE_URL: must be an http(s) URL, got scheme 'ftp'"),
    ({"PROVIDER_BASE_URL": "llm.example/v1"},
     "PROVIDER_BASE_URL: must be an http(s) URL, got scheme 'none'"),
    ({"REFERENCE_FAULTS": "no-lease,bogus-fault"},
     f"REFERENCE_FAULTS: unknown fault 'bogus-fault'; valid faults: {', '.join(VALID_FAULTS)}"),
    ({"DATABASE_URL": ""}, "DATABASE_URL: required (a libpq DSN), got an empty value"),
    ({"DATABASE_POOLER": "session"},
     "DATABASE_POOLER: expected one of none, transaction, got 'session'"),
    ({"DATABASE_POOLER": "transaction"},
     "LISTEN_DSN: required with DATABASE_POOLER=transaction and STOP_NOTIFY=true (LISTEN "
     "needs a session connection to Postgres itself, past the pooler); or set "
     "STOP_NOTIFY=false and a stop received by another instance arrives with the heartbeat "
     "poll (HEARTBEAT_INTERVAL_S), got an empty value"),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_bad_values_raise_naming_the_variable_and_value(env: dict[str, str],
                                                        message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"DATABASE_URL": DSN, **env})
    assert str(info.value) == message


def test_missing_database_url_is_an_error() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"LEASE_S": "30"})
    assert str(info.value) == "DATABASE_URL: required (a libpq DSN), not set"


def test_repr_never_shows_the_provider_key_or_the_dsn_password() -> None:
    settings = Settings.from_env(EVERY_VARIABLE)
    for text in (repr(settings), str(settings), f"{settings}"):
        assert "sk-SECRET-key-9c1e" not in text
        assert "pg-pass-SECRET-31" not in text
        assert "provider_model='gpt-test'" in text  # the rest is still shown


# -- python -m raceharness.reference -------------------------------------------------------------

def test_reference_main_rejects_an_unknown_fault_with_exit_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", DSN)
    monkeypatch.delenv("REFERENCE_FAULTS", raising=False)
    assert reference_main(["--fault", "no-lease", "--fault", "not-a-fault"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: unknown fault 'not-a-fault'; valid faults: "
                   f"{', '.join(VALID_FAULTS)}\n")


def test_reference_main_rejects_a_bad_environment_with_exit_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", DSN)
    monkeypatch.setenv("HEARTBEAT_INTERVAL_S", "abc")
    assert reference_main([]) == 2
    err = capsys.readouterr().err
    assert err == "error: HEARTBEAT_INTERVAL_S: expected a number, got 'abc'\n"
    assert "pg-pass-SECRET-31" not in err


def test_reference_main_without_database_url_exits_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert reference_main([]) == 2
    assert capsys.readouterr().err == "error: DATABASE_URL: required (a libpq DSN), not set\n"


def test_reference_with_an_unreachable_database_exits_4_with_one_line() -> None:
    """As a user runs it: a DSN aimed at a port nothing listens on is one line naming host,
    port and database (never the password), exit 4, and no traceback."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REFERENCE_TOKENS",)}
    env["DATABASE_URL"] = f"postgresql://app:pg-pass-SECRET-31@127.0.0.1:{port}/chat"
    proc = subprocess.run([sys.executable, "-m", "raceharness.reference", "--port",
                           str(free_port())], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: cannot reach the database at 127.0.0.1:{port}/chat (DATABASE_URL): "
        "Connection refused"]
    assert "pg-pass-SECRET-31" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_reference_with_a_dsn_libpq_cannot_parse_exits_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", "host=db.internal password pg-pass-SECRET-31")
    monkeypatch.delenv("REFERENCE_TOKENS", raising=False)
    assert reference_main([]) == 2
    err = capsys.readouterr().err
    assert err == "error: DATABASE_URL: not a valid libpq connection string\n"


def test_reference_help_documents_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        reference_main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("Exit codes: 0 stopped cleanly, 2 a bad flag or setting, 4 the database at "
            "DATABASE_URL unreachable at start-up") in out


# -- harness command line --------------------------------------------------------------------------

SERVE_FLAGS = ("--port", "--token", "--dsn", "--fault", "--provider-url", "--autonomous-runs",
               "--lease-s", "--heartbeat-s", "--host")


def run_harness(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``harness ARGV`` in process: (exit code, stdout, stderr)."""
    try:
        code = harness_main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out = capsys.readouterr()
    return code, out.out, out.err


def test_harness_help_via_the_installed_entry_point() -> None:
    exe = Path(sys.executable).with_name("harness")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "raceharness"]
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=30,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: harness")
    assert "serve-reference" in proc.stdout
    assert ("Exit codes: 0 valid, 1 invalid, 2 usage error, 3 inconclusive, 4 unreachable, "
            "130 interrupted.") in " ".join(proc.stdout.split())


def test_serve_reference_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_harness(["serve-reference", "--help"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("usage: harness serve-reference")
    options = set(re.findall(r"(--[a-z][a-z-]+)", out))
    assert set(SERVE_FLAGS) <= options
    flat = " ".join(out.split())
    for fault in VALID_FAULTS:  # every fault is named (argparse may wrap at its hyphens)
        assert fault in flat.replace("- ", "-")


@pytest.mark.parametrize("value,detail", [
    ("abc", "expected an integer, got 'abc'"),
    ("0", "expected 1-65535, got 0"),
    ("70000", "expected 1-65535, got 70000"),
])
def test_serve_reference_bad_port_exits_2_naming_it(capsys: pytest.CaptureFixture[str],
                                                    value: str, detail: str) -> None:
    code, out, err = run_harness(["serve-reference", "--port", value], capsys)
    assert code == 2 and out == ""
    assert "argument --port" in err and detail in err


@pytest.mark.parametrize("argv,needle", [
    (["--fault", "bogus-fault"], "argument --fault: unknown fault 'bogus-fault'"),
    (["--lease-s", "-1"], "argument --lease-s: expected a number > 0, got '-1'"),
    (["--heartbeat-s", "x"], "argument --heartbeat-s: expected a number, got 'x'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_serve_reference_bad_flags_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                          needle: str) -> None:
    code, out, err = run_harness(["serve-reference", *argv], capsys)
    assert code == 2 and out == ""
    assert needle in err


def test_serve_reference_lease_not_above_heartbeat_exits_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_harness(["serve-reference", "--lease-s", "1", "--heartbeat-s", "5"],
                                 capsys)
    assert (code, out) == (2, "")
    assert err == "harness: --lease-s (1.0) must exceed --heartbeat-s (5.0)\n"


def test_harness_without_a_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_harness([], capsys)
    assert code == 2 and out == ""
    assert "required: COMMAND" in err


# -- harness serve-reference end to end ------------------------------------------------------

SERVE_TOKEN = "tok-serve-e2e-SECRET-4d7b"


class LineReader:
    """Reads a subprocess's merged output line by line in a thread; ``wait_for`` is bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self._stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n"
                                     + "".join(self.lines))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"output ended before {pattern!r}:\n" + "".join(self.lines))
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match

    def rest(self, timeout: float) -> str:
        self._thread.join(timeout)
        while (line := self._queue.get_nowait() if not self._queue.empty() else None) is not None:
            self.lines.append(line)
        return "".join(self.lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postmaster_of(port: int) -> tuple[Path, int] | None:
    """The ephemeral cluster dir (/tmp/rh-pg-*) and postmaster pid serving ``port``."""
    for pidfile in Path("/tmp").glob("rh-pg-*/data/postmaster.pid"):
        try:
            lines = pidfile.read_text().splitlines()
        except OSError:
            continue
        if len(lines) > 3 and lines[3].strip() == str(port):
            return pidfile.parent.parent, int(lines[0])
    return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def double_submit(url: str) -> tuple[list[tuple[int, Any]], str]:
    """One turn to make a chat, then two simultaneous turns on it: [(status, body)], chat id."""
    headers = {"authorization": f"Bearer {SERVE_TOKEN}"}
    async with httpx.AsyncClient(base_url=url + "/api/ai-chat", timeout=20,
                                 headers=headers) as client:
        first = await client.post("/stream", json=turn_body("first"))
        assert first.status_code == 200, first.text
        frames = parse_sse(first.text)
        assert frames[-2:] == [{"type": "finish"}, "[DONE]"]
        chat_id = frames[0]["messageMetadata"]["chatId"]

        async def turn(text: str) -> tuple[int, Any]:
            resp = await client.post("/stream", json=turn_body(text, chat_id))
            return resp.status_code, (parse_sse(resp.text) if resp.status_code == 200
                                      else resp.json())

        async with asyncio.timeout(20):
            results = list(await asyncio.gather(turn("racer-a"), turn("racer-b")))
    return results, chat_id


def test_serve_reference_end_to_end(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_TOKEN", "HARNESS_DSN", "HARNESS_PG_DSN")}
    argv = [sys.executable, "-m", "raceharness", "serve-reference", "--port", str(free_port()),
            "--token", SERVE_TOKEN]
    own_cluster = pg_cluster.source != "dsn"
    if not own_cluster:  # no local binaries: give it a database of the suite's server
        argv += ["--dsn", pg_cluster.create_database(f"serve_{tmp_path.name[-12:]}".lower())]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"})
    reader = LineReader(proc)
    try:
        postmaster = None
        if own_cluster:
            pg_port = int(reader.wait_for(
                r"Postgres from \S+ ready at postgresql://\S+@127\.0\.0\.1:(\d+)/", 60).group(1))
            postmaster = postmaster_of(pg_port)
            assert postmaster is not None and alive(postmaster[1])
        url = reader.wait_for(r"reference server: (http://127\.0\.0\.1:\d+)\s", 60).group(1)
        results, chat_id = asyncio.run(double_submit(url))
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    output = reader.rest(timeout=10)

    assert sorted(status for status, _ in results) == [200, 409]
    winner = next(body for status, body in results if status == 200)
    loser = next(body for status, body in results if status == 409)
    run_id = winner[0]["messageMetadata"]["runId"]
    assert winner[0]["messageMetadata"]["chatId"] == chat_id
    assert winner[-2:] == [{"type": "finish"}, "[DONE]"]
    assert loser == {"statusCode": 409,
                     "message": "An agent run is already in progress for this chat",
                     "code": "A_RUN_ALREADY_ACTIVE", "activeRunId": run_id}
    assert code == 0, output
    assert "stopped; everything it started is gone." in output
    assert SERVE_TOKEN not in output
    assert "(generated" not in output and "the generated token" not in output
    # the hint reads the variable the harness reads, and says how to set it
    assert 'curl -N -H "Authorization: Bearer $HARNESS_TOKEN" ' in output
    assert "set HARNESS_TOKEN to the token given with --token (not printed)" in output
    assert not re.search(r"\$TOKEN\b", output)
    if postmaster is not None:
        cluster_dir, pid = postmaster
        assert not alive(pid), output
        assert not cluster_dir.exists(), output
