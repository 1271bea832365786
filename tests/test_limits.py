"""Rate limits, concurrency limits and budgets, through the official SDK, on every counter backend."""
import asyncio
from decimal import Decimal

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from riceball_proxy import appkeys
from riceball_proxy.db import assistants, usage_events
from riceball_proxy.limits.admission import RETRY_UNAVAILABLE_AFTER
from tests.tcp_proxy import TcpProxy

MESSAGES = [{"role": "user", "content": "hello"}]
BACKENDS = ("memory", "postgres", "redis")


@pytest.fixture
def backend_settings(settings, request):
    """``settings`` for one counter backend (Redis: the test Redis, emptied)."""

    def make(backend: str):
        if backend == "redis":
            return settings.replace(limits_backend="redis", redis_url=request.getfixturevalue("redis_url"))
        return settings.replace(limits_backend=backend)

    return make


async def test_rpm_five_answers_then_429_with_openai_headers_and_the_window_rolls(start_gateway, backend_settings,
                                                                                 fake_openai):
    gateway = await start_gateway(backend_settings("memory"))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key(rpm=5)
    async with gateway.client(assistant.id, key) as client:
        remaining = []
        for _ in range(5):
            answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
            assert answer.headers["x-ratelimit-limit-requests"] == "5"
            assert answer.headers["x-ratelimit-reset-requests"].endswith("s")
            remaining.append(int(answer.headers["x-ratelimit-remaining-requests"]))
        assert remaining == [4, 3, 2, 1, 0]
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
        refused = raised.value.response
        assert raised.value.code == "rate_limit_exceeded"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-limit-requests"] == "5"
        retry_after = int(refused.headers["Retry-After"])
        assert 10 <= retry_after <= 12  # one request comes back every 12 s
        assert "5 requests per minute" in raised.value.message
        assert len(fake_openai.requests) == 5  # the refused call never went upstream

        counters = gateway.app[appkeys.LIMITER].counters  # the window rolls (on the counters' clock, moved
        wall = counters.clock                              # instead of waited for): one more call, then refused
        counters.clock = lambda: wall() + retry_after * 1000
        await client.chat.completions.create(model="x", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    rows = await gateway.usage_rows(8)
    assert [row["status"] for row in rows] == [200] * 5 + [429, 200, 429]
    assert rows[5]["error_code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_assistant_limit_and_the_key_limit_both_apply(start_gateway, backend_settings, fake_openai,
                                                                backend):
    gateway = await start_gateway(backend_settings(backend))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), rpm=3)
    loose, tight = await gateway.key(rpm=100), await gateway.key(rpm=2)
    async with gateway.client(assistant.id, tight) as client:
        for _ in range(2):
            await client.chat.completions.create(model="x", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as raised:  # the key's limit
            await client.chat.completions.create(model="x", messages=MESSAGES)
        assert "this API key" in raised.value.message
    async with gateway.client(assistant.id, loose) as client:
        answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES, stream=True)
        assert answer.headers["content-type"].startswith("text/event-stream")  # streams carry them too
        assert answer.headers["x-ratelimit-limit-requests"] == "3"  # the tighter one's figures
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"
        async for _ in answer.parse():
            pass
        with pytest.raises(openai.RateLimitError) as raised:  # the assistant's limit
            await client.chat.completions.create(model="x", messages=MESSAGES)
        assert "this assistant" in raised.value.message
    assert len(fake_openai.requests) == 3


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tokens_per_minute_count_what_the_upstream_reports(start_gateway, backend_settings, fake_openai,
                                                                 backend):
    gateway = await start_gateway(backend_settings(backend))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), parameters={"max_tokens": 50})
    key = await gateway.key(tpm=200)
    fake_openai.usage = {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}
    async with gateway.client(assistant.id, key) as client:
        first = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
        assert first.headers["x-ratelimit-limit-tokens"] == "200"
        # Reserved: the prompt's estimate and the 50-token ceiling; settled to the 50 reported.
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 150
        for _ in range(2):  # 3 x 50 reported; a fourth call's worst case (its prompt and 50) does not fit
            await client.chat.completions.create(model="x", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
        assert raised.value.code == "rate_limit_exceeded" and raised.value.type == "tokens"
        with pytest.raises(openai.RateLimitError) as raised:  # more than a minute's worth: never
            await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "word " * 200}])
        assert raised.value.response.headers["x-should-retry"] == "false"
        assert "more than the 200 tokens per minute" in raised.value.message


