"""One test per hook: a real plugin implements it and the gateway, serving real requests, calls it."""
import asyncio
import uuid

import aiohttp
import openai
import pytest

from riceball_proxy import appkeys, hookimpl
from riceball_proxy.builtin.openai_compat import OpenAICompatibleAdapter
from riceball_proxy.context import Principal
from riceball_proxy.errors import APIError
from riceball_proxy.plugins import make_plugin_manager
from riceball_proxy.providers import ProviderType

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def with_plugin(start_gateway, settings, fake_openai):
    """Start a gateway with ``plugin`` registered beside the built-ins; return (gateway, assistant, key)."""

    async def start(plugin, **assistant_fields):
        pm = make_plugin_manager(settings, entry_points=False)
        pm.register(plugin, name="under-test")
        gateway = await start_gateway(settings, plugin_manager=pm)
        provider = await gateway.provider(fake_openai.base_url)
        assistant = await gateway.assistant(provider, **assistant_fields)
        return gateway, assistant, await gateway.key(name="test key")

    return start


async def test_hook_riceball_startup(install_plugin, start_gateway, settings):
    recorder = install_plugin("lifecycle_recorder", "recorder", "riceball-recorder")
    recorder.events.clear()
    await start_gateway(settings)
    assert recorder.events == ["startup"]


async def test_hook_riceball_shutdown(install_plugin, start_gateway, settings):
    recorder = install_plugin("lifecycle_recorder", "recorder", "riceball-recorder")
    recorder.events.clear()
    gateway = await start_gateway(settings)
    await gateway.server.close()
    assert recorder.events == ["startup", "shutdown"]


async def test_hook_riceball_authenticate(with_plugin, fake_openai):
    class TeamTokens:
        @hookimpl
        async def riceball_authenticate(self, request, assistant_id):
            token = request.headers.get("X-Team-Token")
            if token is None:
                return None  # not ours: the API-key plugin decides
            if token != "blue":
                raise APIError(401, "Unknown team token.", code="invalid_api_key")
            return Principal(key_id=None, name="team blue")

    gateway, assistant, key = await with_plugin(TeamTokens())
    url = gateway.base_url(assistant.id) + "/chat/completions"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"messages": MESSAGES}, headers={"X-Team-Token": "blue"}) as response:
            assert response.status == 200
        async with session.post(url, json={"messages": MESSAGES}, headers={"X-Team-Token": "red"}) as response:
            assert response.status == 401
    async with gateway.client(assistant.id, key) as client:  # API keys still work beside it
        assert (await client.chat.completions.create(model="x", messages=MESSAGES)).choices


async def test_hook_riceball_prepare_request(with_plugin, fake_openai):
    seen = []

    class Policy:
        @hookimpl
        async def riceball_prepare_request(self, ctx):
            seen.append(ctx.body["messages"][0])  # injection ran first
            if "forbidden" in str(ctx.client_body["messages"]):
                raise APIError(400, "This request breaks the policy.", param="messages", code="policy_violation")
            await asyncio.sleep(0)
            ctx.body["user"] = f"key:{ctx.principal.name}"

    gateway, assistant, key = await with_plugin(Policy(), system_prompt="Be kind.")
    async with gateway.client(assistant.id, key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
        assert fake_openai.last["user"] == "key:test key"
        assert seen == [{"role": "system", "content": "Be kind."}]
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "forbidden"}])
    assert raised.value.code == "policy_violation"
    assert len(fake_openai.requests) == 1


async def test_hook_riceball_admit(with_plugin, fake_openai):
    class OneAtATime:
        @hookimpl
        async def riceball_admit(self, ctx):
            if "busy" in str(ctx.client_body["messages"]):
                raise APIError(429, "Busy.", code="rate_limit_exceeded", headers={"Retry-After": "7"})
            assert ctx.body["messages"][0] == {"role": "system", "content": "Be kind."}  # prepared already
            ctx.response_headers = {"X-Admitted": ctx.principal.name}

    gateway, assistant, key = await with_plugin(OneAtATime(), system_prompt="Be kind.")
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
        assert answer.headers["X-Admitted"] == "test key"
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "busy"}])
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.response.headers["Retry-After"] == "7"
    assert len(fake_openai.requests) == 1


