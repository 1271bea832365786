"""The dashboard (counts and recent API errors) and the plugins page."""
from __future__ import annotations

from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.admin.pages import render
from riceball_proxy.db import api_keys, assistants, providers, usage_events
from riceball_proxy.plugins import describe_plugins


def setup_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", dashboard, name="dashboard")
    router.add_get("/plugins", plugins, name="plugins")


async def dashboard(request: web.Request) -> web.Response:
    pool = request.config_dict[appkeys.DATABASE].pool
    total, enabled = await assistants.count(pool)
    return await render(request, "admin/dashboard.html", {
        "providers": await providers.count(pool),
        "assistants": total,
        "enabled_assistants": enabled,
        "active_keys": await api_keys.count_active(pool),
        "errors": await usage_events.recent_errors(pool),
        "assistant_names": {a.id: a.name for a in await assistants.list_all(pool)},
        "key_names": {k.id: k.name for k in await api_keys.list_all(pool)},
    })


async def plugins(request: web.Request) -> web.Response:
    return await render(request, "admin/plugins.html",
                        {"plugins": describe_plugins(request.config_dict[appkeys.PLUGIN_MANAGER])})
