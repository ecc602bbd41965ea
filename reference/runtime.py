"""Everything one instance of the reference server holds while it runs."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from raceharness.reference.auth import Authenticator
from raceharness.reference.gate import Gate
from raceharness.reference.metrics import Metrics
from raceharness.reference.provider import ProviderClient
from raceharness.reference.registry import Registry
from raceharness.reference.runner import RunDriver
from raceharness.reference.settings import Settings


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
