"""Verdicts on a deployment the harness was never tuned to (issue: trust on --target).

The reference is started here as an ordinary external process with settings the embedded
stack never uses (a 300 s provider read timeout, a short lease), and the harness sees it only
through the target flags. A correct service must never fail the catalogue (exit 0, or 3 with
every skip named); a mis-set harness must say what is wrong in one line, with the exit code of
conformance.md §5, before any verdict.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from raceharness.commands.cli import main
from tests.refkit import free_ports, wait_until_ready

LEASE_S, HEARTBEAT_S = 3.0, 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class External:
    url: str
    token: str
    other_token: str
    provider_port: int
    dsn: str
    log: Path

    def flags(self, *, provider: bool = True, dsn: bool = True) -> list[str]:
        flags = ["--target", self.url, "--token", self.token, "--other-token",
                 self.other_token, "--capability", "disconnect-stops"]
        if provider:
            flags += ["--provider-listen", f"127.0.0.1:{self.provider_port}"]
        if dsn:
            flags += ["--dsn", self.dsn]
        return flags


@pytest.fixture
def external(pg_dsn: str, users: dict[str, str], tmp_path: Path) -> Iterator[External]:
    yield from _external(pg_dsn, users, tmp_path, provider_timeout_s=300)


@pytest.fixture
def external_quick_timeout(pg_dsn: str, users: dict[str, str], tmp_path: Path
                           ) -> Iterator[External]:
    """The same service with a provider read timeout shorter than long-hold's hold."""
    yield from _external(pg_dsn, users, tmp_path, provider_timeout_s=1)


