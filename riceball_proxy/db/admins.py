"""The ``admins`` table: people who may use the admin panel."""
from __future__ import annotations

import dataclasses
from datetime import datetime

import asyncpg

_COLUMNS = "id, username, password_hash, created_at, last_login_at"


@dataclasses.dataclass(frozen=True)
class Admin:
    id: int
    username: str
    password_hash: str = dataclasses.field(repr=False)
    created_at: datetime
    last_login_at: datetime | None


class UsernameTaken(ValueError):
    """An admin with that username exists already."""


async def create(db, username: str, password_hash: str) -> Admin:
    """Add an admin; raises UsernameTaken when the name is in use."""
    try:
        row = await db.fetchrow(
            f"INSERT INTO admins (username, password_hash) VALUES ($1, $2) RETURNING {_COLUMNS}",
            username,
            password_hash,
        )
    except asyncpg.UniqueViolationError:
        raise UsernameTaken(f"an admin named {username!r} exists already") from None
    return Admin(**row)


async def get_by_username(db, username: str) -> Admin | None:
    """The admin with this username, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM admins WHERE username = $1", username)
    return None if row is None else Admin(**row)


async def count(db) -> int:
    """How many admins there are."""
    return await db.fetchval("SELECT count(*) FROM admins")


async def names(db) -> dict[int, str]:
    """Every admin's username, by id."""
    return {row["id"]: row["username"] for row in await db.fetch("SELECT id, username FROM admins")}


async def get(db, admin_id: int) -> Admin | None:
    """The admin with this id, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM admins WHERE id = $1", admin_id)
    return None if row is None else Admin(**row)


async def record_login(db, admin_id: int) -> None:
    """Note a successful login."""
    await db.execute("UPDATE admins SET last_login_at = now() WHERE id = $1", admin_id)


#: Serialises the creation of the first admin ("admins" in ASCII).
FIRST_ADMIN_LOCK_ID = 0x61646D696E73


async def create_first(pool, username: str, password_hash: str) -> Admin | None:
    """Create an admin only if there is none yet (the setup page); None when one exists."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", FIRST_ADMIN_LOCK_ID)
        if await conn.fetchval("SELECT exists(SELECT 1 FROM admins)"):
            return None
        row = await conn.fetchrow(
            f"INSERT INTO admins (username, password_hash) VALUES ($1, $2) RETURNING {_COLUMNS}",
            username,
            password_hash,
        )
    return Admin(**row)


async def set_password(pool, admin_id: int, password_hash: str) -> bool:
    """Change an admin's password and end every session of theirs; False when there is no such admin."""
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetchval("UPDATE admins SET password_hash = $2 WHERE id = $1 RETURNING true",
                                    admin_id, password_hash)
        await conn.execute("DELETE FROM admin_sessions WHERE admin_id = $1", admin_id)
    return found is True


async def delete(db, admin_id: int) -> bool:
    """Delete an admin (their sessions end with them); False when there was none."""
    return await db.fetchval("DELETE FROM admins WHERE id = $1 RETURNING true", admin_id) is True
