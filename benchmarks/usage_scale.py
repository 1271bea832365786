"""Usage rows at scale, on the machine's PostgreSQL (a database of its own, dropped afterwards).

    python -m benchmarks.usage_scale [--rows 10000000] [--batches 200]

Prints:
- the writer's throughput: rows/s through ``usage_events.insert_many`` (one COPY a batch of 500 and the
  batch's rollups, in one transaction), beside a bare COPY of the same batches into the table (no
  rollups: the floor);
- the usage page's queries (summary, per assistant, per key, per API, the timeline) over 30 days, with
  ``--rows`` rows in the table spread over three months: from the rollups, and from the rows themselves
  (the queries the page ran before the rollups);
- the retention's time to drop one month (``drop_partitions_before``).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import random
import time
import uuid
from decimal import Decimal

import asyncpg

from benchmarks.run import bench_database
from riceball_proxy.db import usage_events
from riceball_proxy.db.migrate import apply_migrations
from riceball_proxy.db.usage_events import UsageEvent, UsageFilter

UTC = datetime.timezone.utc
#: The usage page's queries as they were before the rollups (each over the rows of the range).
RAW_PAGE = (
    "SELECT count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd), "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) "
    "FROM usage_events WHERE created_at >= $1 AND created_at < $2",
    "SELECT assistant_id, count(*), sum(prompt_tokens), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) "
    "FROM usage_events WHERE created_at >= $1 AND created_at < $2 GROUP BY assistant_id",
    "SELECT api_key_id, source, admin_id, count(*), sum(prompt_tokens), "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) "
    "FROM usage_events WHERE created_at >= $1 AND created_at < $2 GROUP BY api_key_id, source, admin_id",
    "SELECT api, count(*) FROM usage_events WHERE created_at >= $1 AND created_at < $2 GROUP BY api",
    "SELECT date_trunc('day', created_at), count(*), sum(prompt_tokens) FROM usage_events "
    "WHERE created_at >= $1 AND created_at < $2 GROUP BY 1",
)
KEYS = [uuid.uuid4() for _ in range(200)]
ASSISTANTS = [uuid.uuid4() for _ in range(20)]


def events(count: int, when: datetime.datetime, keys: int = len(KEYS), assistants: int = len(ASSISTANTS)
           ) -> list[UsageEvent]:
    """``count`` calls made now by the first ``keys`` keys on the first ``assistants`` assistants."""
    return [UsageEvent(created_at=when, request_id=f"req_{uuid.uuid4().hex}", status=random.choice((200,) * 19 + (429,)),
                       api_key_id=random.choice(KEYS[:keys]), assistant_id=random.choice(ASSISTANTS[:assistants]),
                       provider_id=1,
                       upstream_model="gpt-4o", prompt_tokens=random.randint(10, 5000),
                       completion_tokens=random.randint(1, 800), total_tokens=None, cost_usd=Decimal("0.0012"),
                       latency_ms=random.uniform(50, 5000), ttft_ms=random.uniform(20, 900), attempts=1,
                       client_addr="10.0.0.7")
            for _ in range(count)]


async def writer_throughput(pool, batches: int, keys: int, assistants: int) -> tuple[float, float]:
    """(rows/s through insert_many, rows/s of a bare COPY of the same batches), for calls of ``keys`` keys
    on ``assistants`` assistants (each pair of them a rollup row an hour)."""
    now = datetime.datetime.now(UTC)
    prepared = [events(500, now, keys, assistants) for _ in range(batches)]
    started = time.perf_counter()
    for batch in prepared:
        await usage_events.insert_many(pool, batch)
    ours = batches * 500 / (time.perf_counter() - started)
    fields = usage_events._FIELDS
    bare = [[(*usage_events._values(event)[:-1], None) for event in events(500, now)] for _ in range(batches)]
    started = time.perf_counter()
    for records in bare:
        await pool.copy_records_to_table("usage_events", records=records, columns=fields)
    floor = batches * 500 / (time.perf_counter() - started)
    return ours, floor


async def fill(pool, conn, rows: int, since: datetime.datetime, until: datetime.datetime) -> float:
    """``rows`` rows spread evenly over [since, until), rolled up as the migration rolls existing rows up;
    the seconds it took."""
    started = time.perf_counter()
    await usage_events.ensure_partitions(pool, [since + datetime.timedelta(days=d) for d in range((until - since).days)])
    span = (until - since).total_seconds()
    await conn.execute(
        """
        INSERT INTO usage_events (created_at, request_id, status, api_key_id, assistant_id, provider_id, upstream_model,
                                  prompt_tokens, completion_tokens, cost_usd, latency_ms, event_id, api)
        SELECT $1::timestamptz + (n * $3::float8 / $2::bigint) * interval '1 second', 'req_' || n, CASE WHEN n % 20 = 0 THEN 429 ELSE 200 END,
               ($4::uuid[])[1 + n % 200], ($5::uuid[])[1 + n % 20], 1, 'gpt-4o', 10 + n % 5000, 1 + n % 800,
               0.0012, 50 + (n % 4950), gen_random_uuid(), CASE WHEN n % 3 = 0 THEN 'messages' ELSE 'chat' END
        FROM generate_series(0, $2::bigint - 1) AS n
        """, since, rows, span, KEYS, ASSISTANTS)
    await conn.execute("SELECT usage_hourly_add($1, $2)", since, until)
    await conn.execute("SELECT usage_daily_add($1, $2)", since, until)
    await conn.execute("ANALYZE usage_events")
    await conn.execute("ANALYZE usage_hourly")
    await conn.execute("ANALYZE usage_daily")
    return time.perf_counter() - started


async def page_time(pool, where: UsageFilter, rollups: bool) -> float:
    """Seconds the usage page's queries take (the best of three)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        if rollups:
            await usage_events.summary(pool, where)
            await usage_events.by_assistant(pool, where)
            await usage_events.by_key(pool, where)
            await usage_events.by_api(pool, where)
            await usage_events.timeline(pool, where, "day")
        else:
            for query in RAW_PAGE:
                await pool.fetch(query, where.since, where.until)
        best = min(best, time.perf_counter() - started)
    return best


