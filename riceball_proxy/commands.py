"""What each ``riceball`` command does (the argument parsing is in ``riceball_proxy.cli``)."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import decimal
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from riceball_proxy import crypto
from riceball_proxy.crypto import MIN_PASSWORD_LENGTH
from riceball_proxy.db import admins, api_keys, assistants, open_database, providers, usage_events
from riceball_proxy.db.assistants import DEFAULT_DEADLINE, DEFAULT_MAX_ATTEMPTS
from riceball_proxy.limits import FIELDS as LIMIT_FIELDS
from riceball_proxy.limits import InvalidLimits, Limits, check_limits, current_period_start
from riceball_proxy.masking import mask_params, mask_url
from riceball_proxy.plugins import describe_plugins, make_plugin_manager
from riceball_proxy.pricing import unpriced, unpriced_targets
from riceball_proxy.providers import provider_types
from riceball_proxy.settings import Settings

#: Seconds ``provider test`` waits for the upstream's model list.
UPSTREAM_CHECK_TIMEOUT = 10



class CommandError(Exception):
    """A mistake in what the user asked; printed as one line, exit status 2.

    ``data`` goes with it under ``--json`` (the id of the existing object a name clashes with...).
    """

    def __init__(self, message: str, data: dict[str, Any] | None = None):
        super().__init__(message)
        self.data = data


# --- helpers ----------------------------------------------------------------------------------------


def name_taken(exc: Exception, existing: Any) -> CommandError:
    """The error for a name in use, carrying (for ``--json``) the id of the object that has it."""
    return CommandError(str(exc), {"id": existing.id if existing else None})


def assistant_base_url(settings: Settings, assistant_id: Any) -> str:
    """The base URL an OpenAI SDK is given for an assistant, on this gateway's host and port."""
    return f"http://{settings.host}:{settings.port}/api/v1/assistants/{assistant_id}/v1"


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with --json, else ``text``."""
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=_json_default).decode() + "\n")
    else:
        sys.stdout.write(text + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (uuid.UUID, decimal.Decimal)):  # asyncpg's own UUID subclass; exact amounts as text
        return str(value)
    if isinstance(value, (frozenset, set, tuple)):
        return sorted(value, key=str)
    raise TypeError


def table(rows: list[dict[str, Any]], columns: Sequence[str], empty: str) -> str:
    """A plain-text table of ``rows``."""
    if not rows:
        return empty
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime.datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M")
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def limits_from(args: argparse.Namespace, current: Limits | None = None) -> Limits:
    """The limits the options give (``none`` removes one), on top of ``current``; CommandError when bad."""
    values = {}
    for name in LIMIT_FIELDS:
        given = getattr(args, name)
        values[name] = getattr(current, name, None) if given is None else None if given == "none" else given
    try:
        return Limits(**check_limits(values))
    except InvalidLimits as exc:
        raise CommandError(str(exc)) from None


def limits_text(limits: Limits) -> str:
    """Limits as people read them: ``10 rpm, 2 at once, $50/month``."""
    parts = []
    if limits.rpm:
        parts.append(f"{limits.rpm} rpm")
    if limits.tpm:
        parts.append(f"{limits.tpm} tpm")
    if limits.max_parallel:
        parts.append(f"{limits.max_parallel} at once")
    per = "" if limits.budget_period == "total" else f"/{limits.budget_period}"
    if limits.budget_usd is not None:
        parts.append(f"${limits.budget_usd:,.2f}{per}")
    if limits.budget_tokens is not None:
        parts.append(f"{limits.budget_tokens:,} tokens{per}")
    return ", ".join(parts) or "none"


async def check_usd_budget(pool, limits: Limits, assistant_ids) -> list[str]:
    """A USD budget needs calls whose cost is known: CommandError when none of the assistants a key may
    call has a price; else the names of those without one (their calls do not count)."""
    if limits.budget_usd is None:
        return []
    priced, unknown = await unpriced(pool, None if assistant_ids is None else set(assistant_ids))
    if unknown and not priced:
        raise CommandError(f"a USD budget needs a known price, and no assistant this key may call has one "
                           f"({', '.join(unknown)}): set --price-input/--price-output on them, or use --budget-tokens")
    return unknown


def run_db(settings: Settings, work: Callable) -> Any:
    """Open the database (embedded when no URL is set), return ``await work(pool)``, close it."""

    async def runner():
        async with open_database(settings, min_size=1, max_size=2) as database:
            return await work(database.pool)

    return asyncio.run(runner())


def read_stdin_secret(what: str) -> str:
    """One secret from standard input (its first line, trimmed); never echoed."""
    value = sys.stdin.readline().strip()
    if not value:
        raise CommandError(f"no {what} on standard input")
    return value


# --- serve and migrate ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from riceball_proxy.declared.commands import check_start_up_file
    from riceball_proxy.server import serve

    settings = settings.replace(host=args.host or settings.host, port=args.port or settings.port)
    check_start_up_file(settings)
    serve(settings, workers=args.workers)
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):  # opening the database applied what was pending; this reports the state
        rows = await pool.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
        return [dict(row) for row in rows]

    rows = run_db(settings, work)
    emit(args, {"migrations": rows}, table(rows, ["version", "name", "applied_at"], "no migrations"))
    return 0


def cmd_reencrypt(args: argparse.Namespace, settings: Settings) -> int:
    box = crypto.load_secret_box(settings)

    async def work(pool):
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch("SELECT id, name, api_key_encrypted FROM providers "
                                    "WHERE api_key_encrypted IS NOT NULL FOR UPDATE")
            unreadable = []
            for row in rows:
                try:
                    token = box.rotate(row["api_key_encrypted"])
                except ValueError:
                    unreadable.append(row["name"])
                    continue
                await conn.execute("UPDATE providers SET api_key_encrypted = $2 WHERE id = $1", row["id"], token)
            if unreadable:
                raise CommandError(f"no key of RICEBALL_SECRET_KEY opens the API key of {', '.join(unreadable)}; "
                                   "nothing was changed")
            return len(rows)

    count = run_db(settings, work)
    emit(args, {"reencrypted": count},
         f"{count} provider API key{'s' if count != 1 else ''} now under the first key of RICEBALL_SECRET_KEY")
    return 0


# --- admins -----------------------------------------------------------------------------------------


def _new_password_hash() -> str:
    """The argon2id hash of a password read from standard input (CommandError when it is too short)."""
    password = read_stdin_secret("password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CommandError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    return crypto.hash_password(password)


def cmd_admin_create(args: argparse.Namespace, settings: Settings) -> int:
    password_hash = _new_password_hash()

    async def work(pool):
        try:
            return await admins.create(pool, args.username, password_hash)
        except admins.UsernameTaken as exc:
            raise CommandError(str(exc)) from None

    admin = run_db(settings, work)
    emit(args, {"id": admin.id, "username": admin.username, "created_at": admin.created_at},
         f"admin {admin.username!r} created")
    return 0


async def _admin_named(pool, username: str) -> admins.Admin:
    admin = await admins.get_by_username(pool, username)
    if admin is None:
        raise CommandError(f"no admin named {username!r}")
    return admin


def cmd_admin_password(args: argparse.Namespace, settings: Settings) -> int:
    password_hash = _new_password_hash()

    async def work(pool):
        admin = await _admin_named(pool, args.username)
        await admins.set_password(pool, admin.id, password_hash)
        return admin

    admin = run_db(settings, work)
    emit(args, {"id": admin.id, "username": admin.username},
         f"password of {admin.username!r} changed; their sessions have ended")
    return 0


def cmd_admin_delete(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        admin = await _admin_named(pool, args.username)
        await admins.delete(pool, admin.id)
        return admin

    admin = run_db(settings, work)
    emit(args, {"id": admin.id, "username": admin.username, "deleted": True},
         f"admin {admin.username!r} deleted; their sessions have ended")
    return 0


# --- providers --------------------------------------------------------------------------------------


def _provider_dict(provider: providers.Provider) -> dict[str, Any]:
    return {
        "id": provider.id,
        "name": provider.name,
        "type": provider.type,
        "base_url": mask_url(provider.base_url),  # a password or a key in it is never printed
        "has_api_key": provider.has_api_key,
        "connect_timeout": provider.connect_timeout,
        "read_timeout": provider.read_timeout,
        "max_connections": provider.max_connections,
        "queue_timeout": provider.queue_timeout,
        "created_at": provider.created_at,
    }


def cmd_provider_add(args: argparse.Namespace, settings: Settings) -> int:
    types = provider_types(make_plugin_manager(settings))
    if args.type not in types:
        raise CommandError(f"unknown provider type {args.type!r}; installed types: {', '.join(sorted(types))}")
    api_key = read_stdin_secret("API key") if args.api_key_stdin else None
    encrypted = None if api_key is None else crypto.load_secret_box(settings).encrypt(api_key)

    async def work(pool):
        try:
            return await providers.create(
                pool,
                name=args.name,
                type=args.type,
                base_url=args.base_url,
                api_key_encrypted=encrypted,
                connect_timeout=args.connect_timeout,
                read_timeout=args.read_timeout,
                max_connections=args.max_connections,
                queue_timeout=args.queue_timeout,
            )
        except providers.ProviderNameTaken as exc:
            raise name_taken(exc, await providers.get_by_name(pool, args.name)) from None

    provider = run_db(settings, work)
    emit(args, _provider_dict(provider), f"provider {provider.name!r} added (id {provider.id})")
    return 0


async def _provider_by_id_or_name(pool, id_or_name: str) -> providers.Provider:
    provider = await providers.get_by_name(pool, id_or_name)
    if provider is None and id_or_name.isdigit() and int(id_or_name) < 2**63:
        provider = await providers.get(pool, int(id_or_name))
    if provider is None:
        raise CommandError(f"no provider with name or id {id_or_name!r}")
    return provider


def cmd_provider_update(args: argparse.Namespace, settings: Settings) -> int:
    if args.type is not None:
        types = provider_types(make_plugin_manager(settings))
        if args.type not in types:
            raise CommandError(f"unknown provider type {args.type!r}; installed types: {', '.join(sorted(types))}")
    if args.api_key_stdin and args.clear_api_key:
        raise CommandError("--api-key-stdin and --clear-api-key ask for opposite things")
    api_key = read_stdin_secret("API key") if args.api_key_stdin else None
    encrypted = providers.KEEP
    if api_key is not None:
        encrypted = crypto.load_secret_box(settings).encrypt(api_key)
    elif args.clear_api_key:
        encrypted = None

    async def work(pool):
        current = await _provider_by_id_or_name(pool, args.provider)
        changes = {name: getattr(args, name) for name in ("name", "type", "base_url", "connect_timeout",
                                                          "read_timeout", "max_connections", "queue_timeout")}
        fields = {name: getattr(current, name) if value is None else value for name, value in changes.items()}
        try:
            return await providers.update(pool, current.id, api_key_encrypted=encrypted, **fields)
        except providers.ProviderNameTaken as exc:
            raise name_taken(exc, await providers.get_by_name(pool, args.name)) from None

    provider = run_db(settings, work)
    emit(args, _provider_dict(provider), f"provider {provider.name!r} updated")
    return 0


def cmd_provider_delete(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        provider = await _provider_by_id_or_name(pool, args.provider)
        try:
            await providers.delete(pool, provider.id)
        except providers.ProviderInUse as exc:
            raise CommandError(f"provider {provider.name!r}: {exc}") from None
        return provider

    provider = run_db(settings, work)
    emit(args, {"id": provider.id, "name": provider.name, "deleted": True}, f"provider {provider.name!r} deleted")
    return 0


def cmd_provider_test(args: argparse.Namespace, settings: Settings) -> int:
    """List the upstream's models through the provider's adapter: the panel's "Test connection"."""
    import aiohttp

    from riceball_proxy.errors import APIError

    types = provider_types(make_plugin_manager(settings))
    box = crypto.load_secret_box(settings)

    async def work(pool):
        provider = await _provider_by_id_or_name(pool, args.provider)
        provider_type = types.get(provider.type)
        if provider_type is None:
            raise CommandError(f"provider {provider.name!r}: its type {provider.type!r} is not installed")
        api_key = None if provider.api_key_encrypted is None else box.decrypt(provider.api_key_encrypted)
        async with aiohttp.ClientSession() as session:
            adapter = provider_type.adapter(provider, api_key, session)
            try:
                async with asyncio.timeout(UPSTREAM_CHECK_TIMEOUT):
                    models = await adapter.list_models()
            except APIError as exc:
                # The upstream's own words when it refused the key: the operator's to read, masked.
                reason = exc.detail or f"{exc.status}: {exc.message}"
                raise CommandError(f"provider {provider.name!r}: {reason}") from None
            except TimeoutError:
                raise CommandError(f"provider {provider.name!r}: the upstream did not answer within "
                                   f"{UPSTREAM_CHECK_TIMEOUT} seconds") from None
        return provider, sorted(str(m.get("id")) for m in models if isinstance(m, dict) and m.get("id"))

    provider, models = run_db(settings, work)
    emit(args, {"id": provider.id, "name": provider.name, "ok": True, "models": models},
         f"provider {provider.name!r} answered with {len(models)} model{'' if len(models) == 1 else 's'}"
         + "".join(f"\n  {model}" for model in models))
    return 0


