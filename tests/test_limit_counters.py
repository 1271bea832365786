"""The limit counters under bursts and faults: a full connection pool, settlements that travel together,
and counters that go away (a partition, a pause, a database blip) while calls end."""
import asyncio
from decimal import Decimal

import aiohttp
import pytest
import redis.asyncio as aioredis

from riceball_proxy import appkeys
from riceball_proxy.limits.counters import Budget, Settlement, Slots
from tests.tcp_proxy import TcpProxy

MESSAGES = [{"role": "user", "content": "hello"}]


async def statuses(url: str, key: str, calls: int, session: aiohttp.ClientSession) -> list[int]:
    """``calls`` calls at once with ``key``; their statuses, in order."""

    async def call():
        async with session.post(url, json={"messages": MESSAGES}, headers={"Authorization": f"Bearer {key}"}) as r:
            await r.read()
            return r.status

    return await asyncio.gather(*(call() for _ in range(calls)))


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_a_burst_larger_than_the_redis_pool_waits_for_turns_and_another_tenant_is_counted_as_ever(
        start_gateway, settings, redis_url, fake_openai, mode):
    # Every command to Redis takes 50 ms: 420 calls at once need far more connections than a pool has.
    proxy = await TcpProxy(redis_url).start()
    proxy.delay = 0.05
    database = redis_url.rsplit("/", 1)[1]
    gateway = await start_gateway(settings.replace(limits_backend="redis", limits_fail=mode,
                                                   redis_url=f"redis://127.0.0.1:{proxy.port}/{database}"))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    bursting, bystander = await gateway.key(rpm=10), await gateway.key(rpm=2)
    url = gateway.base_url(assistant.id) + "/chat/completions"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            burst, other = await asyncio.gather(statuses(url, bursting, 400, session),
                                                statuses(url, bystander, 20, session))
    finally:
        await proxy.close()
    assert sorted(burst) == [200] * 10 + [429] * 390  # exactly its rpm, whatever the fail mode
    assert sorted(other) == [200] * 2 + [429] * 18  # the other tenant: counted, never 503
    registry = gateway.app[appkeys.METRICS].registry
    assert not registry.get_sample_value("riceball_limits_unavailable_total", {"backend": "redis"})
    assert len(fake_openai.requests) == 12


@pytest.fixture
def counters_of(settings, redis_url, db):
    """Counters of one backend on the test's Redis or database (the test closes them)."""
    from riceball_proxy.limits.counters import MemoryCounters
    from riceball_proxy.limits.postgres import PostgresCounters
    from riceball_proxy.limits.redis import RedisCounters

    def make(backend):
        return {"memory": MemoryCounters, "redis": lambda: RedisCounters(redis_url),
                "postgres": lambda: PostgresCounters(db)}[backend]()

    return make


async def no_spend(budget, db=None):
    return 0


@pytest.mark.parametrize("backend", ["memory", "redis", "postgres"])
async def test_settlements_sent_in_one_batch_are_each_applied(counters_of, backend):
    counters = counters_of(backend)
    budget = Budget("k:batch:budget:usd:total", 10**12, 1000, None, ())
    slots = [Slots("k:batch:parallel", 5, f"call-{n}") for n in range(5)]
    for n in range(5):  # five calls in flight, each reserving 1,000 units
        assert (await counters.admit([slots[n], budget], no_spend)).admitted
    assert not (await counters.admit([Slots("k:batch:parallel", 5, "call-6")], no_spend)).admitted
    used = [137, 80, 1000, 3, 611]
    for n in range(5):  # all five end together: their settlements go in one batch
        await counters.settle(Settlement(budgets=((budget, used[n] - 1000),), slots=(slots[n],)))
    await counters.flush()
    # every slot free again, and the budget holds exactly what was used
    again = [Slots("k:batch:parallel", 5, f"next-{n}") for n in range(5)]
    for slot in again:
        assert (await counters.admit([slot], no_spend)).admitted
    refused = await counters.admit([Budget(budget.key, sum(used) + 1, 2, None, ())], no_spend)
    assert not refused.admitted and refused.spent == sum(used)
    await counters.close()


async def settled(gateway, timeout: float = 10.0) -> None:
    """Wait until the gateway's limit counters have applied every settlement."""
    counters = gateway.app[appkeys.LIMITER].counters
    for _ in range(int(timeout / 0.05)):
        if not counters.waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{counters.waiting} settlements still waiting")


async def two_calls_held_then_ended_during(fault, gateway, assistant, key, fake_openai) -> None:
    """Two calls of ``key`` in flight; ``fault.block()``; both end; a second later ``fault.unblock()``."""
    fake_openai.hold = asyncio.Event()
    async with gateway.client(assistant.id, key) as client:
        calls = [asyncio.create_task(client.chat.completions.create(model="x", messages=MESSAGES)) for _ in range(2)]
        while len(fake_openai.requests) < 2:
            await asyncio.sleep(0.01)
        fault.block()
        fake_openai.hold.set()
        await asyncio.gather(*calls)  # answered; their settlements cannot reach the counters
        await asyncio.sleep(1.0)
        fault.unblock()
    fake_openai.hold = None


