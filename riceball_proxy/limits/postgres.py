"""Limit counters in PostgreSQL (table ``limit_counters``), shared by every process and instance that
uses the database, for when there is no Redis.

An admission is one transaction: the call's counter rows (and those of the settlements queued since
the last admission) are created if missing, locked in key order (``SELECT ... FOR UPDATE``, so two
calls never deadlock), settled and judged by the rules of ``limits/counters.py`` on the database's
clock, and written back. That is four statements, about a millisecond on a local
server, and calls on the same key wait for each other's lock: Redis is the faster choice under load.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import asyncpg

from riceball_proxy.limits.counters import (Budget, Check, Counters, Decision, Loader, Settlement, Unavailable,
                                            decide, expiry_ms, settle_values)

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
#: Admissions between two sweeps of expired rows.
SWEEP_EVERY = 1000


class PostgresCounters(Counters):
    name = "postgres"

    def __init__(self, pool: asyncpg.Pool):
        super().__init__()
        self.pool = pool
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
        settlement = self.take_pending()
        settled_checks = _checks_of(settlement)
        all_checks = settled_checks | {check.key: check for check in checks}
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                state, now = await self._locked(conn, sorted(all_checks))
                settled = settle_values(settlement, state, now)  # the queued settlements first
                state.update(settled)
                loaded = {}
                for check in checks:
                    if type(check) is Budget and check.key not in state:
                        # On this connection: the pool's others may all be waiting for this lock.
                        state[check.key] = loaded[check.key] = await load(check, conn)
                decision, new = decide(checks, state, now)
                writes = {**settled, **loaded, **new} if decision.admitted else {**settled, **loaded}
                await self._write(conn, writes, all_checks)
        except (asyncpg.PostgresError, OSError) as exc:
            raise Unavailable(f"PostgreSQL: {exc}") from exc
        self._admitted += 1
        if self._admitted % SWEEP_EVERY == 0:
            await self.pool.execute("DELETE FROM limit_counters WHERE expires_at < now() - interval '1 minute'")
        return decision

    async def apply(self, settlement: Settlement) -> None:
        checks = _checks_of(settlement)
        if not checks:
            return
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                state, now = await self._locked(conn, sorted(checks))
                await self._write(conn, settle_values(settlement, state, now), checks)
        except (asyncpg.PostgresError, OSError) as exc:
            raise Unavailable(f"PostgreSQL: {exc}") from exc

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
