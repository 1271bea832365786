"""The ``api_keys`` table: gateway keys, stored as SHA-256 hashes with a display prefix."""
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone

import asyncpg

from riceball_proxy.limits import FIELDS as LIMIT_FIELDS
from riceball_proxy.limits import Limits

_COLUMNS = ("id, name, prefix, assistant_ids, created_at, expires_at, revoked_at, last_used_at, "
            + ", ".join(LIMIT_FIELDS))


@dataclasses.dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    name: str
    #: The first characters of the key, to recognise it; never enough to use it.
    prefix: str
    #: None: every assistant; otherwise only these.
    assistant_ids: tuple[uuid.UUID, ...] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    limits: Limits = Limits()

    @classmethod
    def from_row(cls, row) -> ApiKey:
        values = {name: value for name, value in row.items() if name not in LIMIT_FIELDS}
        if values["assistant_ids"] is not None:
            values["assistant_ids"] = tuple(values["assistant_ids"])
        return cls(**values, limits=Limits.from_row(row))

    def status(self, now: datetime | None = None) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or datetime.now(timezone.utc)):
            return "expired"
        return "active"

    def allows(self, assistant_id: uuid.UUID) -> bool:
        """True when this key may call that assistant."""
        return self.assistant_ids is None or assistant_id in self.assistant_ids


class AmbiguousKey(LookupError):
    """A prefix matches more than one key."""


class KeyNameTaken(ValueError):
    """A key in force has that name already (revoke it to give its name to a new one)."""


async def create(
    db,
    *,
    name: str,
    key_hash: bytes,
    prefix: str,
    assistant_ids: Iterable[uuid.UUID] | None = None,
    expires_at: datetime | None = None,
    limits: Limits = Limits(),
) -> ApiKey:
    """Store a new key's hash and description; raises KeyNameTaken when a key in force has the name."""
    row = await _write(db, name, _INSERT, *_values(assistant_ids, expires_at, limits), key_hash, prefix)
    return ApiKey.from_row(row)


#: The columns ``create`` and ``update`` write, in the order of ``_values`` (after the name).
_WRITTEN = ("name", "assistant_ids", "expires_at", *LIMIT_FIELDS)
_INSERT = (f"INSERT INTO api_keys ({', '.join(_WRITTEN)}, key_hash, prefix) "
           f"VALUES ({', '.join(f'${n}' for n in range(1, len(_WRITTEN) + 3))}) RETURNING {_COLUMNS}")
_UPDATE = (f"UPDATE api_keys SET {', '.join(f'{column} = ${n}' for n, column in enumerate(_WRITTEN, start=1))} "
           f"WHERE id = ${len(_WRITTEN) + 1} RETURNING {_COLUMNS}")


def _values(assistant_ids: Iterable[uuid.UUID] | None, expires_at: datetime | None, limits: Limits) -> list:
    """The values of ``_WRITTEN`` after the name."""
    return [None if assistant_ids is None else list(assistant_ids), expires_at,
            *(getattr(limits, field) for field in LIMIT_FIELDS)]


async def issue(
    db,
    *,
    name: str,
    assistant_ids: Iterable[uuid.UUID] | None = None,
    expires_at: datetime | None = None,
    limits: Limits = Limits(),
) -> tuple[ApiKey, str]:
    """A new key: its secret made, its hash and display prefix stored; returns the key and the secret,
    which is shown once and kept nowhere. KeyNameTaken when a key in force has the name."""
    from riceball_proxy import crypto

    secret = crypto.generate_api_key()
    key = await create(db, name=name, key_hash=crypto.hash_api_key(secret), prefix=crypto.display_prefix(secret),
                       assistant_ids=assistant_ids, expires_at=expires_at, limits=limits)
    return key, secret


async def _write(db, name: str, sql: str, *args):
    """Run an INSERT or UPDATE whose first parameter is the key's ``name``; KeyNameTaken when a key in
    force has it."""
    try:
        return await db.fetchrow(sql, name, *args)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "api_keys_name_in_force":
            raise
        raise KeyNameTaken(f"a key named {name!r} is in force already (revoke it to reuse its name)") from None


async def in_force_named(db, name: str) -> ApiKey | None:
    """The key in force (not revoked) with this name, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE name = $1 AND revoked_at IS NULL", name)
    return None if row is None else ApiKey.from_row(row)


async def get_by_hash(db, key_hash: bytes) -> ApiKey | None:
    """The key whose SHA-256 is ``key_hash``, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash)
    return None if row is None else ApiKey.from_row(row)


async def list_all(db) -> list[ApiKey]:
    """Every key, newest first."""
    return [ApiKey.from_row(row) for row in await db.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at DESC")]


async def find(db, id_or_prefix: str) -> ApiKey | None:
    """The key with this id, or the only key whose display prefix starts with this text."""
    try:
        key_id = uuid.UUID(id_or_prefix)
    except ValueError:
        key_id = None
    if key_id is not None:
        row = await db.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return None if row is None else ApiKey.from_row(row)
    pattern = id_or_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM api_keys WHERE prefix LIKE $1 LIMIT 2", pattern)
    if len(rows) > 1:
        raise AmbiguousKey(f"more than one key starts with {id_or_prefix!r}; use its id")
    return ApiKey.from_row(rows[0]) if rows else None


async def revoke(db, key_id: uuid.UUID) -> ApiKey | None:
    """Mark a key revoked (a key revoked already keeps its first revocation time)."""
    row = await db.fetchrow(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {_COLUMNS}",
        key_id,
    )
    return None if row is None else ApiKey.from_row(row)


async def update(db, key_id: uuid.UUID, *, name: str, assistant_ids: Iterable[uuid.UUID] | None,
                 expires_at: datetime | None, limits: Limits) -> ApiKey | None:
    """Change a key's name, scope, expiry and limits (never its secret); None when there is no such key.
    Raises KeyNameTaken when another key in force has the name."""
    row = await _write(db, name, _UPDATE, *_values(assistant_ids, expires_at, limits), key_id)
    return None if row is None else ApiKey.from_row(row)


async def count_active(db) -> int:
    """How many keys are neither revoked nor expired."""
    return await db.fetchval(
        "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
    )


async def get(db, key_id: uuid.UUID) -> ApiKey | None:
    """The key with this id, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return None if row is None else ApiKey.from_row(row)


async def touch_last_used(db, used: dict[uuid.UUID, datetime]) -> None:
    """Move each key's ``last_used_at`` forward to the time given (never back)."""
    if not used:
        return
    await db.execute(
        """
        UPDATE api_keys AS k SET last_used_at = greatest(k.last_used_at, u.used_at)
        FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, used_at)
        WHERE k.id = u.id
        """,
        list(used),
        list(used.values()),
    )
