"""The Anthropic provider through the gateway, the OpenAI SDK on one side and a fake Anthropic API on the other."""
import json
import types

import openai
import pytest

from riceball_anthropic.translate import to_anthropic

MESSAGES = [{"role": "user", "content": "Hi Claude"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
async def claude(fake_anthropic, start_gateway, settings):
    """The fake Anthropic API, an SDK client of an assistant on it, and the provider's adapter."""
    fake = fake_anthropic
    gateway = await start_gateway(settings.replace(plugins=frozenset({"anthropic"})))
    provider = await gateway.provider(fake.base_url, type="anthropic", api_key="sk-ant-secret")
    assistant = await gateway.assistant(provider, model="claude-sonnet-4-5", system_prompt="Be brief.")
    _, adapter = await gateway.cache.provider(provider.id)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        yield types.SimpleNamespace(fake=fake, client=client, adapter=adapter, gateway=gateway, assistant=assistant)


async def test_plain_text_with_usage(claude):
    fake, client = claude.fake, claude.client
    completion = await client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=100, temperature=1.5,
                                                      stop="END", user="u1")
    assert completion.choices[0].message.content == "Hello from Claude"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (15, 7)
    assert completion.usage.prompt_tokens_details.cached_tokens == 3
    sent = fake.last
    assert sent["system"] == "Be brief." and sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi Claude"}]}]
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("claude-sonnet-4-5", 100, 1.0)
    assert sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "u1"}
    headers = fake.requests[-1]["headers"]
    assert headers["x-api-key"] == "sk-ant-secret" and headers["anthropic-version"] == "2023-06-01"


async def test_streaming_with_usage(claude):
    fake, client = claude.fake, claude.client
    stream = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Claude"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 7 and chunks[-1].usage.prompt_tokens == 15
    assert fake.last["stream"] is True and fake.last["max_tokens"] == 4096


@pytest.mark.parametrize("uses", [
    [("toolu_1", "get_weather", {"city": "Paris"})],
    [("toolu_1", "get_weather", {"city": "Paris"}), ("toolu_2", "get_weather", {"city": "Rome"})],
])
async def test_tool_calls_non_streamed(claude, uses):
    fake, client = claude.fake, claude.client
    fake.reply = "Let me check."
    fake.tool_uses = uses
    completion = await client.chat.completions.create(model="x", messages=MESSAGES, tools=[WEATHER],
                                                      tool_choice="required", parallel_tool_calls=len(uses) > 1)
    calls = completion.choices[0].message.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == uses
    assert completion.choices[0].finish_reason == "tool_calls"
    assert fake.last["tools"] == [{"name": "get_weather", "description": "Weather of a city",
                                   "input_schema": WEATHER["function"]["parameters"]}]
    expected_choice = {"type": "any"} if len(uses) > 1 else {"type": "any", "disable_parallel_tool_use": True}
    assert fake.last["tool_choice"] == expected_choice


@pytest.mark.parametrize("uses", [
    [("toolu_1", "get_weather", {"city": "Paris"})],
    [("toolu_1", "get_weather", {"city": "Paris"}), ("toolu_2", "get_weather", {"city": "Rome"})],
])
async def test_tool_calls_streamed_in_fragments(claude, uses):
    fake, client = claude.fake, claude.client
    fake.reply = ""
    fake.tool_uses = uses
    stream = await client.chat.completions.create(model="x", messages=MESSAGES, tools=[WEATHER], stream=True)
    calls: dict[int, dict] = {}
    finish = None
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls.values()] == uses
    assert finish == "tool_calls"


async def test_a_tool_round_trip_is_translated(claude):
    fake, client = claude.fake, claude.client
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 degrees"},
    ]
    await client.chat.completions.create(model="x", messages=history, tools=[WEATHER])
    assert fake.last["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"}]},
    ]


