"""Whether the database answers: what ``/readyz`` reports beside the model."""

from __future__ import annotations

import asyncio
import time

from trafficcast.app.db import UNAVAILABLE, Database, reason
from trafficcast.app.telemetry import Metrics

# Probes and load balancers may ask often: the database is pinged at most this often (seconds).
CHECK_EVERY_S = 1.0


class DatabaseHealth:
    """The last ping's outcome, refreshed at most every :data:`CHECK_EVERY_S` seconds, each ping
    bounded by ``timeout_s``; sets the ``trafficcast_database_up`` gauge."""

    def __init__(self, db: Database, timeout_s: float, metrics: Metrics) -> None:
        self.db = db
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._checked_at = -float("inf")
        self._problem: str | None = None

    async def problem(self) -> str | None:
        """None when the database answered its last ping, else why not."""
        if time.monotonic() - self._checked_at < CHECK_EVERY_S:
            return self._problem
        try:
            await asyncio.wait_for(asyncio.to_thread(self.db.ping), self.timeout_s)
            problem = None
        except TimeoutError:
            problem = f"database {self.db.description} unavailable (no answer)"
        except UNAVAILABLE as exc:
            problem = f"database {self.db.description} unavailable ({reason(exc)})"
        self._checked_at, self._problem = time.monotonic(), problem
        self.metrics.database_up.set(0 if problem else 1)
        return problem
