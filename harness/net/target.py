"""Where and how to reach the system under test: URL, credentials and a *target profile*.

A profile picks the target's adapter (``adapter = "ai-chat"``, the default; ``"langgraph"``; or
``"template"``, a server declared in the file: see ``adapters/template.py``) and configures it.
The ai-chat profile speaks protocol.md. A deployment whose paths, auth header or conflict answer
differ is described by a TOML file, so it can be tested without code changes. Every section and
every field is optional (a missing one keeps the protocol's value); the complete profile, with
the protocol's values::

    [paths]
    stream = "/api/ai-chat/stream"
    stop = "/api/ai-chat/stop"
    run = "/api/ai-chat/run"
    runs = "/api/ai-chat/runs"      # "" when the deployment has no such route
    health = "/healthz"

    [auth]
    header = "authorization"
    scheme = "Bearer"               # "" to send the token as the whole header value

    [conflict]                      # the answer to a turn on a chat another run holds
    status = 409                    # its HTTP status (4xx or 5xx; a 429 that is not this
                                    # answer is read as a rate limit: undecided)
    code = "A_RUN_ALREADY_ACTIVE"   # the JSON body's `code`; "" when there is no code to check
    holder = "activeRunId"          # the JSON field naming the holder's run id; "" when the
                                    # answer names none (race/holder-named is then not
                                    # checkable on this target, and says why)
    pattern = ""                    # a regular expression the answer's body must match

    [service]                       # what the deployment is configured with (optional; the
    provider_timeout_s = 300        # flags --provider-timeout, --lease, --heartbeat win):
    lease_s = 30                    # scenarios that rely on one run only when it is declared
    heartbeat_s = 5

``[conflict]`` is what every checker recognises as a conflict (``race/losers-409``,
``chats/*``, ``recovery/lease-reclaims``); the engine records it in each trial's meta
(``conflict``), and the racers read the holder's id from the ``holder`` field of an error body.
With ``code`` and ``holder`` both ``""`` the answer need not be JSON.

An optional ``[control]`` section tells the harness how to break and heal the deployment
(shell commands, instance URLs): ``net/control_spec.py`` and ``examples/control/``.

Errors name the file, the field and the value.
"""

from __future__ import annotations

import re
import ssl
import tomllib
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from raceharness.adapters import BUILTIN_ADAPTERS, builtin_profile_data
from raceharness.adapters.aichat import AiChatAdapter
from raceharness.adapters.base import Adapter, Conflict
from raceharness.adapters.template import (
    TEMPLATE_KEYS,
    TEMPLATE_SECTIONS,
    ProfileError,
    TemplateAdapter,
    TemplateSpec,
    parse_template,
)
from raceharness.net.control_spec import ControlSpec, ControlSpecError, parse_control
from raceharness.net.http1 import Endpoint

__all__ = ["Auth", "ConfigError", "Conflict", "Paths", "Profile", "Service", "Target",
           "load_profile", "profile_from_data"]


class ConfigError(ValueError):
    """Bad user configuration (flags, profile files): exit code 2."""


@dataclass(frozen=True)
class Paths:
    stream: str = "/api/ai-chat/stream"
    stop: str = "/api/ai-chat/stop"
    run: str = "/api/ai-chat/run"
    runs: str = "/api/ai-chat/runs"
    health: str = "/healthz"


@dataclass(frozen=True)
class Auth:
    header: str = "authorization"
    scheme: str = "Bearer"


@dataclass(frozen=True)
class Service:
    """The deployment's settings the scenarios may rely on (scenario.SERVICE_SETTINGS)."""

    provider_timeout_s: float | None = None
    lease_s: float | None = None
    heartbeat_s: float | None = None

    def declared(self) -> dict[str, float]:
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name))}


@dataclass(frozen=True)
class Profile:
    paths: Paths = field(default_factory=Paths)
    auth: Auth = field(default_factory=Auth)
    conflict: Conflict = field(default_factory=Conflict)
    service: Service = field(default_factory=Service)
    # a declared adapter (profile v2; adapters/template.py); None: the ai-chat protocol
    template: TemplateSpec | None = None
    # [control]: how the harness may kill, start and take the database away (control_spec.py)
    control: ControlSpec | None = None

    @cached_property
    def adapter(self) -> Adapter:
        """The target's wire shape: the profile's template, else the ai-chat protocol."""
        if self.template is not None:
            return TemplateAdapter(self.template, self.conflict)
        return AiChatAdapter(self.paths, self.conflict)


_SECTIONS: dict[str, type] = {"paths": Paths, "auth": Auth, "conflict": Conflict,
                              "service": Service, "control": ControlSpec}


def load_profile(path: str | Path | None = None, adapter: str | None = None) -> Profile:
    """The profile in ``path`` (TOML), on top of the built-in adapter ``adapter`` names (or the
    file's own ``adapter = "..."``); with no path, the built-in adapter's profile itself."""
    if path is None:
        return profile_from_data({}, f"--adapter {adapter}", adapter)
    where = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such profile file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read profile file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    return profile_from_data(data, where, adapter)


