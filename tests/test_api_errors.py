"""Every error the API answers, as OpenAI's SDK sees it, and in OpenAI's shape on the wire."""
import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import aiohttp
import openai
import orjson
import pytest

from riceball_proxy import appkeys
from riceball_proxy.db import api_keys, assistants
from tests.support import free_port

MESSAGES = [{"role": "user", "content": "hi"}]


async def post(configured, body, *, raw: bytes | None = None, key: str | None = None, path="/chat/completions"):
    """POST to the assistant with aiohttp; returns (status, json, headers)."""
    headers = {"Authorization": f"Bearer {key or configured.key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(configured.gateway.base_url(configured.assistant.id) + path,
                                data=raw, json=None if raw is not None else body, headers=headers) as response:
            return response.status, await response.json(), response.headers


def assert_openai_error(data, *, param=None, code=None):
    assert set(data) == {"error"}
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert data["error"]["message"]
    assert data["error"]["param"] == param
    if code is not None:
        assert data["error"]["code"] == code


# --- authentication and assistants -----------------------------------------------------------------


async def test_a_missing_key_is_401(configured):
    async with aiohttp.ClientSession() as session:
        async with session.post(configured.gateway.base_url(configured.assistant.id) + "/chat/completions",
                                json={"messages": MESSAGES}) as response:
            assert response.status == 401
            assert_openai_error(await response.json(), code="invalid_api_key")
            assert response.headers["X-Request-ID"].startswith("req_")


