"""Reading a request's body the way a gateway exposed to anyone must: within a deadline, within a bound
on its size once decoded, and decoded by the gateway itself.

aiohttp's own decoding of ``Content-Encoding`` is off (``auto_decompress=False``): it turns a body that
is not in its declared encoding into a 500 or a plain-text 400, and an encoding it has no library for
into another. Here ``gzip`` and ``deflate`` are decoded with ``zlib``, never past the size limit (a
"zip bomb" is a 413 before it is inflated), and anything else is an error the caller answers in its own
shape (the API in OpenAI's, the admin panel with its error page).
"""
from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.proxies import client_address

#: zlib's window bits for each encoding: gzip's header, or deflate's (zlib's), read automatically.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}
#: Bytes decoded at a time.
_CHUNK = 2**16


class SlowClients:
    """Clients that missed the read deadline, with their request head (``connections``) or body: each
    address said once in the log (a bounded table, the oldest forgotten first), every one counted
    (``on_slow``)."""

    #: What the client was told, by the part of the request that was late.
    _OUTCOME = {"body": "answered 408 and closed", "headers": "closed without an answer"}

    def __init__(self, logger, on_slow=lambda: None, *, remember: int = 10_000):
        import cachetools

        self.logger = logger
        self.on_slow = on_slow
        self._said: cachetools.LRUCache = cachetools.LRUCache(maxsize=remember)

    def slow(self, address: str | None, deadline: float, *, part: str = "body") -> None:
        self.on_slow()
        if address not in self._said:
            self._said[address] = True
            self.logger.warning("client %s did not send its request %s within %g s: %s (later ones from this "
                                "address are counted in riceball_slow_requests_total, not logged)",
                                address, part, deadline, self._OUTCOME[part])


class BodyBudget:
    """Bytes of request bodies held at once (read, parsed, until their call ends): at most ``total`` for
    the process, at most ``per_caller`` for one caller (an API key). A body is counted at its declared
    ``Content-Length`` (at the size limit when it declares none) before a byte of it is read, so a burst
    of large bodies is refused before it costs memory. One entry per caller holding bytes: bounded by
    the callers in flight."""

    def __init__(self, total: int, per_caller: int):
        self.total = total
        self.per_caller = per_caller
        self.held = 0
        self._by_caller: dict = {}

    def take(self, caller, size: int) -> None:
        """Count ``size`` bytes for ``caller``; BodyError when that passes a bound (503 for the process's,
        429 for the caller's, each with ``Retry-After``)."""
        if self.held + size > self.total:
            raise BodyError(503, "The gateway is reading as many request bodies as it can hold; retry shortly.",
                            "server_busy")
        caller_held = self._by_caller.get(caller, 0)
        if caller_held + size > self.per_caller:
            raise BodyError(429, f"This API key's requests in flight already hold {caller_held:,} bytes of "
                                 f"body; its bound is {self.per_caller:,}. Retry when one has ended.",
                            "too_many_request_bytes")
        self.held += size
        self._by_caller[caller] = caller_held + size

    def give(self, caller, size: int) -> None:
        """Give back what :meth:`take` counted."""
        self.held -= size
        left = self._by_caller.get(caller, 0) - size
        if left > 0:
            self._by_caller[caller] = left
        else:
            self._by_caller.pop(caller, None)


class BodyError(Exception):
    """A body that cannot be read: ``status`` (400, 408, 413), a message for the client and a code."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def content_encoding(request: web.Request) -> str:
    """The body's declared encoding, in lower case; ``""`` for none (``identity``)."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    return "" if encoding == "identity" else encoding


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The body, decoded, at most ``limit`` bytes; BodyError when it does not arrive within the client
    read deadline (408: the client is also reported to the app's SlowClients), is larger (413), or is
    not in its declared encoding (400)."""
    deadline = request.config_dict[appkeys.SETTINGS].client_read_timeout
    try:
        if request.content.is_eof():  # all of it has arrived (the common case): no timer to set
            raw = await request.read()
        else:
            async with asyncio.timeout(deadline):
                raw = await request.read()
    except TimeoutError:
        request.config_dict[appkeys.SLOW_CLIENTS].slow(client_address(request), deadline)
        raise BodyError(408, f"The request body did not arrive within {deadline:g} seconds.",
                        "request_timeout") from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None
    encoding = content_encoding(request)
    if not encoding:
        return raw
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise BodyError(400, f"Content-Encoding {encoding!r} is not accepted: send the body as it is, or with "
                             "gzip or deflate.", "unsupported_content_encoding")
    return decode(raw, wbits, limit, encoding)


def decode(raw: bytes, wbits: int, limit: int, encoding: str) -> bytes:
    """``raw`` inflated, never past ``limit`` bytes."""
    decoder = zlib.decompressobj(wbits)
    out, size, data = [], 0, raw
    try:
        while data:
            piece = decoder.decompress(data, _CHUNK)
            size += len(piece)
            if size > limit:
                raise too_large(limit)
            out.append(piece)
            data = decoder.unconsumed_tail
        rest = decoder.flush()
        if size + len(rest) > limit:
            raise too_large(limit)
        out.append(rest)
        if not decoder.eof:
            raise zlib.error("the data ends before the end of the stream")
    except zlib.error:
        raise BodyError(400, f"The request body is not valid {encoding} data, as its Content-Encoding says.",
                        "invalid_content_encoding") from None
    return b"".join(out)


async def answered_and_closed(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send ``response`` now and close the connection behind it: a client too slow to send its body is not
    kept (aiohttp would otherwise read what it still trickles for its lingering time)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the answer is in the transport's buffer: flushed, then closed
    return response


def too_large(limit: int) -> BodyError:
    return BodyError(413, f"The request body is too large (the limit is {limit} bytes).", "request_too_large")