@pytest.mark.parametrize("backend", BACKENDS)
async def test_max_parallel_refuses_the_third_stream_and_a_finished_or_abandoned_call_frees_its_slot(
        start_gateway, backend_settings, fake_openai, backend):
    gateway = await start_gateway(backend_settings(backend))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key(max_parallel=2)
    fake_openai.reply = " ".join(["word"] * 40)
    fake_openai.chunk_delay = 0.05
    url = gateway.base_url(assistant.id) + "/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}

    async def call(session, stream=True):
        return await session.post(url, json={"messages": MESSAGES, "stream": stream}, headers=headers)

    async with aiohttp.ClientSession() as one, aiohttp.ClientSession() as two, aiohttp.ClientSession() as three:
        first, second = await call(one), await call(two)
        await first.content.readline(), await second.content.readline()  # both streams are under way
        third = await call(three)
        assert third.status == 429
        assert (await third.json())["error"]["code"] == "rate_limit_exceeded"
        assert third.headers["Retry-After"] == "1"
        await first.read()  # the first stream ends: its slot is free
        async with await call(three, stream=False) as fourth:
            assert fourth.status == 200
        second.close()  # the client goes away mid-stream: its slot is free too
        for _ in range(100):
            async with await call(three, stream=False) as fifth:
                if fifth.status == 200:
                    break
            await asyncio.sleep(0.02)
        assert fifth.status == 200


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_usd_budget_holds_under_20_concurrent_calls(start_gateway, backend_settings, fake_openai, backend,
                                                            settings):
    gateway = await start_gateway(backend_settings(backend).replace(usage_flush_interval=0.05))
    # $0.10 a token in and out; each call reports 40 + 10 tokens: $5.00. The ceiling is 10 answer tokens.
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), parameters={"max_tokens": 10},
                                        prices=(Decimal(100_000), Decimal(100_000), None, None))
    key = await gateway.key(budget_usd=Decimal(50), budget_period="day")
    fake_openai.usage = {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}
    messages = [{"role": "user", "content": "tell me " * 15}]  # ~40 tokens, estimated high
    async with gateway.client(assistant.id, key) as client:
        results = await asyncio.gather(*(client.chat.completions.create(model="x", messages=messages)
                                         for _ in range(20)), return_exceptions=True)
        answered = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert len(answered) + len(refused) == 20 and answered and refused
        assert {r.code for r in refused} == {"insufficient_quota"}
        assert all("budget of $50.00 for this day" in r.message and "it renews at " in r.message for r in refused)
        assert refused[0].response.headers["x-should-retry"] == "false"
        rows = await gateway.usage_rows(20)
        spent = sum(row["cost_usd"] or 0 for row in rows)
        assert spent == Decimal(5) * len(answered) <= Decimal(50)  # never above the budget
        # One by one, calls go on while their worst case ($5.60: 46 tokens estimated and 10) still fits.
        while True:
            try:
                await client.chat.completions.create(model="x", messages=messages)
            except openai.RateLimitError:
                break
            spent += 5
    assert Decimal("44.40") < spent <= 50


