"""Settings of the reference server, read from the environment or built by the CLI.

Bad values raise :class:`SettingsError` naming the variable and the value, at start-up.
Secrets (the provider key, the DSN's password) are never part of ``repr``.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from raceharness.reference.faults import Fault, UnknownFaultError, parse_fault_list

MIB = 1024 * 1024
# DATABASE_POOLER values: Postgres reached directly, or through a transaction pooler.
DATABASE_POOLERS = ("none", "transaction")


class SettingsError(ValueError):
    """A setting has a bad value (the operator's to fix); the message names it."""


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Settings:
    database_url: str = field(repr=False)
    provider_base_url: str = "http://127.0.0.1:8788/v1"
    provider_api_key: str = field(default="", repr=False)
    provider_model: str = "fake-model"
    provider_connect_timeout_s: float = 5.0
    provider_read_timeout_s: float = 30.0
    autonomous_runs: bool = False
    heartbeat_interval_s: float = 5.0
    lease_s: float = 30.0
    reaper_interval_s: float = 10.0
    sse_ping_interval_s: float = 15.0
    stop_notify: bool = True
    stop_wait_s: float = 5.0
    instance_id: str = field(default_factory=_default_instance_id)
    faults: frozenset[Fault] = frozenset()
    max_body_bytes: int = MIB
    pool_min_size: int = 4
    pool_max_size: int = 40
    pool_timeout_s: float = 5.0
    # A pool connection that cannot be re-made for this long is given up (the pool grows anew on
    # demand), so after a long outage the pool reconnects at once instead of after psycopg_pool's
    # exponential backoff (which grows with the outage's length).
    pool_reconnect_timeout_s: float = 10.0
    # After a failed terminal write (the database gone), the run retries it with backoff for
    # this long; then the lease (no longer renewed) and the reaper end the run.
    settle_retry_s: float = 120.0
    # The pid of the process that started this server (REFERENCE_PARENT_PID): when this
    # server's parent is no longer that process, it shuts down (a harness killed with SIGKILL
    # leaves no server behind).
    parent_pid: int | None = None
    apply_schema: bool = True
    # How many of the chat's messages the provider gets: the newest ones, oldest first, the new
    # user message always the last of them. Bounds the request (and its cost) on a long chat.
    provider_history_messages: int = 50
    # DATABASE_POOLER: what DATABASE_URL reaches. "none": Postgres itself (or a session-mode
    # pooler). "transaction": a transaction-pooling pooler (PgBouncer pool_mode=transaction),
    # where each transaction may run on another server connection and no session state
    # survives: no server-side prepared statements (PgBouncer < 1.21 cannot route them, and
    # 1.21+ only with max_prepared_statements) and no session SET; LISTEN goes to LISTEN_DSN.
    database_pooler: str = "none"
    # LISTEN_DSN: a direct (session) connection to the same database, past the pooler, for the
    # one connection that LISTENs for cross-instance stops. Empty: DATABASE_URL (which must
    # then reach Postgres itself: notifications do not cross a transaction pooler).
    listen_dsn: str = field(default="", repr=False)

    @property
    def pooled(self) -> bool:
        """DATABASE_URL goes through a transaction pooler: keep no session state."""
        return self.database_pooler == "transaction"

    @property
    def listen_url(self) -> str:
        """Where the stop listener connects: LISTEN_DSN, else DATABASE_URL."""
        return self.listen_dsn or self.database_url

    def __post_init__(self) -> None:
        if not self.database_url:
            raise SettingsError("DATABASE_URL: required (a libpq DSN), got an empty value")
        for name in ("provider_connect_timeout_s", "provider_read_timeout_s",
                     "heartbeat_interval_s", "lease_s", "reaper_interval_s",
                     "sse_ping_interval_s", "stop_wait_s", "pool_timeout_s",
                     "pool_reconnect_timeout_s", "settle_retry_s"):
            value = getattr(self, name)
            if not value > 0:
                raise SettingsError(f"{name.upper()}: must be > 0, got {value!r}")
        if self.lease_s <= self.heartbeat_interval_s:
            raise SettingsError(
                f"LEASE_S: must exceed HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s!r}), "
                f"got {self.lease_s!r}; a live run would be reaped between heartbeats"
            )
        if not 1 <= self.pool_min_size <= self.pool_max_size:
            raise SettingsError(
                f"POOL_MIN_SIZE/POOL_MAX_SIZE: need 1 <= min <= max, "
                f"got {self.pool_min_size!r}/{self.pool_max_size!r}"
            )
        if self.parent_pid is not None and not self.parent_pid > 0:
            raise SettingsError(f"REFERENCE_PARENT_PID: must be a pid > 0, got {self.parent_pid!r}")
        if not self.max_body_bytes > 0:
            raise SettingsError(f"MAX_BODY_BYTES: must be > 0, got {self.max_body_bytes!r}")
        if not self.provider_history_messages > 0:
            raise SettingsError("PROVIDER_HISTORY_MESSAGES: must be > 0 (the new user message "
                                f"is always sent), got {self.provider_history_messages!r}")
        object.__setattr__(self, "database_pooler", self.database_pooler.strip().lower())
        if self.database_pooler not in DATABASE_POOLERS:
            raise SettingsError(f"DATABASE_POOLER: expected one of {', '.join(DATABASE_POOLERS)}"
                                f", got {self.database_pooler!r}")
        if self.pooled and self.stop_notify and not self.listen_dsn:
            raise SettingsError(
                "LISTEN_DSN: required with DATABASE_POOLER=transaction and STOP_NOTIFY=true "
                "(LISTEN needs a session connection to Postgres itself, past the pooler); or "
                "set STOP_NOTIFY=false and a stop received by another instance arrives with "
                "the heartbeat poll (HEARTBEAT_INTERVAL_S), got an empty value")
        if not self.provider_base_url.startswith(("http://", "https://")):
            url = self.provider_base_url
            scheme = url.split("://", 1)[0][:20] if "://" in url else "none"
            raise SettingsError(
                f"PROVIDER_BASE_URL: must be an http(s) URL, got scheme {scheme!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            var = env_var(f.name)
            raw = env.get(var)
            if f.name == "parent_pid":
                raw = raw or None  # empty: unset
            if raw is None:
                continue
            values[f.name] = _convert(f.name, var, raw, f.type)
        values.update(overrides)
        if "database_url" not in values:
            raise SettingsError("DATABASE_URL: required (a libpq DSN), not set")
        return cls(**values)  # type: ignore[arg-type]


_ENV_NAMES = {"faults": "REFERENCE_FAULTS", "parent_pid": "REFERENCE_PARENT_PID"}


def env_var(field_name: str) -> str:
    """The environment variable that sets the field ``field_name``."""
    return _ENV_NAMES.get(field_name, field_name.upper())


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert(name: str, var: str, raw: str, typ: object) -> object:
    if name == "faults":
        try:
            return parse_fault_list(raw)
        except UnknownFaultError as exc:
            raise SettingsError(f"{var}: {exc}") from None
    text = raw.strip()
    if isinstance(typ, str) and typ.endswith(" | None"):  # set means a value; unset is None
        typ = typ.removesuffix(" | None")
    if typ in ("bool", bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise SettingsError(f"{var}: expected true/false, got {raw!r}")
    if typ in ("float", float):
        try:
            return float(text)
        except ValueError:
            raise SettingsError(f"{var}: expected a number, got {raw!r}") from None
    if typ in ("int", int):
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"{var}: expected an integer, got {raw!r}") from None
    return raw
