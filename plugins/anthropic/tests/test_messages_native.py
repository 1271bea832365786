"""The Messages API of an assistant on Anthropic: the client's request passed through with the assistant
injected in Messages' own terms, the answer and events as Anthropic sent them. The official ``anthropic``
SDK on one side, the fake Anthropic API (which refuses what the real one refuses) on the other."""
import json
import types

import anthropic
import pytest

USER = [{"role": "user", "content": "Hi Claude"}]
BETAS = "claude-code-20250219,interleaved-thinking-2025-05-14,mid-conversation-system-2026-01-01"


@pytest.fixture
async def native(fake_anthropic, start_gateway, settings):
    """The fake Anthropic API, an assistant on it and an Anthropic SDK client of that assistant."""
    fake = fake_anthropic
    gateway = await start_gateway(settings.replace(plugins=frozenset({"anthropic"})))
    provider = await gateway.provider(fake.base_url, type="anthropic", api_key="sk-ant-secret")
    assistant = await gateway.assistant(provider, model="claude-sonnet-4-5", system_prompt="Be brief.",
                                        parameters={"max_tokens": 2000, "temperature": 0.2})
    key = await gateway.key()
    async with gateway.anthropic(assistant.id, key, default_headers={"anthropic-beta": BETAS}) as sdk:
        yield types.SimpleNamespace(fake=fake, gateway=gateway, assistant=assistant, key=key, sdk=sdk,
                                    provider=provider)


