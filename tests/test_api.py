"""The API through the official OpenAI SDK, against a fake upstream that is a real HTTP server."""
import asyncio
import base64

import aiohttp
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Say hello"}]


async def test_non_streamed_round_trip(configured):
    completion = await configured.client.chat.completions.create(model="anything", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from the fake upstream"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 5
    assert completion.model == "gpt-4o"
    headers = configured.upstream.requests[-1]["headers"]
    assert headers["Authorization"] == "Bearer sk-upstream-secret"


async def test_the_sync_sdk_works_too(configured):
    with configured.gateway.sync_client(configured.assistant.id, configured.key) as client:
        completion = await asyncio.to_thread(client.chat.completions.create, model="x", messages=MESSAGES)
        assert completion.choices[0].message.content == "Hello from the fake upstream"
        chunks = await asyncio.to_thread(
            lambda: list(client.chat.completions.create(model="x", messages=MESSAGES, stream=True))
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream"


async def test_streamed_round_trip_without_usage(configured):
    stream = await configured.client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake upstream"
    assert all(c.choices for c in chunks)  # the usage chunk the gateway asked for is not passed on
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert configured.upstream.last["stream_options"] == {"include_usage": True}


async def test_streamed_round_trip_with_usage(configured):
    stream = await configured.client.chat.completions.create(
        model="x", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7


async def test_a_stream_is_forwarded_as_it_is_generated(configured):
    configured.upstream.reply = "one two three"
    configured.upstream.chunk_delay = 0.3
    stream = await configured.client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices[0].delta.content == "one":
            # The upstream is still sleeping between chunks: the first word arrived before the rest existed.
            assert not configured.upstream.stream_finished.is_set()
            break
    await stream.close()


async def test_raw_sse_ends_with_done(configured):
    async with aiohttp.ClientSession() as session:
        async with session.post(
            configured.gateway.base_url(configured.assistant.id) + "/chat/completions",
            json={"model": "x", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {configured.key}"},
        ) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert response.headers["X-Request-ID"].startswith("req_")
            text = await response.text()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


async def test_tool_calls_non_streamed(configured):
    configured.upstream.tool_calls = [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    completion = await configured.client.chat.completions.create(
        model="x", messages=MESSAGES, tools=tools, tool_choice="auto"
    )
    calls = completion.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == configured.upstream.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert configured.upstream.last["tools"] == tools and configured.upstream.last["tool_choice"] == "auto"


async def test_tool_calls_streamed_in_fragments(configured):
    configured.upstream.tool_calls = [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')]
    stream = await configured.client.chat.completions.create(
        model="x", messages=MESSAGES, stream=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    calls: dict[int, dict] = {}
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
    assert [(c["name"], c["arguments"]) for c in calls.values()] == configured.upstream.tool_calls


async def test_images_and_multipart_content_are_forwarded_untouched(configured):
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake image").decode()
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": image, "detail": "high"}},
    ]
    tool_history = [
        {"role": "user", "content": content},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "a cat"}]},
    ]
    await configured.client.chat.completions.create(
        model="x", messages=tool_history, n=2, logprobs=True, top_logprobs=2, seed=11,
        response_format={"type": "json_object"}, user="u-1",
    )
    sent = configured.upstream.last
    assert sent["messages"] == tool_history
    assert (sent["n"], sent["logprobs"], sent["top_logprobs"], sent["seed"], sent["user"]) == (2, True, 2, 11, "u-1")
    assert sent["response_format"] == {"type": "json_object"}


async def test_models_list_and_retrieve(configured):
    models = await configured.client.models.list()
    assert [m.id for m in models.data] == ["gpt-4o"]
    assert (await configured.client.models.retrieve("gpt-4o")).id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as raised:
        await configured.client.models.retrieve("gpt-3")
    assert raised.value.code == "model_not_found"


async def test_the_client_model_is_ignored(configured):
    await configured.client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
    assert configured.upstream.last["model"] == "gpt-4o"


async def test_a_query_in_the_base_url_is_kept_for_azure_deployments(configured):
    provider = await configured.gateway.provider(configured.upstream.base_url + "?api-version=2024-10-21")
    assistant = await configured.gateway.assistant(provider)
    async with configured.gateway.client(assistant.id, configured.key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
    received = configured.upstream.requests[-1]
    assert received["path"] == "/v1/chat/completions" and received["query"] == {"api-version": "2024-10-21"}
    assert received["headers"]["api-key"] == "sk-upstream-secret"


async def test_usage_and_last_use_are_the_cores_whatever_plugins_are_disabled(start_gateway, settings, fake_openai):
    from riceball_proxy import appkeys
    from riceball_proxy.db import api_keys

    bare = settings.replace(disabled_plugins=frozenset({"riceball_proxy.builtin.injection",
                                                        "riceball_proxy.builtin.usage_recorder"}))
    gateway = await start_gateway(bare)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        stream = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0  # the client asked, and got it
    await gateway.app[appkeys.LAST_USED].flush()
    assert (await api_keys.list_all(gateway.pool))[0].last_used_at is not None


async def test_a_policy_that_edits_messages_never_changes_what_the_client_sent(start_gateway, settings, fake_openai):
    from riceball_proxy import hookimpl
    from riceball_proxy.plugins import make_plugin_manager

    seen = []

    class Redact:
        @hookimpl
        def riceball_prepare_request(self, ctx):
            for message in ctx.body["messages"]:
                if message["role"] == "user":
                    message["content"] = "[redacted]"
            seen.append(ctx.client_body["messages"][-1]["content"])

    pm = make_plugin_manager(settings, entry_points=False)
    pm.register(Redact(), name="redact")
    gateway = await start_gateway(settings, plugin_manager=pm)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "my secret"}])
    assert seen == ["my secret"] and fake_openai.last["messages"][-1]["content"] == "[redacted]"


async def test_a_reply_dumped_by_the_sdk_goes_back_into_the_history(configured):
    first = await configured.client.chat.completions.create(model="x", messages=MESSAGES)
    dumped = first.choices[0].message.model_dump()  # "tool_calls": None, "function_call": None, "audio": None...
    assert None in dumped.values()
    history = [*MESSAGES, dumped, {"role": "user", "content": "And again", "name": None}]
    second = await configured.client.chat.completions.create(model="x", messages=history)
    assert second.choices[0].message.content
    sent = configured.upstream.last["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert all(value is not None for message in sent for value in message.values())  # no null forwarded


@pytest.mark.parametrize("shout", [False, True])  # the fast path, and chunks parsed for a transformer
async def test_chunks_carry_usage_only_when_the_client_asked(start_gateway, settings, fake_openai, shout):
    from riceball_proxy.plugins import make_plugin_manager
    from tests.plugins import shout as shout_plugin

    pm = make_plugin_manager(settings, entry_points=False)
    if shout:
        pm.register(shout_plugin, name="shout")
    gateway = await start_gateway(settings, plugin_manager=pm)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    key = await gateway.key()
    url = gateway.base_url(assistant.id) + "/chat/completions"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.post(url, json={"messages": MESSAGES, "stream": True}) as response:
            events = (await response.read()).decode()
        assert fake_openai.last["stream_options"] == {"include_usage": True}  # the gateway asked
        assert '"usage"' not in events and events.count("data: ") == 8  # 7 chunks and [DONE]
        async with session.post(url, json={"messages": MESSAGES, "stream": True,
                                           "stream_options": {"include_usage": True}}) as response:
            events = (await response.read()).decode()
        assert events.count('"usage":null') == 7 and '"total_tokens"' in events
