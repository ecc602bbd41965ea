"""The ``[control]`` section of a target profile: strict loading (errors name the file, the
field and the value, exit 2) and the capabilities its commands give."""

from __future__ import annotations

from pathlib import Path

import pytest

from raceharness.commands.cli import main
from raceharness.net.control_spec import DEFAULT_TIMEOUT_S
from raceharness.net.target import ConfigError, load_profile


def _load(tmp_path: Path, text: str) -> tuple[Path, object]:
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path, load_profile(path).control


def test_a_complete_section_loads_with_its_defaults_and_capabilities(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    path, spec = _load(tmp_path, """\
[control]
instances = ["http://10.0.0.5:8080/", "https://10.0.0.6"]
timeout_s = 12
kill = "./scripts/kill.sh"
start = { run = "./scripts/start.sh", timeout_s = 90 }
db_down = "systemctl stop postgresql"
db_up = "systemctl start postgresql"
pass_env = ["PGPASSWORD"]
ready_path = "/ping"

[control.env]
UNIT = "chat-api"
""")
    assert spec is not None
    assert spec.instances == ("http://10.0.0.5:8080", "https://10.0.0.6")
    assert {c.name: c.timeout_s for c in spec.commands} == {
        "kill": 12.0, "start": 90.0, "db_down": 12.0, "db_up": 12.0}
    assert spec.env == (("UNIT", "chat-api"),) and spec.pass_env == ("PGPASSWORD",)
    assert spec.ready_path == "/ping"
    assert spec.cwd == str(tmp_path.resolve())  # relative scripts are the profile's
    assert spec.capabilities() == {"service-control", "db-control", "multi-instance"}
    assert "systemctl" not in repr(spec)  # a command's text is never shown


def test_each_pair_gives_its_capability_and_nothing_is_no_capability(tmp_path: Path) -> None:
    _, spec = _load(tmp_path, '[control]\nkill = "k"\nstart = "s"\n')
    assert spec.capabilities() == {"service-control"}  # type: ignore[attr-defined]
    assert spec.commands[0].timeout_s == DEFAULT_TIMEOUT_S  # type: ignore[attr-defined]
    _, spec = _load(tmp_path, '[control]\ndb_down = "d"\ndb_up = "u"\n')
    assert spec.capabilities() == {"db-control"}  # type: ignore[attr-defined]
    _, spec = _load(tmp_path, '[control]\ninstances = ["http://a:1"]\n')
    assert spec.capabilities() == frozenset()  # type: ignore[attr-defined]
    _, spec = _load(tmp_path, "[paths]\nstream = \"/s\"\n")
    assert spec is None


@pytest.mark.parametrize(("body", "message"), [
    ('control = "x"', "[control] must be a table"),
    ('[control]\nrestart = "x"', "control.restart: unknown field; expected one of kill, start"),
    ("[control]\nkill = 3\nstart = \"s\"", "control.kill: expected a command string or a table"
     " {run = \"...\", timeout_s = N}, got 3"),
    ('[control]\nkill = "  "\nstart = "s"', "control.kill: the command is empty"),
    ('[control]\nkill = { timeout_s = 3 }\nstart = "s"', "control.kill.run: required"),
    ('[control]\nkill = { run = "k", retries = 3 }\nstart = "s"',
     "control.kill.retries: unknown field; expected run, timeout_s"),
    ('[control]\nkill = { run = "k", timeout_s = 0 }\nstart = "s"',
     "control.kill.timeout_s: expected a number of seconds > 0, got 0"),
    ('[control]\ntimeout_s = true', "control.timeout_s: expected a number of seconds > 0, "
     "got True"),
    ('[control]\nkill = "k"', "control.kill: needs control.start too (the harness heals what "
     "it breaks: kill is undone by start)"),
    ('[control]\ndb_up = "u"', "control.db_up: needs control.db_down too"),
    ('[control]\nreject_run_inserts = "r"', "control.reject_run_inserts: needs "
     "control.accept_run_inserts too"),
    ("[control]\ninstances = []", "control.instances: expected a non-empty array of http(s) "
     "URLs, got []"),
    ('[control]\ninstances = ["http://a:1", "ftp://b"]',
     "control.instances[1]: expected an http(s) URL, got 'ftp://b'"),
    ('[control]\ninstances = ["http://a:1", "http://a:1/"]',
     "control.instances[1]: 'http://a:1/' is listed twice"),
    ('[control]\nenv = { "BAD NAME" = "x" }', "control.env.BAD NAME: expected an environment "
     "variable name, got 'BAD NAME'"),
    ('[control]\nenv = { RACEHARNESS_INSTANCE_URL = "x" }',
     "control.env.RACEHARNESS_INSTANCE_URL: RACEHARNESS_INSTANCE_URL is set by the harness"),
    ('[control]\nenv = { PATH = "/x" }', "control.env.PATH: PATH is set by the harness"),
    ('[control]\nenv = { PGPORT = 5432 }', "control.env.PGPORT: expected a string, got an integer"),
    ('[control]\npass_env = "PGPASSWORD"', "control.pass_env: expected an array of variable "
     "names, got 'PGPASSWORD'"),
    ('[control]\npass_env = ["OK", 3]', "control.pass_env[1]: expected an environment "
     "variable name, got 3"),
    ('[control]\nready_path = "healthz"', "control.ready_path: expected a path starting with "
     "'/' (or \"\" for no wait), got 'healthz'"),
])
def test_a_bad_section_names_file_field_and_value(tmp_path: Path, body: str,
                                                  message: str) -> None:
    path = tmp_path / "profile.toml"
    path.write_text(body + "\n")
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_secret_in_the_env_table_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "profile.toml"
    path.write_text('[control]\nenv = { PGPASSWORD = ["s3cret-pw"] }\n')
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert "s3cret-pw" not in str(caught.value)


def test_a_bad_section_is_exit_2_in_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "profile.toml"
    path.write_text('[control]\ndb_down = "d"\n')
    code = main(["run", "db-outage", "--target", "http://127.0.0.1:9", "--token", "t",
                 "--profile", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == [f"harness run: {path}: control.db_down: needs control.db_up "
                                "too (the harness heals what it breaks: db_down is undone by "
                                "db_up)"]


@pytest.mark.parametrize("name", ["systemd.toml", "compose.toml"])
def test_the_example_profiles_load_with_every_control_capability(name: str) -> None:
    """examples/control/ (README): complete profiles, every command declared."""
    path = Path(__file__).resolve().parents[3] / "examples" / "control" / name
    profile = load_profile(path)
    assert profile.control is not None
    assert profile.control.capabilities() == {"service-control", "db-control",
                                              "multi-instance"}
    assert {c.name for c in profile.control.commands} == {
        "kill", "start", "db_down", "db_up", "reject_run_inserts", "accept_run_inserts"}
    assert profile.service.declared() == {"lease_s": 30.0, "heartbeat_s": 5.0}
