"""The Anthropic Messages API of an assistant whose provider speaks Chat Completions (translated), with the
official ``anthropic`` SDK as the client and the fake OpenAI upstream (which refuses tool names out of
OpenAI's pattern and tool messages that answer nothing)."""
import json

import anthropic
import pytest

USER = [{"role": "user", "content": "Hi"}]
BASH = {"name": "Bash", "description": "Run a command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"],
                         "additionalProperties": False}}
MCP_NAME = "mcp__a_server_with_a_long_name__and_a_tool.with.dots_whose_name_is_long"


@pytest.fixture
async def translated(start_gateway, settings, fake_openai):
    """A gateway, an assistant on the fake OpenAI upstream, and an Anthropic SDK client of it."""
    gateway = await start_gateway(settings)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider, system_prompt="You are RiceBall's helper.",
                                        parameters={"temperature": 0.3, "max_tokens": 500})
    key = await gateway.key()
    async with gateway.anthropic(assistant.id, key) as client:
        gateway.assistant_, gateway.key_, gateway.sdk = assistant, key, client
        yield gateway


async def test_a_message_is_answered_with_the_assistant_injected(translated, fake_openai):
    message = await translated.sdk.messages.create(model="claude-whatever", max_tokens=1000, messages=USER,
                                                   system=[{"type": "text", "text": "x-anthropic-billing-header: "
                                                            "cc_version=2; cch=1;"},
                                                           {"type": "text", "text": "Be terse.",
                                                            "cache_control": {"type": "ephemeral"}}])
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello from the fake upstream" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0
    sent = fake_openai.last
    assert sent["model"] == translated.assistant_.model  # the client's model is ignored
    assert sent["messages"][0] == {"role": "system", "content": "You are RiceBall's helper."}
    assert sent["messages"][1] == {"role": "system", "content": "Be terse."}  # the billing line left out
    assert sent["messages"][2] == {"role": "user", "content": "Hi"}
    assert sent["max_tokens"] == 500 and sent["temperature"] == 0.3  # the ceiling and a default
    assert "cache_control" not in json.dumps(sent)


async def test_a_stream_has_every_event_claude_code_needs_and_usage_once_known(translated, fake_openai):
    events = []
    async with translated.sdk.messages.stream(model="x", max_tokens=100, messages=USER) as stream:
        async for event in stream:
            events.append(event.type)
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events and "message_delta" in events
    assert final.content[0].text == "Hello from the fake upstream" and text == ""  # the events were read already
    async with translated.sdk.messages.stream(model="x", max_tokens=100, messages=USER) as stream:
        assert "".join([piece async for piece in stream.text_stream]) == "Hello from the fake upstream"
    assert final.usage.output_tokens == 5 and final.stop_reason == "end_turn"
    assert fake_openai.last["stream"] is True and fake_openai.last["stream_options"] == {"include_usage": True}
    rows = await translated.usage_rows(1)
    assert rows[-1]["completion_tokens"] == 5 and rows[-1]["api"] == "messages" and rows[-1]["status"] == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_use_loop_is_translated_both_ways(translated, fake_openai, stream):
    fake_openai.tool_calls = [(BASH["name"], '{"command": "ls"}')]
    first = await _message(translated.sdk, stream, max_tokens=100, messages=USER, tools=[BASH])
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert (use.type, use.name, use.input) == ("tool_use", "Bash", {"command": "ls"})
    assert fake_openai.last["tools"] == [{"type": "function", "function": {
        "name": "Bash", "description": "Run a command", "parameters": BASH["input_schema"]}}]

    fake_openai.tool_calls = []
    history = [*USER, {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "a.txt\nb.txt",
                                             "cache_control": {"type": "ephemeral"}},
                                            {"type": "text", "text": "What did you find?"}]}]
    second = await _message(translated.sdk, stream, max_tokens=100, messages=history, tools=[BASH])
    assert second.content[0].text == "Hello from the fake upstream"
    sent = fake_openai.last["messages"]
    assert sent[-3]["tool_calls"][0]["id"] == use.id
    assert sent[-2] == {"role": "tool", "tool_call_id": use.id, "content": "a.txt\nb.txt"}  # before the user's text
    assert sent[-1] == {"role": "user", "content": [{"type": "text", "text": "What did you find?"}]}


@pytest.mark.parametrize("stream", [False, True])
async def test_two_tool_calls_at_once_are_two_tool_use_blocks(translated, fake_openai, stream):
    fake_openai.tool_calls = [("Bash", '{"command": "ls"}'), ("Bash", '{"command": "pwd"}')]
    answer = await _message(translated.sdk, stream, max_tokens=100, messages=USER, tools=[BASH])
    uses = [block for block in answer.content if block.type == "tool_use"]
    assert [use.input for use in uses] == [{"command": "ls"}, {"command": "pwd"}]
    assert len({use.id for use in uses}) == 2 and answer.stop_reason == "tool_use"


