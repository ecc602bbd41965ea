"""Target profiles, target URLs and the ``harness`` command line's exits (conformance.md §5, §6).

Usage errors exit 2 with a one-line message naming the problem; an unreachable target exits 4;
``harness check`` re-judges a saved history offline and exits with its verdict.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

import pytest

from raceharness.commands.cli import main
from raceharness.core.history import Trial, dumps_trials
from raceharness.core.properties import SINGLE_CHAT_RACE
from raceharness.net.http1 import Endpoint
from raceharness.net.target import Auth, ConfigError, Conflict, Paths, Profile, Target, load_profile
from tests.harness.core.test_checkers import LOSER_A, model, patch

# -- profiles ------------------------------------------------------------------------------------

FULL_PROFILE = """\
[paths]
stream = "/v2/chat/stream"
stop = "/v2/chat/stop"
run = "/v2/chat/run"
runs = ""
health = "/ping"

[auth]
header = "x-api-key"
scheme = ""

[conflict]
status = 429
code = "CHAT_BUSY"
"""


def write(tmp_path: Path, text: str, name: str = "profile.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_profile_sets_every_field(tmp_path: Path) -> None:
    assert load_profile(write(tmp_path, FULL_PROFILE)) == Profile(
        paths=Paths(stream="/v2/chat/stream", stop="/v2/chat/stop", run="/v2/chat/run", runs="",
                    health="/ping"),
        auth=Auth(header="x-api-key", scheme=""),
        conflict=Conflict(status=429, code="CHAT_BUSY"))


def test_a_partial_profile_keeps_the_defaults(tmp_path: Path) -> None:
    assert load_profile(write(tmp_path, '[conflict]\ncode = "BUSY"\n')) == Profile(
        conflict=Conflict(status=409, code="BUSY"))
    assert load_profile(write(tmp_path, "")) == Profile()


@pytest.mark.parametrize(("text", "names"), [
    ("[bogus]\nx = 1\n", ["[bogus]"]),
    ("paths = 3\n", ["[paths]"]),
    ('[paths]\nstreem = "/s"\n', ["paths.streem"]),
    ('[conflict]\nstatus = "409"\n', ["conflict.status", "'409'"]),
    ("[conflict]\nstatus = true\n", ["conflict.status", "True"]),
    ("[conflict]\nstatus = 409.0\n", ["conflict.status", "409.0"]),
    ("[auth]\nscheme = 1\n", ["auth.scheme", "1"]),
    ('[paths]\nstop = "api/stop"\n', ["paths.stop", "'api/stop'"]),
    ("[paths\nstream = 1\n", ["not valid TOML"]),
    ('[service]\nlease_s = "30"\n', ["service.lease_s", "'30'"]),
    ("[service]\nprovider_timeout_s = 0\n", ["service.provider_timeout_s", "0"]),
    ("[service]\nheartbeat_s = true\n", ["service.heartbeat_s", "True"]),
    ("[service]\nreaper_s = 1\n", ["service.reaper_s", "unknown field"]),
], ids=["unknown-section", "section-not-table", "unknown-field", "status-string",
        "status-bool", "status-float", "scheme-int", "path-relative", "invalid-toml",
        "service-string", "service-zero", "service-bool", "service-unknown"])
def test_a_bad_profile_names_file_field_and_value(tmp_path: Path, text: str,
                                                  names: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert [message.startswith(f"{path}: "), *[name in message for name in names]] == [True] * (
        1 + len(names)), message


@pytest.mark.parametrize("kind", ["missing", "directory", "not-utf8"])
def test_an_unreadable_profile_is_a_config_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "profile.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-utf8":
        path.write_bytes(b'[auth]\nscheme = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert str(caught.value).startswith(f"{path}: ")


# -- targets -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    ("http://example.test", ("http", "example.test", 80)),
    ("http://example.test:8080/prefix/", ("http", "example.test", 8080)),
    ("https://example.test", ("https", "example.test", 443)),
    ("https://127.0.0.1:8443", ("https", "127.0.0.1", 8443)),
])
def test_endpoint_of_an_http_url(url: str, expected: tuple[str, str, int]) -> None:
    endpoint = Target(url, token="t").endpoint()
    assert (endpoint.scheme, endpoint.host, endpoint.port) == expected
    assert (endpoint.ssl_context is not None) == (expected[0] == "https")


def test_an_http_endpoint_has_no_tls_and_a_prefix() -> None:
    target = Target("http://example.test:8080/prefix/", token="t")
    assert (target.endpoint(), target.prefix) == (
        Endpoint("http", "example.test", 8080, None, wire=target.profile.adapter), "/prefix")
    assert target.endpoint().wire.name == "ai-chat"  # type: ignore[union-attr]


def test_insecure_https_does_not_verify() -> None:
    context = Target("https://example.test", token="t", insecure=True).endpoint().ssl_context
    assert context is not None
    assert (context.check_hostname, context.verify_mode) == (False, ssl.CERT_NONE)


@pytest.mark.parametrize("url", ["ftp://example.test", "example.test:80", "http://", "", "ws://h"])
def test_a_non_http_target_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Target(url, token="t").endpoint()
    assert str(caught.value) == f"--target: expected an http(s) URL, got {url!r}"


def test_auth_headers() -> None:
    bearer = Target("http://h", token="tok")
    bare = Target("http://h", token="tok", profile=Profile(auth=Auth("x-api-key", "")))
    assert [bearer.auth_headers(), bearer.auth_headers("other"), bare.auth_headers()] == [
        [("authorization", "Bearer tok")], [("authorization", "Bearer other")],
        [("x-api-key", "tok")]]


def test_the_token_stays_out_of_repr() -> None:
    assert "s3cret" not in repr(Target("http://h", token="s3cret", other_token="s3cret2"))


# -- the command line: usage errors --------------------------------------------------------------

@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials from the environment would change which check fires first."""
    for name in ("HARNESS_TOKEN", "HARNESS_OTHER_TOKEN", "HARNESS_DSN"):
        monkeypatch.delenv(name, raising=False)


def cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``harness ARGV`` (argparse errors exit via SystemExit)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "problem"), [
    ("race --n 0", "--n: expected an integer >= 1, got 0"),
    ("race --n abc", "--n: expected an integer, got 'abc'"),
    ("race --trials 0", "--trials: expected an integer >= 1, got 0"),
    ("race --sync bogus", "--sync: invalid choice: 'bogus'"),
    ("race --fault nope", "unknown fault 'nope'"),
    ("race --provider-listen nocolon --target http://x --token t", "expected HOST:PORT"),
    ("race --provider-listen h:99999 --target http://x --token t", "expected 1-65535"),
    ("race --losers-fast-ms 0", "expected a number > 0"),
    ("run x --provider-timeout -1", "--provider-timeout: expected a number > 0"),
    ("race --max-wait abc", "--max-wait: expected a number, got 'abc'"),
    ("check", "history"),
])
def test_a_flag_error_exits_2_naming_the_flag(argv: str, problem: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(argv.split(), capsys)
    assert (code, out, problem in err.splitlines()[-1]) == (2, "", True), err


@pytest.mark.parametrize(("argv", "problem"), [
    ("race --target http://x --fault no-lease --token t", "embedded reference only"),
    ("race --target http://x", "--target needs --token"),
    ("race --dsn x", "need --target"),
    ("race --chat-id c1", "need --target"),
    ("race --provider-listen 127.0.0.1:9 ", "need --target"),
    ("race --n 5000", "exceeds the safety cap"),
    ("race --n 1000 --trials 21", "exceeds the safety cap"),
    ("race --target ftp://x --token t", "expected an http(s) URL, got 'ftp://x'"),
    ("race --provider-timeout 300", "--provider-timeout, --lease and --heartbeat describe a"),
    ("race --target http://x --token t --lease 5 --heartbeat 5", "--lease (5) must exceed"),
])
def test_a_configuration_error_exits_2_with_one_line(argv: str, problem: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(argv.split(), capsys)
    assert (code, out, len(err.splitlines()), err.startswith("harness race: "),
            problem in err) == (2, "", 1, True, True), err


def test_allow_large_lifts_the_cap(capsys: pytest.CaptureFixture[str]) -> None:
    """Past the cap, the next check (--dsn without --target) fails fast instead."""
    code, _, err = cli(["race", "--n", "5000", "--allow-large", "--dsn", "x"], capsys)
    assert (code, err) == (2, "harness race: --dsn, --provider-listen, --chat-id and "
                              "--capability need --target\n")


def test_a_bad_profile_flag_exits_2_naming_the_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[conflict]\nstatus = "409"\n')
    code, _, err = cli(["race", "--profile", str(path), "--target", "http://x", "--token", "t"],
                       capsys)
    assert (code, len(err.splitlines()), str(path) in err, "conflict.status" in err) == (
        2, 1, True, True), err


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(15)
def test_an_unreachable_target_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, out, err = cli(["race", "--target", f"http://127.0.0.1:{port}", "--token", "t",
                          "--n", "2"], capsys)
    assert (code, out, len(err.splitlines()), err.startswith("harness race: ")) == (
        4, "", 1, True), err
    assert str(port) in err


# -- harness check -------------------------------------------------------------------------------

def table_verdicts(out: str) -> dict[str, str]:
    """property -> verdict from the console table (its rows between header and summary)."""
    rows = [line.split() for line in out.splitlines()[1:]]
    return {row[0]: row[1] for row in rows if row and row[0] in SINGLE_CHAT_RACE}


def saved(tmp_path: Path, *, loser_status: int | None = None) -> Path:
    trial = model() if loser_status is None else patch(model(), LOSER_A, status=loser_status,
                                                       code=None)
    path = tmp_path / "history.jsonl"
    path.write_text(dumps_trials([trial], {"target": "embedded", "n": 3}), encoding="utf-8")
    return path


def test_check_of_a_correct_race_is_valid(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = saved(tmp_path)
    code, out, err = cli(["check", str(path)], capsys)
    assert (code, err, table_verdicts(out)) == (0, "", dict.fromkeys(SINGLE_CHAT_RACE, "valid"))
    assert out.splitlines()[-1] == f"verdict: valid   reproduce: harness check {path}"


def test_check_of_a_loser_that_got_500_is_invalid(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["check", str(saved(tmp_path, loser_status=500))], capsys)
    assert (code, err, table_verdicts(out)) == (
        1, "", {**dict.fromkeys(SINGLE_CHAT_RACE, "valid"), "race/losers-409": "invalid"})
    assert [line.split(" (")[0] for line in out.splitlines() if line.startswith("FAILED")] == [
        "FAILED race/losers-409"]


@pytest.mark.parametrize(("loser_status", "verdict", "exit_code"), [(None, "valid", 0),
                                                                    (500, "invalid", 1)])
def test_check_json_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      loser_status: int | None, verdict: str,
                                      exit_code: int) -> None:
    code, out, _ = cli(["check", str(saved(tmp_path, loser_status=loser_status)), "--json"],
                       capsys)
    report = json.loads(out)
    assert (code, report["verdict"], report["exit_code"],
            {name: p["verdict"] for name, p in report["properties"].items()},
            [t["statuses"] for t in report["trials"]]) == (
        exit_code, verdict, exit_code,
        {**dict.fromkeys(SINGLE_CHAT_RACE, "valid"), "race/losers-409": verdict},
        [{"200": 1, "409": 1, "500": 1} if loser_status else {"200": 1, "409": 2}])


@pytest.mark.parametrize(("content", "problem"), [
    (None, "no such file"),
    (b"garbage\nmore garbage\n", "line 1: not valid JSON"),
    (b'{"kind": "run", "schema": 1}\n', "no trials"),
    (b"\xff\xfe\x00garbage\n\x80\n", ""),
    ("directory", ""),
], ids=["missing", "garbage", "no-trials", "not-utf8", "directory"])
def test_check_of_an_unusable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           content: bytes | str | None, problem: str) -> None:
    path = tmp_path / "history.jsonl"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    code, out, err = cli(["check", str(path)], capsys)
    assert (code, out, len(err.splitlines()), err.startswith(f"harness check: {path}: "),
            problem in err) == (2, "", 1, True, True), err


def test_the_service_section_declares_the_targets_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "[service]\nprovider_timeout_s = 300\nlease_s = 30.5\n")
    service = load_profile(path).service
    assert service.declared() == {"provider_timeout_s": 300.0, "lease_s": 30.5}


