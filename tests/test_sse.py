"""Reading Server-Sent Events: whole events only."""
from riceball_proxy import sse


async def lines(*items: bytes):
    for item in items:
        yield item


async def test_events_are_their_data_lines_joined_and_a_cut_event_is_dropped():
    stream = lines(b": a comment\n", b"event: x\n", b"data: {\"a\":\n", b"data: 1}\n", b"\n",
                   b"data:[DONE]\r\n", b"\r\n", b"data: {\"cut\": ")
    assert [data async for data in sse.iter_data(stream)] == [b'{"a":\n1}', b"[DONE]"]
