"""The OpenAI Responses API of an assistant, bridged to a Chat Completions provider (the fake OpenAI
upstream), with the official ``openai`` SDK as the client; every streamed event is checked against the
SDK's event types (generated from the OpenAPI spec)."""
import json
import typing

import aiohttp
import openai
import pytest
from openai.types.responses import ResponseStreamEvent

#: The SDK's model of each event type (the union the SDK generates from the OpenAPI spec).
EVENTS = {typing.get_args(cls.model_fields["type"].annotation)[0]: cls
          for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])}
SHELL = {"type": "function", "name": "exec_command", "description": "Run a shell command",
         "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}
APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch",
               "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
AGENTS = {"type": "namespace", "name": "multi_agent_v1", "description": "Agents",
          "tools": [{"type": "function", "name": "close_agent", "parameters": {"type": "object", "properties": {}}}]}


@pytest.fixture
async def bridged(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url),
                                        system_prompt="You are RiceBall's helper.", parameters={"max_tokens": 300})
    key = await gateway.key()
    async with gateway.client(assistant.id, key) as client:
        gateway.assistant_, gateway.key_, gateway.sdk = assistant, key, client
        yield gateway


async def raw_events(gateway, body: dict) -> list[dict]:
    """The events of a streamed response, each checked against the SDK's types."""
    url = gateway.base_url(gateway.assistant_.id) + "/responses"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body | {"stream": True},
                                headers={"Authorization": f"Bearer {gateway.key_}"}) as response:
            assert response.status == 200 and response.content_type == "text/event-stream"
            text = await response.text()
    events = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        EVENTS[event["type"]].model_validate(event)  # required fields and their types, recursively
        events.append(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


def items_are_consistent(events: list[dict]) -> None:
    """One id per item from output_item.added to .done to the final response, .done carrying the whole item."""
    added = {e["output_index"]: e["item"]["id"] for e in events if e["type"] == "response.output_item.added"}
    done = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
    final = events[-1]["response"]["output"]
    assert added == {index: item["id"] for index, item in done.items()} == dict(enumerate(i["id"] for i in final))
    assert [done[index] for index in sorted(done)] == final


async def test_a_text_response_with_the_assistant_injected(bridged, fake_openai):
    response = await bridged.sdk.responses.create(model="gpt-whatever", input="Hi", instructions="Be brief.",
                                                  max_output_tokens=1000)
    assert response.status == "completed" and response.id.startswith("resp_") and response.store is False
    assert response.output_text == "Hello from the fake upstream"
    assert response.usage.output_tokens == 5 and response.usage.input_tokens > 0
    sent = fake_openai.last
    assert sent["messages"][:3] == [{"role": "system", "content": "You are RiceBall's helper."},
                                    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert sent["model"] == bridged.assistant_.model and sent["max_tokens"] == 300  # the ceiling
    rows = await bridged.usage_rows(1)
    assert rows[-1]["api"] == "responses" and rows[-1]["completion_tokens"] == 5


async def test_a_stream_keeps_the_event_contract(bridged, fake_openai):
    events = await raw_events(bridged, {"model": "x", "input": "Hi"})
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 5 and "response.output_text.done" in kinds
    items_are_consistent(events)
    final = events[-1]["response"]
    assert final["usage"]["output_tokens"] == 5 and final["status"] == "completed"
    async with bridged.sdk.responses.stream(model="x", input="Hi") as stream:
        text = "".join([event.delta async for event in stream if event.type == "response.output_text.delta"])
        response = await stream.get_final_response()
    assert text == response.output_text == "Hello from the fake upstream"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_function_tool_loop_by_resending_the_input(bridged, fake_openai, stream):
    fake_openai.tool_calls = [("exec_command", '{"cmd": "ls"}')]
    first = await _create(bridged, stream, input="List files", tools=[SHELL])
    call = first.output[-1]
    assert (call.type, call.name, call.arguments) == ("function_call", "exec_command", '{"cmd": "ls"}')
    assert fake_openai.last["tools"] == [{"type": "function", "function": {
        "name": "exec_command", "description": "Run a shell command", "parameters": SHELL["parameters"]}}]
    fake_openai.tool_calls = []
    history = [{"role": "user", "content": "List files"}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "a.txt"}]
    second = await _create(bridged, stream, input=history, tools=[SHELL])
    assert second.output_text == "Hello from the fake upstream"
    sent = fake_openai.last["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.call_id
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "a.txt"}


async def _create(gateway, stream: bool, **request):
    if not stream:
        return await gateway.sdk.responses.create(model="x", **request)
    async with gateway.sdk.responses.stream(model="x", **request) as events:
        return await events.get_final_response()


@pytest.mark.parametrize("stream", [False, True])
async def test_custom_and_namespace_tools_go_as_functions_and_come_back_as_themselves(bridged, fake_openai, stream):
    fake_openai.tool_calls = [("apply_patch", json.dumps({"input": "*** Begin Patch\n*** End Patch"})),
                              ("multi_agent_v1__close_agent", "{}")]
    answer = await _create(bridged, stream, input="Patch it", tools=[APPLY_PATCH, AGENTS, {"type": "web_search"}])
    patch, close = answer.output[-2:]
    assert (patch.type, patch.name, patch.input) == ("custom_tool_call", "apply_patch", "*** Begin Patch\n*** End Patch")
    assert (close.type, close.name, close.namespace) == ("function_call", "close_agent", "multi_agent_v1")
    sent = {tool["function"]["name"]: tool["function"] for tool in fake_openai.last["tools"]}
    assert set(sent) == {"apply_patch", "multi_agent_v1__close_agent"}  # web_search dropped, no 400
    assert sent["apply_patch"]["parameters"]["required"] == ["input"] and "start: /.+/" in sent["apply_patch"][
        "description"]
    history = [{"role": "user", "content": "Patch it"}, patch.model_dump(exclude_none=True),
               {"type": "custom_tool_call_output", "call_id": patch.call_id, "output": "Done"}]
    fake_openai.tool_calls = []
    await _create(bridged, stream, input=history, tools=[APPLY_PATCH])
    assert fake_openai.last["messages"][-2]["tool_calls"][0]["function"] == {
        "name": "apply_patch", "arguments": json.dumps({"input": "*** Begin Patch\n*** End Patch"}, separators=(",", ":"))}


async def test_structured_output_images_and_reasoning_are_translated(bridged, fake_openai):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    await bridged.sdk.responses.create(
        model="x", reasoning={"effort": "low"},
        text={"format": {"type": "json_schema", "name": "reply", "schema": schema, "strict": True}},
        input=[{"role": "developer", "content": "Answer in JSON."},
               {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                            {"type": "input_image", "image_url": "data:image/png;base64,iVBO"}]}])
    sent = fake_openai.last
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema,
                                                                               "strict": True}}
    assert sent["messages"][1] == {"role": "system", "content": "Answer in JSON."}
    assert sent["messages"][2]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}
    assert "reasoning_effort" not in sent  # gpt-4o refuses it: asked again without


