"""Automatic prompt caching (an assistant's ``auto_cache``): breakpoints on the system prompt and the last
turn of calls that set none, on a fake Anthropic that caches prefixes as the real API does (a token a
word, 1024 tokens at least, hits looked for up to 20 blocks before a breakpoint). The figures asserted
here are the worked example of docs/providers.md."""
import types
from decimal import Decimal

import pytest

#: A long, stable system prompt: 2,250 tokens for the fake.
SYSTEM_PROMPT = " ".join(["Answer as the support desk of the example shop."] * 250)
QUESTIONS = ["Where is my order?", "Can I change the address?", "And the delivery day?", "Thanks, anything else?"]
EPHEMERAL = {"type": "ephemeral"}


@pytest.fixture
async def claude(fake_anthropic, start_gateway, settings):
    fake = fake_anthropic
    fake.caching = True
    gateway = await start_gateway(settings.replace(plugins=frozenset({"anthropic"})))
    provider = await gateway.provider(fake.base_url, type="anthropic", api_key="sk-ant-secret")
    return types.SimpleNamespace(fake=fake, gateway=gateway, provider=provider)


async def conversation(claude, *, auto_cache: bool, stream: bool = False) -> list:
    """Four turns with an assistant on claude-sonnet-4-5 through the OpenAI SDK; their usage rows."""
    gateway = claude.gateway
    assistant = await gateway.assistant(claude.provider, model="claude-sonnet-4-5", system_prompt=SYSTEM_PROMPT,
                                        auto_cache=auto_cache)
    history = []
    async with gateway.client(assistant.id, await gateway.key()) as client:
        for question in QUESTIONS:
            history.append({"role": "user", "content": question})
            if stream:
                chunks = [c async for c in await client.chat.completions.create(model="x", messages=history,
                                                                                stream=True)]
                answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                answer = (await client.chat.completions.create(model="x", messages=history)).choices[0].message.content
            history.append({"role": "assistant", "content": answer})
    rows = await gateway.usage_rows(len(QUESTIONS))
    return [row for row in rows if row["assistant_id"] == assistant.id]


def figures(rows) -> list[tuple]:
    return [(row["prompt_tokens"], row["cached_tokens"] or 0, row["cache_write_tokens"] or 0, row["cost_usd"])
            for row in rows]


@pytest.mark.parametrize("stream", [False, True])
async def test_automatic_prompt_caching_reads_each_turn_s_prefix_back(claude, stream):
    """claude-sonnet-4-5 (genai-prices): input $3, output $15, cache reads $0.30, writes $3.75 per million."""
    before = figures(await conversation(claude, auto_cache=False, stream=stream))
    assert [sent.get("system") for sent in (r["body"] for r in claude.fake.requests)] == [SYSTEM_PROMPT] * 4
    assert [(prompt, cached, written) for prompt, cached, written, _ in before] == [
        (2254, 0, 0), (2262, 0, 0), (2269, 0, 0), (2275, 0, 0)]
    after = figures(await conversation(claude, auto_cache=True, stream=stream))
    assert [(prompt, cached, written) for prompt, cached, written, _ in after] == [
        (2254, 0, 2254), (2262, 2254, 8), (2269, 2262, 7), (2275, 2269, 6)]
    # Each cost by hand: plain input at $3, cache reads at $0.30, writes at $3.75, 7 output tokens at $15.
    for (prompt, cached, written, cost) in before + after:
        assert cost == (3 * (prompt - cached - written) + Decimal("0.3") * cached + Decimal("3.75") * written
                        + 15 * 7) / 1_000_000
    assert sum(cost for *_, cost in before) == Decimal("0.0276")
    assert sum(cost for *_, cost in after) == Decimal("0.01098675")
    sent = claude.fake.requests[-1]["body"]
    assert sent["system"] == [{"type": "text", "text": SYSTEM_PROMPT, "cache_control": EPHEMERAL}]
    assert sent["messages"][-1]["content"] == [{"type": "text", "text": QUESTIONS[-1], "cache_control": EPHEMERAL}]
    assert all("cache_control" not in block for m in sent["messages"][:-1] for block in m["content"])


