"""The ``login_failures`` table: failed admin logins by hashed key, shared by every worker and instance."""
from __future__ import annotations

import datetime


async def recent(db, key_hashes: list[bytes], window: datetime.timedelta) -> dict[bytes, tuple[int, float]]:
    """For each key with failures within ``window``: (how many, seconds until the oldest leaves the window)."""
    rows = await db.fetch(
        """
        SELECT key_hash, count(*) AS failures,
               extract(epoch FROM min(failed_at) + $2::interval - now()) AS wait
        FROM login_failures
        WHERE key_hash = ANY($1::bytea[]) AND failed_at > now() - $2::interval
        GROUP BY key_hash
        """,
        key_hashes,
        window,
    )
    return {row["key_hash"]: (row["failures"], float(row["wait"])) for row in rows}


async def add(db, key_hashes: list[bytes], window: datetime.timedelta, max_rows: int) -> None:
    """Count one failure for each key; rows past the window, and the oldest past ``max_rows``, are removed."""
    await db.execute(
        """
        DELETE FROM login_failures
        WHERE failed_at < now() - $1::interval
           OR failed_at <= (SELECT failed_at FROM login_failures ORDER BY failed_at DESC OFFSET $2 LIMIT 1)
        """,
        window,
        max_rows - len(key_hashes),
    )
    await db.execute("INSERT INTO login_failures (key_hash) SELECT unnest($1::bytea[])", key_hashes)


async def forget(db, key_hash: bytes) -> None:
    """Drop a key's failures."""
    await db.execute("DELETE FROM login_failures WHERE key_hash = $1", key_hash)
