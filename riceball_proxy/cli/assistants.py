"""``assistant``: assistants, by id or by name."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
from typing import Any

from riceball_proxy.cli import lookup, options
from riceball_proxy.cli.output import (
    CommandError,
    cell,
    emit,
    limits_text,
    name_taken,
    run_db,
    table,
)
from riceball_proxy.db import assistants, providers
from riceball_proxy.db.assistants import DEFAULT_DEADLINE, DEFAULT_MAX_ATTEMPTS, EFFORTS
from riceball_proxy.limits import Limits
from riceball_proxy.masking import mask_params
from riceball_proxy.pricing import assistant_budget_problem
from riceball_proxy.settings import Settings


def add_commands(cli) -> None:
    assistant = cli.noun("assistant", "manage assistants")
    _assistant_options(cli.command("add", cmd_assistant_add, "add an assistant", assistant), update=False)
    update = cli.command("update", cmd_assistant_update, "change an assistant (what is not given stays as it is)",
                         assistant)
    update.add_argument("id", metavar="ID_OR_NAME")
    _assistant_options(update, update=True)
    cli.command("list", cmd_assistant_list, "list assistants", assistant)
    cli.command("show", cmd_assistant_show, "show an assistant's whole configuration",
                assistant).add_argument("id", metavar="ID_OR_NAME")
    cli.command("delete", cmd_assistant_delete, "delete an assistant", assistant).add_argument("id", metavar="ID_OR_NAME")


def _assistant_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """The options of ``assistant add``; for ``update`` none is required and none has a default."""
    parser.add_argument("--name", required=not update, type=options.name)
    parser.add_argument("--provider", required=not update, help="the provider's name")
    parser.add_argument("--model", required=not update, type=options.name, help="the upstream model")
    parser.add_argument("--system-prompt", default=None if update else "")
    parser.add_argument("--temperature", type=options.between(0, 2))
    parser.add_argument("--top-p", type=options.between(0, 1))
    parser.add_argument("--max-tokens", type=options.between(1, 2**31 - 1, integer=True))
    parser.add_argument("--reasoning-effort", choices=EFFORTS,
                        help="the default reasoning effort (each provider's thinking control; docs/providers.md)")
    parser.add_argument("--lock", action="append", default=None if update else [], metavar="PARAMETER",
                        help="make the assistant's value of a parameter win over the client's (repeatable"
                             + ("; given, it replaces the locks)" if update else ")"))
    parser.add_argument("--no-client-system", action="store_true", default=None if update else False,
                        help="drop system and developer messages sent by clients")
    parser.add_argument("--disabled", action="store_true", default=None if update else False,
                        help="disable it" if update else "create it disabled")
    parser.add_argument("--fallback", action="append", default=None if update else [], metavar="PROVIDER:MODEL",
                        help="a fallback target, tried in the order given when the provider fails before answering "
                             "(repeatable; PROVIDER is a name or an id" + ("; given, it replaces the list; "
                             "'none' removes them all)" if update else ")"))
    parser.add_argument("--deadline", type=options.between(0.1, 3600), metavar="SECONDS",
                        help="time for all attempts of one call together (default 60)")
    parser.add_argument("--max-attempts", type=options.between(1, 20, integer=True), metavar="N",
                        help="upstream calls one call may make, fallbacks included (default 3)")
    parser.add_argument("--expose-target", action="store_true", default=None if update else False,
                        help="answers name the provider and model that served them (x-riceball-provider, "
                             "x-riceball-model); off by default: they reveal the configuration")
    parser.add_argument("--auto-cache", action="store_true", default=None if update else False,
                        help="prompt-cache breakpoints on the system prompt and the last turn of calls that set "
                             "none (providers with explicit caching, such as Anthropic)")
    if update:
        parser.add_argument("--no-auto-cache", dest="auto_cache", action="store_false", default=None,
                            help="no automatic prompt-cache breakpoints")
        parser.add_argument("--hide-target", dest="expose_target", action="store_false", default=None,
                            help="answers do not name the provider and model that served them")
    options.limit_options(parser, update=update)
    for name, what in (("input", "prompt"), ("output", "answer"), ("cached-input", "cached prompt (cache read)"),
                       ("cache-write", "prompt written to the cache (default 1.25 times the input price)")):
        parser.add_argument(f"--price-{name}", type=options.price, metavar="USD_PER_M",
                            help=f"USD per million {what} tokens" + (" ('none' removes it)" if update else "")
                            + ("; without a price, genai-prices' for the model" if name == "input" else ""))
    if update:
        parser.add_argument("--client-system", dest="no_client_system", action="store_false", default=None,
                            help="keep the system and developer messages clients send")
        parser.add_argument("--enabled", dest="disabled", action="store_false", default=None, help="enable it")


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
    return prices[0], prices[1], prices[2], prices[3]


async def check_assistant_budget(pool, limits: Limits, prices: assistants.Prices, provider, model: str,
                                 fallbacks) -> None:
    """A USD budget on an assistant needs the price of every target's calls
    (``pricing.assistant_budget_problem``)."""
    problem = await assistant_budget_problem(pool, limits, model, prices, provider, fallbacks)
    if problem:
        raise CommandError(f"--budget-usd: {problem}")


def assistant_base_url(settings: Settings, assistant_id: Any) -> str:
    """The base URL an OpenAI SDK is given for an assistant, on this gateway's host and port."""
    return f"http://{settings.host}:{settings.port}/api/v1/assistants/{assistant_id}/v1"


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

    limits, prices = options.limits_from(args), prices_from(args)

    async def work(pool):
        provider = await providers.get_by_name(pool, args.provider)
        if provider is None:
            raise CommandError(f"no provider named {args.provider!r}")
        fallbacks = await fallbacks_from(pool, args)
        await check_assistant_budget(pool, limits, prices, provider, args.model, fallbacks)
        routing = {"fallbacks": fallbacks, "deadline": args.deadline or DEFAULT_DEADLINE,
                   "max_attempts": args.max_attempts or DEFAULT_MAX_ATTEMPTS, "expose_target": args.expose_target,
                   "auto_cache": args.auto_cache}
        assistant = await _saved(pool, args.name, assistants.create(
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
            ))
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
        current = await lookup.assistant(pool, args.id)
        provider = await (providers.get(pool, current.provider_id) if args.provider is None
                          else providers.get_by_name(pool, args.provider))
        if provider is None:
            raise CommandError(f"no provider named {args.provider!r}")
        given = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens,
                 "reasoning_effort": args.reasoning_effort}
        parameters = dict(current.parameters) | {name: value for name, value in given.items() if value is not None}
        limits, prices = options.limits_from(args, current.limits), prices_from(args, current)
        fallbacks = await fallbacks_from(pool, args, current)
        await check_assistant_budget(pool, limits, prices, provider,
                                     current.model if args.model is None else args.model, fallbacks)
        routing = {"fallbacks": fallbacks,
                   "deadline": current.deadline if args.deadline is None else args.deadline,
                   "max_attempts": current.max_attempts if args.max_attempts is None else args.max_attempts,
                   "expose_target": current.expose_target if args.expose_target is None else args.expose_target,
                   "auto_cache": current.auto_cache if args.auto_cache is None else args.auto_cache}
        assistant = await _saved(pool, args.name, assistants.update(
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
            ))
        return assistant, provider

    assistant, provider = run_db(settings, work)
    emit(args, _assistant_dict(assistant, provider.name), f"assistant {assistant.name!r} updated")
    return 0