async def _message(sdk, stream: bool, **request):
    if not stream:
        return await sdk.messages.create(model="x", **request)
    async with sdk.messages.stream(model="x", **request) as events:
        return await events.get_final_message()


async def test_tool_names_openai_refuses_are_mapped_there_and_back(translated, fake_openai):
    tool = {**BASH, "name": MCP_NAME}
    sent_name = None

    fake_openai.tool_calls = [("placeholder", '{"command": "pwd"}')]
    await translated.sdk.messages.create(model="x", max_tokens=100, messages=USER, tools=[tool])
    sent_name = fake_openai.last["tools"][0]["function"]["name"]
    assert len(sent_name) <= 64 and sent_name != MCP_NAME
    fake_openai.tool_calls = [(sent_name, '{"command": "pwd"}')]
    for stream in (False, True):
        answer = await _message(translated.sdk, stream, max_tokens=100, messages=USER, tools=[tool],
                                tool_choice={"type": "tool", "name": MCP_NAME})
        assert answer.content[-1].name == MCP_NAME and answer.content[-1].input == {"command": "pwd"}
    assert fake_openai.last["tool_choice"] == {"type": "function", "function": {"name": sent_name}}


async def test_images_system_messages_thinking_and_efforts_are_translated(translated, fake_openai):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    await translated.sdk.messages.create(
        model="x", max_tokens=100, thinking={"type": "adaptive"}, extra_body={"output_config": {"effort": "max"}},
        messages=[{"role": "user", "content": [image, {"type": "text", "text": ""}, {"type": "text", "text": "What?"}]},
                  {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                                    {"type": "text", "text": "A dot."}]},
                  {"role": "system", "content": "Mind the dots."},
                  {"role": "user", "content": "Sure?"}])
    sent = fake_openai.last
    assert sent["messages"][1]["content"] == "Mind the dots."  # a system message joins the system prompt
    assert sent["messages"][2]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "What?"}]  # the empty text block dropped
    assert sent["messages"][3] == {"role": "assistant", "content": "A dot."}  # thinking is the provider's own
    assert "thinking" not in sent and "output_config" not in sent
    # gpt-4o takes no reasoning_effort: asked again without it, and later calls leave it out at once
    assert [r["body"].get("reasoning_effort") for r in fake_openai.requests[-2:]] == ["high", None]
    asked = len(fake_openai.requests)
    await translated.sdk.messages.create(model="x", max_tokens=100, messages=USER, thinking={"type": "adaptive"},
                                         extra_body={"output_config": {"effort": "low"}})
    assert len(fake_openai.requests) == asked + 1 and "reasoning_effort" not in fake_openai.last


async def test_a_model_that_reasons_gets_the_effort(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), model="o4-mini")
    async with gateway.anthropic(assistant.id, await gateway.key()) as client:
        await client.messages.create(model="x", max_tokens=5000, messages=USER,
                                     thinking={"type": "enabled", "budget_tokens": 2000})
    assert fake_openai.last["reasoning_effort"] == "medium" and len(fake_openai.requests) == 1


