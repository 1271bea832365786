"""riceball-echo: an offline provider that answers from the conversation itself."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from riceball_proxy import appkeys
from riceball_proxy.db import providers
from riceball_proxy.plugin import ChunkBuilder, ProviderAdapter, ProviderType, hookimpl

__version__ = "0.1.0"

PROVIDER_NAME = "echo"
BASE_URL = "http://echo.invalid"  # never called: the answer is made here
MODEL = "echo-1"
DEFAULT_DELAY = 0.05
MAX_DELAY = 5.0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        images = sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")
        text = " ".join(t for t in texts if t)
        if images:
            text += f" (and {images} image{'s' if images > 1 else ''})"
        return text.strip()
    return ""


def _words(text: str) -> int:
    return len(text.split())


def answer_for(body: dict[str, Any]) -> str:
    """What the echo provider says to a conversation: the last user message, repeated."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            said = _text_of(message.get("content"))
            return f"You said: {said}" if said else "You said nothing."
    return "Hello! Send a user message and I will echo it."


def usage_for(body: dict[str, Any], answer: str) -> dict[str, int]:
    """Token counts, one token a word."""
    prompt = sum(_words(_text_of(m.get("content"))) for m in body.get("messages", []))
    completion = _words(answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _delay(body: dict[str, Any]) -> float:
    value = body.get("echo_delay", DEFAULT_DELAY)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return DEFAULT_DELAY
    return min(max(float(value), 0.0), MAX_DELAY)


class EchoAdapter(ProviderAdapter):
    """Answers without any upstream."""

    async def complete(self, body: dict[str, Any], *, request_id: str | None = None) -> dict[str, Any]:
        answer = answer_for(body)
        return {
            "id": f"chatcmpl-echo-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", MODEL),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_for(body, answer),
        }

    async def stream(self, body: dict[str, Any], *, request_id: str | None = None) -> AsyncIterator[bytes]:
        answer = answer_for(body)
        delay = _delay(body)
        chunks = ChunkBuilder(body.get("model", MODEL), f"chatcmpl-echo-{uuid.uuid4().hex[:24]}")
        yield chunks.delta({"role": "assistant", "content": ""})
        for n, word in enumerate(answer.split(" ")):
            if n and delay:
                await asyncio.sleep(delay)
            yield chunks.delta({"content": word if n == 0 else " " + word})
        yield chunks.delta({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield chunks.usage(usage_for(body, answer))

    async def list_models(self) -> list[dict[str, Any]]:
        return [{"id": MODEL, "object": "model", "created": 0, "owned_by": "riceball-echo"}]


@hookimpl
def riceball_provider_types():
    return [ProviderType(name="echo", label="Echo (offline demo)", adapter=EchoAdapter, default_base_url=BASE_URL)]


@hookimpl
async def riceball_startup(app):
    # The quick start needs no setup: an "echo" provider is there from the first start.
    pool = app[appkeys.DATABASE].pool
    if await providers.get_by_name(pool, PROVIDER_NAME) is None:
        try:
            await providers.create(pool, name=PROVIDER_NAME, type="echo", base_url=BASE_URL)
        except providers.ProviderNameTaken:
            pass  # another worker made it first