async def test_a_token_budget_counts_failed_calls_as_nothing(start_gateway, backend_settings, fake_openai):
    gateway = await start_gateway(backend_settings("memory"))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), parameters={"max_tokens": 10})
    key = await gateway.key(budget_tokens=120, budget_period="total")
    fake_openai.usage = {"prompt_tokens": 30, "completion_tokens": 10, "total_tokens": 40}
    async with gateway.client(assistant.id, key) as client:
        fake_openai.error = (500, {"error": {"message": "down", "type": "server_error"}})
        for _ in range(5):  # failures reserve, then give it all back
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="x", messages=MESSAGES)
        fake_openai.error = None
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.code == "insufficient_quota"
    assert raised.value.message == ("Error code: 429 - This API key has used its budget of 120 tokens; "
                                    "it does not renew (a total budget).")


async def test_a_budget_survives_a_restart_from_the_usage_table(start_gateway, backend_settings, fake_openai):
    gateway = await start_gateway(backend_settings("memory").replace(usage_flush_interval=0.05))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), parameters={"max_tokens": 10})
    key = await gateway.key(budget_tokens=90)
    fake_openai.usage = {"prompt_tokens": 30, "completion_tokens": 10, "total_tokens": 40}
    async with gateway.client(assistant.id, key) as client:
        for _ in range(2):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    await gateway.usage_rows(2)
    again = await start_gateway(backend_settings("memory"))  # a new process: counters from the usage table
    async with again.client(assistant.id, key) as client:
        with pytest.raises(openai.RateLimitError) as raised:  # 80 spent; a call's worst case (7 + 10) would pass 90
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.code == "insufficient_quota"
    assert raised.value.body["message"].startswith(
        "This call may use up to 17 tokens (its prompt of about 7 tokens and its max_tokens of 10), more than the 10 "
        "tokens left of this API key's budget of 90 tokens for this month: ask for fewer tokens (max_tokens), send a "
        "shorter prompt, or wait")


async def test_a_budget_refusal_of_a_call_without_max_tokens_says_so(start_gateway, backend_settings, fake_openai):
    gateway = await start_gateway(backend_settings("memory"))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))  # no max_tokens anywhere
    key = await gateway.key(budget_tokens=5)
    async with gateway.client(assistant.id, key) as client:
        with pytest.raises(openai.RateLimitError) as raised:  # a prompt of about 7 tokens, 5 left
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.body["message"].startswith(
        "This call may use up to 7 tokens (its prompt of about 7 tokens; it sets no max_tokens), more than the 5 "
        "tokens left of this API key's budget of 5 tokens for this month: send a shorter prompt, or wait")
    assert "fewer tokens" not in raised.value.message and fake_openai.requests == []


async def test_a_key_without_limits_never_touches_the_counters(start_gateway, backend_settings, fake_openai):
    gateway = await start_gateway(backend_settings("redis"))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key()
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    assert "x-ratelimit-limit-requests" not in answer.headers
    redis = aioredis.Redis.from_url(gateway.app[appkeys.SETTINGS].redis_url)
    assert await redis.dbsize() == 0
    await redis.aclose()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_away_admits_or_refuses_by_limits_fail(start_gateway, settings, redis_url, fake_openai, mode):
    proxy = await TcpProxy(redis_url).start()
    database = redis_url.rsplit("/", 1)[1]
    gateway = await start_gateway(settings.replace(limits_backend="redis", limits_fail=mode,
                                                   redis_url=f"redis://127.0.0.1:{proxy.port}/{database}"))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key(rpm=2)
    registry = gateway.app[appkeys.METRICS].registry
    try:
        async with gateway.client(assistant.id, key) as client:
            await client.chat.completions.create(model="x", messages=MESSAGES)
            proxy.block()  # Redis goes away mid-test
            if mode == "open":
                for _ in range(3):  # admitted, uncounted: more than the limit gets through
                    await client.chat.completions.create(model="x", messages=MESSAGES)
            else:
                with pytest.raises(openai.InternalServerError) as raised:
                    await client.chat.completions.create(model="x", messages=MESSAGES)
                assert raised.value.status_code == 503 and raised.value.code == "limits_unavailable"
            assert registry.get_sample_value("riceball_limits_unavailable_total", {"backend": "redis"}) >= 1
            proxy.unblock()
            limiter = gateway.app[appkeys.LIMITER]
            started = limiter.clock()
            limiter.clock = lambda: started + RETRY_UNAVAILABLE_AFTER  # they are asked again a second after
            await client.chat.completions.create(model="x", messages=MESSAGES)  # the second of two
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="x", messages=MESSAGES)
    finally:
        await proxy.close()


