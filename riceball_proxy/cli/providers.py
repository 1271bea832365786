"""``provider``: the upstreams assistants call."""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from riceball_proxy import crypto, services, specs
from riceball_proxy.cli import lookup, options
from riceball_proxy.cli.output import CommandError, emit, read_stdin_secret, refusal, run_db, table
from riceball_proxy.db import providers
from riceball_proxy.masking import mask_url
from riceball_proxy.plugins import make_plugin_manager
from riceball_proxy.providers import provider_types
from riceball_proxy.settings import Settings
from riceball_proxy.specs import ProviderSpec, SpecError


def add_commands(cli) -> None:
    provider = cli.noun("provider", "manage upstream providers")
    _provider_options(cli.command("add", cmd_provider_add, "add an upstream provider", provider), update=False)
    update = cli.command("update", cmd_provider_update, "change a provider (what is not given stays as it is)",
                         provider)
    update.add_argument("provider", metavar="NAME_OR_ID")
    _provider_options(update, update=True)
    cli.command("list", cmd_provider_list, "list providers", provider)
    cli.command("delete", cmd_provider_delete, "delete a provider no assistant uses",
                provider).add_argument("provider", metavar="NAME_OR_ID")
    cli.command("test", cmd_provider_test, "list the upstream's models (a connection test)",
                provider).add_argument("provider", metavar="NAME_OR_ID")


def _provider_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """The options of ``provider add``; for ``update`` none is required and none has a default."""
    def default(value):
        return None if update else value

    parser.add_argument("--name", required=not update, type=options.trimmed)
    parser.add_argument("--type", required=not update, help="a provider type offered by the plugins (e.g. openai)")
    parser.add_argument("--base-url", required=not update, type=options.trimmed)
    parser.add_argument("--api-key-stdin", action="store_true",
                        help="read the upstream API key from stdin" + (" (replaces the stored one)" if update else ""))
    if update:
        parser.add_argument("--clear-api-key", action="store_true", help="remove the stored API key")
    # The ranges are the spec's (specs.ProviderSpec), said as "--option: message".
    parser.add_argument("--connect-timeout", type=options.number, help="seconds (default 10)")
    parser.add_argument("--read-timeout", type=options.number, help="seconds (default 300)")
    parser.add_argument("--max-connections", type=options.whole,
                        help=f"upstream calls at once (default {providers.DEFAULT_MAX_CONNECTIONS})")
    parser.add_argument("--queue-timeout", type=options.number,
                        help=f"seconds a call waits for a free turn before a 503 "
                             f"(default {providers.DEFAULT_QUEUE_TIMEOUT:g})")


#: Seconds ``provider test`` waits for the upstream's model list.
UPSTREAM_CHECK_TIMEOUT = 10


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


#: The options that set a provider's fields, by field.
_FIELDS = ("name", "type", "base_url", "connect_timeout", "read_timeout", "max_connections", "queue_timeout")


def cmd_provider_add(args: argparse.Namespace, settings: Settings) -> int:
    given = {name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None}
    return _save(args, settings, None, given, read_stdin_secret("API key") if args.api_key_stdin else None)


def cmd_provider_update(args: argparse.Namespace, settings: Settings) -> int:
    if args.api_key_stdin and args.clear_api_key:
        raise CommandError("--api-key-stdin and --clear-api-key ask for opposite things")
    given = {name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None}
    api_key = read_stdin_secret("API key") if args.api_key_stdin else None if args.clear_api_key else services.KEEP
    return _save(args, settings, args.provider, given, api_key)


def _warn_of_base_url(args: argparse.Namespace, provider_type, base_url: str) -> None:
    """What the provider type finds likely wrong with a base URL, as a warning (not under --json)."""
    warning = provider_type.base_url_warning(base_url)
    if warning and not args.json:
        print(f"riceball: warning: --base-url: {warning}", file=sys.stderr)


def _save(args: argparse.Namespace, settings: Settings, ref: str | None, given: dict[str, Any], api_key) -> int:
    """Add (no ``ref``) or change the provider ``ref`` names with the options ``given``."""
    types = provider_types(make_plugin_manager(settings))
    box = crypto.load_secret_box(settings) if isinstance(api_key, str) else None

    async def work(pool):
        current = None if ref is None else await lookup.provider(pool, ref)
        data = ({} if current is None else ProviderSpec.of(current)) | given
        try:
            spec = specs.build(ProviderSpec, data)
            return await services.save_provider(
                pool, spec, secret_box=box, api_key=api_key, id=None if current is None else current.id,
                provider_types=[*types, *([current.type] if current is not None else [])])
        except SpecError as exc:
            raise await refusal(exc, lambda path: f"--{path.replace('_', '-')}" if path else "the provider",
                                lambda: providers.get_by_name(pool, data["name"])) from None

    provider = run_db(settings, work)
    if provider is None:
        raise CommandError("this provider was deleted meanwhile")
    if provider.type in types:
        _warn_of_base_url(args, types[provider.type], provider.base_url)
    emit(args, _provider_dict(provider), f"provider {provider.name!r} {'added' if ref is None else 'updated'}"
         + (f" (id {provider.id})" if ref is None else ""))
    return 0


def cmd_provider_delete(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        provider = await lookup.provider(pool, args.provider)
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
        provider = await lookup.provider(pool, args.provider)
        provider_type = types.get(provider.type)
        if provider_type is None:
            raise CommandError(f"provider {provider.name!r}: its type {provider.type!r} is not installed")
        _warn_of_base_url(args, provider_type, provider.base_url)
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
