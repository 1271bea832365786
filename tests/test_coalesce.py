"""Events at hand leave in one write; an event that must wait is never held back by those after it."""
import asyncio

import pytest

from riceball_proxy.coalesce import write_coalesced


async def events_from(queue: asyncio.Queue):
    while True:
        item = await queue.get()
        if isinstance(item, Exception):
            raise item
        if item is None:
            return
        yield item


async def test_events_at_hand_are_joined_and_the_others_go_as_they_come():
    queue, writes = asyncio.Queue(), []

    async def write(data):
        writes.append(data)

    for event in (b"a", b"b", b"c"):
        queue.put_nowait(event)
    writer = asyncio.create_task(write_coalesced(write, events_from(queue)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert writes == [b"abc"]  # written before the next event came: nothing waits on the next one
    queue.put_nowait(b"d")
    for _ in range(5):
        await asyncio.sleep(0)
    assert writes == [b"abc", b"d"]
    queue.put_nowait(b"e")
    queue.put_nowait(b"f")
    queue.put_nowait(None)
    await writer
    assert writes == [b"abc", b"d", b"ef"]


async def test_what_came_before_a_failure_is_written_then_the_failure_raised():
    queue, writes = asyncio.Queue(), []

    async def write(data):
        writes.append(data)

    for item in (b"a", b"b", ValueError("broken")):
        queue.put_nowait(item)
    with pytest.raises(ValueError, match="broken"):
        await write_coalesced(write, events_from(queue))
    assert writes == [b"ab"]


async def test_a_cancelled_writer_stops_waiting_and_the_events_generator_hears_it():
    queue, writes, heard = asyncio.Queue(), [], []

    async def write(data):
        writes.append(data)

    async def events():
        try:
            async for event in events_from(queue):
                yield event
        except asyncio.CancelledError:
            heard.append("cancelled")
            raise

    queue.put_nowait(b"a")
    writer = asyncio.create_task(write_coalesced(write, events()))
    for _ in range(5):
        await asyncio.sleep(0)
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert writes == [b"a"] and heard == ["cancelled"]


async def test_a_failed_write_closes_the_waiting_step():
    queue = asyncio.Queue()

    async def write(data):
        raise ConnectionResetError("the client went away")

    queue.put_nowait(b"a")
    with pytest.raises(ConnectionResetError):
        await write_coalesced(write, events_from(queue))
