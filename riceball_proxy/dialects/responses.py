"""OpenAI's Responses API, the third dialect (what Codex, the Agents SDK and Responses-first SDKs speak).

Stateless like the rest of the API: nothing is stored; the client sends the whole conversation as
``input`` every time. Every provider is bridged: the request is translated to Chat Completions (the
internal form) and the answer rendered back as a ``response`` object or as Responses events
(``dialects/openai_responses.py`` has the wire rules). Errors before the stream are OpenAI's shape; a
failure after it began is ``response.failed``, never a bare cut.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from riceball_proxy.dialects import Dialect, openai_responses as wire
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import estimated_usage


class Responses(Dialect):
    name = "responses"
    path = "/responses"

    def take(self, ctx, request, body, raw) -> None:
        ctx.client_body = wire.check_request(body)
        chat, ctx.tool_names = wire.to_chat(body)
        ctx.stream = body.get("stream") is True
        if ctx.stream:
            chat["stream_options"] = {"include_usage": True}
        ctx.body = chat
        ctx.derived_fields = frozenset(wire.DERIVED_FIELDS & chat.keys())

    async def answer(self, ctx, answer: dict[str, Any]) -> dict[str, Any]:
        return wire.from_chat(answer, ctx.client_body, ctx.tool_names, wire.new_id("resp"),
                              answer.get("model") or ctx.assistant.model)

    async def events(self, ctx, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        from riceball_proxy.api.streaming import stream_transformers, transformed_chunks

        renderer = ctx.stream_state = wire.StreamRenderer(ctx.client_body, ctx.tool_names, ctx.assistant.model)
        for event in renderer.start():
            yield event
        async for chunk in transformed_chunks(ctx, payloads, stream_transformers(ctx)):
            for event in renderer.chunk(chunk):
                yield event
        usage = ctx.usage if ctx.usage.prompt_tokens is not None else estimated_usage(ctx.body, ctx.relayed_chars)
        for event in renderer.finish({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                      "prompt_tokens_details": {"cached_tokens": usage.cached_tokens or 0},
                                      "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0}}):
            yield event

    def error_event(self, ctx, error: APIError) -> bytes:
        renderer = ctx.stream_state
        if renderer is None:  # failed before the first event: a stream of one
            renderer = wire.StreamRenderer(ctx.client_body, ctx.tool_names, ctx.assistant.model)
        return renderer.failed(error)


RESPONSES = Responses()