async def test_an_image_input(claude):
    fake, client = claude.fake, claude.client
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    await client.chat.completions.create(model="x", messages=[{"role": "user", "content": content}])
    assert fake.last["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]


async def test_a_mid_stream_error_event(claude):
    fake, client = claude.fake, claude.client
    fake.reply = "one two three four"
    fake.error_after_deltas = 2
    stream = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert "one" in received and "Overloaded" in str(raised.value.message)


@pytest.mark.parametrize("status, error_type, exception, expected_status", [
    (400, "invalid_request_error", openai.BadRequestError, 400),
    (401, "authentication_error", openai.InternalServerError, 502),  # the gateway's key: upstream_auth_failed
    (429, "rate_limit_error", openai.RateLimitError, 429),
    (500, "api_error", openai.InternalServerError, 502),
    (529, "overloaded_error", openai.InternalServerError, 503),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_errors(claude, status, error_type, exception, expected_status, stream):
    fake, client = claude.fake, claude.client
    fake.error = (status, {"type": "error", "error": {"type": error_type, "message": "nope sk-ant-secret"}})
    with pytest.raises(exception) as raised:
        await client.chat.completions.create(model="x", messages=MESSAGES, stream=stream)
    assert raised.value.status_code == expected_status
    assert "sk-ant-secret" not in str(raised.value.body)


async def test_models_are_listed(claude):
    fake, client = claude.fake, claude.client
    assert [m.id for m in (await client.models.list()).data] == ["claude-sonnet-4-5"]  # the assistant's own
    models = await claude.adapter.list_models()
    assert [m["id"] for m in models] == ["claude-sonnet-4-5", "claude-haiku-4-5"]
    assert models[0]["created"] == 1759104000 and fake.requests[-1]["headers"]["x-api-key"] == "sk-ant-secret"


def test_more_than_one_choice_is_refused():
    with pytest.raises(Exception, match="n must be 1"):
        to_anthropic({"model": "m", "messages": MESSAGES, "n": 2})


@pytest.mark.parametrize("stream", [False, True])
async def test_an_openai_assistant_falls_back_to_claude(fake_anthropic, start_gateway, settings, fake_openai, stream):
    from riceball_proxy.db.assistants import Target

    fake = fake_anthropic
    gateway = await start_gateway(settings.replace(plugins=frozenset({"anthropic"})))
    openai_provider = await gateway.provider(fake_openai.base_url)
    claude_provider = await gateway.provider(fake.base_url, type="anthropic", api_key="sk-ant-secret")
    assistant = await gateway.assistant(openai_provider, model="gpt-4o-mini", system_prompt="Be brief.",
                                        parameters={"max_tokens": 64},
                                        fallbacks=[Target(claude_provider.id, "claude-haiku-4-5")])
    fake_openai.error = (503, {"error": {"message": "overloaded", "type": "server_error"}})
    async with gateway.client(assistant.id, await gateway.key()) as client:
        if stream:
            chunks = [c async for c in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True)]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = (await client.chat.completions.create(model="x", messages=MESSAGES)).choices[0].message.content
    assert text == "Hello from Claude"
    sent = fake.last  # the assistant's prompt and parameters, in Anthropic's terms, for Claude's model
    assert (sent["model"], sent["system"], sent["max_tokens"]) == ("claude-haiku-4-5", "Be brief.", 64)
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_thinking_tool_loop_survives_a_failover_to_openai_and_back(fake_anthropic, start_gateway, settings,
                                                                          fake_openai, stream):
    """Claude thinks and calls a tool; the next turn fails over to an OpenAI-compatible model (Anthropic
    overloaded), which calls another tool; the turn after goes to Claude again. Claude's signed thinking
    round-trips where it is Claude's; the turn OpenAI wrote has none, so that call goes without thinking
    (the fake, as Anthropic, refuses a thinking request whose last tool turn lacks it): never a 400."""
    from riceball_proxy.db.assistants import Target

    fake = fake_anthropic
    gateway = await start_gateway(settings.replace(plugins=frozenset({"anthropic"})))
    claude_provider = await gateway.provider(fake.base_url, type="anthropic", api_key="sk-ant-secret")
    openai_provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(claude_provider, model="claude-sonnet-4-5", parameters={"max_tokens": 5000},
                                        fallbacks=[Target(openai_provider.id, "gpt-5")])

    async def turn(client, history) -> dict:
        options = dict(model="x", messages=history, tools=[WEATHER], reasoning_effort="medium")
        if not stream:
            return (await client.chat.completions.create(**options)).choices[0].message.model_dump(exclude_none=True)
        message: dict = {"role": "assistant", "content": ""}
        async for chunk in await client.chat.completions.create(stream=True, **options):
            delta = chunk.choices[0].delta if chunk.choices else None
            if delta is None:
                continue
            message["content"] += delta.content or ""
            message.setdefault("reasoning_details", []).extend((delta.model_extra or {}).get("reasoning_details") or [])
            for call in delta.tool_calls or ():
                entry = message.setdefault("tool_calls", {}).setdefault(call.index, {
                    "id": call.id, "type": "function", "function": {"name": "", "arguments": ""}})
                entry["function"]["name"] += call.function.name or ""
                entry["function"]["arguments"] += call.function.arguments or ""
        message["tool_calls"] = list(message.get("tool_calls", {}).values())
        return {name: value for name, value in message.items() if value}

    history = [{"role": "user", "content": "Weather in Paris, then Rome?"}]
    async with gateway.client(assistant.id, await gateway.key()) as client:
        fake.tool_uses, fake.reply = [("toolu_1", "get_weather", {"city": "Paris"})], ""
        first = await turn(client, history)
        assert first["reasoning_details"][0]["signature"] in fake.signatures
        history += [first, {"role": "tool", "tool_call_id": "toolu_1", "content": "18"}]

        fake.error = (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        fake_openai.reply, fake_openai.tool_calls = "", [("get_weather", '{"city": "Rome"}')]
        second = await turn(client, history)  # served by the fallback
        assert second["tool_calls"][0]["function"]["name"] == "get_weather" and "reasoning_details" not in second
        assert fake_openai.last["reasoning_effort"] == "medium"
        history += [second, {"role": "tool", "tool_call_id": second["tool_calls"][0]["id"], "content": "21"}]

        fake.error, fake.tool_uses, fake.reply = None, [], "Paris 18, Rome 21."
        third = await turn(client, history)
    assert third["content"] == "Paris 18, Rome 21."
    sent = fake.last
    assert "thinking" not in sent  # the last tool turn is OpenAI's: no thinking of Claude's to send with it
    assert all(block["type"] != "thinking" for m in sent["messages"] for block in m["content"])
    # A later turn after a text answer thinks again, with the first turn's signed thinking accepted.
    history += [{"role": "assistant", "content": third["content"]}, {"role": "user", "content": "Thanks"}]
    fake.tool_uses, fake.reply = [], "You are welcome."
    async with gateway.client(assistant.id, await gateway.key()) as client:
        fourth = await turn(client, history)
    assert fourth["content"] == "You are welcome." and fake.last["thinking"]["type"] == "enabled"
    assert fake.last["messages"][1]["content"][0] == {"type": "thinking", "thinking": "Let me think.",
                                                      "signature": first["reasoning_details"][0]["signature"]}


async def test_thinking_comes_back_as_reasoning_details_and_goes_back_as_thinking(claude):
    fake, client = claude.fake, claude.client
    fake.tool_uses, fake.reply = [("toolu_1", "get_weather", {"city": "Paris"})], ""
    first = await client.chat.completions.create(model="x", messages=MESSAGES, tools=[WEATHER], max_tokens=5000,
                                                 reasoning_effort="medium", temperature=0.3)
    assert fake.last["thinking"] == {"type": "enabled", "budget_tokens": 4999} and "temperature" not in fake.last
    message = first.choices[0].message.model_dump(exclude_none=True)
    assert message["reasoning_content"] == "Let me think."
    assert message["reasoning_details"][0]["signature"] in fake.signatures
    fake.tool_uses, fake.reply = [], "18 degrees"
    history = [*MESSAGES, message, {"role": "tool", "tool_call_id": "toolu_1", "content": "18"}]
    second = await client.chat.completions.create(model="x", messages=history, tools=[WEATHER], max_tokens=5000,
                                                  reasoning_effort="medium")
    assert second.choices[0].message.content == "18 degrees"
    assert fake.last["messages"][1]["content"][0]["type"] == "thinking"


@pytest.mark.parametrize(("model", "effort", "sent"), [
    ("claude-sonnet-4-5", "low", {"thinking": {"type": "enabled", "budget_tokens": 2048}}),
    ("claude-sonnet-4-5", "xhigh", {"thinking": {"type": "enabled", "budget_tokens": 4095}}),  # below max_tokens
    ("claude-sonnet-4-6", "medium", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "medium"}}),
    ("claude-sonnet-4-6", "xhigh", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}}),
    ("claude-opus-4-6", "xhigh", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}),
    ("claude-opus-4-7", "minimal", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}),
    ("claude-opus-4-7", "none", {}),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_effort_is_each_claude_s_own_thinking(claude, model, effort, sent, stream):
    """A budget below max_tokens before Claude 4.6, adaptive thinking at an effort from then on (the fake
    refuses each form where the real API does); temperature left out with thinking on."""
    assistant = await claude.gateway.assistant(types.SimpleNamespace(id=claude.assistant.provider_id), model=model)
    async with claude.gateway.client(assistant.id, await claude.gateway.key()) as client:
        options = dict(model="x", messages=MESSAGES, reasoning_effort=effort, temperature=0.2)
        if stream:
            deltas = [chunk.choices[0].delta async for chunk in await client.chat.completions.create(
                stream=True, **options) if chunk.choices]
            reasoning = "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas)
        else:
            message = (await client.chat.completions.create(**options)).choices[0].message
            reasoning = getattr(message, "reasoning_content", None) or ""
    assert {name: claude.fake.last[name] for name in ("thinking", "output_config") if name in claude.fake.last} == sent
    assert ("temperature" in claude.fake.last) == (not sent)
    assert reasoning == ("Let me think." if sent else "")


