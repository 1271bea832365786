"""The internal form's streams, whatever the dialect: Chat Completions chunks parsed (their usage
recorded, what they relay counted) and passed through the plugins' transformers
(``riceball_transform_stream``), folded in call order. The dialects render them; the admin playground
reads them too."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import orjson

from riceball_proxy import appkeys
from riceball_proxy.context import ChatContext
from riceball_proxy.estimates import answer_chars


def stream_transformers(ctx: ChatContext) -> list[Callable[[AsyncIterator[dict]], AsyncIterator[dict]]]:
    """The transformers the plugins give this call's stream (``riceball_transform_stream``), in call order."""
    return [t for t in ctx.app[appkeys.PLUGIN_MANAGER].hook.riceball_transform_stream(ctx=ctx) if t is not None]


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
            ctx.note_chunk(chunk)
            ctx.relayed_chars += answer_chars(chunk.get("choices"), "delta")
            yield chunk

    stream: AsyncIterator[dict] = chunks()
    for transform in transformers:
        stream = transform(stream)
    return stream
