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
import re
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from riceball_proxy import services
from riceball_proxy.crypto import SecretBox
from riceball_proxy.db import api_keys, assistants, providers
from riceball_proxy.db.migrate import MIGRATION_LOCK_ID
from riceball_proxy.declared.schema import ConfigFile, ConfigFileError
from riceball_proxy.limits import Limits
from riceball_proxy.masking import mask_params, mask_url
from riceball_proxy.providers import ProviderType
from riceball_proxy.specs import PricesSpec, SpecError

logger = logging.getLogger(__name__)

#: The order objects are listed and written in (deletions go the other way).
KINDS = ("provider", "assistant", "key")
_PLACE = re.compile(r"(providers|assistants|keys)\[(\d+)\]")


def _place(problem: str) -> tuple[int, int]:
    """Where a problem's object is in the file: problems are listed in that order."""
    place = _PLACE.match(problem)
    return (3, 0) if place is None else ({"providers": 0, "assistants": 1, "keys": 2}[place[1]], int(place[2]))


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
                provider_types: Mapping[str, ProviderType] | None = None, prune: bool = False, dry_run: bool = False,
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
               secret_box: SecretBox, provider_types: Mapping[str, ProviderType] | None = None, prune: bool = False,
               warnings: Sequence[str] = (), create_keys: bool = True) -> Outcome:
    """Apply ``config`` on ``conn``, whose transaction the caller holds (and commits or rolls back).
    Without ``create_keys``, keys the database lacks are left out with a warning (their secret would have
    nowhere to go but a log)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
    return await _Sync(conn, config, secrets, secret_box, provider_types, prune, list(warnings), create_keys).run()


def references(data: dict, providers_stored: set[str], assistants_stored: set[str], *,
               prune: bool = False) -> tuple[list[str], set[str]]:
    """The problems of the names a file's ``data`` uses (a provider, an assistant) that neither the file
    nor the database (``*_stored``; with ``prune``, only the file) has, and the names of the assistants
    that use a missing provider. ``data`` may be a file that is wrong otherwise: what is not a name is
    passed over."""

    def items(kind: str) -> list[tuple[int, dict]]:
        found = data.get(kind)
        return [(n, item) for n, item in enumerate(found) if isinstance(item, dict)] if isinstance(found, list) else []

    def named(kind: str) -> set[str]:
        return {item["name"] for _, item in items(kind) if isinstance(item.get("name"), str)}

    provider_names = named("providers") | (set() if prune else providers_stored)
    assistant_names = named("assistants") | (set() if prune else assistants_stored)
    problems: list[str] = []
    unwritable: set[str] = set()
    for index, assistant in items("assistants"):
        targets = assistant.get("fallbacks")
        uses = [("provider", assistant.get("provider"))] + [
            (f"fallbacks[{n}].provider", target.get("provider"))
            for n, target in enumerate(targets if isinstance(targets, list) else []) if isinstance(target, dict)]
        for path, name in uses:
            if isinstance(name, str) and name not in provider_names:
                problems.append(f"assistants[{index}].{path}: no provider named {name!r}"
                                + (" in the file" if prune and name in providers_stored else ""))
                unwritable.add(str(assistant.get("name")))
    for index, key in items("keys"):
        scope = key.get("assistants")
        for n, name in enumerate(scope if isinstance(scope, list) else []):
            if isinstance(name, str) and name not in assistant_names:
                problems.append(f"keys[{index}].assistants[{n}]: no assistant named {name!r}"
                                + (" in the file" if prune and name in assistants_stored else ""))
    return problems, unwritable


def all_problems(problems: list[str]) -> list[str]:
    """Problems in the order of their objects in the file."""
    return sorted(problems, key=_place)


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
        self.problems: list[str] = []
        self.unwritable: set[str] = set()  # assistants naming a provider that is not there
        self._check_references()
        await self._providers()
        await self._assistants()
        await self._keys()
        if self.problems:  # every problem of the file in one report; the transaction is rolled back
            raise ConfigFileError(all_problems(self.problems))
        if self.prune:
            await self._prune()
        order = {kind: n for n, kind in enumerate(KINDS)}
        self.outcome.changes.sort(key=lambda change: order[change.kind])
        return self.outcome

    def _note(self, kind: str, name: str, id: Any, action: str, **extra) -> None:
        self.outcome.changes.append(Change(kind, name, id, action, **extra))

    # --- checks that need the database ---------------------------------------------------------------

    def _check_references(self) -> None:
        """Names the file uses that nothing has; the assistants that use them are not written."""
        problems, self.unwritable = references(self.config.model_dump(), set(self.providers), set(self.assistants),
                                               prune=self.prune)
        self.problems += problems

    # --- providers -----------------------------------------------------------------------------------

    async def _providers(self) -> None:
        for index, spec in enumerate(self.config.providers):
            wanted = spec.settings()
            secret = self.secrets.get(spec.name)
            current = self.providers.get(spec.name)
            if current is not None:
                fields = _differences({name: getattr(current, name) for name in wanted}, wanted)
                if self._stored_secret(current) != secret:
                    fields.append(("api_key", "(changed)", "(changed)"))
                if not fields:
                    self._note("provider", spec.name, current.id, "unchanged")
                    continue
                key_changed = any(name == "api_key" for name, _, _ in fields)
            try:
                saved = await services.save_provider(
                    self.conn, spec, secret_box=self.box, provider_types=self.types,
                    api_key=secret if current is None or key_changed else services.KEEP,
                    id=None if current is None else current.id)
            except SpecError as exc:
                self.problems += exc.lines(f"providers[{index}]")
                continue
            if saved is None:  # deleted meanwhile: this transaction holds no lock on it
                raise ConfigFileError([f"provider {spec.name!r} was deleted while the file was applied"])
            self.providers[spec.name] = saved
            provider_type = None if self.types is None else self.types.get(spec.type)
            warning = provider_type.base_url_warning(spec.base_url) if provider_type is not None else None
            if warning:
                self.outcome.warnings.append(f"providers[{index}].base_url: {warning}")
            if current is None:
                self._note("provider", spec.name, saved.id, "created")
            else:
                self._note("provider", spec.name, current.id, "updated", fields=fields)

    def _stored_secret(self, provider: providers.Provider) -> str | None:
        if provider.api_key_encrypted is None:
            return None
        try:
            return self.box.decrypt(provider.api_key_encrypted)
        except Exception:  # stored under a secret key no longer configured: replace it
            return "\0unreadable"

    # --- assistants ----------------------------------------------------------------------------------

    async def _assistants(self) -> None:
        ids = {name: provider.id for name, provider in self.providers.items()}
        for index, spec in enumerate(self.config.assistants):
            if spec.name in self.unwritable:
                continue
            current = self.assistants.get(spec.name)
            try:
                if current is not None:
                    fields = _differences(current.fields(), services.assistant_fields(spec, ids),
                                          names=self._provider_names())
                    if not fields:
                        self._note("assistant", spec.name, current.id, "unchanged")
                        continue
                saved = await services.save_assistant(self.conn, spec, None if current is None else current.id)
            except SpecError as exc:
                self.problems += exc.lines(f"assistants[{index}]")
                continue
            if saved is None:  # deleted meanwhile
                raise ConfigFileError([f"assistant {spec.name!r} was deleted while the file was applied"])
            if current is None:
                self._note("assistant", spec.name, saved.id, "created")
            else:
                self._note("assistant", spec.name, current.id, "updated", fields=fields)
            self.assistants[spec.name] = saved

    def _provider_names(self) -> dict[int, str]:
        return {provider.id: provider.name for provider in self.providers.values()}

    # --- keys ----------------------------------------------------------------------------------------

    async def _keys(self) -> None:
        ids = {name: assistant.id for name, assistant in self.assistants.items()}
        names = {assistant.id: name for name, assistant in self.assistants.items()}
        for index, spec in enumerate(self.config.keys):
            if any(name not in ids for name in spec.assistants or ()):
                continue  # an assistant that is not there, or could not be saved: reported already
            current = self.keys.get(spec.name)
            if current is None and not self.create_keys:
                self.outcome.warnings.append(f"keys[{index}]: no key named {spec.name!r} exists; create it with "
                                             "riceball apply -f FILE, which shows its secret once")
                continue
            try:
                if current is None:
                    created, secret = await services.issue_key(self.conn, spec)
                    self._note("key", spec.name, created.id, "created", secret=secret)
                    continue
                wanted = await services.key_fields(self.conn, spec)
                held = None if current.assistant_ids is None else tuple(
                    i for i in current.assistant_ids if i in names)  # ids of deleted assistants name nothing
                have = {"name": current.name, "assistant_ids": held, "expires_at": current.expires_at,
                        "limits": current.limits}
                fields = _differences(have, wanted, names=names)
                if not fields:
                    self._note("key", spec.name, current.id, "unchanged")
                    continue
                await services.save_key(self.conn, spec, current.id, wanted)
            except SpecError as exc:
                self.problems += exc.lines(f"keys[{index}]")
                continue
            self._note("key", spec.name, current.id, "updated", fields=fields)

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
    if name == "prices":
        return PricesSpec.of(value) or None
    if isinstance(value, str) and (len(value) > 60 or "\n" in value):
        return "(changed)"
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def start_up_applier(settings, secret_box: SecretBox, provider_types: Mapping[str, ProviderType]):
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
