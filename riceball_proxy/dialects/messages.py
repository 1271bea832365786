"""Anthropic's Messages API, the second dialect (what Claude Code speaks).

A provider that speaks Messages (Anthropic) is sent the client's body with the assistant injected in
Messages' own terms, its answer and events passed back as they came (read for usage); any other
provider gets the request translated to Chat Completions, and its answer rendered back as a message
or as Messages events (``dialects/anthropic_messages.py`` has the wire rules). Errors go out in
Anthropic's shape: ``{"type": "error", "error": {"type", "message"}, "request_id"}``.
"""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from riceball_proxy.caching import messages_with_breakpoints
from riceball_proxy.dialects import Dialect, session_cache_key
from riceball_proxy.dialects import anthropic_messages as wire
from riceball_proxy.dialects.internal import stream_transformers, transformed_chunks
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import estimate_prompt_tokens, estimated_usage
from riceball_proxy.upstream import bad_upstream_response
from riceball_proxy.validation import parse_json

#: The request headers passed on to a provider that speaks Messages.
NATIVE_HEADERS = ("anthropic-version", "anthropic-beta")
#: Anthropic's error type for each status the gateway answers (any other 4xx: invalid_request_error).
ERROR_TYPES = {401: "authentication_error", 402: "billing_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 502: "api_error",
               504: "timeout_error", 529: "overloaded_error"}
#: Anthropic's "overloaded": what the gateway answers 503 for (a provider or the gateway too busy).
OVERLOADED = 529


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(error: APIError, request_id: str | None = None) -> dict[str, Any]:
    status = OVERLOADED if error.status == 503 else error.status
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type(status), "message": error.message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


class Messages(Dialect):
    name = "messages"
    path = "/messages"

    def take(self, ctx, request, body, raw) -> None:
        ctx.client_body = wire.check_request(body)
        native = ctx.native_body = wire.check_request(parse_json(raw))  # a copy of its own: it is injected
        chat, ctx.tool_names, ctx.untranslatable = wire.to_chat(native)
        ctx.stream = native.get("stream") is True
        if ctx.stream:
            chat["stream_options"] = {"include_usage": True}
        ctx.body = chat
        ctx.derived_fields = frozenset(wire.DERIVED_FIELDS & chat.keys())
        ctx.native_headers = {name: request.headers[name] for name in NATIVE_HEADERS if name in request.headers}
        session_cache_key(ctx, request)

    def inject(self, ctx) -> None:
        wire.inject(ctx.native_body, ctx.assistant)

    def apply_params(self, body: dict[str, Any], params: dict[str, Any], locked) -> None:
        wire.apply_params(body, params, locked)

    def with_breakpoints(self, body: dict[str, Any]) -> dict[str, Any]:
        return messages_with_breakpoints(body)

    def native_usage(self, usage: Any) -> Any:
        return wire.usage_to_chat(usage) if isinstance(usage, dict) else usage

    def note_native_answer(self, ctx, answer: dict[str, Any]) -> None:
        ctx.note_answer(answer.get("id"), answer.get("model"), [answer.get("stop_reason")])

    async def answer(self, ctx, answer: dict[str, Any]) -> dict[str, Any]:
        if ctx.served_natively:
            return answer
        return wire.from_chat(answer, ctx.tool_names, _message_id(), answer.get("model") or ctx.assistant.model)

    def events(self, ctx, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return self._native_events(ctx, payloads) if ctx.served_natively else self._rendered_events(ctx, payloads)

    async def _native_events(self, ctx, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The provider's own events, each read for usage and for what it relays."""
        usage: dict[str, Any] = {}
        async for payload in payloads:
            data = orjson.loads(payload)
            kind = data.get("type") if type(data) is dict else None
            if not isinstance(kind, str):
                raise bad_upstream_response("stream")
            if kind == "content_block_delta":
                delta = data.get("delta") or {}
                ctx.relayed_chars += len(delta.get("text") or delta.get("partial_json") or delta.get("thinking") or "")
            elif kind == "message_start":
                message = data.get("message") or {}
                usage.update(message.get("usage") or {})
                ctx.note_answer(message.get("id"), message.get("model"))
            elif kind == "message_delta":
                usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
                ctx.record_usage(wire.usage_to_chat(usage))
                delta = data.get("delta")
                if type(delta) is dict:
                    ctx.note_answer(None, None, [delta.get("stop_reason")])
            yield b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    async def _rendered_events(self, ctx, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A Chat Completions stream rendered as Messages events (``anthropic_messages.StreamRenderer``)."""
        renderer = wire.StreamRenderer(ctx.tool_names, _message_id(), ctx.assistant.model)
        started = False
        async for chunk in transformed_chunks(ctx, payloads, stream_transformers(ctx)):
            if not started:
                started = True
                renderer.model = chunk.get("model") or renderer.model
                yield renderer.start(estimate_prompt_tokens(ctx.body))
            for event in renderer.chunk(chunk):
                yield event
        if not started:
            yield renderer.start(estimate_prompt_tokens(ctx.body))
        usage = ctx.usage if ctx.usage.prompt_tokens is not None else estimated_usage(ctx.body, ctx.relayed_chars)
        for event in renderer.finish({"prompt_tokens": usage.prompt_tokens,
                                      "completion_tokens": usage.completion_tokens,
                                      "prompt_tokens_details": {"cached_tokens": usage.cached_tokens or 0}}):
            yield event

    def error_response(self, error: APIError, request_id: str | None) -> web.Response:
        headers = {**(error.headers or {}), **({"request-id": request_id} if request_id else {})}
        return web.Response(status=OVERLOADED if error.status == 503 else error.status,
                            body=orjson.dumps(error_body(error, request_id)), content_type="application/json",
                            headers=headers)

    def error_event(self, ctx, error: APIError) -> bytes:
        return wire.event("error", error_body(error))


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


MESSAGES = Messages()
