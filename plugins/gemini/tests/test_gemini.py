"""The Gemini provider through the gateway: the OpenAI SDK on one side, a fake Gemini API on the other."""
import json
import types

import openai
import pytest
from fake_gemini import FakeGemini

MESSAGES = [{"role": "user", "content": "Hi Gemini"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
async def gemini(aiohttp_server, start_gateway, settings):
    """The fake Gemini API, an SDK client of an assistant on it, and the provider's adapter."""
    fake = FakeGemini()
    server = await aiohttp_server(fake.app())
    gateway = await start_gateway(settings.replace(plugins=frozenset({"gemini"})))
    provider = await gateway.provider(str(server.make_url("/v1beta")), type="gemini", api_key="AIza-secret")
    assistant = await gateway.assistant(provider, model="gemini-2.5-flash", system_prompt="Be brief.")
    _, adapter = await gateway.cache.provider(provider.id)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        yield types.SimpleNamespace(fake=fake, client=client, adapter=adapter, gateway=gateway, provider=provider)


async def test_plain_text_with_usage(gemini):
    fake, client = gemini.fake, gemini.client
    completion = await client.chat.completions.create(
        model="x", messages=MESSAGES, max_tokens=64, temperature=0.4, top_p=0.9, stop=["END"], seed=5, n=1,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}})
    assert completion.choices[0].message.content == "Hello from Gemini"
    assert getattr(completion.choices[0].message, "reasoning_content", None) is None  # no thoughts asked
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (9, 4, 13)
    assert completion.usage.prompt_tokens_details.cached_tokens == 2
    request = fake.requests[-1]
    assert (request["model"], request["method"]) == ("gemini-2.5-flash", "generateContent")
    assert request["headers"]["x-goog-api-key"] == "AIza-secret"
    assert request["body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert request["body"]["contents"] == [{"role": "user", "parts": [{"text": "Hi Gemini"}]}]
    assert request["body"]["generationConfig"] == {
        "temperature": 0.4, "topP": 0.9, "candidateCount": 1, "seed": 5, "maxOutputTokens": 64,
        "stopSequences": ["END"], "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}}


async def test_streaming_with_usage(gemini):
    fake, client = gemini.fake, gemini.client
    stream = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Gemini"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 13
    assert (fake.requests[-1]["method"], fake.requests[-1]["query"]) == ("streamGenerateContent", {"alt": "sse"})


@pytest.mark.parametrize("calls", [
    [("get_weather", {"city": "Paris"})],
    [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})],
])
@pytest.mark.parametrize("stream", [False, True])
async def test_function_calls(gemini, calls, stream):
    fake, client = gemini.fake, gemini.client
    fake.reply = ""
    fake.function_calls = calls
    options = dict(model="x", messages=MESSAGES, tools=[WEATHER], tool_choice={"type": "function",
                                                                                "function": {"name": "get_weather"}})
    if stream:
        received: dict[int, dict] = {}
        finish = None
        async for chunk in await client.chat.completions.create(stream=True, **options):
            for call in chunk.choices[0].delta.tool_calls or []:
                entry = received.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        result = list(received.values())
    else:
        completion = await client.chat.completions.create(**options)
        finish = completion.choices[0].finish_reason
        result = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                  for c in completion.choices[0].message.tool_calls]
    assert [(c["name"], json.loads(c["arguments"])) for c in result] == calls
    assert all(c["id"].startswith("call_") for c in result) and len({c["id"] for c in result}) == len(result)
    assert finish == "tool_calls"
    assert fake.last["tools"] == [{"functionDeclarations": [{"name": "get_weather", "description": "Weather of a city",
                                                              "parameters": WEATHER["function"]["parameters"]}]}]
    assert fake.last["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


async def test_a_function_round_trip_is_translated(gemini):
    fake, client = gemini.fake, gemini.client
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 18}'},
    ]
    await client.chat.completions.create(model="x", messages=history, tools=[WEATHER])
    assert fake.last["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                     # a history Gemini did not write: Google's documented stand-in
                                     "thoughtSignature": "skip_thought_signature_validator"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"celsius": 18}}}]},
    ]


async def test_an_image_input(gemini):
    fake, client = gemini.fake, gemini.client
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGR"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    await client.chat.completions.create(model="x", messages=[{"role": "user", "content": content}])
    assert fake.last["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/webp", "data": "UklGR"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}},
    ]


async def test_a_mid_stream_error(gemini):
    fake, client = gemini.fake, gemini.client
    fake.reply = "one two three four"
    fake.error_after_chunks = 2
    received = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert "one" in received and "Internal error encountered." in raised.value.message


