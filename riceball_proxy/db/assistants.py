"""The ``assistants`` table: an upstream model with a system prompt, parameters and policy."""
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

#: The model parameters an assistant can set, each with a lock flag (column ``<name>_locked``).
PARAMETERS = ("temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty", "seed", "stop")

_COLUMNS = """
    id, name, provider_id, model, system_prompt,
    temperature, temperature_locked, top_p, top_p_locked, max_tokens, max_tokens_locked,
    presence_penalty, presence_penalty_locked, frequency_penalty, frequency_penalty_locked,
    seed, seed_locked, stop, stop_locked,
    extra_params, allow_client_system, enabled, created_at, updated_at
"""


@dataclasses.dataclass(frozen=True)
class Assistant:
    id: uuid.UUID
    name: str
    provider_id: int
    model: str
    system_prompt: str
    #: The parameters the assistant sets (name -> value); absent ones are left to the client.
    parameters: Mapping[str, Any]
    #: Names of parameters whose assistant value wins over the client's.
    locked: frozenset[str]
    extra_params: Mapping[str, Any]
    allow_client_system: bool
    enabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Assistant:
        return cls(
            id=row["id"],
            name=row["name"],
            provider_id=row["provider_id"],
            model=row["model"],
            system_prompt=row["system_prompt"],
            parameters={name: row[name] for name in PARAMETERS if row[name] is not None},
            locked=frozenset(name for name in PARAMETERS if row[f"{name}_locked"]),
            extra_params=row["extra_params"],
            allow_client_system=row["allow_client_system"],
            enabled=row["enabled"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class InvalidAssistant(ValueError):
    """The values given cannot make an assistant (unknown provider, parameter out of range...)."""


async def create(
    db,
    *,
    name: str,
    provider_id: int,
    model: str,
    system_prompt: str = "",
    parameters: Mapping[str, Any] | None = None,
    locked: Iterable[str] = (),
    extra_params: Mapping[str, Any] | None = None,
    allow_client_system: bool = True,
    enabled: bool = True,
) -> Assistant:
    """Add an assistant; raises InvalidAssistant for values the schema refuses."""
    parameters = dict(parameters or {})
    locked = frozenset(locked)
    unknown = (set(parameters) | locked) - set(PARAMETERS)
    if unknown:
        raise InvalidAssistant(f"unknown parameters: {', '.join(sorted(unknown))}")
    values = []
    for parameter in PARAMETERS:
        values += [parameters.get(parameter), parameter in locked]
    try:
        row = await db.fetchrow(
            f"""
            INSERT INTO assistants (
                name, provider_id, model, system_prompt,
                temperature, temperature_locked, top_p, top_p_locked, max_tokens, max_tokens_locked,
                presence_penalty, presence_penalty_locked, frequency_penalty, frequency_penalty_locked,
                seed, seed_locked, stop, stop_locked,
                extra_params, allow_client_system, enabled
            ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                      $19, $20, $21)
            RETURNING {_COLUMNS}
            """,
            name,
            provider_id,
            model,
            system_prompt,
            *values,
            dict(extra_params or {}),
            allow_client_system,
            enabled,
        )
    except asyncpg.ForeignKeyViolationError:
        raise InvalidAssistant(f"no provider with id {provider_id}") from None
    except asyncpg.CheckViolationError as exc:
        raise InvalidAssistant(f"a value is out of range ({exc.constraint_name})") from None
    return Assistant.from_row(row)


async def get(db, assistant_id: uuid.UUID) -> Assistant | None:
    """The assistant with this id, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM assistants WHERE id = $1", assistant_id)
    return None if row is None else Assistant.from_row(row)


async def list_all(db) -> list[Assistant]:
    """Every assistant, by name."""
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM assistants ORDER BY name, created_at")
    return [Assistant.from_row(row) for row in rows]


async def existing_ids(db, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``ids`` name an assistant."""
    rows = await db.fetch("SELECT id FROM assistants WHERE id = ANY($1::uuid[])", list(ids))
    return {row["id"] for row in rows}