async def test_cost_comes_from_the_operator_then_genai_prices_else_unknown(start_gateway, settings, fake_openai):
    import genai_prices

    gateway = await start_gateway(settings.replace(usage_flush_interval=0.05))
    provider = await gateway.provider(fake_openai.base_url)
    known = await gateway.assistant(provider, model="gpt-4o-mini")
    priced = await gateway.assistant(provider, model="gpt-4o-mini",
                                     prices=(Decimal("1.5"), Decimal(3), Decimal("0.5"), None))
    unknown = await gateway.assistant(provider, model="no-such-model-anywhere")
    fake_openai.usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
                         "prompt_tokens_details": {"cached_tokens": 200}}
    key = await gateway.key()
    for assistant in (known, priced, unknown):
        async with gateway.client(assistant.id, key) as client:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    rows = {row["assistant_id"]: row for row in await gateway.usage_rows(3)}
    library = genai_prices.calc_price(genai_prices.Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=200),
                                      "gpt-4o-mini", provider_id="openai").total_price
    assert rows[known.id]["cost_usd"] == library > 0
    assert rows[priced.id]["cost_usd"] == (Decimal("1.5") * 800 + Decimal("0.5") * 200 + 3 * 500) / 1_000_000
    assert rows[unknown.id]["cost_usd"] is None
    metrics = gateway.app[appkeys.METRICS].registry
    assert metrics.get_sample_value("riceball_cost_usd_total", {"assistant": str(known.id)}) == pytest.approx(
        float(library))
    summary = await usage_events.summary(gateway.pool, usage_events.UsageFilter(
        since=rows[known.id]["created_at"], until=rows[unknown.id]["created_at"] + __import__("datetime").timedelta(1)))
    assert summary["cost_usd"] == rows[known.id]["cost_usd"] + rows[priced.id]["cost_usd"]
    assert summary["unpriced"] == 1


async def test_openai_cached_input_is_priced_by_hand(start_gateway, settings, fake_openai):
    """gpt-4o-mini (genai-prices): input $0.15, cached input $0.075, output $0.60 per million tokens; OpenAI's
    prompt_tokens include the cached ones."""
    gateway = await start_gateway(settings)
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), model="gpt-4o-mini")
    fake_openai.usage = {"prompt_tokens": 10_000, "completion_tokens": 400, "total_tokens": 10_400,
                         "prompt_tokens_details": {"cached_tokens": 6_000}}
    async with gateway.client(assistant.id, await gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
    row = (await gateway.usage_rows(1))[-1]
    assert (row["prompt_tokens"], row["cached_tokens"]) == (10_000, 6_000)
    assert row["cost_usd"] == (Decimal("0.15") * 4_000 + Decimal("0.075") * 6_000 + Decimal("0.6") * 400) / 1_000_000


async def configure(database_url: str, upstream: str, **key_limits) -> tuple:
    """A provider, an assistant and a limited key in the database, as another process will read them."""
    import asyncpg

    from riceball_proxy import crypto
    from riceball_proxy.db import api_keys, assistants, init_connection, providers
    from riceball_proxy.limits import Limits

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, init=init_connection)
    try:
        provider = await providers.create(pool, name="upstream", type="openai", base_url=upstream,
                                          api_key_encrypted=None)
        assistant = await assistants.create(pool, name="helper", provider_id=provider.id, model="gpt-4o")
        secret = crypto.generate_api_key()
        await api_keys.create(pool, name="limited", key_hash=crypto.hash_api_key(secret),
                              prefix=crypto.display_prefix(secret), limits=Limits(**key_limits))
    finally:
        await pool.close()
    return assistant.id, secret


