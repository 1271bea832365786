"""``GET .../v1/models`` and ``.../v1/models/{model}``: the assistant's one model, as the SDKs read it."""
from __future__ import annotations

import orjson
from aiohttp import web

from riceball_proxy.api.anthropic import speaks_anthropic
from riceball_proxy.api.stages import authenticate, observed, resolve_assistant, select_provider
from riceball_proxy.context import ChatContext
from riceball_proxy.errors import APIError


def _model_object(ctx: ChatContext) -> dict:
    return {
        "id": ctx.resolved_assistant.model,
        "object": "model",
        "created": int(ctx.resolved_assistant.created_at.timestamp()),
        "owned_by": ctx.provider.name if ctx.provider else "riceball",
    }


def _anthropic_model(ctx: ChatContext) -> dict:
    return {"type": "model", "id": ctx.resolved_assistant.model, "display_name": ctx.resolved_assistant.name,
            "created_at": ctx.resolved_assistant.created_at.isoformat().replace("+00:00", "Z")}


@observed
async def list_models(request: web.Request, ctx: ChatContext) -> web.Response:
    """The models this assistant answers with: its one upstream model (what ``models.list()`` reads), in
    Anthropic's shape for a client that speaks Anthropic's API (Claude Code's model picker)."""
    await authenticate(request, ctx)
    await resolve_assistant(ctx)
    await select_provider(ctx)
    if speaks_anthropic(request):
        model = _anthropic_model(ctx)
        return web.json_response({"data": [model], "has_more": False, "first_id": model["id"],
                                  "last_id": model["id"]}, dumps=_dumps)
    return web.json_response({"object": "list", "data": [_model_object(ctx)]}, dumps=_dumps)


@observed
async def retrieve_model(request: web.Request, ctx: ChatContext) -> web.Response:
    """The assistant's model when asked for by name (``models.retrieve()``); 404 for any other name."""
    await authenticate(request, ctx)
    await resolve_assistant(ctx)
    await select_provider(ctx)
    model = request.match_info["model"]
    if model != ctx.resolved_assistant.model:
        raise APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                       code="model_not_found", param="model")
    return web.json_response(_anthropic_model(ctx) if speaks_anthropic(request) else _model_object(ctx),
                             dumps=_dumps)


def _dumps(value) -> str:
    return orjson.dumps(value).decode()
