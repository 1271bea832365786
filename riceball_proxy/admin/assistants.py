"""Assistants: list, create, edit, enable or disable, delete, and a page with ready-to-use snippets."""
from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.admin.forms import Form, limit_values
from riceball_proxy.admin.pages import confirm, db_pool, flash, redirect, render
from riceball_proxy.admin.providers import list_upstream_models
from riceball_proxy.db import assistants, providers
from riceball_proxy.db.assistants import DEFAULT_DEADLINE, DEFAULT_MAX_ATTEMPTS, Target
from riceball_proxy.errors import APIError
from riceball_proxy.pricing import assistant_budget_problem

#: Seconds the form waits for the provider's model list before offering free text only.
MODEL_LIST_TIMEOUT = 3

#: Each parameter's label, bounds and whether it is an integer: (label, minimum, maximum, integer).
NUMERIC_PARAMETERS = {
    "temperature": ("Temperature", 0, 2, False),
    "top_p": ("Top p", 0, 1, False),
    "max_tokens": ("Max tokens (also a ceiling)", 1, 2**31 - 1, True),
    "presence_penalty": ("Presence penalty", -2, 2, False),
    "frequency_penalty": ("Frequency penalty", -2, 2, False),
    "seed": ("Seed", -(2**63), 2**63 - 1, True),
}


#: The assistant's price fields: input, output, cache read, cache write (USD per million tokens).
PRICE_FIELDS = ("price_input", "price_output", "price_cached_input", "price_cache_write")


def setup_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/assistants", assistant_list, name="assistants")
    router.add_get("/assistants/new", assistant_form, name="assistant_new")
    router.add_post("/assistants/new", assistant_save)
    router.add_get("/assistants/{id}", assistant_detail, name="assistant")
    router.add_get("/assistants/{id}/edit", assistant_form, name="assistant_edit")
    router.add_post("/assistants/{id}/edit", assistant_save)
    router.add_post("/assistants/{id}/toggle", assistant_toggle, name="assistant_toggle")
    router.add_get("/assistants/{id}/delete", assistant_delete_confirm, name="assistant_delete")
    router.add_post("/assistants/{id}/delete", assistant_delete)



async def assistant_or_404(request: web.Request, assistant_id: str | None = None) -> assistants.Assistant:
    """The assistant the path's ``id`` (or ``assistant_id``) names; 404 when there is none."""
    try:
        uid = uuid.UUID(request.match_info["id"] if assistant_id is None else assistant_id)
    except ValueError:
        raise web.HTTPNotFound(text="No such assistant.") from None
    assistant = await assistants.get(db_pool(request), uid)
    if assistant is None:
        raise web.HTTPNotFound(text="No such assistant.")
    return assistant


async def assistant_list(request: web.Request) -> web.Response:
    pool = db_pool(request)
    return await render(request, "admin/assistants.html", {
        "assistants": await assistants.list_all(pool),
        "providers": {p.id: p for p in await providers.list_all(pool)},
    })


def _values_of(assistant: assistants.Assistant) -> dict[str, str]:
    values = {
        "name": assistant.name, "provider_id": str(assistant.provider_id), "model": assistant.model,
        "system_prompt": assistant.system_prompt,
        "extra_params": orjson.dumps(dict(assistant.extra_params), option=orjson.OPT_INDENT_2).decode()
        if assistant.extra_params else "",
        "stop": "\n".join(assistant.parameters.get("stop") or []),
    }
    for name in NUMERIC_PARAMETERS:
        if name in assistant.parameters:
            values[name] = f"{assistant.parameters[name]:g}" if isinstance(assistant.parameters[name], float) \
                else str(assistant.parameters[name])
    for name in assistant.locked:
        values[f"lock_{name}"] = "on"
    if assistant.allow_client_system:
        values["allow_client_system"] = "on"
    if assistant.enabled:
        values["enabled"] = "on"
    if assistant.expose_target:
        values["expose_target"] = "on"
    for n, target in enumerate(assistant.fallbacks):
        values |= {f"fallback_provider_{n}": str(target.provider_id), f"fallback_model_{n}": target.model,
                   f"fallback_weight_{n}": str(target.weight), f"fallback_priority_{n}": str(target.priority),
                   f"fallback_params_{n}": orjson.dumps(dict(target.params)).decode() if target.params else "",
                   f"fallback_prices_{n}": ", ".join(f"{price.normalize():f}" if price is not None else ""
                                                     for price in target.prices).rstrip(", ")}
    values["deadline"] = f"{assistant.deadline:g}"
    values["max_attempts"] = str(assistant.max_attempts)
    if assistant.auto_cache:
        values["auto_cache"] = "on"
    if "reasoning_effort" in assistant.parameters:
        values["reasoning_effort"] = assistant.parameters["reasoning_effort"]
    for name in PRICE_FIELDS:
        if getattr(assistant, name) is not None:
            values[name] = f"{getattr(assistant, name).normalize():f}"
    return values | limit_values(assistant.limits)


