"""The streamed answer: the adapter's chunks as Server-Sent Events, through the plugins' transformers or
(the fast path, with none) as they came."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from riceball_proxy import appkeys, sse
from riceball_proxy.api.routing import call_upstream
from riceball_proxy.coalesce import write_coalesced
from riceball_proxy.context import ChatContext
from riceball_proxy.dialects.chat import CHAT
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import answer_chars, chunk_chars
from riceball_proxy.inflight import shutting_down
from riceball_proxy.providers import adapter_failed

logger = logging.getLogger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # Tells nginx and similar proxies in front of the gateway not to buffer the stream.
    "X-Accel-Buffering": "no",
}
DONE_EVENT = sse.encode(sse.DONE)


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
        asyncio.current_task().uncancel()  # the gateway is stopping: the stream ends with a last event
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


def chat_events(ctx: ChatContext, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A Chat Completions stream as sent: through the plugins' transformers, or (with none) untouched."""
    transformers = stream_transformers(ctx)
    return _transformed_events(ctx, payloads, transformers) if transformers else _raw_events(ctx, payloads)


def stream_transformers(ctx: ChatContext) -> list[Callable[[AsyncIterator[dict]], AsyncIterator[dict]]]:
    """The transformers the plugins give this call's stream (``riceball_transform_stream``), in call order."""
    return [t for t in ctx.app[appkeys.PLUGIN_MANAGER].hook.riceball_transform_stream(ctx=ctx) if t is not None]


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


#: The ``"usage": null`` every chunk carries once usage is asked for; OpenAI leaves it out when the client
#: did not ask, so the gateway (which always asks) takes it out again.
NULL_USAGE = (b',"usage":null', b', "usage": null')


async def _raw_events(ctx: ChatContext, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The fast path: the adapter's chunks forwarded as they are, looked into only for usage."""
    strip_null_usage = not ctx.client_wants_usage
    async for payload in payloads:
        if _may_carry_usage(payload) and not _keep_after_usage(ctx, orjson.loads(payload)):
            continue
        # What the client gets is counted as it goes: if the upstream never reports usage (or the
        # client leaves first), the call is charged an estimate of it. About a microsecond a chunk.
        ctx.relayed_chars += chunk_chars(payload)
        if strip_null_usage and b'"usage":' in payload:
            for null_usage in NULL_USAGE:
                payload = payload.replace(null_usage, b"")
        yield sse.encode(payload)
    yield DONE_EVENT


def transformed_chunks(
    ctx: ChatContext,
    payloads: AsyncIterator[bytes],
    transformers: list[Callable[[AsyncIterator[dict]], AsyncIterator[dict]]],
) -> AsyncIterator[dict]:
    """Chunks parsed (their usage recorded) and passed through the plugins' transformers, folded in call
    order: what a client is sent (the admin playground reads them too)."""

    async def chunks() -> AsyncIterator[dict]:
        async for payload in payloads:
            chunk = orjson.loads(payload)
            if chunk.get("usage") is not None:
                ctx.record_usage(chunk["usage"])
            ctx.relayed_chars += answer_chars(chunk.get("choices"), "delta")
            yield chunk

    stream: AsyncIterator[dict] = chunks()
    for transform in transformers:
        stream = transform(stream)
    return stream


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


async def _transformed_events(
    ctx: ChatContext,
    payloads: AsyncIterator[bytes],
    transformers: list[Callable[[AsyncIterator[dict]], AsyncIterator[dict]]],
) -> AsyncIterator[bytes]:
    """Chunks parsed, passed through the plugins' transformers (folded in call order), re-serialised."""
    async for chunk in transformed_chunks(ctx, payloads, transformers):
        if not ctx.client_wants_usage:
            if chunk.get("usage") is not None and not chunk.get("choices"):
                continue  # the usage-only chunk the client did not ask for
            if "usage" in chunk and chunk["usage"] is None:
                del chunk["usage"]
        yield sse.encode(orjson.dumps(chunk))
    yield DONE_EVENT


def _may_carry_usage(payload: bytes) -> bool:
    # With include_usage every chunk has "usage":null; only a non-null one needs parsing.
    return b'"usage"' in payload and b'"usage":null' not in payload and b'"usage": null' not in payload


def _keep_after_usage(ctx: ChatContext, chunk: dict[str, Any]) -> bool:
    """Record the usage a chunk carries; False for the usage-only chunk the client did not ask for."""
    usage = chunk.get("usage")
    if usage is None:
        return True
    ctx.record_usage(usage)
    return ctx.client_wants_usage or bool(chunk.get("choices")) or not isinstance(usage, dict)
