"""`harness race --target`: a deployment the harness did not start (here the reference run as
a separate process over https), with and without the evidence the provider and database
properties need."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from raceharness.commands.cli import main
from tests.refkit import free_ports, wait_until_ready


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PROVIDER_KEY = "sk-provider-key-7f3a9c"


@dataclass
class Deployment:
    url: str
    token: str
    provider_port: int
    dsn: str


@pytest.fixture
def deployment(pg_dsn: str, users: dict[str, str], tmp_path: Path) -> Iterator[Deployment]:
    """The reference over https on its own database, configured with a provider base URL
    where the harness's fake provider will listen (nothing listens there until it does)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port, provider_port = free_ports(2)
    env = {**os.environ, "DATABASE_URL": pg_dsn, "PROVIDER_API_KEY": PROVIDER_KEY,
           "PROVIDER_BASE_URL": f"http://127.0.0.1:{provider_port}/v1"}
    log = open(tmp_path / "raceharness.reference.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "raceharness.reference", "--port", str(port), "--ssl-certfile",
         str(cert_file), "--ssl-keyfile", str(key_file)], env=env, stdout=log,
        stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, tmp_path / "raceharness.reference.log")
        yield Deployment(url, users["alice"], provider_port, pg_dsn)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def race(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["race", "--json", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_race_against_an_https_deployment_with_full_evidence_is_valid(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = race(capsys, "--n", "20", "--seed", "2", "--target", deployment.url,
                        "--token", deployment.token, "--insecure", "--provider-listen",
                        f"127.0.0.1:{deployment.provider_port}", "--dsn", deployment.dsn)
    assert report["trials"][0]["statuses"] == {"200": 1, "409": 19}
    assert {k: v["verdict"] for k, v in report["properties"].items()} == {
        k: "valid" for k in report["properties"]}
    assert code == 0
    assert report["config"]["provider_access"] is True
    assert report["config"]["db_access"] is True


def test_h2_single_packet_falls_back_to_last_byte_on_an_http1_deployment(
        deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """The deployment speaks HTTP/1.1 only (ALPN offers no h2): the burst falls back to
    last-byte, says so in the log and in the history, and the race is still judged."""
    report_dir = tmp_path / "report"
    code = main(["race", "--n", "10", "--sync", "h2-single-packet", "--target", deployment.url,
                 "--token", deployment.token, "--insecure", "--provider-listen",
                 f"127.0.0.1:{deployment.provider_port}", "--dsn", deployment.dsn,
                 "--report", str(report_dir)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "HTTP/2 unavailable (the TLS server at" in caplog.text
    assert "fell back to --sync last-byte for this burst" in caplog.text
    meta = [json.loads(line) for line in (report_dir / "history.jsonl").read_text().splitlines()
            if '"kind":"trial"' in line][-1]
    assert meta["sync_used"] == "last-byte" and "HTTP/2 unavailable" in meta["h2_note"]
    assert meta["send_spread_ns"] is not None


def test_a_provider_failing_an_ordinary_turn_stops_the_run_at_the_preflight(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens at the deployment's provider URL and the harness has no fake provider
    there: the ordinary turn ends with an error frame, and the run stops before any verdict
    instead of reading the failed runs as bugs."""
    code = main(["race", "--n", "5", "--target", deployment.url, "--token", deployment.token,
                 "--insecure"])
    err = capsys.readouterr().err.strip()
    assert code == 4
    assert "preflight: an ordinary turn ended with an error frame" in err
    assert "--provider-listen" in err and len(err.splitlines()) == 1


@pytest.fixture
def own_provider(deployment: Deployment) -> Iterator[None]:
    """The deployment's own provider, out of the harness's sight: an OpenAI-compatible server
    on its provider port (the harness's fake one, in a thread of its own), whose first token
    comes after a second, so the winner is still streaming while the losers arrive."""
    import threading

    import trio

    from raceharness.shell.fake_provider import FakeProvider

    stop = threading.Event()
    ready = threading.Event()

    async def serve() -> None:
        provider = FakeProvider(first_token_delay_s=1.0)
        provider.mode_for = lambda nonce: "slow-first"
        async with trio.open_nursery() as nursery:
            await nursery.start(provider.serve, "127.0.0.1", deployment.provider_port)
            ready.set()
            await trio.to_thread.run_sync(stop.wait)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def test_missing_evidence_is_unknown_never_valid(
        deployment: Deployment, own_provider: None, capsys: pytest.CaptureFixture[str]) -> None:
    """No fake provider access and no DSN (the deployment calls a provider of its own): the
    race runs, and every property that needed the missing evidence is unknown; the whole
    verdict is inconclusive, never valid."""
    code, report = race(capsys, "--n", "10", "--seed", "4", "--target", deployment.url,
                        "--token", deployment.token, "--insecure")
    props = {k: v["verdict"] for k, v in report["properties"].items()}
    assert props["race/no-loser-provider-call"] == "unknown"
    assert props["race/winner-provider-call"] == "unknown"
    assert props["race/no-loser-writes"] == "unknown"
    assert props["race/one-winner"] == "valid"
    assert props["race/losers-409"] == "valid"
    assert report["verdict"] != "valid" and code in (1, 3)
    assert report["config"]["provider_access"] is False
    assert report["config"]["db_access"] is False


def test_a_wrong_token_is_a_target_error_not_a_verdict(
        deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["race", "--n", "2", "--target", deployment.url, "--token", "wrong-token",
                 "--insecure"])
    captured = capsys.readouterr()
    assert code == 2  # configuration, said by the preflight before any trial
    assert "the target refused the token: 401" in captured.err
    assert "wrong-token" not in captured.err + captured.out


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_mid_race_stops_what_it_started_and_keeps_the_history(
        deployment: Deployment, tmp_path: Path, signame: str) -> None:
    """SIGTERM or SIGINT (Ctrl-C) while trials run: exit 130, no run of the deployment left
    active, and the history written so far still loads and re-checks."""
    import signal

    import psycopg

    report = tmp_path / "report"
    env = {**os.environ, "HARNESS_TOKEN": deployment.token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "raceharness", "race", "--n", "10", "--trials", "500",
         "--target", deployment.url, "--insecure", "--provider-listen",
         f"127.0.0.1:{deployment.provider_port}", "--dsn", deployment.dsn,
         "--report", str(report)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    history = report / "history.jsonl"
    deadline = time.monotonic() + 60
    while not (history.exists() and history.read_text().count('"kind":"db"') >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no trial completed in time"
        time.sleep(0.05)  # watching another process's file: nothing to await
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"interrupted ({signame})".encode() in err
    assert b"Traceback" not in err
    with psycopg.connect(deployment.dsn) as conn:
        active = conn.execute("SELECT count(*) FROM ai_chat_runs "
                              "WHERE status IN ('pending', 'running')").fetchone()
    assert active == (0,)
    check = subprocess.run([sys.executable, "-m", "raceharness", "check", str(history)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode in (0, 3), check.stderr
    assert "verdict:" in check.stdout


def test_no_secret_reaches_output_logs_or_reports(
        deployment: Deployment, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The bearer token, the other user's token, the DSN's password and the provider key
    appear in no output, no log line and no report file."""
    import logging

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    password = "pw-S3cret-dsn-41d2"
    dsn = make_conninfo(**{**conninfo_to_dict(deployment.dsn), "password": password})
    other = "tok-other-user-b8e1"
    report = tmp_path / "report"
    logging.getLogger().setLevel(logging.DEBUG)
    code = main(["-v", "race", "--n", "5", "--target", deployment.url, "--token",
                 deployment.token, "--other-token", other, "--insecure", "--dsn", dsn,
                 "--provider-listen", f"127.0.0.1:{deployment.provider_port}",
                 "--report", str(report)])
    out, err = capfd.readouterr()
    assert code == 0, err
    texts = {"stdout": out, "stderr": err}
    texts.update({p.name: p.read_text() for p in report.iterdir()})
    texts["raceharness.reference.log"] = (tmp_path / "raceharness.reference.log").read_text()
    assert set(texts) >= {"history.jsonl", "report.json", "junit.xml", "summary.md",
                          "report.html"}
    for secret in (deployment.token, other, password, PROVIDER_KEY):
        leaks = [name for name, text in texts.items() if secret in text]
        assert leaks == [], f"{secret[:6]}... leaked into {leaks}"
