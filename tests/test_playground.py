"""The admin playground without a browser: conversations, whole and streamed answers through the API's
stages, stop, limits, usage, CSRF; and the rule that the API never touches the conversations."""
import asyncio
import re
from decimal import Decimal

import asyncpg  # noqa: F401 (types in docstrings)
import orjson
import pytest

from riceball_proxy import crypto
from riceball_proxy.db import admins, assistants, conversations, providers
from riceball_proxy.limits import Limits
from tests.support import ADMIN_PASSWORD, Panel, usage_rows_of


@pytest.fixture
async def playground(panel, fake_openai):
    """A logged-in admin, an assistant on the fake upstream, and a new conversation with it."""
    provider = await providers.create(panel.pool, name="fake", type="openai", base_url=fake_openai.base_url)
    assistant = await assistants.create(panel.pool, name="helper", provider_id=provider.id, model="gpt-4o",
                                        system_prompt="You are the playground's test.", parameters={"temperature": 0.2},
                                        prices=(Decimal(1), Decimal(2), None, None))
    response, _ = await panel.post(f"/admin/assistants/{assistant.id}/conversations", csrf_from="/admin/")
    assert response.status == 200 and "/admin/conversations/" in response.url.path
    panel.assistant = assistant
    panel.conversation_url = response.url.path
    panel.upstream = fake_openai
    return panel


