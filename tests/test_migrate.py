import asyncio

import asyncpg

from riceball_proxy.db.migrate import apply_migrations, available_migrations


def test_migrations_are_numbered_in_order():
    migrations = available_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "init"


async def test_concurrent_runs_apply_each_migration_once(make_database):
    url = make_database()
    connections = [await asyncpg.connect(url) for _ in range(5)]
    try:
        results = await asyncio.gather(*(apply_migrations(conn) for conn in connections))
        versions = [m.version for applied in results for m in applied]
        assert sorted(versions) == [m.version for m in available_migrations()]
        rows = await connections[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in available_migrations()]
        assert await apply_migrations(connections[0]) == []
        tables = {
            r["tablename"]
            for r in await connections[0].fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"admins", "providers", "assistants", "api_keys", "usage_events", "conversations", "messages",
                "schema_migrations"} <= tables
    finally:
        for conn in connections:
            await conn.close()
