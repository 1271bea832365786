"""The ``assistants`` table: an upstream model with a system prompt, parameters and policy."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from riceball_proxy.limits import FIELDS as LIMIT_FIELDS
from riceball_proxy.limits import Limits

#: The model parameters an assistant can set, each with a lock flag (column ``<name>_locked``).
PARAMETERS = ("temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty", "seed", "stop",
              "reasoning_effort")
#: The values of ``reasoning_effort`` (each provider's adapter maps it to its own control).
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

#: The columns after the parameters that ``create`` and ``update`` write, in order.
_POLICY_COLUMNS = (*LIMIT_FIELDS, "price_input", "price_output", "price_cached_input", "price_cache_write")

#: The columns ``create`` and ``update`` write, in the order of ``_row``'s values.
_WRITTEN = ("name", "provider_id", "model", "system_prompt",
            *(column for parameter in PARAMETERS for column in (parameter, f"{parameter}_locked")),
            "extra_params", "allow_client_system", "enabled", *_POLICY_COLUMNS,
            "deadline", "max_attempts", "expose_target", "auto_cache")
#: What is read of an assistant: what is written, and its fallback targets from their table.
_COLUMNS = (f"id, {', '.join(_WRITTEN)}, created_at, updated_at, "
            "(SELECT coalesce(jsonb_agg(jsonb_build_object('provider_id', t.provider_id, 'model', t.model, "
            "'weight', t.weight, 'priority', t.priority, 'params', t.params, "
            "'prices', jsonb_build_array(t.price_input::text, t.price_output::text, t.price_cached_input::text, "
            "t.price_cache_write::text)) ORDER BY t.position), '[]') "
            "FROM assistant_targets t WHERE t.assistant_id = assistants.id) AS fallbacks")

#: (input, output, cache read, cache write): USD per million tokens, each None when not set (cache reads
#: then cost the input price, cache writes Anthropic's 1.25 times it).
Prices = tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None]
NO_PRICES: Prices = (None, None, None, None)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an assistant's calls can go: a provider's model. The primary is the assistant's own
    ``provider_id``/``model`` (priority 0, weight 1); fallbacks come after it by ``priority`` (0: beside
    the primary), and targets of equal priority share the calls by ``weight``. ``params`` override the
    request's parameters; ``prices``, when set, are what its calls cost (a fallback's own price)."""

    provider_id: int
    model: str
    weight: int = 1
    priority: int = 1
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prices: Prices = NO_PRICES

    def as_dict(self) -> dict[str, Any]:
        return {"provider_id": self.provider_id, "model": self.model, "weight": self.weight,
                "priority": self.priority, "params": dict(self.params),
                **({"prices": [None if p is None else str(p) for p in self.prices]} if self.prices != NO_PRICES
                   else {})}

    @classmethod
    def from_json(cls, target: Mapping[str, Any]) -> Target:
        """A target as the assistant query reads it (prices as text, for exact decimals)."""
        prices: Prices = tuple(None if p is None else Decimal(p)  # type: ignore[assignment]  # four, as read
                               for p in target.get("prices") or NO_PRICES)
        return cls(target["provider_id"], target["model"], weight=target["weight"], priority=target["priority"],
                   params=target["params"], prices=prices)


