"""The ``usage_events`` table: one row per API call, written in batches off the request path; and
``usage_hourly`` and ``usage_daily``, its rollups per hour (day), key, assistant, source and API, written
in the same transaction.

``usage_events`` is partitioned by month of ``created_at`` (UTC): :func:`ensure_partitions` makes the
months a batch needs (the gateway also makes them ahead: ``riceball_proxy.retention``), and
:func:`drop_partitions_before` drops whole months past a retention. The usage page's figures come from
the rollups (:func:`summary`, :func:`timeline`...), the rows themselves from the table (:func:`export`).
"""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import math
import operator
import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg

#: This process's random prefix of usage row ids, and their numbers (made anew in a forked child).
_event_prefix: int
_event_numbers: Iterator[int]


def _reseed() -> None:
    global _event_prefix, _event_numbers
    _event_prefix = int.from_bytes(os.urandom(8)) << 64
    _event_numbers = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)  # a forked process must never repeat its parent's ids


def new_event_id() -> uuid.UUID:
    """A usage row id unique across processes: a random 64-bit prefix per process and a counter.

    Cheaper than ``uuid4()`` (no system call per row), and as unique for this purpose.
    """
    return uuid.UUID(int=_event_prefix | next(_event_numbers))


@dataclasses.dataclass(frozen=True)
class UsageEvent:
    """What one API call cost and how it went."""

    created_at: datetime
    request_id: str
    status: int
    api_key_id: uuid.UUID | None = None
    assistant_id: uuid.UUID | None = None
    provider_id: int | None = None
    upstream_model: str | None = None
    stream: bool = False
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    #: True when the upstream's token counts were unusable (they are None here).
    usage_invalid: bool = False
    #: USD (None: unknown, for want of a price or of token counts).
    cost_usd: Decimal | None = None
    #: Upstream calls made (None: the call never reached one).
    attempts: int | None = None
    #: Made when the call ends: a batch written twice adds its rows once.
    event_id: uuid.UUID = dataclasses.field(default_factory=new_event_id)
    #: ``api``, or ``playground`` for the admin panel's calls (made by the admin ``admin_id``, with no key).
    source: str = "api"
    admin_id: int | None = None
    #: True when the gateway estimated the token counts (and so the cost): the upstream reported none.
    usage_estimated: bool = False
    #: Input tokens written to the prompt cache, and the 1-hour ones among them.
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    #: The inbound API the call came in by (``riceball_proxy.dialects``: ``chat``, ``messages``...).
    api: str = "chat"
    #: Last: ``insert_many`` replaces it with its ``inet`` form.
    client_addr: str | None = None


_FIELDS = tuple(field.name for field in dataclasses.fields(UsageEvent))
_values = operator.attrgetter(*_FIELDS)


_COLUMNS = ", ".join(_FIELDS)


async def insert_many(pool, events: Sequence[UsageEvent]) -> None:
    """Write a batch of events with one COPY, and add them to their hourly rollups in the same
    transaction; rows already written (same ``event_id``) are skipped, and counted once.

    A batch is sent again only when its acknowledgement was lost; then the plain COPY meets the unique
    ``event_id`` index, and the batch goes through a temporary table and ``ON CONFLICT DO NOTHING``
    instead (only the rows it wrote are rolled up), so nothing is written twice while the common case
    stays one COPY. A row of a month that has no partition yet has one made, and the batch is written.
    """
    # attrgetter, not dataclasses.astuple: astuple deep-copies every value, which costs more than the COPY.
    records = [(*_values(event)[:-1], _address(event.client_addr)) for event in events]
    for _ in range(2):
        try:
            async with pool.acquire() as conn, conn.transaction():
                try:
                    async with conn.transaction():  # a savepoint: the batch's other path on a repeat
                        await conn.copy_records_to_table("usage_events", records=records, columns=_FIELDS)
                    written: Sequence[UsageEvent] = events
                except asyncpg.UniqueViolationError as exc:
                    if "event_id" not in (exc.constraint_name or ""):
                        raise
                    written = await _insert_new(conn, records, events)
                await add_to_rollups(conn, written)
            return
        except asyncpg.CheckViolationError as exc:
            if "no partition" not in str(exc):
                raise
            await ensure_partitions(pool, {event.created_at for event in events})
    raise RuntimeError("usage rows of a month whose partition could not be made")


