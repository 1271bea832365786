"""Make the database match a configuration file, and write the database out as one.

:func:`apply` matches objects by name: what the file names and the database lacks is created, what
differs is updated (only the fields that differ, and only those objects), and with ``prune`` what the
database has and the file does not name is deleted (API keys are revoked, so that their usage stays
theirs). It all happens in one transaction under the migration lock, so a failed apply changes nothing,
two applies never interleave, and instances starting with ``RICEBALL_CONFIG_FILE`` take turns.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Collection, Sequence
from typing import Any

import asyncpg

from riceball_proxy.crypto import SecretBox
from riceball_proxy.db import api_keys, assistants, providers
from riceball_proxy.db.assistants import NO_PRICES, Target
from riceball_proxy.db.migrate import MIGRATION_LOCK_ID
from riceball_proxy.declared.schema import ConfigFile, ConfigFileError, KeySpec, LimitsSpec
from riceball_proxy.limits import Limits, check_limits
from riceball_proxy.masking import mask_params, mask_url
from riceball_proxy.pricing import assistant_budget_problem, key_budget_problem

logger = logging.getLogger(__name__)

#: The order objects are listed and written in (deletions go the other way).
KINDS = ("provider", "assistant", "key")


@dataclasses.dataclass
class Change:
    """What apply did (or, in a dry run, would do) to one object."""

    kind: str
    name: str
    id: Any
    #: ``created``, ``updated``, ``deleted`` or ``unchanged``.
    action: str
    #: For an update: (field, old, new), secrets and long texts shown as "changed".
    fields: list[tuple[str, Any, Any]] = dataclasses.field(default_factory=list)
    #: A created key's secret, shown this once.
    secret: str | None = dataclasses.field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "name": self.name, "id": None if self.id is None else str(self.id)}
        if self.fields:
            data["changes"] = [name for name, _, _ in self.fields]
        if self.secret is not None:
            data["key"] = self.secret
        return data


@dataclasses.dataclass
class Outcome:
    changes: list[Change]
    warnings: list[str]
    dry_run: bool = False

    def of(self, action: str) -> list[Change]:
        return [change for change in self.changes if change.action == action]

    @property
    def changed(self) -> bool:
        return any(change.action != "unchanged" for change in self.changes)

    def as_json(self) -> dict[str, Any]:
        data = {action: [change.as_dict() for change in self.of(action)]
                for action in ("created", "updated", "deleted", "unchanged")}
        return data | {"dry_run": self.dry_run, "warnings": self.warnings}


class _DryRun(Exception):
    """Rolls a dry run's transaction back."""


async def apply(pool, config: ConfigFile, *, secrets: dict[str, str | None], secret_box: SecretBox,
                provider_types: Collection[str] | None = None, prune: bool = False, dry_run: bool = False,
                warnings: Sequence[str] = ()) -> Outcome:
    """Apply ``config`` in one transaction (rolled back when ``dry_run``); ConfigFileError names what the
    file asks that cannot be (an unknown provider, a price missing under a USD budget...)."""
    async with pool.acquire() as conn:
        outcome = Outcome([], [])
        try:
            async with conn.transaction():
                outcome = await sync(conn, config, secrets=secrets, secret_box=secret_box,
                                     provider_types=provider_types, prune=prune, warnings=warnings)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            outcome.dry_run = True
            for change in outcome.changes:
                change.secret = None  # never valid: the key was not kept
        return outcome


