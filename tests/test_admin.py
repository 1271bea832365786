"""The admin panel through an aiohttp test client: access control, CSRF, escaping, secrets, every form."""
import asyncio
import re
import uuid

import pytest
from aiohttp import web

from riceball_proxy import appkeys, crypto, hookimpl
from riceball_proxy.admin.auth import setup_token
from riceball_proxy.app import create_app
from riceball_proxy.db import admins, api_keys, assistants, providers
from riceball_proxy.plugins import make_plugin_manager
from tests.support import ADMIN_PASSWORD, Panel

HOSTILE = "<script>alert('x')</script>"


def admin_routes(app: web.Application):
    """Every (method, path) of the admin sub-app, with sample values in its placeholders."""
    admin = next(r.get_info()["app"] for r in app.router.resources() if r.canonical == "/admin")
    for route in admin.router.routes():
        if route.method == "HEAD" or route.name == "static":
            continue
        info = route.resource.get_info()
        path = info.get("path") or info["formatter"]
        path = re.sub(r"\{id[^}]*\}", "1" if "providers" in path else str(uuid.uuid4()), path)
        yield route.method, "/admin" + path


async def provider_via_form(panel, **fields):
    data = {"name": "up", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "",
            "connect_timeout": "10", "read_timeout": "300"} | fields
    return await panel.post("/admin/providers/new", data)


async def assistant_via_form(panel, provider_id, **fields):
    data = {"name": "helper", "provider_id": str(provider_id), "model": "gpt-4o", "system_prompt": "",
            "allow_client_system": "on", "enabled": "on"} | fields
    # A browser leaves out unticked checkboxes: None stands for one.
    return await panel.post("/admin/assistants/new", {k: v for k, v in data.items() if v is not None})


# --- access ---------------------------------------------------------------------------------------------


async def test_every_admin_route_sends_strangers_to_the_login_page(aiohttp_client, settings):
    app = create_app(settings)
    client = await aiohttp_client(app)
    routes = list(admin_routes(app))
    assert len(routes) >= 20
    for method, path in routes:
        if path in ("/admin/login", "/admin/setup"):
            continue
        response = await client.request(method, path, allow_redirects=False)
        assert response.status == 303, (method, path)
        assert response.headers["Location"].startswith("/admin/login"), (method, path)
    response = await client.get("/admin/no/such/page", allow_redirects=False)
    assert response.status == 303


async def test_a_post_without_a_valid_csrf_token_is_403(panel):
    for token in (None, "forged-token"):
        data = {"name": "x", "type": "openai", "base_url": "http://h"}
        if token:
            data["csrf_token"] = token
        response, text = await panel.post("/admin/providers/new", data, csrf=False)
        assert response.status == 403 and "security token" in text
    assert await providers.count(panel.pool) == 0
    response, _ = await panel.post("/admin/logout", csrf=False)
    assert response.status == 403


async def test_the_login_form_needs_a_csrf_token_too(aiohttp_client, settings):
    app = create_app(settings)
    client = await aiohttp_client(app)
    await admins.create(app[appkeys.DATABASE].pool, "root", crypto.hash_password(ADMIN_PASSWORD))
    response = await client.post("/admin/login", data={"username": "root", "password": ADMIN_PASSWORD})
    assert response.status == 403


async def test_login_logout_and_wrong_passwords(aiohttp_client, settings):
    app = create_app(settings)
    browser = Panel(await aiohttp_client(app))
    await admins.create(app[appkeys.DATABASE].pool, "root", crypto.hash_password(ADMIN_PASSWORD))
    response, text = await browser.login(password="wrong")
    assert response.status == 401 and "Wrong username or password" in text
    response, text = await browser.login(username="nobody")
    assert response.status == 401 and "Wrong username or password" in text
    response, _ = await browser.get("/admin/providers?x=1", allow_redirects=False)
    assert response.headers["Location"] == "/admin/login?next=/admin/providers?x%3D1"
    response, _ = await browser.post("/admin/login", {"username": "root", "password": ADMIN_PASSWORD,
                                                      "next": "/admin/keys"})
    assert response.url.path == "/admin/keys"
    response, _ = await browser.post("/admin/logout")
    assert response.url.path == "/admin/login"
    response, _ = await browser.get("/admin/", allow_redirects=False)
    assert response.status == 303


async def test_next_never_leaves_the_panel(aiohttp_client, settings):
    app = create_app(settings)
    browser = Panel(await aiohttp_client(app))
    await admins.create(app[appkeys.DATABASE].pool, "root", crypto.hash_password(ADMIN_PASSWORD))
    response, _ = await browser.post("/admin/login", {"username": "root", "password": ADMIN_PASSWORD,
                                                      "next": "https://evil.example/"}, allow_redirects=False)
    assert response.headers["Location"] == "/admin/"


