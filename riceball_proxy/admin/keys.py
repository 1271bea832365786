"""API keys: create (the key is shown once, in the answer to the form), list with this period's spend,
a page per key (limits, spend and what remains), edit (name, scope, limits), revoke."""
from __future__ import annotations

import datetime
import uuid

from aiohttp import web

from riceball_proxy import services, specs
from riceball_proxy.admin.forms import Form, limit_field, limit_values
from riceball_proxy.admin.pages import confirm, db_pool, flash, redirect, render
from riceball_proxy.db import api_keys, assistants, usage_events
from riceball_proxy.limits import current_period_start, period_bounds
from riceball_proxy.pricing import unpriced
from riceball_proxy.specs import KeySpec, SpecError

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
    router.add_get("/keys/{id}", key_detail, name="key")
    router.add_get("/keys/{id}/edit", key_edit_form, name="key_edit")
    router.add_post("/keys/{id}/edit", key_save)
    router.add_get("/keys/{id}/revoke", key_revoke_confirm, name="key_revoke")
    router.add_post("/keys/{id}/revoke", key_revoke)



async def key_list(request: web.Request, new_key: dict | None = None) -> web.Response:
    """The keys; with ``new_key``, the one answer that shows a key just created."""
    pool = db_pool(request)
    now = datetime.datetime.now(datetime.timezone.utc)
    keys = await api_keys.list_all(pool)
    return await render(request, "admin/keys.html", {
        "keys": keys,
        "spent": await usage_events.spent_by_key(pool, {key.id: current_period_start(key.limits) for key in keys}),
        "assistant_names": {a.id: a.name for a in await assistants.list_all(pool)},
        "new_key": new_key,
        "now": now,
    })


async def _render_form(request: web.Request, key: api_keys.ApiKey | None, values: dict, selected: set,
                       errors: dict, *, status: int = 200) -> web.Response:
    return await render(request, "admin/key_form.html", {
        "key": key, "values": values, "selected": selected, "errors": errors, "expiries": EXPIRIES,
        "assistants": await assistants.list_all(db_pool(request)),
    }, status=status)


async def key_form(request: web.Request) -> web.Response:
    return await _render_form(request, None, {"expires": "", "budget_period": "month"}, set(), {})


async def key_edit_form(request: web.Request) -> web.Response:
    key = await _key_or_404(request, in_force=True)
    selected = set() if key.assistant_ids is None else {str(assistant_id) for assistant_id in key.assistant_ids}
    return await _render_form(request, key, {"name": key.name} | limit_values(key.limits), selected, {})


async def _read_form(request: web.Request, key: api_keys.ApiKey | None):
    """The key form as a KeySpec (None when a problem was found: each is in ``form.errors``), the form,
    and the assistants ticked."""
    pool = db_pool(request)
    data = await request.post()
    form = Form(data)
    names = {str(a.id): a.name for a in await assistants.list_all(pool)}
    chosen = data.getall("assistants", [])
    if any(value not in names for value in chosen):
        form.errors["assistants"] = "Choose assistants from the list."
    if key is None:
        lifetime = EXPIRIES.get(form.choice("expires", EXPIRIES), EXPIRIES[""])[1]
        expires_at = datetime.datetime.now(datetime.timezone.utc) + lifetime if lifetime else None
    else:
        expires_at = key.expires_at
    spec = None
    try:
        spec = specs.build(KeySpec, {"name": form.raw("name").strip(), "expires_at": expires_at,
                                     "assistants": [names[value] for value in chosen if value in names] or None,
                                     "limits": form.limit_data()})
    except SpecError as exc:
        form.add(exc, _field_of)
    return (spec if form.valid else None), form, set(chosen)


def _field_of(path: str) -> str:
    return limit_field(path) or path.split("[")[0]


async def key_create(request: web.Request) -> web.Response:
    spec, form, chosen = await _read_form(request, None)
    if spec is not None:
        try:
            key, secret = await services.issue_key(db_pool(request), spec)
        except SpecError as exc:
            form.add(exc, _field_of)
        else:
            # The key is in this answer only: it is kept nowhere (not in the session), so nothing can show it again.
            return await key_list(request, new_key={"key": secret, "name": key.name})
    return await _render_form(request, None, form.values(), chosen, form.errors_in_order(), status=400)


async def key_save(request: web.Request) -> web.Response:
    key = await _key_or_404(request, in_force=True)
    spec, form, chosen = await _read_form(request, key)
    if spec is not None:
        try:
            saved = await services.save_key(db_pool(request), spec, key.id)
        except SpecError as exc:
            form.add(exc, _field_of)
        else:
            if saved is None:
                raise web.HTTPNotFound(text="No such key.")
            await flash(request, "success", f"Key “{saved.name}” saved.")
            raise redirect(request, "key", id=key.id)
    return await _render_form(request, key, form.values(), chosen, form.errors_in_order(), status=400)


async def key_detail(request: web.Request) -> web.Response:
    """One key: its scope, limits, this period's spend and what remains of its budgets."""
    pool = db_pool(request)
    key = await _key_or_404(request)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = period_bounds(key.limits.budget_period, now)
    usd, tokens = await usage_events.spent(pool, api_key_id=key.id, since=start)
    limits = key.limits
    _, unknown = await unpriced(pool, None if key.assistant_ids is None else set(key.assistant_ids))
    return await render(request, "admin/key.html", {
        "key": key, "status": key.status(now), "limits": limits, "period_end": end,
        "spent_usd": usd, "spent_tokens": tokens,
        "remaining_usd": None if limits.budget_usd is None else max(limits.budget_usd - usd, 0),
        "remaining_tokens": None if limits.budget_tokens is None else max(limits.budget_tokens - tokens, 0),
        "unpriced": unknown,
        "assistant_names": {a.id: a.name for a in await assistants.list_all(pool)},
    })


async def _key_or_404(request: web.Request, *, in_force: bool = False) -> api_keys.ApiKey:
    """The key the URL names; 404 when there is none (or, with ``in_force``, when it is revoked)."""
    try:
        key = await api_keys.get(db_pool(request), uuid.UUID(request.match_info["id"]))
    except ValueError:
        key = None
    if key is None or (in_force and key.revoked_at is not None):
        raise web.HTTPNotFound(text="No such key." if key is None else "This key is revoked: it cannot be changed.")
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