async def _saved(pool, name: str | None, writing) -> assistants.Assistant:
    """The assistant ``writing`` (a create or an update) saves; its refusal as a one-line error."""
    try:
        saved = await writing
    except assistants.AssistantNameTaken as exc:
        raise name_taken(exc, await assistants.get_by_name(pool, name or "")) from None
    except assistants.InvalidAssistant as exc:
        raise CommandError(str(exc)) from None
    if saved is None:
        raise CommandError("this assistant was deleted meanwhile")
    return saved


def cmd_assistant_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        names = {p.id: p.name for p in await providers.list_all(pool)}
        return [_assistant_dict(a, names.get(a.provider_id)) for a in await assistants.list_all(pool)]

    rows = run_db(settings, work)
    emit(args, {"assistants": rows},
         table(rows, ["id", "name", "provider", "model", "enabled"], "no assistants yet: riceball assistant add"))
    return 0


def cmd_assistant_show(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        assistant = await lookup.assistant(pool, args.id)
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
    lines = [f"{name + ':':<20} {cell(shown[name])}" for name in (
        "id", "name", "provider", "model", "enabled", "allow_client_system", "parameters", "locked",
        "extra_params", "auto_cache", "fallbacks", "deadline", "health", "limits", "price", "base_url")]
    emit(args, data, "\n".join(lines) + f"\nsystem prompt:\n{data['system_prompt'] or '(none)'}")
    return 0


def target_health(settings: Settings, assistant: assistants.Assistant, names: dict) -> list[str] | str:
    """Each target's circuit as the gateways share it in Redis, or why it cannot be known here."""
    if not settings.redis_url:
        return "kept by each gateway process without RICEBALL_REDIS_URL: see the assistant's page in the admin panel"
    url = settings.redis_url
    from riceball_proxy.circuits_shared import read_all

    async def read():
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
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
        assistant = await lookup.assistant(pool, args.id)
        await assistants.delete(pool, assistant.id)
        return assistant

    assistant = run_db(settings, work)
    emit(args, {"id": assistant.id, "name": assistant.name, "deleted": True},
         f"assistant {assistant.name!r} deleted")
    return 0
