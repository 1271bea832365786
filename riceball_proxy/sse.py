"""Reading and writing Server-Sent Events as the Chat Completions API uses them."""
from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from riceball_proxy.errors import APIError

DONE = b"[DONE]"


#: The longest line an upstream stream may send (aiohttp's own limit on a line read from a stream), and
#: the most data one event may gather from its lines before the blank line that ends it.
MAX_LINE = 2**21
MAX_EVENT = 2**22


def _too_large(what: str) -> APIError:
    """502 ``bad_upstream_response``: a stream no upstream sends in good faith; it fails over like any
    upstream failure before the client has seen a byte."""
    return APIError(502, f"the upstream's stream is not in the expected format ({what})", type="api_error",
                    code="bad_upstream_response")


async def iter_data(pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Yield the ``data`` of each event in a stream of bytes (multi-line data joined by newlines).

    ``pieces`` are the bytes as they arrive, cut anywhere (``response.content.iter_any()``), or lines.
    Comments, ``event:``/``id:``/``retry:`` fields and events without data are skipped. An event the
    stream ends in the middle of (no blank line after it) is incomplete and dropped, as the SSE
    specification says: a connection cut mid-event never passes for a whole event. A line longer than
    ``MAX_LINE``, or an event whose data passes ``MAX_EVENT``, raises APIError (502
    ``bad_upstream_response``): nothing an upstream sends is held without a bound.
    """
    data: list[bytes] = []
    data_size = 0
    pending: list[bytes] = []  # the start of a line whose end has not arrived
    pending_size = 0
    async for piece in pieces:
        if b"\n" not in piece:
            pending.append(piece)
            pending_size += len(piece)
            if pending_size > MAX_LINE:
                raise _too_large(f"a line longer than {MAX_LINE} bytes")
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
            raise _too_large(f"a line longer than {MAX_LINE} bytes")
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
                    data_size = 0
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
                data_size += len(value)
                if data_size > MAX_EVENT:
                    raise _too_large(f"an event of more than {MAX_EVENT} bytes")


def encode(data: bytes) -> bytes:
    """One SSE event carrying ``data`` (a single line of JSON)."""
    return b"data: " + data + b"\n\n"
