"""Reading Server-Sent Events: whole events only, each of bounded size."""
import pytest

from riceball_proxy import sse
from riceball_proxy.errors import APIError


async def lines(*items: bytes):
    for item in items:
        yield item


async def test_events_are_their_data_lines_joined_and_a_cut_event_is_dropped():
    stream = lines(b": a comment\n", b"event: x\n", b"data: {\"a\":\n", b"data: 1}\n", b"\n",
                   b"data:[DONE]\r\n", b"\r\n", b"data: {\"cut\": ")
    assert [data async for data in sse.iter_data(stream)] == [b'{"a":\n1}', b"[DONE]"]


async def test_the_same_events_however_the_bytes_are_cut():
    stream = (b": hi\r\n\r\ndata: {\"n\": 1}\n\ndata: {\"a\":\ndata: 2}\r\n\r\nevent: x\ndata: [DONE]\n\n"
              b"data: {\"cut\"")
    expected = [b'{"n": 1}', b'{"a":\n2}', b"[DONE]"]
    for size in range(1, len(stream) + 1):  # pieces of every size, and every two cuts for small ones
        pieces = [stream[i:i + size] for i in range(0, len(stream), size)]
        assert [data async for data in sse.iter_data(lines(*pieces))] == expected, size
    for first in range(len(stream)):
        for second in range(first, len(stream)):
            pieces = stream[:first], stream[first:second], stream[second:]
            assert [data async for data in sse.iter_data(lines(*pieces))] == expected, (first, second)


async def test_a_line_past_the_limit_is_refused():
    pieces = [b"data: " + b"x" * (sse.MAX_LINE // 4)] * 5
    with pytest.raises(APIError, match="longer than") as raised:
        [data async for data in sse.iter_data(lines(*pieces))]
    assert (raised.value.status, raised.value.code) == (502, "bad_upstream_response")
    whole = [b"data: " + b"x" * (sse.MAX_LINE // 4), b"x\n\n"]  # under the limit: one event
    assert [len(data) async for data in sse.iter_data(lines(*whole))] == [sse.MAX_LINE // 4 + 1]


async def test_an_event_gathering_data_lines_past_the_limit_is_refused():
    line = b"data: " + b"x" * 1000 + b"\n"
    endless = [line] * (sse.MAX_EVENT // 1000 + 2)  # never a blank line
    with pytest.raises(APIError, match="an event of more than") as raised:
        [data async for data in sse.iter_data(lines(*endless))]
    assert raised.value.code == "bad_upstream_response"
    events = [line] * 100 + [b"\n"]  # many lines, well under the bound: one event
    assert [len(data) async for data in sse.iter_data(lines(*events))] == [100 * 1000 + 99]
