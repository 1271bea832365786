"""What Anthropic's clients ask of an assistant besides its calls (``dialects/messages.py``):

    POST .../v1/messages/count_tokens    the prompt's tokens
    HEAD, GET /api/v1/assistants/{id}    Claude Code's warm-up of its base URL: 200, nothing said

``GET .../v1/models`` answers in Anthropic's shape for these clients (``api/models.py``).
"""
from __future__ import annotations

import logging

import orjson
from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.api.stages import authenticate, read_json_request, resolve_assistant, select_provider
from riceball_proxy.context import ChatContext
from riceball_proxy.dialects.messages import MESSAGES
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import estimate_prompt_tokens
from riceball_proxy.proxies import client_address

logger = logging.getLogger(__name__)

#: Fields of a Messages request that ``count_tokens`` does not take.
NOT_COUNTED = ("max_tokens", "stream", "stop_sequences", "temperature", "top_p", "top_k", "metadata",
               "service_tier", "container", "context_management", "output_config")


def speaks_anthropic(request: web.Request) -> bool:
    """True for a client that speaks Anthropic's API (its SDKs and Claude Code send these headers)."""
    return "anthropic-version" in request.headers or "x-api-key" in request.headers


async def count_tokens(request: web.Request) -> web.Response:
    """The tokens the request's prompt would take, the assistant injected: the provider's own count when
    it speaks Messages, else an estimate on the high side (never low: Claude Code compacts by it)."""
    ctx = ChatContext(request_id=request[appkeys.REQUEST_ID], app=request.match_info.apps[0],
                      client_addr=client_address(request), dialect=MESSAGES)
    await authenticate(request, ctx)
    await resolve_assistant(ctx)
    body, raw = await read_json_request(request)
    if isinstance(body, dict) and body.get("max_tokens") is None:
        body["max_tokens"] = 1  # not asked for by count_tokens; the request is otherwise a call's
        raw = orjson.dumps(body)
    MESSAGES.take(ctx, request, body, raw)
    await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_prepare_request", ctx=ctx)
    MESSAGES.inject(ctx)
    adapter = await select_provider(ctx)
    counted = None
    if MESSAGES.name in adapter.native_dialects:
        native = {name: value for name, value in (ctx.native_body or {}).items() if name not in NOT_COUNTED}
        try:
            counted = await adapter.count_tokens_native(MESSAGES.name, native, headers=ctx.native_headers,
                                                        request_id=ctx.request_id)
        except APIError as exc:
            if exc.status < 500 and exc.status != 429:
                raise
            logger.info("count_tokens %s: the provider's count failed (%s %s); estimated instead", ctx.request_id,
                        exc.status, exc.code)
    if counted is None:
        counted = estimate_prompt_tokens(ctx.body)
    return web.json_response({"input_tokens": counted})


async def assistant_base(request: web.Request) -> web.Response:
    """200 and nothing more: a client's probe of the base URL it was given."""
    return web.json_response({}) if request.method == "GET" else web.Response()
