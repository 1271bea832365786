"""The admin panel in a real browser: Debian's Chromium driven by Playwright, against a running gateway."""
import asyncio
import os
import shutil
import time
from pathlib import Path

import openai
import pytest

from riceball_proxy import crypto
from riceball_proxy.db import admins, api_keys, providers
from tests.support import ADMIN_PASSWORD, ROOT

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(os.environ.get("RICEBALL_SCREENSHOT_DIR", ROOT / "test-artifacts" / "screenshots"))
MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def page():
    """A fresh browser page in headless Chromium (Debian's, never a downloaded one)."""
    from playwright.async_api import async_playwright

    if CHROMIUM is None:
        # CI always has it (.ci/run installs it), so there the test fails instead of being skipped.
        assert not os.environ.get("CI"), "Debian's chromium package is not installed"
        pytest.skip("Debian's chromium package is not installed (scripts/install-browser installs it)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        yield page
        await context.close()
        await browser.close()


async def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / f"admin-{name}.png", full_page=True)


async def test_an_admin_sets_up_an_assistant_and_a_key_then_revokes_it(page, gateway, fake_openai):
    await admins.create(gateway.pool, "admin", crypto.hash_password(ADMIN_PASSWORD))

    await page.goto(gateway.url("/admin/"))
    assert page.url.startswith(gateway.url("/admin/login"))
    await page.get_by_label("Username").fill("admin")
    await page.get_by_label("Password").fill(ADMIN_PASSWORD)
    await shot(page, "01-login")
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("heading", name="Dashboard").wait_for()
    await shot(page, "02-dashboard")

    await page.get_by_role("link", name="Providers").first.click()
    await page.get_by_role("button", name="Add a provider").first.click()
    await page.get_by_label("Name", exact=True).fill("local-upstream")
    await page.get_by_label("Type").select_option("openai")
    await page.get_by_label("Base URL").fill(fake_openai.base_url)
    await page.get_by_label("API key").fill("sk-upstream-secret")
    await page.get_by_label("Connect timeout (seconds)").fill("2.5")  # the browser takes decimals there
    await shot(page, "03-provider-form")
    await page.get_by_role("button", name="Save provider").click()
    await page.get_by_text("Provider “local-upstream” saved.").wait_for()
    assert (await providers.get_by_name(gateway.pool, "local-upstream")).connect_timeout == 2.5
    assert "sk-upstream-secret" not in await page.content()
    await shot(page, "04-providers")
    await page.get_by_role("button", name="Test connection").click()
    await page.get_by_text("The upstream answered with 2 models.").wait_for()
    await shot(page, "05-provider-test")

    await page.get_by_role("link", name="Assistants").first.click()
    await page.get_by_role("button", name="Add an assistant").first.click()
    await page.get_by_label("Name", exact=True).fill("Support bot")
    await page.get_by_label("Model", exact=True).fill("gpt-4o-mini")
    await page.get_by_label("System prompt", exact=True).fill("You are a friendly support assistant.")
    await page.get_by_label("Temperature", exact=True).fill("0.3")
    await shot(page, "06-assistant-form")
    await page.get_by_role("button", name="Save assistant").click()
    await page.get_by_text("Assistant “Support bot” saved.").wait_for()
    base_url = await page.locator("#base-url").input_value()
    assert base_url.startswith(gateway.url("/api/v1/assistants/"))
    await shot(page, "07-assistant")

    await page.get_by_role("link", name="API keys").first.click()
    await page.get_by_role("button", name="Create a key").first.click()
    cancel = await page.get_by_role("button", name="Cancel").bounding_box()
    create = await page.get_by_role("button", name="Create key").bounding_box()
    assert abs(cancel["height"] - create["height"]) <= 1 and abs(cancel["y"] - create["y"]) <= 1  # one row
    await page.get_by_label("Name", exact=True).fill("docs example")
    await page.get_by_label("Support bot").check()
    await shot(page, "08-key-form")
    await page.get_by_role("button", name="Create key").click()
    key = await page.locator("#new-key").input_value()
    assert key.startswith("sk-")
    await shot(page, "09-key-created")
    await page.get_by_role("link", name="API keys").first.click()
    assert key not in await page.content()
    assert await page.locator("#new-key").count() == 0
    await shot(page, "10-keys")

    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        completion = await client.chat.completions.create(model="any", messages=MESSAGES)
        assert completion.choices[0].message.content == "Hello from the fake upstream"
        assert fake_openai.last["model"] == "gpt-4o-mini" and fake_openai.last["temperature"] == 0.3
        assert fake_openai.last["messages"][0] == {"role": "system", "content": "You are a friendly support assistant."}
        for _ in range(4):
            await client.chat.completions.create(model="any", messages=MESSAGES)
        for _ in range(3):
            async for _ in await client.chat.completions.create(model="any", messages=MESSAGES, stream=True):
                pass

        await page.get_by_role("link", name="Revoke").click()
        await shot(page, "11-revoke-confirm")
        await page.get_by_role("button", name="Revoke key").click()
        await page.get_by_text("Key “docs example” revoked.").wait_for()
        assert (await api_keys.list_all(gateway.pool))[0].status() == "revoked"

        deadline = time.monotonic() + 1.0
        while True:
            try:
                await client.chat.completions.create(model="any", messages=MESSAGES)
            except openai.AuthenticationError:
                break
            assert time.monotonic() < deadline, "the revoked key still works"
            await asyncio.sleep(0.02)

    # Failed calls reach the dashboard through the usage rows, written in the background.
    await page.get_by_role("link", name="Dashboard").first.click()
    for _ in range(100):
        if await page.locator("td", has_text="401").count():
            break
        await asyncio.sleep(0.1)
        await page.reload()
    await page.locator("td", has_text="401").first.wait_for()
    # Each time on one line (one line box), not wrapped over three.
    assert await page.evaluate("() => [...document.querySelectorAll('td.time time')].every("
                               "t => t.getClientRects().length === 1)")
    await shot(page, "12-dashboard-errors")

    # Usage rows are written in the background: the page shows them once they are in.
    await page.get_by_role("link", name="Usage").first.click()
    for _ in range(100):
        errors = page.locator("article", has_text="Errors").locator("p.big")
        if await errors.count() and (await errors.inner_text()).strip() != "0":
            break
        await asyncio.sleep(0.1)
        await page.reload()
    await page.get_by_role("heading", name="Per assistant").wait_for()
    assert "Support bot" in await page.content()
    # "Calls from" shows its longest choice whole.
    assert await page.evaluate("() => { const s = document.getElementById('source');"
                               " const c = document.createElement('canvas').getContext('2d');"
                               " c.font = getComputedStyle(s).font;"
                               " const room = s.clientWidth - parseFloat(getComputedStyle(s).paddingLeft)"
                               " - parseFloat(getComputedStyle(s).paddingRight);"
                               " return [...s.options].every(o => c.measureText(o.text).width <= room); }")
    await shot(page, "14-usage")
    await page.set_viewport_size({"width": 390, "height": 844})
    no_sideways_scroll = ("() => [...document.querySelectorAll('table')].every("
                          "t => t.scrollWidth <= t.parentElement.clientWidth + 1)")
    for name in ("API keys", "Dashboard", "Usage", "Providers"):
        await page.goto(gateway.url({"API keys": "/admin/keys", "Dashboard": "/admin/", "Usage": "/admin/usage",
                                     "Providers": "/admin/providers"}[name]))
        assert await page.evaluate(no_sideways_scroll), f"a table on {name} scrolls sideways on a phone"
    await page.goto(gateway.url("/admin/keys"))
    await shot(page, "15-mobile-keys")
    await page.get_by_role("link", name="Assistants").first.click()
    await shot(page, "13-mobile-assistants")