def cmd_provider_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = [_provider_dict(p) for p in run_db(settings, providers.list_all)]
    emit(args, {"providers": rows},
         table(rows, ["id", "name", "type", "base_url", "has_api_key"], "no providers yet: riceball provider add"))
    return 0


# --- assistants -------------------------------------------------------------------------------------


def _assistant_dict(assistant: assistants.Assistant, provider_name: str | None = None) -> dict[str, Any]:
    data = dataclasses.asdict(assistant)
    data["parameters"] = dict(assistant.parameters)
    data["locked"] = sorted(assistant.locked)
    data["provider"] = provider_name
    data["limits"] = assistant.limits.as_dict()
    data["extra_params"] = mask_params(dict(assistant.extra_params))  # secret-named values never printed
    data["fallbacks"] = [target.as_dict() | {"params": mask_params(dict(target.params))}
                         for target in assistant.fallbacks]
    return data


async def fallbacks_from(pool, args: argparse.Namespace, current: assistants.Assistant | None = None):
    """The fallback targets ``--fallback PROVIDER:MODEL`` gives, in order (``none``: no fallbacks); the
    current ones when the option is not given."""
    if args.fallback is None:
        return current.fallbacks if current is not None else ()
    if args.fallback == ["none"]:
        return ()
    by_name = {provider.name: provider for provider in await providers.list_all(pool)}
    by_id = {str(provider.id): provider for provider in by_name.values()}
    targets = []
    for n, given in enumerate(args.fallback, start=1):
        name, colon, model = given.partition(":")
        provider = by_name.get(name) or by_id.get(name)
        if not colon or not model.strip():
            raise CommandError(f"--fallback takes PROVIDER:MODEL, not {given!r}")
        if provider is None:
            raise CommandError(f"--fallback {given}: no provider named {name!r}")
        targets.append(assistants.Target(provider.id, model.strip(), priority=n))
    return tuple(targets)