async def test_repeated_failed_logins_are_throttled(aiohttp_client, settings):
    app = create_app(settings)
    browser = Panel(await aiohttp_client(app))
    await admins.create(app[appkeys.DATABASE].pool, "root", crypto.hash_password(ADMIN_PASSWORD))
    for _ in range(5):
        response, _ = await browser.login(password="guess")
        assert response.status == 401
    response, text = await browser.login()  # even the right password waits now
    assert response.status == 429 and "Too many failed logins" in text


def saved_cookies(browser: Panel) -> dict[str, str]:
    return {cookie.key: cookie.value for cookie in browser.client.session.cookie_jar}


async def signed_in(browser: Panel, cookies: dict[str, str]) -> bool:
    """Whether a request carrying exactly these cookies reaches the dashboard."""
    browser.client.session.cookie_jar.clear()
    browser.client.session.cookie_jar.update_cookies(cookies)
    response, _ = await browser.get("/admin/", allow_redirects=False)
    return response.status == 200


async def test_logout_ends_the_session_on_the_server(panel):
    before_logout = saved_cookies(panel)
    await panel.post("/admin/logout")
    assert not await signed_in(panel, before_logout)  # a copy of the cookie is worth nothing now


async def test_a_new_password_ends_every_other_session(aiohttp_client, settings, panel):
    other = Panel(await aiohttp_client(create_app(settings)))
    await other.login()
    other_cookies = saved_cookies(other)
    response, text = await panel.post("/admin/account", {"current_password": "not it", "password": "x" * 12,
                                                         "password_confirm": "x" * 12}, csrf_from="/admin/account")
    assert response.status == 400 and "not your current password" in text
    response, text = await panel.post("/admin/account", {"current_password": ADMIN_PASSWORD,
                                                         "password": "a new long password",
                                                         "password_confirm": "a new long password"},
                                      csrf_from="/admin/account")
    assert response.url.path == "/admin/" and "Password changed" in text
    assert await signed_in(panel, saved_cookies(panel))  # this browser goes on
    assert not await signed_in(other, other_cookies)
    response, _ = await other.login(password="a new long password")
    assert response.url.path == "/admin/"


async def test_deleting_an_admin_ends_their_sessions(panel):
    cookies = saved_cookies(panel)
    admin = await admins.get_by_username(panel.pool, "root")
    assert await admins.delete(panel.pool, admin.id)
    assert not await signed_in(panel, cookies)
    assert await panel.pool.fetchval("SELECT count(*) FROM admin_sessions") == 0


async def test_the_login_throttle_is_shared_bounded_and_stores_no_username(aiohttp_client, settings):
    first, second = create_app(settings), create_app(settings)  # two workers on one database
    browser, other_worker = Panel(await aiohttp_client(first)), Panel(await aiohttp_client(second))
    await admins.create(first[appkeys.DATABASE].pool, "root", crypto.hash_password(ADMIN_PASSWORD))
    huge = "u" * 200_000
    response, _ = await browser.login(username=huge, password="guess")
    assert response.status == 413  # the form is refused before it is read
    long_name = "u" * 5000
    response, _ = await browser.login(username=long_name, password="guess")
    assert response.status == 401
    for _ in range(5):
        response, _ = await browser.login(password="guess")
        assert response.status == 401
    response, text = await other_worker.login()  # the other worker counts the same failures
    assert response.status == 429 and "Too many failed logins" in text
    pool = first[appkeys.DATABASE].pool
    rows = await pool.fetch("SELECT key_hash FROM login_failures")
    assert len(rows) == 12 and all(len(row["key_hash"]) == 32 for row in rows)
    assert not await pool.fetchval("SELECT count(*) FROM login_failures WHERE position('uuuu'::bytea IN key_hash) > 0")


