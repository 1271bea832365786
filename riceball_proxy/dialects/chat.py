"""OpenAI Chat Completions, the first dialect and the gateway's internal form: a request is taken as it
is, answers and chunks go out as the provider's adapter gave them (through the plugins' transformers,
or untouched on the fast path), errors in OpenAI's shape."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from riceball_proxy import sse
from riceball_proxy.dialects import Dialect
from riceball_proxy.errors import APIError
from riceball_proxy.validation import validate_chat_request


class ChatCompletions(Dialect):
    name = "chat"
    path = "/chat/completions"

    def take(self, ctx, request, body, raw) -> None:
        ctx.take_body(validate_chat_request(body), raw)

    async def answer(self, ctx, answer: dict[str, Any]) -> dict[str, Any]:
        return answer

    def events(self, ctx, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        from riceball_proxy.api.streaming import chat_events

        return chat_events(ctx, payloads)

    def error_event(self, ctx, error: APIError) -> bytes:
        return sse.encode(orjson.dumps(error.body()))


CHAT = ChatCompletions()
