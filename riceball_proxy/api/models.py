"""``GET .../v1/models`` and ``.../v1/models/{model}``: the assistant's one model, as the SDKs read it."""
from __future__ import annotations

import orjson
from aiohttp import web

from riceball_proxy.api.stages import authenticate, observed, resolve_assistant, select_provider
from riceball_proxy.context import ChatContext
from riceball_proxy.errors import APIError


def _model_object(ctx: ChatContext) -> dict:
    return {
        "id": ctx.assistant.model,
        "object": "model",
        "created": int(ctx.assistant.created_at.timestamp()),
        "owned_by": ctx.provider.name if ctx.provider else "riceball",
    }


@observed
async def list_models(request: web.Request, ctx: ChatContext) -> web.Response:
    """The models this assistant answers with: its one upstream model (what ``models.list()`` reads)."""
    await authenticate(request, ctx)
    await resolve_assistant(ctx)
    await select_provider(ctx)
    return web.json_response({"object": "list", "data": [_model_object(ctx)]}, dumps=_dumps)


@observed
async def retrieve_model(request: web.Request, ctx: ChatContext) -> web.Response:
    """The assistant's model when asked for by name (``models.retrieve()``); 404 for any other name."""
    await authenticate(request, ctx)
    await resolve_assistant(ctx)
    await select_provider(ctx)
    model = request.match_info["model"]
    if model != ctx.assistant.model:
        raise APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                       code="model_not_found", param="model")
    return web.json_response(_model_object(ctx), dumps=_dumps)


def _dumps(value) -> str:
    return orjson.dumps(value).decode()
