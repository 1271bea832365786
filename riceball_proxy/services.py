"""Every write of configuration, with the rules that span objects.

The admin forms, the command line and ``riceball apply`` each turn what they were given into a spec
(``riceball_proxy.specs``) and call one function here; so an assistant is saved, and a key issued, the
same way whoever asks. The rules checked here need the database: a provider that exists, a name that no
other object has, a known price for a USD budget, a provider type that an installed plugin offers. Each
refusal is a :class:`~riceball_proxy.specs.SpecError` whose problems name the spec's field.
"""
from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from typing import Any

from riceball_proxy.crypto import SecretBox
from riceball_proxy.db import api_keys, assistants, providers
from riceball_proxy.db.assistants import Assistant, Target
from riceball_proxy.pricing import assistant_budget_problem, key_budget_problem
from riceball_proxy.specs import AssistantSpec, KeySpec, ProviderSpec, SpecError, prices_of

#: ``save_provider`` leaves the stored upstream key as it is when given this.
KEEP = providers.KEEP


async def save_provider(db, spec: ProviderSpec, *, secret_box: SecretBox | None, api_key: str | None | object = KEEP,
                        id: int | None = None, provider_types: Collection[str] | None = None
                        ) -> providers.Provider | None:
    """Create (no ``id``) or replace a provider; ``api_key`` is the upstream's key itself (None: none,
    KEEP: the stored one), encrypted with ``secret_box`` (needed only for a key). ``provider_types``,
    when given, are the types installed plugins offer. None when the provider to replace does not
    exist."""
    if provider_types is not None and spec.type not in provider_types:
        raise SpecError([("type", f"no installed plugin offers {spec.type!r} "
                                  f"(installed: {', '.join(sorted(provider_types)) or 'none'})")])
    encrypted = None
    if isinstance(api_key, str):
        if secret_box is None:
            raise ValueError("an upstream key needs the secret box to encrypt it")
        encrypted = secret_box.encrypt(api_key)
    try:
        if id is None:
            return await providers.create(db, name=spec.name, api_key_encrypted=encrypted, **spec.settings())
        return await providers.update(db, id, name=spec.name, api_key_encrypted=KEEP if api_key is KEEP else encrypted,
                                      **spec.settings())
    except providers.ProviderNameTaken as exc:
        raise SpecError([("name", str(exc))]) from None


def assistant_fields(spec: AssistantSpec, provider_ids: Mapping[str, int]) -> dict[str, Any]:
    """The spec as the keyword arguments ``db.assistants.create`` and ``update`` take, its providers
    found in ``provider_ids`` (by name); SpecError naming each provider that is not there."""
    missing = [(path, f"no provider named {name!r}") for path, name in [("provider", spec.provider)] + [
        (f"fallbacks[{n}].provider", target.provider) for n, target in enumerate(spec.fallbacks)]
        if name not in provider_ids]
    if missing:
        raise SpecError(missing)
    fallbacks = tuple(
        Target(provider_ids[target.provider], target.model, weight=target.weight,
               priority=n + 1 if target.priority is None else target.priority, params=dict(target.params),
               prices=prices_of(target.prices))
        for n, target in enumerate(spec.fallbacks))
    return {
        "name": spec.name, "provider_id": provider_ids[spec.provider], "model": spec.model,
        "system_prompt": spec.system_prompt, "parameters": spec.parameters, "locked": frozenset(spec.locked),
        "extra_params": dict(spec.extra_params), "allow_client_system": spec.allow_client_system,
        "enabled": spec.enabled, "limits": spec.limits.limits(), "prices": prices_of(spec.prices),
        "fallbacks": fallbacks, "deadline": spec.deadline, "max_attempts": spec.max_attempts,
        "expose_target": spec.expose_target, "auto_cache": spec.auto_cache,
    }


async def save_assistant(db, spec: AssistantSpec, id: uuid.UUID | None = None) -> Assistant | None:
    """Create (no ``id``) or replace an assistant and its fallback targets, in one transaction; None when
    the assistant to replace does not exist."""
    known = {provider.name: provider for provider in await providers.list_all(db)}
    fields = assistant_fields(spec, {name: provider.id for name, provider in known.items()})
    problem = await assistant_budget_problem(db, fields["limits"], spec.model, fields["prices"],
                                             known[spec.provider], fields["fallbacks"])
    if problem:
        raise SpecError([("limits.budget_usd", problem)])
    try:
        if id is None:
            return await assistants.create(db, **fields)
        return await assistants.update(db, id, **fields)
    except assistants.AssistantNameTaken as exc:
        raise SpecError([("name", str(exc))]) from None
    except assistants.InvalidTargets as exc:  # a provider deleted meanwhile
        raise SpecError([("fallbacks", str(exc))]) from None
    except assistants.InvalidAssistant as exc:
        raise SpecError([("", str(exc))]) from None


async def key_fields(db, spec: KeySpec) -> dict[str, Any]:
    """The spec as the keyword arguments ``db.api_keys.issue`` and ``update`` take, its assistants found
    by name; SpecError for one that is not there, or a USD budget no assistant's price can count."""
    scope = None
    if spec.assistants is not None:
        ids = {assistant.name: assistant.id for assistant in await assistants.list_all(db)}
        missing = [(f"assistants[{n}]", f"no assistant named {name!r}")
                   for n, name in enumerate(spec.assistants) if name not in ids]
        if missing:
            raise SpecError(missing)
        scope = tuple(dict.fromkeys(ids[name] for name in spec.assistants))
    limits = spec.limits.limits()
    problem, _ = await key_budget_problem(db, limits, scope)
    if problem:
        raise SpecError([("limits.budget_usd", problem)])
    return {"name": spec.name, "assistant_ids": scope, "expires_at": spec.expires_at, "limits": limits}


async def issue_key(db, spec: KeySpec) -> tuple[api_keys.ApiKey, str]:
    """A new key as ``spec`` describes it, and its secret (shown once, kept nowhere)."""
    fields = await key_fields(db, spec)
    try:
        return await api_keys.issue(db, **fields)
    except api_keys.KeyNameTaken as exc:
        raise SpecError([("name", str(exc))]) from None


async def save_key(db, spec: KeySpec, id: uuid.UUID, fields: dict[str, Any] | None = None) -> api_keys.ApiKey | None:
    """Change a key's name, scope, expiry and limits (never its secret); None when it does not exist.
    ``fields``: what ``key_fields`` made of ``spec``, when the caller has it already."""
    fields = await key_fields(db, spec) if fields is None else fields
    try:
        return await api_keys.update(db, id, **fields)
    except api_keys.KeyNameTaken as exc:
        raise SpecError([("name", str(exc))]) from None
