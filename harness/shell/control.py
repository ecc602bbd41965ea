"""A nemesis for a deployment the harness did not start: the profile's ``[control]`` commands
(net/control_spec.py) behind the interface the control steps use on the embedded stack
(trial/steps/control.py): ``kill(k)``, ``restart(k)``, ``database_down()``, ``database_up()``,
``reject_run_inserts(on)``, ``controls_database``.

How a command runs:

- ``/bin/sh -c COMMAND`` in the profile's folder, in a session of its own, with a *clean*
  environment: ``PATH`` and ``HOME`` (the harness's), the variables named in
  ``control.pass_env`` that the harness's environment has, ``control.env``, and the harness's
  own: ``RACEHARNESS_CONTROL`` (the command's name: ``kill``), and for ``kill`` and ``start``
  ``RACEHARNESS_INSTANCE_INDEX`` (0-based, the position in ``control.instances``),
  ``RACEHARNESS_INSTANCE_URL``, ``RACEHARNESS_INSTANCE_HOST`` and ``RACEHARNESS_INSTANCE_PORT``.
- Its stdout and stderr go to one file, ``<report>/control/<scenario>/<nn>-<name>[-<k>].log``
  (a temporary folder without ``--report``), headed by the harness with the command's name,
  instance and outcome — never the command's text nor the environment's values.
- It must end within its ``timeout_s``; past it, its whole process group is killed. A command
  that exits non-zero or hangs ends the run with exit 4 (:class:`ControlCommandFailed`, a
  :class:`TargetUnreachable`), naming the command and the tail of its output: an environment
  failure, never a finding against the service.
- ``kill`` must return once the instance is dead (a crash: SIGKILL, no clean-up). After
  ``start`` returns, the harness waits, within the same bound again, until the instance answers
  ``GET <instance><ready_path>`` below 500 (``ready_path``: the profile's health path unless
  ``control.ready_path`` says otherwise; ``""``: no wait).
- ``start``, ``db_up`` and ``accept_run_inserts`` must be idempotent: the harness *heals* with
  them after every scenario that used control, also when it failed or was interrupted
  (:meth:`CommandControl.heal`): ``db_up`` if the database was taken away, then
  ``accept_run_inserts`` if inserts were rejected, then ``start`` for every instance killed and
  not started again. Every heal is attempted; any that fails is exit 4 too.

The owner of a run (the instance ``kill-owner`` kills) is the instance that answered the
winner's stream request: the racers are spread over the instance URLs round-robin, so the
harness knows which instance streams the winner. A deployment whose load balancer hides its
instances must list their own URLs in ``control.instances``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from raceharness.core.scenario import STEPS, Scenario
from raceharness.net.control_spec import Command, ControlSpec
from raceharness.net.target import Target
from raceharness.runtime import single_error
from raceharness.trial.context import TargetUnreachable

log = logging.getLogger(__name__)

TAIL_LINES, TAIL_CHARS = 15, 2000
READY_POLL_S = 0.1


class ControlCommandFailed(TargetUnreachable):
    """A control command exited non-zero or outlasted its timeout (exit 4); the message names
    the command and ends with the tail of its output."""


def instance_targets(target: Target) -> list[Target]:
    """One target per declared instance (``control.instances``; else ``--target`` alone),
    with ``--target``'s token, profile and TLS setting."""
    spec = target.profile.control
    if spec is None or not spec.instances:
        return [target]
    return [target if url == target.base_url.rstrip("/") else replace(target, base_url=url)
            for url in spec.instances]


def _kills(scenario: Scenario) -> bool:
    return "service-control" in scenario.requires or any(
        "service-control" in STEPS[step.do].requires for step in scenario.steps)


def scenario_targets(target: Target, scenario: Scenario) -> list[Target]:
    """The instances a scenario's requests go to against ``target``: every declared instance
    (up to the scenario's ``instances``) when it asks for several and two or more are declared;
    instance 0 when it kills one (its racers must reach a known instance, whose index is then
    the owner's); otherwise ``--target`` itself, as without a ``[control]`` section."""
    instances = instance_targets(target)
    if scenario.instances > 1 and len(instances) > 1:
        return instances[:scenario.instances]
    if _kills(scenario):
        return instances[:1]
    return [target]


def command_control(target: Target, report_dir: Path | None, scenario: str,
                    declared: dict[str, float] | None = None) -> CommandControl | None:
    """The nemesis of ``target``'s profile for one scenario, or None without ``[control]``.
    ``declared``: the service settings declared for the target (flags and ``[service]``)."""
    spec = target.profile.control
    if spec is None:
        return None
    return CommandControl(spec, instance_targets(target),
                          None if report_dir is None else report_dir / "control", scenario,
                          declared=dict(declared or {}))


