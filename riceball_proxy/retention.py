"""The usage table's months: partitions made ahead, and whole months dropped past the retention.

Every hour (and at start-up) each gateway process makes the partitions of this month and the next two
that are missing, so that no row waits for one (a row of another month has its partition made when it
is written: ``db.usage_events.insert_many``), and, with ``RICEBALL_USAGE_RETENTION_DAYS`` set, drops the
partitions whose rows are all older than that many days: a month goes at once, never row by row. The
hourly rollups are kept: the usage page goes on showing the totals of months whose rows are gone.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging

import asyncpg

from riceball_proxy.db import usage_events
from riceball_proxy.faults import FailureLog

logger = logging.getLogger(__name__)

#: Seconds between two rounds.
INTERVAL = 3600.0
#: Months made ahead of the current one.
MONTHS_AHEAD = 2


class UsagePartitions:
    """Keeps the usage table's partitions: made ahead, dropped past ``retention_days`` (None: kept)."""

    def __init__(self, pool: asyncpg.Pool, retention_days: int | None, *, interval: float = INTERVAL):
        self.pool = pool
        self.retention_days = retention_days
        self.interval = interval
        self._task: asyncio.Task | None = None
        self.failures = FailureLog(logger, "the usage partitions' upkeep")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="riceball-usage-partitions")

    async def _run(self) -> None:
        while True:
            try:
                await self.keep()
                self.failures.recovered()
            except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                self.failures.failed(exc)
            await asyncio.sleep(self.interval)

    async def keep(self, now: datetime.datetime | None = None) -> list[str]:
        """One round: the months ahead made, those past the retention dropped (their names returned)."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        month = usage_events.month_of(now)
        ahead = [month]
        for _ in range(MONTHS_AHEAD):
            ahead.append(usage_events.month_of(ahead[-1] + datetime.timedelta(days=32)))
        await usage_events.ensure_partitions(self.pool, ahead)
        if self.retention_days is None:
            return []
        dropped = await usage_events.drop_partitions_before(
            self.pool, now - datetime.timedelta(days=self.retention_days))
        if dropped:
            logger.info("usage rows older than %d days dropped: %s", self.retention_days, ", ".join(dropped))
        return dropped

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
