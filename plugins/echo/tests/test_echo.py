"""The echo provider through the gateway and the OpenAI SDK."""
import pytest

import riceball_echo
from riceball_proxy.db import providers

MESSAGES = [{"role": "user", "content": "Hello there, echo"}]


@pytest.fixture
async def echo(start_gateway, settings):
    """A gateway with the installed echo plugin; returns (gateway, the echo provider)."""
    gateway = await start_gateway(settings.replace(plugins=frozenset({"echo"})))
    return gateway, await providers.get_by_name(gateway.pool, "echo")


async def test_the_echo_provider_is_created_at_start_once(echo, start_gateway, settings):
    gateway, provider = echo
    assert (provider.type, provider.base_url, provider.has_api_key) == ("echo", "http://echo.invalid", False)
    await start_gateway(settings.replace(plugins=frozenset({"echo"})))  # a second instance, same database
    assert [p.name for p in await providers.list_all(gateway.pool)] == ["echo"]


async def test_a_plain_answer_with_usage(echo):
    gateway, provider = echo
    assistant = await gateway.assistant(provider, model="echo-1", system_prompt="Be brief.")
    async with gateway.client(assistant.id, await gateway.key()) as client:
        completion = await client.chat.completions.create(model="x", messages=MESSAGES)
    assert completion.choices[0].message.content == "You said: Hello there, echo"
    assert completion.usage.prompt_tokens == 5 and completion.usage.completion_tokens == 5  # "Be brief." counts


async def test_a_streamed_answer_word_by_word(echo):
    gateway, provider = echo
    assistant = await gateway.assistant(provider, model="echo-1", extra_params={"echo_delay": 0.1})
    async with gateway.client(assistant.id, await gateway.key()) as client:
        stream = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    words = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert words == ["You", " said:", " Hello", " there,", " echo"]  # one chunk a word
    assert chunks[-1].usage.completion_tokens == 5


@pytest.mark.parametrize("value, delay", [(0.1, 0.1), (-1, 0.0), (99, 5.0), ("slow", 0.05), (None, 0.05)])
def test_the_delay_between_words_is_configurable_within_bounds(value, delay):
    body = {} if value is None else {"echo_delay": value}
    assert riceball_echo._delay(body) == delay


async def test_multi_part_content_and_the_model_list(echo):
    gateway, provider = echo
    assistant = await gateway.assistant(provider, model="echo-1")
    content = [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    async with gateway.client(assistant.id, await gateway.key()) as client:
        completion = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": content}])
        assert completion.choices[0].message.content == "You said: Look (and 1 image)"
        assert [m.id for m in (await client.models.list()).data] == ["echo-1"]
    _, adapter = await gateway.cache.provider(provider.id)
    assert [m["id"] for m in await adapter.list_models()] == ["echo-1"]