async def test_hook_riceball_admit_caller(with_plugin, fake_openai):
    seen = []

    class PausedKey:
        paused = False

        @hookimpl
        def riceball_admit_caller(self, ctx):
            seen.append((ctx.principal.name, ctx.assistant is not None, dict(ctx.body)))
            if self.paused:
                raise APIError(429, "Paused.", code="rate_limit_exceeded")

    plugin = PausedKey()
    gateway, assistant, key = await with_plugin(plugin)
    async with gateway.client(assistant.id, key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
        plugin.paused = True
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert seen == [("test key", True, {})] * 2  # before the body was read
    assert len(fake_openai.requests) == 1


async def test_hook_riceball_settle(with_plugin, fake_openai):
    settled = []

    class Settling:
        @hookimpl
        def riceball_admit(self, ctx):
            ctx.stash["settling"] = "taken"

        @hookimpl
        async def riceball_settle(self, ctx, outcome):
            settled.append((ctx.stash.pop("settling", None), outcome.status, outcome.usage.total_tokens))
            raise RuntimeError("isolated: the client never sees this")

    gateway, assistant, key = await with_plugin(Settling())
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.create(model="x", messages=MESSAGES)
    async with gateway.client(uuid.uuid4(), key) as client:
        with pytest.raises(openai.NotFoundError):  # refused before admission: nothing to settle
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert settled == [("taken", 200, answer.usage.total_tokens)]


async def test_hook_riceball_provider_types(with_plugin, fake_openai):
    class TaggingAdapter(OpenAICompatibleAdapter):
        def headers(self):
            return super().headers() | {"X-Tagged": "yes"}

    class Tagging:
        @hookimpl
        def riceball_provider_types(self):
            return [ProviderType(name="tagging", label="Tagging", adapter=TaggingAdapter)]

    gateway, _, key = await with_plugin(Tagging())
    provider = await gateway.provider(fake_openai.base_url, type="tagging")
    assistant = await gateway.assistant(provider)
    async with gateway.client(assistant.id, key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
    assert fake_openai.requests[-1]["headers"]["X-Tagged"] == "yes"


async def test_hook_riceball_dialects(with_plugin, fake_openai):
    from riceball_proxy.dialects.chat import ChatCompletions

    class DeploymentChat(ChatCompletions):
        name = "deployment-chat"
        path = "/openai/deployments/{deployment}/chat/completions"

    class Dialects:
        @hookimpl
        def riceball_dialects(self):
            return [DeploymentChat()]

    gateway, assistant, key = await with_plugin(Dialects())
    async with openai.AsyncOpenAI(base_url=gateway.base_url(assistant.id) + "/openai/deployments/any",
                                  api_key=key, max_retries=0) as client:
        answer = await client.chat.completions.create(model="x", messages=MESSAGES)
    assert answer.choices[0].message.content and fake_openai.requests[-1]["body"]["model"] == assistant.model
    async with gateway.client(assistant.id, key) as client:  # the built-in dialects are still served
        await client.chat.completions.create(model="x", messages=MESSAGES)


@pytest.fixture
async def shouting_client(install_plugin, start_gateway, settings, fake_openai):
    """An SDK client of a gateway with ``tests/plugins/shout.py`` installed by entry point."""
    install_plugin("shout", "shout", "riceball-shout")
    gateway = await start_gateway(settings)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        yield client


async def test_hook_riceball_transform_stream(shouting_client):
    client = shouting_client
    stream = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    plain = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
    plain_chunks = [chunk async for chunk in plain]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "HELLO FROM THE FAKE UPSTREAM"
    assert chunks[-1].usage.total_tokens == 6
    assert all(c.choices for c in plain_chunks)  # the usage chunk is still dropped when not asked for


async def test_hook_riceball_transform_response(shouting_client):
    completion = await shouting_client.chat.completions.create(model="x", messages=MESSAGES)
    assert completion.choices[0].message.content == "HELLO FROM THE FAKE UPSTREAM"


async def test_hook_riceball_request_started(with_plugin, fake_openai):
    started = []

    class Arrivals:
        @hookimpl
        def riceball_request_started(self, request, ctx):
            started.append((request.headers.get("x-caller"), ctx.request_id, ctx.assistant, ctx.principal))

    class Broken:
        @hookimpl
        def riceball_request_started(self, request, ctx):
            raise RuntimeError("a bug")  # isolated: logged, the call goes on

    gateway, assistant, key = await with_plugin(Arrivals())
    gateway.app[appkeys.PLUGIN_MANAGER].register(Broken(), name="broken")
    async with gateway.client(assistant.id, key, default_headers={"x-caller": "me"}) as client:
        answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    async with gateway.client(assistant.id, "sk-unknown") as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    # Announced before anything is known of the call, refused ones too.
    assert started == [("me", answer.headers["x-request-id"], None, None),
                       (None, refused.value.response.headers["x-request-id"], None, None)]


async def test_hook_riceball_attempt_started(with_plugin, fake_openai):
    class Headers:
        @hookimpl
        def riceball_attempt_started(self, ctx, target, attempt):
            return {"x-trace": f"{ctx.request_id} {attempt} {target.model}"}

    class Broken:
        @hookimpl
        def riceball_attempt_started(self, ctx, target, attempt):
            raise RuntimeError("a bug")  # isolated: logged, the attempt goes on

    gateway, assistant, key = await with_plugin(Headers())
    gateway.app[appkeys.PLUGIN_MANAGER].register(Broken(), name="broken")
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    request_id = answer.headers["x-request-id"]
    sent = {name.lower(): value for name, value in fake_openai.requests[-1]["headers"].items()}
    assert sent["x-trace"] == f"{request_id} 1 {assistant.model}"


async def test_hook_riceball_attempt_finished(with_plugin, fake_openai):
    ended = []

    class Attempts:
        @hookimpl
        def riceball_attempt_finished(self, ctx, target, attempt, error):
            ended.append((attempt, target.model, None if error is None else (error.status, error.code)))

    gateway, assistant, key = await with_plugin(Attempts())
    async with gateway.client(assistant.id, key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
        fake_openai.error = (400, {"error": {"message": "no", "type": "invalid_request_error", "code": "bad"}})
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert ended == [(1, assistant.model, None), (1, assistant.model, (400, "bad"))]


async def test_hook_riceball_request_finished(with_plugin, fake_openai):
    outcomes = []
    finished = asyncio.Event()

    class Observer:
        @hookimpl
        async def riceball_request_finished(self, ctx, outcome):
            outcomes.append((ctx, outcome))
            finished.set()

    async def next_outcome():
        await asyncio.wait_for(finished.wait(), 5)
        finished.clear()
        return outcomes[-1]

    gateway, assistant, key = await with_plugin(Observer())
    async with gateway.client(assistant.id, key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
        ctx, outcome = await next_outcome()
        assert (outcome.status, outcome.error_type, outcome.usage.total_tokens) == (200, None, 6)
        assert ctx.assistant.id == assistant.id and ctx.stream is False and outcome.latency_ms > 0

        async for _ in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True):
            pass
        ctx, outcome = await next_outcome()
        assert ctx.stream is True and outcome.status == 200
        assert outcome.usage.completion_tokens == 5  # from the usage chunk the client never saw
        assert 0 < outcome.ttft_ms <= outcome.latency_ms

        fake_openai.error = (429, {"error": {"message": "slow down", "type": "rate_limit", "code": None}})
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="x", messages=MESSAGES)
        ctx, outcome = await next_outcome()
        assert (outcome.status, outcome.error_type) == (429, "rate_limit")

    async with gateway.client(assistant.id, "sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    ctx, outcome = await next_outcome()
    assert outcome.status == 401 and ctx.principal is None and ctx.assistant is None

    fake_openai.error = None
    fake_openai.reply = " ".join(["word"] * 100)
    fake_openai.chunk_delay = 0.05
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway.base_url(assistant.id) + "/chat/completions",
                                      json={"messages": MESSAGES, "stream": True},
                                      headers={"Authorization": f"Bearer {key}"})
        await response.content.readline()
        response.close()
    ctx, outcome = await next_outcome()
    assert outcome.client_disconnected is True and outcome.status == 499


async def test_slow_observers_hold_finishing_requests_but_lose_nothing_and_hold_no_prompts(
        start_gateway, settings, fake_openai, db):
    seen, entered, release = [], asyncio.Event(), asyncio.Event()

    class SlowObserver:
        @hookimpl
        async def riceball_request_finished(self, ctx, outcome):
            entered.set()
            await release.wait()
            seen.append(("messages" in ctx.body, "messages" in ctx.client_body, ctx.body.get("model")))

    pm = make_plugin_manager(settings, entry_points=False)
    pm.register(SlowObserver(), name="under-test")
    gateway = await start_gateway(settings.replace(observer_queue_size=2, usage_flush_interval=0.05),
                                  plugin_manager=pm)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        calls = [asyncio.create_task(client.chat.completions.create(model="x", messages=MESSAGES))]
        await entered.wait()  # the first outcome is with the observer before the others come
        calls += [asyncio.create_task(client.chat.completions.create(model="x", messages=MESSAGES)) for _ in range(5)]
        while len(fake_openai.requests) < 6:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        # Every answer was sent before its outcome was queued; one outcome is with the observer, two
        # wait in the queue, and the other three requests wait for room (their connections stay busy).
        assert all(call.done() for call in calls)
        assert gateway.app[appkeys.OBSERVERS].queue.qsize() == 2
        registry = gateway.app[appkeys.METRICS].registry
        assert registry.get_sample_value("riceball_observer_backpressure_total") == 3
        release.set()
        await asyncio.gather(*calls)
    await gateway.app[appkeys.OBSERVERS].queue.join()
    assert seen == [(False, False, "gpt-4o")] * 6
    assert "riceball_observer_backpressure_total 3.0" in gateway.app[appkeys.METRICS].exposition().decode()
    await gateway.app[appkeys.USAGE_RECORDER].flush()
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 6
