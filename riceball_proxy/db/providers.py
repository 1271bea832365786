"""The ``providers`` table: upstream connections (type, base URL, encrypted API key, timeouts)."""
from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import asyncpg

_COLUMNS = ("id, name, type, base_url, api_key_encrypted, connect_timeout, read_timeout, max_connections, "
            "queue_timeout, created_at, updated_at")
#: Upstream calls one provider may have open at once, and seconds a call waits for a free one.
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_QUEUE_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Provider:
    id: int
    name: str
    type: str
    base_url: str
    #: Fernet ciphertext; decrypt with the app's SecretBox only where the upstream call is made.
    api_key_encrypted: bytes | None = dataclasses.field(repr=False)
    connect_timeout: float
    read_timeout: float
    max_connections: int
    queue_timeout: float
    created_at: datetime
    updated_at: datetime

    @property
    def has_api_key(self) -> bool:
        return self.api_key_encrypted is not None


class ProviderNameTaken(ValueError):
    """A provider with that name exists already."""


class ProviderInUse(ValueError):
    """Assistants still use the provider, so it cannot be deleted."""

#: ``update`` leaves the stored API key as it is when given this.
KEEP = object()


#: The columns ``create`` and ``update`` write (the key apart: ``update`` may keep it).
_WRITTEN = ("name", "type", "base_url", "connect_timeout", "read_timeout", "max_connections", "queue_timeout")
_INSERT = (f"INSERT INTO providers ({', '.join(_WRITTEN)}, api_key_encrypted) "
           f"VALUES ({', '.join(f'${n}' for n in range(1, len(_WRITTEN) + 2))}) RETURNING {_COLUMNS}")


async def create(
    db,
    *,
    name: str,
    type: str,
    base_url: str,
    api_key_encrypted: bytes | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 300.0,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
) -> Provider:
    """Add a provider; raises ProviderNameTaken when the name is in use."""
    values = dict(name=name, type=type, base_url=base_url, connect_timeout=connect_timeout, read_timeout=read_timeout,
                  max_connections=max_connections, queue_timeout=queue_timeout)
    row = await _write(db, name, _INSERT, *(values[column] for column in _WRITTEN), api_key_encrypted)
    assert row is not None  # an INSERT ... RETURNING returns its row
    return Provider(**row)


async def _write(db, name: str, sql: str, *args) -> asyncpg.Record | None:
    try:
        return await db.fetchrow(sql, *args)
    except asyncpg.UniqueViolationError:
        raise ProviderNameTaken(f"a provider named {name!r} exists already") from None


async def get(db, provider_id: int) -> Provider | None:
    """The provider with this id, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM providers WHERE id = $1", provider_id)
    return None if row is None else Provider(**row)


async def get_by_name(db, name: str) -> Provider | None:
    """The provider with this name, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM providers WHERE name = $1", name)
    return None if row is None else Provider(**row)


async def list_all(db) -> list[Provider]:
    """Every provider, by name."""
    return [Provider(**row) for row in await db.fetch(f"SELECT {_COLUMNS} FROM providers ORDER BY name")]


_N = len(_WRITTEN)
_UPDATE = f"""
    WITH new_key AS (DELETE FROM provider_alerts WHERE provider_id = $1 AND NOT ${_N + 2})
    UPDATE providers
    SET {', '.join(f'{column} = ${n}' for n, column in enumerate(_WRITTEN, start=2))},
        api_key_encrypted = CASE WHEN ${_N + 2} THEN api_key_encrypted ELSE ${_N + 3} END, updated_at = now()
    WHERE id = $1
    RETURNING {_COLUMNS}
"""


async def update(
    db,
    provider_id: int,
    *,
    name: str,
    type: str,
    base_url: str,
    api_key_encrypted: bytes | None | object = KEEP,
    connect_timeout: float,
    read_timeout: float,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
) -> Provider | None:
    """Change a provider (its API key only when one is given: a new key ends the provider's alert that its
    credentials were refused); None when it does not exist."""
    values = dict(name=name, type=type, base_url=base_url, connect_timeout=connect_timeout, read_timeout=read_timeout,
                  max_connections=max_connections, queue_timeout=queue_timeout)
    keep = api_key_encrypted is KEEP
    row = await _write(db, name, _UPDATE, provider_id, *(values[column] for column in _WRITTEN), keep,
                       None if keep else api_key_encrypted)
    return None if row is None else Provider(**row)


async def delete(db, provider_id: int) -> bool:
    """Delete a provider; raises ProviderInUse, naming them, while assistants use it (as primary or as a
    fallback). False when it did not exist."""
    try:
        return await db.fetchval("DELETE FROM providers WHERE id = $1 RETURNING true", provider_id) is True
    except asyncpg.ForeignKeyViolationError:
        users = ", ".join(f"{name} ({role})" for _, name, role in await users_of(db, provider_id))
        raise ProviderInUse(f"assistants use this provider: {users}; change or delete them first") from None


async def users_of(db, provider_id: int) -> list[tuple[Any, str, str]]:
    """The assistants that use a provider: (id, name, ``primary`` or ``fallback``), by name."""
    rows = await db.fetch("""
        SELECT id, name, 'primary' AS role FROM assistants WHERE provider_id = $1
        UNION
        SELECT a.id, a.name, 'fallback' FROM assistant_targets t JOIN assistants a ON a.id = t.assistant_id
        WHERE t.provider_id = $1
        ORDER BY name, role DESC""", provider_id)
    return [(row["id"], row["name"], row["role"]) for row in rows]


async def count(db) -> int:
    """How many providers there are."""
    return await db.fetchval("SELECT count(*) FROM providers")