#: The default bounds on one call's attempts: total seconds, and upstream calls.
DEFAULT_DEADLINE = 60.0
DEFAULT_MAX_ATTEMPTS = 3


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
    limits: Limits = Limits()
    #: USD per million tokens (None: not set, so the model's known price applies, if any).
    price_input: Decimal | None = None
    price_output: Decimal | None = None
    price_cached_input: Decimal | None = None
    #: USD per million input tokens written to a prompt cache (None: 1.25 times the input price).
    price_cache_write: Decimal | None = None
    #: Prompt-cache breakpoints placed on the system prompt and the last turn of calls that set none.
    auto_cache: bool = False
    #: Tried in order of priority when the primary fails before answering (see Target).
    fallbacks: tuple[Target, ...] = ()
    #: Seconds for all attempts of one call together, and the most upstream calls one call makes.
    deadline: float = DEFAULT_DEADLINE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: Answers carry ``x-riceball-provider`` and ``x-riceball-model`` (the target that served).
    expose_target: bool = False

    @functools.cached_property  # an Assistant is immutable, and read on every call
    def targets(self) -> tuple[Target, ...]:
        """The primary, then the fallbacks."""
        return (Target(self.provider_id, self.model, priority=0), *self.fallbacks)

    def as_prepared(self, target: Target) -> bool:
        """True for the target that takes a call as it was prepared: the assistant's own provider and model,
        without parameters of its own."""
        return target.provider_id == self.provider_id and target.model == self.model and not target.params

    def fields(self) -> dict[str, Any]:
        """The configuration as the keyword arguments :func:`create` and :func:`update` take."""
        return {
            "name": self.name, "provider_id": self.provider_id, "model": self.model,
            "system_prompt": self.system_prompt, "parameters": dict(self.parameters), "locked": self.locked,
            "extra_params": dict(self.extra_params), "allow_client_system": self.allow_client_system,
            "enabled": self.enabled, "limits": self.limits,
            "prices": self.prices,
            "fallbacks": self.fallbacks, "deadline": self.deadline, "max_attempts": self.max_attempts,
            "expose_target": self.expose_target, "auto_cache": self.auto_cache,
        }

    @property
    def prices(self) -> Prices:
        return self.price_input, self.price_output, self.price_cached_input, self.price_cache_write

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
            limits=Limits.from_row(row),
            price_input=row["price_input"],
            price_output=row["price_output"],
            price_cached_input=row["price_cached_input"],
            price_cache_write=row["price_cache_write"],
            auto_cache=row["auto_cache"],
            fallbacks=tuple(Target.from_json(target) for target in row["fallbacks"]),
            deadline=row["deadline"],
            max_attempts=row["max_attempts"],
            expose_target=row["expose_target"],
        )


class InvalidAssistant(ValueError):
    """The values given cannot make an assistant (unknown provider, parameter out of range...). The rules
    and their words are ``riceball_proxy.specs``'; this is the table's constraints refusing what breaks
    them anyway."""


def _values(parameters: Mapping[str, Any] | None, locked: Iterable[str]) -> list[Any]:
    """The parameter columns in order: each value, then its lock flag."""
    parameters = dict(parameters or {})
    locked = frozenset(locked)
    unknown = (set(parameters) | locked) - set(PARAMETERS)
    if unknown:
        raise InvalidAssistant(f"unknown parameters: {', '.join(sorted(unknown))}")
    values = []
    for parameter in PARAMETERS:
        values += [parameters.get(parameter), parameter in locked]
    return values


def _policy(limits: Limits, prices: Prices) -> list[Any]:
    """The limit and price columns in order."""
    return [getattr(limits, name) for name in LIMIT_FIELDS] + list(prices)


async def _set_targets(conn, assistant_id: uuid.UUID, fallbacks: Sequence[Target]) -> None:
    """Replace an assistant's fallback targets (in the caller's transaction)."""
    await conn.execute("DELETE FROM assistant_targets WHERE assistant_id = $1", assistant_id)
    if fallbacks:
        await conn.executemany(
            "INSERT INTO assistant_targets (assistant_id, position, provider_id, model, weight, priority, params, "
            "price_input, price_output, price_cached_input, price_cache_write) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            [(assistant_id, n, t.provider_id, t.model, t.weight, t.priority, dict(t.params), *t.prices)
             for n, t in enumerate(fallbacks)])


