"""The OpenAI-compatible API: a sub-application mounted at ``/api/v1``.

    POST /api/v1/assistants/{assistant_id}/v1/chat/completions
    GET  /api/v1/assistants/{assistant_id}/v1/models
    GET  /api/v1/assistants/{assistant_id}/v1/models/{model}

Every error it answers is in OpenAI's shape, with the matching status.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

import orjson
from aiohttp import web

from riceball_proxy import appkeys
from riceball_proxy.cache import ProviderNotInstalled
from riceball_proxy.context import ChatContext, Outcome
from riceball_proxy.errors import APIError
from riceball_proxy.plugins import await_first, await_hook
from riceball_proxy.validation import validate_chat_request

logger = logging.getLogger(__name__)

MOUNT_POINT = "/api/v1"
ASSISTANT_BASE = "/assistants/{assistant_id}/v1"
#: Status recorded for a call whose client went away before the answer was complete (nginx's 499).
CLIENT_CLOSED_REQUEST = 499


def setup_api(app: web.Application) -> web.Application:
    """Mount the API sub-application on ``app``."""
    from riceball_proxy.pipeline import chat_completions

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


def new_context(request: web.Request) -> ChatContext:
    """The context of an API request, before anything is known of its caller."""
    return ChatContext(request_id=request[appkeys.REQUEST_ID], client_addr=request.remote)


async def resolve(request: web.Request, ctx: ChatContext) -> None:
    """Authenticate the caller and find the assistant, filling ``ctx``; raise APIError when refused.

    Order: a malformed id cannot name an assistant (404); then who is calling (401); then whether
    that caller may use the id (403) before anything is said of the assistant (404 when it does not
    exist or is disabled).
    """
    try:
        assistant_id = uuid.UUID(request.match_info["assistant_id"])
    except ValueError:
        raise assistant_not_found(request.match_info["assistant_id"]) from None
    pm = request.config_dict[appkeys.PLUGIN_MANAGER]
    principal = await await_first(pm.hook.riceball_authenticate, request=request, assistant_id=assistant_id)
    if principal is None:
        raise APIError(401, "No API key was accepted for this request.", code="invalid_api_key")
    ctx.principal = principal
    if not principal.allows(assistant_id):
        raise APIError(403, "This API key may not use this assistant.", type="permission_error",
                       code="assistant_not_allowed")
    cache = request.config_dict[appkeys.CONFIG_CACHE]
    assistant = await cache.assistant(assistant_id)
    if assistant is None or not assistant.enabled:
        raise assistant_not_found(str(assistant_id))
    ctx.assistant = assistant


async def resolve_provider(request: web.Request, ctx: ChatContext):
    """The assistant's provider (into ``ctx``) and its adapter."""
    try:
        provider, adapter = await request.config_dict[appkeys.CONFIG_CACHE].provider(ctx.assistant.provider_id)
    except ProviderNotInstalled as exc:
        logger.error("assistant %s: %s", ctx.assistant.id, exc)
        raise APIError(502, "The assistant's provider is not available on this gateway.", type="api_error",
                       code="provider_unavailable") from None
    ctx.provider = provider
    return adapter


def assistant_not_found(assistant_id: str) -> APIError:
    """404 for an assistant that does not exist, is disabled, or cannot be an id at all."""
    return APIError(404, f"The assistant '{assistant_id}' does not exist.", code="assistant_not_found")


async def read_chat_request(request: web.Request) -> dict:
    """The request body as a checked Chat Completions request (400 or 413 otherwise)."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise APIError(400, "We could not parse the JSON body of your request. Send valid JSON.",
                       code="invalid_json") from None
    return validate_chat_request(body)


def finish(request: web.Request, ctx: ChatContext, status: int, error_type: str | None, *,
           disconnected: bool = False) -> None:
    """Hand the outcome to the ``riceball_request_finished`` observers, off the request path."""
    now = time.perf_counter()
    outcome = Outcome(
        status=status,
        error_type=error_type,
        latency_ms=(now - ctx.started_at) * 1000,
        ttft_ms=None if ctx.first_token_at is None else (ctx.first_token_at - ctx.started_at) * 1000,
        usage=ctx.usage,
        client_disconnected=disconnected,
    )
    app = request.config_dict
    pm = app[appkeys.PLUGIN_MANAGER]
    task = asyncio.get_running_loop().create_task(_notify_observers(pm, ctx, outcome))
    tasks = app[appkeys.BACKGROUND_TASKS]
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _notify_observers(pm, ctx: ChatContext, outcome: Outcome) -> None:
    try:
        await await_hook(pm.hook.riceball_request_finished, ctx=ctx, outcome=outcome)
    except Exception:
        logger.exception("a riceball_request_finished observer failed for %s", ctx.request_id)


def _model_object(ctx: ChatContext) -> dict:
    return {
        "id": ctx.assistant.model,
        "object": "model",
        "created": int(ctx.assistant.created_at.timestamp()),
        "owned_by": ctx.provider.name if ctx.provider else "riceball",
    }


async def list_models(request: web.Request) -> web.Response:
    """The models this assistant answers with: its one upstream model (what ``models.list()`` reads)."""
    ctx = new_context(request)
    await resolve(request, ctx)
    await resolve_provider(request, ctx)
    return web.json_response({"object": "list", "data": [_model_object(ctx)]}, dumps=_dumps)


async def retrieve_model(request: web.Request) -> web.Response:
    """The assistant's model when asked for by name (``models.retrieve()``); 404 for any other name."""
    ctx = new_context(request)
    await resolve(request, ctx)
    await resolve_provider(request, ctx)
    model = request.match_info["model"]
    if model != ctx.assistant.model:
        raise APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                       code="model_not_found", param="model")
    return web.json_response(_model_object(ctx), dumps=_dumps)


def _dumps(value) -> str:
    return orjson.dumps(value).decode()