async def test_the_api_is_stateless_and_says_so(bridged):
    with pytest.raises(openai.BadRequestError) as raised:
        await bridged.sdk.responses.create(model="x", input="Hi", previous_response_id="resp_123")
    assert raised.value.code == "stateless_api" and "whole conversation" in raised.value.message
    with pytest.raises(openai.NotFoundError) as raised:
        await bridged.sdk.responses.retrieve("resp_123")
    assert raised.value.code == "not_stored"
    with pytest.raises(openai.NotFoundError):
        await bridged.sdk.responses.delete("resp_123")
    counted = await bridged.sdk.responses.input_tokens.count(model="x", input="word " * 300)
    assert counted.input_tokens >= 300


@pytest.mark.parametrize("failure", ["error_event", "drop", "not_json", "end"])
async def test_a_stream_that_breaks_ends_in_response_failed(bridged, fake_openai, failure):
    fake_openai.fail_after_chunks, fake_openai.failure = 3, failure
    events = await raw_events(bridged, {"model": "x", "input": "Hi"})
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    rows = await bridged.usage_rows(1)
    assert rows[-1]["status"] == 502 and rows[-1]["api"] == "responses"


async def test_errors_before_the_stream_are_openais(bridged, fake_openai):
    fake_openai.error = (429, {"error": {"message": "Slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"}})
    fake_openai.error_headers = {"Retry-After": "3"}
    with pytest.raises(openai.RateLimitError) as raised:
        await bridged.sdk.responses.create(model="x", input="Hi")
    assert raised.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError) as raised:
        await bridged.sdk.responses.create(model="x", input=[{"type": "function_call_output", "call_id": "c1",
                                                                "output": "x"}])
    assert raised.value.param == "input[0].call_id"


@pytest.mark.parametrize("path, says", [("/embeddings", "embeddings are not served"),
                                        ("/completions", "use chat/completions"),
                                        ("/audio/speech", "audio is not served")])
async def test_other_openai_paths_name_what_is_served(bridged, path, says):
    url = bridged.base_url(bridged.assistant_.id) + path
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={}, headers={"Authorization": f"Bearer {bridged.key_}",
                                                       "Host": "gateway.example:8443"}) as response:
            error = (await response.json())["error"]
    assert response.status == 404 and says in error["message"] and "responses" in error["message"]