def _external(pg_dsn: str, users: dict[str, str], tmp_path: Path, *,
              provider_timeout_s: float) -> Iterator[External]:
    port, provider_port = free_ports(2)
    env = {**os.environ, "DATABASE_URL": pg_dsn, "PROVIDER_API_KEY": "sk-external",
           "PROVIDER_BASE_URL": f"http://127.0.0.1:{provider_port}/v1",
           "PROVIDER_READ_TIMEOUT_S": str(provider_timeout_s), "LEASE_S": str(LEASE_S),
           "HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S), "REAPER_INTERVAL_S": "1",
           "AUTONOMOUS_RUNS": "false", "INSTANCE_ID": "external-0"}
    log_path = tmp_path / "external.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raceharness.reference", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, log_path)
        yield External(url, users["alice"], users["bob"], provider_port, pg_dsn, log_path)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_a_correct_service_passes_the_catalogue_with_every_skip_named(
        external: External, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole catalogue against a correct, independently configured service: never exit 1.
    provider-stall is skipped (the declared 300 s timeout is over --max-wait), the scenarios
    needing control of the service or its database are skipped with their reasons, and
    long-hold runs on the declared lease and heartbeat."""
    code = main(["conformance", "--json", *external.flags(), "--provider-timeout", "300",
                 "--lease", str(LEASE_S), "--heartbeat", str(HEARTBEAT_S)])
    report = json.loads(capsys.readouterr().out)
    bad = {k: v for k, v in report["properties"].items() if v["invalid"]}
    assert code in (0, 3) and not bad, bad
    scenarios = report["scenarios"]
    assert "over --max-wait" in scenarios["provider-stall"]["skipped"]
    assert "needs service-control" in scenarios["crash-recovery"]["skipped"]
    assert scenarios["long-hold"]["verdict"] == "valid"
    assert scenarios["same-chat-burst"]["verdict"] == "valid"
    unknown = {trial.get("scenario"): {k: v["reason"] for k, v in trial["properties"].items()
                                       if v["verdict"] == "unknown"}
               for trial in report["trials"] if trial["verdict"] == "unknown"}
    assert code == 0, unknown  # every scenario that ran had its evidence


def test_long_hold_outlasts_a_provider_timeout_shorter_than_the_hold(
        external_quick_timeout: External, capsys: pytest.CaptureFixture[str]) -> None:
    """The hold (5 s here) is longer than the service's 1 s provider read timeout; a correct
    service must still pass: the fake provider trickles tokens while it holds the run."""
    code = main(["run", "long-hold", "--json", *external_quick_timeout.flags(), "--lease",
                 str(LEASE_S), "--heartbeat", str(HEARTBEAT_S)])
    report = json.loads(capsys.readouterr().out)
    assert report["scenarios"]["long-hold"]["verdict"] == "valid", report["properties"]
    assert code == 0


def test_an_undeclared_setting_skips_the_scenario_with_its_reason(
        external: External, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "same-chat-burst", "provider-stall", "long-hold", *external.flags()])
    out = capsys.readouterr().out
    assert code == 0  # what ran is valid; what could not run is named, not failed
    assert "provider-stall" in out and "declare it with --provider-timeout S" in out
    assert "long-hold" in out and "--lease S" in out and "--heartbeat S" in out
    assert "not tested: 2 scenarios skipped" in out
    assert main(["run", "same-chat-burst", "long-hold", "--strict", *external.flags()]) == 3


def test_a_provider_url_that_points_elsewhere_is_named_before_any_verdict(
        external: External, capsys: pytest.CaptureFixture[str]) -> None:
    """The fake provider listens on another port than the one the service calls: exit 4 and
    one line naming the URL to set, instead of four properties reading as bugs."""
    elsewhere = free_port()
    code = main(["race", "--n", "5", "--target", external.url, "--token", external.token,
                 "--provider-listen", f"127.0.0.1:{elsewhere}"])
    err = capsys.readouterr().err.strip()
    assert code == 4
    assert len(err.splitlines()) == 1, err
    assert f"never called the fake provider at http://127.0.0.1:{elsewhere}/v1" in err
    assert "invalid" not in err


def test_a_bad_dsn_is_unreachable_and_names_host_and_port_not_the_password(
        external: External, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code = main(["race", "--n", "2", *external.flags(dsn=False), "--dsn",
                 f"postgresql://someone:pw-Secret-77@127.0.0.1:{port}/nowhere"])
    err = capsys.readouterr().err.strip()
    assert code == 4, err
    assert len(err.splitlines()) == 1 and f"127.0.0.1:{port}/nowhere" in err
    assert "pw-Secret-77" not in err and "Traceback" not in err


def test_a_database_without_the_tables_is_a_configuration_error(
        external: External, pg_empty_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["race", "--n", "2", *external.flags(dsn=False), "--dsn", pg_empty_dsn])
    err = capsys.readouterr().err
    assert code == 2
    assert "has no table ai_chats, ai_chat_runs, ai_chat_messages" in err


def test_a_wrong_token_is_a_configuration_error_in_one_line(
        external: External, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["race", "--n", "2", "--target", external.url, "--token", "not-a-token"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "refused the token: 401" in err
    assert "not-a-token" not in err


def test_a_target_that_accepts_and_never_answers_names_the_bound(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A listener that takes the connection and never answers: exit 4 with the bound."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        code = main(["race", "--n", "2", "--target", f"http://127.0.0.1:{port}", "--token",
                     "t", "--answer-timeout", "1"])
    err = capsys.readouterr().err
    assert code == 4
    assert "did not answer an ordinary turn" in err and "within 1 s" in err


def test_a_printed_reproduce_line_reruns_with_the_same_verdict(
        external: External, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reproduce line carries every option that shaped the run (secrets as $ENV names):
    run as printed, in a shell with those variables set, it gives the same verdict. Before,
    it dropped --provider-listen, --dsn, --other-token and --capability, and its rerun was
    inconclusive where the run was valid."""
    code = main(["race", "--n", "5", "--json", *external.flags(), "--answer-timeout", "8"])
    report = json.loads(capsys.readouterr().out)
    line = report["trials"][0]["reproduce"]
    for secret in (external.token, external.other_token, external.dsn):
        assert secret not in line
    for flag in ("--provider-listen", "--dsn", "--other-token", "--capability",
                 "--answer-timeout 8", "--seed"):
        assert flag in line
    assert line.startswith("harness race --n 5 ")
    env = {**os.environ, "HARNESS_TOKEN": external.token,
           "HARNESS_OTHER_TOKEN": external.other_token, "HARNESS_DSN": external.dsn,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    rerun = subprocess.run(["bash", "-c", line + " --json"], env=env, capture_output=True,
                           text=True, timeout=120)
    again = json.loads(rerun.stdout)
    assert (rerun.returncode, again["verdict"]) == (code, report["verdict"]) == (0, "valid")
    assert again["trials"][0]["seed"] == report["trials"][0]["seed"]
