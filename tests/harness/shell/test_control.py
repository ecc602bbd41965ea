"""CommandControl (shell/control.py): the profile's control commands behind the embedded
stack's control interface — a clean environment, output to a file, a bound, healing — and the
instances a scenario's requests go to."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from raceharness.core.scenario import catalogue
from raceharness.net.target import Target, load_profile
from raceharness.runtime import EXIT_UNREACHABLE
from raceharness.shell.control import (
    CommandControl,
    ControlCommandFailed,
    command_control,
    instance_targets,
    scenario_targets,
)
from raceharness.trial.context import TargetUnreachable


def _control(tmp_path: Path, body: str, url: str = "http://127.0.0.1:9",
             report: Path | None = None, scenario: str = "crash-recovery") -> CommandControl:
    path = tmp_path / "profile.toml"
    path.write_text("[control]\n" + body)
    control = command_control(Target(url, "tok", profile=load_profile(path)),
                              report or tmp_path / "report", scenario)
    assert control is not None
    return control


@pytest.fixture
def answering() -> Iterator[str]:
    """A tiny HTTP server answering 200 to any GET (a started instance's health route)."""
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_command_runs_in_a_clean_environment_in_the_profiles_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_TOKEN", "tok-secret")
    monkeypatch.setenv("PGPASSWORD", "pw")
    control = _control(tmp_path, """\
instances = ["http://10.1.2.3:8080", "https://app-2.internal"]
kill = "env | sort; pwd"
start = "true"
pass_env = ["PGPASSWORD", "NOT_SET_ANYWHERE"]
env = { UNIT = "chat-api" }
""")
    trio.run(control.kill, 1)
    log = (tmp_path / "report/control/crash-recovery/01-kill-1.log").read_text()
    lines = set(log.splitlines())
    assert {"RACEHARNESS_CONTROL=kill", "RACEHARNESS_INSTANCE_INDEX=1",
            "RACEHARNESS_INSTANCE_URL=https://app-2.internal",
            "RACEHARNESS_INSTANCE_HOST=app-2.internal", "RACEHARNESS_INSTANCE_PORT=443",
            "UNIT=chat-api", "PGPASSWORD=pw", str(tmp_path.resolve())} <= lines
    assert "tok-secret" not in log and "HARNESS_TOKEN" not in log  # nothing else leaks in
    assert "# pass_env: not set in the harness's environment: NOT_SET_ANYWHERE" in log
    assert log.startswith("# control.kill (instance 1, https://app-2.internal) started ")
    assert "env | sort" not in log  # the command's text is never written
    assert control.killed == {1}


def test_a_failing_command_is_exit_4_naming_it_with_its_outputs_tail(tmp_path: Path) -> None:
    control = _control(tmp_path, """\
db_down = "for i in $(seq 1 40); do echo line $i; done; echo 'psql: connection refused' >&2; exit 2"
db_up = "true"
""")
    with pytest.raises(ControlCommandFailed) as caught:
        control.database_down()
    message = str(caught.value)
    assert isinstance(caught.value, TargetUnreachable)  # the CLI's exit 4
    assert EXIT_UNREACHABLE == 4
    assert message.startswith("control.db_down exited with status 2 after ")
    assert message.endswith("line 40\npsql: connection refused")
    assert "line 26" not in message  # the tail: the last 15 lines
    assert control.database_is_down  # the heal owes a db_up
    assert control.broken() == [("db_up", None)]


def test_a_hanging_command_has_its_process_group_killed_at_its_timeout(tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    control = _control(tmp_path, f"""\
kill = {{ run = "echo going; sleep 30 & echo $! > {child}; wait", timeout_s = 0.5 }}
start = "true"
""")
    with pytest.raises(ControlCommandFailed) as caught:
        trio.run(control.kill, 0)
    assert str(caught.value).startswith("control.kill (instance 0, http://127.0.0.1:9) did not "
                                        "finish within 0.5 s (its process group was killed)")
    assert str(caught.value).endswith("ends with:\ngoing")
    stat = Path(f"/proc/{child.read_text().strip()}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"


def test_start_waits_until_the_instance_answers(tmp_path: Path, answering: str) -> None:
    control = _control(tmp_path, 'kill = "true"\nstart = "echo up"\n', url=answering)
    control.killed.add(0)
    trio.run(control.restart, 0)
    assert control.killed == set()
    silent = _control(tmp_path, 'kill = "true"\nstart = { run = "true", timeout_s = 0.3 }\n'
                      'ready_path = "/ready"\n')
    with pytest.raises(ControlCommandFailed, match=r"control.start \(instance 0, "
                       r"http://127.0.0.1:9\) returned, but GET http://127.0.0.1:9/ready did "
                       r"not answer below 500 within 0.3 s \(last: ConnectError\)"):
        trio.run(silent.restart, 0)
    no_wait = _control(tmp_path, 'kill = "true"\nstart = "true"\nready_path = ""\n')
    trio.run(no_wait.restart, 0)  # "": the command alone says the instance is up


def test_the_heal_runs_every_owed_command_in_order_and_names_each_failure(
        tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    control = _control(tmp_path, f"""\
instances = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
ready_path = ""
kill = "true"
start = "echo start $RACEHARNESS_INSTANCE_INDEX >> {ran}; [ $RACEHARNESS_INSTANCE_INDEX = 1 ]"
db_down = "true"
db_up = "echo db_up >> {ran}; echo 'cannot reach the database host' >&2; exit 1"
reject_run_inserts = "true"
accept_run_inserts = "echo accept >> {ran}"
""")
    control.killed |= {0, 1}
    control.database_is_down = control.inserts_rejected = True
    with pytest.raises(ControlCommandFailed) as caught:
        trio.run(control.heal)
    assert ran.read_text().splitlines() == ["db_up", "accept", "start 0", "start 1"]
    message = str(caught.value)
    assert message.startswith("healing the deployment failed: control.db_up exited with "
                              "status 1")
    assert "cannot reach the database host" in message
    assert "control.start (instance 0, http://127.0.0.1:9) exited with status 1" in message
    assert control.broken() == [("db_up", None), ("start", 0)]  # still owed
    assert not control.inserts_rejected


def test_the_heal_runs_even_when_the_run_is_cancelled(tmp_path: Path) -> None:
    """Ctrl-C cancels the scenario; the heal is shielded and still starts the instance."""
    ran = tmp_path / "ran"
    control = _control(tmp_path, f'kill = "true"\nstart = "echo start >> {ran}"\n'
                       'ready_path = ""\n')

    async def interrupted() -> None:
        with trio.CancelScope() as scope:
            await control.kill(0)
            scope.cancel()
            try:
                await trio.sleep_forever()
            finally:
                await control.heal()

    trio.run(interrupted)
    assert ran.read_text() == "start\n"
    assert control.broken() == []


def test_a_failing_heal_after_a_failing_command_names_both(tmp_path: Path) -> None:
    control = _control(tmp_path, 'kill = "echo denied; exit 1"\nstart = "echo no; exit 1"\n')

    async def scenario() -> None:
        try:
            await control.kill(0)
        except ControlCommandFailed as exc:
            await control.heal_on_exit(type(exc), exc, None)

    with pytest.raises(ControlCommandFailed) as caught:
        trio.run(scenario)
    message = str(caught.value)
    assert message.startswith("control.kill (instance 0, http://127.0.0.1:9) exited with "
                              "status 1")
    assert "\nhealing the deployment failed: control.start (instance 0" in message


def test_what_commands_cannot_do_is_said(tmp_path: Path) -> None:
    control = _control(tmp_path, 'db_down = "d"\ndb_up = "u"\n')
    assert control.controls_database
    assert control.unavailable("database") is None
    assert control.unavailable("kill") == ("the target profile declares no control.kill and "
                                           "no control.start")
    assert control.unavailable("reject_run_inserts") is not None
    assert "write transaction" in (control.unavailable("hold_gate") or "")


def test_the_instances_a_scenario_reaches(tmp_path: Path) -> None:
    path = tmp_path / "profile.toml"
    path.write_text('[control]\ninstances = ["http://a:1", "http://b:2", "http://c:3", '
                    '"http://d:4"]\n')
    target = Target("http://lb:80", "tok", other_token="tok2", profile=load_profile(path))
    scenarios = catalogue()
    assert [t.base_url for t in instance_targets(target)] == [
        "http://a:1", "http://b:2", "http://c:3", "http://d:4"]
    assert all(t.token == "tok" and t.other_token == "tok2" and t.profile is target.profile
               for t in instance_targets(target))
    # several instances: as many as the scenario asks for; a kill: instance 0, whose index
    # is then the owner's; anything else: --target as given
    assert [t.base_url for t in scenario_targets(target, scenarios["multi-instance"])] == [
        "http://a:1", "http://b:2", "http://c:3"]
    assert [t.base_url for t in scenario_targets(target, scenarios["crash-recovery"])] == [
        "http://a:1"]
    assert scenario_targets(target, scenarios["db-outage"]) == [target]
    plain = Target("http://lb:80", "tok")
    assert scenario_targets(plain, scenarios["multi-instance"]) == [plain]
    assert command_control(plain, None, "x") is None