async def test_the_api_over_a_websocket_one_call_per_frame(bridged, fake_openai):
    url = bridged.base_url(bridged.assistant_.id) + "/responses"
    headers = {"Authorization": f"Bearer {bridged.key_}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": "Bearer sk-wrong"}) as refused:
            assert refused.status == 401  # no socket without a key: a client falls back to HTTP at once
        async with session.ws_connect(url, headers=headers) as socket:

            async def call(frame: dict) -> list[dict]:
                await socket.send_json({"type": "response.create", **frame})
                events = []
                while not events or events[-1]["type"] not in ("response.completed", "response.failed", "error"):
                    event = json.loads((await socket.receive()).data)
                    if event["type"] != "error":
                        EVENTS[event["type"]].model_validate(event)
                    events.append(event)
                return events

            warm = await call({"model": "x", "input": "Hi", "generate": False})
            assert [e["type"] for e in warm] == ["response.created", "response.in_progress", "response.completed"]
            asked = len(fake_openai.requests)  # a warm-up asks nothing upstream
            first = await call({"model": "x", "input": [], "previous_response_id": warm[-1]["response"]["id"]})
            assert first[-1]["response"]["output"][0]["content"][0]["text"] == "Hello from the fake upstream"
            assert [e["sequence_number"] for e in first] == list(range(len(first)))
            second = await call({"model": "x", "input": [{"role": "user", "content": "And?"}],
                                 "previous_response_id": first[-1]["response"]["id"]})
            assert second[-1]["type"] == "response.completed" and len(fake_openai.requests) == asked + 2
            assert [m["content"] for m in fake_openai.last["messages"][1:]] == ["Hi", "Hello from the fake upstream",
                                                                                  "And?"]
            unknown = await call({"model": "x", "input": "Hi", "previous_response_id": "resp_elsewhere"})
            assert unknown[-1]["type"] == "error" and unknown[-1]["error"]["code"] == "stateless_api"
            fake_openai.error = (429, {"error": {"message": "Slow down", "type": "rate_limit_error"}})
            limited = await call({"model": "x", "input": "Hi"})
            assert limited[-1]["status"] == 429 and limited[-1]["error"]["code"] == "rate_limit_exceeded"
            fake_openai.error = None
            assert (await call({"model": "x", "input": "Hi"}))[-1]["type"] == "response.completed"  # still open
    rows = await bridged.usage_rows(4)
    assert [row["status"] for row in rows[-4:]] == [200, 200, 429, 200]


@pytest.fixture
async def native(start_gateway, settings, fake_openai):
    """An assistant on a provider that speaks the Responses API itself (``openai-responses``)."""
    gateway = await start_gateway(settings)
    provider = await gateway.provider(fake_openai.base_url, type="openai-responses")
    assistant = await gateway.assistant(provider, system_prompt="You are RiceBall's helper.",
                                        parameters={"max_tokens": 300, "temperature": 0.2})
    key = await gateway.key()
    async with gateway.client(assistant.id, key) as client:
        gateway.assistant_, gateway.key_, gateway.sdk, gateway.provider_ = assistant, key, client, provider
        yield gateway


async def test_a_provider_that_speaks_responses_gets_the_request_as_it_came(native, fake_openai):
    response = await native.sdk.responses.create(
        model="x", input="Hi", instructions="Be brief.", store=True, include=["reasoning.encrypted_content"],
        tools=[{"type": "web_search"}, SHELL], max_output_tokens=5000, reasoning={"effort": "high"})
    assert response.id == "resp_fake" and response.output_text == "Hello from the fake upstream"
    sent = fake_openai.requests[-1]
    assert sent["path"] == "/v1/responses"
    body = sent["body"]
    assert body["instructions"] == "You are RiceBall's helper.\n\nBe brief." and body["input"] == "Hi"
    assert body["tools"] == [{"type": "web_search"}, SHELL] and body["include"] == ["reasoning.encrypted_content"]
    assert (body["model"], body["store"], body["max_output_tokens"], body["temperature"]) == (
        native.assistant_.model, False, 300, 0.2)  # nothing stored upstream either
    assert body["reasoning"] == {"effort": "high"}
    rows = await native.usage_rows(1)
    assert (rows[-1]["prompt_tokens"], rows[-1]["cached_tokens"], rows[-1]["reasoning_tokens"]) == (9, 4, 2)


async def test_a_native_stream_passes_the_providers_events_through(native, fake_openai):
    events = await raw_events(native, {"model": "x", "input": "Hi"})
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["id"] == "resp_fake"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == \
        "Hello from the fake upstream"
    rows = await native.usage_rows(1)
    assert rows[-1]["completion_tokens"] == 5 and rows[-1]["api"] == "responses"
    fake_openai.fail_after_chunks = 2
    events = await raw_events(native, {"model": "x", "input": "Hi"})
    assert events[-1]["type"] == "response.failed"
    rows = await native.usage_rows(2)
    assert rows[-1]["status"] == 502