@pytest.mark.parametrize("state", ["unknown", "revoked", "expired"])
async def test_unusable_keys_are_401(configured, state):
    gateway = configured.gateway
    if state == "unknown":
        key = "sk-" + "x" * 43
    elif state == "revoked":
        key = await gateway.key()
        found = await api_keys.find(gateway.pool, key[:11])
        await api_keys.revoke(gateway.pool, found.id)
    else:
        key = await gateway.key(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    async with gateway.client(configured.assistant.id, key) as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.code == "invalid_api_key"
    assert configured.upstream.requests == []


async def test_a_key_scoped_to_other_assistants_is_403(configured):
    other = await configured.gateway.assistant(configured.provider, name="other")
    key = await configured.gateway.key(assistant_ids=[other.id])
    mistyped = uuid.uuid4()
    for assistant_id in (configured.assistant.id, mistyped):  # not allowed, and not there at all: the same answer
        async with configured.gateway.client(assistant_id, key) as client:
            with pytest.raises(openai.PermissionDeniedError) as raised:
                await client.chat.completions.create(model="x", messages=MESSAGES)
        assert raised.value.body["message"] == (f"The assistant '{assistant_id}' does not exist, "
                                                "or this API key may not use it.")
    async with configured.gateway.client(other.id, key) as client:
        assert (await client.chat.completions.create(model="x", messages=MESSAGES)).choices


@pytest.mark.parametrize("which", ["unknown", "malformed", "disabled"])
async def test_missing_or_disabled_assistants_are_404(configured, which):
    gateway = configured.gateway
    if which == "unknown":
        assistant_id = uuid.uuid4()
    elif which == "malformed":
        assistant_id = "not-an-id"
    else:
        assistant_id = (await gateway.assistant(configured.provider, name="off", enabled=False)).id
    async with gateway.client(assistant_id, configured.key) as client:
        with pytest.raises(openai.NotFoundError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
        assert raised.value.code == "assistant_not_found"
        with pytest.raises(openai.NotFoundError):
            await client.models.list()


async def test_a_name_in_place_of_the_id_gets_the_id_from_a_key_that_may_use_it(configured):
    gateway, assistant = configured.gateway, configured.assistant
    other = await gateway.assistant(configured.provider, name="other")
    scoped = await gateway.key(assistant_ids=[other.id])
    for key, hinted in ((configured.key, True), (scoped, False), ("sk-wrong", False)):
        async with gateway.client(assistant.name, key) as client:
            with pytest.raises(openai.NotFoundError) as raised:
                await client.chat.completions.create(model="x", messages=MESSAGES)
        assert raised.value.code == "assistant_not_found"
        message = raised.value.body["message"]
        if hinted:
            assert message == (f"The assistant '{assistant.name}' does not exist: the URL takes an assistant's id, "
                               f"not its name. The assistant named '{assistant.name}' has the id {assistant.id}: use "
                               f"/api/v1/assistants/{assistant.id}/v1 as the base URL.")
        else:  # a key that may not use it, or none: nothing more than for a name nobody has
            assert message == f"The assistant '{assistant.name}' does not exist."
    async with gateway.client("nobody", configured.key) as client:
        with pytest.raises(openai.NotFoundError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.body["message"] == "The assistant 'nobody' does not exist."
    assert configured.upstream.requests == []


async def test_unknown_api_paths_are_openai_shaped_404s(configured):
    async with aiohttp.ClientSession() as session:
        async with session.get(configured.gateway.base_url(configured.assistant.id) + "/embeddings") as response:
            assert response.status == 404
            assert_openai_error(await response.json(), code="unknown_url")
        async with session.get(configured.gateway.base_url(configured.assistant.id) + "/chat/completions") as response:
            assert response.status == 405
            assert_openai_error(await response.json(), code="method_not_allowed")


# --- bad requests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({}, "messages", "missing_required_parameter"),
        ({"messages": "hi"}, "messages", "invalid_type"),
        ({"messages": []}, "messages", "empty_array"),
        ({"messages": ["hi"]}, "messages[0]", "invalid_type"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", "missing_required_parameter"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0]", "invalid_type"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "missing_required_parameter"),
        ({"messages": MESSAGES, "temperature": "hot"}, "temperature", "invalid_type"),
        ({"messages": MESSAGES, "max_tokens": -1}, "max_tokens", "invalid_type"),
        ({"messages": MESSAGES, "stream": "yes"}, "stream", "invalid_type"),
        ({"messages": MESSAGES, "stop": [1]}, "stop", "invalid_type"),
        ({"messages": MESSAGES, "tools": {}}, "tools", "invalid_type"),
        ({"messages": MESSAGES, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage",
         "invalid_type"),
    ],
)
async def test_malformed_requests_are_400_naming_the_field(configured, body, param, code):
    status, data, _ = await post(configured, body)
    assert status == 400
    assert_openai_error(data, param=param, code=code)
    assert configured.upstream.requests == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b""])
async def test_bodies_that_are_not_json_objects_are_400(configured, raw):
    status, data, _ = await post(configured, None, raw=raw)
    assert status == 400
    assert_openai_error(data)


async def test_the_sdk_sees_bad_requests_as_bad_request_errors(configured):
    with pytest.raises(openai.BadRequestError) as raised:
        await configured.client.chat.completions.create(model="x", messages=[])
    assert raised.value.param == "messages"


async def test_bodies_over_the_limit_are_413(start_gateway, settings, fake_openai):
    gateway = await start_gateway(settings.replace(max_body_bytes=4096))
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "x" * 5000}])
    assert raised.value.status_code == 413
    assert raised.value.code == "request_too_large"
    assert fake_openai.requests == []


# --- upstream failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, exception",
    [(400, openai.BadRequestError), (404, openai.NotFoundError), (429, openai.RateLimitError)],
)
async def test_upstream_4xx_keeps_its_status_and_error(configured, status, exception):
    configured.upstream.error = (status, {"error": {"message": "upstream says no", "type": "invalid_request_error",
                                                    "param": "messages", "code": "context_length_exceeded"}})
    with pytest.raises(exception) as raised:
        await configured.client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.status_code == status
    assert raised.value.code == "context_length_exceeded" and raised.value.param == "messages"
    assert "upstream says no" in raised.value.message


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_5xx_is_502(configured, stream):
    configured.upstream.error = (503, b"<html>Service Unavailable</html>")
    with pytest.raises(openai.InternalServerError) as raised:
        await configured.client.chat.completions.create(model="x", messages=MESSAGES, stream=stream)
    assert raised.value.status_code == 502
    assert "503" in raised.value.message


