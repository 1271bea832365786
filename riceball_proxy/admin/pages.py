"""What every admin page uses: the signed-in admin, the CSRF token, rendering, links, flash messages."""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import get_session

from riceball_proxy import appkeys
from riceball_proxy.db.admins import Admin

CSRF_FIELD = "csrf_token"
#: The admin signed in on this request (None on public pages).
ADMIN = web.RequestKey("admin", Admin)
#: The cookie's entry naming the server-side session.
SESSION_ID = "sid"


async def csrf_token(request: web.Request) -> str:
    """The session's CSRF token, made on first use."""
    session = await get_session(request)
    token = session.get(CSRF_FIELD)
    if token is None:
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def db_pool(request: web.Request):
    """The database pool, for the admin views."""
    return request.config_dict[appkeys.DATABASE].pool


def url(request: web.Request, name: str, **parts: Any) -> str:
    """The path of a named admin route (its parts given as keyword arguments)."""
    return str(request.app.router[name].url_for(**{k: str(v) for k, v in parts.items()}))


async def flash(request: web.Request, category: str, message: str) -> None:
    """Show ``message`` once, on the next page rendered (``success``, ``error`` or ``info``)."""
    session = await get_session(request)
    session["flash"] = [*session.get("flash", []), [category, message]]


async def render(request: web.Request, template: str, context: dict[str, Any], *, status: int = 200) -> web.Response:
    """Render an admin page with what every page needs: the admin, the CSRF token, flash messages."""
    session = await get_session(request)
    messages = session.pop("flash", [])
    base = {
        "admin": request.get(ADMIN),
        "csrf_token": await csrf_token(request),
        "messages": messages,
        "url": lambda name, **parts: url(request, name, **parts),
        "current": request.match_info.route.name,
        "config_file": request.config_dict[appkeys.SETTINGS].config_file,
    }
    response = aiohttp_jinja2.render_template(template, request, base | context, status=status)
    return response


def render_without_session(request: web.Request, template: str, context: dict[str, Any], *,
                           status: int) -> web.Response:
    """Render an admin page for a request that never reached the session (its body could not be read):
    nobody is signed in on it, and no form on it can be posted."""
    base: dict[str, Any] = {"admin": None, "csrf_token": "", "messages": [], "current": None,
            "url": lambda name, **parts: url(request, name, **parts),
            "config_file": request.config_dict[appkeys.SETTINGS].config_file}
    return aiohttp_jinja2.render_template(template, request, base | context, status=status)


async def confirm(request: web.Request, *, title: str, message: str, button: str, back: str,
                  uses: Sequence[tuple[str, str]] = (), **back_parts: Any) -> web.Response:
    """A page asking to confirm what a POST to the same path does (``back``: the route Cancel goes to);
    with ``uses`` (label, link), what stands in the way, listed, and no button but Back."""
    return await render(request, "admin/confirm.html", {
        "title": title, "message": message, "action": request.path, "button": button,
        "back_url": url(request, back, **back_parts), "uses": list(uses),
    })


def redirect(request: web.Request, name: str, **parts: Any) -> web.HTTPSeeOther:
    """A 303 to a named admin route (raise it)."""
    return web.HTTPSeeOther(url(request, name, **parts))
