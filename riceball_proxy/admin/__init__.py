"""The admin panel: a sub-application mounted at ``/admin/`` with its own middlewares.

Middleware order, outermost first (the API never pays for any of them):

1. ``limit_body``: a form body may hold at most ``MAX_FORM_BYTES`` (``MAX_PUBLIC_FORM_BYTES`` on the
   pages that need no session); it comes first, so everything after reads the bounded request.
2. ``security_headers``: CSP and friends on every admin response.
3. aiohttp-session: the encrypted session cookie is read before, and written after, what follows.
4. ``require_admin``: every route but login, setup and static files needs a live server-side session
   (``admin_sessions``), so a request without one is sent to the login page whatever its method.
5. ``csrf_protect``: every unsafe request must carry the session's CSRF token (login and setup too).
"""
from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web
from aiohttp_session import get_session, session_middleware

from riceball_proxy import appkeys
from riceball_proxy.admin import assistants, auth, dashboard, keys, playground, providers, usage
from riceball_proxy.admin.pages import ADMIN, CSRF_FIELD, SESSION_ID, db_pool, render, render_without_session
from riceball_proxy.admin.sessions import AdminSessionStorage
from riceball_proxy.bodies import BodyError, answered_and_closed, content_encoding, read_body
from riceball_proxy.db import admin_sessions
from riceball_proxy.templating import template_dir

MOUNT_POINT = "/admin/"
#: Resources (by name) reachable without a session.
PUBLIC_ROUTES = frozenset({"login", "setup", "static"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-CSRF-Token"
#: Bytes a form may send: the assistant form's system prompt needs room; login and setup need little.
MAX_FORM_BYTES = 1024 * 1024
MAX_PUBLIC_FORM_BYTES = 16 * 1024

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def setup_admin(app: web.Application) -> web.Application:
    """Build the admin sub-application, let plugins extend it, and mount it on ``app``."""
    storage = AdminSessionStorage(app[appkeys.SECRET_BOX].derive("riceball admin session"))
    admin = web.Application(
        middlewares=[limit_body, security_headers, read_form, session_middleware(storage), require_admin,
                     csrf_protect]
    )
    router = admin.router
    router.add_static("/static/", template_dir() / "static", name="static")
    auth.setup_routes(router)
    dashboard.setup_routes(router)
    providers.setup_routes(router)
    assistants.setup_routes(router)
    keys.setup_routes(router)
    playground.setup_routes(router)
    usage.setup_routes(router)
    app.on_startup.append(auth.announce_setup)
    app[appkeys.PLUGIN_MANAGER].hook.riceball_admin_setup(admin_app=admin)
    app.add_subapp(MOUNT_POINT, admin)
    return admin


def _route_name(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.name if resource is not None else None


@web.middleware
async def limit_body(request: web.Request, handler) -> web.StreamResponse:
    """Bound what a form may send (413 past it), far below the API's limit."""
    limit = MAX_PUBLIC_FORM_BYTES if _route_name(request) in PUBLIC_ROUTES else MAX_FORM_BYTES
    return await handler(request.clone(client_max_size=limit))


@web.middleware
async def read_form(request: web.Request, handler) -> web.StreamResponse:
    """Read a form's body before anything else does: within the client read deadline, within the form's
    bound, and in no Content-Encoding (browsers send none). What cannot be read gets the panel's error
    page with its status, drawn without the session (whose cookie it never reaches)."""
    if request.body_exists:
        try:
            if content_encoding(request):
                raise BodyError(400, "Forms are sent without a Content-Encoding.", "unsupported_content_encoding")
            await read_body(request, limit=request.client_max_size)
        except BodyError as exc:
            response = render_without_session(request, "admin/error.html", {
                "title": "Request not read", "message": exc.message}, status=exc.status)
            return await answered_and_closed(request, response) if exc.status == 408 else response
    return await handler(request)


@web.middleware
async def security_headers(request: web.Request, handler) -> web.StreamResponse:
    """Admin pages may run no foreign script, be framed by no one, and be cached nowhere."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def csrf_protect(request: web.Request, handler) -> web.StreamResponse:
    """Refuse (403) an unsafe request without the session's CSRF token in its form or header."""
    if request.method in UNSAFE_METHODS:
        session = await get_session(request)
        expected = session.get(CSRF_FIELD)
        sent: Any = request.headers.get(CSRF_HEADER)
        if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            sent = (await request.post()).get(CSRF_FIELD)
        if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent, expected):
            return await render(request, "admin/error.html", {
                "title": "Form expired",
                "message": "This form was not accepted because its security token is missing or out of date. "
                           "Go back, reload the page and try again.",
            }, status=403)
    return await handler(request)


@web.middleware
async def require_admin(request: web.Request, handler) -> web.StreamResponse:
    """Send anyone without an admin session to the login page."""
    session = await get_session(request)
    admin = None
    if SESSION_ID in session:
        admin = await admin_sessions.admin_for(db_pool(request), session[SESSION_ID])
        if admin is None:  # ended (logout, new password), expired, or its admin deleted
            session.invalidate()
    if admin is not None:
        request[ADMIN] = admin  # (public pages read it with request.get)
    if admin is None and _route_name(request) not in PUBLIC_ROUTES:
        target = request.rel_url if request.method == "GET" else None
        login = request.app.router["login"].url_for()
        raise web.HTTPSeeOther(login.with_query(next=str(target)) if target else login)
    return await handler(request)
