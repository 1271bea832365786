"""OpenAI Chat Completions, the first dialect and the gateway's internal form: a request is taken as it
is, answers and chunks go out as the provider's adapter gave them (through the plugins' transformers,
or untouched on the fast path), errors in OpenAI's shape."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from riceball_proxy import sse
from riceball_proxy.context import ChatContext
from riceball_proxy.dialects import Dialect
from riceball_proxy.dialects.internal import stream_transformers, transformed_chunks
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import chunk_chars
from riceball_proxy.validation import validate_chat_request


class ChatCompletions(Dialect):
    name = "chat"
    path = "/chat/completions"

    def take(self, ctx, request, body, raw) -> None:
        ctx.take_body(validate_chat_request(body), raw)

    async def answer(self, ctx, answer: dict[str, Any]) -> dict[str, Any]:
        return answer

    def events(self, ctx, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Through the plugins' transformers, or (with none, the fast path) as the adapter gave them."""
        transformers = stream_transformers(ctx)
        return _transformed_events(ctx, payloads, transformers) if transformers else _raw_events(ctx, payloads)

    def error_event(self, ctx, error: APIError) -> bytes:
        return sse.encode(orjson.dumps(error.body()))


CHAT = ChatCompletions()

DONE_EVENT = sse.encode(sse.DONE)
#: The ``"usage": null`` every chunk carries once usage is asked for; OpenAI leaves it out when the client
#: did not ask, so the gateway (which always asks) takes it out again.
NULL_USAGE = (b',"usage":null', b', "usage": null')


async def _raw_events(ctx: ChatContext, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The fast path: the adapter's chunks forwarded as they are, looked into only for usage (and the
    answer's id, model and finish reasons, on the chunks that carry them)."""
    strip_null_usage = not ctx.client_wants_usage
    async for payload in payloads:
        if _may_carry_usage(payload):
            if not _keep_after_usage(ctx, orjson.loads(payload)):
                continue
        elif b'"finish_reason":"' in payload or b'"finish_reason": "' in payload:
            ctx.note_chunk(orjson.loads(payload))  # once or so a stream: the chunk that ends a choice
        # What the client gets is counted as it goes: if the upstream never reports usage (or the
        # client leaves first), the call is charged an estimate of it. About a microsecond a chunk.
        ctx.relayed_chars += chunk_chars(payload)
        if strip_null_usage and b'"usage":' in payload:
            for null_usage in NULL_USAGE:
                payload = payload.replace(null_usage, b"")
        yield sse.encode(payload)
    yield DONE_EVENT


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
    ctx.note_chunk(chunk)
    usage = chunk.get("usage")
    if usage is None:
        return True
    ctx.record_usage(usage)
    return ctx.client_wants_usage or bool(chunk.get("choices")) or not isinstance(usage, dict)
