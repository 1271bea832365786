"""Usage rows at scale: monthly partitions made ahead and on demand, whole months dropped past the retention,
hourly rollups that always equal the rows, a migration that moves an existing table without losing a row,
and budgets that read across months."""
import datetime
import uuid
from decimal import Decimal

import asyncpg
import openai
import pytest

from riceball_proxy import appkeys
from riceball_proxy.db import api_keys, usage_events
from riceball_proxy.db.migrate import apply_migrations, available_migrations
from riceball_proxy.db.usage_events import UsageEvent, UsageFilter
from riceball_proxy.retention import UsagePartitions
from riceball_proxy.settings import Settings, SettingsError

UTC = datetime.timezone.utc
NOW = datetime.datetime.now(UTC)
#: The start of next month: a whole hour, so that a report up to it reads the rollups.
NEXT_MONTH = datetime.datetime(NOW.year + NOW.month // 12, NOW.month % 12 + 1, 1, tzinfo=UTC)
#: What the usage page shows, read straight from the rows (its query before the rollups).
RAW_TOTALS = """
    SELECT count(*) AS requests, count(*) FILTER (WHERE status >= 400) AS errors,
           coalesce(sum(prompt_tokens), 0) AS prompt_tokens, coalesce(sum(completion_tokens), 0) AS completion_tokens,
           coalesce(sum(cached_tokens), 0) AS cached_tokens, coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
           sum(cost_usd) AS cost_usd,
           count(*) FILTER (WHERE cost_usd IS NULL AND (prompt_tokens > 0 OR completion_tokens > 0)) AS unpriced
    FROM usage_events WHERE created_at >= $1 AND created_at < $2
"""
ROLLED_UP = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd",
             "unpriced")


def months_back(moment: datetime.datetime, months: int) -> datetime.datetime:
    """The same day-of-month and time (the 15th at the latest), ``months`` months before ``moment``."""
    year, month = divmod(moment.year * 12 + moment.month - 1 - months, 12)
    return moment.replace(year=year, month=month + 1, day=min(moment.day, 15))


def event(when: datetime.datetime, *, key=None, status=200, tokens=(10, 20), cost="0.01", latency=120.0, **fields):
    return UsageEvent(created_at=when, request_id=f"req_{uuid.uuid4().hex}", status=status, api_key_id=key,
                      prompt_tokens=tokens[0], completion_tokens=tokens[1], total_tokens=sum(tokens),
                      cost_usd=None if cost is None else Decimal(cost), latency_ms=latency, **fields)


async def rollups_equal_rows(db, since: datetime.datetime, until: datetime.datetime) -> dict:
    """The usage page's summary (from the rollups), after checking it against the rows themselves."""
    assert all(moment == moment.replace(minute=0, second=0, microsecond=0) for moment in (since, until))  # rollups
    summary = await usage_events.summary(db, UsageFilter(since=since, until=until))
    raw = dict(await db.fetchrow(RAW_TOTALS, since, until))
    assert {name: summary[name] for name in ROLLED_UP} == raw
    return summary


async def partition_names(db) -> list[str]:
    return [name for name, _, _ in await usage_events.partitions(db)]


async def test_this_month_and_the_next_two_have_partitions_from_the_start(gateway):
    upkeep = gateway.app[appkeys.USAGE_PARTITIONS]
    assert upkeep.retention_days is None
    names = await partition_names(gateway.pool)
    month = usage_events.month_of(NOW)
    for _ in range(3):
        assert f"usage_events_{month:%Y_%m}" in names
        month = usage_events.month_of(month + datetime.timedelta(days=32))