async def test_upstream_key_never_appears_in_an_error(configured):
    configured.upstream.error = (401, {"error": {"message": "Incorrect API key provided: sk-upstream-secret.",
                                                 "type": "invalid_request_error", "code": "invalid_api_key"}})
    with pytest.raises(openai.InternalServerError) as raised:
        await configured.client.chat.completions.create(model="x", messages=MESSAGES)
    assert "sk-upstream-secret" not in str(raised.value.body) and "Incorrect" not in raised.value.message


async def test_a_refused_upstream_connection_is_502(configured):
    provider = await configured.gateway.provider(f"http://127.0.0.1:{free_port()}/v1")
    assistant = await configured.gateway.assistant(provider)
    async with configured.gateway.client(assistant.id, configured.key) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.status_code == 502 and raised.value.code == "upstream_unavailable"


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_timeout_is_504(configured, stream):
    provider = await configured.gateway.provider(configured.upstream.base_url, read_timeout=0.3)
    assistant = await configured.gateway.assistant(provider)
    configured.upstream.delay = 2
    async with configured.gateway.client(assistant.id, configured.key) as client:
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES, stream=stream)
    assert raised.value.status_code == 504 and raised.value.code == "upstream_timeout"


async def usage_statuses(gateway, count: int) -> list[int]:
    recorder = gateway.app[appkeys.USAGE_RECORDER]
    for _ in range(100):
        await gateway.app[appkeys.OBSERVERS].queue.join()
        await recorder.flush()
        rows = await gateway.pool.fetch("SELECT status FROM usage_events ORDER BY id")
        if len(rows) >= count:
            return [row["status"] for row in rows]
        await asyncio.sleep(0.05)
    raise AssertionError("the usage rows did not arrive")


@pytest.mark.parametrize("failure", ["error_event", "drop", "malformed", "not_json", "end"])
async def test_a_failure_after_the_stream_began_is_an_error_event(configured, failure):
    configured.upstream.fail_after_chunks = 2
    configured.upstream.failure = failure
    stream = await configured.client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            received.append(chunk)
    assert received  # the chunks sent before the failure arrived
    assert raised.value.type == "api_error" and raised.value.code in (
        None, "upstream_unavailable", "bad_upstream_response", "upstream_stream_incomplete")
    assert await usage_statuses(configured.gateway, 1) == [502]


@pytest.mark.parametrize("failure", ["error_event", "malformed", "not_json", "end"])
async def test_a_stream_that_fails_before_its_first_chunk_is_an_http_error(configured, failure):
    configured.upstream.fail_after_chunks = 0
    configured.upstream.failure = failure
    with pytest.raises(openai.InternalServerError) as raised:
        await configured.client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
    assert raised.value.status_code == 502
    assert await usage_statuses(configured.gateway, 1) == [502]


