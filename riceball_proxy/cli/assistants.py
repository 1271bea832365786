"""``assistant``: assistants, by id or by name."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
from typing import Any

from riceball_proxy import services, specs
from riceball_proxy.cli import lookup, options
from riceball_proxy.cli.output import CommandError, cell, emit, limits_text, refusal, run_db, spec_error, table
from riceball_proxy.db import assistants, providers
from riceball_proxy.db.assistants import EFFORTS
from riceball_proxy.masking import mask_params
from riceball_proxy.settings import Settings
from riceball_proxy.specs import RANGES, AssistantSpec, PricesSpec, SpecError


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
    parser.add_argument("--name", required=not update, type=options.trimmed)
    parser.add_argument("--provider", required=not update, help="the provider's name (or id)")
    parser.add_argument("--model", required=not update, type=options.trimmed, help="the upstream model")
    parser.add_argument("--system-prompt", default=None if update else "")
    for parameter, (_, _, whole) in RANGES.items():  # their ranges are the spec's
        parser.add_argument(f"--{parameter.replace('_', '-')}", type=options.whole if whole else options.number)
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="a stop sequence (repeatable, at most 4" + ("; given, they replace the stored ones)"
                                                                       if update else ")"))
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
    parser.add_argument("--deadline", type=options.number, metavar="SECONDS",
                        help="time for all attempts of one call together (default 60)")
    parser.add_argument("--max-attempts", type=options.whole, metavar="N",
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


def fallbacks_from(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The fallback targets ``--fallback PROVIDER:MODEL`` gives, in order, as a spec's data (``none``: no
    fallbacks; PROVIDER as given, a name or an id); None when the option is not given."""
    if args.fallback is None:
        return None
    if args.fallback == ["none"]:
        return []
    targets = []
    for n, given in enumerate(args.fallback, start=1):
        name, colon, model = given.partition(":")
        if not colon or not model.strip():
            raise CommandError(f"--fallback takes PROVIDER:MODEL, not {given!r}")
        targets.append({"provider": name, "model": model.strip(), "priority": n})
    return targets


def prices_from(args: argparse.Namespace, current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The prices the options give (``none`` removes one) on top of ``current``, as a spec's data."""
    prices = dict(current or {})
    for name in PricesSpec.model_fields:
        given = getattr(args, f"price_{name}")
        if given == options.NONE:
            prices.pop(name, None)
        elif given is not None:
            prices[name] = given
    return prices or None


def option_of(path: str) -> str:
    """The option that sets the spec field at ``path``."""
    head, _, rest = path.partition(".")
    if head.startswith("fallbacks["):
        return f"--fallback #{int(head[len('fallbacks['):-1]) + 1}"
    if head == "limits":
        return "--" + rest.replace("_", "-")
    if head == "prices":
        return "--price-" + (rest or "input").replace("_", "-")
    options_of = {"locked": "--lock", "allow_client_system": "--no-client-system", "enabled": "--disabled", "": "the "
                  "assistant"}
    head = head.split("[")[0]
    return options_of.get(head) or "--" + head.replace("_", "-")


def assistant_base_url(settings: Settings, assistant_id: Any) -> str:
    """The base URL an OpenAI SDK is given for an assistant, on this gateway's host and port."""
    return f"http://{settings.host}:{settings.port}/api/v1/assistants/{assistant_id}/v1"


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """What the options of ``add`` or ``update`` set, as an AssistantSpec's data (prices, limits and
    fallbacks apart)."""
    given = {"name": args.name, "model": args.model, "system_prompt": args.system_prompt,
             **{parameter: getattr(args, parameter) for parameter in RANGES}, "stop": args.stop,
             "reasoning_effort": args.reasoning_effort, "locked": args.lock,
             "allow_client_system": None if args.no_client_system is None else not args.no_client_system,
             "enabled": None if args.disabled is None else not args.disabled, "deadline": args.deadline,
             "max_attempts": args.max_attempts, "expose_target": args.expose_target, "auto_cache": args.auto_cache}
    return {name: value for name, value in given.items() if value is not None}


def cmd_assistant_add(args: argparse.Namespace, settings: Settings) -> int:
    data = _given(args) | {"provider": args.provider, "limits": options.limit_data(args),
                           "prices": prices_from(args, None), "fallbacks": fallbacks_from(args) or []}
    _check(data)  # what is wrong with the values is said before what the database lacks

    async def work(pool):
        await _named_providers(pool, data, args.provider, args.fallback is not None)
        return await _saved(pool, data, None), data["provider"]

    assistant, provider_name = run_db(settings, work)
    base_url = assistant_base_url(settings, assistant.id)
    data = _assistant_dict(assistant, provider_name) | {"base_url": base_url}
    emit(args, data, f"assistant {assistant.name!r} added\nid:       {assistant.id}\nbase URL: {base_url}")
    return 0


def cmd_assistant_update(args: argparse.Namespace, settings: Settings) -> int:
    async def work(pool):
        current = await lookup.assistant(pool, args.id)
        data = AssistantSpec.of(current, {p.id: p.name for p in await providers.list_all(pool)}) | _given(args)
        fallbacks = fallbacks_from(args)
        data |= {"limits": options.limit_data(args, current.limits), "prices": prices_from(args, data["prices"]),
                 "fallbacks": data["fallbacks"] if fallbacks is None else fallbacks}
        await _named_providers(pool, data, args.provider, fallbacks is not None)
        return await _saved(pool, data, current.id), data["provider"]

    assistant, provider_name = run_db(settings, work)
    emit(args, _assistant_dict(assistant, provider_name), f"assistant {assistant.name!r} updated")
    return 0


def _check(data: dict[str, Any]) -> None:
    try:
        specs.build(AssistantSpec, data)
    except SpecError as exc:
        raise spec_error(exc, option_of) from None


async def _named_providers(pool, data: dict[str, Any], provider: str | None, fallbacks: bool) -> None:
    """The providers the options gave (a name or an id) by name in ``data``: ``--provider`` and, when
    given, each ``--fallback``'s."""
    if provider is not None:
        data["provider"] = (await lookup.provider(pool, provider)).name
    if fallbacks:
        for target in data["fallbacks"]:
            target["provider"] = (await lookup.provider(pool, target["provider"])).name


async def _saved(pool, data: dict[str, Any], id: Any) -> assistants.Assistant:
    """The assistant ``data`` describes, saved (as ``id``, or new); its problems as ``--option: message``."""
    try:
        saved = await services.save_assistant(pool, specs.build(AssistantSpec, data), id)
    except SpecError as exc:
        raise await refusal(exc, option_of, lambda: assistants.get_by_name(pool, data["name"])) from None
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