async def _render_form(request, assistant, values, errors, *, status=200) -> web.Response:
    all_providers = await providers.list_all(db_pool(request))
    models, models_error = [], None
    provider_id = values.get("provider_id") or (str(all_providers[0].id) if all_providers else "")
    if provider_id.isdigit() and any(p.id == int(provider_id) for p in all_providers):
        try:
            models = await list_upstream_models(request, int(provider_id), MODEL_LIST_TIMEOUT)
        except APIError as exc:
            models_error = exc.message
        except TimeoutError:
            models_error = "the provider did not answer in time"
        except (LookupError, ValueError) as exc:
            models_error = str(exc)
    filled = [n for n in range(MAX_FALLBACKS) if values.get(f"fallback_model_{n}")]
    return await render(request, "admin/assistant_form.html", {
        "assistant": assistant, "values": values | {"provider_id": provider_id}, "errors": errors,
        "providers": all_providers, "models": models, "models_error": models_error,
        "numeric_parameters": NUMERIC_PARAMETERS, "efforts": assistants.EFFORTS,
        # The targets there are, and two empty rows to add more (more after saving).
        "fallback_rows": range(min(MAX_FALLBACKS, (max(filled) + 1 if filled else 0) + 2)),
    }, status=status)


#: Fallback rows the form reads at most.
MAX_FALLBACKS = 20


def read_fallbacks(form: Form, provider_ids: dict[str, int]) -> list[Target]:
    """The form's fallback rows (a model filled in, "remove" not ticked), each with its own errors."""
    targets = []
    for n in range(MAX_FALLBACKS):
        model = form.text(f"fallback_model_{n}", max_length=300)
        if not model or form.flag(f"fallback_remove_{n}"):
            continue
        provider = form.choice(f"fallback_provider_{n}", provider_ids)
        weight = form.number(f"fallback_weight_{n}", minimum=1, maximum=1000, integer=True)
        priority = form.number(f"fallback_priority_{n}", minimum=0, maximum=100, integer=True)
        params = form.json_object(f"fallback_params_{n}")
        prices = form.prices(f"fallback_prices_{n}")
        if provider in provider_ids:
            targets.append(Target(provider_ids[provider], model, weight=int(weight or 1),
                                  priority=n + 1 if priority is None else int(priority),
                                  params=params, prices=prices))
    return targets


async def assistant_form(request: web.Request) -> web.Response:
    assistant = await assistant_or_404(request) if "id" in request.match_info else None
    if "reload" in request.query:  # "load models" resubmits the form by GET: keep what was typed
        values = dict(request.query)
    elif assistant is not None:
        values = _values_of(assistant)
    else:
        values = {"allow_client_system": "on", "enabled": "on"}
    return await _render_form(request, assistant, values, {})