async def statuses_of_concurrent_calls(urls: list[str], key: str, calls: int) -> list[int]:
    """``calls`` calls at once, each on a connection of its own, spread over ``urls``."""

    async def call(url):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.post(url, json={"messages": MESSAGES},
                                    headers={"Authorization": f"Bearer {key}"}) as response:
                await response.read()
                return response.status

    return await asyncio.gather(*(call(urls[n % len(urls)]) for n in range(calls)))


@pytest.mark.parametrize("topology, store", [("workers", "redis"), ("instances", "redis"), ("workers", "postgres")])
async def test_thirty_concurrent_calls_across_processes_get_exactly_the_rpm(
        start_server, clean_database, redis_url, fake_openai, tmp_path, topology, store):
    from tests.support import environment, free_port, wait_for_http

    assistant_id, key = await configure(clean_database, fake_openai.base_url, rpm=10)
    env = environment(RICEBALL_DATABASE_URL=clean_database, RICEBALL_DATA_DIR=str(tmp_path / "var"))
    if store == "redis":
        env["RICEBALL_REDIS_URL"] = redis_url  # else: several workers share the counters in PostgreSQL
    ports = [free_port()] if topology == "workers" else [free_port(), free_port()]
    servers = [start_server(env, port, *(["--workers", "2"] if topology == "workers" else [])) for port in ports]
    for server, port in zip(servers, ports):
        for _ in range(6):  # every worker is up
            assert await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/readyz", server) == 200
    urls = [f"http://127.0.0.1:{port}/api/v1/assistants/{assistant_id}/v1/chat/completions" for port in ports]
    statuses = await statuses_of_concurrent_calls(urls, key, 30)
    assert sorted(statuses) == [200] * 10 + [429] * 20
    assert len(fake_openai.requests) == 10


# --- the target that served prices the call ---------------------------------------------------------


@pytest.fixture
async def priced_failover(start_gateway, backend_settings, fake_openai, aiohttp_server):
    """A gateway on PostgreSQL counters whose assistant (primary ``gpt-4o-mini`` on ``fake_openai``) falls
    back to ``fallback_model`` on a second fake upstream of provider type ``fallback_type``."""
    from riceball_proxy.db.assistants import Target
    from riceball_proxy.plugins import make_plugin_manager
    from riceball_proxy.testing.fake_openai import FakeOpenAI
    from tests.plugins import more_types

    second = FakeOpenAI()
    second.reply = "Hello from the fallback"
    second.base_url = str((await aiohttp_server(second.app())).make_url("/v1"))

    async def start(fallback_type: str, fallback_model: str, **assistant_fields):
        settings = backend_settings("postgres").replace(usage_flush_interval=0.05)
        pm = make_plugin_manager(settings)
        pm.register(more_types)
        gateway = await start_gateway(settings, plugin_manager=pm)
        primary = await gateway.provider(fake_openai.base_url, name="primary")
        fallback = await gateway.provider(second.base_url, name="fallback", type=fallback_type)
        assistant = await gateway.assistant(primary, model="gpt-4o-mini", parameters={"max_tokens": 50},
                                            fallbacks=[Target(fallback.id, fallback_model)], **assistant_fields)
        fake_openai.error = (500, {"error": {"message": "down", "type": "server_error"}})
        second.usage = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
        return gateway, assistant, second

    return start


def library_cost(provider_id: str, model: str, prompt: int, completion: int) -> Decimal:
    import genai_prices

    return genai_prices.calc_price(genai_prices.Usage(input_tokens=prompt, output_tokens=completion), model,
                                   provider_id=provider_id).total_price


