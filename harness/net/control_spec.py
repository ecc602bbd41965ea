"""The ``[control]`` section of a target profile: how the harness may break and heal a
deployment it did not start (a *nemesis*, as Jepsen calls it), loaded strictly.

The user says *how* (shell commands), the harness decides *when* (the scenario's steps). Every
field is optional; a command the profile does not declare is a capability the target lacks, and
the scenarios needing it are skipped with the reason::

    [control]
    instances = ["http://10.0.0.5:8080", "http://10.0.0.6:8080"]   # default: [--target]
    timeout_s = 30                    # each command's default bound (seconds)
    kill = "ssh app@$HOST sudo systemctl kill --signal=KILL chat-api"   # one instance, a crash
    start = { run = "ssh app@$HOST sudo systemctl start chat-api", timeout_s = 90 }
    db_down = "..."                   # the service's database goes away (connections refused,
    db_up = "..."                     #   every backend terminated) / comes back
    reject_run_inserts = "..."        # optional: only run INSERTs fail (db-outage's exact probe)
    accept_run_inserts = "..."
    ready_path = "/healthz"           # after start: until GET answers below 500 (default: the
                                      # profile's health path; "" : no wait)
    pass_env = ["PGPASSWORD"]         # variables passed through from the harness's environment

    [control.env]                     # more variables for every command
    HOST = "10.0.0.5"

A command is a string (run with ``/bin/sh -c``) or a table ``{run = "...", timeout_s = N}``.
Commands come in pairs, because the harness heals what it breaks: ``kill`` needs ``start``,
``db_down`` needs ``db_up``, ``reject_run_inserts`` needs ``accept_run_inserts``.

Capabilities (core/scenario.py CAPABILITIES): ``kill`` + ``start`` give ``service-control``,
``db_down`` + ``db_up`` give ``db-control``, two or more ``instances`` give
``multi-instance``. How the commands run is ``shell/control.py``.

Pure: errors are :class:`ControlSpecError` naming the file, the field and the value (the
profile loader turns them into its ``ConfigError``: exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TIMEOUT_S = 30.0
# The commands, in the order they are documented; each breaking one with its healing one.
COMMANDS = ("kill", "start", "db_down", "db_up", "reject_run_inserts", "accept_run_inserts")
PAIRS = (("kill", "start"), ("db_down", "db_up"), ("reject_run_inserts", "accept_run_inserts"))
_OTHER_KEYS = ("instances", "timeout_s", "env", "pass_env", "ready_path")
# Variables the harness sets itself for every command (shell/control.py): not the profile's.
RESERVED_ENV = frozenset({"PATH", "HOME"})
RESERVED_PREFIX = "RACEHARNESS_"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ControlSpecError(ValueError):
    """A bad ``[control]`` section; the message names the file, the field and the value."""


@dataclass(frozen=True)
class Command:
    """One declared command: its name (``kill``), its shell text and its bound."""

    name: str
    run: str = field(repr=False)  # may hold host names or paths: never logged
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class ControlSpec:
    commands: tuple[Command, ...] = ()
    instances: tuple[str, ...] = ()        # () : the one instance is --target
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    pass_env: tuple[str, ...] = ()
    ready_path: str | None = None          # None: the profile's health path
    cwd: str | None = None                 # the profile's folder: relative script paths work

    def command(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)

    def has(self, *names: str) -> bool:
        return all(self.command(name) is not None for name in names)

    def capabilities(self) -> frozenset[str]:
        """What the declared commands let the harness do (core/scenario.py CAPABILITIES)."""
        have = set()
        if self.has("kill", "start"):
            have.add("service-control")
        if self.has("db_down", "db_up"):
            have.add("db-control")
        if len(self.instances) >= 2:
            have.add("multi-instance")
        return frozenset(have)


def _seconds(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ControlSpecError(f"{where}: {key}: expected a number of seconds > 0, "
                               f"got {value!r}")
    return float(value)


def _command(where: str, name: str, value: Any, default_s: float) -> Command:
    key = f"control.{name}"
    if isinstance(value, str):
        run, timeout_s = value, default_s
    elif isinstance(value, dict):
        unknown = [k for k in value if k not in ("run", "timeout_s")]
        if unknown:
            raise ControlSpecError(f"{where}: {key}.{unknown[0]}: unknown field; expected "
                                   "run, timeout_s")
        if "run" not in value:
            raise ControlSpecError(f"{where}: {key}.run: required (the shell command)")
        run = value["run"]
        if not isinstance(run, str):
            raise ControlSpecError(f"{where}: {key}.run: expected a command string, "
                                   f"got {run!r}")
        timeout_s = _seconds(where, f"{key}.timeout_s", value.get("timeout_s", default_s))
    else:
        raise ControlSpecError(f"{where}: {key}: expected a command string or a table "
                               f"{{run = \"...\", timeout_s = N}}, got {value!r}")
    if not run.strip():
        raise ControlSpecError(f"{where}: {key}: the command is empty")
    return Command(name, run, timeout_s)


def _instances(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ControlSpecError(f"{where}: control.instances: expected a non-empty array of "
                               f"http(s) URLs, got {value!r}")
    seen: set[str] = set()
    for i, url in enumerate(value):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ControlSpecError(f"{where}: control.instances[{i}]: expected an http(s) URL, "
                                   f"got {url!r}")
        if url.rstrip("/") in seen:
            raise ControlSpecError(f"{where}: control.instances[{i}]: {url!r} is listed twice")
        seen.add(url.rstrip("/"))
    return tuple(url.rstrip("/") for url in value)


def _env_name(where: str, key: str, name: Any) -> str:
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise ControlSpecError(f"{where}: {key}: expected an environment variable name, "
                               f"got {name!r}")
    if name in RESERVED_ENV or name.startswith(RESERVED_PREFIX):
        raise ControlSpecError(f"{where}: {key}: {name} is set by the harness itself")
    return name


def _env(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ControlSpecError(f"{where}: control.env: expected a table of strings, "
                               f"got {value!r}")
    pairs = []
    for name, item in value.items():
        _env_name(where, f"control.env.{name}", name)
        if not isinstance(item, str):
            # the value is not echoed: the env table is where a profile may keep a secret
            kind = {"int": "an integer", "float": "a number", "bool": "a boolean",
                    "list": "an array", "dict": "a table"}.get(type(item).__name__, "a value")
            raise ControlSpecError(f"{where}: control.env.{name}: expected a string, got "
                                   f"{kind}")
        pairs.append((name, item))
    return tuple(pairs)


def parse_control(value: Any, where: str) -> ControlSpec:
    """The ``[control]`` table of the profile file ``where``."""
    if not isinstance(value, dict):
        raise ControlSpecError(f"{where}: [control] must be a table")
    for key in value:
        if key not in COMMANDS and key not in _OTHER_KEYS:
            raise ControlSpecError(f"{where}: control.{key}: unknown field; expected one of "
                                   f"{', '.join((*COMMANDS, *_OTHER_KEYS))}")
    default_s = _seconds(where, "control.timeout_s", value.get("timeout_s", DEFAULT_TIMEOUT_S))
    commands = {name: _command(where, name, value[name], default_s)
                for name in COMMANDS if name in value}
    for breaks, heals in PAIRS:
        for one, other in ((breaks, heals), (heals, breaks)):
            if one in commands and other not in commands:
                raise ControlSpecError(f"{where}: control.{one}: needs control.{other} too "
                                       f"(the harness heals what it breaks: {breaks} is undone "
                                       f"by {heals})")
    pass_env = value.get("pass_env", [])
    if not isinstance(pass_env, list):
        raise ControlSpecError(f"{where}: control.pass_env: expected an array of variable "
                               f"names, got {pass_env!r}")
    ready = value.get("ready_path")
    if ready is not None and (not isinstance(ready, str) or ready and not ready.startswith("/")):
        raise ControlSpecError(f"{where}: control.ready_path: expected a path starting with "
                               f"'/' (or \"\" for no wait), got {ready!r}")
    folder = Path(where).parent if where and not where.startswith("<") else None
    return ControlSpec(
        commands=tuple(commands.values()),
        instances=_instances(where, value["instances"]) if "instances" in value else (),
        env=_env(where, value.get("env", {})),
        pass_env=tuple(_env_name(where, f"control.pass_env[{i}]", name)
                       for i, name in enumerate(pass_env)),
        ready_path=ready,
        cwd=None if folder is None else str(folder.resolve()))
