"""Assistants: list, create, edit, enable or disable, delete, and a page with ready-to-use snippets."""
from __future__ import annotations

import collections
import uuid
from typing import Any

import orjson
from aiohttp import web

from riceball_proxy import appkeys, services, specs
from riceball_proxy.admin.forms import Form, field_text, limit_values
from riceball_proxy.admin.pages import confirm, db_pool, flash, redirect, render
from riceball_proxy.admin.providers import list_upstream_models
from riceball_proxy.db import assistants, providers
from riceball_proxy.db.assistants import PARAMETERS
from riceball_proxy.errors import APIError
from riceball_proxy.specs import MAX_FALLBACKS, RANGES, AssistantSpec, SpecError

#: Seconds the form waits for the provider's model list before offering free text only.
MODEL_LIST_TIMEOUT = 3

#: The numeric parameters' labels (their bounds are the spec's: ``specs.RANGES``).
PARAMETER_LABELS = {
    "temperature": "Temperature",
    "top_p": "Top p",
    "max_tokens": "Max tokens (also a ceiling)",
    "presence_penalty": "Presence penalty",
    "frequency_penalty": "Frequency penalty",
    "seed": "Seed",
}
#: label, lowest, highest, whole number: what the form's number inputs say.
NUMERIC_PARAMETERS = {name: (label, *RANGES[name]) for name, label in PARAMETER_LABELS.items()}


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


#: The spec's fields the form shows in a shape of its own; every other is a box (a switch for a boolean)
#: named as the field, read and shown by ``_spec_data`` and ``_values_of`` without more code.
SHAPED = frozenset({"provider", "stop", "locked", "extra_params", "limits", "prices", "fallbacks"})
PLAIN = tuple(name for name in AssistantSpec.model_fields if name not in SHAPED)
SWITCHES = frozenset(name for name in PLAIN if AssistantSpec.model_fields[name].annotation is bool)


def _values_of(assistant: assistants.Assistant) -> dict[str, str]:
    """A stored assistant as the form's fields."""
    data = AssistantSpec.of(assistant, collections.defaultdict(str))  # providers by id in the form
    values = {name: field_text(data[name]) for name in PLAIN if name not in SWITCHES and data.get(name) is not None}
    values |= {name: "on" for name in SWITCHES if data[name]}
    values |= {f"lock_{name}": "on" for name in data["locked"]}
    values |= {
        "provider_id": str(assistant.provider_id), "stop": "\n".join(data.get("stop") or []),
        "extra_params": orjson.dumps(data["extra_params"], option=orjson.OPT_INDENT_2).decode()
        if data["extra_params"] else "",
        **{f"price_{name}": field_text(price) for name, price in (data["prices"] or {}).items()},
    }
    for n, target in enumerate(assistant.fallbacks):
        values |= {f"fallback_provider_{n}": str(target.provider_id), f"fallback_model_{n}": target.model,
                   f"fallback_weight_{n}": str(target.weight), f"fallback_priority_{n}": str(target.priority),
                   f"fallback_params_{n}": orjson.dumps(dict(target.params)).decode() if target.params else "",
                   f"fallback_prices_{n}": ", ".join(field_text(price) if price is not None else ""
                                                     for price in target.prices).rstrip(", ")}
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
        "ranges": {"deadline": specs.DEADLINE_RANGE, "attempts": specs.ATTEMPTS_RANGE},
        # The targets there are, and two empty rows to add more (more after saving).
        "fallback_rows": range(min(MAX_FALLBACKS, (max(filled) + 1 if filled else 0) + 2)),
    }, status=status)


def _spec_data(form: Form, provider_names: dict[str, str]) -> tuple[dict[str, Any], list[int]]:
    """The form's fields as an AssistantSpec's data, and the form row of each fallback it lists (rows
    with a model, "remove" not ticked)."""
    data: dict[str, Any] = {
        **{name: form.flag(name) if name in SWITCHES else form.given(name, strip=name != "system_prompt")
           for name in PLAIN},
        "provider": provider_names.get(form.raw("provider_id")), "stop": form.lines("stop") or None,
        "locked": [name for name in PARAMETERS if form.flag(f"lock_{name}")],
        "extra_params": form.json_object("extra_params"), "limits": form.limit_data(),
    }
    prices = {name.removeprefix("price_"): form.amount_text(name) for name in PRICE_FIELDS}
    data["prices"] = {name: value for name, value in prices.items() if value is not None} or None
    if data["provider"] is None:
        form.errors["provider_id"] = "Choose one of the options."
    rows, targets = [], []
    for n in range(MAX_FALLBACKS):
        model = form.raw(f"fallback_model_{n}").strip()
        if not model or form.flag(f"fallback_remove_{n}"):
            continue
        provider = provider_names.get(form.raw(f"fallback_provider_{n}"))
        if provider is None:
            form.errors[f"fallback_provider_{n}"] = "Choose one of the options."
        targets.append({"provider": provider, "model": model, "priority": form.given(f"fallback_priority_{n}"),
                        "weight": form.given(f"fallback_weight_{n}") or 1,
                        "params": form.json_object(f"fallback_params_{n}"),
                        "prices": form.price_data(f"fallback_prices_{n}")})
        rows.append(n)
    data["fallbacks"] = targets
    return {name: value for name, value in data.items() if value is not None}, rows


def _field_of(rows: list[int]):
    """The form field where the problem at a spec path is shown."""

    def field(path: str) -> str:
        head, _, rest = path.partition(".")
        if path.startswith("fallbacks["):
            index, _, part = path.removeprefix("fallbacks[").partition("]")
            row = rows[int(index)] if index.isdigit() and int(index) < len(rows) else None
            name = part.lstrip(".").split(".")[0]
            if row is None:
                return "fallbacks"
            return f"fallback_{name}_{row}" if name in ("provider", "model", "priority", "weight", "params",
                                                        "prices") else f"fallback_model_{row}"
        if head == "limits":
            return rest
        if head == "prices":
            return f"price_{rest or 'input'}"
        return {"provider": "provider_id", "stop": "stop"}.get(head.split("[")[0], head.split("[")[0])

    return field


async def assistant_form(request: web.Request) -> web.Response:
    assistant = await assistant_or_404(request) if "id" in request.match_info else None
    if assistant is not None:
        values = _values_of(assistant)
    else:
        values = {"allow_client_system": "on", "enabled": "on"}
    return await _render_form(request, assistant, values, {})


async def assistant_save(request: web.Request) -> web.Response:
    assistant = await assistant_or_404(request) if "id" in request.match_info else None
    pool = db_pool(request)
    form = Form(await request.post())
    if form.flag("reload"):  # "load this provider's models": the form again, as typed, with that provider's
        return await _render_form(request, assistant, form.values(), {})  # (a POST: no token in a URL)
    data, rows = _spec_data(form, {str(p.id): p.name for p in await providers.list_all(pool)})
    spec = None
    try:
        spec = specs.build(AssistantSpec, data)
    except SpecError as exc:
        form.add(exc, _field_of(rows))
    if spec is not None and form.valid:
        try:
            saved = await services.save_assistant(pool, spec, None if assistant is None else assistant.id)
        except SpecError as exc:
            form.add(exc, _field_of(rows))
        else:
            if saved is None:  # deleted while the form was open
                raise web.HTTPNotFound(text="No such assistant.")
            await flash(request, "success", f"Assistant “{saved.name}” saved.")
            raise redirect(request, "assistant", id=saved.id)
    return await _render_form(request, assistant, form.values(), form.errors_in_order(), status=400)


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