async def _insert_new(conn, records: list[tuple], events: Sequence[UsageEvent]) -> list[UsageEvent]:
    """Write the rows not written yet; those rows."""
    await conn.execute(f"CREATE TEMP TABLE usage_staging ON COMMIT DROP AS "
                       f"SELECT {_COLUMNS} FROM usage_events WITH NO DATA")
    await conn.copy_records_to_table("usage_staging", records=records, columns=_FIELDS)
    rows = await conn.fetch(f"INSERT INTO usage_events ({_COLUMNS}) SELECT {_COLUMNS} FROM usage_staging "
                            "ON CONFLICT (event_id, created_at) DO NOTHING RETURNING event_id")
    new = {row["event_id"] for row in rows}
    return [event for event in events if event.event_id in new]


# --- partitions ------------------------------------------------------------------------------------------

def month_of(moment: datetime) -> datetime:
    """The first instant (UTC) of the month holding ``moment``: the lower bound of its partition."""
    return moment.astimezone(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def ensure_partitions(pool: asyncpg.Pool, moments) -> None:
    """Make the partitions of the months holding ``moments`` that are missing."""
    months = sorted({month_of(moment) for moment in moments})
    async with pool.acquire() as conn, conn.transaction():
        # One maker at a time (another process may be making the same month).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('usage_events_partitions'))")
        for month in months:
            await conn.execute("SELECT usage_events_partition($1)", month)


async def partitions(db) -> list[tuple[str, datetime, datetime]]:
    """The partitions of ``usage_events``: name, first instant, the instant after the last; oldest first."""
    rows = await db.fetch(
        """
        SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_events'::regclass
        """)
    found = []
    for row in rows:  # FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')
        low, high = row["bound"].split("'")[1], row["bound"].split("'")[3]
        found.append((row["name"], datetime.fromisoformat(low), datetime.fromisoformat(high)))
    return sorted(found, key=lambda partition: partition[1])


async def drop_partitions_before(db, cutoff: datetime) -> list[str]:
    """Drop every partition whose rows are all older than ``cutoff`` (whole months, no row-by-row
    DELETE); the names dropped. Their hours stay in the rollups."""
    dropped = []
    for name, _, high in await partitions(db):
        if high <= cutoff:
            await db.execute(f'DROP TABLE IF EXISTS "{name}"')  # a name read from the catalog, never input
            dropped.append(name)
    return dropped


# --- rollups -----------------------------------------------------------------------------------------------

#: Where a rollup keeps "none" in its key: no key, no assistant (the nil UUID), no admin (0).
NO_ID = uuid.UUID(int=0)
#: Buckets of the rollups' latency histograms: bucket n holds [2^(n/3), 2^((n+1)/3)) ms; the first
#: also what is under 1 ms, the last all from 2^21 ms (35 minutes) on. ``usage_latency_bucket`` in SQL.
LATENCY_BUCKETS = 64


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a latency in ms (``usage_latency_bucket``)."""
    return min(LATENCY_BUCKETS - 1, max(0, math.floor(3 * math.log2(max(ms, 1.0)))))


def _rollup_key(event: UsageEvent, day: bool) -> tuple:
    moment = event.created_at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return (moment.replace(hour=0) if day else moment, event.api_key_id or NO_ID, event.assistant_id or NO_ID,
            event.source, event.admin_id or 0, event.api)


async def add_to_rollups(conn, events: Sequence[UsageEvent]) -> None:
    """Add written rows to their hours' and days' rollups (in the caller's transaction). The rollups are
    upserted in the order of their keys, so that two writers never wait on each other in a cycle."""
    for table, day in (("usage_hourly", False), ("usage_daily", True)):
        await _add_to(conn, table, _rollups(events, day))


def _rollups(events: Sequence[UsageEvent], day: bool) -> dict[tuple, list]:
    sums: dict[tuple, list] = {}
    for event in events:
        key = _rollup_key(event, day)
        total = sums.get(key)
        if total is None:
            total = sums[key] = [0] * 11 + [[0] * LATENCY_BUCKETS]
            total[8] = None  # cost: NULL until a priced call
        prompt, completion = event.prompt_tokens or 0, event.completion_tokens or 0
        total[0] += 1
        total[1] += event.status >= 400
        total[2] += prompt
        total[3] += completion
        total[4] += event.cached_tokens or 0
        total[5] += event.cache_write_tokens or 0
        total[6] += event.reasoning_tokens or 0
        total[7] += event.total_tokens if event.total_tokens is not None else prompt + completion
        if event.cost_usd is not None:
            total[8] = event.cost_usd if total[8] is None else total[8] + event.cost_usd
        total[9] += event.cost_usd is None and (prompt > 0 or completion > 0)
        total[10] += event.usage_estimated
        if event.latency_ms is not None:
            total[11][latency_bucket(event.latency_ms)] += 1
    return sums


async def _add_to(conn, table: str, sums: dict[tuple, list]) -> None:
    if not sums:
        return
    # One statement for the batch, its rollups as columns (a histogram as its text form, one a row).
    columns: list[list] = [[] for _ in range(18)]
    for key, total in sorted(sums.items(), key=lambda item: item[0]):
        for column, value in zip(columns, (*key, *total[:11], "{" + ",".join(map(str, total[11])) + "}")):
            column.append(value)
    await conn.execute(_UPSERT_ROLLUP.replace("usage_hourly", table), *columns)  # one of two constant names


_UPSERT_ROLLUP = """
    INSERT INTO usage_hourly (hour, api_key_id, assistant_id, source, admin_id, api, requests, errors, prompt_tokens,
                              completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, total_tokens,
                              cost_usd, unpriced, estimated, latency_counts)
    SELECT hour, api_key_id, assistant_id, source, admin_id, api, requests, errors, prompt_tokens, completion_tokens,
           cached_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd, unpriced, estimated,
           latency_counts::bigint[]
    FROM unnest($1::timestamptz[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[], $6::text[], $7::bigint[],
                $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[],
                $15::numeric[], $16::bigint[], $17::bigint[], $18::text[])
         AS batch(hour, api_key_id, assistant_id, source, admin_id, api, requests, errors, prompt_tokens,
                  completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd,
                  unpriced, estimated, latency_counts)
    ORDER BY hour, api_key_id, assistant_id, source, admin_id, api
    ON CONFLICT (hour, api_key_id, assistant_id, source, admin_id, api) DO UPDATE SET
        requests = usage_hourly.requests + excluded.requests,
        errors = usage_hourly.errors + excluded.errors,
        prompt_tokens = usage_hourly.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = usage_hourly.completion_tokens + excluded.completion_tokens,
        cached_tokens = usage_hourly.cached_tokens + excluded.cached_tokens,
        cache_write_tokens = usage_hourly.cache_write_tokens + excluded.cache_write_tokens,
        reasoning_tokens = usage_hourly.reasoning_tokens + excluded.reasoning_tokens,
        total_tokens = usage_hourly.total_tokens + excluded.total_tokens,
        cost_usd = CASE WHEN excluded.cost_usd IS NULL THEN usage_hourly.cost_usd
                        ELSE coalesce(usage_hourly.cost_usd, 0) + excluded.cost_usd END,
        unpriced = usage_hourly.unpriced + excluded.unpriced,
        estimated = usage_hourly.estimated + excluded.estimated,
        latency_counts = usage_add_counts(usage_hourly.latency_counts, excluded.latency_counts)
"""


@functools.lru_cache(maxsize=4096)  # callers come back: each address is parsed once
def _address(text: str | None):
    try:
        return None if text is None else ipaddress.ip_address(text)
    except ValueError:  # a unix socket peer, or anything else that is no IP address
        return None


async def recent_errors(db, limit: int = 20) -> list[UsageEvent]:
    """The newest failed calls (status 400 and up), newest first."""
    rows = await db.fetch(
        f"SELECT {', '.join(_FIELDS)} FROM usage_events WHERE status >= 400 ORDER BY created_at DESC, id DESC LIMIT $1",
        limit,
    )
    return [_event(row) for row in rows]


async def recent(db, limit: int = 100) -> list[UsageEvent]:
    """The newest events first."""
    rows = await db.fetch(
        f"SELECT {', '.join(_FIELDS)} FROM usage_events ORDER BY created_at DESC, id DESC LIMIT $1", limit
    )
    return [_event(row) for row in rows]


def _event(row) -> UsageEvent:
    values = dict(row)
    if values["event_id"] is None:  # a row from before event ids
        del values["event_id"]
    if values["client_addr"] is not None:
        values["client_addr"] = str(values["client_addr"])
    return UsageEvent(**values)


@dataclasses.dataclass(frozen=True)
class UsageFilter:
    """Which rows a usage report covers: a time range, optionally one assistant, one key, one source."""

    since: datetime
    until: datetime
    assistant_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    #: ``api`` or ``playground`` (None: both).
    source: str | None = None

    def args(self) -> tuple:
        return self.since, self.until, self.assistant_id, self.api_key_id, self.source


# $1..$5 are UsageFilter.args(): constant clauses, never built from input. The rollups' hours are whole,
# and a filter's bounds are whole days: the rollups cover a filter's range exactly.
_WHERE = """
    created_at >= $1 AND created_at < $2
    AND ($3::uuid IS NULL OR assistant_id = $3)
    AND ($4::uuid IS NULL OR api_key_id = $4)
    AND ($5::text IS NULL OR source = $5)
"""
_WHERE_HOURS = """
    hour >= $1 AND hour < $2
    AND ($3::uuid IS NULL OR assistant_id = $3)
    AND ($4::uuid IS NULL OR api_key_id = $4)
    AND ($5::text IS NULL OR source = $5)
"""
_TOTALS = """
    coalesce(sum(requests), 0)::bigint AS requests,
    coalesce(sum(errors), 0)::bigint AS errors,
    coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
    coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
    coalesce(sum(cached_tokens), 0)::bigint AS cached_tokens,
    coalesce(sum(cache_write_tokens), 0)::bigint AS cache_write_tokens,
    coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens,
    sum(cost_usd) AS cost_usd,
    coalesce(sum(unpriced), 0)::bigint AS unpriced,
    coalesce(sum(estimated), 0)::bigint AS estimated
"""
#: The rows as rollups would hold them (one row a call), for a range that does not fall on whole hours.
_ROWS_AS_ROLLUPS = f"""(
    SELECT coalesce(api_key_id, '{NO_ID}') AS api_key_id, coalesce(assistant_id, '{NO_ID}') AS assistant_id,
           source, coalesce(admin_id, 0) AS admin_id, api, created_at AS hour, 1 AS requests,
           (status >= 400)::int AS errors, coalesce(prompt_tokens, 0) AS prompt_tokens,
           coalesce(completion_tokens, 0) AS completion_tokens, coalesce(cached_tokens, 0) AS cached_tokens,
           coalesce(cache_write_tokens, 0) AS cache_write_tokens, coalesce(reasoning_tokens, 0) AS reasoning_tokens,
           cost_usd, (cost_usd IS NULL AND (prompt_tokens > 0 OR completion_tokens > 0))::int AS unpriced,
           usage_estimated::int AS estimated,
           usage_counts(ARRAY[usage_latency_bucket(latency_ms)], ARRAY[1::bigint]) AS latency_counts
    FROM usage_events WHERE created_at >= $1 AND created_at < $2
) AS usage_hourly"""
_NO_ID = f"'{NO_ID}'::uuid"
#: Bucket sizes a timeline may use.
BUCKETS = ("hour", "day")


def _whole_hour(moment: datetime | None) -> bool:
    """True for a whole UTC hour (or no moment at all): where the hourly rollups begin and end."""
    return moment is None or moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0) == moment


def _hours(where: UsageFilter, *, by_hour: bool = False) -> str:
    """What a report reads: the daily rollups when the range falls on whole days (a usage page's
    always does) and the report is not by hour, the hourly ones when it falls on whole hours, else the
    rows themselves, shaped as rollups."""
    if not (_whole_hour(where.since) and _whole_hour(where.until)):
        return _ROWS_AS_ROLLUPS
    if not by_hour and all(moment.astimezone(timezone.utc).hour == 0 for moment in (where.since, where.until)):
        return "usage_daily AS usage_hourly"
    return "usage_hourly"


async def _report(db, where: UsageFilter, groups: tuple[tuple[str, str], ...] = ()) -> list[dict]:
    """Totals over the filter, per group (``groups``: (expression over a rollup row, name) pairs; none: one
    row), busiest first, each with its latency p50 and p95 (ms) from its rollups' histograms, summed
    bucket by bucket with ``unnest`` (what a row-by-row array sum would make slow over many rollups)."""
    table = _hours(where)
    columns = "".join(f"{expression} AS {name}, " for expression, name in groups)
    grouped = ", ".join(str(n + 1) for n in range(len(groups)))
    rows = await db.fetch(f"SELECT {columns}{_TOTALS} FROM {table} WHERE {_WHERE_HOURS}"
                          + (f" GROUP BY {grouped} ORDER BY requests DESC" if groups else ""), *where.args())
    buckets = await db.fetch(
        f"SELECT {columns}bucket, sum(calls)::bigint AS calls "
        f"FROM {table}, unnest(latency_counts) WITH ORDINALITY AS histogram(calls, bucket) "
        f"WHERE {_WHERE_HOURS} AND calls > 0 GROUP BY {grouped + ', ' if groups else ''}bucket", *where.args())
    histograms: dict[tuple, list[int]] = {}
    for row in buckets:
        histogram = histograms.setdefault(tuple(row[name] for _, name in groups), [0] * LATENCY_BUCKETS)
        histogram[row["bucket"] - 1] = row["calls"]
    found = []
    for row in rows:
        totals = dict(row)
        counts = histograms.get(tuple(row[name] for _, name in groups), ())
        totals["latency_p50"] = latency_percentile(counts, 0.5)
        totals["latency_p95"] = latency_percentile(counts, 0.95)
        found.append(totals)
    return found


def latency_percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (ms) of a rollup's latency histogram: in the bucket of the call of that rank
    (a bucket spans a third of a power of two, 26%), interpolated geometrically within it; None for no
    calls."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for bucket, count in enumerate(counts):
        if count and seen + count >= rank:
            low, high = 2 ** (bucket / 3), 2 ** ((bucket + 1) / 3)
            if bucket == LATENCY_BUCKETS - 1:
                return low
            fraction = (rank - seen) / count
            return low * (high / low) ** fraction if bucket else high * fraction
        seen += count
    return None


async def summary(db, where: UsageFilter) -> dict:
    """Totals over the filter: requests, errors, tokens (the prompt's read from and written to the
    provider's cache, and the completion's reasoning, among them), cost, latency p50 and p95."""
    return (await _report(db, where))[0]


async def by_assistant(db, where: UsageFilter) -> list[dict]:
    """Totals per assistant, busiest first."""
    return await _report(db, where, ((f"nullif(assistant_id, {_NO_ID})", "assistant_id"),))


async def by_key(db, where: UsageFilter) -> list[dict]:
    """Totals per API key (the playground's calls, which have none, per admin), busiest first."""
    return await _report(db, where, ((f"nullif(usage_hourly.api_key_id, {_NO_ID})", "api_key_id"),
                                     ("source", "source"), ("nullif(usage_hourly.admin_id, 0)", "admin_id")))


async def by_api(db, where: UsageFilter) -> list[dict]:
    """Totals per inbound API (``chat``, ``messages``...), busiest first."""
    return await _report(db, where, (("api", "api"),))


async def spent(db, *, api_key_id: uuid.UUID | None = None, assistant_id: uuid.UUID | None = None,
                since: datetime | None = None) -> tuple[Decimal, int]:
    """What one key's (or one assistant's) calls have cost since a time (None: ever): USD of the calls
    whose cost is known, and tokens. From the rollups when ``since`` is a whole hour (a budget period's
    start always is), else from the rows; the two always agree."""
    if _whole_hour(since):
        table, moment = "usage_hourly", "hour"
        tokens = "total_tokens"
    else:
        table, moment = "usage_events", "created_at"
        tokens = "coalesce(total_tokens, coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0))"
    row = await db.fetchrow(
        f"""
        SELECT coalesce(sum(cost_usd), 0) AS usd, coalesce(sum({tokens}), 0) AS tokens
        FROM {table}
        WHERE ($1::uuid IS NULL OR api_key_id = $1) AND ($2::uuid IS NULL OR assistant_id = $2)
          AND ($1::uuid IS NOT NULL OR $2::uuid IS NOT NULL)
          AND ($3::timestamptz IS NULL OR {moment} >= $3)
        """,
        api_key_id, assistant_id, since)
    return row["usd"], int(row["tokens"])


async def spent_by_key(db, since: dict[uuid.UUID, datetime | None]) -> dict[uuid.UUID, tuple[Decimal, int]]:
    """``spent`` for many keys at once, each since its own time."""
    if not since:
        return {}
    if all(_whole_hour(moment) for moment in since.values()):
        table, moment, tokens = "usage_hourly", "hour", "u.total_tokens"
    else:
        table, moment = "usage_events", "created_at"
        tokens = "coalesce(u.total_tokens, coalesce(u.prompt_tokens, 0) + coalesce(u.completion_tokens, 0))"
    rows = await db.fetch(
        f"""
        SELECT k.id, coalesce(sum(u.cost_usd), 0) AS usd, coalesce(sum({tokens}), 0) AS tokens
        FROM unnest($1::uuid[], $2::timestamptz[]) AS k(id, since)
        LEFT JOIN {table} u ON u.api_key_id = k.id AND (k.since IS NULL OR u.{moment} >= k.since)
        GROUP BY k.id
        """,
        list(since), list(since.values()))
    return {row["id"]: (row["usd"], int(row["tokens"])) for row in rows}


async def timeline(db, where: UsageFilter, bucket: str) -> list[dict]:
    """Requests, errors and tokens per hour or day (UTC) over the filter's range, empty buckets included."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}")
    rows = await db.fetch(
        f"""
        WITH filtered AS (SELECT * FROM {_hours(where, by_hour=bucket == "hour")} WHERE {_WHERE_HOURS}),
        buckets AS (
            SELECT generate_series(
                date_trunc($6, $1 AT TIME ZONE 'UTC'),
                date_trunc($6, ($2 - interval '1 microsecond') AT TIME ZONE 'UTC'),
                ('1 ' || $6)::interval
            ) AS bucket
        )
        SELECT b.bucket,
               coalesce(sum(f.requests), 0)::bigint AS requests,
               coalesce(sum(f.errors), 0)::bigint AS errors,
               (coalesce(sum(f.prompt_tokens), 0) + coalesce(sum(f.completion_tokens), 0))::bigint AS tokens
        FROM buckets b LEFT JOIN filtered f ON date_trunc($6, f.hour AT TIME ZONE 'UTC') = b.bucket
        GROUP BY b.bucket ORDER BY b.bucket
        """,
        *where.args(),
        bucket,
    )
    return [dict(row) for row in rows]


async def export(pool, where: UsageFilter, chunk: int = 1000):
    """Every row of the filter, oldest first, read with a server-side cursor (any number of rows)."""
    async with pool.acquire() as conn, conn.transaction():
        cursor = conn.cursor(f"SELECT {', '.join(_FIELDS)} FROM usage_events WHERE {_WHERE} ORDER BY created_at, id",
                             *where.args(), prefetch=chunk)
        async for row in cursor:
            yield _event(row)
