"""API keys: create (the key is shown once, in the answer to the form), list, revoke."""
from __future__ import annotations

import datetime
import uuid

from aiohttp import web

from riceball_proxy import crypto
from riceball_proxy.admin.pages import confirm, db_pool, flash, redirect, render
from riceball_proxy.admin.forms import Form
from riceball_proxy.db import api_keys, assistants

#: The expiries offered: form value -> (label, lifetime).
EXPIRIES = {
    "": ("Never", None),
    "7d": ("In 7 days", datetime.timedelta(days=7)),
    "30d": ("In 30 days", datetime.timedelta(days=30)),
    "90d": ("In 90 days", datetime.timedelta(days=90)),
    "365d": ("In a year", datetime.timedelta(days=365)),
}


def setup_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/keys", key_list, name="keys")
    router.add_get("/keys/new", key_form, name="key_new")
    router.add_post("/keys/new", key_create)
    router.add_get("/keys/{id}/revoke", key_revoke_confirm, name="key_revoke")
    router.add_post("/keys/{id}/revoke", key_revoke)



async def key_list(request: web.Request, new_key: dict | None = None) -> web.Response:
    """The keys; with ``new_key``, the one answer that shows a key just created."""
    pool = db_pool(request)
    now = datetime.datetime.now(datetime.timezone.utc)
    return await render(request, "admin/keys.html", {
        "keys": await api_keys.list_all(pool),
        "assistant_names": {a.id: a.name for a in await assistants.list_all(pool)},
        "new_key": new_key,
        "now": now,
    })


async def key_form(request: web.Request) -> web.Response:
    return await render(request, "admin/key_form.html", {
        "values": {"expires": ""}, "selected": set(), "errors": {}, "expiries": EXPIRIES,
        "assistants": await assistants.list_all(db_pool(request)),
    })


async def key_create(request: web.Request) -> web.Response:
    pool = db_pool(request)
    data = await request.post()
    form = Form(data)
    name = form.text("name", required=True)
    expires = form.choice("expires", EXPIRIES)
    all_assistants = await assistants.list_all(pool)
    known = {str(a.id): a.id for a in all_assistants}
    chosen = data.getall("assistants", [])
    if any(value not in known for value in chosen):
        form.errors["assistants"] = "Choose assistants from the list."
    if not form.valid:
        return await render(request, "admin/key_form.html", {
            "values": form.values(), "selected": set(chosen), "errors": form.errors, "expiries": EXPIRIES,
            "assistants": all_assistants,
        }, status=400)
    lifetime = EXPIRIES[expires][1]
    secret = crypto.generate_api_key()
    try:
        key = await api_keys.create(
            pool,
            name=name,
            key_hash=crypto.hash_api_key(secret),
            prefix=crypto.display_prefix(secret),
            assistant_ids=[known[value] for value in chosen] or None,
            expires_at=datetime.datetime.now(datetime.timezone.utc) + lifetime if lifetime else None,
        )
    except api_keys.KeyNameTaken:
        form.errors["name"] = "A key in force has this name: revoke it first, or choose another name."
        return await render(request, "admin/key_form.html", {
            "values": form.values(), "selected": set(chosen), "errors": form.errors, "expiries": EXPIRIES,
            "assistants": all_assistants,
        }, status=400)
    # The key is in this answer only: it is kept nowhere (not in the session), so nothing can show it again.
    return await key_list(request, new_key={"key": secret, "name": key.name})


async def _key_or_404(request: web.Request) -> api_keys.ApiKey:
    try:
        key = await api_keys.get(db_pool(request), uuid.UUID(request.match_info["id"]))
    except ValueError:
        key = None
    if key is None:
        raise web.HTTPNotFound(text="No such key.")
    return key


async def key_revoke_confirm(request: web.Request) -> web.Response:
    key = await _key_or_404(request)
    return await confirm(request, title=f"Revoke the key “{key.name}” ({key.prefix}…)?",
                         message="Every client using it gets 401 from now on. A revoked key cannot be restored.",
                         button="Revoke key", back="keys")


async def key_revoke(request: web.Request) -> web.Response:
    key = await _key_or_404(request)
    await api_keys.revoke(db_pool(request), key.id)
    await flash(request, "success", f"Key “{key.name}” revoked.")
    raise redirect(request, "keys")
