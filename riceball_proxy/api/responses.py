"""What Responses clients ask of an assistant besides its calls (``dialects/responses.py``):

    POST .../v1/responses/input_tokens         the tokens of a request's input
    GET, DELETE .../v1/responses/{id}, ...     404: nothing is stored (the API is stateless)
"""
from __future__ import annotations

from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.api.stages import authenticate, read_json_request, resolve_assistant
from riceball_proxy.context import ChatContext
from riceball_proxy.dialects.responses import RESPONSES
from riceball_proxy.errors import APIError
from riceball_proxy.estimates import estimate_prompt_tokens
from riceball_proxy.proxies import client_address


def _context(request: web.Request) -> ChatContext:
    return ChatContext(request_id=request[appkeys.REQUEST_ID], app=request.match_info.apps[0],
                       client_addr=client_address(request), dialect=RESPONSES)


async def input_tokens(request: web.Request) -> web.Response:
    """The tokens a Responses request's input would take, the assistant's system prompt included: an
    estimate on the high side. Free: no usage row, no limit."""
    ctx = _context(request)
    await authenticate(request, ctx)
    await resolve_assistant(ctx)
    body, raw = await read_json_request(request)
    RESPONSES.take(ctx, request, body, raw)
    await ctx.app[appkeys.PLUGIN_MANAGER].run("riceball_prepare_request", ctx=ctx)
    return web.json_response({"object": "response.input_tokens", "input_tokens": estimate_prompt_tokens(ctx.body)})


async def not_stored(request: web.Request) -> web.Response:
    """404 for a stored response (to get, delete, cancel or list the input of): there are none."""
    ctx = _context(request)
    await authenticate(request, ctx)
    raise APIError(404, f"No response '{request.match_info['response_id']}' is stored: this gateway's Responses API is "
                        "stateless. Send the whole conversation in 'input' with every call (store: false).",
                   param="response_id", code="not_stored")
