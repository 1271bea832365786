"""Logging in and out, and the one-time setup page that creates the first admin."""
from __future__ import annotations

import base64
import datetime
import functools
import logging
import secrets
from typing import Any

from aiohttp import web
from aiohttp_session import get_session, new_session

from riceball_proxy import appkeys, crypto
from riceball_proxy.admin.pages import ADMIN, SESSION_ID, db_pool, flash, redirect, render
from riceball_proxy.admin.sessions import MAX_AGE
from riceball_proxy.admin.throttle import LoginThrottle
from riceball_proxy.crypto import MIN_PASSWORD_LENGTH
from riceball_proxy.db import admin_sessions, admins
from riceball_proxy.proxies import client_address

#: The longest username and password the forms take (longer ones are never checked against a hash).
MAX_USERNAME_LENGTH = 150
MAX_PASSWORD_LENGTH = 1024

logger = logging.getLogger(__name__)

@functools.cache
def _dummy_hash() -> str:
    """Verified against when the username does not exist, so both cases take the same time."""
    return crypto.hash_password(secrets.token_urlsafe(16))


def setup_routes(router: web.UrlDispatcher) -> None:
    login_page = router.add_resource("/login", name="login")
    login_page.add_route("GET", login_form)
    login_page.add_route("POST", login)
    router.add_post("/logout", logout, name="logout")
    account = router.add_resource("/account", name="account")
    account.add_route("GET", account_form)
    account.add_route("POST", change_password)
    setup_page = router.add_resource("/setup", name="setup")
    setup_page.add_route("GET", setup_form)
    setup_page.add_route("POST", setup)


def setup_token(secret_box: crypto.SecretBox) -> str:
    """The token that unlocks the setup page: derived from the secret key, so every worker agrees on it."""
    return base64.urlsafe_b64encode(secret_box.derive("riceball admin setup", 24)).decode()


#: Set by ``riceball serve``: the setup notice waits in SETUP_NOTICE, to be printed once the server
#: listens (after everything else it prints), rather than at start-up.
ANNOUNCE_LATER = web.AppKey("announce_setup_later", bool)
SETUP_NOTICE = web.AppKey("setup_notice", str)


async def announce_setup(app: web.Application) -> None:
    """At start, with no admin yet, say where to create one (or keep it for ``riceball serve`` to say last)."""
    if await admins.count(app[appkeys.DATABASE].pool) == 0:
        settings = app[appkeys.SETTINGS]
        # Listening on every address: point at the one that surely reaches this machine.
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        panel = f"http://{host}:{settings.port}/admin/"
        notice = (f"No admin account exists yet. Create one at {panel}setup?token="
                  f"{setup_token(app[appkeys.SECRET_BOX])}\n\n    Then the admin panel is at {panel}\n")
        if app.get(ANNOUNCE_LATER):
            app[SETUP_NOTICE] = notice
        else:
            logger.warning(notice)


def _safe_next(target: Any) -> str | None:
    # Only paths inside the panel: never an open redirect to another site.
    if isinstance(target, str) and target and target.startswith("/admin/") and not target.startswith("//"):
        return target
    return None


async def login_form(request: web.Request) -> web.Response:
    if await admins.count(request.config_dict[appkeys.DATABASE].pool) == 0:
        return await render(request, "admin/error.html", {
            "title": "No admin yet",
            "message": "Create the first admin with the setup link that riceball serve printed when it started, "
                       "or with: riceball admin create --username NAME --password-stdin",
        })
    return await render(request, "admin/login.html", {"next": _safe_next(request.query.get("next")),
                                                      "username": ""})


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    address = client_address(request) or ""
    pool = db_pool(request)
    throttle = LoginThrottle(pool)
    oversized = len(username) > MAX_USERNAME_LENGTH or len(password) > MAX_PASSWORD_LENGTH
    username = username[:MAX_USERNAME_LENGTH]
    context = {"next": _safe_next(form.get("next")), "username": username}
    wait = await throttle.retry_after(username, address)
    if wait > 0:
        return await render(request, "admin/login.html", context | {
            "error": f"Too many failed logins. Try again in {int(wait // 60) + 1} minutes."}, status=429)
    admin = None if oversized else await admins.get_by_username(pool, username)
    valid = crypto.verify_password(admin.password_hash if admin else _dummy_hash(), password[:MAX_PASSWORD_LENGTH])
    if admin is None or not valid:
        await throttle.failed(username, address)
        return await render(request, "admin/login.html", context | {"error": "Wrong username or password."},
                            status=401)
    await throttle.succeeded(username, address)
    await admins.record_login(pool, admin.id)
    await _start_session(request, admin.id)
    raise web.HTTPSeeOther(context["next"] or str(request.app.router["dashboard"].url_for()))