@pytest.mark.parametrize("fallback_type, fallback_model", [("openai", "gpt-4o"), ("deepseek", "deepseek-chat")])
async def test_a_call_served_by_a_fallback_costs_the_fallbacks_price_in_the_row_and_the_budget(
        priced_failover, fallback_type, fallback_model):
    gateway, assistant, second = await priced_failover(fallback_type, fallback_model)
    key = await gateway.key(budget_usd=Decimal(1), budget_period="total")
    async with gateway.client(assistant.id, key) as client:
        for _ in range(3):
            answer = await client.chat.completions.create(model="x", messages=MESSAGES)
            assert answer.choices[0].message.content == "Hello from the fallback"
    rows = await gateway.usage_rows(3)
    each = library_cost(fallback_type, fallback_model, 1000, 50)
    assert each != library_cost("openai", "gpt-4o-mini", 1000, 50)
    assert [row["cost_usd"] for row in rows] == [each] * 3
    assert [row["upstream_model"] for row in rows] == [fallback_model] * 3
    await asyncio.sleep(0.1)  # the last settlement is applied
    await gateway.app[appkeys.LIMITER].counters.flush()
    counter = await gateway.pool.fetchval("SELECT value FROM limit_counters WHERE key LIKE 'k:%:budget:usd:%'")
    assert Decimal(int(counter)) / 1_000_000_000 == pytest.approx(3 * each, abs=Decimal("0.000000003"))


