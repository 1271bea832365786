"""The dashboard (counts and recent API errors) and the plugins page."""
from __future__ import annotations

import datetime

from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.admin import render
from riceball_proxy.db import api_keys, assistants, providers
from riceball_proxy.plugins import describe_plugins


def setup_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", dashboard, name="dashboard")
    router.add_get("/plugins", plugins, name="plugins")


async def dashboard(request: web.Request) -> web.Response:
    pool = request.config_dict[appkeys.DATABASE].pool
    total, enabled = await assistants.count(pool)
    errors = [
        error | {"at": datetime.datetime.fromtimestamp(error["at"], datetime.timezone.utc)}
        for error in reversed(request.config_dict.get(appkeys.RECENT_ERRORS, ()))
    ]
    return await render(request, "admin/dashboard.html", {
        "providers": await providers.count(pool),
        "assistants": total,
        "enabled_assistants": enabled,
        "active_keys": await api_keys.count_active(pool),
        "errors": errors[:20],
    })


async def plugins(request: web.Request) -> web.Response:
    return await render(request, "admin/plugins.html",
                        {"plugins": describe_plugins(request.config_dict[appkeys.PLUGIN_MANAGER])})
