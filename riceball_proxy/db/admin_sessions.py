"""The ``admin_sessions`` table: the admin panel's sessions, which the server can end."""
from __future__ import annotations

import datetime
import hashlib

from riceball_proxy.db.admins import _COLUMNS as _ADMIN_COLUMNS
from riceball_proxy.db.admins import Admin


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


async def start(db, session_id: str, admin_id: int, lifetime: datetime.timedelta) -> None:
    """Record a new session of ``admin_id`` lasting ``lifetime``; sessions past their end are removed."""
    await db.execute("DELETE FROM admin_sessions WHERE expires_at < now()")
    await db.execute("INSERT INTO admin_sessions (id_hash, admin_id, expires_at) VALUES ($1, $2, now() + $3::interval)",
                     _hash(session_id), admin_id, lifetime)


async def admin_for(db, session_id: str) -> Admin | None:
    """The admin whose live session this is, or None (ended, expired, or the admin deleted)."""
    columns = ", ".join(f"a.{name.strip()}" for name in _ADMIN_COLUMNS.split(","))
    row = await db.fetchrow(
        f"SELECT {columns} FROM admin_sessions s JOIN admins a ON a.id = s.admin_id "
        "WHERE s.id_hash = $1 AND s.expires_at > now()",
        _hash(session_id),
    )
    return None if row is None else Admin(**row)


async def end(db, session_id: str) -> None:
    """End one session."""
    await db.execute("DELETE FROM admin_sessions WHERE id_hash = $1", _hash(session_id))


async def end_all(db, admin_id: int) -> int:
    """End every session of an admin; how many there were."""
    result = await db.execute("DELETE FROM admin_sessions WHERE admin_id = $1", admin_id)
    return int(result.split()[-1])