async def test_a_fallback_with_its_own_prices_costs_them_and_may_serve_under_a_usd_budget(priced_failover):
    """A self-hosted fallback genai-prices does not know, priced by the operator: its calls cost its
    prices (cache reads among them), and a key with a USD budget may reach it."""
    from riceball_proxy.db.assistants import Target

    gateway, assistant, second = await priced_failover("selfhosted", "llama-local")
    target = assistant.fallbacks[0]
    assistant = await assistants.update(gateway.pool, assistant.id, **(assistant.fields() | {"fallbacks": [
        Target(target.provider_id, target.model, prices=(Decimal("0.2"), Decimal("0.8"), Decimal("0.05"), None))]}))
    second.usage = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
                    "prompt_tokens_details": {"cached_tokens": 600}}
    key = await gateway.key(budget_usd=Decimal(1), budget_period="total")
    await asyncio.sleep(0.1)  # the configuration cache hears of the change
    async with gateway.client(assistant.id, key) as client:
        answer = await client.chat.completions.create(model="x", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello from the fallback"
    row = (await gateway.usage_rows(1))[-1]
    assert row["cost_usd"] == (Decimal("0.2") * 400 + Decimal("0.05") * 600 + Decimal("0.8") * 50) / 1_000_000
    assert (await assistants.get(gateway.pool, assistant.id)).fallbacks[0].prices == (
        Decimal("0.2"), Decimal("0.8"), Decimal("0.05"), None)


async def test_under_a_usd_budget_a_call_never_reaches_a_target_of_unknown_price(priced_failover):
    gateway, assistant, second = await priced_failover("selfhosted", "llama-local")
    budgeted = await gateway.key(budget_usd=Decimal("0.00002"), budget_period="total")
    async with gateway.client(assistant.id, budgeted) as client:
        for _ in range(3):  # the primary fails; the fallback would serve the call for free: not tried
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=1)
    assert second.requests == []
    free = await gateway.key()  # a key without a USD budget may use it
    async with gateway.client(assistant.id, free) as client:
        answer = await client.chat.completions.create(model="x", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello from the fallback"
    rows = await gateway.usage_rows(4)
    assert rows[-1]["cost_usd"] is None and rows[-1]["upstream_model"] == "llama-local"


async def test_a_usd_budget_on_an_assistant_none_of_whose_targets_has_a_price_is_refused_403(
        start_gateway, backend_settings, fake_openai):
    gateway = await start_gateway(backend_settings("memory"))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), model="our-own-model")
    key = await gateway.key(budget_usd=Decimal(5))  # written straight to the database, past the front ends
    async with gateway.client(assistant.id, key) as client:
        with pytest.raises(openai.PermissionDeniedError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.code == "budget_needs_price" and fake_openai.requests == []


async def test_admission_reserves_the_dearest_target_it_may_reach(priced_failover, fake_openai):
    gateway, assistant, second = await priced_failover("openai", "gpt-4o")
    fake_openai.error = None  # the primary answers; the reservation still covers the dearer fallback
    worst_on_fallback = library_cost("openai", "gpt-4o", 10, 50)  # "hello" estimated high, and max_tokens
    key = await gateway.key(budget_usd=worst_on_fallback * Decimal("0.9"), budget_period="total")
    async with gateway.client(assistant.id, key) as client:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.code == "insufficient_quota" and fake_openai.requests == []


# --- usage the upstream never reports -----------------------------------------------------------------


async def usd_counter(gateway) -> Decimal:
    """What the one USD budget's counter (PostgreSQL backend) holds, once every settlement is applied."""
    await asyncio.sleep(0.05)
    assert await gateway.app[appkeys.LIMITER].counters.flush()
    return Decimal(int(await gateway.pool.fetchval(
        "SELECT value FROM limit_counters WHERE key LIKE 'k:%:budget:usd:%'"))) / 1_000_000_000


@pytest.mark.parametrize("stream", [False, True])
async def test_a_silent_upstream_is_charged_an_estimate_flagged_on_the_row(start_gateway, backend_settings,
                                                                             fake_openai, stream):
    gateway = await start_gateway(backend_settings("postgres").replace(usage_flush_interval=0.05))
    # $1 per token in and out: every estimated token shows in the cost.
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url),
                                        prices=(Decimal(1_000_000), Decimal(1_000_000), None, None))
    key = await gateway.key(budget_usd=Decimal(10_000), budget_period="total")
    fake_openai.reports_usage = False
    fake_openai.reply = "twelve chars " * 10  # 130 characters: 44 tokens at 3 a token
    async with gateway.client(assistant.id, key) as client:
        if stream:
            chunks = [c async for c in await client.chat.completions.create(
                model="x", messages=MESSAGES, stream=True, stream_options={"include_usage": True})]
            assert all(c.usage is None for c in chunks)  # nothing to pass on: none was reported
        else:
            answer = await client.chat.completions.create(model="x", messages=MESSAGES)
            assert answer.usage is None
    row = (await gateway.usage_rows(1))[0]
    assert row["usage_estimated"] and row["status"] == 200
    assert row["completion_tokens"] == -(-len(fake_openai.reply) // 3)  # every character relayed
    assert row["prompt_tokens"] >= 7  # "hello" and its framing, estimated high
    assert row["cost_usd"] == row["prompt_tokens"] + row["completion_tokens"]
    assert await usd_counter(gateway) == row["cost_usd"]  # the budget counts it
    spent, _ = await usage_events.spent(gateway.pool, api_key_id=row["api_key_id"])  # as a restart reloads it
    assert spent == row["cost_usd"]


async def test_a_client_gone_before_the_usage_chunk_is_charged_what_it_was_sent(start_gateway, backend_settings,
                                                                               fake_openai):
    gateway = await start_gateway(backend_settings("postgres").replace(usage_flush_interval=0.05))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url),
                                        prices=(Decimal(1_000_000), Decimal(1_000_000), None, None))
    key = await gateway.key(budget_usd=Decimal(10_000), budget_period="total")
    fake_openai.reply = " ".join(["word"] * 200)
    fake_openai.chunk_delay = 0.01
    received = ""
    async with gateway.client(assistant.id, key) as client:
        stream = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
        async for chunk in stream:
            received += chunk.choices[0].delta.content or ""
            if len(received) >= 100:
                break  # the client has read enough and goes away
        await stream.close()
    row = (await gateway.usage_rows(1))[0]
    assert row["status"] == 499 and row["usage_estimated"]
    # At least what the client read, and not the whole answer it never got.
    assert -(-len(received) // 3) <= row["completion_tokens"] < len(fake_openai.reply) // 3
    assert row["cost_usd"] == row["prompt_tokens"] + row["completion_tokens"] > 0
    assert await usd_counter(gateway) == row["cost_usd"]