async def test_the_body_is_passed_through_with_the_assistant_first_and_the_cache_prefix_intact(native):
    client_system = [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}]
    message = await native.sdk.messages.create(
        model="claude-opus-9", max_tokens=16000, system=client_system, metadata={"user_id": "u-1"},
        messages=[*USER, {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": [{"type": "text", "text": "Again", "cache_control": {"type": "ephemeral"}}]}])
    assert message.content[0].text == "Hello from Claude" and message.id == "msg_01Fake"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (12, 3)  # as Anthropic said
    sent = native.fake.last
    assert sent["model"] == "claude-sonnet-4-5" and sent["max_tokens"] == 2000  # the ceiling
    assert sent["system"] == [{"type": "text", "text": "Be brief."}, *client_system]
    assert sent["messages"][2]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["metadata"] == {"user_id": "u-1"} and sent["temperature"] == 0.2
    headers = native.fake.requests[-1]["headers"]
    assert headers["x-api-key"] == "sk-ant-secret" and headers["anthropic-beta"] == BETAS
    assert native.key not in json.dumps(native.fake.requests[-1])
    rows = await native.gateway.usage_rows(1)
    assert (rows[-1]["prompt_tokens"], rows[-1]["cached_tokens"], rows[-1]["api"]) == (15, 3, "messages")


@pytest.mark.parametrize("stream", [False, True])
async def test_thinking_and_its_signature_come_back_unchanged_in_a_tool_loop(native, stream):
    native.fake.tool_uses = [("toolu_01", "Bash", {"command": "ls"})]
    request = {"model": "x", "max_tokens": 8000, "thinking": {"type": "enabled", "budget_tokens": 4000},
               "tools": [{"name": "Bash", "input_schema": {"type": "object", "properties": {}}}]}
    first = await _message(native.sdk, stream, messages=USER, **request)
    assert [block.type for block in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[0].signature in native.fake.signatures
    assert "temperature" not in native.fake.last  # not injected with thinking on
    native.fake.tool_uses = []
    history = [*USER, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "a.txt"}]},
               {"role": "system", "content": "A mid-conversation reminder."}]
    second = await _message(native.sdk, stream, messages=history, **request)
    assert second.content[-1].text == "Hello from Claude"  # the fake refuses a signature it did not issue
    assert native.fake.last["messages"][1]["content"][0]["signature"] == first.content[0].signature


async def _message(sdk, stream: bool, **request):
    if not stream:
        return await sdk.messages.create(**request)
    async with sdk.messages.stream(**request) as events:
        return await events.get_final_message()


async def test_a_stream_passes_anthropics_events_through_and_records_usage(native):
    async with native.sdk.messages.stream(model="x", max_tokens=100, messages=USER) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_stop" in kinds
    assert final.content[0].text == "Hello from Claude" and final.usage.output_tokens == 7
    rows = await native.gateway.usage_rows(1)
    assert (rows[-1]["prompt_tokens"], rows[-1]["completion_tokens"], rows[-1]["stream"]) == (15, 7, True)


async def test_a_thinking_budget_stays_below_the_max_tokens_ceiling(native):
    await native.sdk.messages.create(model="x", max_tokens=21000, messages=USER,
                                     thinking={"type": "enabled", "budget_tokens": 20000})
    assert native.fake.last["max_tokens"] == 2000 and native.fake.last["thinking"]["budget_tokens"] == 1999


async def test_anthropics_refusals_and_errors_reach_the_client_in_its_shape(native):
    with pytest.raises(anthropic.BadRequestError) as raised:
        await native.sdk.messages.create(model="x", max_tokens=100, messages=[
            *USER, {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "forged"},
                                                     {"type": "text", "text": "y"}]}, *USER])
    assert "signature" in raised.value.body["error"]["message"]
    native.fake.error = (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    with pytest.raises(anthropic.APIStatusError) as raised:
        await native.sdk.messages.create(model="x", max_tokens=100, messages=USER)
    assert raised.value.status_code == 529 and raised.value.body["error"]["type"] == "overloaded_error"
    native.fake.error, native.fake.error_after_deltas = None, 1
    with pytest.raises(anthropic.APIStatusError):
        async with native.sdk.messages.stream(model="x", max_tokens=100, messages=USER) as stream:
            async for _ in stream:
                pass


async def test_count_tokens_is_the_providers_own_count(native):
    counted = await native.sdk.messages.count_tokens(model="x", messages=USER)
    sent = native.fake.requests[-1]
    assert sent["path"] == "/v1/messages/count_tokens" and "max_tokens" not in sent["body"]
    assert sent["body"]["system"] == [{"type": "text", "text": "Be brief."}]
    assert counted.input_tokens == len(json.dumps(sent["body"], separators=(",", ":"))) // 4


@pytest.mark.parametrize("stream", [False, True])
async def test_an_anthropic_primary_fails_over_to_an_openai_fallback_translated(native, fake_openai, stream):
    from riceball_proxy.db.assistants import Target

    gateway = native.gateway
    openai_provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(native.provider, model="claude-sonnet-4-5", system_prompt="Be brief.",
                                        fallbacks=[Target(openai_provider.id, "o4-mini")])
    native.fake.error = (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    async with gateway.anthropic(assistant.id, native.key) as sdk:
        answer = await _message(sdk, stream, model="x", max_tokens=100, messages=USER,
                                thinking={"type": "enabled", "budget_tokens": 1024})
    assert answer.content[-1].text == "Hello from the fake upstream"
    sent = fake_openai.last
    assert sent["model"] == "o4-mini" and sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["reasoning_effort"] == "low"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_responses_api_is_bridged_to_anthropic(native, stream):
    native.fake.tool_uses = [("toolu_01", "exec_command", {"cmd": "ls"})]
    native.fake.reply = ""
    tool = {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {
        "cmd": {"type": "string"}}}}
    async with native.gateway.client(native.assistant.id, native.key) as client:
        if stream:
            async with client.responses.stream(model="x", input="List", tools=[tool], instructions="Be quick.") as s:
                response = await s.get_final_response()
        else:
            response = await client.responses.create(model="x", input="List", tools=[tool], instructions="Be quick.")
        call = response.output[-1]
        assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "exec_command", {"cmd": "ls"})
        assert native.fake.last["system"] == "Be brief.\n\nBe quick." and native.fake.last["max_tokens"] == 2000
        native.fake.tool_uses, native.fake.reply = [], "a.txt"
        answer = await client.responses.create(model="x", tools=[tool], input=[
            {"role": "user", "content": "List"}, call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "a.txt"}])
    assert answer.output_text == "a.txt"
    assert native.fake.last["messages"][-1]["content"][0]["type"] == "tool_result"


