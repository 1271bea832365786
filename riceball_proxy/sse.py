"""Reading and writing Server-Sent Events as the Chat Completions API uses them."""
from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

DONE = b"[DONE]"


#: The longest line an upstream stream may send (aiohttp's own limit on a line read from a stream).
MAX_LINE = 2**21


async def iter_data(pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Yield the ``data`` of each event in a stream of bytes (multi-line data joined by newlines).

    ``pieces`` are the bytes as they arrive, cut anywhere (``response.content.iter_any()``), or lines.
    Comments, ``event:``/``id:``/``retry:`` fields and events without data are skipped. An event the
    stream ends in the middle of (no blank line after it) is incomplete and dropped, as the SSE
    specification says: a connection cut mid-event never passes for a whole event. A line longer than
    ``MAX_LINE`` raises ValueError.
    """
    data: list[bytes] = []
    pending: list[bytes] = []  # the start of a line whose end has not arrived
    pending_size = 0
    async for piece in pieces:
        if b"\n" not in piece:
            pending.append(piece)
            pending_size += len(piece)
            if pending_size > MAX_LINE:
                raise ValueError(f"an event stream line longer than {MAX_LINE} bytes")
            continue
        if pending:
            piece = b"".join((*pending, piece))
            pending.clear()
        lines = piece.split(b"\n")
        rest = lines.pop()
        if rest:
            pending.append(rest)
        pending_size = len(rest)
        if pending_size > MAX_LINE:
            raise ValueError(f"an event stream line longer than {MAX_LINE} bytes")
        for line in lines:
            line = line.rstrip(b"\r")
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
