"""The ``usage_events`` table: one row per API call, written in batches off the request path."""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import operator
import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
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
    """Write a batch of events with one COPY; rows already written (same ``event_id``) are skipped.

    A batch is sent again only when its acknowledgement was lost; then the plain COPY meets the unique
    ``event_id`` index, and the batch goes through a temporary table and ``ON CONFLICT DO NOTHING``
    instead, so nothing is written twice while the common case stays one COPY.
    """
    # attrgetter, not dataclasses.astuple: astuple deep-copies every value, which costs more than the COPY.
    records = [(*_values(event)[:-1], _address(event.client_addr)) for event in events]
    try:
        await pool.copy_records_to_table("usage_events", records=records, columns=_FIELDS)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "usage_events_event_id":
            raise
        await _insert_new(pool, records)


async def _insert_new(pool, records: list[tuple]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"CREATE TEMP TABLE usage_staging ON COMMIT DROP AS "
                           f"SELECT {_COLUMNS} FROM usage_events WITH NO DATA")
        await conn.copy_records_to_table("usage_staging", records=records, columns=_FIELDS)
        await conn.execute(f"INSERT INTO usage_events ({_COLUMNS}) SELECT {_COLUMNS} FROM usage_staging "
                           "ON CONFLICT (event_id) DO NOTHING")


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


# $1..$5 are UsageFilter.args(): a constant clause, never built from input.
_WHERE = """
    created_at >= $1 AND created_at < $2
    AND ($3::uuid IS NULL OR assistant_id = $3)
    AND ($4::uuid IS NULL OR api_key_id = $4)
    AND ($5::text IS NULL OR source = $5)
"""
_TOTALS = """
    count(*) AS requests,
    count(*) FILTER (WHERE status >= 400) AS errors,
    coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
    coalesce(sum(completion_tokens), 0) AS completion_tokens,
    coalesce(sum(cached_tokens), 0) AS cached_tokens,
    coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
    coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
    sum(cost_usd) AS cost_usd,
    count(*) FILTER (WHERE cost_usd IS NULL AND (prompt_tokens > 0 OR completion_tokens > 0)) AS unpriced,
    count(*) FILTER (WHERE usage_estimated) AS estimated,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS latency_p50,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS latency_p95
"""
#: Bucket sizes a timeline may use.
BUCKETS = ("hour", "day")


async def summary(db, where: UsageFilter) -> dict:
    """Totals over the filter: requests, errors, tokens (the prompt's read from and written to the
    provider's cache, and the completion's reasoning, among them), cost, latency p50 and p95."""
    return dict(await db.fetchrow(f"SELECT {_TOTALS} FROM usage_events WHERE {_WHERE}", *where.args()))


async def by_assistant(db, where: UsageFilter) -> list[dict]:
    """Totals per assistant, busiest first."""
    rows = await db.fetch(f"SELECT assistant_id, {_TOTALS} FROM usage_events WHERE {_WHERE} "
                          "GROUP BY assistant_id ORDER BY requests DESC", *where.args())
    return [dict(row) for row in rows]


async def by_key(db, where: UsageFilter) -> list[dict]:
    """Totals per API key (the playground's calls, which have none, per admin), busiest first."""
    rows = await db.fetch(f"SELECT api_key_id, source, admin_id, {_TOTALS} FROM usage_events WHERE {_WHERE} "
                          "GROUP BY api_key_id, source, admin_id ORDER BY requests DESC", *where.args())
    return [dict(row) for row in rows]


async def by_api(db, where: UsageFilter) -> list[dict]:
    """Totals per inbound API (``chat``, ``messages``...), busiest first."""
    rows = await db.fetch(f"SELECT api, {_TOTALS} FROM usage_events WHERE {_WHERE} "
                          "GROUP BY api ORDER BY requests DESC", *where.args())
    return [dict(row) for row in rows]


async def spent(db, *, api_key_id: uuid.UUID | None = None, assistant_id: uuid.UUID | None = None,
                since: datetime | None = None) -> tuple[Decimal, int]:
    """What one key's (or one assistant's) calls have cost since a time (None: ever): USD of the calls
    whose cost is known, and tokens."""
    row = await db.fetchrow(
        """
        SELECT coalesce(sum(cost_usd), 0) AS usd,
               coalesce(sum(coalesce(total_tokens, coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0))),
                        0) AS tokens
        FROM usage_events
        WHERE ($1::uuid IS NULL OR api_key_id = $1) AND ($2::uuid IS NULL OR assistant_id = $2)
          AND ($1::uuid IS NOT NULL OR $2::uuid IS NOT NULL)
          AND ($3::timestamptz IS NULL OR created_at >= $3)
        """,
        api_key_id, assistant_id, since)
    return row["usd"], int(row["tokens"])


async def spent_by_key(db, since: dict[uuid.UUID, datetime | None]) -> dict[uuid.UUID, tuple[Decimal, int]]:
    """``spent`` for many keys at once, each since its own time."""
    if not since:
        return {}
    rows = await db.fetch(
        """
        SELECT k.id, coalesce(sum(u.cost_usd), 0) AS usd,
               coalesce(sum(coalesce(u.total_tokens, coalesce(u.prompt_tokens, 0) + coalesce(u.completion_tokens, 0))),
                        0) AS tokens
        FROM unnest($1::uuid[], $2::timestamptz[]) AS k(id, since)
        LEFT JOIN usage_events u ON u.api_key_id = k.id AND (k.since IS NULL OR u.created_at >= k.since)
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
        WITH filtered AS (SELECT * FROM usage_events WHERE {_WHERE}),
        buckets AS (
            SELECT generate_series(
                date_trunc($6, $1 AT TIME ZONE 'UTC'),
                date_trunc($6, ($2 - interval '1 microsecond') AT TIME ZONE 'UTC'),
                ('1 ' || $6)::interval
            ) AS bucket
        )
        SELECT b.bucket,
               count(f.id) AS requests,
               count(f.id) FILTER (WHERE f.status >= 400) AS errors,
               coalesce(sum(f.prompt_tokens), 0) + coalesce(sum(f.completion_tokens), 0) AS tokens
        FROM buckets b LEFT JOIN filtered f ON date_trunc($6, f.created_at AT TIME ZONE 'UTC') = b.bucket
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
