"""API keys' ``last_used_at``, moved forward off the request path: one UPDATE a second for all keys used.

Part of the core, not of a plugin: a key's last use shows in the admin panel whatever plugins are
installed. Times wait in memory (one entry per key, so bounded by the number of keys) while the
database is away, and are written at shutdown.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import uuid

import asyncpg

from riceball_proxy.db import api_keys
from riceball_proxy.faults import FailureLog, database_away

logger = logging.getLogger(__name__)

#: Seconds a write may take before the database counts as unreachable.
WRITE_TIMEOUT = 10.0


class LastUsedWriter:
    """Collects each key's latest successful use and writes them every ``interval`` seconds."""

    def __init__(self, pool: asyncpg.Pool, *, interval: float = 1.0):
        self.pool = pool
        self.interval = interval
        self.pending: dict[uuid.UUID, datetime.datetime] = {}
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # a flush returns once what was pending when it was called is written
        self.failures = FailureLog(logger, "the keys' last-use writer")

    def used(self, key_id: uuid.UUID, at: datetime.datetime) -> None:
        """Note a successful call with a key (never blocks)."""
        previous = self.pending.get(key_id)
        if previous is None or previous < at:
            self.pending[key_id] = at

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="riceball-last-used")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> bool:
        """Write what waits; False (the times kept for the next try) when the database is away."""
        async with self._lock:
            if not self.pending:
                return True
            used, self.pending = self.pending, {}
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await api_keys.touch_last_used(self.pool, used)
            except Exception as exc:
                away = database_away(exc)
                self.failures.failed(exc, retrying=away)
                if not away:  # a bug or bad data: no retry fixes it, and these times are not worth a loop
                    return True
                for key_id, at in used.items():  # unreachable: kept for the next flush
                    self.used(key_id, at)
                return False
            self.failures.recovered()
            return True

    async def close(self) -> None:
        """Stop, and write what waits."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
