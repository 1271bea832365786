"""``key``: API keys, by id, prefix or name (never the keys themselves, but once, at creation)."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
from typing import Any

from riceball_proxy import services, specs
from riceball_proxy.cli import lookup, options
from riceball_proxy.cli.output import CommandError, cell, emit, limits_text, refusal, run_db, table
from riceball_proxy.db import api_keys, assistants, usage_events
from riceball_proxy.limits import current_period_start
from riceball_proxy.pricing import key_budget_problem
from riceball_proxy.settings import Settings
from riceball_proxy.specs import KeySpec, SpecError


def add_commands(cli) -> None:
    key = cli.noun("key", "manage API keys")
    create = cli.command("create", cmd_key_create, "create an API key (printed once)", key)
    create.add_argument("--name", required=True, type=options.trimmed)
    create.add_argument("--assistant", action="append", metavar="ID_OR_NAME",
                        help="limit the key to this assistant (repeatable; default: every assistant)")
    create.add_argument("--expires-in", type=options.duration, metavar="DURATION", help="e.g. 30d, 12h, 1w2d")
    options.limit_options(create, update=False)
    update = cli.command("update", cmd_key_update,
                         "change a key's name, scope, expiry or limits (what is not given stays as it is)", key)
    update.add_argument("key", metavar="ID_PREFIX_OR_NAME")
    update.add_argument("--name", type=options.trimmed)
    scope = update.add_mutually_exclusive_group()
    scope.add_argument("--assistant", action="append", metavar="ID_OR_NAME",
                       help="limit the key to this assistant (repeatable; replaces the key's list)")
    scope.add_argument("--all-assistants", action="store_true", help="let the key call every assistant")
    expiry = update.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=options.duration, metavar="DURATION", help="from now: e.g. 30d, 12h")
    expiry.add_argument("--no-expiry", action="store_true", help="the key never expires")
    options.limit_options(update, update=True)
    cli.command("list", cmd_key_list, "list API keys (never the keys themselves)", key)
    cli.command("show", cmd_key_show, "show an API key's details (never the key itself)",
                key).add_argument("key", metavar="ID_PREFIX_OR_NAME")
    cli.command("revoke", cmd_key_revoke, "revoke an API key", key).add_argument("key", metavar="ID_PREFIX_OR_NAME")


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
    expires_at = None
    if args.expires_in is not None:
        expires_at = datetime.datetime.now(datetime.timezone.utc) + args.expires_in

    async def work(pool):
        names = None if args.assistant is None else [(await lookup.assistant(pool, ref)).name for ref in args.assistant]
        data = {"name": args.name, "assistants": names, "expires_at": expires_at, "limits": options.limit_data(args)}
        try:
            key, secret = await services.issue_key(pool, specs.build(KeySpec, data))
        except SpecError as exc:
            raise await refusal(exc, option_of, lambda: api_keys.in_force_named(pool, args.name)) from None
        return key, secret, await _unpriced(pool, key)

    key, secret, unknown = run_db(settings, work)
    emit(args, _key_dict(key) | {"key": secret, "unpriced_assistants": unknown},
         f"{secret}\n\nThis is the only time the key is shown: store it now. (id {key.id})" + _unpriced_note(unknown))
    return 0


def option_of(path: str) -> str:
    """The option that sets the key's field at ``path``."""
    if path.startswith("assistants"):
        return "--assistant"
    return "--" + path.removeprefix("limits.").replace("_", "-") if path else "the key"


async def _unpriced(pool, key: api_keys.ApiKey) -> list[str]:
    """The assistants a key with a USD budget may call whose calls have no known price."""
    return (await key_budget_problem(pool, key.limits, key.assistant_ids))[1]


def _unpriced_note(unknown: list[str]) -> str:
    if not unknown:
        return ""
    return (f"\nNote: {', '.join(unknown)} can serve calls of unknown price: with this USD budget, such calls "
            "are refused, or skip those targets (set the assistants' --price-input/--price-output).")


def cmd_key_update(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        current = await lookup.key(pool, args.key)
        if current.revoked_at is not None:
            raise CommandError(f"key {current.prefix}... is revoked: it cannot be changed")
        names = {assistant.id: assistant.name for assistant in await assistants.list_all(pool)}
        if args.all_assistants:
            scope = None
        elif args.assistant is not None:
            scope = [(await lookup.assistant(pool, ref)).name for ref in args.assistant]
        else:  # the assistants it may call now (one deleted since names nothing)
            scope = None if current.assistant_ids is None else [names[i] for i in current.assistant_ids if i in names]
        expires_at = current.expires_at
        if args.no_expiry:
            expires_at = None
        elif args.expires_in is not None:
            expires_at = datetime.datetime.now(datetime.timezone.utc) + args.expires_in
        name = current.name if args.name is None else args.name
        data = {"name": name, "assistants": scope, "expires_at": expires_at,
                "limits": options.limit_data(args, current.limits)}
        try:
            key = await services.save_key(pool, specs.build(KeySpec, data), current.id)
        except SpecError as exc:
            raise await refusal(exc, option_of, lambda: api_keys.in_force_named(pool, name)) from None
        if key is None:
            raise CommandError("this key was deleted meanwhile")
        return key, await _unpriced(pool, key)

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


def cmd_key_show(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        key = await lookup.key(pool, args.key)
        spent = await usage_events.spent(pool, api_key_id=key.id, since=current_period_start(key.limits))
        return key, spent, {a.id: a.name for a in await assistants.list_all(pool)}

    key, spent, names = run_db(settings, work)
    data = _key_dict(key, spent)
    lines = [f"{name + ':':<14} {cell(data[name])}" for name in (
        "id", "prefix", "name", "status", "created_at", "expires_at", "revoked_at", "last_used_at")]
    emit(args, data, "\n".join([*lines, f"{'scope:':<14} {_scope(data['assistant_ids'], names)}",
                                f"{'limits:':<14} {limits_text(key.limits)}",
                                f"{'spent:':<14} {spent_text(key, spent)}"]))
    return 0


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        key = await lookup.key(pool, args.key)
        return await api_keys.revoke(pool, key.id)

    key = run_db(settings, work)
    emit(args, _key_dict(key), f"key {key.prefix}... ({key.name}) revoked")
    return 0
