"""Hot-path caches: warm lookups need no database, and changes reach every instance at once."""
import asyncio
import time

import asyncpg
import openai
import pytest

from riceball_proxy import appkeys
from riceball_proxy.cache import LISTENER_APPLICATION_NAME
from riceball_proxy.db import api_keys

MESSAGES = [{"role": "user", "content": "hi"}]


async def rejected_within(client, exception, seconds):
    """Call until ``exception`` is raised; fail if that takes longer than ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.chat.completions.create(model="x", messages=MESSAGES)
        except exception:
            return
        assert time.monotonic() < deadline, f"still accepted after {seconds} s"
        await asyncio.sleep(0.02)


async def test_a_warm_request_needs_no_database_round_trip(configured):
    await configured.client.chat.completions.create(model="x", messages=MESSAGES)  # warms key, assistant, provider
    blocker = await asyncpg.connect(configured.gateway.app[appkeys.DATABASE].url)
    try:
        async with blocker.transaction():
            # Any read of these tables now waits for this transaction; a cached lookup does not read them.
            await blocker.execute("LOCK TABLE api_keys, assistants, providers IN ACCESS EXCLUSIVE MODE")
            completion = await asyncio.wait_for(
                configured.client.chat.completions.create(model="x", messages=MESSAGES), timeout=5
            )
            assert completion.choices[0].message.content == "Hello from the fake upstream"
    finally:
        await blocker.close()


async def test_revocation_on_one_instance_is_seen_by_another_within_a_second(start_gateway, settings, fake_openai):
    a = await start_gateway(settings)
    b = await start_gateway(settings)
    provider = await a.provider(fake_openai.base_url)
    assistant = await a.assistant(provider)
    key = await a.key()
    async with b.client(assistant.id, key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)  # b has the key cached
        await api_keys.revoke(a.pool, (await api_keys.find(a.pool, key[:11])).id)
        await rejected_within(client, openai.AuthenticationError, 1.0)


async def test_disabling_an_assistant_is_seen_by_another_instance_within_a_second(start_gateway, settings, fake_openai):
    a = await start_gateway(settings)
    b = await start_gateway(settings)
    provider = await a.provider(fake_openai.base_url)
    assistant = await a.assistant(provider)
    async with b.client(assistant.id, await a.key()) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
        await a.pool.execute("UPDATE assistants SET enabled = false WHERE id = $1", assistant.id)
        await rejected_within(client, openai.NotFoundError, 1.0)


async def test_a_provider_change_is_seen_at_once(configured, aiohttp_server):
    from riceball_proxy.testing.fake_openai import FakeOpenAI

    await configured.client.chat.completions.create(model="x", messages=MESSAGES)
    second = FakeOpenAI()
    second.reply = "from the second upstream"
    server = await aiohttp_server(second.app())
    await configured.gateway.pool.execute("UPDATE providers SET base_url = $1 WHERE id = $2",
                                          str(server.make_url("/v1")), configured.provider.id)
    deadline = time.monotonic() + 1.0
    while True:
        completion = await configured.client.chat.completions.create(model="x", messages=MESSAGES)
        if completion.choices[0].message.content == "from the second upstream":
            break
        assert time.monotonic() < deadline, "still sent to the old upstream after 1 s"


async def test_the_cache_is_flushed_when_the_listener_reconnects(configured):
    gateway = configured.gateway
    await configured.client.chat.completions.create(model="x", messages=MESSAGES)
    killer = await asyncpg.connect(gateway.app[appkeys.DATABASE].url)
    try:
        killed = await killer.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1 "
            "AND datname = current_database()", LISTENER_APPLICATION_NAME)
        assert killed == 1
        # Whatever happens while the listener is down, and the notification it misses, is not served stale.
        await api_keys.revoke(gateway.pool, (await api_keys.find(gateway.pool, configured.key[:11])).id)
        await rejected_within(configured.client, openai.AuthenticationError, 1.0)
        await gateway.wait_until_listening()
        await rejected_within(configured.client, openai.AuthenticationError, 1.0)
    finally:
        await killer.close()


async def test_unknown_ids_and_keys_fill_bounded_caches_that_keep_the_entries_in_use(
        start_gateway, settings, fake_openai, monkeypatch):
    import uuid

    from riceball_proxy import cache

    for name in ("MAX_UNKNOWN_ASSISTANTS", "MAX_UNKNOWN_KEYS", "MAX_ASSISTANTS"):
        monkeypatch.setattr(cache, name, 5)
    gateway = await start_gateway(settings)
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    key = await gateway.key()
    async with gateway.client(assistant.id, key) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
    for _ in range(40):  # random assistant ids with a key that may use any, and random keys
        async with gateway.client(uuid.uuid4(), key) as stranger:
            try:
                await stranger.chat.completions.create(model="x", messages=MESSAGES)
            except openai.NotFoundError:
                pass
        async with gateway.client(assistant.id, "sk-" + uuid.uuid4().hex) as guesser:
            try:
                await guesser.chat.completions.create(model="x", messages=MESSAGES)
            except openai.AuthenticationError:
                pass
    entries = gateway.cache.entries()
    assert entries["unknown_assistants"] == 5 and entries["unknown_keys"] == 5
    assert entries["assistants"] == 1 and entries["keys"] == 1  # the ones in use stayed


async def test_a_cold_assistant_wanted_by_many_calls_at_once_is_read_once(configured):
    """Lookups of one entry made while its read is under way share that read: a cold entry under load
    (after a start or a change) costs one database round trip, not one per call, nor a queue of them
    on the pool that outlasts the lookup's timeout."""
    gateway = configured.gateway
    await configured.client.chat.completions.create(model="x", messages=MESSAGES)  # the key and provider warm
    cold = await gateway.assistant(configured.provider)  # never looked up
    client = gateway.client(cold.id, configured.key)
    in_flight = gateway.app[appkeys.IN_FLIGHT]
    blocker = await asyncpg.connect(gateway.app[appkeys.DATABASE].url)

    async def reads_waiting() -> int:  # the gateway's reads of ``assistants`` waiting for the lock
        await blocker.execute("SELECT pg_stat_clear_snapshot()")  # not the transaction's first look again
        return await blocker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND wait_event_type = 'Lock' AND query LIKE 'SELECT id, name, provider_id, model,%'")  # (its first kB)

    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE assistants IN ACCESS EXCLUSIVE MODE")
            calls = [asyncio.create_task(client.chat.completions.create(model="x", messages=MESSAGES))
                     for _ in range(30)]
            while len(in_flight) < 30 or await reads_waiting() == 0:  # every call in, a read waiting
                await asyncio.sleep(0.01)
            seen = set()
            for _ in range(20):  # the others had the time to send theirs: the pool has 10 connections
                seen.add(await reads_waiting())
                await asyncio.sleep(0.02)
            assert seen == {1}
            # A change to the assistant: later lookups must not be given what the read under way finds.
            gateway.app[appkeys.CONFIG_CACHE].invalidate(f"assistants:{cold.id}")
            calls += [asyncio.create_task(client.chat.completions.create(model="x", messages=MESSAGES))
                      for _ in range(5)]
            while await reads_waiting() < 2:
                await asyncio.sleep(0.01)
        answers = await asyncio.gather(*calls)
    finally:
        await blocker.close()
        await client.close()
    assert [answer.choices[0].message.content for answer in answers] == ["Hello from the fake upstream"] * 35


