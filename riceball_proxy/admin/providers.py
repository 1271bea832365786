"""Providers: list, create, edit, delete, and test the connection."""
from __future__ import annotations

import asyncio

from aiohttp import web

from riceball_proxy import appkeys, services, specs
from riceball_proxy.admin.forms import Form
from riceball_proxy.admin.pages import confirm, db_pool, flash, redirect, render, url
from riceball_proxy.db import assistants, provider_alerts, providers
from riceball_proxy.errors import APIError
from riceball_proxy.providers import provider_types
from riceball_proxy.specs import ProviderSpec, SpecError

#: Seconds a connection test or a model listing may take.
UPSTREAM_CHECK_TIMEOUT = 10


def setup_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/providers", provider_list, name="providers")
    router.add_get("/providers/new", provider_form, name="provider_new")
    router.add_post("/providers/new", provider_save)
    router.add_get("/providers/{id:\\d+}/edit", provider_form, name="provider_edit")
    router.add_post("/providers/{id:\\d+}/edit", provider_save)
    router.add_get("/providers/{id:\\d+}/delete", provider_delete_confirm, name="provider_delete")
    router.add_post("/providers/{id:\\d+}/delete", provider_delete)
    router.add_post("/providers/{id:\\d+}/test", provider_test, name="provider_test")



def _types(request: web.Request):
    return provider_types(request.config_dict[appkeys.PLUGIN_MANAGER])


async def _provider_or_404(request: web.Request) -> providers.Provider:
    provider_id = int(request.match_info["id"])
    # An id past bigint cannot exist (and the database would refuse to compare it).
    provider = await providers.get(db_pool(request), provider_id) if provider_id < 2**63 else None
    if provider is None:
        raise web.HTTPNotFound(text="No such provider.")
    return provider


async def provider_list(request: web.Request) -> web.Response:
    pool = db_pool(request)
    return await render(request, "admin/providers.html", {
        "providers": await providers.list_all(pool),
        "usage": await assistants.count_by_provider(pool),
        "alerts": await provider_alerts.by_provider(pool),
        "types": _types(request),
    })


async def provider_form(request: web.Request) -> web.Response:
    provider = await _provider_or_404(request) if "id" in request.match_info else None
    types = _types(request)
    if provider is not None:
        values = {"name": provider.name, "type": provider.type, "base_url": provider.base_url,
                  "connect_timeout": f"{provider.connect_timeout:g}", "read_timeout": f"{provider.read_timeout:g}",
                  "max_connections": str(provider.max_connections), "queue_timeout": f"{provider.queue_timeout:g}"}
    else:  # no type chosen for the admin (the offline demo is one of them): the base URL follows the choice
        values = {"type": "", "base_url": "", "connect_timeout": "10", "read_timeout": "300",
                  "max_connections": str(providers.DEFAULT_MAX_CONNECTIONS),
                  "queue_timeout": f"{providers.DEFAULT_QUEUE_TIMEOUT:g}"}
    return await render(request, "admin/provider_form.html",
                        {"provider": provider, "values": values, "errors": {}, "types": types, "key_again": False})


async def provider_save(request: web.Request) -> web.Response:
    provider = await _provider_or_404(request) if "id" in request.match_info else None
    types = _types(request)
    form = Form(await request.post())
    data = {name: form.given(name) for name in ("name", "type", "base_url", "api_key", "connect_timeout",
                                                "read_timeout", "max_connections", "queue_timeout")}
    try:
        spec = specs.build(ProviderSpec, {name: value for name, value in data.items() if value is not None})
        # A blank key field keeps the stored key (the form never shows it); "clear" removes it.
        api_key = spec.api_key or (None if provider is None or form.flag("clear_api_key") else services.KEEP)
        # A provider keeps the type it has even when no installed plugin offers it now (never changed silently).
        saved = await services.save_provider(
            db_pool(request), spec.model_copy(update={"api_key": None}),
            secret_box=request.config_dict[appkeys.SECRET_BOX], api_key=api_key,
            id=None if provider is None else provider.id,
            provider_types=[*types, *([provider.type] if provider else [])])
    except SpecError as exc:
        form.add(exc)
    else:
        if saved is None:  # deleted while the form was open
            raise web.HTTPNotFound(text="No such provider.")
        await flash(request, "success", f"Provider “{saved.name}” saved.")
        raise redirect(request, "providers")
    values = form.values()
    # A key typed is never sent back to the browser: the form says to enter it again, so that a second
    # save is not keyless without a word.
    key_again = bool(values.pop("api_key", "").strip())
    return await render(request, "admin/provider_form.html",
                        {"provider": provider, "values": values, "errors": form.errors_in_order(), "types": types,
                         "key_again": key_again}, status=400)


async def provider_delete_confirm(request: web.Request) -> web.Response:
    provider = await _provider_or_404(request)
    users = await providers.users_of(db_pool(request), provider.id)
    if users:  # said before anything is asked: no delete button
        return await confirm(request, title=f"“{provider.name}” cannot be deleted",
                             message="These assistants use it. Change their provider or fallbacks, or delete them, "
                                     "first.",
                             button="", back="providers",
                             uses=[(f"{name} ({'its provider' if role == 'primary' else 'a fallback'})",
                                    url(request, "assistant_edit", id=assistant_id))
                                   for assistant_id, name, role in users])
    return await confirm(request, title=f"Delete provider “{provider.name}”?",
                         message="No assistant uses it. This cannot be undone.",
                         button="Delete provider", back="providers")


async def provider_delete(request: web.Request) -> web.Response:
    provider = await _provider_or_404(request)
    try:
        await providers.delete(db_pool(request), provider.id)
    except providers.ProviderInUse as exc:  # an assistant came to use it since the page was shown
        await flash(request, "error", f"“{provider.name}” cannot be deleted: {exc}.")
    else:
        await flash(request, "success", f"Provider “{provider.name}” deleted.")
    raise redirect(request, "providers")


async def list_upstream_models(request: web.Request, provider_id: int,
                               timeout: float = UPSTREAM_CHECK_TIMEOUT) -> list[str]:
    """The model ids the provider's upstream offers; raises APIError or TimeoutError when it cannot say."""
    _, adapter = await request.config_dict[appkeys.CONFIG_CACHE].provider(provider_id)
    async with asyncio.timeout(timeout):
        models = await adapter.list_models()
    return sorted(str(model.get("id")) for model in models if isinstance(model, dict) and model.get("id"))


async def provider_test(request: web.Request) -> web.Response:
    provider = await _provider_or_404(request)
    models, error = [], None
    try:
        models = await list_upstream_models(request, provider.id)
    except APIError as exc:
        error = exc.detail or f"{exc.status}: {exc.message}"  # the upstream's own words: the operator's to read
    except TimeoutError:
        error = f"The upstream did not answer within {UPSTREAM_CHECK_TIMEOUT} seconds."
    except (LookupError, ValueError) as exc:
        error = str(exc)
    return await render(request, "admin/provider_test.html", {"provider": provider, "models": models, "error": error})
