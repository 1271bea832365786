"""Providers whose upstream refused the gateway's credentials (a bad, revoked or expired provider key),
noted off the request path in ``provider_alerts`` so that the admin panel shows them on the provider.

A refusal is the operator's to fix, so it is logged at ERROR, at most once every ``NOTE_EVERY`` seconds
per provider and process (with the count since), and written at the same pace. The alert goes when a
call on the provider is answered again, or when its key is changed.
"""
from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from riceball_proxy.db import provider_alerts
from riceball_proxy.db.providers import Provider
from riceball_proxy.errors import APIError

logger = logging.getLogger(__name__)

#: Seconds between two notes (a log line and a write) of one provider's refusals, per process.
NOTE_EVERY = 10.0
#: Seconds a write of an alert may take.
WRITE_TIMEOUT = 5.0


class ProviderAlerts:
    """Notes refused credentials and their end; holds one entry per provider with an alert (bounded by
    the number of providers)."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        #: provider id -> [when last noted (monotonic), refusals not noted yet]
        self._refused: dict[int, list] = {}
        self._tasks: set[asyncio.Task] = set()

    def credentials_refused(self, provider: Provider, error: APIError) -> None:
        """An upstream answered 401 or 403 to a call on ``provider``."""
        now = time.monotonic()
        entry = self._refused.setdefault(provider.id, [-NOTE_EVERY, 0])
        entry[1] += 1
        if now - entry[0] < NOTE_EVERY:
            return
        count, entry[0], entry[1] = entry[1], now, 0
        logger.error("provider %r refused the gateway's credentials (%s): %d calls failed over or failed since the "
                     "last note; check its API key", provider.name, error.detail, count)
        status, _, message = (error.detail or "").partition(": ")
        self._spawn(provider_alerts.credentials_refused(self.pool, provider.id, int(status) if status.isdigit()
                                                        else 0, message[:500], count))

    def answered(self, provider_id: int) -> None:
        """A call on the provider was answered: an alert this process noted goes."""
        if provider_id in self._refused:
            del self._refused[provider_id]
            self._spawn(provider_alerts.clear(self.pool, provider_id))

    def _spawn(self, write) -> None:
        task = asyncio.get_running_loop().create_task(self._write(write))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _write(write) -> None:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await write
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            logger.warning("provider alert not written (%s: %s)", type(exc).__name__, exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=WRITE_TIMEOUT)
