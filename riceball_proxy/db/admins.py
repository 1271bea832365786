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