async def test_a_native_primary_fails_over_to_a_bridged_fallback(native, fake_openai):
    from riceball_proxy.db.assistants import Target

    chat_provider = await native.provider(fake_openai.base_url)
    assistant = await native.assistant(native.provider_, system_prompt="Be brief.",
                                       fallbacks=[Target(chat_provider.id, "gpt-4o-mini")])
    async with native.client(assistant.id, native.key_) as client:
        fake_openai.error = (503, {"error": {"message": "busy", "type": "server_error"}})
        with pytest.raises(openai.InternalServerError):  # every target on the one fake: both refuse
            await client.responses.create(model="x", input="Hi")
    assert [r["path"] for r in fake_openai.requests[-2:]] == ["/v1/responses", "/v1/chat/completions"]


async def test_the_sync_client_and_limits(start_gateway, settings, fake_openai):
    import asyncio

    gateway = await start_gateway(settings)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key(rpm=1)

    def two_calls():
        with gateway.sync_client(assistant.id, key) as client:
            first = client.responses.create(model="x", input="Hi")
            with pytest.raises(openai.RateLimitError) as raised:
                client.responses.create(model="x", input="Hi")
            return first, raised.value

    first, refused = await asyncio.to_thread(two_calls)  # the gateway serves on this loop
    assert first.output_text == "Hello from the fake upstream"
    assert refused.code == "rate_limit_exceeded" and int(refused.response.headers["retry-after"]) >= 1


async def test_a_prompt_too_long_reads_as_context_length_exceeded(bridged, fake_openai):
    fake_openai.error = (400, {"error": {"message": "This model's maximum context length is 128000 tokens.",
                                        "type": "invalid_request_error", "param": "messages", "code": None}})
    with pytest.raises(openai.BadRequestError) as raised:
        await bridged.sdk.responses.create(model="x", input="Hi")
    assert raised.value.code == "context_length_exceeded"


async def test_a_budget_refuses_with_insufficient_quota(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key(budget_tokens=12)
    async with gateway.client(assistant.id, key) as client:
        await client.responses.create(model="x", input="Hi", max_output_tokens=5)  # 6 of the 12 spent
        with pytest.raises(openai.RateLimitError) as raised:  # may use 11: more than is left
            await client.responses.create(model="x", input="Hi", max_output_tokens=5)
    assert raised.value.code == "insufficient_quota"


async def test_codexs_session_fills_the_prompt_cache_key_unless_it_sent_one(bridged, fake_openai):
    await bridged.sdk.responses.create(model="x", input="Hi", extra_headers={"session-id": "thread-9"})
    assert fake_openai.last["prompt_cache_key"] == "thread-9"
    await bridged.sdk.responses.create(model="x", input="Hi", prompt_cache_key="own",
                                       extra_headers={"session-id": "thread-9"})
    assert fake_openai.last["prompt_cache_key"] == "own"


@pytest.mark.parametrize("speaks_responses", [True, False])
@pytest.mark.parametrize(("locked", "asked", "sent"), [(False, None, "high"), (False, "low", "low"),
                                                        (True, "low", "high")])
async def test_the_assistant_s_reasoning_effort_is_reasoning_effort_in_either_form(
        start_gateway, settings, fake_openai, speaks_responses, locked, asked, sent):
    gateway = await start_gateway(settings)
    provider = await gateway.provider(fake_openai.base_url,
                                      **({"type": "openai-responses"} if speaks_responses else {}))
    assistant = await gateway.assistant(provider, model="gpt-5", parameters={"reasoning_effort": "high"},
                                        locked={"reasoning_effort"} if locked else set())
    async with gateway.client(assistant.id, await gateway.key()) as client:
        await client.responses.create(model="x", input="Hi", **({} if asked is None else {"reasoning": {"effort": asked}}))
    body = fake_openai.requests[-1]["body"]
    assert (body["reasoning"]["effort"] if speaks_responses else body["reasoning_effort"]) == sent


async def test_reasoning_the_gateway_carried_for_another_provider_is_left_out_natively(native, fake_openai):
    from riceball_proxy.dialects.reasoning import encode_reasoning

    foreign = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": encode_reasoning(
        [{"type": "reasoning.text", "text": "hmm", "signature": "sig-1", "format": "anthropic-claude-v1"}])}
    own = {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA-openai-own"}
    await native.sdk.responses.create(model="x", input=[{"role": "user", "content": "Hi"}, foreign, own,
                                                        {"role": "user", "content": "Again"}])
    sent = fake_openai.requests[-1]["body"]["input"]
    assert [item.get("id") for item in sent if item.get("type") == "reasoning"] == ["rs_2"]
