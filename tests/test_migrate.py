import asyncio

import asyncpg
import pytest

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


async def test_fallback_targets_move_to_a_table_that_refuses_a_provider_gone(make_database):
    import asyncpg
    import orjson

    conn = await asyncpg.connect(make_database())
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
        for migration in available_migrations():
            if migration.version >= 15:
                break
            await conn.execute(migration.sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version,
                               migration.name)
        # As the JSON list held them: one target of a provider that exists, one of a provider long deleted.
        live = await conn.fetchval("INSERT INTO providers (name, type, base_url) VALUES ('live', 'openai', "
                                   "'http://127.0.0.1:9/v1') RETURNING id")
        primary = await conn.fetchval("INSERT INTO providers (name, type, base_url) VALUES ('primary', 'openai', "
                                      "'http://127.0.0.1:9/v1') RETURNING id")
        fallbacks = [{"provider_id": 424242, "model": "gone", "weight": 1, "priority": 1, "params": {}},
                     {"provider_id": live, "model": "kept", "weight": 3, "priority": 2, "params": {"top_p": 0.5}}]
        assistant = await conn.fetchval("INSERT INTO assistants (name, provider_id, model, fallbacks) VALUES "
                                        "('a', $1, 'm', $2::jsonb) RETURNING id", primary,
                                        orjson.dumps(fallbacks).decode())
        assert [m.version for m in await apply_migrations(conn)][0] == 15
        rows = await conn.fetch("SELECT position, provider_id, model, weight, priority, params::text "
                                "FROM assistant_targets WHERE assistant_id = $1", assistant)
        assert [tuple(row) for row in rows] == [(1, live, "kept", 3, 2, '{"top_p": 0.5}')]
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # the database refuses a dangling target
            await conn.execute("INSERT INTO assistant_targets (assistant_id, position, provider_id, model) "
                               "VALUES ($1, 5, 424242, 'x')", assistant)
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # and the deletion of a provider in use
            await conn.execute("DELETE FROM providers WHERE id = $1", live)
    finally:
        await conn.close()
