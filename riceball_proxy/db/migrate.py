"""Numbered SQL migrations, applied in order and once, under an advisory lock.

Each file in ``riceball_proxy/db/migrations`` is named ``NNNN_description.sql``. The pending ones are
applied in one transaction that holds a transaction-level advisory lock: two instances starting together
take turns (one applies what is missing while the other waits, then finds nothing left to do), a failed
migration leaves the schema as it was, and the lock is released with the transaction, which also holds
through a connection pooler in transaction mode (a session-level lock would not).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from importlib import resources

import asyncpg

#: Arbitrary but fixed: the advisory lock that serialises migrations ("riceball" in ASCII).
MIGRATION_LOCK_ID = 0x7269636562616C6C
_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclasses.dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files("riceball_proxy.db.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number: {versions}")
    return found


async def apply_migrations(conn: asyncpg.Connection, then: Callable[[asyncpg.Connection], Awaitable] | None = None
                           ) -> list[Migration]:
    """Apply every migration not yet applied; return those this call applied. ``then(conn)`` runs after them
    in the same transaction, under the same lock (the start-up configuration file is applied there)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        done = []
        for migration in available_migrations():
            if migration.version in applied:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            done.append(migration)
        if then is not None:
            await then(conn)
        return done