@pytest.mark.parametrize("request_, param", [
    ({"messages": USER}, "max_tokens"),
    ({"max_tokens": 10, "messages": []}, "messages"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
     "messages.0.content"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_nobody", "content": "x"}]}]}, "messages.0.content.0.tool_use_id"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}]},
     "messages.0.content.0"),
    ({"max_tokens": 10, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
])
async def test_bad_input_is_a_400_naming_the_field_in_anthropics_shape(translated, fake_openai, request_, param):
    asked = len(fake_openai.requests)
    with pytest.raises(anthropic.BadRequestError) as raised:
        # The SDK's own post: messages.create() refuses some of these before sending them.
        await translated.sdk.post("/v1/messages", body={"model": "x", **request_}, cast_to=anthropic.types.Message)
    error = raised.value
    assert error.status_code == 400 and error.body["type"] == "error"
    assert error.body["error"]["type"] == "invalid_request_error" and error.body["error"]["message"].startswith(param)
    assert error.body["request_id"] and error.response.headers["request-id"] == error.body["request_id"]
    assert len(fake_openai.requests) == asked  # nothing went upstream
    rows = await translated.usage_rows(1)
    assert rows[-1]["status"] == 400 and rows[-1]["api"] == "messages"


async def test_errors_raise_the_sdks_typed_exceptions(translated, fake_openai):
    gateway = translated
    async with gateway.anthropic(gateway.assistant_.id, "sk-wrong") as wrong:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await wrong.messages.create(model="x", max_tokens=10, messages=USER)
    assert raised.value.body["error"]["type"] == "authentication_error"
    fake_openai.error = (429, {"error": {"message": "Slow down", "type": "rate_limit_error", "code": None}})
    fake_openai.error_headers = {"Retry-After": "7"}
    with pytest.raises(anthropic.RateLimitError) as raised:
        await gateway.sdk.messages.create(model="x", max_tokens=10, messages=USER)
    assert raised.value.body["error"]["type"] == "rate_limit_error" and raised.value.response.headers["retry-after"]
    fake_openai.error = (503, {"error": {"message": "busy", "type": "server_error", "code": None}})
    with pytest.raises(anthropic.APIStatusError) as raised:
        await gateway.sdk.messages.create(model="x", max_tokens=10, messages=USER)
    assert raised.value.status_code == 502 and raised.value.body["error"]["type"] == "api_error"


async def test_a_failure_after_the_first_byte_is_one_error_event(translated, fake_openai):
    import aiohttp

    fake_openai.fail_after_chunks = 3
    with pytest.raises(anthropic.APIStatusError):
        async with translated.sdk.messages.stream(model="x", max_tokens=10, messages=USER) as stream:
            async for _ in stream:
                pass
    url = translated.url(f"/api/v1/assistants/{translated.assistant_.id}/v1/messages")
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"model": "x", "max_tokens": 10, "messages": USER, "stream": True},
                                headers={"x-api-key": translated.key_, "anthropic-version": "2023-06-01"}) as response:
            assert response.status == 200
            events = (await response.text()).strip().split("\n\n")
    assert events[0].startswith("event: message_start") and "event: message_stop" not in events[-1]
    kind, data = events[-1].split("\n")
    assert kind == "event: error" and json.loads(data.removeprefix("data: "))["error"]["type"] == "api_error"
    rows = await translated.usage_rows(2)
    assert rows[-1]["status"] == 502 and rows[-1]["api"] == "messages"


async def test_keys_may_come_as_x_api_key_or_bearer_and_scopes_hold(translated, fake_openai):
    import anthropic as sdk

    gateway = translated
    async with sdk.AsyncAnthropic(base_url=gateway.url(f"/api/v1/assistants/{gateway.assistant_.id}"),
                                  auth_token=gateway.key_, max_retries=0) as bearer:
        assert (await bearer.messages.create(model="x", max_tokens=10, messages=USER)).content
    other = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    scoped = await gateway.key(assistant_ids=[other.id])
    async with gateway.anthropic(gateway.assistant_.id, scoped) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as raised:
            await client.messages.create(model="x", max_tokens=10, messages=USER)
    assert raised.value.body["error"]["type"] == "permission_error"


async def test_limits_refuse_with_anthropics_429(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key(rpm=1)
    async with gateway.anthropic(assistant.id, key) as client:
        await client.messages.create(model="x", max_tokens=10, messages=USER)
        with pytest.raises(anthropic.RateLimitError) as raised:
            await client.messages.create(model="x", max_tokens=10, messages=USER)
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert int(raised.value.response.headers["retry-after"]) >= 1


async def test_count_tokens_estimates_on_the_high_side_with_the_system_prompt(translated):
    counted = await translated.sdk.messages.count_tokens(model="x", messages=[{"role": "user", "content": "word " * 300}])
    assert counted.input_tokens >= 300 + len("You are RiceBall's helper.") // 4


async def test_the_base_url_probe_and_the_models_list_in_anthropics_shape(translated):
    import aiohttp

    base = translated.url(f"/api/v1/assistants/{translated.assistant_.id}")
    async with aiohttp.ClientSession() as session:
        async with session.head(base) as head:
            assert head.status == 200
    models = await translated.sdk.models.list()
    assert [model.id for model in models.data] == [translated.assistant_.model]
    assert models.data[0].type == "model" and models.data[0].display_name == translated.assistant_.name
    async with translated.client(translated.assistant_.id, translated.key_) as openai_client:  # OpenAI's shape
        assert (await openai_client.models.list()).data[0].object == "model"


async def test_claude_codes_session_fills_the_prompt_cache_key(translated, fake_openai):
    await translated.sdk.messages.create(model="x", max_tokens=10, messages=USER,
                                         extra_headers={"X-Claude-Code-Session-Id": "session-1234"})
    assert fake_openai.last["prompt_cache_key"] == "session-1234"
    await translated.sdk.messages.create(model="x", max_tokens=10, messages=USER)
    assert "prompt_cache_key" not in fake_openai.last


async def test_structured_output_reaches_an_openai_provider_as_response_format(translated, fake_openai):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    await translated.sdk.messages.create(model="x", max_tokens=100, messages=USER,
                                         extra_body={"output_config": {"format": {"type": "json_schema",
                                                                                  "schema": schema}}})
    assert fake_openai.last["response_format"] == {"type": "json_schema",
                                                   "json_schema": {"name": "output", "schema": schema}}
