"""The CI recipe in examples/ci/ works as written (issue: the README's GitHub Actions example
fails a correct service).

The workflows' own gate step, its `run:` script and its environment taken from the YAML, is
run through examples/ci/gate.sh against the reference started by gate.sh as an external
process on a fresh database: a correct service exits 0 with the report folder written and its
summary in the step summary once; the same service with a bug switched on exits 1. Only the
scenario list is shortened (`harness run same-chat-burst bad-input` instead of the whole
catalogue, which takes minutes); every other flag of the step is used as written, and every
flag either workflow passes must be one `harness conformance --help` lists. The staging
workflow's exit-code handling (3 accepted only without the fake provider) is run with a stub
harness.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML, installed with uvicorn[standard]

from tests.refkit import free_ports

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "examples" / "ci"
GATE = CI / "gate.sh"
MAIN_WORKFLOW = CI / "github-actions.yml"
STAGING_WORKFLOW = CI / "staging.yml"
GATE_STEP = "examples/ci/gate.sh harness conformance"


REF_MODULE = "raceharness.reference"
_HARNESS_EXE = Path(sys.executable).with_name("harness")
HARNESS = ([str(_HARNESS_EXE)] if _HARNESS_EXE.exists()
           else [sys.executable, "-m", "raceharness"])
# The run below: two scenarios instead of the catalogue, everything else as the workflow has it.
SHORT_RUN = [*HARNESS, "run", "same-chat-burst", "bad-input"]
FAULT = "stop-ignores-provider"  # deterministic: every same-chat-burst trial stops a winner
GATE_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- reading the workflows ---------------------------------------------------------------------

def load(path: Path) -> dict[Any, Any]:
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(workflow, dict), path
    return workflow


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean true; GitHub reads it as "on".
    on = workflow.get("on", workflow.get(True))
    assert isinstance(on, dict), f"no on: block: {workflow.keys()}"
    return on


def only_job(workflow: dict[Any, Any]) -> dict[str, Any]:
    jobs = workflow["jobs"]
    assert isinstance(jobs, dict) and len(jobs) == 1, jobs
    return next(iter(jobs.values()))  # type: ignore[no-any-return]


def gate_step(job: dict[str, Any]) -> dict[str, Any]:
    steps = [s for s in job["steps"] if GATE_STEP in s.get("run", "")]
    assert len(steps) == 1, f"expected one step running {GATE_STEP!r}"
    return steps[0]  # type: ignore[no-any-return]


def resolve(job: dict[str, Any], step: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The step's environment as the runner would give it: the job's env, then the step's,
    with ${{ secrets.X }} and ${{ env.X }} filled in."""
    job_env = {k: str(v) for k, v in job.get("env", {}).items()}

    def fill(value: Any) -> str:
        text = re.sub(r"\$\{\{\s*secrets\.(\w+)\s*\}\}", lambda m: secrets[m[1]], str(value))
        text = re.sub(r"\$\{\{\s*env\.(\w+)\s*\}\}", lambda m: job_env[m[1]], text)
        assert "${{" not in text, f"unresolved expression in {value!r}"
        return text

    return {**job_env, **{k: fill(v) for k, v in step.get("env", {}).items()}}


def harness_flags() -> set[str]:
    out = subprocess.run([*HARNESS, "conformance", "--help"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out))


# -- running a workflow step through bash ------------------------------------------------------

