"""Everything one instance of the reference server holds while it runs."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from reference.auth import Authenticator
from reference.gate import Gate
from reference.metrics import Metrics
from reference.provider import ProviderClient
from reference.registry import Registry
from reference.runner import RunDriver
from reference.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    pool: AsyncConnectionPool
    gate: Gate
    provider: ProviderClient
    metrics: Metrics
    registry: Registry
    driver: RunDriver
    auth: Authenticator
