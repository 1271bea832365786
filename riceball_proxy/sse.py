"""Reading and writing Server-Sent Events as the Chat Completions API uses them."""
from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

DONE = b"[DONE]"


async def iter_data(lines: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Yield the ``data`` of each event in a stream of SSE lines (multi-line data joined by newlines).

    Comments, ``event:``/``id:``/``retry:`` fields and events without data are skipped. An event the
    stream ends in the middle of (no blank line after it) is incomplete and dropped, as the SSE
    specification says: a connection cut mid-event never passes for a whole event.
    """
    data: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)


def encode(data: bytes) -> bytes:
    """One SSE event carrying ``data`` (a single line of JSON)."""
    return b"data: " + data + b"\n\n"