async def sync(conn: asyncpg.Connection, config: ConfigFile, *, secrets: dict[str, str | None],
               secret_box: SecretBox, provider_types: Collection[str] | None = None, prune: bool = False,
               warnings: Sequence[str] = (), create_keys: bool = True) -> Outcome:
    """Apply ``config`` on ``conn``, whose transaction the caller holds (and commits or rolls back).
    Without ``create_keys``, keys the database lacks are left out with a warning (their secret would have
    nowhere to go but a log)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
    return await _Sync(conn, config, secrets, secret_box, provider_types, prune, list(warnings), create_keys).run()


class _Sync:
    def __init__(self, conn, config, secrets, secret_box, provider_types, prune, warnings, create_keys):
        self.create_keys = create_keys
        self.conn = conn
        self.config = config
        self.secrets = secrets
        self.box = secret_box
        self.types = provider_types
        self.prune = prune
        self.outcome = Outcome([], warnings)

    async def run(self) -> Outcome:
        self.providers = {p.name: p for p in await providers.list_all(self.conn)}
        self.assistants = {a.name: a for a in await assistants.list_all(self.conn)}
        self.keys = {k.name: k for k in await api_keys.list_all(self.conn) if k.revoked_at is None}
        self._check_references()
        await self._providers()
        await self._assistants()
        await self._keys()
        if self.prune:
            await self._prune()
        order = {kind: n for n, kind in enumerate(KINDS)}
        self.outcome.changes.sort(key=lambda change: order[change.kind])
        return self.outcome

    def _note(self, kind: str, name: str, id: Any, action: str, **extra) -> None:
        self.outcome.changes.append(Change(kind, name, id, action, **extra))

    # --- checks that need the database ---------------------------------------------------------------

    def _check_references(self) -> None:
        problems = []
        provider_names = {p.name for p in self.config.providers}
        if not self.prune:
            provider_names |= set(self.providers)
        assistant_names = {a.name for a in self.config.assistants}
        if not self.prune:
            assistant_names |= set(self.assistants)
        if self.types is not None:
            for index, spec in enumerate(self.config.providers):
                if spec.type not in self.types:
                    problems.append(f"providers[{index}].type: no installed plugin offers {spec.type!r} "
                                    f"(installed: {', '.join(sorted(self.types))})")
        for index, spec in enumerate(self.config.assistants):
            where = f"assistants[{index}]"
            for path, name in [(f"{where}.provider", spec.provider)] + [
                    (f"{where}.fallbacks[{n}].provider", target.provider) for n, target in enumerate(spec.fallbacks)]:
                if name not in provider_names:
                    problems.append(f"{path}: no provider named {name!r}"
                                    + (" in the file" if self.prune and name in self.providers else ""))
        for index, spec in enumerate(self.config.keys):
            for n, name in enumerate(spec.assistants or ()):
                if name not in assistant_names:
                    problems.append(f"keys[{index}].assistants[{n}]: no assistant named {name!r}"
                                    + (" in the file" if self.prune and name in self.assistants else ""))
        if problems:
            raise ConfigFileError(problems)

    # --- providers -----------------------------------------------------------------------------------

    async def _providers(self) -> None:
        for spec in self.config.providers:
            wanted = {"type": spec.type, "base_url": spec.base_url, "connect_timeout": spec.connect_timeout,
                      "read_timeout": spec.read_timeout, "max_connections": spec.max_connections,
                      "queue_timeout": spec.queue_timeout}
            secret = self.secrets.get(spec.name)
            current = self.providers.get(spec.name)
            if current is None:
                created = await providers.create(self.conn, name=spec.name, **wanted,
                                                 api_key_encrypted=self._encrypt(secret))
                self.providers[spec.name] = created
                self._note("provider", spec.name, created.id, "created")
                continue
            fields = _differences({name: getattr(current, name) for name in wanted}, wanted)
            if self._stored_secret(current) != secret:
                fields.append(("api_key", "(changed)", "(changed)"))
            if not fields:
                self._note("provider", spec.name, current.id, "unchanged")
                continue
            key_changed = any(name == "api_key" for name, _, _ in fields)
            updated = await providers.update(
                self.conn, current.id, name=spec.name, **wanted,
                api_key_encrypted=self._encrypt(secret) if key_changed else providers.KEEP)
            if updated is None:  # deleted meanwhile: this transaction holds no lock on it
                raise ConfigFileError([f"provider {spec.name!r} was deleted while the file was applied"])
            self.providers[spec.name] = updated
            self._note("provider", spec.name, current.id, "updated", fields=fields)

    def _encrypt(self, secret: str | None) -> bytes | None:
        return None if secret is None else self.box.encrypt(secret)

    def _stored_secret(self, provider: providers.Provider) -> str | None:
        if provider.api_key_encrypted is None:
            return None
        try:
            return self.box.decrypt(provider.api_key_encrypted)
        except Exception:  # stored under a secret key no longer configured: replace it
            return "\0unreadable"

    # --- assistants ----------------------------------------------------------------------------------

    async def _assistants(self) -> None:
        for index, spec in enumerate(self.config.assistants):
            where = f"assistants[{index}]"
            provider = self.providers[spec.provider]
            fallbacks = tuple(
                Target(self.providers[target.provider].id, target.model, weight=target.weight,
                       priority=n + 1 if target.priority is None else target.priority, params=target.params,
                       prices=NO_PRICES if target.prices is None else target.prices.as_tuple())
                for n, target in enumerate(spec.fallbacks))
            prices = NO_PRICES if spec.prices is None else spec.prices.as_tuple()
            wanted = {
                "name": spec.name, "provider_id": provider.id, "model": spec.model,
                "system_prompt": spec.system_prompt, "parameters": spec.parameters, "locked": frozenset(spec.locked),
                "extra_params": dict(spec.extra_params), "allow_client_system": spec.allow_client_system,
                "enabled": spec.enabled, "limits": _limits(spec.limits), "prices": prices, "fallbacks": fallbacks,
                "deadline": spec.deadline, "max_attempts": spec.max_attempts, "expose_target": spec.expose_target,
                "auto_cache": spec.auto_cache,
            }
            problem = await assistant_budget_problem(self.conn, wanted["limits"], spec.model, prices, provider,
                                                     fallbacks)
            if problem:
                raise ConfigFileError([f"{where}.limits.budget_usd: {problem}"])
            current = self.assistants.get(spec.name)
            try:
                if current is None:
                    saved = await assistants.create(self.conn, **wanted)
                    self._note("assistant", spec.name, saved.id, "created")
                else:
                    fields = _differences(current.fields(), wanted, names=self._provider_names())
                    if not fields:
                        self._note("assistant", spec.name, current.id, "unchanged")
                        continue
                    updated_assistant = await assistants.update(self.conn, current.id, **wanted)
                    if updated_assistant is None:  # deleted meanwhile
                        raise ConfigFileError([f"assistant {spec.name!r} was deleted while the file was applied"])
                    saved = updated_assistant
                    self._note("assistant", spec.name, current.id, "updated", fields=fields)
            except assistants.InvalidAssistant as exc:
                raise ConfigFileError([f"{where}: {exc}"]) from None
            self.assistants[spec.name] = saved

    def _provider_names(self) -> dict[int, str]:
        return {provider.id: provider.name for provider in self.providers.values()}

    # --- keys ----------------------------------------------------------------------------------------

    async def _keys(self) -> None:
        ids = {name: assistant.id for name, assistant in self.assistants.items()}
        for index, spec in enumerate(self.config.keys):
            scope = None if spec.assistants is None else tuple(ids[name] for name in spec.assistants)
            wanted = {"name": spec.name, "assistant_ids": scope, "expires_at": spec.expires_at,
                      "limits": _limits(spec.limits)}
            await self._check_key_budget(index, spec, scope)
            current = self.keys.get(spec.name)
            if current is None and not self.create_keys:
                self.outcome.warnings.append(f"keys[{index}]: no key named {spec.name!r} exists; create it with "
                                             "riceball apply -f FILE, which shows its secret once")
                continue
            if current is None:
                created, secret = await api_keys.issue(self.conn, **wanted)
                self._note("key", spec.name, created.id, "created", secret=secret)
                continue
            known = set(ids.values())
            held = None if current.assistant_ids is None else tuple(
                i for i in current.assistant_ids if i in known)  # ids of deleted assistants name nothing
            have = {"name": current.name, "assistant_ids": held, "expires_at": current.expires_at,
                    "limits": current.limits}
            names = {assistant.id: name for name, assistant in self.assistants.items()}
            fields = _differences(have, wanted, names=names)
            if not fields:
                self._note("key", spec.name, current.id, "unchanged")
                continue
            await api_keys.update(self.conn, current.id, **wanted)
            self._note("key", spec.name, current.id, "updated", fields=fields)

    async def _check_key_budget(self, index: int, spec: KeySpec, scope) -> None:
        problem, _ = await key_budget_problem(self.conn, _limits(spec.limits), scope)  # as written so far
        if problem:
            raise ConfigFileError([f"keys[{index}].limits.budget_usd: {problem}"])

    # --- pruning -------------------------------------------------------------------------------------

    async def _prune(self) -> None:
        named = {kind: {spec.name for spec in getattr(self.config, kind)}
                 for kind in ("providers", "assistants", "keys")}
        for name, key in self.keys.items():
            if name not in named["keys"]:
                await api_keys.revoke(self.conn, key.id)
                self._note("key", name, key.id, "deleted")
        for name, assistant in self.assistants.items():
            if name not in named["assistants"]:
                await assistants.delete(self.conn, assistant.id)
                self._note("assistant", name, assistant.id, "deleted")
        for name, provider in self.providers.items():
            if name not in named["providers"]:
                await providers.delete(self.conn, provider.id)
                self._note("provider", name, provider.id, "deleted")


def _limits(spec: LimitsSpec) -> Limits:
    return Limits(**check_limits(spec.model_dump()))


def _differences(have: dict[str, Any], want: dict[str, Any], *, names: dict | None = None) -> list[tuple]:
    """(field, old, new) for each field of ``want`` whose value differs from ``have``'s, as people read it."""
    fields = []
    for name, new in want.items():
        old = have[name]
        if name == "locked":
            old, new = frozenset(old), frozenset(new)
        if name == "assistant_ids" and old is not None and new is not None:
            old, new = frozenset(old), frozenset(new)
        if old == new:
            continue
        if isinstance(old, Limits) and isinstance(new, Limits):
            for field in dataclasses.fields(Limits):
                a, b = getattr(old, field.name), getattr(new, field.name)
                if a != b:
                    fields.append((f"limits.{field.name}", a, b))
            continue
        if name == "parameters":
            for parameter in sorted(set(old) | set(new)):
                if old.get(parameter) != new.get(parameter):
                    fields.append((parameter, old.get(parameter), new.get(parameter)))
            continue
        fields.append((name, _shown(name, old, names), _shown(name, new, names)))
    return fields