async def test_a_row_of_a_month_without_a_partition_is_written_all_the_same(db):
    long_ago = datetime.datetime(2019, 3, 7, 12, tzinfo=UTC)
    later = datetime.datetime(2031, 1, 2, 3, tzinfo=UTC)
    assert "usage_events_2019_03" not in await partition_names(db)
    await usage_events.insert_many(db, [event(long_ago), event(later), event(NOW)])
    assert {"usage_events_2019_03", "usage_events_2031_01"} <= set(await partition_names(db))
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 3
    assert await db.fetchval("SELECT count(*) FROM usage_events_2019_03") == 1
    await rollups_equal_rows(db, datetime.datetime(2019, 1, 1, tzinfo=UTC), datetime.datetime(2032, 1, 1, tzinfo=UTC))


async def test_the_rollups_count_a_batch_written_twice_once(db):
    key = (await api_keys.create(db, name="k", key_hash=b"k" * 32, prefix="sk-k")).id
    batch = [event(NOW, key=key), event(NOW, key=key, status=502, tokens=(0, 0), cost=None),
             event(NOW - datetime.timedelta(hours=3), key=key, cost=None, cached_tokens=4, reasoning_tokens=2),
             event(NOW, source="playground", admin_id=1), event(NOW, api="messages")]
    await usage_events.insert_many(db, batch)
    await usage_events.insert_many(db, batch[1:] + [event(NOW, key=key)])  # acknowledgement lost: sent again
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 6
    day = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    summary = await rollups_equal_rows(db, day - datetime.timedelta(days=1), day + datetime.timedelta(days=1))
    # Whole hours that are not whole days: the hourly rollups, which agree too.
    assert await rollups_equal_rows(db, day - datetime.timedelta(hours=23), day + datetime.timedelta(hours=25)) == summary
    assert (summary["requests"], summary["errors"], summary["unpriced"]) == (6, 1, 1)
    per_key = {(row["api_key_id"], row["source"], row["admin_id"]): row["requests"]
               for row in await usage_events.by_key(db, UsageFilter(since=day - datetime.timedelta(days=1),
                                                                    until=day + datetime.timedelta(days=1)))}
    assert per_key == {(key, "api", None): 4, (None, "playground", 1): 1, (None, "api", None): 1}


async def test_whole_months_past_the_retention_are_dropped_and_their_totals_kept(db):
    old, older, recent = months_back(NOW, 3), months_back(NOW, 5), months_back(NOW, 1)
    await usage_events.insert_many(db, [event(older), event(older), event(old), event(recent), event(NOW)])
    since = usage_events.month_of(older)
    before = await rollups_equal_rows(db, since, NEXT_MONTH)
    # Kept: the days since the start of the month before last; that month and the later ones stay.
    upkeep = UsagePartitions(db, retention_days=(NOW - usage_events.month_of(months_back(NOW, 2))).days)
    dropped = await upkeep.keep(NOW)
    assert f"usage_events_{older:%Y_%m}" in dropped and f"usage_events_{old:%Y_%m}" in dropped
    assert f"usage_events_{recent:%Y_%m}" not in dropped
    names = await partition_names(db)
    assert f"usage_events_{older:%Y_%m}" not in names and f"usage_events_{recent:%Y_%m}" in names
    # Whole tables gone (no row-by-row DELETE); the rows of the kept months are all there.
    assert await db.fetchval("SELECT to_regclass($1)", f"usage_events_{older:%Y_%m}") is None
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 2
    # The usage page still shows what the dropped months added up to; the CSV only the rows kept.
    after = await usage_events.summary(db, UsageFilter(since=since, until=NEXT_MONTH))
    assert after["requests"] == before["requests"] == 5
    exported = [row async for row in usage_events.export(db, UsageFilter(since=since, until=NEXT_MONTH))]
    assert len(exported) == 2
    # A row of a dropped month arriving late (a spill file loaded back) still has somewhere to go.
    await usage_events.insert_many(db, [event(older)])
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 3


def test_the_retention_is_a_number_of_days():
    assert Settings.from_env({}).usage_retention_days is None
    assert Settings.from_env({"RICEBALL_USAGE_RETENTION_DAYS": "400"}).usage_retention_days == 400
    with pytest.raises(SettingsError, match="RICEBALL_USAGE_RETENTION_DAYS"):
        Settings.from_env({"RICEBALL_USAGE_RETENTION_DAYS": "0"})