def prices_from(args: argparse.Namespace, current: assistants.Assistant | None = None) -> assistants.Prices:
    """(input, output, cache read, cache write) from the options (``none`` removes one), on top of
    ``current``."""
    prices = []
    for name in ("price_input", "price_output", "price_cached_input", "price_cache_write"):
        given = getattr(args, name)
        prices.append(getattr(current, name, None) if given is None else None if given == "none" else given)
    return tuple(prices)


async def check_assistant_budget(pool, limits: Limits, prices: assistants.Prices, provider, model: str,
                                 fallbacks) -> None:
    """A USD budget on an assistant needs the price of every target's calls: the assistant's own (for its
    model), or the one genai-prices knows."""
    if limits.budget_usd is None:
        return
    missing = await unpriced_targets(pool, model, prices, provider, fallbacks)
    if missing:
        raise CommandError(f"a USD budget needs a known price for every target, and {', '.join(missing)} has "
                           "none: set --price-input and --price-output (for the assistant's model), choose "
                           "fallbacks of known price, or use --budget-tokens")


def cmd_assistant_add(args: argparse.Namespace, settings: Settings) -> int:
    parameters = {
        name: value
        for name, value in (("temperature", args.temperature), ("top_p", args.top_p), ("max_tokens", args.max_tokens),
                            ("reasoning_effort", args.reasoning_effort))
        if value is not None
    }
    unknown = set(args.lock) - set(assistants.PARAMETERS)
    if unknown:
        raise CommandError(f"--lock takes one of {', '.join(assistants.PARAMETERS)}; got {', '.join(sorted(unknown))}")

    limits, prices = limits_from(args), prices_from(args)

    async def work(pool):
        provider = await providers.get_by_name(pool, args.provider)
        if provider is None:
            raise CommandError(f"no provider named {args.provider!r}")
        fallbacks = await fallbacks_from(pool, args)
        await check_assistant_budget(pool, limits, prices, provider, args.model, fallbacks)
        routing = {"fallbacks": fallbacks, "deadline": args.deadline or DEFAULT_DEADLINE,
                   "max_attempts": args.max_attempts or DEFAULT_MAX_ATTEMPTS, "expose_target": args.expose_target,
                   "auto_cache": args.auto_cache}
        try:
            assistant = await assistants.create(
                pool,
                name=args.name,
                provider_id=provider.id,
                model=args.model,
                system_prompt=args.system_prompt,
                parameters=parameters,
                locked=args.lock,
                allow_client_system=not args.no_client_system,
                enabled=not args.disabled,
                limits=limits,
                prices=prices,
                **routing,
            )
        except assistants.AssistantNameTaken as exc:
            raise name_taken(exc, await assistants.get_by_name(pool, args.name)) from None
        except assistants.InvalidAssistant as exc:
            raise CommandError(str(exc)) from None
        return assistant, provider

    assistant, provider = run_db(settings, work)
    base_url = assistant_base_url(settings, assistant.id)
    data = _assistant_dict(assistant, provider.name) | {"base_url": base_url}
    emit(args, data, f"assistant {assistant.name!r} added\nid:       {assistant.id}\nbase URL: {base_url}")
    return 0