def run_step(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a `run:` script as GitHub does (bash -e), from the repository root. The script gets
    its own process group; on a timeout the group is sent SIGTERM (gate.sh then stops the
    service it started) before the test fails."""
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=GATE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"the step did not end within {GATE_TIMEOUT_S} s\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITHUB_", "HARNESS_", "REFERENCE_", "PROVIDER_"))}
    env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "step-summary.md")
    return env


@pytest.fixture
def main_step(pg_dsn: str, users: dict[str, str], tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The main workflow's gate step, ready to run here: its script with the short scenario
    list, and its environment with this machine's addresses (free ports, the test database)
    in place of the runner's."""
    job = only_job(load(MAIN_WORKFLOW))
    step = gate_step(job)
    env = resolve(job, step, {"HARNESS_TOKEN": users["alice"],
                              "HARNESS_OTHER_TOKEN": users["bob"]})
    port, provider_port = free_ports(2)
    here = {
        "TARGET_URL": f"http://127.0.0.1:{port}",
        "PROVIDER_LISTEN": f"127.0.0.1:{provider_port}",
        "PROVIDER_BASE_URL": f"http://127.0.0.1:{provider_port}/v1",
        "SERVICE_START_CMD": shlex.join([sys.executable, "-m", REF_MODULE, "--host",
                                         "127.0.0.1", "--port", str(port)]),
        "HARNESS_DSN": pg_dsn, "DATABASE_URL": pg_dsn,
        "REPORT_DIR": str(tmp_path / "conformance-report"),
        "SERVICE_LOG": str(tmp_path / "service.log"),
        "READY_TIMEOUT_S": "30",
    }
    assert set(here) - {"READY_TIMEOUT_S"} <= set(env), "the workflow no longer sets these"
    script = step["run"].replace("harness conformance", shlex.join(SHORT_RUN), 1)
    return script, {**base_env(tmp_path), **env, **here}


# -- the tests ---------------------------------------------------------------------------------

def test_a_correct_service_passes_the_workflows_gate_step(
        main_step: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    script, env = main_step
    result = run_step(script, env)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    report_dir = Path(env["REPORT_DIR"])
    report = json.loads((report_dir / "report.json").read_text())
    assert report["verdict"] == "valid"
    # the evidence the README's example lacked: the database and the provider were observed
    for name in ("race/no-loser-writes", "race/no-loser-provider-call",
                 "race/winner-provider-call", "input/rejected-cleanly"):
        assert report["properties"][name]["verdict"] == "valid", name
    summary = (report_dir / "summary.md").read_text()
    assert summary.strip()
    # the harness appended the summary to the step summary itself, and nothing appended it twice
    assert Path(env["GITHUB_STEP_SUMMARY"]).read_text() == summary
    assert "exit code 0 (all properties valid)" in result.stderr
    assert env["HARNESS_DSN"] not in result.stderr + result.stdout  # gate.sh hid it
    # gate.sh stopped the service it started: nothing listens on its port any more
    port = int(env["TARGET_URL"].rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass


def test_the_same_service_with_a_bug_fails_the_gate_with_exit_1(
        main_step: tuple[str, dict[str, str]]) -> None:
    script, env = main_step
    result = run_step(script, {**env, "REFERENCE_FAULTS": FAULT})
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"
    report = json.loads((Path(env["REPORT_DIR"]) / "report.json").read_text())
    assert report["properties"]["race/winner-stoppable"]["verdict"] == "invalid"
    assert (Path(env["REPORT_DIR"]) / "summary.md").is_file()
    assert "exit code 1" in result.stderr
    assert FAULT in Path(env["SERVICE_LOG"]).read_text()  # the fault was on in that process


def test_a_service_that_dies_at_start_is_unreachable_and_the_harness_never_runs(
        tmp_path: Path) -> None:
    marker = tmp_path / "harness-ran"
    env = {**base_env(tmp_path), "TARGET_URL": f"http://127.0.0.1:{free_port()}",
           "SERVICE_START_CMD": "echo 'cannot bind: boom' >&2; exit 3",
           "SERVICE_LOG": str(tmp_path / "service.log"), "REPORT_DIR": str(tmp_path / "r")}
    result = run_step(f"{shlex.quote(str(GATE))} touch {shlex.quote(str(marker))}", env)
    assert result.returncode == 4, result.stderr
    assert "exited with status 3" in result.stderr and "cannot bind: boom" in result.stderr
    assert not marker.exists()


def test_the_workflows_are_complete_and_keep_secrets_in_secrets() -> None:
    main, staging = load(MAIN_WORKFLOW), load(STAGING_WORKFLOW)
    assert {"push", "pull_request"} <= set(triggers(main))
    assert triggers(staging)
    job = only_job(main)
    assert job["runs-on"] == "ubuntu-latest"
    assert "image" in job["services"]["postgres"]
    step = gate_step(job)
    env = resolve(job, step, {"HARNESS_TOKEN": "t1", "HARNESS_OTHER_TOKEN": "t2"})
    # the service is given the fake provider the harness listens on, and the settings declared
    assert env["PROVIDER_BASE_URL"] == f"http://{env['PROVIDER_LISTEN']}/v1"
    assert f"--port {env['TARGET_URL'].rsplit(':', 1)[1]}" in env["SERVICE_START_CMD"]
    assert env["SERVICE_START_CMD"].startswith(f"python -m {REF_MODULE} "), (
        f"the stand-in is started as `python -m {REF_MODULE}` now")
    assert (env["PROVIDER_READ_TIMEOUT_S"], env["LEASE_S"], env["HEARTBEAT_INTERVAL_S"]) == (
        env["SERVICE_PROVIDER_TIMEOUT_S"], env["SERVICE_LEASE_S"], env["SERVICE_HEARTBEAT_S"])
    for flag, var in (("--provider-listen", "PROVIDER_LISTEN"), ("--dsn", "HARNESS_DSN"),
                      ("--provider-timeout", "SERVICE_PROVIDER_TIMEOUT_S"),
                      ("--lease", "SERVICE_LEASE_S"), ("--heartbeat", "SERVICE_HEARTBEAT_S"),
                      ("--report", "REPORT_DIR"), ("--target", "TARGET_URL")):
        assert f'{flag} "${var}"' in step["run"], flag
    assert "--capability disconnect-stops" in step["run"] and env["AUTONOMOUS_RUNS"] == "false"
    for workflow in (main, staging):
        job = only_job(workflow)
        gate = gate_step(job)
        # long-hold holds a run this long with the provider stream idle; at or over the
        # declared provider read timeout a correct service fails that run (provider timed
        # out) and long-hold reports it invalid: the declared values must leave room
        timeout, lease, heartbeat = (float(job["env"][f"SERVICE_{k}"])
                                     for k in ("PROVIDER_TIMEOUT_S", "LEASE_S", "HEARTBEAT_S"))
        assert max(3 * heartbeat, lease + 2 * heartbeat) < timeout
        assert '--provider-timeout "$SERVICE_PROVIDER_TIMEOUT_S"' in gate["run"]
        for name in ("HARNESS_TOKEN", "HARNESS_OTHER_TOKEN"):
            assert re.fullmatch(r"\$\{\{ secrets\.\w+ \}\}", gate["env"][name]), name
        steps = job["steps"]
        upload = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
        assert len(upload) == 1 and upload[0]["if"] == "always()"
        assert "${{ env.REPORT_DIR }}" in upload[0]["with"]["path"]
        # the harness appends summary.md to the step summary itself: no step does it again
        assert not any("GITHUB_STEP_SUMMARY" in s.get("run", "") for s in steps)
        for s in steps:
            if "run" in s:
                subprocess.run(["bash", "-n", "-c", s["run"]], check=True, timeout=10)
    assert staging["jobs"]["staging"]["env"]["HARNESS_PROVIDER_URL"].startswith("${{ vars.")


def test_every_harness_flag_in_the_workflows_is_one_conformance_accepts() -> None:
    accepted = harness_flags()
    assert {"--target", "--dsn", "--provider-listen", "--report"} <= accepted
    checked = 0
    for path in (MAIN_WORKFLOW, STAGING_WORKFLOW):
        for step in only_job(load(path))["steps"]:
            script = step.get("run", "")
            commands = re.findall(r"(?<![\w/.-])harness\s+([\w-]+)", script)
            if not commands:
                continue
            checked += 1
            # every harness invocation is `harness conformance`; every long flag in the
            # script is the harness's (the scripts run no other command taking long flags)
            assert set(commands) == {"conformance"}, (path.name, commands)
            used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", script))
            assert used, path.name
            assert used <= accepted, f"{path.name}: not conformance flags: {used - accepted}"
    assert checked == 2  # one gate step in each workflow


class _Answer404(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def deployment() -> Iterator[str]:
    """A stand-in for a running deployment: something answering HTTP (404 at /)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer404)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.mark.parametrize(("provider_url", "harness_exit", "step_exit"), [
    ("", 0, 0),
    ("", 3, 0),             # no fake provider: the provider properties are unknown, accepted
    ("http://127.0.0.1:9099/v1", 3, 3),  # the provider was there: unknown is a real gap
    ("", 1, 1),
    ("", 2, 2),
    ("http://127.0.0.1:9099/v1", 4, 4),
])
def test_the_staging_step_accepts_exit_3_only_without_the_fake_provider(
        deployment: str, tmp_path: Path, provider_url: str, harness_exit: int,
        step_exit: int) -> None:
    job = only_job(load(STAGING_WORKFLOW))
    step = gate_step(job)
    stub, args_file = tmp_path / "harness-stub", tmp_path / "args"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(args_file))}'
                    f"\nexit {harness_exit}\n")
    stub.chmod(0o755)
    env = {**base_env(tmp_path),
           **resolve(job, step, {"STAGING_HARNESS_TOKEN": "t1",
                                 "STAGING_HARNESS_OTHER_TOKEN": "t2",
                                 "STAGING_READONLY_DSN": "postgresql://ro@127.0.0.1:1/app"}),
           "TARGET_URL": deployment, "HARNESS_PROVIDER_URL": provider_url,
           "REPORT_DIR": str(tmp_path / "staging-report")}
    script = step["run"].replace("harness conformance", f"{shlex.quote(str(stub))} conformance")
    result = run_step(script, env)
    assert result.returncode == step_exit, f"{result.stdout}\n{result.stderr}"
    args = args_file.read_text().splitlines()
    assert args[:3] == ["conformance", "--target", deployment]
    assert ("--provider-listen" in args) == bool(provider_url)
    if provider_url:
        assert args[args.index("--provider-url") + 1] == provider_url
    assert ("::warning" in result.stdout) == (harness_exit == 3 and step_exit == 0)
    # a harness that stopped before any report leaves a line in the step summary
    summary = Path(env["GITHUB_STEP_SUMMARY"])
    assert summary.read_text().count(f"the harness exited {harness_exit} before") == 1
