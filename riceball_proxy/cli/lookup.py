"""Finding what a command names: a provider, an assistant or a key, by name or by id (a key also by
the start of its prefix), with a one-line error that lists the candidates when nothing matches."""
from __future__ import annotations

import uuid

from riceball_proxy.cli.output import CommandError
from riceball_proxy.db import admins, api_keys, assistants, providers

#: How many candidates an error lists at most.
SHOWN = 10


def _candidates(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
    return f"; there are: {shown}" if names else "; there are none yet"


async def provider(pool, ref: str) -> providers.Provider:
    """The provider named ``ref``, or whose id it is."""
    found = await providers.get_by_name(pool, ref)
    if found is None and ref.isdigit() and int(ref) < 2**63:
        found = await providers.get(pool, int(ref))
    if found is None:
        names = [p.name for p in await providers.list_all(pool)]
        raise CommandError(f"no provider with name or id {ref!r}{_candidates(names)}")
    return found


async def assistant(pool, ref: str | uuid.UUID) -> assistants.Assistant:
    """The assistant whose id ``ref`` is, or named ``ref``."""
    found = None
    try:
        found = await assistants.get(pool, ref if isinstance(ref, uuid.UUID) else uuid.UUID(ref))
    except ValueError:
        pass
    if found is None and isinstance(ref, str):
        found = await assistants.get_by_name(pool, ref)
    if found is None:
        names = [a.name for a in await assistants.list_all(pool)]
        raise CommandError(f"no assistant with id or name {str(ref)!r}{_candidates(names)}")
    return found


async def key(pool, ref: str) -> api_keys.ApiKey:
    """The key whose id ``ref`` is, whose display prefix starts with it, or the key in force named so."""
    try:
        found = await api_keys.find(pool, ref)
    except api_keys.AmbiguousKey as exc:
        raise CommandError(str(exc)) from None
    if found is None:
        found = await api_keys.in_force_named(pool, ref)
    if found is None:
        names = [k.name for k in await api_keys.list_all(pool) if k.revoked_at is None]
        raise CommandError(f"no key with id, prefix or name {ref!r}{_candidates(names)}")
    return found


async def admin(pool, username: str) -> admins.Admin:
    found = await admins.get_by_username(pool, username)
    if found is None:
        raise CommandError(f"no admin named {username!r}")
    return found
