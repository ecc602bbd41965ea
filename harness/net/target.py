"""Where and how to reach the system under test: URL, credentials and a *target profile*.

The default profile speaks protocol.md. A deployment whose paths, auth header or conflict answer
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
                                    # answer names no holder (race/losers-409 is then never
                                    # valid: the holder part cannot be checked)

    [service]                       # what the deployment is configured with (optional; the
    provider_timeout_s = 300        # flags --provider-timeout, --lease, --heartbeat win):
    lease_s = 30                    # scenarios that rely on one run only when it is declared
    heartbeat_s = 5

``[conflict]`` is what every checker recognises as a conflict (``race/losers-409``,
``chats/*``, ``recovery/lease-reclaims``); the engine records it in each trial's meta
(``conflict``, and ``conflict_holder_id: false`` when ``holder = ""``), and the racers read the
holder's id from the ``holder`` field of an error body. With ``code`` and ``holder`` both ``""``
the answer's body is not read at all (it need not be JSON).

Errors name the file, the field and the value.
"""

from __future__ import annotations

import ssl
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from raceharness.core.checks.base import CONFLICT_HOLDER, CONFLICT_STATUS, RUN_ALREADY_ACTIVE
from raceharness.net.http1 import Endpoint


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
class Conflict:
    """The target's answer to a turn on a chat another run holds (protocol.md §2.3)."""

    status: int = CONFLICT_STATUS
    code: str = RUN_ALREADY_ACTIVE  # "": no code to check
    holder: str = CONFLICT_HOLDER   # "": the answer names no holder

    def meta(self) -> dict[str, Any]:
        """What a trial's meta records of it (``core.checks.base.conflict_answer`` reads it)."""
        return {"status": self.status, "code": self.code, "holder": self.holder}


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


_SECTIONS: dict[str, type] = {"paths": Paths, "auth": Auth, "conflict": Conflict,
                              "service": Service}


def load_profile(path: str | Path) -> Profile:
    where = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such profile file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read profile file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    profile = Profile()
    for section, value in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]; expected one of "
                              f"{', '.join(_SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
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
            if section == "conflict" and key == "status" and not 400 <= item <= 599:
                raise ConfigError(f"{where}: {section}.{key}: expected a 4xx or 5xx status, "
                                  f"got {item!r}")
            updates[key] = item
        profile = replace(profile, **{section: replace(current, **updates)})
    return profile


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
        return Endpoint(parts.scheme, parts.hostname, port, ctx,
                        conflict_holder=self.profile.conflict.holder)

    @property
    def prefix(self) -> str:
        return urlsplit(self.base_url).path.rstrip("/")

    def auth_headers(self, token: str | None = None) -> list[tuple[str, str]]:
        value = token or self.token
        scheme = self.profile.auth.scheme
        return [(self.profile.auth.header, f"{scheme} {value}" if scheme else value)]
