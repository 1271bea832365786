"""Background loops under faults: a database away is retried and said once; a bug is said with its
traceback, once, and not retried for ever."""
import asyncio
import json
import logging

from riceball_proxy import appkeys
from riceball_proxy.db import usage_events
from riceball_proxy.faults import FailureLog, database_away
from tests.tcp_proxy import TcpProxy

MESSAGES = [{"role": "user", "content": "hello"}]


def test_a_failure_log_gives_each_cause_its_traceback_once_then_a_line_a_minute(caplog):
    caplog.set_level(logging.INFO)
    failures = FailureLog(logging.getLogger("riceball_proxy.test"), "the test loop", every=60)
    for _ in range(50):
        failures.failed(ConnectionRefusedError(111, "refused"))
    for _ in range(50):
        failures.failed(KeyError("bug"), retrying=False)
    records = [r for r in caplog.records if r.name == "riceball_proxy.test"]
    assert [(r.levelname, r.exc_info is not None) for r in records] == [("WARNING", True), ("ERROR", True)]
    assert "KeyError: 'bug'" in records[1].getMessage() and "not retried" in records[1].getMessage()
    failures.recovered()
    failures.failed(ConnectionRefusedError(111, "refused"))  # after a recovery: said afresh
    assert [r.getMessage() for r in caplog.records if r.name == "riceball_proxy.test"][-2:] == [
        "the test loop works again", "the test loop failed (ConnectionRefusedError: [Errno 111] refused); retrying"]
    assert database_away(TimeoutError()) and database_away(OSError()) and not database_away(ValueError())


async def test_a_bug_in_the_usage_writer_sets_its_batch_aside_once_and_the_cause_is_logged(
        start_gateway, settings, fake_openai, monkeypatch, caplog):
    gateway = await start_gateway(settings.replace(usage_flush_interval=0.05))
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    key = await gateway.key()
    calls = []

    async def buggy(pool, events):  # a bug in the writer, not the database: no retry will fix it
        calls.append(len(events))
        raise AttributeError("'NoneType' object has no attribute 'copy_records_to_table'")

    monkeypatch.setattr(usage_events, "insert_many", buggy)
    async with gateway.client(assistant.id, key) as client:
        for _ in range(3):
            await client.chat.completions.create(model="x", messages=MESSAGES)
    recorder = gateway.app[appkeys.USAGE_RECORDER]
    for _ in range(100):
        if not recorder.pending and sum(calls) >= 3:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # several flush intervals: nothing is tried again
    assert sum(calls) == 3 and not recorder.pending
    dead = [json.loads(line) for path in (settings.data_dir / "usage-dead-letter").iterdir()
            for line in path.read_text().splitlines()]
    assert len(dead) == 3 and {row["status"] for row in dead} == {200}
    errors = [r for r in caplog.records if r.name == "riceball_proxy.usage" and r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None and "AttributeError" in errors[0].getMessage()


async def test_the_readiness_check_and_writers_say_a_lost_database_once(start_gateway, settings, clean_database,
                                                                      caplog):
    caplog.set_level(logging.INFO, logger="riceball_proxy.db")
    proxy = await TcpProxy(clean_database).start()
    gateway = await start_gateway(settings.replace(database_url=proxy.url(), usage_flush_interval=0.05))
    database = gateway.app[appkeys.DATABASE]
    try:
        proxy.block()
        for _ in range(5):
            assert not await database.is_ready(timeout=0.5)
        said = [r for r in caplog.records if "readiness check failed" in r.getMessage()]
        assert len(said) == 1 and said[0].exc_info is not None and said[0].levelname == "WARNING"
        proxy.unblock()
        for _ in range(100):
            if await database.is_ready(timeout=0.5):
                break
            await asyncio.sleep(0.05)
        assert any("readiness check works again" in r.getMessage() for r in caplog.records)
    finally:
        await proxy.close()


async def test_a_bug_in_the_configuration_listener_is_said_once_and_entries_expire_instead(
        start_gateway, settings, fake_openai, monkeypatch, caplog):
    from riceball_proxy import cache

    # A bug on the listener's side, not the database away: it listens on a channel that is no name.
    monkeypatch.setattr(cache, "CHANNEL", 404)
    monkeypatch.setattr(cache, "LISTENER_RETRY_DELAY", 0.01)  # a listener that retried would do it at once
    gateway = await start_gateway(settings.replace(cache_ttl=0.2))  # ready: entries kept for the TTL
    assistant = await gateway.assistant(await gateway.provider(fake_openai.base_url))
    async with gateway.client(assistant.id, await gateway.key()) as client:
        await client.chat.completions.create(model="x", messages=MESSAGES)
    await asyncio.sleep(0.1)  # ten retry delays
    assert not any("listening for configuration changes" in r.getMessage() for r in caplog.records[1:])
    errors = [r for r in caplog.records if r.name == "riceball_proxy.cache" and r.levelname == "ERROR"]
    assert [r.exc_info is not None for r in errors] == [True, False]
    assert "AttributeError" in errors[0].getMessage() and "expire every 0.2 s" in errors[1].getMessage()