def cmd_assistant_update(args: argparse.Namespace, settings: Settings) -> int:
    if args.lock is not None and set(args.lock) - set(assistants.PARAMETERS):
        raise CommandError(f"--lock takes one of {', '.join(assistants.PARAMETERS)}")

    async def work(pool):
        current = await _assistant_by_id(pool, args.id)
        provider = await providers.get(pool, current.provider_id)
        if args.provider is not None:
            provider = await providers.get_by_name(pool, args.provider)
            if provider is None:
                raise CommandError(f"no provider named {args.provider!r}")
        given = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens,
                 "reasoning_effort": args.reasoning_effort}
        parameters = dict(current.parameters) | {name: value for name, value in given.items() if value is not None}
        limits, prices = limits_from(args, current.limits), prices_from(args, current)
        fallbacks = await fallbacks_from(pool, args, current)
        await check_assistant_budget(pool, limits, prices, provider,
                                     current.model if args.model is None else args.model, fallbacks)
        routing = {"fallbacks": fallbacks,
                   "deadline": current.deadline if args.deadline is None else args.deadline,
                   "max_attempts": current.max_attempts if args.max_attempts is None else args.max_attempts,
                   "expose_target": current.expose_target if args.expose_target is None else args.expose_target,
                   "auto_cache": current.auto_cache if args.auto_cache is None else args.auto_cache}
        try:
            assistant = await assistants.update(
                pool,
                current.id,
                name=current.name if args.name is None else args.name,
                provider_id=provider.id,
                model=current.model if args.model is None else args.model,
                system_prompt=current.system_prompt if args.system_prompt is None else args.system_prompt,
                parameters=parameters,
                locked=current.locked if args.lock is None else args.lock,
                extra_params=current.extra_params,
                allow_client_system=current.allow_client_system if args.no_client_system is None
                else not args.no_client_system,
                enabled=current.enabled if args.disabled is None else not args.disabled,
                limits=limits,
                prices=prices,
                **routing,
            )
        except assistants.AssistantNameTaken as exc:
            raise name_taken(exc, await assistants.get_by_name(pool, args.name)) from None
        except assistants.InvalidAssistant as exc:
            raise CommandError(str(exc)) from None
        return assistant, provider

    assistant, provider = run_db(settings, work)
    emit(args, _assistant_dict(assistant, provider.name), f"assistant {assistant.name!r} updated")
    return 0