@contextlib.asynccontextmanager
async def _transaction(db):
    """A connection in a transaction: one of the pool's, or ``db`` itself in a savepoint of its own."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with db.transaction():
            yield db


class InvalidTargets(InvalidAssistant):
    """The fallback targets given cannot be (an unknown provider, a target twice, a weight below 1...)."""


class AssistantNameTaken(InvalidAssistant):
    """Another assistant has that name."""


async def _write(db, name: str, fallbacks: Sequence[Target], sql: str, *args) -> asyncpg.Record | None:
    """Run an INSERT or UPDATE of an assistant called ``name`` (``$1`` its id, or None for a new one) and
    write its fallback targets, in one transaction; its refusals as InvalidAssistant. The row as read
    back, targets included, or None when there was no such assistant."""
    try:
        async with _transaction(db) as conn:
            row = await conn.fetchrow(sql, *args)
            if row is None:
                return None
            await _set_targets(conn, row["id"], fallbacks)
            return await conn.fetchrow(f"SELECT {_COLUMNS} FROM assistants WHERE id = $1", row["id"])
    except asyncpg.UniqueViolationError as exc:
        if exc.table_name == "assistant_targets":
            raise InvalidTargets("a target is listed twice") from None
        raise AssistantNameTaken(f"an assistant named {name!r} exists already") from None
    except asyncpg.ForeignKeyViolationError:
        raise InvalidAssistant("that provider does not exist") from None
    except (asyncpg.CheckViolationError, asyncpg.DataError) as exc:
        raise InvalidAssistant(f"a value is out of range ({getattr(exc, 'constraint_name', None) or exc})") from None


_INSERT = (f"INSERT INTO assistants ({', '.join(_WRITTEN)}) "
           f"VALUES ({', '.join(f'${n}' for n in range(1, len(_WRITTEN) + 1))}) RETURNING id")
_UPDATE = (f"UPDATE assistants SET {', '.join(f'{column} = ${n}' for n, column in enumerate(_WRITTEN, start=2))}, "
           "updated_at = now() WHERE id = $1 RETURNING id")


def _row(
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
    limits: Limits = Limits(),
    prices: Prices = NO_PRICES,
    deadline: float = DEFAULT_DEADLINE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    expose_target: bool = False,
    auto_cache: bool = False,
) -> list[Any]:
    """An assistant's configuration as the values of ``_WRITTEN``, checked (InvalidAssistant)."""
    return [name, provider_id, model, system_prompt, *_values(parameters, locked), dict(extra_params or {}),
            allow_client_system, enabled, *_policy(limits, prices), deadline, max_attempts, expose_target,
            auto_cache]


async def create(db, *, fallbacks: Sequence[Target] = (), **fields: Any) -> Assistant:
    """Add an assistant (the fields of ``_row``, and its fallback targets); raises InvalidAssistant for
    values the table refuses. ``services.save_assistant`` checks them first, in words."""
    row = await _write(db, fields["name"], fallbacks, _INSERT, *_row(**fields))
    assert row is not None  # an INSERT ... RETURNING returns its row
    return Assistant.from_row(row)


async def update(db, assistant_id: uuid.UUID, *, fallbacks: Sequence[Target] = (), **fields: Any) -> Assistant | None:
    """Replace an assistant's configuration (as ``create`` takes it); None when it does not exist."""
    row = await _write(db, fields["name"], fallbacks, _UPDATE, assistant_id, *_row(**fields))
    return None if row is None else Assistant.from_row(row)


async def set_enabled(db, assistant_id: uuid.UUID, enabled: bool) -> Assistant | None:
    """Enable or disable an assistant; None when it does not exist."""
    row = await db.fetchrow(
        f"UPDATE assistants SET enabled = $2, updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
        assistant_id,
        enabled,
    )
    return None if row is None else Assistant.from_row(row)


async def delete(db, assistant_id: uuid.UUID) -> bool:
    """Delete an assistant; False when it did not exist."""
    return await db.fetchval("DELETE FROM assistants WHERE id = $1 RETURNING true", assistant_id) is True


async def count(db) -> tuple[int, int]:
    """How many assistants there are, and how many of them are enabled."""
    row = await db.fetchrow("SELECT count(*) AS total, count(*) FILTER (WHERE enabled) AS enabled FROM assistants")
    return row["total"], row["enabled"]


async def get(db, assistant_id: uuid.UUID) -> Assistant | None:
    """The assistant with this id, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM assistants WHERE id = $1", assistant_id)
    return None if row is None else Assistant.from_row(row)


async def get_by_name(db, name: str) -> Assistant | None:
    """The assistant with this name, or None."""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM assistants WHERE name = $1", name)
    return None if row is None else Assistant.from_row(row)


async def list_all(db) -> list[Assistant]:
    """Every assistant, by name."""
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM assistants ORDER BY name, created_at")
    return [Assistant.from_row(row) for row in rows]


async def existing_ids(db, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``ids`` name an assistant."""
    rows = await db.fetch("SELECT id FROM assistants WHERE id = ANY($1::uuid[])", list(ids))
    return {row["id"] for row in rows}


async def count_by_provider(db) -> dict[int, int]:
    """How many assistants use each provider, as primary or fallback (providers without any are absent)."""
    rows = await db.fetch("""
        SELECT provider_id, count(DISTINCT id) AS n FROM (
            SELECT id, provider_id FROM assistants
            UNION ALL
            SELECT assistant_id, provider_id FROM assistant_targets
        ) AS used GROUP BY provider_id""")
    return {row["provider_id"]: row["n"] for row in rows}
