"""Calls from the admin panel's playground: the API's own stages, with the admin as the caller.

The playground does not call the API over HTTP; it runs the same stages in-process: the assistant
(disabled ones too: an admin may try one before enabling it), the request prepared by the plugins
(injection first), the provider, admission (the assistant's limits; an admin has no key, so no key's
limits), the upstream call with failover, the plugins' transformers, and the usage row (``source``
``playground``, the admin's id, no key). Wrap the handler in :func:`riceball_proxy.api.stages.observed`
so that the call is observed as an API call is.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from riceball_proxy import appkeys
from riceball_proxy.api.stages import admit, assistant_not_found, select_provider
from riceball_proxy.api.streaming import upstream_chunks
from riceball_proxy.context import ChatContext, Principal
from riceball_proxy.pricing import call_price
from riceball_proxy.validation import validate_chat_request


def admin_principal(admin) -> Principal:
    """The caller a playground call is made by: the admin, with no key and no limits of its own."""
    return Principal(key_id=None, name=f"admin {admin.username}", admin_id=admin.id)


async def prepare(ctx: ChatContext, admin, assistant_id: uuid.UUID, messages: list[dict[str, Any]], *,
                  stream: bool) -> None:
    """Stages 1 to 6 for ``messages`` to an assistant: the caller, the assistant, the body, the plugins'
    preparation, the provider and admission. Raises APIError as the API would."""
    ctx.principal = admin_principal(admin)
    ctx.assistant_id = assistant_id
    assistant = await ctx.app[appkeys.CONFIG_CACHE].assistant(assistant_id)
    if assistant is None:
        raise assistant_not_found(str(assistant_id))
    ctx.assistant = assistant
    body: dict[str, Any] = {"model": assistant.model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    raw = orjson.dumps(body)
    ctx.take_body(validate_chat_request(orjson.loads(raw)), raw)
    await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_prepare_request", ctx=ctx)
    await select_provider(ctx)
    await admit(ctx)


async def text_deltas(ctx: ChatContext) -> AsyncIterator[str]:
    """The streamed answer's text, piece by piece, as the API's client would get it (stages 6 and 7)."""
    async for chunk in upstream_chunks(ctx):
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text


def answer_text(answer: dict[str, Any]) -> str:
    """The first choice's text of a whole answer."""
    choices = answer.get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content") or ""


def call_meta(ctx: ChatContext, **extra: Any) -> dict[str, Any]:
    """What a playground answer shows beside it: tokens, latency, cost (when known), the model."""
    meta: dict[str, Any] = {"latency_ms": round((time.perf_counter() - ctx.started_at) * 1000, 1),
                            "model": (ctx.body or {}).get("model") or (ctx.assistant.model if ctx.assistant else None)}
    usage = ctx.usage
    if usage.prompt_tokens is not None:
        meta["prompt_tokens"] = usage.prompt_tokens
        meta["completion_tokens"] = usage.completion_tokens
        if ctx.assistant is not None:
            price = call_price(ctx)
            cost = None if price is None else price.cost(usage)
            if cost is not None:
                meta["cost_usd"] = str(cost)
    return meta | extra