@pytest.mark.parametrize("backend", ["redis", "postgres"])
async def test_slots_and_budgets_of_calls_ending_during_a_partition_are_settled_once_it_is_over(
        start_gateway, settings, redis_url, clean_database, fake_openai, backend):
    if backend == "redis":
        proxy = await TcpProxy(redis_url).start()
        database = redis_url.rsplit("/", 1)[1]
        changes = {"redis_url": f"redis://127.0.0.1:{proxy.port}/{database}"}
    else:  # the whole database blips: counters, usage rows, configuration
        proxy = await TcpProxy(clean_database).start()
        changes = {"database_url": proxy.url()}
    gateway = await start_gateway(settings.replace(limits_backend=backend, usage_flush_interval=0.05, **changes))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), parameters={"max_tokens": 10})
    key = await gateway.key(max_parallel=2, budget_tokens=1_000_000, budget_period="total")
    fake_openai.usage = {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
    try:
        await two_calls_held_then_ended_during(proxy, gateway, assistant, key, fake_openai)
        await settled(gateway)
        async with aiohttp.ClientSession() as session:  # both slots are free again, at once
            url = gateway.base_url(assistant.id) + "/chat/completions"
            assert await statuses(url, key, 2, session) == [200, 200]
        await settled(gateway)
        assert await budget_counter(gateway, backend, redis_url) == 4 * 37  # each call counted once, exactly
    finally:
        await proxy.close()


async def budget_counter(gateway, backend: str, redis_url: str) -> int:
    """The tokens the one token budget's counter holds."""
    if backend == "redis":
        redis = aioredis.Redis.from_url(redis_url)
        try:
            keys = await redis.keys("riceball:k:*:budget:tokens:*")
            assert len(keys) == 1
            return int(await redis.get(keys[0]))
        finally:
            await redis.aclose()
    return int(await gateway.pool.fetchval("SELECT value FROM limit_counters WHERE key LIKE 'k:%:budget:tokens:%'"))


async def test_a_batch_whose_answer_is_lost_is_sent_again_and_applied_once(start_gateway, settings, redis_url,
                                                                           fake_openai):
    proxy = await TcpProxy(redis_url).start()
    database = redis_url.rsplit("/", 1)[1]
    gateway = await start_gateway(settings.replace(limits_backend="redis",
                                                   redis_url=f"redis://127.0.0.1:{proxy.port}/{database}"))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), parameters={"max_tokens": 100})
    key = await gateway.key(budget_tokens=1_000_000, budget_period="total")
    fake_openai.usage = {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
    try:
        async with gateway.client(assistant.id, key) as client:
            await client.chat.completions.create(model="x", messages=MESSAGES)
            # Redis applies the next batch of settlements alone, and its answer never comes back
            # (Redis paused past the timeout, a connection cut): the batch is sent again.
            proxy.cut_before = b"$5\r\n1 0 0\r\n"
            await client.chat.completions.create(model="x", messages=MESSAGES)
            await settled(gateway)
        assert proxy.cuts == 1
        assert await budget_counter(gateway, "redis", redis_url) == 2 * 37
    finally:
        await proxy.close()


async def test_calls_ending_together_on_postgresql_free_every_slot_and_spend_exactly(start_gateway, settings,
                                                                                     fake_openai):
    gateway = await start_gateway(settings.replace(limits_backend="postgres", usage_flush_interval=0.05))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url), parameters={"max_tokens": 50},
                                        prices=(Decimal(1_000), Decimal(1_000), None, None))
    key = await gateway.key(max_parallel=3, budget_usd=Decimal(100), budget_period="total")
    url = gateway.base_url(assistant.id) + "/chat/completions"
    async with aiohttp.ClientSession() as session:
        for round_ in range(3):  # each round: 3 calls held, then answered at once (one flush window)
            fake_openai.hold = asyncio.Event()
            calls = asyncio.ensure_future(statuses(url, key, 3, session))
            for _ in range(500):
                if len(fake_openai.requests) == 3 * (round_ + 1) or calls.done():
                    break
                await asyncio.sleep(0.01)
            fake_openai.hold.set()
            assert await calls == [200, 200, 200]  # every slot of the round before was free
    rows = await gateway.usage_rows(9)
    await asyncio.sleep(0.05)
    assert await gateway.app[appkeys.LIMITER].counters.flush()
    counter = await gateway.pool.fetchval("SELECT value FROM limit_counters WHERE key LIKE 'k:%:budget:usd:%'")
    assert Decimal(int(counter)) / 1_000_000_000 == sum(row["cost_usd"] for row in rows)  # exact, to the nano-dollar