async def test_a_budget_counts_its_period_across_months(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings.replace(limits_backend="memory"))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    secret = await gateway.key(name="budgeted", budget_tokens=1000, budget_period="total")
    key = (await api_keys.list_all(gateway.pool))[0]
    # Spent before this process started, in last month's partition and in this month's.
    await usage_events.insert_many(gateway.pool, [event(months_back(NOW, 1), key=key.id, tokens=(300, 300)),
                                                  event(NOW - datetime.timedelta(minutes=5), key=key.id,
                                                        tokens=(200, 250))])
    async with gateway.client(assistant.id, secret) as client:
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    assert "has used its budget of 1,000 tokens" in refused.value.message
    usd, tokens = await usage_events.spent(gateway.pool, api_key_id=key.id)  # from the rollups
    assert tokens == 1050
    # From the rows, for a time that is no whole hour: the same.
    assert (await usage_events.spent(gateway.pool, api_key_id=key.id, since=months_back(NOW, 2)))[1] == 1050
    assert (await usage_events.spent(gateway.pool, api_key_id=key.id,
                                     since=NOW - datetime.timedelta(minutes=10)))[1] == 450
    assert await usage_events.spent_by_key(gateway.pool, {key.id: None}) == {key.id: (usd, 1050)}


async def test_an_existing_table_is_partitioned_without_losing_a_row(make_database):
    conn = await asyncpg.connect(make_database())
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
        for migration in available_migrations():
            if migration.version >= 19:
                break
            await conn.execute(migration.sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version,
                               migration.name)
        # Rows of three months, one from before event ids, one without a latency; an id sequence well along.
        await conn.execute("ALTER TABLE usage_events ALTER COLUMN id RESTART WITH 1000")
        moments = [months_back(NOW, 2), months_back(NOW, 1), NOW - datetime.timedelta(hours=1), NOW]
        for n, moment in enumerate(moments * 25):
            await conn.execute(
                "INSERT INTO usage_events (created_at, request_id, status, prompt_tokens, completion_tokens, "
                "total_tokens, cost_usd, latency_ms, event_id, source, admin_id) "
                "VALUES ($1, $2, $3, 10, $4, 10 + $4, $5, $6, $7, $8, $9)",
                moment, f"req_{n}", 500 if n % 7 == 0 else 200, n, None if n % 5 == 0 else Decimal("0.001") * n,
                None if n == 3 else float(n * 10), None if n == 1 else uuid.uuid4(),
                "playground" if n % 11 == 0 else "api", 1 if n % 11 == 0 else None)
        before = {row["id"]: dict(row) for row in await conn.fetch("SELECT * FROM usage_events")}

        assert [m.version for m in await apply_migrations(conn)][0] == 19

        after = {row["id"]: dict(row) for row in await conn.fetch("SELECT * FROM usage_events")}
        assert after == before and len(after) == 100
        assert await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = 'usage_events'") == b"p"
        assert await conn.fetchval("SELECT to_regclass('usage_events_unpartitioned')") is None
        since = usage_events.month_of(months_back(NOW, 2))
        summary = await usage_events.summary(conn, UsageFilter(since=since, until=NEXT_MONTH))
        raw = dict(await conn.fetchrow(RAW_TOTALS, since, NEXT_MONTH))
        assert {name: summary[name] for name in ROLLED_UP} == raw
        exact = await conn.fetchval("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms) FROM usage_events")
        bucket = usage_events.latency_bucket(exact)
        assert 2 ** (bucket / 3) <= summary["latency_p50"] <= 2 ** ((bucket + 1) / 3)
        # New rows take ids after the old ones.
        new_id = await conn.fetchval("INSERT INTO usage_events (created_at, request_id, status) VALUES (now(), 'n', 200) "
                                     "RETURNING id")
        assert new_id > max(after)
    finally:
        await conn.close()