async def test_the_session_cookie_is_httponly_lax_and_secure_behind_https(aiohttp_client, settings):
    app = create_app(settings)
    client = await aiohttp_client(app)
    plain = await client.get("/admin/login")
    cookie = plain.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin/" in cookie
    assert "Secure" not in cookie
    client.session.cookie_jar.clear()
    proxied = await client.get("/admin/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in proxied.headers["Set-Cookie"]


async def test_admin_pages_carry_security_headers(panel):
    response, _ = await panel.get("/admin/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


# --- first admin --------------------------------------------------------------------------------------


async def test_setup_creates_the_first_admin_once(aiohttp_client, settings, caplog):
    app = create_app(settings)
    with caplog.at_level("WARNING"):
        browser = Panel(await aiohttp_client(app))
    token = setup_token(app[appkeys.SECRET_BOX])
    assert f"/admin/setup?token={token}" in caplog.text  # what riceball serve prints
    _, text = await browser.get("/admin/login")
    assert "No admin yet" in text
    response, _ = await browser.get("/admin/setup?token=wrong")
    assert response.status == 403
    setup_page = f"/admin/setup?token={token}"
    response, text = await browser.post("/admin/setup", {"token": token, "username": "first", "password": "short",
                                                         "password_confirm": "short"}, csrf_from=setup_page)
    assert response.status == 400 and "at least 8 characters" in text and 'value="first"' in text
    response, _ = await browser.post("/admin/setup", {"token": token, "username": "first",
                                                      "password": ADMIN_PASSWORD, "password_confirm": ADMIN_PASSWORD},
                                     csrf_from=setup_page)
    assert response.url.path == "/admin/"  # logged in
    assert (await admins.get_by_username(app[appkeys.DATABASE].pool, "first")) is not None
    response, _ = await browser.get(f"/admin/setup?token={token}")
    assert response.url.path == "/admin/"  # signed in: straight to the dashboard
    await browser.post("/admin/logout", csrf_from="/admin/")
    response, text = await browser.get(f"/admin/setup?token={token}")
    assert response.status == 404 and "Setup is done" in text
    response, _ = await browser.post("/admin/setup", {"token": token, "username": "second",
                                                      "password": ADMIN_PASSWORD, "password_confirm": ADMIN_PASSWORD})
    assert response.status == 404 and await admins.count(app[appkeys.DATABASE].pool) == 1


# --- providers ----------------------------------------------------------------------------------------


async def test_provider_crud_keeps_the_api_key_write_only(panel):
    response, text = await provider_via_form(panel, api_key="sk-upstream-SECRET-123")
    assert response.url.path == "/admin/providers" and "saved" in text
    provider = (await providers.list_all(panel.pool))[0]
    box = panel.app[appkeys.SECRET_BOX]
    assert box.decrypt(provider.api_key_encrypted) == "sk-upstream-SECRET-123"

    _, form = await panel.get(f"/admin/providers/{provider.id}/edit")
    assert "A key is stored" in form and 'name="api_key" value=""' in form
    await panel.post(f"/admin/providers/{provider.id}/edit", {
        "name": "renamed", "type": "openai", "base_url": "http://127.0.0.1:9/v2", "api_key": "",
        "connect_timeout": "5", "read_timeout": "60"})
    provider = await providers.get(panel.pool, provider.id)
    assert (provider.name, provider.base_url, provider.connect_timeout) == ("renamed", "http://127.0.0.1:9/v2", 5.0)
    assert box.decrypt(provider.api_key_encrypted) == "sk-upstream-SECRET-123"  # blank kept it

    await panel.post(f"/admin/providers/{provider.id}/edit", {
        "name": "renamed", "type": "openai", "base_url": "http://127.0.0.1:9/v2", "api_key": "",
        "connect_timeout": "5", "read_timeout": "60", "clear_api_key": "on"})
    assert (await providers.get(panel.pool, provider.id)).api_key_encrypted is None

    _, text = await panel.post(f"/admin/providers/{provider.id}/delete")
    assert "deleted" in text and await providers.count(panel.pool) == 0


async def test_provider_form_errors_keep_what_was_typed(panel):
    response, text = await provider_via_form(panel, name="my upstream", base_url="ftp://nope", read_timeout="-1",
                                             api_key="sk-typed-secret")
    assert response.status == 400
    assert re.search(r'id="base_url-error" class="error">Must be an http:// or https:// URL\.', text)
    assert re.search(r'id="read_timeout-error" class="error">Must be between 0.001 and 86400\.', text)
    assert 'value="my upstream"' in text and 'value="ftp://nope"' in text
    assert "2 problems to fix before saving" in text and '<a href="#base_url">Base URL</a>' in text
    assert "sk-typed-secret" not in text  # not even echoed back
    await provider_via_form(panel, name="taken")
    response, text = await provider_via_form(panel, name="taken")
    assert response.status == 400 and "A provider named &#39;taken&#39; exists already." in text


async def test_a_provider_in_use_cannot_be_deleted_and_the_page_says_who_uses_it(panel):
    await provider_via_form(panel)
    await provider_via_form(panel, name="backup")
    primary, backup = sorted(await providers.list_all(panel.pool), key=lambda p: p.name != "up")
    await assistant_via_form(panel, primary.id, name="helper", fallback_provider_0=str(backup.id),
                             fallback_model_0="other")
    helper = (await assistants.list_all(panel.pool))[0]
    # The confirmation names the assistants and offers nothing to press but Back.
    _, text = await panel.get(f"/admin/providers/{backup.id}/delete")
    assert "“backup” cannot be deleted" in text and "helper (a fallback)" in text
    assert f'href="/admin/assistants/{helper.id}/edit"' in text and "Delete provider" not in text
    _, text = await panel.get(f"/admin/providers/{primary.id}/delete")
    assert "helper (its provider)" in text and "Delete provider" not in text
    # A POST anyway (the page was open before the assistant came) is refused, naming them.
    _, text = await panel.post(f"/admin/providers/{primary.id}/delete")
    assert "cannot be deleted: assistants use this provider: helper (primary)" in text
    assert await providers.count(panel.pool) == 2


async def test_the_connection_test_lists_models_or_shows_the_error(panel, fake_openai):
    await provider_via_form(panel, base_url=fake_openai.base_url, api_key="sk-upstream-SECRET-123")
    provider = (await providers.list_all(panel.pool))[0]
    _, text = await panel.post(f"/admin/providers/{provider.id}/test")
    assert "answered with 2 models" in text and "gpt-4o-mini" in text
    fake_openai.error = (401, {"error": {"message": "Incorrect API key provided: sk-upstream-SECRET-123",
                                         "type": "invalid_request_error", "code": "invalid_api_key"}})
    _, text = await panel.post(f"/admin/providers/{provider.id}/test")
    assert "could not list its models" in text and "401" in text
    assert "sk-upstream-SECRET-123" not in text


# --- assistants ---------------------------------------------------------------------------------------


async def test_assistant_crud_with_every_injection_field(panel, fake_openai):
    await provider_via_form(panel, base_url=fake_openai.base_url)
    provider = (await providers.list_all(panel.pool))[0]
    _, form = await panel.get("/admin/assistants/new")
    assert '<option value="gpt-4o-mini">' in form  # the provider's models, offered in a datalist
    response, text = await assistant_via_form(
        panel, provider.id, name="Support", model="gpt-4o-mini", system_prompt="Be kind.\nBe brief.",
        temperature="0.3", lock_temperature="on", max_tokens="256", top_p="", seed="7", stop="END\nSTOP",
        lock_stop="on", extra_params='{"top_k": 40}', allow_client_system=None)
    assistant = (await assistants.list_all(panel.pool))[0]
    assert response.url.path == f"/admin/assistants/{assistant.id}"
    assert assistant.parameters == {"temperature": 0.3, "max_tokens": 256, "seed": 7, "stop": ["END", "STOP"]}
    assert assistant.locked == {"temperature", "stop"}
    assert assistant.extra_params == {"top_k": 40} and assistant.system_prompt == "Be kind.\nBe brief."
    assert assistant.enabled and not assistant.allow_client_system
    assert f"/api/v1/assistants/{assistant.id}/v1" in text and "from openai import OpenAI" in text
    assert "curl " in text

    _, form = await panel.get(f"/admin/assistants/{assistant.id}/edit")
    assert 'name="lock_temperature" checked' in form and "Be kind.\nBe brief." in form

    _, text = await panel.post(f"/admin/assistants/{assistant.id}/toggle")
    assert "disabled" in text and not (await assistants.get(panel.pool, assistant.id)).enabled
    _, text = await panel.post(f"/admin/assistants/{assistant.id}/delete")
    assert "deleted" in text and await assistants.list_all(panel.pool) == []


async def test_assistant_form_errors_are_shown_next_to_their_field(panel):
    await provider_via_form(panel)
    provider = (await providers.list_all(panel.pool))[0]
    response, text = await assistant_via_form(panel, provider.id, name="keep me", extra_params="{not json",
                                              temperature="9", lock_top_p="on", system_prompt="typed prompt")
    assert response.status == 400
    assert re.search(r'id="extra_params-error" class="error">Not valid JSON', text)
    assert re.search(r'id="temperature-error" class="error">Must be between 0 and 2', text)
    assert re.search(r'id="top_p-error" class="error">A locked parameter needs a value', text)
    assert 'value="keep me"' in text and "typed prompt" in text and "{not json" in text
    assert await assistants.list_all(panel.pool) == []


async def test_the_model_field_counts_one_model_as_one(panel, fake_openai):
    fake_openai.models = ["solo"]
    await provider_via_form(panel, base_url=fake_openai.base_url)
    _, text = await panel.get("/admin/assistants/new")
    assert "Pick one of the provider's 1 model, or type a name." in text


async def test_a_system_prompt_typed_in_a_browser_keeps_plain_newlines_and_exports_as_a_block(panel):
    from riceball_proxy.declared.export import dump, export

    await provider_via_form(panel)
    provider = (await providers.list_all(panel.pool))[0]
    response, _ = await assistant_via_form(panel, provider.id, system_prompt="You are kind.\r\nAnswer briefly.\r\n")
    assert response.status == 200
    assert (await assistants.list_all(panel.pool))[0].system_prompt == "You are kind.\nAnswer briefly.\n"
    data, _ = await export(panel.pool)
    assert "  system_prompt: |\n    You are kind.\n    Answer briefly.\n" in dump(data)


@pytest.mark.parametrize("field, value", [("seed", str(2**63)), ("seed", str(-(2**63) - 1)),
                                          ("max_tokens", str(2**31)), ("max_tokens", "99999999999999999999")])
async def test_numbers_past_what_the_database_holds_are_form_errors(panel, field, value):
    await provider_via_form(panel)
    provider = (await providers.list_all(panel.pool))[0]
    response, text = await assistant_via_form(panel, provider.id, **{field: value})
    assert response.status == 400 and f'id="{field}-error" class="error">Must be between' in text
    assert await assistants.list_all(panel.pool) == []


async def test_the_model_field_is_free_text_when_models_cannot_be_listed(panel):
    await provider_via_form(panel)  # nothing listens at 127.0.0.1:9
    _, form = await panel.get("/admin/assistants/new")
    assert "could not be listed" in form and "type the model name" in form


# --- keys ---------------------------------------------------------------------------------------------


async def test_a_new_key_is_shown_once(panel):
    response, text = await panel.post("/admin/keys/new", {"name": "laptop", "expires": "30d"},
                                      allow_redirects=False)
    assert response.status == 200
    secret = re.search(r'id="new-key" readonly value="(sk-[^"]+)"', text).group(1)
    assert "only time it is shown" in text
    key = await api_keys.get_by_hash(panel.pool, crypto.hash_api_key(secret))
    assert key.name == "laptop" and key.expires_at is not None and key.assistant_ids is None
    cookies_after_creation = {c.key: c.value for c in panel.client.session.cookie_jar}
    _, again = await panel.get("/admin/keys")
    assert secret not in again and key.prefix in again
    # Replaying the cookie the browser held right after the key was made shows nothing either.
    panel.client.session.cookie_jar.update_cookies(cookies_after_creation)
    _, replayed = await panel.get("/admin/keys")
    assert secret not in replayed and key.prefix in replayed


async def test_keys_can_be_scoped_and_revoked_after_confirmation(panel):
    await provider_via_form(panel)
    provider = (await providers.list_all(panel.pool))[0]
    await assistant_via_form(panel, provider.id, name="scoped-to")
    assistant = (await assistants.list_all(panel.pool))[0]
    await panel.post("/admin/keys/new", [("name", "ci"), ("expires", ""), ("assistants", str(assistant.id))])
    key = (await api_keys.list_all(panel.pool))[0]
    assert key.assistant_ids == (assistant.id,)
    _, listing = await panel.get("/admin/keys")
    assert "scoped-to" in listing
    _, confirm = await panel.get(f"/admin/keys/{key.id}/revoke")
    assert "Revoke the key" in confirm and (await api_keys.get(panel.pool, key.id)).revoked_at is None
    _, text = await panel.post(f"/admin/keys/{key.id}/revoke")
    assert "revoked" in text and (await api_keys.get(panel.pool, key.id)).revoked_at is not None
    response, _ = await panel.post("/admin/keys/new", [("name", "x"), ("expires", ""), ("assistants", "nope")])
    assert response.status == 400


# --- escaping and secrets -----------------------------------------------------------------------------


async def test_names_and_prompts_are_escaped_and_no_page_shows_a_provider_key(panel, fake_openai):
    upstream_key = "sk-upstream-NEVER-SHOWN-42"
    await provider_via_form(panel, name=HOSTILE, base_url=fake_openai.base_url, api_key=upstream_key)
    provider = (await providers.list_all(panel.pool))[0]
    await assistant_via_form(panel, provider.id, name=HOSTILE, system_prompt=HOSTILE)
    assistant = (await assistants.list_all(panel.pool))[0]
    await panel.post("/admin/keys/new", [("name", HOSTILE), ("expires", ""), ("assistants", str(assistant.id))])
    key = (await api_keys.list_all(panel.pool))[0]
    pages = ["/admin/", "/admin/providers", f"/admin/providers/{provider.id}/edit", "/admin/assistants",
             "/admin/assistants/new", f"/admin/assistants/{assistant.id}", f"/admin/assistants/{assistant.id}/edit",
             "/admin/keys", "/admin/keys/new", f"/admin/keys/{key.id}/revoke", "/admin/plugins",
             f"/admin/providers/{provider.id}/delete", f"/admin/assistants/{assistant.id}/delete"]
    for page in pages:
        response, text = await panel.get(page)
        assert response.status == 200, page
        assert "<script>alert" not in text, page
        assert upstream_key not in text, page
    _, text = await panel.get(f"/admin/assistants/{assistant.id}")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text
    _, text = await panel.post(f"/admin/providers/{provider.id}/test")
    assert upstream_key not in text and "&lt;script&gt;" in text


# --- dashboard and plugins ---------------------------------------------------------------------------


async def test_the_dashboard_counts_and_shows_recent_api_errors(panel):
    _, text = await panel.get("/admin/")
    assert "No failed API calls yet." in text and "Start here" in text
    client = panel.client
    response = await client.post(f"/api/v1/assistants/{uuid.uuid4()}/v1/chat/completions",
                                 json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status == 401
    request_id = response.headers["X-Request-ID"]
    for _ in range(100):
        _, text = await panel.get("/admin/")
        if request_id in text:
            break
        await asyncio.sleep(0.05)
    assert request_id in text and "401" in text
    row = re.search(rf"<tr>(?:(?!</tr>).)*{request_id}", text, flags=re.S).group(0)
    assert "invalid_api_key" in row and "You didn&#39;t provide an API key." in row  # the code and the message


async def test_the_plugins_page_lists_plugins_and_hooks(panel):
    _, text = await panel.get("/admin/plugins")
    assert "riceball_proxy.builtin.openai_compat" in text and "riceball_provider_types" in text


async def test_hook_riceball_admin_setup(aiohttp_client, settings):
    class Extension:
        @hookimpl
        def riceball_admin_setup(self, admin_app):
            async def status(request):
                return web.Response(text="extension is here")

            admin_app.router.add_get("/extension", status)

    pm = make_plugin_manager(settings, entry_points=False)
    pm.register(Extension(), name="extension")
    app = create_app(settings, plugin_manager=pm)
    browser = Panel(await aiohttp_client(app))
    response, _ = await browser.get("/admin/extension", allow_redirects=False)
    assert response.status == 303  # behind the admin session, like every admin page
    await admins.create(app[appkeys.DATABASE].pool, "root", crypto.hash_password(ADMIN_PASSWORD))
    await browser.login()
    response, text = await browser.get("/admin/extension")
    assert response.status == 200 and text == "extension is here"


@pytest.mark.parametrize("path", ["/admin/static/pico.min.css", "/admin/static/admin.js"])
async def test_static_files_are_served_without_a_session(aiohttp_client, settings, path):
    client = await aiohttp_client(create_app(settings))
    response = await client.get(path)
    assert response.status == 200


async def test_a_provider_whose_type_is_not_installed_keeps_it(panel):
    provider = await providers.create(panel.pool, name="gone", type="uninstalled", base_url="http://127.0.0.1:9/v1")
    _, text = await panel.get(f"/admin/providers/{provider.id}/edit")
    assert '<option value="uninstalled" selected>uninstalled (not installed)</option>' in text
    # The number fields take decimals: their attributes are attributes, not escaped text.
    assert 'step="any" min="0"' in text and "step=&#34;" not in text
    response, _ = await panel.post(f"/admin/providers/{provider.id}/edit", {
        "name": "gone", "type": "uninstalled", "base_url": "http://127.0.0.1:9/v1", "connect_timeout": "2.5",
        "read_timeout": "300", "max_connections": "10", "queue_timeout": "1"}, csrf_from="/admin/providers")
    assert response.url.path == "/admin/providers"
    saved = await providers.get(panel.pool, provider.id)
    assert (saved.type, saved.connect_timeout) == ("uninstalled", 2.5)


async def test_small_things_a_new_admin_meets(panel, fake_openai):
    response, _ = await panel.get("/admin/setup?token=whatever", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/admin/"  # signed in: no "Setup is done"
    response = await panel.client.get("/favicon.ico")
    assert response.status == 200 and response.content_type == "image/svg+xml"
    fake_openai.models = ["only-one"]
    await provider_via_form(panel, base_url=fake_openai.base_url)
    provider = (await providers.list_all(panel.pool))[0]
    _, text = await panel.post(f"/admin/providers/{provider.id}/test", csrf_from="/admin/providers")
    assert "The upstream answered with 1 model." in text


# --- limits and prices -----------------------------------------------------------------------------------


async def test_keys_get_limits_a_page_with_spend_and_an_edit_form(panel):
    from decimal import Decimal

    from riceball_proxy.db import usage_events

    await provider_via_form(panel)
    provider = (await providers.list_all(panel.pool))[0]
    await assistant_via_form(panel, provider.id, name="priced", model="gpt-4o-mini")
    await assistant_via_form(panel, provider.id, name="in-house", model="in-house-7b")
    priced, in_house = sorted(await assistants.list_all(panel.pool), key=lambda a: a.name != "priced")

    # Bad limits: each named next to its field, nothing saved.
    response, text = await panel.post("/admin/keys/new", {"name": "partner", "expires": "", "rpm": "-1",
                                                          "budget_usd": "lots", "budget_period": "year"})
    assert response.status == 400 and await api_keys.list_all(panel.pool) == []
    assert 'id="rpm-error"' in text and 'id="budget_usd-error"' in text and 'id="budget_period-error"' in text
    assert 'value="-1"' in text  # what was typed is kept
    # A USD budget on a key that may only call an assistant of unknown price cannot be counted.
    response, text = await panel.post("/admin/keys/new", [("name", "partner"), ("expires", ""), ("budget_usd", "5"),
                                                          ("budget_period", "month"), ("assistants", str(in_house.id))])
    assert response.status == 400 and "No assistant this key may call has a known price" in text

    response, text = await panel.post("/admin/keys/new", {"name": "partner", "expires": "", "rpm": "60",
                                                          "max_parallel": "3", "budget_usd": "25",
                                                          "budget_tokens": "100000", "budget_period": "week"})
    assert response.status == 200
    key = (await api_keys.list_all(panel.pool))[0]
    assert (key.limits.rpm, key.limits.max_parallel, key.limits.budget_usd, key.limits.budget_tokens,
            key.limits.budget_period) == (60, 3, Decimal(25), 100_000, "week")

    # Two calls this week, one last year: the pages show this week's.
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    await usage_events.insert_many(panel.pool, [
        usage_events.UsageEvent(created_at=now, request_id=f"r{n}", status=200, api_key_id=key.id,
                                assistant_id=priced.id, prompt_tokens=900, completion_tokens=100, total_tokens=1000,
                                cost_usd=Decimal("1.25"))
        for n in range(2)] + [usage_events.UsageEvent(
            created_at=now - datetime.timedelta(days=400), request_id="old", status=200, api_key_id=key.id,
            total_tokens=5000, cost_usd=Decimal(7))])
    _, listing = await panel.get("/admin/keys")
    assert "$2.50 of $25.00" in listing and "2,000 of 100,000 tokens" in listing and "this week" in listing
    _, page = await panel.get(f"/admin/keys/{key.id}")
    assert "$2.5000" in page and "$22.5000" in page and "98,000" in page  # spent and what remains
    assert "60 requests per minute, 3 calls at once" in page
    assert "in-house can serve calls of unknown price" in page

    _, form = await panel.get(f"/admin/keys/{key.id}/edit")
    assert 'value="60"' in form and 'value="25"' in form and '<option value="week" selected>' in form
    response, _ = await panel.post(f"/admin/keys/{key.id}/edit", {"name": "partner-2", "rpm": "", "tpm": "5000",
                                                                  "max_parallel": "3", "budget_usd": "",
                                                                  "budget_tokens": "", "budget_period": "total"})
    assert response.status == 200
    changed = await api_keys.get(panel.pool, key.id)
    assert changed.name == "partner-2" and changed.expires_at == key.expires_at
    assert (changed.limits.rpm, changed.limits.tpm, changed.limits.budget_usd, changed.limits.budget_period) == (
        None, 5000, None, "total")
    await api_keys.revoke(panel.pool, key.id)
    response, _ = await panel.get(f"/admin/keys/{key.id}/edit")
    assert response.status == 404  # a revoked key cannot be changed


async def test_assistants_get_limits_and_prices(panel):
    from decimal import Decimal

    await provider_via_form(panel)
    provider = (await providers.list_all(panel.pool))[0]
    response, text = await assistant_via_form(panel, provider.id, model="in-house-7b", budget_usd="10",
                                              budget_period="month")
    assert response.status == 400 and "No price is known for" in text and "in-house-7b" in text
    response, text = await assistant_via_form(panel, provider.id, model="in-house-7b", price_input="0.5")
    assert response.status == 400
    assert re.search(r'id="price_output-error" class="error">Set an output price beside the input price, or neither',
                     text)
    assert await assistants.list_all(panel.pool) == []
    response, _ = await assistant_via_form(panel, provider.id, model="in-house-7b", price_input="0.5",
                                           price_output="1.5", budget_usd="10", budget_period="day", tpm="20000")
    assert response.status == 200
    assistant = (await assistants.list_all(panel.pool))[0]
    assert (assistant.price_input, assistant.price_output, assistant.price_cached_input) == (
        Decimal("0.5"), Decimal("1.5"), None)
    assert (assistant.limits.tpm, assistant.limits.budget_usd, assistant.limits.budget_period) == (
        20000, Decimal(10), "day")
    _, form = await panel.get(f"/admin/assistants/{assistant.id}/edit")
    assert 'value="0.5"' in form and 'value="1.5"' in form and 'value="20000"' in form


async def test_the_assistant_form_sets_reasoning_effort_prompt_caching_and_cache_and_target_prices(panel):
    from decimal import Decimal

    await provider_via_form(panel)
    await provider_via_form(panel, name="backup")
    primary, backup = sorted(await providers.list_all(panel.pool), key=lambda p: p.name != "up")
    fields = dict(model="claude-sonnet-4-5", reasoning_effort="medium", lock_reasoning_effort="on", auto_cache="on",
                  price_input="3", price_output="15", price_cached_input="0.3", price_cache_write="3.75",
                  fallback_provider_0=str(backup.id), fallback_model_0="in-house-7b", fallback_prices_0="0.2, 0.8")
    response, text = await assistant_via_form(panel, primary.id, **(fields | {"fallback_prices_0": "0.2"}))
    assert response.status == 400 and "Set an output price beside the input price, or neither." in text
    response, text = await assistant_via_form(panel, primary.id, **(fields | {"fallback_prices_0": "1, 2, 3, 4, 5"}))
    assert response.status == 400 and "optionally cache read and cache write prices" in text
    response, text = await assistant_via_form(panel, primary.id, **(fields | {"reasoning_effort": "extreme"}))
    assert response.status == 400 and "Must be &#39;none&#39;, &#39;minimal&#39;, &#39;low&#39;" in text
    response, text = await assistant_via_form(panel, primary.id, **(fields | {"price_input": "", "price_output": ""}))
    assert response.status == 400 and "A cache price needs the input and output prices." in text
    assert await assistants.list_all(panel.pool) == []
    response, _ = await assistant_via_form(panel, primary.id, **fields)
    assert response.status == 200
    assistant = (await assistants.list_all(panel.pool))[0]
    assert (assistant.parameters["reasoning_effort"], assistant.locked, assistant.auto_cache) == (
        "medium", {"reasoning_effort"}, True)
    assert assistant.prices == (Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75"))
    assert assistant.fallbacks[0].prices == (Decimal("0.2"), Decimal("0.8"), None, None)
    _, form = await panel.get(f"/admin/assistants/{assistant.id}/edit")
    assert "<option selected>medium</option>" in form and 'name="lock_reasoning_effort" checked' in form
    assert 'name="auto_cache" aria-describedby="auto_cache-help" checked' in form
    assert 'name="price_cache_write" value="3.75"' in form and 'value="0.2, 0.8"' in form


async def test_the_assistant_form_edits_fallbacks_deadline_and_the_target_headers_option(panel):
    from riceball_proxy.db.assistants import Target

    await provider_via_form(panel)
    await provider_via_form(panel, name="backup")
    primary, backup = sorted(await providers.list_all(panel.pool), key=lambda p: p.name != "up")
    assistant = await assistants.create(panel.pool, name="helper", provider_id=primary.id, model="gpt-4o",
                                        fallbacks=[Target(backup.id, "other")], deadline=12, max_attempts=2)
    _, form = await panel.get(f"/admin/assistants/{assistant.id}/edit")
    assert 'name="fallback_model_0" value="other"' in form and 'name="fallback_model_2"' in form  # 2 empty rows
    assert 'name="deadline" value="12"' in form
    base = {"name": "helper", "provider_id": str(primary.id), "model": "gpt-4o", "system_prompt": "",
            "enabled": "on", "expose_target": "on", "deadline": "12", "max_attempts": "2"}
    # Add two, the new ones sharing priority 1 by weight; the old one moves to priority 2.
    rows = {"fallback_provider_0": str(backup.id), "fallback_model_0": "other", "fallback_priority_0": "2",
            "fallback_weight_0": "1",
            "fallback_provider_1": str(backup.id), "fallback_model_1": "new-a", "fallback_priority_1": "1",
            "fallback_weight_1": "3",
            "fallback_provider_2": str(primary.id), "fallback_model_2": "new-b", "fallback_priority_2": "1",
            "fallback_weight_2": "", "fallback_params_2": '{"temperature": 0.2}'}
    response, _ = await panel.post(f"/admin/assistants/{assistant.id}/edit", base | rows)
    assert response.status == 200
    saved = await assistants.get(panel.pool, assistant.id)
    assert saved.fallbacks == (Target(backup.id, "other", 1, 2), Target(backup.id, "new-a", 3, 1),
                               Target(primary.id, "new-b", 1, 1, {"temperature": 0.2}))
    assert (saved.deadline, saved.max_attempts, saved.expose_target) == (12, 2, True)
    # A target twice is refused next to the list, nothing saved, what was typed kept.
    response, text = await panel.post(f"/admin/assistants/{assistant.id}/edit", base | rows | {
        "fallback_model_2": "other", "fallback_provider_2": str(backup.id)})
    assert response.status == 400 and "listed twice" in text and 'value="new-a"' in text
    assert (await assistants.get(panel.pool, assistant.id)).fallbacks == saved.fallbacks
    # Remove one; a weight of 0 and parameters that are no JSON object are field errors.
    response, text = await panel.post(f"/admin/assistants/{assistant.id}/edit", base | rows | {
        "fallback_weight_1": "0", "fallback_params_1": "[1]"})
    assert response.status == 400 and 'id="fallback_weight_1-error"' in text
    assert 'id="fallback_params_1-error"' in text
    response, _ = await panel.post(f"/admin/assistants/{assistant.id}/edit", base | rows | {
        "fallback_remove_0": "on"})
    assert [t.model for t in (await assistants.get(panel.pool, assistant.id)).fallbacks] == ["new-a", "new-b"]
    _, page = await panel.get(f"/admin/assistants/{assistant.id}")
    assert "<code>new-a</code>" in page and "12 s for all attempts" in page


async def test_forms_say_when_a_configuration_file_is_applied_at_start(aiohttp_client, settings, tmp_path):
    from tests.support import Panel

    applied = tmp_path / "riceball.yaml"
    applied.write_text("version: 1\n")  # names nothing: changes nothing
    for config_file in (None, applied):
        app = create_app(settings.replace(config_file=config_file))
        browser = Panel(await aiohttp_client(app))
        if config_file is None:
            await admins.create(app[appkeys.DATABASE].pool, "root", crypto.hash_password(ADMIN_PASSWORD))
        await browser.login()
        for page in ("/admin/assistants/new", "/admin/providers/new", "/admin/keys/new"):
            response, text = await browser.get(page)
            assert response.status == 200
            assert ("This gateway applies riceball.yaml each time it starts" in text) is (config_file is not None)
        _, text = await browser.get("/admin/assistants")
        assert "This gateway applies" not in text