def main(rows: int, batches: int) -> None:
    with bench_database() as url:
        if url is None:
            raise SystemExit("needs the machine's PostgreSQL (RICEBALL_BENCH_DATABASE_URL or 127.0.0.1:5432)")
        asyncio.run(measure(url, rows, batches))


async def measure(url: str, rows: int, batches: int) -> None:
    conn = await asyncpg.connect(url)
    await apply_migrations(conn)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        for keys, assistants in ((10, 3), (len(KEYS), len(ASSISTANTS))):
            ours, floor = await writer_throughput(pool, batches, keys, assistants)
            print(f"writer, calls of {keys} keys on {assistants} assistants: {ours:,.0f} rows/s (batches of 500, "
                  f"with their rollups); a bare COPY {floor:,.0f} rows/s", flush=True)
            await conn.execute("TRUNCATE usage_events, usage_hourly, usage_daily")
        this_month = usage_events.month_of(datetime.datetime.now(UTC))
        since = usage_events.month_of(this_month - datetime.timedelta(days=75))
        took = await fill(pool, conn, rows, since, this_month)
        print(f"{rows:,} rows over {since:%Y-%m} to {this_month - datetime.timedelta(days=1):%Y-%m} written and "
              f"rolled up in {took:,.0f} s", flush=True)
        where = UsageFilter(since=this_month - datetime.timedelta(days=30), until=this_month)
        raw, rolled = await page_time(pool, where, False), await page_time(pool, where, True)
        print(f"usage page, 30 days of {rows:,} rows: from the rows {raw * 1000:,.0f} ms, from the rollups "
              f"{rolled * 1000:,.1f} ms ({raw / rolled:,.0f}x)", flush=True)
        first, _, high = (await usage_events.partitions(pool))[0]
        month_rows = await conn.fetchval("SELECT count(*) FROM usage_events WHERE created_at < $1", high)
        started = time.perf_counter()
        dropped = await usage_events.drop_partitions_before(pool, high)
        print(f"retention: {', '.join(dropped)} ({month_rows:,} rows) dropped in "
              f"{(time.perf_counter() - started) * 1000:,.0f} ms", flush=True)
    finally:
        await pool.close()
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    main(args.rows, args.batches)