@pytest.mark.parametrize("stream", [False, True])
async def test_thinking_signatures_round_trip_through_the_responses_api(native, stream):
    """Codex's way: reasoning asked for, ``include: ["reasoning.encrypted_content"]``, the whole history
    resent; Anthropic gets its signed thinking back before the tool call, or refuses the turn."""
    native.fake.tool_uses, native.fake.reply = [("toolu_01", "exec_command", {"cmd": "ls"})], ""
    tool = {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {}}}
    request = {"model": "x", "tools": [tool], "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"],
               "max_output_tokens": 1500}
    async with native.gateway.client(native.assistant.id, native.key) as client:
        async def create(**more):
            if not stream:
                return await client.responses.create(**request, **more)
            async with client.responses.stream(**request, **more) as events:
                return await events.get_final_response()

        first = await create(input="List")
        assert native.fake.last["thinking"] == {"type": "enabled", "budget_tokens": 1499}  # below max_tokens (1500)
        reasoning, call = first.output[0], first.output[-1]
        assert reasoning.type == "reasoning" and reasoning.encrypted_content and call.type == "function_call"
        assert reasoning.content[0].text == "Let me think."
        native.fake.tool_uses, native.fake.reply = [], "a.txt"
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "a.txt"}
        second = await create(input=[{"role": "user", "content": "List"}, reasoning.model_dump(exclude_none=True),
                                     call.model_dump(exclude_none=True), output])
        assert second.output_text == "a.txt"
        turn = native.fake.last["messages"][1]["content"]
        assert turn[0]["type"] == "thinking" and turn[0]["signature"] in native.fake.signatures
        # A history without its thinking (another provider wrote it): the turn goes without thinking, no 400.
        third = await create(input=[{"role": "user", "content": "List"}, call.model_dump(exclude_none=True), output])
        assert third.output_text == "a.txt" and "thinking" not in native.fake.last


@pytest.mark.parametrize(("model", "locked", "client_thinking", "sent"), [
    # The assistant's default asks for thinking when the client asked nothing...
    ("claude-sonnet-4-5", False, None, {"thinking": {"type": "enabled", "budget_tokens": 1999}}),
    ("claude-sonnet-4-6", False, None, {"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}}),
    # ...leaves the client's own thinking alone...
    ("claude-sonnet-4-6", False, {"type": "adaptive"}, {"thinking": {"type": "adaptive"},
                                                        "output_config": {"effort": "low"}}),
    # ...and, locked, replaces it.
    ("claude-sonnet-4-6", True, {"type": "adaptive"}, {"thinking": {"type": "adaptive"},
                                                       "output_config": {"effort": "high"}}),
])
async def test_an_assistant_s_reasoning_effort_is_thinking_in_messages_own_terms(
        native, model, locked, client_thinking, sent):
    assistant = await native.gateway.assistant(native.provider, model=model,
                                               parameters={"max_tokens": 2000, "reasoning_effort": "high"},
                                               locked={"reasoning_effort"} if locked else set())
    # A client that does not think may set a temperature; thinking on, the gateway's doing, it goes.
    asked = {"temperature": 0.5} if client_thinking is None else {"thinking": client_thinking,
                                                                  "output_config": {"effort": "low"}}
    async with native.gateway.anthropic(assistant.id, native.key) as sdk:
        message = await sdk.messages.create(model="x", max_tokens=4000, messages=USER,
                                            extra_body=asked)
    assert message.content[0].type == "thinking"  # the fake refuses a thinking request it could not take
    assert {name: native.fake.last[name] for name in ("thinking", "output_config") if name in native.fake.last} == sent
    assert "temperature" not in native.fake.last


async def test_thinking_another_provider_wrote_is_left_out_for_anthropic(native):
    """A Messages history carrying a translated answer's thinking (signed by the gateway, from a Gemini or
    OpenAI turn after a failover) reaches Anthropic without it, and, that last tool turn then being
    without Anthropic's thinking, without a thinking budget (which Anthropic would refuse)."""
    from riceball_proxy.dialects.reasoning import encode_reasoning

    foreign = {"type": "thinking", "thinking": "hmm", "signature": encode_reasoning(
        [{"type": "reasoning.encrypted", "data": "gsig-0", "format": "google-gemini-v1", "id": "toolu_9"}])}
    history = [*USER, {"role": "assistant", "content": [foreign, {"type": "tool_use", "id": "toolu_9",
                                                                  "name": "get_weather", "input": {}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "18"}]}]
    message = await native.sdk.messages.create(model="x", max_tokens=4000, messages=history,
                                               thinking={"type": "enabled", "budget_tokens": 1024},
                                               tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
    assert message.content[-1].text == "Hello from Claude"
    sent = native.fake.last
    assert "thinking" not in sent
    assert [block["type"] for block in sent["messages"][1]["content"]] == ["tool_use"]