def cmd_assistant_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        names = {p.id: p.name for p in await providers.list_all(pool)}
        return [_assistant_dict(a, names.get(a.provider_id)) for a in await assistants.list_all(pool)]

    rows = run_db(settings, work)
    emit(args, {"assistants": rows},
         table(rows, ["id", "name", "provider", "model", "enabled"], "no assistants yet: riceball assistant add"))
    return 0


async def _assistant_by_id(pool, assistant_id: uuid.UUID) -> assistants.Assistant:
    assistant = await assistants.get(pool, assistant_id)
    if assistant is None:
        raise CommandError(f"no assistant with id {assistant_id}")
    return assistant


def cmd_assistant_show(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        assistant = await _assistant_by_id(pool, args.id)
        provider = await providers.get(pool, assistant.provider_id)
        names = {p.id: p.name for p in await providers.list_all(pool)}
        return assistant, _assistant_dict(assistant, provider.name if provider else None), names

    assistant, data, names = run_db(settings, work)
    data["base_url"] = assistant_base_url(settings, data["id"])
    shown = data | {"fallbacks": ", ".join(f"{names.get(t.provider_id, t.provider_id)}:{t.model}"
                                          for t in assistant.fallbacks) or "none",
                    "deadline": f"{assistant.deadline:g} s, at most {assistant.max_attempts} attempts","limits": limits_text(assistant.limits), "price": "-" if assistant.price_input is None else
                    f"${assistant.price_input} in, ${assistant.price_output} out"
                    + (f", ${assistant.price_cached_input} cache read" if assistant.price_cached_input is not None else "")
                    + (f", ${assistant.price_cache_write} cache write" if assistant.price_cache_write is not None else "")
                    + " per million tokens"}
    data["health"] = target_health(settings, assistant, names)
    shown["health"] = "; ".join(data["health"]) if isinstance(data["health"], list) else data["health"]
    lines = [f"{name + ':':<20} {_cell(shown[name])}" for name in (
        "id", "name", "provider", "model", "enabled", "allow_client_system", "parameters", "locked",
        "extra_params", "auto_cache", "fallbacks", "deadline", "health", "limits", "price", "base_url")]
    emit(args, data, "\n".join(lines) + f"\nsystem prompt:\n{data['system_prompt'] or '(none)'}")
    return 0


def target_health(settings: Settings, assistant: assistants.Assistant, names: dict) -> list[str] | str:
    """Each target's circuit as the gateways share it in Redis, or why it cannot be known here."""
    if not settings.redis_url:
        return "kept by each gateway process without RICEBALL_REDIS_URL: see the assistant's page in the admin panel"
    from riceball_proxy.circuits_shared import read_all

    async def read():
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return await read_all(client)
        finally:
            await client.aclose()

    try:
        states = asyncio.run(read())
    except Exception as exc:  # Redis away: say so rather than fail the whole command
        return f"unknown (Redis: {exc})"
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    health = []
    for target in assistant.targets:
        state = states.get((target.provider_id, target.model))
        label = f"{names.get(target.provider_id, target.provider_id)}:{target.model}"
        if state is None or state[1] <= now:
            health.append(f"{label} closed")
        else:
            health.append(f"{label} open for {round(state[1] - now)} s ({state[3]})")
    return health


def cmd_assistant_delete(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        assistant = await _assistant_by_id(pool, args.id)
        await assistants.delete(pool, assistant.id)
        return assistant

    assistant = run_db(settings, work)
    emit(args, {"id": assistant.id, "name": assistant.name, "deleted": True},
         f"assistant {assistant.name!r} deleted")
    return 0


# --- API keys ---------------------------------------------------------------------------------------


def _key_dict(key: api_keys.ApiKey, spent: tuple | None = None) -> dict[str, Any]:
    data = dataclasses.asdict(key)
    data["status"] = key.status()
    data["limits"] = key.limits.as_dict()
    if spent is not None:
        data["spent_usd"], data["spent_tokens"] = spent
        data["period"] = key.limits.budget_period
    return data


def spent_text(key: api_keys.ApiKey, spent: tuple) -> str:
    """This period's spend, against the budget when there is one: ``$1.20 of $50.00 (month)``."""
    usd, tokens = spent
    limits = key.limits
    text = f"${usd:,.2f}" + ("" if limits.budget_usd is None else f" of ${limits.budget_usd:,.2f}")
    if limits.budget_tokens is not None:
        text += f", {tokens:,} of {limits.budget_tokens:,} tokens"
    return f"{text} ({limits.budget_period})"


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> int:
    secret = crypto.generate_api_key()
    expires_at = None
    if args.expires_in is not None:
        expires_at = datetime.datetime.now(datetime.timezone.utc) + args.expires_in

    limits = limits_from(args)

    async def work(pool):
        await _check_assistants_exist(pool, args.assistant)
        unknown = await check_usd_budget(pool, limits, args.assistant)
        try:
            return await api_keys.create(
                pool,
                name=args.name,
                key_hash=crypto.hash_api_key(secret),
                prefix=crypto.display_prefix(secret),
                assistant_ids=args.assistant,
                expires_at=expires_at,
                limits=limits,
            ), unknown
        except api_keys.KeyNameTaken as exc:
            raise name_taken(exc, await api_keys.in_force_named(pool, args.name)) from None

    key, unknown = run_db(settings, work)
    emit(args, _key_dict(key) | {"key": secret, "unpriced_assistants": unknown},
         f"{secret}\n\nThis is the only time the key is shown: store it now. (id {key.id})" + _unpriced_note(unknown))
    return 0


async def _check_assistants_exist(pool, assistant_ids) -> None:
    if assistant_ids is not None:
        missing = set(assistant_ids) - await assistants.existing_ids(pool, assistant_ids)
        if missing:
            raise CommandError(f"no assistant with id {', '.join(sorted(map(str, missing)))}")


def _unpriced_note(unknown: list[str]) -> str:
    if not unknown:
        return ""
    return (f"\nNote: {', '.join(unknown)} can serve calls of unknown price: with this USD budget, such calls "
            "are refused, or skip those targets (set the assistants' --price-input/--price-output).")


def cmd_key_update(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        current = await _key_by_id_or_prefix(pool, args.key)
        if current.revoked_at is not None:
            raise CommandError(f"key {current.prefix}... is revoked: it cannot be changed")
        limits = limits_from(args, current.limits)
        scope = None if args.all_assistants else current.assistant_ids if args.assistant is None else args.assistant
        await _check_assistants_exist(pool, args.assistant)
        unknown = await check_usd_budget(pool, limits, scope)
        expires_at = current.expires_at
        if args.no_expiry:
            expires_at = None
        elif args.expires_in is not None:
            expires_at = datetime.datetime.now(datetime.timezone.utc) + args.expires_in
        name = current.name if args.name is None else args.name
        try:
            key = await api_keys.update(pool, current.id, name=name, assistant_ids=scope, expires_at=expires_at,
                                        limits=limits)
        except api_keys.KeyNameTaken as exc:
            raise name_taken(exc, await api_keys.in_force_named(pool, name)) from None
        return key, unknown

    key, unknown = run_db(settings, work)
    emit(args, _key_dict(key) | {"unpriced_assistants": unknown},
         f"key {key.prefix}... ({key.name}) updated; limits: {limits_text(key.limits)}" + _unpriced_note(unknown))
    return 0


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        keys = await api_keys.list_all(pool)
        spent = await usage_events.spent_by_key(pool, {key.id: current_period_start(key.limits) for key in keys})
        return keys, spent, {a.id: a.name for a in await assistants.list_all(pool)}

    keys, spent, names = run_db(settings, work)
    rows = [_key_dict(k, spent[k.id]) for k in keys]  # --json: the scope as assistant_ids
    shown = [row | {"scope": _scope(row["assistant_ids"], names), "limits": limits_text(key.limits),
                    "spent": spent_text(key, spent[key.id])} for row, key in zip(rows, keys)]
    emit(args, {"keys": rows},
         table(shown, ["id", "prefix", "name", "status", "scope", "limits", "spent", "expires_at", "last_used_at"],
               "no keys yet: riceball key create --name NAME"))
    return 0


def _scope(assistant_ids: list | None, names: dict) -> str:
    """A key's scope as people read it: the assistants' names."""
    if assistant_ids is None:
        return "all assistants"
    return ", ".join(names.get(assistant_id, f"(deleted {assistant_id})") for assistant_id in assistant_ids) or "none"


async def _key_by_id_or_prefix(pool, id_or_prefix: str) -> api_keys.ApiKey:
    try:
        key = await api_keys.find(pool, id_or_prefix)
    except api_keys.AmbiguousKey as exc:
        raise CommandError(str(exc)) from None
    if key is None:
        raise CommandError(f"no key with id or prefix {id_or_prefix!r}")
    return key


def cmd_key_show(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        key = await _key_by_id_or_prefix(pool, args.key)
        spent = await usage_events.spent(pool, api_key_id=key.id, since=current_period_start(key.limits))
        return key, spent, {a.id: a.name for a in await assistants.list_all(pool)}

    key, spent, names = run_db(settings, work)
    data = _key_dict(key, spent)
    lines = [f"{name + ':':<14} {_cell(data[name])}" for name in (
        "id", "prefix", "name", "status", "created_at", "expires_at", "revoked_at", "last_used_at")]
    emit(args, data, "\n".join([*lines, f"{'scope:':<14} {_scope(data['assistant_ids'], names)}",
                                f"{'limits:':<14} {limits_text(key.limits)}",
                                f"{'spent:':<14} {spent_text(key, spent)}"]))
    return 0


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        key = await _key_by_id_or_prefix(pool, args.key)
        return await api_keys.revoke(pool, key.id)

    key = run_db(settings, work)
    emit(args, _key_dict(key), f"key {key.prefix}... ({key.name}) revoked")
    return 0


# --- plugins ----------------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace, settings: Settings) -> int:
    rows = describe_plugins(make_plugin_manager(settings))
    text_rows = [dict(row, version=row["version"] or "-", hooks=", ".join(row["hooks"])) for row in rows]
    emit(args, {"plugins": rows}, table(text_rows, ["name", "version", "hooks"], "no plugins"))
    return 0