# -- the console: version, verbosity anywhere, each subcommand's own usage, reasons -----------

def test_version_names_the_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["--version"], capsys)
    assert code == 0 and out.startswith("harness (raceharness ")


@pytest.mark.parametrize("argv", [["-q", "scenarios"], ["scenarios", "-q"],
                                  ["-v", "scenarios"], ["scenarios", "--verbose"]])
def test_q_and_v_are_accepted_before_and_after_the_subcommand(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(argv, capsys)
    assert code == 0 and "same-chat-burst" in out, err


def test_a_bad_flag_prints_the_subcommands_own_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["race", "--bogus"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines()[0].startswith("usage: harness race ")
    assert err.splitlines()[-1] == "harness race: error: unrecognized arguments: --bogus"


@pytest.mark.parametrize(("text", "problem"), [
    ("hello world\n", "not a history: line 1 is not JSON"),
    ("", "the file is empty"),
    ('[1, 2]\n', "line 1: expected an object with 'kind'"),
])
def test_check_of_a_file_that_is_no_history_says_what_is_wrong(
        tmp_path: Path, text: str, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(text)
    code, _, err = cli(["check", str(path)], capsys)
    assert code == 2 and problem in err, err


def test_the_console_gives_the_reason_of_every_property_that_is_not_valid(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trial = patch(model(), LOSER_A, status=500, code=None)
    path = tmp_path / "history.jsonl"
    path.write_text(dumps_trials([drop_db(trial)], {"target": "embedded", "n": 3}))
    code, out, _ = cli(["check", str(path)], capsys)
    lines = out.splitlines()
    invalid = lines.index(next(line for line in lines if line.startswith("race/losers-409")))
    assert lines[invalid + 1].startswith("    why: 1 of 2 losers not a JSON 409")
    unknown = lines.index(next(line for line in lines if line.startswith("race/no-loser-writes")))
    assert lines[unknown + 1] == "    why: no database access (trial 0)"
    assert code == 1


def drop_db(trial: Trial) -> Trial:
    return Trial(meta=trial.meta, ops=trial.ops, provider=trial.provider, db=None)