def profile_from_data(data: dict[str, Any], where: str, adapter: str | None = None) -> Profile:
    """A profile from its TOML tables. ``adapter = "ai-chat"`` (the default) takes the v1
    sections; ``"template"`` the v2 ones (adapters/template.py); a built-in's name
    (``"langgraph"``) starts from that built-in's profile, which the file's tables override."""
    named = data.get("adapter")
    if named is not None and not isinstance(named, str):
        raise ConfigError(f"{where}: adapter: expected a name, got {named!r}")
    if adapter and named and adapter != named and named != "template":
        raise ConfigError(f"{where}: adapter: the file says {named!r}, --adapter says "
                          f"{adapter!r}")
    name = adapter or named or "ai-chat"
    if name in BUILTIN_ADAPTERS and name != "ai-chat":
        data = _merge(builtin_profile_data(name), {k: v for k, v in data.items()
                                                   if k != "adapter"})
        name = "template"
    if name not in ("ai-chat", "template"):
        raise ConfigError(f"{where}: adapter: unknown adapter {name!r}; expected one of "
                          f"{', '.join([*BUILTIN_ADAPTERS, 'template'])}")
    template: TemplateSpec | None = None
    if name == "template":
        tables = {k: v for k, v in data.items() if k in TEMPLATE_SECTIONS or k in TEMPLATE_KEYS}
        try:
            template = parse_template(tables, where)
        except ProfileError as exc:
            raise ConfigError(str(exc)) from None
        if "paths" in data:
            raise ConfigError(f"{where}: [paths] is for the ai-chat adapter; a template "
                              "profile names its [routes]")
    else:
        strangers = [k for k in data if k in TEMPLATE_SECTIONS or k in ("name", "provides")]
        if strangers:
            raise ConfigError(f"{where}: [{strangers[0]}] needs adapter = \"template\" (a "
                              "declared adapter); the ai-chat adapter takes [paths]")
    data = {k: v for k, v in data.items() if k not in TEMPLATE_SECTIONS and k not in TEMPLATE_KEYS}
    profile = Profile()
    for section, value in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]; expected one of "
                              f"{', '.join(_SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        if section == "control":  # its own strict loader: net/control_spec.py
            try:
                profile = replace(profile, control=parse_control(value, where))
            except ControlSpecError as exc:
                raise ConfigError(str(exc)) from None
            continue
        cls = _SECTIONS[section]
        known = {f.name: f for f in fields(cls)}
        current = getattr(profile, section)
        updates: dict[str, Any] = {}
        for key, item in value.items():
            if key not in known:
                raise ConfigError(f"{where}: {section}.{key}: unknown field; expected one of "
                                  f"{', '.join(known)}")
            if section == "service":
                if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
                    raise ConfigError(f"{where}: {section}.{key}: expected a number of "
                                      f"seconds > 0, got {item!r}")
                updates[key] = float(item)
                continue
            expected = int if known[key].type in ("int", int) else str
            if type(item) is not expected:
                raise ConfigError(f"{where}: {section}.{key}: expected "
                                  f"{expected.__name__}, got {item!r}")
            if section == "paths" and item and not str(item).startswith("/"):
                raise ConfigError(f"{where}: {section}.{key}: must start with '/', got {item!r}")
            if section == "conflict" and key == "pattern" and item:
                try:
                    re.compile(item)
                except re.error as exc:
                    raise ConfigError(f"{where}: {section}.{key}: not a regular expression "
                                      f"({exc}): {item!r}") from None
            if section == "conflict" and key == "status" and not 400 <= item <= 599:
                raise ConfigError(f"{where}: {section}.{key}: expected a 4xx or 5xx status, "
                                  f"got {item!r}")
            updates[key] = item
        profile = replace(profile, **{section: replace(current, **updates)})
    return replace(profile, template=template)


@dataclass(frozen=True)
class Target:
    """A running deployment: base URL, the user's token, optionally a second user's token."""

    base_url: str
    token: str = field(repr=False)
    other_token: str | None = field(default=None, repr=False)
    profile: Profile = field(default_factory=Profile)
    insecure: bool = False

    def endpoint(self) -> Endpoint:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--target: expected an http(s) URL, got {self.base_url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ctx = None
        if parts.scheme == "https":
            ctx = ssl.create_default_context()
            if self.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        return Endpoint(parts.scheme, parts.hostname, port, ctx, wire=self.profile.adapter)

    @property
    def prefix(self) -> str:
        return urlsplit(self.base_url).path.rstrip("/")

    def auth_headers(self, token: str | None = None) -> list[tuple[str, str]]:
        value = token or self.token
        scheme = self.profile.auth.scheme
        return [(self.profile.auth.header, f"{scheme} {value}" if scheme else value)]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over``'s tables on ``base``'s, key by key (a built-in profile, then the user's)."""
    merged = dict(base)
    for key, value in over.items():
        merged[key] = (_merge(base[key], value) if isinstance(value, dict)
                       and isinstance(base.get(key), dict) else value)
    return merged