async def test_the_playground_streams_stops_reopens_and_compares(page, gateway, fake_openai):
    from riceball_proxy.db import conversations

    await admins.create(gateway.pool, "admin", crypto.hash_password(ADMIN_PASSWORD))
    provider = await gateway.provider(fake_openai.base_url, name="local-upstream")
    support = await gateway.assistant(provider, name="Support bot", system_prompt="You are a friendly support bot.")
    terse = await gateway.assistant(provider, name="Terse bot", model="gpt-4o-mini", system_prompt="Be terse.")
    await page.goto(gateway.url("/admin/login"))
    await page.get_by_label("Username").fill("admin")
    await page.get_by_label("Password").fill(ADMIN_PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("heading", name="Dashboard").wait_for()

    await page.goto(gateway.url(f"/admin/assistants/{support.id}"))
    await page.get_by_role("button", name="Playground").click()
    # Ready to type: the first message starts the conversation.
    await page.wait_for_function("() => document.activeElement.id === 'content'", timeout=5000)
    answer = page.locator(".message-assistant .message-text").last
    meta = page.locator(".message-assistant .message-meta").last

    # Each chunk after the next leaves the fake upstream only when the test lets it: the answer is seen
    # to grow step by step, and is not complete before the last one.
    fake_openai.reply = "Hello! How can I help you today?"
    fake_openai.chunk_gate = gate = asyncio.Semaphore(1)
    await page.get_by_label("Message").fill("Hi, I need help with my order.")
    await page.get_by_role("button", name="Send").click()
    await page.wait_for_function("() => document.querySelector('.message-assistant:last-child .message-text')"
                                 ".textContent === 'Hello!'")
    assert await meta.text_content() == "…"  # not done yet
    gate.release()
    await page.wait_for_function("() => document.querySelector('.message-assistant:last-child .message-text')"
                                 ".textContent === 'Hello! How'")
    assert await meta.text_content() == "…"
    for _ in range(20):
        gate.release()
    await page.get_by_text("tokens ·").last.wait_for()
    assert await answer.text_content() == fake_openai.reply
    assert fake_openai.last["messages"][0] == {"role": "system", "content": "You are a friendly support bot."}
    assert "/admin/conversations/" in page.url  # the address is the conversation's now

    # Stop: the partial answer stays, marked stopped, and the upstream call ends.
    fake_openai.chunk_gate = gate = asyncio.Semaphore(1)
    fake_openai.client_went_away.clear()
    await page.get_by_label("Message").fill("Tell me a long story.")
    await page.get_by_role("button", name="Send").click()
    await page.wait_for_function("() => document.querySelector('.message-assistant:last-child .message-text')"
                                 ".textContent === 'Hello!'")
    await page.get_by_role("button", name="Stop").click()
    await page.get_by_text("stopped").last.wait_for()
    await asyncio.wait_for(fake_openai.client_went_away.wait(), 10)
    fake_openai.chunk_gate = None

    # After a reload the conversation is all there, the stopped answer marked.
    await page.reload()
    texts = await page.locator(".message .message-text").all_text_contents()
    for _ in range(50):  # the stopped answer is saved as its request ends
        if len(texts) == 4:
            break
        await asyncio.sleep(0.1)
        await page.reload()
        texts = await page.locator(".message .message-text").all_text_contents()
    assert texts == ["Hi, I need help with my order.", fake_openai.reply, "Tell me a long story.", "Hello!"]
    assert "stopped" in await page.locator(".message-assistant .message-meta").last.text_content()
    await shot(page, "15-playground")
    await page.goto(gateway.url(f"/admin/assistants/{support.id}/playground"))
    await page.get_by_role("link", name="Hi, I need help with my order.").wait_for()

    # A failed answer is said as an error, where the answer would be.
    fake_openai.error = (500, {"error": {"message": "the model is down", "type": "server_error"}})
    await page.get_by_label("Message").fill("Are you there?")
    await page.get_by_role("button", name="Send").click()
    failed = page.locator(".message-assistant .message-error").last
    await failed.wait_for()
    assert (await failed.text_content()).startswith("The answer failed: ")
    assert await failed.get_attribute("role") == "alert"
    await page.reload()
    assert (await page.locator(".message-error").last.text_content()).startswith("The answer failed: ")
    await shot(page, "17-playground-failed")
    fake_openai.error = None
    await page.goto(gateway.url(f"/admin/assistants/{support.id}/playground"))

    # Compare: both assistants answer the same message at once, each kept as a conversation of its own.
    await page.get_by_role("button", name="Compare with another").click()
    await page.get_by_label("Assistant B").select_option(label="Terse bot")
    fake_openai.chunk_delay = 0.05
    await page.get_by_label("Message").fill("What are your opening hours?")
    await page.get_by_role("button", name="Send to both").click()
    for side in ("a", "b"):
        await page.locator(f"[data-side={side}] .message-meta", has_text="tokens").wait_for()
        assert await page.locator(f"[data-side={side}] .message-assistant .message-text").text_content() \
            == fake_openai.reply
    assert await page.get_by_role("link", name="Open this conversation").count() == 2
    await shot(page, "16-compare")
    systems = sorted(request["body"]["messages"][0]["content"] for request in fake_openai.requests[-2:])
    assert systems == ["Be terse.", "You are a friendly support bot."]
    for assistant in (support, terse):
        (newest, *_) = await conversations.list_for_assistant(gateway.pool, assistant.id)
        assert [m.text for m in await conversations.messages(gateway.pool, newest.id)] == [
            "What are your opening hours?", fake_openai.reply]


async def test_the_first_hour_traps_are_gone(page, start_gateway, settings, fake_openai):
    """The provider form's type and base URL, a key typed before a failed save, the assistant form's
    summary and focus, its model reload (no token in a URL), deleting a provider that is in use."""
    from riceball_proxy.db import assistants

    gateway = await start_gateway(settings.replace(plugins=frozenset({"echo", "anthropic"})))
    await admins.create(gateway.pool, "admin", crypto.hash_password(ADMIN_PASSWORD))
    await page.goto(gateway.url("/admin/login"))
    await page.get_by_label("Username").fill("admin")
    await page.get_by_label("Password").fill(ADMIN_PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_role("heading", name="Dashboard").wait_for()
    urls = []
    page.on("request", lambda request: urls.append(request.url))

    # No type is chosen for the admin; the base URL follows the type until one is typed.
    await page.goto(gateway.url("/admin/providers/new"))
    assert await page.get_by_label("Type").input_value() == ""
    assert await page.get_by_label("Base URL").input_value() == ""
    await page.get_by_label("Type").select_option("echo")
    assert await page.get_by_label("Base URL").input_value() == "http://echo.invalid"
    await page.get_by_label("Type").select_option("openai")
    assert await page.get_by_label("Base URL").input_value() == "https://api.openai.com/v1"
    await page.get_by_label("Type").select_option("anthropic")
    assert await page.get_by_label("Base URL").input_value() == "https://api.anthropic.com/v1"
    await page.get_by_label("Base URL").fill(fake_openai.base_url)
    await page.get_by_label("Type").select_option("openai")
    assert await page.get_by_label("Base URL").input_value() == fake_openai.base_url  # typed: kept

    # A save that fails asks for the key again instead of saving a keyless provider next time.
    await gateway.provider(fake_openai.base_url, name="taken")
    await page.get_by_label("Name", exact=True).fill("taken")
    await page.get_by_label("API key").fill("sk-typed")
    await page.get_by_role("button", name="Save provider").click()
    await page.get_by_text("1 problem to fix before saving").wait_for()
    await page.wait_for_function("() => document.activeElement.id === 'name'", timeout=5000)
    assert await page.get_by_label("API key").input_value() == ""
    await page.get_by_text("The key you typed was not saved: enter it again").wait_for()
    assert "sk-typed" not in await page.content()
    await shot(page, "18-provider-form-again")
    await page.get_by_label("Name", exact=True).fill("local-fake-upstream")
    await page.get_by_label("API key").fill("sk-typed")
    await page.get_by_role("button", name="Save provider").click()
    await page.get_by_text("Provider “local-fake-upstream” saved.").wait_for()

    # The assistant form: every problem at the top, each a link to its field, the first focused.
    await page.goto(gateway.url("/admin/assistants/new"))
    await page.get_by_label("Provider", exact=True).select_option(label="local-fake-upstream")  # reloads the models by POST
    await page.get_by_text("Pick one of the provider's 2 models").wait_for()
    await page.get_by_label("Name", exact=True).fill("helper")
    await page.get_by_label("Model", exact=True).fill("gpt-4o")
    await page.get_by_label("System prompt", exact=True).fill("First line.\nSecond line.")
    await page.get_by_label("Temperature", exact=True).fill("3")
    await page.get_by_label("Extra parameters (JSON object)").fill("{not json")
    await page.get_by_role("button", name="Save assistant").click()
    summary = page.locator(".error-summary")
    await summary.wait_for()
    assert "2 problems to fix before saving" in await summary.text_content()
    assert await summary.get_by_role("link").all_text_contents() == ["Temperature", "Extra parameters"]
    await page.wait_for_function("() => document.activeElement.id === 'temperature'", timeout=5000)
    assert all("csrf_token" not in url and "system_prompt" not in url for url in urls)  # nothing in a URL
    # A fallback's provider is read whole in its select.
    assert await page.evaluate("() => [...document.querySelectorAll('table.fallbacks select')].every(s => {"
                               " const c = document.createElement('canvas').getContext('2d');"
                               " c.font = getComputedStyle(s).font;"
                               " const room = s.clientWidth - parseFloat(getComputedStyle(s).paddingLeft)"
                               " - parseFloat(getComputedStyle(s).paddingRight);"
                               " return [...s.options].every(o => c.measureText(o.text).width <= room); })")
    await shot(page, "19-assistant-form-problems")
    await page.get_by_label("Temperature", exact=True).fill("0.5")
    await page.get_by_label("Extra parameters (JSON object)").fill("")
    await page.get_by_role("button", name="Save assistant").click()
    await page.get_by_text("Assistant “helper” saved.").wait_for()
    helper = await assistants.get_by_name(gateway.pool, "helper")
    assert helper.system_prompt == "First line.\nSecond line."  # the browser's \r\n made \n

    # Deleting a provider in use: the page names who uses it and offers no delete button.
    local = await providers.get_by_name(gateway.pool, "local-fake-upstream")
    await page.goto(gateway.url(f"/admin/providers/{local.id}/delete"))
    await page.get_by_role("link", name="helper (its provider)").wait_for()
    assert await page.get_by_role("button", name="Delete provider").count() == 0
    await shot(page, "20-provider-in-use")