async def send_streamed(panel, text: str, *, path: str | None = None):
    """POST a message as the playground's script does; the parsed events."""
    token = await panel.csrf_token("/admin/")
    response = await panel.client.post((path or panel.conversation_url) + "/messages",
                                       data={"content": text, "csrf_token": token},
                                       headers={"Accept": "text/event-stream"})
    body = await response.read()
    if not response.headers["Content-Type"].startswith("text/event-stream"):
        return response.status, orjson.loads(body)
    return response.status, [orjson.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: ")]


async def stored(panel):
    conversation_id = panel.conversation_url.rsplit("/", 1)[1]
    return await conversations.messages(panel.pool, conversation_id)


async def usage_rows(panel, count: int):
    return await usage_rows_of(panel.app, count)


async def test_a_message_is_answered_whole_without_javascript(playground):
    upstream = playground.upstream
    upstream.reply = "Here is <b>bold</b> and code:\n```\nprint('hi')\n```"
    response, text = await playground.post(playground.conversation_url + "/messages", {"content": "Hello there"},
                                           csrf_from=playground.conversation_url)
    assert response.status == 200 and response.url.path == playground.conversation_url  # sent back to it
    assert upstream.last["messages"][0] == {"role": "system", "content": "You are the playground's test."}
    assert upstream.last["temperature"] == 0.2 and upstream.last["stream"] is False
    assert "Here is &lt;b&gt;bold&lt;/b&gt; and code:\n```\nprint(&#39;hi&#39;)\n```" in text  # text, escaped
    assert "<b>bold</b>" not in text
    assert re.search(r"\d+ \+ \d+ tokens · \d+ ms · \$0\.0000\d+ · gpt-4o", text)

    user, answer = await stored(playground)
    assert (user.role, user.content) == ("user", "Hello there")
    assert answer.content == upstream.reply and answer.meta["model"] == "gpt-4o"
    assert answer.meta["prompt_tokens"] > 0 and "cost_usd" in answer.meta
    _, text = await playground.get(f"/admin/assistants/{playground.assistant.id}/playground")
    assert "Hello there" in text  # the first message titles the conversation

    # The conversation goes on: the whole history is sent.
    await playground.post(playground.conversation_url + "/messages", {"content": "And again"},
                          csrf_from=playground.conversation_url)
    assert [m["role"] for m in upstream.last["messages"]] == ["system", "user", "assistant", "user"]

    (row, _) = await usage_rows(playground, 2)
    assert (row["source"], row["api_key_id"], row["status"]) == ("playground", None, 200)
    assert row["admin_id"] == (await admins.get_by_username(playground.pool, "root")).id
    assert row["assistant_id"] == playground.assistant.id and row["cost_usd"] is not None


async def test_a_streamed_answer_arrives_in_pieces_and_is_saved(playground):
    upstream = playground.upstream
    upstream.reply = "one two three four"
    status, events = await send_streamed(playground, "Count")
    assert status == 200 and upstream.last["stream"] is True
    assert [e["delta"] for e in events if "delta" in e] == ["one", " two", " three", " four"]
    done = events[-1]
    assert done["done"] is True and done["meta"]["completion_tokens"] > 0
    _, answer = await stored(playground)
    assert answer.id == done["id"] and answer.content == "one two three four" and not answer.meta.get("stopped")
    (row,) = await usage_rows(playground, 1)
    assert (row["source"], row["stream"], row["status"]) == ("playground", True, 200)


async def test_stopping_keeps_the_partial_answer_and_ends_the_upstream_call(playground):
    upstream = playground.upstream
    upstream.reply = "a b c d e f g h"
    upstream.chunk_delay = 0.2
    token = await playground.csrf_token("/admin/")
    response = await playground.client.post(playground.conversation_url + "/messages",
                                            data={"content": "Go slowly", "csrf_token": token},
                                            headers={"Accept": "text/event-stream"})
    received = b""
    while received.count(b'"delta"') < 2:
        received += await response.content.readany()
    response.close()  # the Stop button: the browser aborts the request
    await asyncio.wait_for(upstream.client_went_away.wait(), 10)
    for _ in range(200):
        messages = await stored(playground)
        if len(messages) == 2:
            break
        await asyncio.sleep(0.02)
    answer = messages[1]
    assert answer.meta["stopped"] is True
    assert answer.content.startswith("a b") and answer.content != upstream.reply
    (row,) = await usage_rows(playground, 1)
    assert row["status"] == 499 and row["source"] == "playground"
    _, text = await playground.get(playground.conversation_url)
    assert "<strong>stopped</strong>" in text


async def test_assistant_limits_apply_and_failures_are_kept(playground):
    await assistants.update(playground.pool, playground.assistant.id,
                            **(playground.assistant.fields() | {"limits": Limits(rpm=1)}))
    status, _ = await send_streamed(playground, "first")
    assert status == 200
    status, body = await send_streamed(playground, "second")
    assert status == 429 and "limit" in body["error"]
    messages = await stored(playground)
    assert messages[-1].meta["error"] == body["error"] and messages[-1].meta["status"] == 429

    # The failed answer is not sent again as history.
    await assistants.update(playground.pool, playground.assistant.id,
                            **(playground.assistant.fields() | {"limits": Limits()}))
    await asyncio.sleep(0)  # (no cache listener in this app: it reads the database each time)
    response, text = await playground.post(playground.conversation_url + "/messages", {"content": "third"},
                                           csrf_from=playground.conversation_url)
    assert [m["content"] for m in playground.upstream.last["messages"] if m["role"] == "user"] == [
        "first", "second", "third"]
    assert "failed:" in text

    playground.upstream.error = (500, {"error": {"message": "upstream broke", "type": "server_error"}})
    status, body = await send_streamed(playground, "fourth")
    assert status == 502 or status == 500, body


async def test_rename_delete_and_one_team(playground, aiohttp_client):
    await playground.post(playground.conversation_url + "/messages", {"content": "Hi"},
                          csrf_from=playground.conversation_url)
    response, text = await playground.post(playground.conversation_url + "/rename", {"title": "  My   <test>  "},
                                           csrf_from=playground.conversation_url)
    assert response.status == 200 and "My &lt;test&gt;" in text

    # Another admin sees it (one team).
    await admins.create(playground.pool, "second", crypto.hash_password(ADMIN_PASSWORD))
    other = Panel(await aiohttp_client(playground.client.server))  # another browser, same gateway
    await other.login("second")
    _, listing = await other.get(f"/admin/assistants/{playground.assistant.id}/playground")
    assert "My &lt;test&gt;" in listing

    response, text = await other.get(playground.conversation_url + "/delete")
    assert response.status == 200 and "Delete conversation" in text
    response, _ = await other.post(playground.conversation_url + "/delete", csrf_from=playground.conversation_url)
    assert response.status == 200 and response.url.path.endswith("/playground")
    response, _ = await playground.get(playground.conversation_url)
    assert response.status == 404
    assert await playground.pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_every_playground_post_needs_the_csrf_token(playground):
    conversation = playground.conversation_url
    for path in (f"/admin/assistants/{playground.assistant.id}/conversations", conversation + "/messages",
                 conversation + "/rename", conversation + "/delete", "/admin/compare"):
        response, text = await playground.post(path, {"content": "x", "title": "x", "a": "x", "b": "x"}, csrf=False)
        assert response.status == 403 and "security token" in text, path
    assert await playground.pool.fetchval("SELECT count(*) FROM messages") == 0
    assert await playground.pool.fetchval("SELECT count(*) FROM conversations") == 1


async def test_compare_without_javascript_keeps_two_conversations(playground):
    other = await assistants.create(playground.pool, name="terse", provider_id=playground.assistant.provider_id,
                                    model="gpt-4o-mini", system_prompt="Be terse.")
    fields = {"a": str(playground.assistant.id), "b": str(other.id), "content": "Which is better?"}
    response, text = await playground.post("/admin/compare", fields, csrf_from="/admin/compare")
    assert response.status == 200 and text.count("Which is better?") == 2
    systems = [r["body"]["messages"][0]["content"] for r in playground.upstream.requests[-2:]]
    assert systems == ["You are the playground's test.", "Be terse."]
    kept = {key: value for key, value in response.url.query.items()}
    assert set(kept) == {"a", "b", "ca", "cb"}
    for side in ("ca", "cb"):
        assert len(await conversations.messages(playground.pool, kept[side])) == 2
    # The next message continues both conversations.
    response, _ = await playground.post("/admin/compare", fields | {"ca": kept["ca"], "cb": kept["cb"],
                                                                    "content": "Why?"}, csrf_from="/admin/compare")
    for side in ("ca", "cb"):
        assert len(await conversations.messages(playground.pool, kept[side])) == 4


async def test_the_usage_page_filters_the_playground(playground, configured):
    await playground.post(playground.conversation_url + "/messages", {"content": "Hi"},
                          csrf_from=playground.conversation_url)
    await usage_rows(playground, 1)
    for source, expected in (("playground", "1"), ("api", "0")):
        _, text = await playground.get(f"/admin/usage?source={source}")
        assert re.search(r"Requests</header><p class=\"big\">(\d+)<", text).group(1) == expected, source
    response, _ = await playground.get("/admin/usage?source=elsewhere")
    assert response.status == 400
    # Its calls are the admin's, not a failed authentication's.
    _, text = await playground.get("/admin/usage")
    assert "<td>Playground (root)</td>" in text and "(no valid key)" not in text


async def test_the_playground_starts_a_conversation_with_its_first_message(playground):
    assistant = playground.assistant
    response, text = await playground.post(f"/admin/assistants/{assistant.id}/conversations",
                                           {"content": "First words"}, csrf_from="/admin/")
    assert response.status == 200 and "/admin/conversations/" in response.url.path  # answered, then shown
    assert "First words" in text and playground.upstream.reply in text
    assert playground.upstream.last["messages"][-1] == {"role": "user", "content": "First words"}


async def test_the_api_never_touches_conversations(configured, fake_openai, db):
    """Calls of every kind through the API; PostgreSQL's own counters of the conversations and messages
    tables show no read and no write."""
    await db.execute("INSERT INTO conversations (title) VALUES ('kept')")  # rows the API could touch
    conversation_id = await db.fetchval("SELECT id FROM conversations")
    await db.execute("INSERT INTO messages (conversation_id, role, content) VALUES ($1, 'user', '\"hi\"')",
                     conversation_id)
    before = await table_counters(db)
    client = configured.client
    await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    stream = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True)
    assert [chunk async for chunk in stream]
    fake_openai.error = (500, {"error": {"message": "broken", "type": "server_error"}})
    import openai

    with pytest.raises(openai.APIStatusError):
        await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="x", messages=[])
    await configured.gateway.usage_rows(4)
    after = await table_counters(db, configured.gateway.pool)
    assert after == before