async def test_a_client_s_own_breakpoints_are_left_as_they_are(claude):
    assistant = await claude.gateway.assistant(claude.provider, model="claude-sonnet-4-5",
                                               system_prompt=SYSTEM_PROMPT, auto_cache=True)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Mine", "cache_control": EPHEMERAL}]},
                {"role": "assistant", "content": "Yes"}, {"role": "user", "content": "Then?"}]
    async with claude.gateway.client(assistant.id, await claude.gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=messages)
    sent = claude.fake.last
    assert sent["system"] == SYSTEM_PROMPT  # no breakpoint of the gateway's
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "Mine", "cache_control": EPHEMERAL}]
    assert sent["messages"][-1]["content"] == [{"type": "text", "text": "Then?"}]


async def test_a_tool_result_last_carries_the_breakpoint(claude):
    assistant = await claude.gateway.assistant(claude.provider, model="claude-sonnet-4-5",
                                               system_prompt=SYSTEM_PROMPT, auto_cache=True)
    call = {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages = [{"role": "user", "content": "Order 7?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "shipped"}]
    async with claude.gateway.client(assistant.id, await claude.gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=messages)
    assert claude.fake.last["messages"][-1]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "shipped", "cache_control": EPHEMERAL}]


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_calls_get_the_breakpoints_natively(claude, stream):
    """A Messages client (Anthropic's SDK) that marks nothing: the breakpoints go on the assistant's
    system block and the last message's last block, and the second turn reads the first back."""
    assistant = await claude.gateway.assistant(claude.provider, model="claude-sonnet-4-5",
                                               system_prompt=SYSTEM_PROMPT, auto_cache=True)
    async with claude.gateway.anthropic(assistant.id, await claude.gateway.key()) as client:
        await anthropic_turns(claude, client, stream)


async def anthropic_turns(claude, client, stream):
    """Two turns through the Messages API; the breakpoints and cache usage of the second."""
    async def turn(history):
        if not stream:
            return await client.messages.create(model="x", max_tokens=256, messages=history)
        async with client.messages.stream(model="x", max_tokens=256, messages=history) as events:
            return await events.get_final_message()

    history = [{"role": "user", "content": "Where is my order?"}]
    first = await turn(history)
    history += [{"role": "assistant", "content": first.content[0].text},
                {"role": "user", "content": "Can I change the address?"}]
    second = await turn(history)
    sent = claude.fake.last
    assert sent["system"] == [{"type": "text", "text": SYSTEM_PROMPT, "cache_control": EPHEMERAL}]
    assert sent["messages"][-1]["content"] == [{"type": "text", "text": "Can I change the address?",
                                                "cache_control": EPHEMERAL}]
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens) == (2254, 0)
    assert second.usage.cache_read_input_tokens == 2254 and second.usage.cache_creation_input_tokens > 0
    assert second.usage.input_tokens == 0


async def test_auto_caching_is_off_by_default_and_never_reaches_other_providers(claude, fake_openai):
    plain = await claude.gateway.assistant(claude.provider, model="claude-sonnet-4-5", system_prompt=SYSTEM_PROMPT)
    async with claude.gateway.client(plain.id, await claude.gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}])
    assert claude.fake.last["system"] == SYSTEM_PROMPT
    assert claude.fake.last["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    provider = await claude.gateway.provider(fake_openai.base_url)
    other = await claude.gateway.assistant(provider, model="gpt-4o", system_prompt=SYSTEM_PROMPT, auto_cache=True)
    async with claude.gateway.client(other.id, await claude.gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}])
    assert fake_openai.requests[-1]["body"]["messages"] == [{"role": "system", "content": SYSTEM_PROMPT},
                                                           {"role": "user", "content": "Hi"}]