@pytest.mark.parametrize("stream", [False, True])
async def test_cache_writes_are_counted_apart_and_priced_as_anthropic_charges_them(claude, stream):
    """claude-sonnet-4-5 (genai-prices): input $3, output $15, cache reads $0.30, 5-minute writes $3.75 and
    1-hour writes $6 per million tokens."""
    from decimal import Decimal

    claude.fake.usage = {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 1000,
                         "cache_creation_input_tokens": 2000,
                         "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500}}
    if stream:
        chunks = [c async for c in await claude.client.chat.completions.create(
            model="x", messages=MESSAGES, stream=True, stream_options={"include_usage": True})]
        usage = chunks[-1].usage
    else:
        usage = (await claude.client.chat.completions.create(model="x", messages=MESSAGES)).usage
    assert usage.prompt_tokens == 3100 and usage.prompt_tokens_details.cached_tokens == 1000
    row = (await claude.gateway.usage_rows(1))[-1]
    assert (row["prompt_tokens"], row["cached_tokens"], row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (
        3100, 1000, 2000, 500)
    by_hand = (3 * 100 + Decimal("0.3") * 1000 + Decimal("3.75") * 1500 + 6 * 500 + 15 * 50) / 1_000_000
    assert row["cost_usd"] == by_hand
    from riceball_proxy import appkeys

    registry = claude.gateway.app[appkeys.METRICS].registry
    counted = {kind: registry.get_sample_value("riceball_tokens_total", {"assistant": str(claude.assistant.id),
                                                                        "kind": kind})
               for kind in ("prompt", "completion", "cache_read", "cache_write")}
    assert counted == {"prompt": 3100, "completion": 50, "cache_read": 1000, "cache_write": 2000}


async def test_cache_control_reaches_anthropic_on_the_same_blocks_four_at_most(claude):
    fake, client = claude.fake, claude.client
    ephemeral = {"type": "ephemeral"}
    tool = {**WEATHER, "cache_control": ephemeral}
    messages = [{"role": "system", "content": [{"type": "text", "text": "A long, stable prompt.",
                                                "cache_control": ephemeral}]},
                *[{"role": role, "content": [{"type": "text", "text": f"turn {n}", "cache_control": ephemeral}]}
                  for n, role in enumerate(["user", "assistant", "user", "assistant", "user"])]]
    await client.chat.completions.create(model="x", messages=messages, tools=[tool])  # 7 asked: 4 kept
    sent = fake.last
    assert sent["system"] == [{"type": "text", "text": "Be brief."},
                              {"type": "text", "text": "A long, stable prompt."}]  # the oldest lost theirs
    assert "cache_control" not in sent["tools"][0]
    marked = [block["text"] for turn in sent["messages"] for block in turn["content"] if "cache_control" in block]
    assert marked == ["turn 1", "turn 2", "turn 3", "turn 4"]
    await client.chat.completions.create(model="x", messages=messages[:2], tools=[tool])
    assert fake.last["tools"][0]["cache_control"] == ephemeral
    assert fake.last["system"][1]["cache_control"] == ephemeral
    assert fake.last["messages"][0]["content"][0]["cache_control"] == ephemeral


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
                  "required": ["city", "celsius"], "additionalProperties": False}


async def structured_answer(client, stream: bool, **options) -> tuple[str, str]:
    """The text and finish reason of a chat answer, streamed or not."""
    options = dict(model="x", messages=MESSAGES) | options
    if not stream:
        choice = (await client.chat.completions.create(**options)).choices[0]
        assert not choice.message.tool_calls
        return choice.message.content, choice.finish_reason
    chunks = [chunk async for chunk in await client.chat.completions.create(stream=True, **options) if chunk.choices]
    assert not any(chunk.choices[0].delta.tool_calls for chunk in chunks)
    return "".join(c.choices[0].delta.content or "" for c in chunks), [c.choices[0].finish_reason for c in chunks][-1]


@pytest.mark.parametrize(("model", "form", "sent"), [
    ("claude-sonnet-4-5", "json_schema", "output_config"),   # Claude's own structured output
    ("claude-3-5-haiku-latest", "json_schema", "tool"),      # before 4.5: a tool it must call
    ("claude-sonnet-4-5", "json_object", "tool"),            # any JSON object: a tool of open input
])
@pytest.mark.parametrize("stream", [False, True])
async def test_response_format_reaches_claude_in_its_own_form_and_comes_back_as_text(claude, model, form, sent,
                                                                                   stream):
    assistant = await claude.gateway.assistant(types.SimpleNamespace(id=claude.assistant.provider_id), model=model)
    response_format = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA}} \
        if form == "json_schema" else {"type": "json_object"}
    async with claude.gateway.client(assistant.id, await claude.gateway.key()) as client:
        text, finish = await structured_answer(client, stream, response_format=response_format)
    assert json.loads(text) == {"city": "Paris", "celsius": 18} and finish == "stop"
    body = claude.fake.last
    if sent == "output_config":
        assert body["output_config"] == {"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}}
        assert "tools" not in body
    else:
        assert body["tools"] == [{"name": "structured_answer", "description": "Give the answer as this tool's input.",
                                  "input_schema": WEATHER_SCHEMA if form == "json_schema" else {"type": "object"}}]
        assert body["tool_choice"] == {"type": "tool", "name": "structured_answer"} and "output_config" not in body


async def test_a_structured_answer_beside_the_client_s_tools_lets_the_model_choose(claude):
    assistant = await claude.gateway.assistant(types.SimpleNamespace(id=claude.assistant.provider_id),
                                               model="claude-3-5-haiku-latest")
    async with claude.gateway.client(assistant.id, await claude.gateway.key()) as client:
        text, _ = await structured_answer(client, False, tools=[WEATHER], reasoning_effort="low",
                                          response_format={"type": "json_schema", "json_schema": {
                                              "name": "weather", "schema": WEATHER_SCHEMA}})
    assert json.loads(text) == {"city": "Paris", "celsius": 18}
    body = claude.fake.last
    assert [tool["name"] for tool in body["tools"]] == ["get_weather", "structured_answer"]
    assert body["tool_choice"] == {"type": "any"} and "thinking" not in body  # no forced tool while thinking


@pytest.mark.parametrize("stream", [False, True])
async def test_the_responses_api_s_text_format_reaches_claude_as_structured_output(claude, stream):
    request = dict(model="x", input="Weather in Paris?", text={"format": {
        "type": "json_schema", "name": "weather", "schema": WEATHER_SCHEMA, "strict": True}})
    if stream:
        async with claude.client.responses.stream(**request) as events:
            response = await events.get_final_response()
    else:
        response = await claude.client.responses.create(**request)
    assert json.loads(response.output_text) == {"city": "Paris", "celsius": 18}
    assert claude.fake.last["output_config"] == {"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}}