async def table_counters(db, *pools) -> dict:
    """Scans, rows read and rows written of the two tables, every connection's counts flushed first."""
    for pool in (db, *pools):
        await flush_statistics(pool)
    async with db.acquire() as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = await conn.fetch("""
            SELECT relname, seq_scan, coalesce(idx_scan, 0) AS idx_scan, n_tup_ins, n_tup_upd, n_tup_del,
                   seq_tup_read, coalesce(idx_tup_fetch, 0) AS idx_tup_fetch
            FROM pg_stat_user_tables WHERE relname IN ('conversations', 'messages') ORDER BY relname""")
    assert len(rows) == 2
    return {row["relname"]: dict(row) for row in rows}


async def flush_statistics(pool: asyncpg.Pool) -> None:
    """PostgreSQL 15 keeps each backend's table counts pending until it reports them (at most once a
    second, and when idle only after a while): every connection of the pool is made to report now
    (``pg_stat_force_next_flush()``, then a statement whose end reports)."""
    held = [await pool.acquire() for _ in range(pool.get_size())]
    try:
        for conn in held:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            await conn.execute("SELECT 1")
    finally:
        for conn in held:
            await pool.release(conn)


async def test_the_playground_fails_over_and_its_answers_are_transformed(
        install_plugin, aiohttp_client, settings, fake_openai):
    """The same pipeline as the API's: a primary that refuses connections gives way to its fallback, and
    an installed plugin's transformers rewrite the answers, streamed and whole."""
    from riceball_proxy import appkeys
    from riceball_proxy.app import create_app
    from riceball_proxy.db.assistants import Target
    from tests.support import free_port

    install_plugin("shout", "shout", "riceball-shout")
    app = create_app(settings.replace(plugins=frozenset({"shout"})))
    browser = Panel(await aiohttp_client(app))
    pool = app[appkeys.DATABASE].pool
    await admins.create(pool, "root", crypto.hash_password(ADMIN_PASSWORD))
    await browser.login()
    dead = await providers.create(pool, name="dead", type="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                                  connect_timeout=2)
    fake = await providers.create(pool, name="fake", type="openai", base_url=fake_openai.base_url)
    assistant = await assistants.create(pool, name="resilient", provider_id=dead.id, model="gpt-4o",
                                        fallbacks=[Target(fake.id, "gpt-4o-mini")])
    response, _ = await browser.post(f"/admin/assistants/{assistant.id}/conversations", csrf_from="/admin/")
    browser.conversation_url = response.url.path
    browser.pool = pool
    browser.app = app

    fake_openai.reply = "quiet words"
    status, events = await send_streamed(browser, "Hello")
    assert status == 200 and "".join(e.get("delta", "") for e in events) == "QUIET WORDS"
    assert events[-1]["meta"]["model"] == "gpt-4o-mini"
    await browser.post(browser.conversation_url + "/messages", {"content": "Again"}, csrf_from=browser.conversation_url)
    answers = [m for m in await stored(browser) if m.role == "assistant"]
    assert [a.content for a in answers] == ["QUIET WORDS", "QUIET WORDS"]
    assert fake_openai.last["model"] == "gpt-4o-mini"
    rows = await usage_rows(browser, 2)
    assert [(r["attempts"], r["provider_id"], r["source"]) for r in rows] == [(2, fake.id, "playground")] * 2