@pytest.mark.parametrize("status, google_status, exception, expected", [
    (400, "INVALID_ARGUMENT", openai.BadRequestError, 400),
    (403, "PERMISSION_DENIED", openai.InternalServerError, 502),  # the gateway's key: upstream_auth_failed
    (429, "RESOURCE_EXHAUSTED", openai.RateLimitError, 429),
    (500, "INTERNAL", openai.InternalServerError, 502),
    (503, "UNAVAILABLE", openai.InternalServerError, 503),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_errors(gemini, status, google_status, exception, expected, stream):
    fake, client = gemini.fake, gemini.client
    fake.error = (status, {"error": {"code": status, "message": "no: key AIza-secret", "status": google_status}})
    with pytest.raises(exception) as raised:
        await client.chat.completions.create(model="x", messages=MESSAGES, stream=stream)
    assert raised.value.status_code == expected
    assert raised.value.code == ("upstream_auth_failed" if status == 403 else google_status)
    assert "AIza-secret" not in str(raised.value.body)


async def test_models_are_listed(gemini):
    models = await gemini.adapter.list_models()
    assert [m["id"] for m in models] == ["gemini-2.5-flash"]  # embedding models cannot chat


@pytest.mark.parametrize("stream", [False, True])
async def test_the_responses_api_is_bridged_to_gemini(gemini, stream):
    fake, client = gemini.fake, gemini.client
    fake.reply = ""
    fake.function_calls = [("get_weather", {"city": "Paris"})]
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    if stream:
        async with client.responses.stream(model="x", input="Weather in Paris?", tools=[tool]) as events:
            response = await events.get_final_response()
    else:
        response = await client.responses.create(model="x", input="Weather in Paris?", tools=[tool])
    call = response.output[-1]
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Paris"})
    assert fake.last["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    fake.reply, fake.function_calls = "18 degrees", []
    answer = await client.responses.create(model="x", tools=[tool], input=[
        {"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 18}'}])
    assert answer.output_text == "18 degrees"
    assert fake.last["contents"][-1] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"celsius": 18}}}]}


@pytest.mark.parametrize("stream", [False, True])
async def test_thought_signatures_come_back_on_the_tool_calls_and_go_back_to_gemini(gemini, stream):
    fake, client = gemini.fake, gemini.client
    fake.reply, fake.function_calls = "", [("get_weather", {"city": "Paris"})]
    if stream:
        calls: dict[int, dict] = {}
        async for chunk in await client.chat.completions.create(model="x", messages=MESSAGES, tools=[WEATHER],
                                                                stream=True):
            for call in chunk.choices[0].delta.tool_calls or []:
                calls.setdefault(call.index, call.model_dump(exclude_none=True))
        call = calls[0]
    else:
        answer = await client.chat.completions.create(model="x", messages=MESSAGES, tools=[WEATHER])
        call = answer.choices[0].message.tool_calls[0].model_dump(exclude_none=True)
    signature = call["extra_content"]["google"]["thought_signature"]
    assert signature in fake.signatures
    fake.reply, fake.function_calls = "18 degrees", []
    history = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": call["id"], "content": "18"}]
    again = await client.chat.completions.create(model="x", messages=history, tools=[WEATHER])
    assert again.choices[0].message.content == "18 degrees"
    assert fake.last["contents"][1]["parts"][0]["thoughtSignature"] == signature


@pytest.mark.parametrize("stream", [False, True])
async def test_thought_signatures_round_trip_through_the_responses_api(gemini, stream):
    fake, client = gemini.fake, gemini.client
    fake.reply, fake.function_calls = "", [("get_weather", {"city": "Paris"})]
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    request = {"model": "x", "tools": [tool], "include": ["reasoning.encrypted_content"]}

    async def create(**more):
        if not stream:
            return await client.responses.create(**request, **more)
        async with client.responses.stream(**request, **more) as events:
            return await events.get_final_response()

    first = await create(input="Weather in Paris?")
    call = next(item for item in first.output if item.type == "function_call")
    reasoning = next(item for item in first.output if item.type == "reasoning")
    assert reasoning.encrypted_content
    fake.reply, fake.function_calls = "18 degrees", []
    second = await create(input=[{"role": "user", "content": "Weather in Paris?"},
                                 call.model_dump(exclude_none=True), reasoning.model_dump(exclude_none=True),
                                 {"type": "function_call_output", "call_id": call.call_id, "output": "18"}])
    assert second.output_text == "18 degrees"
    assert fake.last["contents"][1]["parts"][0]["thoughtSignature"] in fake.signatures


@pytest.mark.parametrize(("model", "effort", "config"), [
    ("gemini-3-pro-preview", "low", {"thinkingLevel": "low", "includeThoughts": True}),
    ("gemini-3-pro-preview", "medium", {"thinkingLevel": "high", "includeThoughts": True}),  # Pro: low or high
    ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "minimal", "includeThoughts": True}),
    ("gemini-3-flash-preview", "medium", {"thinkingLevel": "medium", "includeThoughts": True}),
    ("gemini-2.5-flash", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-2.5-flash", "none", {"thinkingBudget": 0, "includeThoughts": False}),
    ("gemini-2.5-pro", "none", {"thinkingBudget": 128, "includeThoughts": True}),  # Pro always thinks
])
@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_effort_is_gemini_thinking_config(gemini, model, effort, config, stream):
    """Each model family gets the control it takes (the fake refuses the others); the thoughts come back
    as reasoning_content when there are any."""
    assistant = await gemini.gateway.assistant(gemini.provider, model=model)
    async with gemini.gateway.client(assistant.id, await gemini.gateway.key()) as client:
        options = dict(model="x", messages=MESSAGES, reasoning_effort=effort)
        if stream:
            chunks = [chunk async for chunk in await client.chat.completions.create(stream=True, **options)]
            deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
            content = "".join(delta.content or "" for delta in deltas)
            reasoning = "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas)
        else:
            message = (await client.chat.completions.create(**options)).choices[0].message
            content, reasoning = message.content, getattr(message, "reasoning_content", None) or ""
    assert gemini.fake.last["generationConfig"]["thinkingConfig"] == config
    assert content == "Hello from Gemini"
    assert reasoning == ("thinking..." if config["includeThoughts"] else "")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gemini_3_text_signature_goes_back_on_its_text_part(gemini, stream):
    """Gemini 3 signs the last part of a text answer: it comes back as reasoning_details and goes back
    on the text part of that turn (a history without it is still taken, as Google's API does)."""
    assistant = await gemini.gateway.assistant(gemini.provider, model="gemini-3-flash-preview")
    async with gemini.gateway.client(assistant.id, await gemini.gateway.key()) as client:
        if stream:
            details = []
            async for chunk in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True):
                details += (chunk.choices[0].delta.model_extra or {}).get("reasoning_details") or [] if chunk.choices else []
        else:
            answer = await client.chat.completions.create(model="x", messages=MESSAGES)
            details = answer.choices[0].message.model_extra["reasoning_details"]
        assert [(d["format"], d["data"] in gemini.fake.signatures) for d in details] == [("google-gemini-v1", True)]
        history = [*MESSAGES, {"role": "assistant", "content": "Hello from Gemini", "reasoning_details": details},
                   {"role": "user", "content": "And then?"}]
        await client.chat.completions.create(model="x", messages=history)
    assert gemini.fake.last["contents"][1] == {"role": "model", "parts": [
        {"text": "Hello from Gemini", "thoughtSignature": details[0]["data"]}]}


