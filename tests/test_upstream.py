"""Calls to providers: each provider's own bound on calls at once, and upstream keys kept out of errors."""
import asyncio

import openai
import pytest

from riceball_proxy.testing.fake_openai import FakeOpenAI

MESSAGES = [{"role": "user", "content": "hello"}]


async def test_a_saturated_provider_never_delays_another(configured, aiohttp_server):
    gateway = configured.gateway
    hanging = FakeOpenAI()
    hanging.delay = 3600  # answers nothing, ever
    hanging_server = await aiohttp_server(hanging.app())
    stuck = await gateway.provider(str(hanging_server.make_url("/v1")), max_connections=3, queue_timeout=0.2)
    stuck_assistant = await gateway.assistant(stuck)

    async with gateway.client(stuck_assistant.id, configured.key) as stuck_client:
        calls = [asyncio.create_task(stuck_client.chat.completions.create(model="x", messages=MESSAGES,
                                                                          stream=n % 2 == 1))
                 for n in range(3)]
        while len(hanging.requests) < 3:
            await asyncio.sleep(0.01)

        # The fourth call to the saturated provider waits its turn for 0.2 s, then is refused.
        with pytest.raises(openai.InternalServerError) as raised:
            await stuck_client.chat.completions.create(model="x", messages=MESSAGES)
        assert raised.value.status_code == 503 and raised.value.code == "provider_overloaded"
        assert len(hanging.requests) == 3  # it never reached the upstream

        # Meanwhile the healthy provider answers at once, streamed or not.
        answer = await configured.client.chat.completions.create(model="x", messages=MESSAGES)
        assert answer.choices[0].message.content == "Hello from the fake upstream"
        chunks = [c async for c in await configured.client.chat.completions.create(
            model="x", messages=MESSAGES, stream=True)]
        assert chunks and not any(call.done() for call in calls)

        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        # A call that ends gives its turn back: the provider takes calls again.
        hanging.delay = 0
        async with asyncio.timeout(10):
            while len(hanging.requests) < 4:
                try:
                    await stuck_client.chat.completions.create(model="x", messages=MESSAGES)
                except openai.InternalServerError as exc:  # the cancelled calls are still closing
                    assert exc.code == "provider_overloaded"
                    await asyncio.sleep(0.05)


@pytest.mark.parametrize("echo", [
    "boom sk-upstrea",
    "Incorrect API key provided: sk-upstream-se****",
    "key sk-upstream-secret and again sk-upstream-secret!",
])
async def test_no_part_of_the_upstream_key_reaches_the_client_or_the_log(configured, echo, caplog):
    configured.upstream.error = (401, {"error": {"message": echo, "type": "invalid_request_error",
                                                 "param": echo, "code": "invalid_api_key"}})
    with pytest.raises(openai.InternalServerError) as raised:
        await configured.client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.code == "upstream_auth_failed"
    assert "sk-upstrea" not in str(raised.value.body) and "sk-upstrea" not in caplog.text
    assert "***" in caplog.text  # the upstream's words are logged, the key masked


def test_short_echoes_of_the_key_are_left_alone():
    from riceball_proxy.upstream import mask_secret

    assert mask_secret("prefix sk-upst only", "sk-upstream-secret") == "prefix sk-upst only"
    assert mask_secret("sk-upstream-secretX", "sk-upstream-secret") == "***X"
    assert mask_secret("a short key abc", "abc") == "a short key ***"


async def test_a_gate_gives_turns_in_order_and_loses_none_to_callers_that_leave():
    from riceball_proxy.errors import APIError
    from riceball_proxy.upstream import ConnectionGate

    gate = ConnectionGate("p", limit=1, wait=5)
    await gate.acquire()
    order = []

    async def call(name):
        await gate.acquire()
        order.append(name)

    first, leaving, second = (asyncio.create_task(call(name)) for name in ("first", "leaving", "second"))
    await asyncio.sleep(0.01)
    leaving.cancel()  # a client that goes away while it waits
    await asyncio.sleep(0.01)
    gate.release()
    await first
    gate.release()
    await second
    assert order == ["first", "second"] and gate.in_use == 1
    gate.release()
    assert gate.in_use == 0

    impatient = ConnectionGate("p", limit=1, wait=0.01)
    await impatient.acquire()
    with pytest.raises(APIError) as refused:
        await impatient.acquire()
    assert refused.value.status == 503 and impatient.in_use == 1
    impatient.release()
    await impatient.acquire()  # the refused caller took nothing with it


# --- hostile upstreams ------------------------------------------------------------------------------------


@pytest.fixture
async def hostile_upstream(aiohttp_server):
    """An upstream whose streams are hostile: ``mode`` is ``long_line`` (one 3 MiB line) or ``endless_event``
    (data lines, never a blank line)."""
    from aiohttp import web

    state = {"mode": "long_line", "calls": 0}

    async def chat(request):
        state["calls"] += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if state["mode"] == "long_line":
            await response.write(b'data: {"id": "' + b"x" * (3 * 2**20) + b'"}\n\n')
        else:
            line = b"data: " + b"y" * 1000 + b"\n"
            for _ in range(100):  # 100,000 lines, 100 MB: the gateway must stop long before
                await response.write(line * 1000)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    state["base_url"] = str(server.make_url("/v1"))
    return state


@pytest.mark.parametrize("mode", ["long_line", "endless_event"])
async def test_a_hostile_stream_is_a_502_that_fails_over(configured, hostile_upstream, mode):
    from riceball_proxy.db.assistants import Target

    gateway = configured.gateway
    hostile_upstream["mode"] = mode
    provider = await gateway.provider(hostile_upstream["base_url"], name=f"hostile-{mode}")
    alone = await gateway.assistant(provider)
    async with gateway.client(alone.id, configured.key) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
    assert raised.value.status_code == 502 and raised.value.code == "bad_upstream_response"
    backed = await gateway.assistant(provider, fallbacks=[Target(configured.provider.id, "gpt-4o")])
    async with gateway.client(backed.id, configured.key) as client:
        chunks = [c async for c in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream"


async def test_an_upstreams_5xx_page_and_account_ids_never_reach_the_client(configured, caplog):
    page = (b"<html><head><title>503 Service Unavailable</title></head><body>upstream connect error: "
            b"backend-7.internal.corp:8443 nginx/1.18.0 (Ubuntu)</body></html>")
    configured.upstream.error = (503, page)
    with pytest.raises(openai.InternalServerError) as raised:
        await configured.client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.body["message"] == "upstream error (503 Service Unavailable)"
    assert "internal.corp" in caplog.text  # the operator's log has it all
    configured.upstream.error = (429, {"error": {
        "message": "Rate limit reached for gpt-4o in organization org-AbCdEf123456 on requests per min (RPM). "
                   "Project proj_Zyx987654321, contact ops@acme-corp.example", "type": "requests",
        "code": "rate_limit_exceeded"}})
    with pytest.raises(openai.RateLimitError) as raised:
        await configured.client.chat.completions.create(model="x", messages=MESSAGES)
    body = str(raised.value.body)
    assert raised.value.body["message"].startswith("Rate limit reached for gpt-4o in organization *** on requests")
    for identifier in ("org-AbCdEf123456", "proj_Zyx987654321", "ops@acme-corp.example"):
        assert identifier not in body
