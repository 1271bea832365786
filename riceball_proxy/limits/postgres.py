"""Limit counters in PostgreSQL (table ``limit_counters``), shared by every process and instance that
uses the database, for when there is no Redis.

An admission is one transaction: the call's counter rows (and those of the settlements queued since
the last admission) are created if missing, locked in key order (``SELECT ... FOR UPDATE``, so two
calls never deadlock), settled and judged by the rules of ``limits/counters.py`` on the database's
clock, and written back. That is four statements, about a millisecond on a local
server, and calls on the same key wait for each other's lock: Redis is the faster choice under load.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import math
from collections.abc import Sequence
from typing import Any

import asyncpg

from riceball_proxy.limits.counters import (
    Budget,
    Busy,
    Check,
    Counters,
    Decision,
    Loader,
    Settlement,
    Unavailable,
    decide,
    expiry_ms,
    settle_values,
)

logger = logging.getLogger(__name__)

_LOCK = """
SELECT key, value, extract(epoch FROM clock_timestamp()) * 1000 AS now
FROM limit_counters WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE
"""
_WRITE = """
UPDATE limit_counters AS c SET value = v.value, expires_at = to_timestamp(v.until / 1000)
FROM unnest($1::text[], $2::jsonb[], $3::float8[]) AS v(key, value, until) WHERE c.key = v.key
"""
#: Rows are created as JSON null ("fresh"); a row past its expiry counts as fresh too.
_CREATE = """
INSERT INTO limit_counters (key, value, expires_at)
SELECT key, 'null', 'infinity' FROM unnest($1::text[]) AS key ORDER BY key ON CONFLICT DO NOTHING
"""
#: A batch of settlements leaves a row ``settled:<id>`` (kept ``REMEMBER_BATCHES``): a batch sent again
#: because its commit was never acknowledged finds it, and is not applied twice.
_MARK = """
INSERT INTO limit_counters (key, value, expires_at) VALUES ($1, 'true', now() + $2::interval)
ON CONFLICT (key) DO NOTHING RETURNING key
"""
REMEMBER_BATCHES = datetime.timedelta(hours=1)
#: Seconds a call waits for a connection of the pool (a burst), and that one admission's statements may
#: take (a database that stopped answering is Unavailable after it).
CONNECTION_WAIT = 5.0
STATEMENT_TIMEOUT = 5.0
#: Admissions between two sweeps of expired rows.
SWEEP_EVERY = 1000


class PostgresCounters(Counters):
    name = "postgres"

    def __init__(self, pool: asyncpg.Pool, *, wait: float = CONNECTION_WAIT):
        super().__init__()
        self.pool = pool
        self.wait = wait
        self._admitted = 0

    async def _locked(self, conn, keys: list[str]) -> tuple[dict[str, Any], float]:
        await conn.execute(_CREATE, keys)
        rows = await conn.fetch(_LOCK, keys)
        now = float(rows[0]["now"]) if rows else 0.0
        state = {}
        for row in rows:
            value = row["value"]
            if value is not None and not _expired(value, now):
                state[row["key"]] = value
        return state, now

    async def admit(self, checks: Sequence[Check], load: Loader) -> Decision:
        decision = await super().admit(checks, load)
        self._admitted += 1
        if self._admitted % SWEEP_EVERY == 0:
            try:
                await self.pool.execute("DELETE FROM limit_counters WHERE expires_at < now() - interval '1 minute'",
                                        timeout=STATEMENT_TIMEOUT)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                logger.warning("limit counters: expired rows not swept (%s); next time", exc)
        return decision

    async def admit_with(self, checks: Sequence[Check], load: Loader, settlement: Settlement) -> Decision:
        settled_checks = _checks_of(settlement)
        all_checks = settled_checks | {check.key: check for check in checks}
        conn = await self._acquire()
        try:
            async with asyncio.timeout(STATEMENT_TIMEOUT), conn.transaction():
                if settlement and not await self._mark(conn, settlement):
                    settlement, settled_checks = Settlement(), {}  # applied already
                    all_checks = {check.key: check for check in checks}
                state, now = await self._locked(conn, sorted(all_checks))
                settled = settle_values(settlement, state, now)  # the queued settlements first
                state.update(settled)
                loaded = {}
                for check in checks:
                    if isinstance(check, Budget) and check.key not in state:
                        # On this connection: the pool's others may all be waiting for this lock.
                        state[check.key] = loaded[check.key] = await load(check, conn)
                decision, new = decide(checks, state, now)
                writes = {**settled, **loaded, **new} if decision.admitted else {**settled, **loaded}
                await self._write(conn, writes, all_checks)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise Unavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        finally:
            await self.pool.release(conn)
        return decision

    async def _acquire(self):
        """A connection of the pool: Busy when none comes free within ``wait`` seconds (a burst), Unavailable
        when the database cannot be reached."""
        try:
            return await self.pool.acquire(timeout=self.wait)
        except TimeoutError:
            raise Busy(f"every connection to PostgreSQL was busy for {self.wait:g} s") from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise Unavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def apply(self, settlement: Settlement) -> None:
        checks = _checks_of(settlement)
        if not checks:
            return
        conn = await self._acquire()
        try:
            async with asyncio.timeout(STATEMENT_TIMEOUT), conn.transaction():
                if not await self._mark(conn, settlement):
                    return  # applied already
                state, now = await self._locked(conn, sorted(checks))
                await self._write(conn, settle_values(settlement, state, now), checks)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise Unavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        finally:
            await self.pool.release(conn)

    @staticmethod
    async def _mark(conn, settlement: Settlement) -> bool:
        """Note a batch as applied (in the transaction that applies it); False when it was already."""
        return await conn.fetchval(_MARK, f"settled:{settlement.id}", REMEMBER_BATCHES) is not None

    @staticmethod
    async def _write(conn, values: dict[str, Any], checks: dict[str, Check]) -> None:
        if not values:
            return
        keys = list(values)
        untils = [expiry_ms(checks[key], values[key]) for key in keys]
        await conn.execute(_WRITE, keys, [values[key] for key in keys],
                           [until if math.isfinite(until) else math.inf for until in untils])


def _checks_of(settlement: Settlement) -> dict[str, Check]:
    """The counters a settlement touches, by key."""
    return {check.key: check for check in
            [b for b, _ in settlement.buckets] + [b for b, _ in settlement.budgets] + list(settlement.slots)}


def _expired(value: Any, now: float) -> bool:
    """A bucket whose time has passed is full again: as good as fresh. (Slots and budgets expire by
    their own rules inside ``decide``, and by ``expires_at`` in the sweep.)"""
    return isinstance(value, float) and value < now
