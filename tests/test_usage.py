"""Usage accounting: one row per API call with the right numbers, written off the request path, never lost."""
import asyncio
import time

import aiohttp
import openai
import pytest

from riceball_proxy import appkeys
from riceball_proxy.db import api_keys
from tests.tcp_proxy import TcpProxy

MESSAGES = [{"role": "user", "content": "count my tokens"}]


async def rows(pool, expected: int, timeout: float = 20.0):
    """The usage rows once there are ``expected`` of them (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await pool.fetch("SELECT * FROM usage_events ORDER BY id")
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def disconnect_mid_stream(gateway, assistant_id, key):
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway.base_url(assistant_id) + "/chat/completions",
                                      json={"messages": MESSAGES, "stream": True},
                                      headers={"Authorization": f"Bearer {key}"})
        await response.content.readline()
        response.close()


async def test_concurrent_calls_give_exactly_one_row_each(start_gateway, settings, fake_openai, db):
    gateway = await start_gateway(settings.replace(usage_flush_interval=0.05))
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    key = await gateway.key()
    fake_openai.reply = " ".join(["word"] * 30)
    fake_openai.chunk_delay = 0.01

    async with gateway.client(assistant.id, key) as client, gateway.client(assistant.id, "sk-wrong") as stranger:
        async def plain():
            return await client.chat.completions.create(model="x", messages=MESSAGES)

        async def streamed():
            stream = await client.chat.completions.create(model="x", messages=MESSAGES, stream=True)
            return [chunk async for chunk in stream]

        async def refused():
            try:
                await stranger.chat.completions.create(model="x", messages=MESSAGES)
            except openai.AuthenticationError:
                return "401"

        calls = [plain() for _ in range(10)] + [streamed() for _ in range(10)] + [refused() for _ in range(5)]
        calls += [disconnect_mid_stream(gateway, assistant.id, key) for _ in range(5)]
        await asyncio.gather(*calls)

    found = await rows(db, 30)
    assert len(found) == 30 and len({r["request_id"] for r in found}) == 30
    ok = [r for r in found if r["status"] == 200]
    assert len(ok) == 20
    assert {(r["prompt_tokens"], r["completion_tokens"], r["total_tokens"]) for r in ok} == {(3, 30, 33)}
    assert sum(r["stream"] for r in ok) == 10  # streams' usage came from the chunk the gateway asked for
    assert all(r["api_key_id"] is not None and r["assistant_id"] == assistant.id and r["provider_id"] == provider.id
               and r["upstream_model"] == "gpt-4o" and r["latency_ms"] > 0 for r in ok)
    assert all(r["ttft_ms"] is not None and r["ttft_ms"] <= r["latency_ms"] for r in ok)
    assert all(r["cached_tokens"] == 0 and r["reasoning_tokens"] == 0 for r in ok)
    refused_rows = [r for r in found if r["status"] == 401]
    assert len(refused_rows) == 5 and all(r["api_key_id"] is None and r["error_type"] == "invalid_request_error"
                                          for r in refused_rows)
    gone = [r for r in found if r["status"] == 499]
    assert len(gone) == 5 and all(r["error_type"] == "client_disconnected" and r["stream"] for r in gone)
    assert all(str(r["client_addr"]) == "127.0.0.1" for r in found)
    key_row = (await api_keys.list_all(db))[0]
    assert key_row.last_used_at is not None  # written in the same batches


async def test_an_upstream_failure_is_recorded_with_its_status(start_gateway, settings, fake_openai, db):
    gateway = await start_gateway(settings.replace(usage_flush_interval=0.05))
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    fake_openai.error = (503, b"down")
    async with gateway.client(assistant.id, await gateway.key()) as client:
        try:
            await client.chat.completions.create(model="x", messages=MESSAGES)
        except openai.InternalServerError:
            pass
    (row,) = await rows(db, 1)
    assert (row["status"], row["error_type"], row["prompt_tokens"]) == (502, "api_error", None)


async def test_pending_rows_are_written_at_shutdown(start_gateway, settings, fake_openai, db):
    gateway = await start_gateway(settings.replace(usage_flush_interval=3600))  # never on its own
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 0
    await gateway.server.close()  # a graceful shutdown
    assert await db.fetchval("SELECT count(*) FROM usage_events") == 3


async def test_nothing_is_lost_while_the_database_is_unreachable(start_gateway, settings, fake_openai, db, tmp_path):
    proxy = await TcpProxy(settings.database_url).start()
    try:
        gateway = await start_gateway(settings.replace(database_url=proxy.url(), usage_flush_interval=0.05,
                                                       usage_batch_size=5, usage_max_buffer=8))
        provider = await gateway.provider(fake_openai.base_url)
        assistant = await gateway.assistant(provider)
        key = await gateway.key()
        async with gateway.client(assistant.id, key) as client:
            await client.chat.completions.create(model="x", messages=MESSAGES)  # warms the caches
            await rows(db, 1)

            proxy.block()  # the database is gone for the gateway
            for n in range(30):
                if n % 2:
                    async for _ in await client.chat.completions.create(model="x", messages=MESSAGES, stream=True):
                        pass
                else:
                    await client.chat.completions.create(model="x", messages=MESSAGES)
            spill_dir = settings.data_dir / "usage-spill"
            assert list(spill_dir.glob("usage-*.jsonl")), "past the bound, rows go to files"
            assert await db.fetchval("SELECT count(*) FROM usage_events") == 1

            proxy.unblock()  # the database is back
            found = await rows(db, 31)
        assert len(found) == 31 and len({r["request_id"] for r in found}) == 31
        assert all(r["status"] == 200 and r["total_tokens"] == 8 for r in found)
        deadline = time.monotonic() + 10
        while list(spill_dir.iterdir()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert list(spill_dir.iterdir()) == []  # every spilled row was loaded back
        assert len(gateway.app[appkeys.USAGE_RECORDER].pending) == 0
    finally:
        await proxy.close()


async def test_rows_still_pending_at_shutdown_without_a_database_are_spilled_then_loaded(
        start_gateway, settings, fake_openai, db):
    proxy = await TcpProxy(settings.database_url).start()
    try:
        slow = settings.replace(database_url=proxy.url(), usage_flush_interval=3600)
        gateway = await start_gateway(slow)
        provider = await gateway.provider(fake_openai.base_url)
        assistant = await gateway.assistant(provider)
        async with gateway.client(assistant.id, await gateway.key()) as client:
            for _ in range(4):
                await client.chat.completions.create(model="x", messages=MESSAGES)
        proxy.block()
        await gateway.server.close()
        assert len(list((settings.data_dir / "usage-spill").glob("usage-*.jsonl"))) == 1
        proxy.unblock()
        await start_gateway(slow.replace(usage_flush_interval=0.05))  # the next start loads them
        assert len(await rows(db, 4)) == 4
    finally:
        await proxy.close()


async def test_calls_with_a_revoked_key_are_recorded_as_that_keys(start_gateway, settings, fake_openai, db):
    gateway = await start_gateway(settings.replace(usage_flush_interval=0.05))
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    secret = await gateway.key()
    key = await api_keys.find(db, secret[:11])
    await api_keys.revoke(db, key.id)
    async with gateway.client(assistant.id, secret) as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="x", messages=MESSAGES)
    assert raised.value.code == "invalid_api_key" and "This API key is revoked." in raised.value.message
    (row,) = await rows(db, 1)
    assert (row["status"], row["api_key_id"]) == (401, key.id)
    assert (await api_keys.get(db, key.id)).last_used_at is None  # a refused call is no use


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": "12", "completion_tokens": 3, "total_tokens": 15},
    {"prompt_tokens": 2**40, "completion_tokens": 3, "total_tokens": 15},
    {"prompt_tokens": [1], "completion_tokens": {"n": 3}, "total_tokens": 15},
    {"prompt_tokens": -5, "completion_tokens": 3, "total_tokens": 15},
    {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "prompt_tokens_details": "x"},
    "twelve",
])
async def test_token_counts_that_are_not_counts_never_stop_the_books(start_gateway, settings, fake_openai, db, usage):
    gateway = await start_gateway(settings.replace(usage_flush_interval=0.05))
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    key = await gateway.key()
    fake_openai.usage = usage
    url = gateway.base_url(assistant.id) + "/chat/completions"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.post(url, json={"messages": MESSAGES}) as response:
            assert response.status == 200
            assert (await response.json())["usage"] == usage  # the client gets the answer as it was
        async with session.post(url, json={"messages": MESSAGES, "stream": True,
                                           "stream_options": {"include_usage": True}}) as response:
            events = (await response.read()).decode()
            assert response.status == 200 and '"error"' not in events and events.endswith("data: [DONE]\n\n")
    fake_openai.usage = None
    async with gateway.client(assistant.id, key) as client:
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)

    found = await rows(db, 5)
    assert len(found) == 5 and all(r["status"] == 200 for r in found)
    poisoned, normal = found[:2], found[2:]
    valid_prompt = isinstance(usage, dict) and usage["prompt_tokens"] == 12
    assert all(r["usage_invalid"] and r["cached_tokens"] is None for r in poisoned)
    if valid_prompt:  # what could be read is kept
        assert all(r["prompt_tokens"] == 12 and not r["usage_estimated"] for r in poisoned)
    else:  # nothing usable: the call is charged the gateway's estimate, flagged
        assert all(r["usage_estimated"] and r["prompt_tokens"] > 0 for r in poisoned)
    assert all(not r["usage_invalid"] and r["total_tokens"] == 8 for r in normal)
    await gateway.app[appkeys.LAST_USED].flush()
    assert (await api_keys.list_all(db))[0].last_used_at == normal[-1]["created_at"]
    assert not (settings.data_dir / "usage-dead-letter").exists()


async def test_a_row_the_database_cannot_take_is_set_aside_and_the_others_are_written(
        start_gateway, settings, fake_openai, db):
    import datetime

    from riceball_proxy.db.usage_events import UsageEvent

    gateway = await start_gateway(settings.replace(usage_flush_interval=0.05))
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    recorder = gateway.app[appkeys.USAGE_RECORDER]
    now = datetime.datetime.now(datetime.timezone.utc)
    async with gateway.client(assistant.id, await gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
        # Rows a plugin or an old spill file might hold: too big for the column, and not a number at all.
        recorder.record(UsageEvent(created_at=now, request_id="req_huge", status=200, prompt_tokens=2**40))
        recorder.record(UsageEvent(created_at=now, request_id="req_text", status=200, prompt_tokens="12"))
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)
        found = await rows(db, 4)
        await client.chat.completions.create(model="x", messages=MESSAGES)
        found = await rows(db, 5)
    assert len(found) == 5 and all(r["request_id"].startswith("req_") and r["total_tokens"] == 8 for r in found)
    dead = list((settings.data_dir / "usage-dead-letter").glob("usage-*.jsonl"))
    lines = [line for path in dead for line in path.read_text().splitlines()]
    assert sorted('"req_huge"' in line or '"req_text"' in line for line in lines) == [True, True]
    exposition = gateway.app[appkeys.METRICS].exposition().decode()
    assert "riceball_usage_dead_letter_rows_total 2.0" in exposition
    assert not list((settings.data_dir / "usage-spill").glob("*"))


async def test_a_batch_whose_acknowledgement_is_lost_is_written_once(start_gateway, settings, fake_openai, db):
    proxy = await TcpProxy(settings.database_url).start()
    try:
        gateway = await start_gateway(settings.replace(database_url=proxy.url(), usage_flush_interval=0.05))
        provider = await gateway.provider(fake_openai.base_url)
        assistant = await gateway.assistant(provider)
        recorder = gateway.app[appkeys.USAGE_RECORDER]
        async with gateway.client(assistant.id, await gateway.key()) as client:
            await client.chat.completions.create(model="x", messages=MESSAGES)  # warms the caches
            await rows(db, 1)
            # The server writes the next batch, and the connection is cut before the client hears so
            # (the cut comes in place of the COPY's CommandComplete).
            proxy.cut_before = b"COPY "
            await asyncio.gather(*(client.chat.completions.create(model="x", messages=MESSAGES) for _ in range(6)))
            deadline = time.monotonic() + 20
            while (proxy.cuts == 0 or recorder.pending) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await recorder.flush()
        assert proxy.cuts == 1 and not recorder.pending
        found = await db.fetch("SELECT request_id FROM usage_events")
        assert len(found) == 7 and len({r["request_id"] for r in found}) == 7
        assert not (settings.data_dir / "usage-dead-letter").exists()  # written again, not refused
    finally:
        await proxy.close()


async def test_a_shutdown_ends_long_streams_with_an_error_event_and_records_them(start_gateway, settings,
                                                                                   fake_openai, db):
    gateway = await start_gateway(settings.replace(shutdown_timeout=0.3, usage_flush_interval=3600))
    provider = await gateway.provider(fake_openai.base_url)
    assistant = await gateway.assistant(provider)
    key = await gateway.key()
    fake_openai.reply = " ".join(["word"] * 1000)
    fake_openai.chunk_delay = 0.1  # a 100 s stream
    headers = {"Authorization": f"Bearer {key}"}
    url = gateway.base_url(assistant.id) + "/chat/completions"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"messages": MESSAGES, "stream": True}, headers=headers) as streamed:
            await streamed.content.readline()  # under way
            fake_openai.delay = 100  # and a call that has not been answered yet
            waiting = asyncio.create_task(session.post(url, json={"messages": MESSAGES}, headers=headers))
            while len(fake_openai.requests) < 2:
                await asyncio.sleep(0.01)
            closing = asyncio.create_task(gateway.server.close())  # SIGTERM does the same
            events = (await streamed.read()).decode()
        answered = await waiting
        assert answered.status == 503 and (await answered.json())["error"]["code"] == "server_shutting_down"
        await closing
    last = events.strip().split("\n\n")[-1]
    assert last.startswith("data: {") and '"code":"server_shutting_down"' in last
    assert not fake_openai.stream_finished.is_set()
    found = await db.fetch("SELECT status, stream, error_type FROM usage_events ORDER BY stream")
    assert [tuple(r) for r in found] == [(503, False, "api_error"), (503, True, "api_error")]