async def test_a_stream_cut_short_on_a_body_that_ends_with_the_connection(configured):
    """No chunked encoding, no length: the end of the body is the end of the connection, so a cut looks clean."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}

    async def answer(reader, writer):
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # the request's headers (its body is never read)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        writer.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        provider = await configured.gateway.provider(f"http://127.0.0.1:{port}/v1")
        assistant = await configured.gateway.assistant(provider)
        async with configured.gateway.client(assistant.id, configured.key) as client:
            stream = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
            received = []
            with pytest.raises(openai.APIError) as raised:
                async for part in stream:
                    received.append(part.choices[0].delta.content)
        assert received == ["Hello"] and raised.value.code == "upstream_stream_incomplete"
        assert await usage_statuses(configured.gateway, 1) == [502]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_client_that_goes_away_cancels_the_upstream_request(configured):
    configured.upstream.reply = " ".join(["word"] * 200)
    configured.upstream.chunk_delay = 0.05
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            configured.gateway.base_url(configured.assistant.id) + "/chat/completions",
            json={"messages": MESSAGES, "stream": True}, headers={"Authorization": f"Bearer {configured.key}"},
        )
        await response.content.readline()  # the stream has begun
        response.close()  # the client hangs up
    await asyncio.wait_for(configured.upstream.client_went_away.wait(), timeout=5)
    assert not configured.upstream.stream_finished.is_set()


async def test_a_provider_type_that_is_not_installed_is_502(configured):
    provider = await configured.gateway.provider(configured.upstream.base_url, type="uninstalled")
    assistant = await assistants.create(configured.gateway.pool, name="x", provider_id=provider.id, model="m")
    async with configured.gateway.client(assistant.id, configured.key) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.status_code == 502 and raised.value.code == "provider_unavailable"


@pytest.mark.parametrize("path", ["/v1", "/v1/chat/completions", "/v1/models", "/api/v1/chat/completions",
                                  "/api/chat/completions", "/api", "/api/v1/assistants"])
async def test_a_wrong_base_url_is_an_openai_404_that_names_the_right_one(configured, path):
    import openai as sdk

    async with sdk.AsyncOpenAI(base_url=configured.gateway.url(path.removesuffix("/chat/completions")
                                                               .removesuffix("/models")),
                               api_key=configured.key, max_retries=0) as client:
        with pytest.raises(sdk.NotFoundError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.code == "unknown_url"
    assert "/api/v1/assistants/{assistant_id}/v1" in raised.value.message
    async with aiohttp.ClientSession() as session, session.get(configured.gateway.url(path)) as response:
        assert response.status == 404 and response.content_type == "application/json"
        assert (await response.json())["error"]["code"] == "unknown_url"


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_429_passes_on_when_to_retry(configured, stream):
    limits = {"Retry-After": "7", "retry-after-ms": "6500", "x-ratelimit-remaining-requests": "0",
              "x-ratelimit-reset-requests": "6.5s"}
    configured.upstream.error = (429, {"error": {"message": "Rate limit reached", "type": "requests",
                                                 "code": "rate_limit_exceeded"}})
    configured.upstream.error_headers = limits | {"Set-Cookie": "upstream=secret", "X-Upstream-Internal": "1"}
    with pytest.raises(openai.RateLimitError) as raised:
        await configured.client.chat.completions.create(model="x", messages=MESSAGES, stream=stream)
    headers = raised.value.response.headers
    assert {name: headers.get(name) for name in limits} == limits
    assert "set-cookie" not in headers and "x-upstream-internal" not in headers  # only what retries need


async def test_a_client_gone_mid_answer_is_logged_as_gone_not_as_a_server_error(aiohttp_server, caplog):
    """Writing to a client that went away raises ConnectionResetError: the access log says 499, and no
    traceback of an "unhandled error" is logged for it."""
    import logging

    from aiohttp import web
    from aiohttp.abc import AbstractAccessLogger

    from riceball_proxy.api import api_error_middleware

    statuses = []

    async def answer_then_lose_the_client(request):
        response = web.StreamResponse()
        await response.prepare(request)
        request.transport.close()  # as when the client's connection drops
        await response.write(b"data: {}\n\n")  # raises: the transport is closing

    app = web.Application(middlewares=[api_error_middleware])
    app.router.add_post("/", answer_then_lose_the_client)

    class AccessLog(AbstractAccessLogger):
        def log(self, request, response, time):
            statuses.append(response.status)

    server = await aiohttp_server(app, access_log_class=AccessLog, access_log=logging.getLogger("test.access"))
    with caplog.at_level(logging.ERROR):
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.post(server.make_url("/")) as response:
                    await response.read()
        for _ in range(100):
            if statuses:
                break
            await asyncio.sleep(0.01)
    assert statuses == [499]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