@dataclass
class CommandControl:
    """The control interface of ``EmbeddedService`` (stack/embedded.py), by commands."""

    spec: ControlSpec
    targets: list[Target]        # by instance index (RACEHARNESS_INSTANCE_INDEX)
    log_root: Path | None = None  # None: a temporary folder, made on the first command
    scenario: str = "control"
    # the target's declared service settings (lease_s, heartbeat_s, ...): the crash steps'
    # bounds come from them even when the scenario assumes only some
    declared: dict[str, float] = field(default_factory=dict)
    killed: set[int] = field(default_factory=set)   # killed and not started again
    database_is_down: bool = False
    inserts_rejected: bool = False
    logs: list[Path] = field(default_factory=list)  # every command's output file, in order
    _log_dir: Path | None = field(default=None, repr=False)

    # -- what the steps may ask -------------------------------------------------------------

    def unavailable(self, action: str) -> str | None:
        """Why ``action`` cannot be done by the declared commands (None: it can)."""
        needs = {"kill": ("kill", "start"), "restart": ("kill", "start"),
                 "database": ("db_down", "db_up"),
                 "reject_run_inserts": ("reject_run_inserts", "accept_run_inserts")}
        if action == "hold_gate":
            return ("holding turns inside the service's gate takes a write transaction on its "
                    "database, which control commands cannot hold (embedded stack only)")
        missing = [name for name in needs.get(action, (action,)) if not self.spec.has(name)]
        if missing:
            return "the target profile declares no " + " and no ".join(
                f"control.{name}" for name in missing)
        return None

    @property
    def controls_database(self) -> bool:
        return self.spec.has("db_down", "db_up")

    # -- the interface of EmbeddedService ----------------------------------------------------

    async def kill(self, k: int) -> None:
        """Run ``kill`` for instance ``k``: it must be dead when the command returns."""
        self.killed.add(k)  # whatever the command does, the heal starts it again
        await trio.to_thread.run_sync(self.run, "kill", k)

    async def restart(self, k: int) -> None:
        """Run ``start`` for instance ``k``, then wait until it answers."""
        await trio.to_thread.run_sync(self.run, "start", k)
        self.killed.discard(k)

    def database_down(self) -> None:
        """Run ``db_down`` (a worker thread's call, as on the embedded stack)."""
        self.database_is_down = True
        self.run("db_down")

    def database_up(self) -> None:
        self.run("db_up")
        self.database_is_down = False

    def reject_run_inserts(self, on: bool) -> None:
        if on:
            self.inserts_rejected = True
            self.run("reject_run_inserts")
        else:
            self.run("accept_run_inserts")
            self.inserts_rejected = False

    # -- healing -----------------------------------------------------------------------------

    def broken(self) -> list[tuple[str, int | None]]:
        """The heals owed, in order: the database first (an instance may need it to start)."""
        owed: list[tuple[str, int | None]] = []
        if self.database_is_down:
            owed.append(("db_up", None))
        if self.inserts_rejected:
            owed.append(("accept_run_inserts", None))
        owed += [("start", k) for k in sorted(self.killed)]
        return owed

    async def heal(self) -> None:
        """Undo whatever is still broken (shielded: also on Ctrl-C and failures). Every heal is
        attempted; when any failed, :class:`ControlCommandFailed` names them all."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._heal)

    def _heal(self) -> None:
        owed = self.broken()
        failures: list[str] = []
        for name, k in owed:
            try:
                self.run(name, k)
            except ControlCommandFailed as exc:
                failures.append(str(exc))
                continue
            if name == "db_up":
                self.database_is_down = False
            elif name == "accept_run_inserts":
                self.inserts_rejected = False
            else:
                self.killed.discard(k)  # type: ignore[arg-type]
        if owed:
            healed = ", ".join(f"control.{name}" + ("" if k is None else f" (instance {k})")
                               for name, k in owed)
            log.warning("control: healed the deployment after %s: ran %s%s", self.scenario,
                        healed, f"; {len(failures)} failed" if failures else "")
        if failures:
            raise ControlCommandFailed("healing the deployment failed: " + "\n".join(failures))

    async def heal_on_exit(self, exc_type: type[BaseException] | None,
                           exc: BaseException | None, tb: TracebackType | None) -> bool:
        """For an ``AsyncExitStack``: heal; a failing heal after a failing command names both
        (exit 4); after another failure (Ctrl-C, a crash) that failure stays the run's end and
        the heal's is logged."""
        try:
            await self.heal()
        except ControlCommandFailed as failed:
            if exc is None:
                raise
            original = single_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            if isinstance(original, ControlCommandFailed):
                raise ControlCommandFailed(f"{original}\n{failed}") from exc
            log.error("%s", failed)
        return False

    # -- running one command -----------------------------------------------------------------

    def run(self, name: str, k: int | None = None) -> None:
        """Run command ``name`` (for instance ``k``), bounded; raise ControlCommandFailed if it
        fails or hangs. After ``start``, wait until the instance answers."""
        command = self.spec.command(name)
        if command is None:
            raise ControlCommandFailed(f"control.{name}: not declared in the target profile")
        what = f"control.{name}" + ("" if k is None else
                                    f" (instance {k}, {self.targets[k].base_url})")
        path = self._log_path(name, k)
        env = self._env(name, k)
        t0 = time.monotonic()
        with open(path, "ab") as out:
            out.write(f"# {what} started {_utc()}\n".encode())
            missing = [v for v in self.spec.pass_env if v not in os.environ]
            if missing:
                out.write(f"# pass_env: not set in the harness's environment: "
                          f"{', '.join(missing)}\n".encode())
            out.flush()
            start = out.tell()
            try:
                status = _run_bounded(command, env, self.spec.cwd, out)
            except OSError as exc:  # no /bin/sh, the profile's folder gone
                raise ControlCommandFailed(f"{what} could not be run: {exc}") from None
            took = time.monotonic() - t0
            end = os.fstat(out.fileno()).st_size  # the command wrote through its own fd
            out.write(f"\n# {'timed out' if status is None else f'exit status {status}'} "
                      f"after {took:.2f} s\n".encode())
        if status is None:
            raise ControlCommandFailed(
                f"{what} did not finish within {command.timeout_s:g} s (its process group "
                f"was killed); its output ({path}) ends with:\n{_tail(path, start, end)}")
        if status != 0:
            raise ControlCommandFailed(
                f"{what} exited with status {status} after {took:.1f} s; its output "
                f"({path}) ends with:\n{_tail(path, start, end)}")
        log.info("control: %s done in %.2f s", what, took)
        if name == "start" and k is not None:
            self._wait_ready(what, command, k, path, (start, end))

    def _wait_ready(self, what: str, command: Command, k: int, path: Path,
                    output: tuple[int, int]) -> None:
        target = self.targets[k]
        ready = self.spec.ready_path
        if ready is None:
            ready = target.profile.paths.health
        if not ready:
            return
        url = target.base_url.rstrip("/") + ready
        last = "no answer"
        deadline = time.monotonic() + command.timeout_s
        with httpx.Client(timeout=2.0, verify=not target.insecure) as client:
            while time.monotonic() < deadline:
                try:
                    status = client.get(url).status_code
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                else:
                    if status < 500:
                        return
                    last = f"status {status}"
                time.sleep(READY_POLL_S)  # another process's readiness: nothing to await
        raise ControlCommandFailed(
            f"{what} returned, but GET {url} did not answer below 500 within "
            f"{command.timeout_s:g} s (last: {last}); its output ({path}) ends with:\n"
            f"{_tail(path, *output)}")

    def _env(self, name: str, k: int | None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/")}
        env.update({v: os.environ[v] for v in self.spec.pass_env if v in os.environ})
        env.update(self.spec.env)
        env["RACEHARNESS_CONTROL"] = name
        if k is not None:
            url = self.targets[k].base_url
            parts = urlsplit(url)
            env.update(RACEHARNESS_INSTANCE_INDEX=str(k), RACEHARNESS_INSTANCE_URL=url,
                       RACEHARNESS_INSTANCE_HOST=parts.hostname or "",
                       RACEHARNESS_INSTANCE_PORT=str(
                           parts.port or (443 if parts.scheme == "https" else 80)))
        return env

    def _log_path(self, name: str, k: int | None) -> Path:
        if self._log_dir is None:
            if self.log_root is None:
                self.log_root = Path(tempfile.mkdtemp(prefix="raceharness-control-"))
            folder = self.log_root / _safe(self.scenario)
            folder.mkdir(parents=True, exist_ok=True)
            self._log_dir = folder
        seq = len(self.logs) + 1
        path = self._log_dir / f"{seq:02d}-{name}{'' if k is None else f'-{k}'}.log"
        self.logs.append(path)
        return path


def _run_bounded(command: Command, env: dict[str, str], cwd: str | None, out: Any
                 ) -> int | None:
    """The command's exit status, or None when it outlasted its timeout (its process group,
    and so whatever it started that is still in it, killed)."""
    proc = subprocess.Popen(["/bin/sh", "-c", command.run], env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        return proc.wait(timeout=command.timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
    except BaseException:  # interrupted while waiting: leave nothing running
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def _tail(path: Path, start: int, end: int) -> str:
    """The last lines of a command's output (bytes ``start:end`` of its log file)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read(max(0, end - start)).decode("utf-8", errors="replace")
    except OSError:
        return "(no output file)"
    tail = "\n".join(text.rstrip("\n").splitlines()[-TAIL_LINES:])[-TAIL_CHARS:]
    return tail if tail.strip() else "(no output)"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "control"


def _utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

