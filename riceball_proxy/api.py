"""The OpenAI-compatible API: a sub-application mounted at ``/api/v1``.

    POST /api/v1/assistants/{assistant_id}/v1/chat/completions
    GET  /api/v1/assistants/{assistant_id}/v1/models
    GET  /api/v1/assistants/{assistant_id}/v1/models/{model}

Every error it answers is in OpenAI's shape, with the matching status.
"""
from __future__ import annotations

import logging

import orjson
from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.context import ChatContext
from riceball_proxy.errors import APIError
from riceball_proxy.pipeline import chat_completions
from riceball_proxy.stages import observed, resolve, resolve_provider

logger = logging.getLogger(__name__)

MOUNT_POINT = "/api/v1"
ASSISTANT_BASE = "/assistants/{assistant_id}/v1"


def setup_api(app: web.Application) -> web.Application:
    """Mount the API sub-application on ``app``."""
    api = web.Application(middlewares=[api_error_middleware])
    api.router.add_post(ASSISTANT_BASE + "/chat/completions", chat_completions)
    api.router.add_get(ASSISTANT_BASE + "/models", list_models)
    api.router.add_get(ASSISTANT_BASE + "/models/{model:.+}", retrieve_model)
    app.add_subapp(MOUNT_POINT, api)
    return api


@web.middleware
async def api_error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Turn every failure into OpenAI's error shape; a traceback goes to the log, never to the client."""
    try:
        return await handler(request)
    except APIError as exc:
        return exc.response()
    except web.HTTPRequestEntityTooLarge:
        limit = request.config_dict[appkeys.SETTINGS].max_body_bytes
        return APIError(413, f"The request body is too large (the limit is {limit} bytes).",
                        code="request_too_large").response()
    except web.HTTPException as exc:
        if exc.status == 404:
            return APIError(404, f"Unknown request URL: {request.method} {request.path}.",
                            code="unknown_url").response()
        if exc.status == 405:
            return APIError(405, f"Method {request.method} is not allowed for {request.path}.",
                            code="method_not_allowed").response(headers={"Allow": exc.headers.get("Allow", "")})
        return APIError(exc.status, exc.reason, type="invalid_request_error").response()
    except Exception:
        logger.exception("unhandled error in request %s", request.get(appkeys.REQUEST_ID))
        return APIError(500, "The server had an error while processing your request.", type="server_error",
                        code="internal_error").response()


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
    await resolve(request, ctx)
    await resolve_provider(request, ctx)
    return web.json_response({"object": "list", "data": [_model_object(ctx)]}, dumps=_dumps)


@observed
async def retrieve_model(request: web.Request, ctx: ChatContext) -> web.Response:
    """The assistant's model when asked for by name (``models.retrieve()``); 404 for any other name."""
    await resolve(request, ctx)
    await resolve_provider(request, ctx)
    model = request.match_info["model"]
    if model != ctx.assistant.model:
        raise APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                       code="model_not_found", param="model")
    return web.json_response(_model_object(ctx), dumps=_dumps)


def _dumps(value) -> str:
    return orjson.dumps(value).decode()
