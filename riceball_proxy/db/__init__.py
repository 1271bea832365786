"""The database: a pool on PostgreSQL (embedded or at RICEBALL_DATABASE_URL), migrated at open.

The repository modules beside this one (``admins``, ``providers``, ``assistants``, ``api_keys``,
``usage_events``, ``conversations``) hold all SQL, one module per table, and take any asyncpg
connection or pool as their first argument.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import orjson

from riceball_proxy.db.embedded import EmbeddedPostgres
from riceball_proxy.db.migrate import apply_migrations
from riceball_proxy.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds to open a database connection before giving up (asyncpg waits 60 by default).
CONNECT_TIMEOUT = 5.0


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up: json and jsonb columns go through orjson."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads, format="text"
        )


def _encode_json(value) -> str:
    return orjson.dumps(value).decode()


class Database:
    """The open pool and the URL it came from."""

    def __init__(self, pool: asyncpg.Pool, url: str):
        from riceball_proxy.faults import FailureLog

        self.pool = pool
        self.url = url
        self.failures = FailureLog(logger, "the database readiness check")

    async def is_ready(self, timeout: float = 2.0) -> bool:
        """True when a query goes through within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                async with self.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except Exception as exc:  # any failure at all means "not ready"; the probe must not raise
            self.failures.failed(exc)
            return False
        self.failures.recovered()
        return True


@contextlib.asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[str]:
    """The URL to use: RICEBALL_DATABASE_URL, or the embedded server's (started for the duration)."""
    if settings.database_url:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    url = await asyncio.to_thread(embedded.start)
    try:
        yield url
    finally:
        await asyncio.to_thread(embedded.close)


def connect_options(settings: Settings) -> dict:
    """asyncpg's options for connections to ``database_url``: behind a pooler in transaction mode no
    prepared statement may outlive its transaction, so none is cached (each is prepared unnamed)."""
    return {"statement_cache_size": 0} if settings.database_pooled else {}


@contextlib.asynccontextmanager
async def open_database(settings: Settings, *, min_size: int = 1, max_size: int = 10,
                        then: Callable[[asyncpg.Connection], Awaitable] | None = None) -> AsyncIterator[Database]:
    """Open the database for these settings, apply pending migrations (and ``then(conn)`` in their
    transaction, under their lock), and close it all on exit."""
    async with database_url(settings) as url:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, **connect_options(settings))
        try:
            await init_connection(conn)
            applied = await apply_migrations(conn, then)
        finally:
            await conn.close()
        if applied:  # one line: the first start applies them all
            logger.info("applied %d migration%s: %04d_%s%s", len(applied), "s" * (len(applied) != 1),
                        applied[0].version, applied[0].name,
                        f" .. {applied[-1].version:04d}_{applied[-1].name}" if len(applied) > 1 else "")
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=init_connection,
                                         timeout=CONNECT_TIMEOUT, **connect_options(settings))
        try:
            yield Database(pool, url)
        finally:
            await pool.close()
