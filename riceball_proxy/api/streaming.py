"""The streamed answer: the upstream call (with failover) and its payloads, written as Server-Sent Events
in the call's dialect (``riceball_proxy.dialects``), a failure after the first byte ending it with the
dialect's last event."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.api.routing import call_upstream
from riceball_proxy.coalesce import write_coalesced
from riceball_proxy.context import ChatContext
from riceball_proxy.dialects.chat import CHAT
from riceball_proxy.dialects.internal import stream_transformers, transformed_chunks
from riceball_proxy.errors import APIError
from riceball_proxy.inflight import shutting_down
from riceball_proxy.providers import adapter_failed

logger = logging.getLogger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # Tells nginx and similar proxies in front of the gateway not to buffer the stream.
    "X-Accel-Buffering": "no",
}


async def answer_stream(request: web.Request, ctx: ChatContext) -> web.StreamResponse:
    """Answer with SSE; an error that ends the stream early is kept in ``ctx.error``.

    One rule for failures: an APIError before the response is prepared is answered with its HTTP
    status; after it, with the dialect's last event (an error event, ``response.failed``...).
    """
    in_flight = ctx.app[appkeys.METRICS].streams_in_flight
    response = upstream = None
    try:
        # The first chunk is awaited before anything is sent, so an upstream that refuses the
        # request is answered with a proper HTTP status rather than an error event, or the call
        # fails over to the assistant's next target.
        first, upstream = await call_upstream(ctx, stream=True)

        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        in_flight.inc()
        await relay(ctx, first, upstream, response.write)
        await response.write_eof()
        return response
    finally:
        if response is not None and response.prepared:
            in_flight.dec()
        if upstream is not None:
            await upstream.aclose()


async def relay(ctx: ChatContext, first: bytes | None, upstream: AsyncIterator[bytes],
                write: Callable[[bytes], Awaitable[None]]) -> None:
    """``write`` the stream's events in the call's dialect, from its first payload on; a failure after
    that ends it with the dialect's last event, and is kept in ``ctx.error``."""
    dialect = ctx.dialect or CHAT
    events = dialect.events(ctx, _payloads(ctx, first, upstream))
    error = None
    try:
        await write_coalesced(write, events)  # the dialect's last event, unless the stream failed
    except APIError as exc:
        error = ctx.upstream_error = exc
        logger.warning("stream %s failed after it began (%s %s): %s", ctx.request_id, exc.status, exc.code,
                       (exc.detail or exc.message)[:500])
        await write(dialect.error_event(ctx, exc))
    except asyncio.CancelledError:
        if not ctx.shutting_down:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the gateway is stopping: the stream ends with a last event
        error = shutting_down()
        await write(dialect.error_event(ctx, error))
    except ConnectionResetError:
        raise
    except Exception:
        logger.exception("stream %s failed after it began", ctx.request_id)
        error = APIError(500, "The server had an error while streaming the answer.", type="server_error",
                         code="internal_error")
        await write(dialect.error_event(ctx, error))
    ctx.error = error


async def _payloads(ctx: ChatContext, first: bytes | None, upstream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The upstream's payloads, the first one (already awaited) included; notes when the first arrived."""
    if first is None:
        return
    ctx.first_token_at = time.perf_counter()
    yield first
    try:
        async for payload in upstream:
            yield payload
    except APIError:
        raise
    except Exception as exc:  # the boundary: an adapter's failure mid-stream is an APIError, logged once
        raise adapter_failed(ctx.provider.name if ctx.provider else "-", exc) from None


async def upstream_chunks(ctx: ChatContext) -> AsyncIterator[dict]:
    """A streamed call's chunks as :func:`transformed_chunks` gives them, the upstream call (with failover)
    made here and closed when the iteration ends, however it ends."""
    transformers = stream_transformers(ctx)
    first, upstream = await call_upstream(ctx, stream=True)
    try:
        async for chunk in transformed_chunks(ctx, _payloads(ctx, first, upstream), transformers):
            yield chunk
    finally:
        await upstream.aclose()