def _shown(name: str, value: Any, names: dict | None) -> Any:
    if name == "base_url" and isinstance(value, str):
        value = mask_url(value)
    elif name == "extra_params" and value is not None:
        value = mask_params(dict(value))
    if name == "provider_id" and names:
        return names.get(value, value)
    if name == "assistant_ids" and value is not None and names:
        return sorted(names.get(i, str(i)) for i in value)
    if name == "fallbacks":
        return [f"{(names or {}).get(t.provider_id, t.provider_id)}:{t.model}" for t in value]
    if isinstance(value, str) and (len(value) > 60 or "\n" in value):
        return "(changed)"
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def start_up_applier(settings, secret_box: SecretBox, provider_types: Collection[str]):
    """What the gateway runs at start, under the migration lock, when ``RICEBALL_CONFIG_FILE`` is set:
    the file applied (read and checked at once, so that a bad file stops the start before anything)."""
    from riceball_proxy.declared.schema import load, resolve_secrets

    if settings.config_file is None:
        return None
    config = load(settings.config_file)
    secrets, warnings = resolve_secrets(config)

    async def run(conn: asyncpg.Connection) -> None:
        outcome = await sync(conn, config, secrets=secrets, secret_box=secret_box, provider_types=provider_types,
                             prune=settings.config_prune, warnings=warnings, create_keys=False)
        for warning in outcome.warnings:
            logger.warning("%s: %s", settings.config_file, warning)
        counts = {action: len(outcome.of(action)) for action in ("created", "updated", "deleted", "unchanged")}
        logger.info("applied %s: %s", settings.config_file, ", ".join(f"{n} {action}" for action, n in counts.items()))

    return run