async def assistant_save(request: web.Request) -> web.Response:
    assistant = await assistant_or_404(request) if "id" in request.match_info else None
    pool = db_pool(request)
    form = Form(await request.post())
    name = form.text("name", required=True)
    provider_ids = {str(p.id): p.id for p in await providers.list_all(pool)}
    provider_id = form.choice("provider_id", provider_ids)
    model = form.text("model", required=True, max_length=300)
    system_prompt = form.text("system_prompt", max_length=100_000, strip=False)
    parameters: dict[str, Any] = {}
    for parameter, (_, low, high, integer) in NUMERIC_PARAMETERS.items():
        value = form.number(parameter, minimum=low, maximum=high, integer=integer)
        if value is not None:
            parameters[parameter] = value
    stop = form.lines("stop")
    if len(stop) > 4:
        form.errors["stop"] = "At most 4 stop sequences."
    elif stop:
        parameters["stop"] = stop
    effort = form.choice("reasoning_effort", ("", *assistants.EFFORTS))
    if effort:
        parameters["reasoning_effort"] = effort
    locked = {parameter for parameter in assistants.PARAMETERS if form.flag(f"lock_{parameter}")}
    for parameter in locked - set(parameters):
        form.errors[parameter] = "A locked parameter needs a value."
    extra_params = form.json_object("extra_params")
    limits = form.limits()
    fallbacks = read_fallbacks(form, provider_ids)
    deadline = form.number("deadline", minimum=0.1, maximum=3600)
    max_attempts = form.number("max_attempts", minimum=1, maximum=20, integer=True)
    prices = tuple(form.amount(field) for field in PRICE_FIELDS)
    if (prices[0] is None) != (prices[1] is None):
        form.errors["price_input" if prices[0] is None else "price_output"] = "Set both prices, or neither."
    for field, price in zip(PRICE_FIELDS[2:], prices[2:]):
        if price is not None and prices[0] is None:
            form.errors[field] = "A cache price needs the input and output prices."
    if form.valid and limits.budget_usd is not None:
        provider = await providers.get(pool, provider_ids[provider_id])
        problem = await assistant_budget_problem(pool, limits, model, prices, provider, fallbacks)
        if problem:
            form.errors["budget_usd"] = problem[0].upper() + problem[1:] + "."
    if form.valid:
        fields: dict[str, Any] = dict(
                      name=name, provider_id=provider_ids[provider_id], model=model, system_prompt=system_prompt,
                      parameters=parameters, locked=locked, extra_params=extra_params,
                      allow_client_system=form.flag("allow_client_system"), enabled=form.flag("enabled"),
                      limits=limits, prices=prices, expose_target=form.flag("expose_target"),
                      auto_cache=form.flag("auto_cache"),
                      fallbacks=fallbacks, deadline=deadline or DEFAULT_DEADLINE,
                      max_attempts=max_attempts or DEFAULT_MAX_ATTEMPTS)
        try:
            if assistant is None:
                saved: assistants.Assistant | None = await assistants.create(pool, **fields)
            else:
                saved = await assistants.update(pool, assistant.id, **fields)
                if saved is None:  # deleted while the form was open
                    raise web.HTTPNotFound(text="No such assistant.")
        except assistants.AssistantNameTaken:
            form.errors["name"] = "Another assistant has this name."
        except assistants.InvalidTargets as exc:
            form.errors["fallbacks"] = str(exc).capitalize() + "."
        except assistants.InvalidAssistant as exc:
            form.errors["name"] = str(exc)
        else:
            if saved is not None:
                await flash(request, "success", f"Assistant “{saved.name}” saved.")
                raise redirect(request, "assistant", id=saved.id)
    return await _render_form(request, assistant, form.values(), form.errors, status=400)


async def assistant_detail(request: web.Request) -> web.Response:
    assistant = await assistant_or_404(request)
    provider = await providers.get(db_pool(request), assistant.provider_id)
    base_url = str(request.url.origin()) + f"/api/v1/assistants/{assistant.id}/v1"
    return await render(request, "admin/assistant.html", {
        "assistant": assistant, "provider": provider, "base_url": base_url, "targets": assistant.targets,
        "provider_names": {p.id: p.name for p in await providers.list_all(db_pool(request))},
        "circuits": request.config_dict[appkeys.CIRCUITS].health(request.config_dict[appkeys.CIRCUITS].clock()),
    })


async def assistant_toggle(request: web.Request) -> web.Response:
    assistant = await assistant_or_404(request)
    await assistants.set_enabled(db_pool(request), assistant.id, not assistant.enabled)
    state = "disabled" if assistant.enabled else "enabled"
    await flash(request, "success", f"Assistant “{assistant.name}” {state}.")
    raise redirect(request, "assistants")


async def assistant_delete_confirm(request: web.Request) -> web.Response:
    assistant = await assistant_or_404(request)
    return await confirm(request, title=f"Delete assistant “{assistant.name}”?",
                         message="Clients calling it will get 404. Its usage history is kept. This cannot be undone.",
                         button="Delete assistant", back="assistants")


async def assistant_delete(request: web.Request) -> web.Response:
    assistant = await assistant_or_404(request)
    await assistants.delete(db_pool(request), assistant.id)
    await flash(request, "success", f"Assistant “{assistant.name}” deleted.")
    raise redirect(request, "assistants")