async def test_cached_content_is_priced_by_hand(gemini):
    """gemini-2.5-flash (genai-prices): input $0.30, cached input $0.03, output (thinking included) $2.50 per
    million tokens; Gemini's promptTokenCount includes the cached tokens, its output excludes the thoughts."""
    from decimal import Decimal

    gemini.fake.usage = {"promptTokenCount": 10_000, "cachedContentTokenCount": 8_000, "candidatesTokenCount": 300,
                         "thoughtsTokenCount": 200, "totalTokenCount": 10_500}
    usage = (await gemini.client.chat.completions.create(model="x", messages=MESSAGES)).usage
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens) == (10_000, 8_000, 500)
    assert usage.completion_tokens_details.reasoning_tokens == 200
    row = (await gemini.gateway.usage_rows(1))[-1]
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (10_000, 8_000, 500)
    assert row["cost_usd"] == (Decimal("0.3") * 2_000 + Decimal("0.03") * 8_000 + Decimal("2.5") * 500) / 1_000_000


@pytest.mark.parametrize("stream", [False, True])
async def test_thought_signatures_round_trip_through_the_messages_api(gemini, stream):
    """A Messages client (Claude Code's SDK) on Gemini 3: the signature comes back in a thinking block's
    signature, which the client sends back with the turn as it does Anthropic's, and goes back to Gemini
    on the function call."""
    fake = gemini.fake
    assistant = await gemini.gateway.assistant(gemini.provider, model="gemini-3-flash-preview")
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    fake.reply, fake.function_calls = "", [("get_weather", {"city": "Paris"})]
    async with gemini.gateway.anthropic(assistant.id, await gemini.gateway.key()) as client:
        async def turn(messages):
            request = dict(model="x", max_tokens=500, tools=[tool], messages=messages,
                           thinking={"type": "enabled", "budget_tokens": 1024})
            if not stream:
                return await client.messages.create(**request)
            async with client.messages.stream(**request) as events:
                return await events.get_final_message()

        first = await turn([{"role": "user", "content": "Weather in Paris?"}])
        blocks = [block.model_dump(exclude_none=True) for block in first.content]
        assert [block["type"] for block in blocks] == ["thinking", "tool_use"]
        assert blocks[0]["thinking"] == "thinking..." and blocks[0]["signature"].startswith("riceball.v1:")
        assert fake.last["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "low", "includeThoughts": True}
        call = next(block for block in blocks if block["type"] == "tool_use")
        fake.reply, fake.function_calls = "18 degrees", []
        second = await turn([{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": blocks},
                             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                                           "content": "18"}]}])
    assert next(block.text for block in second.content if block.type == "text") == "18 degrees"
    assert fake.last["contents"][1]["parts"][-1]["thoughtSignature"] in fake.signatures