async def test_a_read_of_an_entry_held_nowhere_is_given_longer_before_a_503(configured, monkeypatch):
    """An entry held from before is served once the database is slower than LOOKUP_TIMEOUT; one held
    nowhere has only a 503 to fall back on, so its read is given COLD_LOOKUP_TIMEOUT, then answered 503."""
    monkeypatch.setattr("riceball_proxy.cache.LOOKUP_TIMEOUT", 0.2)
    monkeypatch.setattr("riceball_proxy.cache.COLD_LOOKUP_TIMEOUT", 2.0)
    gateway = configured.gateway
    await configured.client.chat.completions.create(model="x", messages=MESSAGES)  # the key and provider warm
    blocker = await asyncpg.connect(gateway.app[appkeys.DATABASE].url)
    try:
        for held_for, answered in ((0.6, True), (None, False)):
            cold = await gateway.assistant(configured.provider)
            client = gateway.client(cold.id, configured.key)
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE assistants IN ACCESS EXCLUSIVE MODE")
                call = asyncio.create_task(client.chat.completions.create(model="x", messages=MESSAGES))
                if held_for is not None:  # longer than LOOKUP_TIMEOUT, shorter than COLD_LOOKUP_TIMEOUT
                    await asyncio.sleep(held_for)
                else:
                    with pytest.raises(openai.InternalServerError) as refused:
                        await call
            if answered:
                assert (await call).choices[0].message.content == "Hello from the fake upstream"
            else:
                assert refused.value.status_code == 503
                assert refused.value.body["code"] == "database_unavailable"
            await client.close()
    finally:
        await blocker.close()