async def _start_session(request: web.Request, admin_id: int) -> None:
    # A new session (and CSRF token) at login: a session id planted before login is worth nothing after.
    session_id = secrets.token_urlsafe(32)
    await admin_sessions.start(db_pool(request), session_id, admin_id, datetime.timedelta(seconds=MAX_AGE))
    session = await new_session(request)
    session[SESSION_ID] = session_id
    session["csrf_token"] = secrets.token_urlsafe(32)


async def logout(request: web.Request) -> web.Response:
    session = await get_session(request)
    if SESSION_ID in session:
        await admin_sessions.end(db_pool(request), session[SESSION_ID])
    session.invalidate()
    raise redirect(request, "login")


async def account_form(request: web.Request) -> web.Response:
    return await render(request, "admin/account.html", {"errors": {}})


async def change_password(request: web.Request) -> web.Response:
    """A new password for the signed-in admin: every other session of theirs ends, this one goes on."""
    form = await request.post()
    admin = request[ADMIN]
    current = str(form.get("current_password", ""))[:MAX_PASSWORD_LENGTH]
    password = str(form.get("password", ""))
    errors = {}
    if not crypto.verify_password(admin.password_hash, current):
        errors["current_password"] = "This is not your current password."
    elif not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        errors["password"] = f"Use {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters."
    elif password != form.get("password_confirm"):
        errors["password_confirm"] = "The two passwords differ."
    if errors:
        return await render(request, "admin/account.html", {"errors": errors}, status=400)
    await admins.set_password(db_pool(request), admin.id, crypto.hash_password(password))
    await _start_session(request, admin.id)
    await flash(request, "success", "Password changed. Every other session of yours has ended.")
    raise redirect(request, "dashboard")


async def _check_setup(request: web.Request, token: str) -> web.Response | None:
    """An error page when setup is closed or the token is wrong; None when setup may go on."""
    if request.get(ADMIN) is not None:  # signed in already: nothing to set up
        raise redirect(request, "dashboard")
    if await admins.count(request.config_dict[appkeys.DATABASE].pool) > 0:
        return await render(request, "admin/error.html", {
            "title": "Setup is done", "message": "An admin exists already: log in instead."}, status=404)
    if not secrets.compare_digest(token, setup_token(request.config_dict[appkeys.SECRET_BOX])):
        return await render(request, "admin/error.html", {
            "title": "Invalid setup link",
            "message": "Use the setup link that riceball serve printed when it started."}, status=403)
    return None


async def setup_form(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    refused = await _check_setup(request, token)
    if refused is not None:
        return refused
    return await render(request, "admin/setup.html", {"token": token, "username": "", "errors": {}})


async def setup(request: web.Request) -> web.Response:
    form = await request.post()
    token = str(form.get("token", ""))
    refused = await _check_setup(request, token)
    if refused is not None:
        return refused
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    errors = {}
    if not 1 <= len(username) <= 150:
        errors["username"] = "Choose a username of 1 to 150 characters."
    if len(password) < MIN_PASSWORD_LENGTH:
        errors["password"] = f"Use at least {MIN_PASSWORD_LENGTH} characters."
    elif password != form.get("password_confirm"):
        errors["password_confirm"] = "The two passwords differ."
    if errors:
        return await render(request, "admin/setup.html", {"token": token, "username": username, "errors": errors},
                            status=400)
    admin = await admins.create_first(request.config_dict[appkeys.DATABASE].pool, username,
                                      crypto.hash_password(password))
    if admin is None:  # another setup won the race
        return await render(request, "admin/error.html", {
            "title": "Setup is done", "message": "An admin exists already: log in instead."}, status=404)
    await _start_session(request, admin.id)
    raise redirect(request, "dashboard")
