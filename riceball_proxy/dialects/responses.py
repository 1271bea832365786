"""OpenAI's Responses API, the third dialect (what Codex, the Agents SDK and Responses-first SDKs speak).

Stateless like the rest of the API: nothing is stored; the client sends the whole conversation as
``input`` every time. A provider that speaks Responses (the ``openai-responses`` type) is sent the
client's body with the assistant injected in Responses' own terms, its answer and events passed back
(read for usage); any other provider is bridged: the request is translated to Chat Completions (the
internal form) and the answer rendered back as a ``response`` object or as Responses events
(``dialects/openai_responses.py`` has the wire rules). Errors before the stream are OpenAI's shape; a
failure after it began is ``response.failed``, never a bare cut.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from riceball_proxy.dialects import Dialect, session_cache_key
from riceball_proxy.dialects import openai_responses as wire
from riceball_proxy.dialects.internal import stream_transformers, transformed_chunks
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import estimated_usage
from riceball_proxy.upstream import bad_upstream_response
from riceball_proxy.validation import parse_json


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
        if any("reasoning_details" in message for message in chat["messages"]):
            ctx.derived_fields |= {"reasoning_details"}
        session_cache_key(ctx, request)
        ctx.native_body = parse_json(raw)  # a copy of its own: it is injected
        ctx.native_body.pop("generate", None)

    def inject(self, ctx) -> None:
        wire.inject(ctx.native_body, ctx.assistant)

    def apply_params(self, body: dict[str, Any], params: dict[str, Any], locked) -> None:
        wire.apply_params(body, params, locked)

    def native_usage(self, usage: Any) -> Any:
        return wire.usage_to_chat(usage)

    def note_native_answer(self, ctx, answer: dict[str, Any]) -> None:
        """A response's finish reason: why it is incomplete (``max_output_tokens``...), else its status."""
        details = answer.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        ctx.note_answer(answer.get("id"), answer.get("model"), [reason or answer.get("status")])

    async def answer(self, ctx, answer: dict[str, Any]) -> dict[str, Any]:
        if ctx.served_natively:
            return answer
        return wire.from_chat(answer, ctx.client_body, ctx.tool_names, wire.new_id("resp"),
                              answer.get("model") or ctx.assistant.model)

    def events(self, ctx, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return self._native_events(ctx, payloads) if ctx.served_natively else self._rendered_events(ctx, payloads)

    async def _native_events(self, ctx, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The provider's own events, each read for what it relays; the last one for the usage. Its
        response id, numbering and finished items are followed, so that a failure (``error_event``)
        ends the stream as the provider's own response, numbered on."""
        state = ctx.stream_state = wire.StreamRenderer(ctx.client_body, ctx.tool_names, ctx.assistant.model)
        async for payload in payloads:
            data = orjson.loads(payload)
            kind = data.get("type") if type(data) is dict else None
            if not isinstance(kind, str):
                raise bad_upstream_response("stream")
            if type(data.get("sequence_number")) is int:
                state.sequence = data["sequence_number"] + 1
            if kind == "response.output_text.delta":
                ctx.relayed_chars += len(data.get("delta") or "")
            elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
                state.output.append(data["item"])
            elif kind == "response.created" and isinstance((data.get("response") or {}).get("id"), str):
                state.response_id = data["response"]["id"]
            elif kind in ("response.completed", "response.incomplete"):
                ctx.record_usage(wire.usage_to_chat((data.get("response") or {}).get("usage")))
                if isinstance(data.get("response"), dict):
                    self.note_native_answer(ctx, data["response"])
            yield b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    async def _rendered_events(self, ctx, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
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

    def error_response(self, error: APIError, request_id: str | None):
        """OpenAI's error shape, always with a code a Responses client reads (Codex:
        ``context_length_exceeded``, ``rate_limit_exceeded``...)."""
        if error.code is None or (error.code != "context_length_exceeded"
                                  and wire.failure_code(error) == "context_length_exceeded"):
            error = APIError(error.status, error.message, type=error.type, param=error.param,
                             code=wire.failure_code(error), headers=error.headers, detail=error.detail)
        return error.response()

    def error_event(self, ctx, error: APIError) -> bytes:
        renderer = ctx.stream_state
        if renderer is None:  # failed before the first event: a stream of one
            renderer = wire.StreamRenderer(ctx.client_body, ctx.tool_names, ctx.assistant.model)
        return renderer.failed(error)


RESPONSES = Responses()
